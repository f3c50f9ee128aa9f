//! The guest image the launcher boots: `manifest.json` (written by `cocoon-image build`) and
//! the artifacts next to it, each checked against the manifest's SHA-256 and size before QEMU
//! sees it.
//!
//! Checking here is a convenience for the operator (a stale or mixed-up image directory fails
//! before boot with a clear message); it proves nothing to anyone else: the registers in the
//! guest's quote are what verifiers check.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::manifest::{Artifact, ImageManifest, IMAGE_MANIFEST_FORMAT};
use measurements::TdRegisters;
use sha2::{Digest, Sha256};

use super::config::{Role, TdIds};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The kernel artifact.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs artifact.
pub const INITRD: &str = "initramfs.cpio.gz";
/// The kernel command line artifact.
pub const CMDLINE: &str = "cmdline";
/// The root disk artifact of an image built with `--root-disk`.
pub const ROOT_DISK: &str = protocol::guest::ROOT_DISK_FILE;

/// Image check failures.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an image manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: format {got:?}, expected {expected:?}")]
    Format {
        path: PathBuf,
        expected: &'static str,
        got: String,
    },
    #[error("role: the config says {config}, the image in {dir} is a {image} image")]
    Role {
        config: &'static str,
        image: String,
        dir: PathBuf,
    },
    #[error("{manifest}: lists no artifact {name:?}")]
    NotListed {
        manifest: PathBuf,
        name: &'static str,
    },
    #[error("{path}: {got} bytes, the manifest says {expected}")]
    Size {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("{path}: sha256 {got}, the manifest says {expected}")]
    Digest {
        path: PathBuf,
        expected: String,
        got: String,
    },
    #[error("{path}: {got:?} differs from the manifest's cmdline {expected:?}")]
    Cmdline {
        path: PathBuf,
        expected: String,
        got: String,
    },
}

/// A checked image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootImage {
    pub dir: PathBuf,
    pub manifest: ImageManifest,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line (`-append`).
    pub cmdline: String,
    /// The root disk, when the manifest lists one (`cocoon-image build --root-disk`).
    pub root_disk: Option<PathBuf>,
}

/// SHA-256 and length of everything `r` yields.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<([u8; 32], u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((h.finalize().into(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Checks one artifact's size and digest (pure).
pub fn check_artifact(
    path: &Path,
    expected: &Artifact,
    sha256: &[u8; 32],
    size: u64,
) -> Result<(), ImageError> {
    if size != expected.size {
        return Err(ImageError::Size {
            path: path.to_path_buf(),
            expected: expected.size,
            got: size,
        });
    }
    let got = hex::encode(sha256);
    if !got.eq_ignore_ascii_case(&expected.sha256) {
        return Err(ImageError::Digest {
            path: path.to_path_buf(),
            expected: expected.sha256.clone(),
            got,
        });
    }
    Ok(())
}

fn verify_file(
    dir: &Path,
    manifest_path: &Path,
    m: &ImageManifest,
    name: &'static str,
) -> Result<PathBuf, ImageError> {
    let expected = m.artifacts.get(name).ok_or_else(|| ImageError::NotListed {
        manifest: manifest_path.to_path_buf(),
        name,
    })?;
    let path = dir.join(name);
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let f = std::fs::File::open(&path).map_err(io)?;
    let (digest, size) = sha256_reader(f).map_err(|source| ImageError::Io {
        path: path.clone(),
        source,
    })?;
    check_artifact(&path, expected, &digest, size)?;
    Ok(path)
}

