//! Comparing releases: which registers differ between two manifests, and why.
//!
//! Inputs are untrusted JSON documents of three shapes, told apart by their shape
//! ([`Document::from_json`]):
//!
//! * a signed manifest (`{"manifest": …, "signatures": […]}`, [`crate::manifest`]) — signatures
//!   are *not* checked here (that is `SignedManifest::verify`); the content is parsed and its
//!   image hashes are recomputed;
//! * an unsigned manifest (`"format": "cocoon-manifest/v1"`);
//! * a `cocoon-image build` record (`manifest.json`, `"format": "cocoon-image/v1"`,
//!   [`BuildRecord`]): one role with its registers and the SHA-256 of every boot artifact.
//!
//! [`diff`] compares two documents role by role. For each register that differs it says what
//! the register measures ([`register_inputs`]) and, when both sides carry build records, which
//! recorded input changed (e.g. `initramfs.cpio.gz` for RTMR2). Changed TD attribute and XFAM
//! bits are decoded by name.
//!
//! # What counts as a difference
//! Two documents are identical ([`ManifestDiff::is_identical`]) when they name the same roles
//! with the same registers (hence image hashes), the same RTMR3 sets and models where both
//! sides state them (build records state neither), and the same source commit where both sides
//! state one. Publisher, issued-at and build inputs that moved without moving a register (e.g.
//! a reworded `register_sources` line) are reported but do not count.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::{Hex32, Manifest, ManifestError, SignedManifest, MANIFEST_FORMAT_V1};
use crate::registers::{ImageHash, Sha384, TdRegisters};

/// Format identifier of `cocoon-image build` records.
pub const BUILD_RECORD_FORMAT: &str = "cocoon-image/v1";

/// Errors reading or combining the documents to compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("json: {0}")]
    Json(String),
    #[error("not a signed manifest, manifest or cocoon-image build record ({0})")]
    UnknownShape(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("build record (role {role:?}): {detail}")]
    BuildRecord { role: String, detail: String },
    #[error("build record for role {role:?}: the document has no such role (roles: {roles:?})")]
    NoSuchRole { role: String, roles: Vec<String> },
    #[error(
        "build record for role {role:?} has image hash {record}, the document states {document}"
    )]
    RecordMismatch {
        role: String,
        document: ImageHash,
        record: ImageHash,
    },
}

/// One artifact of a build record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildArtifact {
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub size: u64,
}

/// The pinned kernel a build record names: the package that holds vmlinuz, and every package
/// of the pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildKernel {
    /// The package that holds vmlinuz (the pin's first).
    pub package: String,
    pub version: String,
    /// SHA-256 of the .deb, hex.
    pub deb_sha256: String,
    /// Every package of the pin, unpacked into one tree, in the pin's order: the first is the
    /// one above; the others hold the modules the initramfs carries (a multi-package pin such
    /// as the 7.x cloud kernels: image, modules). Empty in records written before the field
    /// existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<BuildPackage>,
}

/// One Debian package of the kernel pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildPackage {
    pub name: String,
    pub version: String,
    /// SHA-256 of the .deb, hex.
    pub deb_sha256: String,
}

/// The `cocoon-image build` record (`manifest.json` next to the artifacts): what was built and
/// what it measures to. This is the one definition: `cocoon-image` writes it (re-exported as
/// `image::manifest::ImageManifest`), `cocoon-host launch` reads it to check the artifacts it
/// boots, and the manifest tools here read it to build and explain release manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRecord {
    /// Always [`BUILD_RECORD_FORMAT`].
    pub format: String,
    /// `worker` or `proxy`.
    pub role: String,
    /// Artifact file name (`vmlinuz`, `initramfs.cpio.gz`, `cmdline`) → digest and size.
    pub artifacts: BTreeMap<String, BuildArtifact>,
    pub kernel: BuildKernel,
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
    #[serde(default)]
    pub register_sources: BTreeMap<String, String>,
    /// `git rev-parse HEAD` of the source tree, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
}

