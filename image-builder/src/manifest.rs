//! `manifest.json`: what `cocoon-image build` produced and what it measures to.
//!
//! This is the unsigned build record written next to the artifacts. Publishers turn the
//! `registers` and `image_hash` of each role into a signed `measurements::manifest` for release;
//! `cocoon-host launch` reads it to check the artifacts it boots and (under `--tee sim`) to know
//! the registers the simulated platform must report.

use std::collections::BTreeMap;

use measurements::{ImageHash, TdRegisters};
use serde::{Deserialize, Serialize};

/// Format identifier of [`ImageManifest`].
pub const IMAGE_MANIFEST_FORMAT: &str = "cocoon-image/v1";

/// One built artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub size: u64,
}

/// The pinned kernel package the image was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    pub package: String,
    pub version: String,
    /// SHA-256 of the .deb, hex.
    pub deb_sha256: String,
}

/// `manifest.json` of a built image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    /// Always [`IMAGE_MANIFEST_FORMAT`].
    pub format: String,
    /// `worker` or `proxy`.
    pub role: String,
    /// Artifact file name (`vmlinuz`, `initramfs.cpio.gz`, `cmdline`) → digest and size.
    pub artifacts: BTreeMap<String, Artifact>,
    pub kernel: KernelPin,
    /// The kernel command line exactly as passed to QEMU `-append`.
    pub cmdline: String,
    /// Platform the registers are for: `tdx` (TDVF boot path) or `sim`.
    pub platform: String,
    /// Guest memory in bytes the registers assume: QEMU writes memory-dependent fields into the
    /// kernel's setup header before the firmware measures it, so the VM must use this size.
    pub memory: u64,
    /// Expected registers for booting these artifacts on `platform`.
    pub registers: TdRegisters,
    /// `registers.image_hash()`.
    pub image_hash: ImageHash,
    /// Which registers were computed from artifacts and which are platform constants, by name.
    pub register_sources: BTreeMap<String, String>,
    /// `git rev-parse HEAD` of the source tree, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
}