/// Reads `dir/manifest.json` and checks the kernel, initramfs and cmdline against it.
pub fn load(dir: &Path, role: Role) -> Result<BootImage, ImageError> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| ImageError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest: ImageManifest =
        serde_json::from_str(&text).map_err(|e| ImageError::Manifest {
            path: manifest_path.clone(),
            reason: e.to_string(),
        })?;
    if manifest.format != IMAGE_MANIFEST_FORMAT {
        return Err(ImageError::Format {
            path: manifest_path,
            expected: IMAGE_MANIFEST_FORMAT,
            got: manifest.format.chars().take(80).collect(),
        });
    }
    if manifest.role != role.as_str() {
        return Err(ImageError::Role {
            config: role.as_str(),
            image: manifest.role.chars().take(80).collect(),
            dir: dir.to_path_buf(),
        });
    }
    let kernel = verify_file(dir, &manifest_path, &manifest, KERNEL)?;
    let initrd = verify_file(dir, &manifest_path, &manifest, INITRD)?;
    let cmdline_path = verify_file(dir, &manifest_path, &manifest, CMDLINE)?;
    let file = std::fs::read_to_string(&cmdline_path).map_err(|source| ImageError::Io {
        path: cmdline_path.clone(),
        source,
    })?;
    let cmdline = file.strip_suffix('\n').unwrap_or(&file).to_string();
    if cmdline != manifest.cmdline {
        return Err(ImageError::Cmdline {
            path: cmdline_path,
            expected: manifest.cmdline.clone(),
            got: cmdline,
        });
    }
    // A root disk is part of the image when the manifest lists it; its root hash is on the
    // (checked) command line, so a disk that is not the listed one fails here or in the guest.
    let root_disk = if manifest.artifacts.contains_key(ROOT_DISK) {
        Some(verify_file(dir, &manifest_path, &manifest, ROOT_DISK)?)
    } else {
        None
    };
    Ok(BootImage {
        dir: dir.to_path_buf(),
        manifest,
        kernel,
        initrd,
        cmdline,
        root_disk,
    })
}

/// The registers a TD booted from `image` reports, with the owner-chosen identity registers
/// of the config (`[tdx] mrconfigid`, `mrowner`, `mrownerconfig`) in place of the manifest's.
///
/// Under `--tee sim` these are what the launcher hands the simulated platform. RTMR1 and RTMR2
/// are recomputed from the artifacts actually booted ([`recompute_boot_rtmrs`], the same
/// `measurements::boot` code an auditor runs); a manifest that disagrees is refused.
pub fn expected_registers(image: &BootImage, ids: &TdIds) -> Result<TdRegisters, ImageError> {
    let mut r = recompute_boot_rtmrs(image)?;
    if let Some(v) = ids.mrconfigid {
        r.mrconfigid = v;
    }
    if let Some(v) = ids.mrowner {
        r.mrowner = v;
    }
    if let Some(v) = ids.mrownerconfig {
        r.mrownerconfig = v;
    }
    Ok(r)
}

/// The manifest's registers with RTMR1 (kernel) and RTMR2 (command line, initrd) recomputed
/// from the files in the image directory. They must equal the manifest's: otherwise the
/// manifest does not describe these artifacts and the launcher refuses to boot them.
///
/// A kernel that is not a PE/COFF image (test fixtures) cannot be measured: the manifest's
/// values are used and a warning is printed.
pub fn recompute_boot_rtmrs(image: &BootImage) -> Result<TdRegisters, ImageError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let kernel = read(&image.kernel)?;
    let initrd = read(&image.initrd)?;
    let shape = ::image::registers::VmShape {
        memory: image.manifest.memory,
    };
    let mut r = image.manifest.registers;
    match ::image::registers::boot_registers(&kernel, &initrd, &image.cmdline, &shape) {
        Ok((rtmr1, rtmr2)) => {
            for (i, got) in [(1, rtmr1), (2, rtmr2)] {
                if r.rtmr[i] != got {
                    return Err(ImageError::Manifest {
                        path: image.dir.join(MANIFEST),
                        reason: format!(
                            "rtmr{i} mismatch: the manifest says {}, the artifacts measure to {}",
                            hex::encode(r.rtmr[i]),
                            hex::encode(got)
                        ),
                    });
                }
                r.rtmr[i] = got;
            }
        }
        Err(e) => eprintln!(
            "cocoon-host: warning: cannot recompute RTMR1/RTMR2 from {} ({e:#}); using the manifest's",
            image.kernel.display()
        ),
    }
    Ok(r)
}