impl BuildRecord {
    /// Parses and [validates](Self::validate) a record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DiffError> {
        let r: Self = serde_json::from_slice(bytes).map_err(|e| DiffError::Json(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// Checks the format and that the stated image hash matches the registers.
    pub fn validate(&self) -> Result<(), DiffError> {
        let err = |detail: String| DiffError::BuildRecord {
            role: self.role.clone(),
            detail,
        };
        if self.format != BUILD_RECORD_FORMAT {
            return Err(err(format!(
                "format {:?}, expected {BUILD_RECORD_FORMAT:?}",
                self.format
            )));
        }
        let computed = self.registers.image_hash();
        if computed != self.image_hash {
            return Err(err(format!(
                "image_hash {} does not match its registers ({computed})",
                self.image_hash
            )));
        }
        Ok(())
    }
}

/// Which shape a document had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    SignedManifest,
    Manifest,
    BuildRecord,
}

/// One role as the diff sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleView {
    pub image_hash: ImageHash,
    pub registers: TdRegisters,
    /// `None` when the document does not state RTMR3 values (build records).
    pub rtmr3: Option<Vec<Sha384>>,
    /// `None` when the document does not state models (build records).
    pub models: Option<BTreeMap<String, Hex32>>,
    pub build: Option<BuildRecord>,
}

/// A document normalized for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub kind: DocumentKind,
    pub publisher: Option<String>,
    pub issued_at: Option<u64>,
    pub source_commit: Option<String>,
    pub roles: BTreeMap<String, RoleView>,
}

impl Document {
    /// Parses any of the three shapes (see the module docs).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DiffError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| DiffError::Json(e.to_string()))?;
        let Some(obj) = v.as_object() else {
            return Err(DiffError::UnknownShape("not a json object".into()));
        };
        if obj.contains_key("manifest") && obj.contains_key("signatures") {
            let signed: SignedManifest =
                serde_json::from_value(v).map_err(|e| DiffError::Json(e.to_string()))?;
            let m: Manifest = serde_json::from_value(signed.manifest)
                .map_err(|e| DiffError::Json(format!("manifest: {e}")))?;
            return Self::from_manifest(&m, DocumentKind::SignedManifest);
        }
        match obj.get("format").and_then(Value::as_str) {
            Some(MANIFEST_FORMAT_V1) => {
                let m: Manifest =
                    serde_json::from_value(v).map_err(|e| DiffError::Json(e.to_string()))?;
                Self::from_manifest(&m, DocumentKind::Manifest)
            }
            Some(BUILD_RECORD_FORMAT) => {
                let r: BuildRecord =
                    serde_json::from_value(v).map_err(|e| DiffError::Json(e.to_string()))?;
                r.validate()?;
                Ok(Self::from_build(r))
            }
            Some(other) => Err(DiffError::UnknownShape(format!("format {other:?}"))),
            None => Err(DiffError::UnknownShape("no format field".into())),
        }
    }

    /// A (validated) manifest's view.
    pub fn from_manifest(m: &Manifest, kind: DocumentKind) -> Result<Self, DiffError> {
        m.validate()?;
        Ok(Self {
            kind,
            publisher: Some(m.publisher.clone()),
            issued_at: Some(m.issued_at),
            source_commit: m.source_commit.clone(),
            roles: m
                .roles
                .iter()
                .map(|(role, r)| {
                    let view = RoleView {
                        image_hash: r.image_hash,
                        registers: r.registers,
                        rtmr3: Some(r.rtmr3.clone()),
                        models: Some(r.models.clone()),
                        build: None,
                    };
                    (role.clone(), view)
                })
                .collect(),
        })
    }

    /// A build record's view: one role.
    pub fn from_build(r: BuildRecord) -> Self {
        Self {
            kind: DocumentKind::BuildRecord,
            publisher: None,
            issued_at: None,
            source_commit: r.source_commit.clone(),
            roles: BTreeMap::from([(
                r.role.clone(),
                RoleView {
                    image_hash: r.image_hash,
                    registers: r.registers,
                    rtmr3: None,
                    models: None,
                    build: Some(r),
                },
            )]),
        }
    }

    /// Attaches the build record of one of the document's roles (it must name the same image).
    pub fn attach_build(&mut self, r: BuildRecord) -> Result<(), DiffError> {
        r.validate()?;
        let roles: Vec<String> = self.roles.keys().cloned().collect();
        let Some(view) = self.roles.get_mut(&r.role) else {
            return Err(DiffError::NoSuchRole {
                role: r.role.clone(),
                roles,
            });
        };
        if view.image_hash != r.image_hash {
            return Err(DiffError::RecordMismatch {
                role: r.role.clone(),
                document: view.image_hash,
                record: r.image_hash,
            });
        }
        view.build = Some(r);
        Ok(())
    }
}

/// An old and a new value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

/// How a role compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleStatus {
    Added,
    Removed,
    Changed,
    Unchanged,
}

/// A named bit of TD attributes or XFAM that flipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BitChange {
    pub bit: u32,
    pub name: String,
    pub old: bool,
    pub new: bool,
}

/// A recorded build input (artifact digest, kernel pin, platform, …) and its two values;
/// `None` when a side does not have it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InputChange {
    pub input: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One register that differs, with its explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegisterDiff {
    /// `mrtd`, `rtmr0`…`rtmr3`, `td_attributes`, `xfam`, `mrconfigid`, `mrowner`, `mrownerconfig`.
    pub register: &'static str,
    pub old: String,
    pub new: String,
    /// What the register measures.
    pub measures: &'static str,
    /// Whether the register is covered by the image hash (everything but RTMR3).
    pub in_image_hash: bool,
    /// Decoded bits, for `td_attributes` and `xfam`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bits: Vec<BitChange>,
    /// Whether both sides had build records, so `causes` / `unchanged` are meaningful.
    pub builds_compared: bool,
    /// Recorded inputs of this register that changed.
    pub causes: Vec<InputChange>,
    /// Recorded inputs of this register that did not change.
    pub unchanged: Vec<String>,
    /// Inputs of this register that build records do not record.
    pub not_recorded: &'static str,
}

/// An RTMR3 set or model map that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// How one role compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleDiff {
    pub role: String,
    pub status: RoleStatus,
    pub old_image_hash: Option<ImageHash>,
    pub new_image_hash: Option<ImageHash>,
    pub registers: Vec<RegisterDiff>,
    /// `None` when not compared (a side does not state RTMR3 values) or equal.
    pub rtmr3: Option<SetChange>,
    /// Model name → digests, for models added, removed or changed.
    pub models: Vec<InputChange>,
    /// Every recorded build input that changed (when both sides have build records).
    pub build_inputs: Vec<InputChange>,
    /// What could not be compared, and other remarks.
    pub notes: Vec<String>,
}

/// The comparison of two documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestDiff {
    pub old_kind: DocumentKind,
    pub new_kind: DocumentKind,
    /// Informational: does not count as a difference.
    pub publisher: Option<Change<Option<String>>>,
    /// Informational: does not count as a difference.
    pub issued_at: Option<Change<Option<u64>>>,
    /// Set when both sides state a source commit and they differ.
    pub source_commit: Option<Change<String>>,
    pub roles: Vec<RoleDiff>,
}

impl ManifestDiff {
    /// Whether the documents describe the same release (see the module docs).
    pub fn is_identical(&self) -> bool {
        self.source_commit.is_none() && self.roles.iter().all(|r| r.status == RoleStatus::Unchanged)
    }
}

/// What a register measures, the recorded build inputs it depends on, and what build records
/// do not record. Inputs are artifact names (`vmlinuz`), `kernel.<field>`, `platform`,
/// `memory`, `cmdline_text` or `register_sources.<register>`.
pub fn register_inputs(register: &str) -> (&'static str, &'static [&'static str], &'static str) {
    match register {
        "mrtd" => (
            "TDVF firmware: the pages the VMM adds and measures at TD build",
            &["platform", "register_sources.mrtd"],
            "the firmware binary (compare its sha256, or recompute with `cocoon-measure compute --firmware`)",
        ),
        "rtmr0" => (
            "firmware configuration: TD HOB (memory map, vCPUs), ACPI tables, UEFI variables",
            &["platform", "memory", "register_sources.rtmr0"],
            "the VMM's machine shape (QEMU version, vCPUs, devices) and the firmware build",
        ),
        "rtmr1" => (
            "the kernel (vmlinuz, as the firmware loads it) and the boot-phase events",
            &["vmlinuz", "kernel.package", "kernel.version", "kernel.deb_sha256", "memory", "register_sources.rtmr1"],
            "the firmware's boot events (TDVF version)",
        ),
        "rtmr2" => (
            "the kernel command line (with a root disk's dm-verity root hash) and the initrd",
            &["cmdline", "initramfs.cpio.gz", "root.img", "cmdline_text", "kernel.packages", "register_sources.rtmr2"],
            "nothing else",
        ),
        "rtmr3" => (
            "runtime configuration: cocoon-init's config (and model) events, i.e. the config disk digest",
            &[],
            "the config disk (see `cocoon-measure eventlog expect-config --config-sha256`)",
        ),
        "td_attributes" => (
            "TD attributes chosen at TD creation (debug, SEPT_VE_DISABLE, …)",
            &["platform"],
            "the VMM's tdx-guest object (e.g. QEMU `debug=on`, `sept-ve-disable=`)",
        ),
        "xfam" => (
            "the XSAVE features enabled for the TD",
            &["platform"],
            "the VMM's CPU model (QEMU `-cpu`)",
        ),
        "mrconfigid" | "mrowner" | "mrownerconfig" => (
            "a value the host sets at TD creation",
            &[],
            "the VMM's tdx-guest object (QEMU `mrconfigid=`, `mrowner=`, `mrownerconfig=`)",
        ),
        _ => ("unknown register", &[], "unknown"),
    }
}

/// TD attribute bit names (Intel TDX module ABI, TDX_ATTRIBUTES).
const TD_ATTRIBUTE_BITS: &[(u32, &str)] = &[
    (0, "debug"),
    (27, "lass"),
    (28, "sept_ve_disable"),
    (29, "migratable"),
    (30, "pks"),
    (31, "kl"),
    (63, "perfmon"),
];

/// XFAM bit names (XSAVE state components, Intel SDM vol. 1 ch. 13).
const XFAM_BITS: &[(u32, &str)] = &[
    (0, "x87"),
    (1, "sse"),
    (2, "avx"),
    (3, "mpx_bndregs"),
    (4, "mpx_bndcsr"),
    (5, "avx512_opmask"),
    (6, "avx512_zmm_hi256"),
    (7, "avx512_hi16_zmm"),
    (8, "pt"),
    (9, "pkru"),
    (10, "pasid"),
    (11, "cet_u"),
    (12, "cet_s"),
    (13, "hdc"),
    (14, "uintr"),
    (15, "lbr"),
    (16, "hwp"),
    (17, "amx_tilecfg"),
    (18, "amx_tiledata"),
];

fn bit_changes(old: [u8; 8], new: [u8; 8], names: &[(u32, &str)]) -> Vec<BitChange> {
    let (old, new) = (u64::from_le_bytes(old), u64::from_le_bytes(new));
    (0..64)
        .filter(|b| ((old ^ new) >> b) & 1 == 1)
        .map(|bit| BitChange {
            bit,
            name: names
                .iter()
                .find(|(b, _)| *b == bit)
                .map_or_else(|| format!("bit {bit}"), |(_, n)| (*n).to_string()),
            old: (old >> bit) & 1 == 1,
            new: (new >> bit) & 1 == 1,
        })
        .collect()
}

fn named_registers(r: &TdRegisters) -> [(&'static str, Vec<u8>); 10] {
    [
        ("mrtd", r.mrtd.to_vec()),
        ("rtmr0", r.rtmr[0].to_vec()),
        ("rtmr1", r.rtmr[1].to_vec()),
        ("rtmr2", r.rtmr[2].to_vec()),
        ("rtmr3", r.rtmr[3].to_vec()),
        ("td_attributes", r.td_attributes.to_vec()),
        ("xfam", r.xfam.to_vec()),
        ("mrconfigid", r.mrconfigid.to_vec()),
        ("mrowner", r.mrowner.to_vec()),
        ("mrownerconfig", r.mrownerconfig.to_vec()),
    ]
}

/// Every recorded input of a build record by the names [`register_inputs`] uses.
fn build_inputs(b: &BuildRecord) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, a) in &b.artifacts {
        out.insert(name.clone(), a.sha256.clone());
    }
    out.insert("kernel.package".into(), b.kernel.package.clone());
    out.insert("kernel.version".into(), b.kernel.version.clone());
    out.insert("kernel.deb_sha256".into(), b.kernel.deb_sha256.clone());
    let packages: Vec<String> = b
        .kernel
        .packages
        .iter()
        .map(|p| format!("{} {} {}", p.name, p.version, p.deb_sha256))
        .collect();
    out.insert("kernel.packages".into(), packages.join(", "));
    out.insert("cmdline_text".into(), b.cmdline.clone());
    out.insert("platform".into(), b.platform.clone());
    out.insert("memory".into(), b.memory.to_string());
    for (reg, src) in &b.register_sources {
        out.insert(format!("register_sources.{reg}"), src.clone());
    }
    out
}

fn input_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<InputChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|n| old.get(*n) != new.get(*n))
        .map(|n| InputChange {
            input: n.clone(),
            old: old.get(n).cloned(),
            new: new.get(n).cloned(),
        })
        .collect()
}

fn compare_role(role: &str, old: &RoleView, new: &RoleView) -> RoleDiff {
    let builds = match (&old.build, &new.build) {
        (Some(o), Some(n)) => Some((build_inputs(o), build_inputs(n))),
        _ => None,
    };
    let build_changes = builds
        .as_ref()
        .map(|(o, n)| input_changes(o, n))
        .unwrap_or_default();
    let mut registers = Vec::new();
    for ((name, o), (_, n)) in named_registers(&old.registers)
        .into_iter()
        .zip(named_registers(&new.registers))
    {
        if o == n {
            continue;
        }
        let (measures, inputs, not_recorded) = register_inputs(name);
        let bits = match name {
            "td_attributes" => bit_changes(
                old.registers.td_attributes,
                new.registers.td_attributes,
                TD_ATTRIBUTE_BITS,
            ),
            "xfam" => bit_changes(old.registers.xfam, new.registers.xfam, XFAM_BITS),
            _ => Vec::new(),
        };
        let (causes, unchanged) = match &builds {
            Some((ob, nb)) => {
                let causes = build_changes
                    .iter()
                    .filter(|c| inputs.contains(&c.input.as_str()))
                    .cloned()
                    .collect();
                let unchanged = inputs
                    .iter()
                    .filter(|i| ob.contains_key(**i) || nb.contains_key(**i))
                    .filter(|i| ob.get(**i) == nb.get(**i))
                    .map(|i| (*i).to_string())
                    .collect();
                (causes, unchanged)
            }
            None => (Vec::new(), Vec::new()),
        };
        registers.push(RegisterDiff {
            register: name,
            old: hex::encode(o),
            new: hex::encode(n),
            measures,
            in_image_hash: name != "rtmr3",
            bits,
            builds_compared: builds.is_some(),
            causes,
            unchanged,
            not_recorded,
        });
    }
    let mut notes = Vec::new();
    let rtmr3 = match (&old.rtmr3, &new.rtmr3) {
        (Some(o), Some(n)) => {
            let (o, n): (BTreeSet<_>, BTreeSet<_>) = (o.iter().collect(), n.iter().collect());
            let change = SetChange {
                added: n.difference(&o).map(hex::encode).collect(),
                removed: o.difference(&n).map(hex::encode).collect(),
            };
            (change != SetChange::default()).then_some(change)
        }
        (o, n) => {
            if o.iter().chain(n).any(|v| !v.is_empty()) {
                notes.push("rtmr3 values not compared: a build record states none".into());
            }
            None
        }
    };
    let models = match (&old.models, &new.models) {
        (Some(o), Some(n)) => {
            let names: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            names
                .into_iter()
                .filter(|m| o.get(*m) != n.get(*m))
                .map(|m| InputChange {
                    input: m.clone(),
                    old: o.get(m).map(|h| hex::encode(h.0)),
                    new: n.get(m).map(|h| hex::encode(h.0)),
                })
                .collect()
        }
        (o, n) => {
            if o.iter().chain(n).any(|v| !v.is_empty()) {
                notes.push("models not compared: a build record states none".into());
            }
            Vec::new()
        }
    };
    if builds.is_none() && !registers.is_empty() {
        notes.push("artifacts not compared: give build records for both sides (--old-image/--new-image) to name the changed artifact".into());
    }
    let changed = !registers.is_empty() || rtmr3.is_some() || !models.is_empty();
    if !changed && !build_changes.is_empty() {
        notes.push("build inputs changed without changing any register".into());
    }
    RoleDiff {
        role: role.to_string(),
        status: if changed {
            RoleStatus::Changed
        } else {
            RoleStatus::Unchanged
        },
        old_image_hash: Some(old.image_hash),
        new_image_hash: Some(new.image_hash),
        registers,
        rtmr3,
        models,
        build_inputs: build_changes,
        notes,
    }
}

fn one_sided(role: &str, view: &RoleView, status: RoleStatus) -> RoleDiff {
    let (old, new) = match status {
        RoleStatus::Added => (None, Some(view.image_hash)),
        _ => (Some(view.image_hash), None),
    };
    RoleDiff {
        role: role.to_string(),
        status,
        old_image_hash: old,
        new_image_hash: new,
        registers: Vec::new(),
        rtmr3: None,
        models: Vec::new(),
        build_inputs: Vec::new(),
        notes: Vec::new(),
    }
}

/// Compares two documents.
pub fn diff(old: &Document, new: &Document) -> ManifestDiff {
    let names: BTreeSet<&String> = old.roles.keys().chain(new.roles.keys()).collect();
    let roles = names
        .into_iter()
        .map(|role| match (old.roles.get(role), new.roles.get(role)) {
            (Some(o), Some(n)) => compare_role(role, o, n),
            (Some(o), None) => one_sided(role, o, RoleStatus::Removed),
            (None, Some(n)) => one_sided(role, n, RoleStatus::Added),
            (None, None) => unreachable!("role names come from the two documents"),
        })
        .collect();
    let source_commit = match (&old.source_commit, &new.source_commit) {
        (Some(o), Some(n)) if o != n => Some(Change {
            old: o.clone(),
            new: n.clone(),
        }),
        _ => None,
    };
    ManifestDiff {
        old_kind: old.kind,
        new_kind: new.kind,
        publisher: (old.publisher != new.publisher).then(|| Change {
            old: old.publisher.clone(),
            new: new.publisher.clone(),
        }),
        issued_at: (old.issued_at != new.issued_at).then_some(Change {
            old: old.issued_at,
            new: new.issued_at,
        }),
        source_commit,
        roles,
    }
}

mod explain;
pub use explain::explain;

#[cfg(test)]
mod tests;
