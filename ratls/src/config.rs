//! The `[policy]` section that services and the client read from their TOML config, turned into
//! a [`measurements::Policy`].
//!
//! ```toml
//! [policy]
//! roots = ["intel"]                 # "intel", or a path to a DER root (e.g. the simulated root)
//! images = ["<image hash hex>"]     # and/or a signed manifest:
//! manifest = { file = "manifest.json", publisher_keys = ["<ed25519 hex>"], role = "proxy" }
//!   # optional in `manifest`: record = "accepted-manifests.jsonl" (default
//!   # "<file>.accepted.jsonl"), allow_rollback = false (default)
//! rtmr3 = ["<96 hex>"]              # accepted runtime configurations (RTMR3 values)
//! models = { "<name>" = "<sha256 hex>" }   # models a worker may serve (proxy only)
//! tcb_statuses = ["UpToDate"]       # default
//! allow_debug = false               # default; development only
//! allow_any_config = false          # default; development only: no RTMR3 / model pin
//! max_collateral_age_secs = 604800  # default 7 days
//!
//! [policy.gpu]                      # the peer must present GPU evidence (workers)
//! roots = ["nvidia"]                # default; or a path to a DER root (the simulated root)
//! refs = "gpu-refs.json"            # reference values (`cocoon-measure gpu refs`), and/or
//!                                   # those of the pinned manifest's role
//! min_driver = "550.127.05"         # optional
//! count = 1                         # optional: exactly this many GPUs
//! require_ocsp = false              # default; true: every GPU chain needs OCSP answers
//! ocsp_max_age_secs = 43200         # optional: refuse answers older than this
//! ```
//! Relative paths are resolved against the config file's directory.
//!
//! # What a policy must pin
//! At least one image, always (directly or through the manifest): a service never runs with
//! "any image". Beyond the image, [`Required`] says what the verifier must pin, and loading
//! refuses a policy that does not ([`ConfigError::NoConfigPin`], [`ConfigError::NoModelPin`],
//! each message saying how to pin):
//! * the client (verifying proxies) pins the proxy's runtime configuration (RTMR3);
//! * the proxy (verifying workers) pins the worker's runtime configuration and the models a
//!   worker may register (name → SHA-256), so a genuine worker image configured to send
//!   prompts to a host URL, or to serve another model, is refused;
//! * a worker (verifying proxies) must pin the proxy image; an RTMR3 pin is enforced when
//!   given but not required. Requiring it both ways is a hash cycle (the proxy's config pins
//!   the worker's RTMR3, which covers the worker's config, which would pin the proxy's RTMR3);
//!   the link that may go unpinned is the one that carries no client data the worker did not
//!   already get from an attested proxy (docs/threat-model.md, "Runtime configuration").
//!
//! A manifest's role entry carries its `rtmr3` values and `models` into the policy, so pinning
//! a publisher's manifest pins the configurations and models it lists. `allow_any_config =
//! true` waives the RTMR3 and model requirements (development only; services log it loudly).
//!
//! A service running on real TDX ([`PolicyConfig::check_production`]) also refuses what only
//! development may say: a root other than Intel's, `allow_debug`, `allow_any_config`.
//!
//! # GPU evidence
//! `[policy.gpu]` requires the peer's certificate to carry GPU evidence bound to its key and
//! claims, each GPU's report signed under a pinned NVIDIA root with measurements equal to the
//! reference values ([`measurements::gpu::bundle`]). A pinned manifest whose role carries GPU
//! reference values requires GPU evidence too, with the defaults above, even without a
//! `[policy.gpu]` section: the publisher said the role runs on confidential GPUs. Reference
//! values are required; a GPU policy without any is refused at load.
//!
//! A pinned manifest is accepted only if a pinned publisher key signed it *and* the local
//! append-only record of accepted manifests agrees ([`crate::manifest_record`]): a manifest with
//! the same issued_at as an accepted one but other content is refused ("manifest swapped"), an
//! older one is refused ("manifest rollback") unless `allow_rollback = true`. Loading appends
//! one line to the record the first time a manifest is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use measurements::manifest::{RoleMeasurement, SignedManifest};
use measurements::policy::parse_tcb_status;
use measurements::{parse_hex_array, ImageHash, Policy, TrustRoot};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::manifest_record::{self, RecordEntry, RecordFileError};
use crate::Role;

/// Default maximum age of a peer's collateral: 7 days. Intel's PCS issues TCB info, QE
/// identity and CRLs with a 30-day `nextUpdate`, and a PCCS refreshes them daily; without an
/// age bound a platform could keep presenting collateral from before a TCB recovery, still
/// "UpToDate", for a month. Provers refresh the collateral they embed well within a week.
pub const DEFAULT_MAX_COLLATERAL_AGE_SECS: u64 = 7 * 24 * 3600;

/// Policy config errors (each names the field or file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("policy.{field}: {detail}")]
    Field { field: &'static str, detail: String },
    #[error("policy: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy: no image pinned (set images or manifest)")]
    NoImages,
    #[error(
        "policy: no runtime configuration pinned for the {peer} (its RTMR3): set rtmr3 = [\"<hex>\"] \
         (`cocoon-measure eventlog expect-config` computes it from the peer's config) or pin a \
         manifest whose {peer} role lists rtmr3; allow_any_config = true accepts any configuration \
         (development only)"
    )]
    NoConfigPin { peer: &'static str },
    #[error(
        "policy: no model pinned for workers: set models = {{ \"<name>\" = \"<sha256 hex>\" }} \
         or pin a manifest whose worker role lists models; allow_any_config = true accepts any \
         model (development only)"
    )]
    NoModelPin,
    #[error("policy.{field}: refused on real TDX: {detail}")]
    Production { field: &'static str, detail: String },
    #[error("policy.manifest: {0}")]
    ManifestRecord(#[from] RecordFileError),
}

fn default_roots() -> Vec<String> {
    vec!["intel".into()]
}

fn default_statuses() -> Vec<String> {
    vec!["UpToDate".into()]
}

fn default_max_age() -> Option<u64> {
    Some(DEFAULT_MAX_COLLATERAL_AGE_SECS)
}

/// What a verifier must pin besides an image (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Required {
    /// The peer role the policy verifies (named in errors).
    pub peer: Role,
    /// A runtime-configuration (RTMR3) pin.
    pub config: bool,
    /// Model digests.
    pub models: bool,
}

impl Required {
    /// What a verifier in role `verifier` must pin of its peers.
    pub fn by(verifier: Role) -> Self {
        match verifier {
            Role::Client => Self {
                peer: Role::Proxy,
                config: true,
                models: false,
            },
            Role::Proxy => Self {
                peer: Role::Worker,
                config: true,
                models: true,
            },
            Role::Worker => Self {
                peer: Role::Proxy,
                config: false,
                models: false,
            },
        }
    }
}

/// A signed manifest to take image hashes, RTMR3 values and models from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPin {
    pub file: PathBuf,
    pub publisher_keys: Vec<String>,
    /// The role whose image is accepted ("worker", "proxy").
    pub role: String,
    /// Append-only record of accepted manifests (default: `<file>.accepted.jsonl`, next to the
    /// manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
    /// Accept a manifest older than the newest one accepted from its publisher key.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_rollback: bool,
}

/// The `[policy]` section. Serializing writes only what differs from the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default = "default_roots", skip_serializing_if = "is_default_roots")]
    pub roots: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestPin>,
    #[serde(
        default = "default_statuses",
        skip_serializing_if = "is_default_statuses"
    )]
    pub tcb_statuses: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_debug: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtmr3: Vec<String>,
    /// Model name → SHA-256 (hex) of a model file a worker may serve under that name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// Development only: do not require RTMR3 or model pins.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_any_config: bool,
    /// `None` (no age bound) cannot be written in TOML: only the default is.
    #[serde(
        default = "default_max_age",
        skip_serializing_if = "is_default_max_age"
    )]
    pub max_collateral_age_secs: Option<u64>,
    /// GPU evidence the peer must present (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuPolicyConfig>,
}

fn default_gpu_roots() -> Vec<String> {
    vec!["nvidia".into()]
}

fn is_default_gpu_roots(v: &[String]) -> bool {
    *v == default_gpu_roots()
}

/// The `[policy.gpu]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicyConfig {
    /// "nvidia" (NVIDIA Device Identity CA), or a path to a DER root.
    #[serde(
        default = "default_gpu_roots",
        skip_serializing_if = "is_default_gpu_roots"
    )]
    pub roots: Vec<String>,
    /// A `cocoon-gpu-refs/v1` file of reference values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refs: Option<PathBuf>,
    /// Reject drivers below this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// Exactly this many GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Require OCSP answers for every GPU chain (workers with `[gpu] ocsp_url`). Answers a
    /// certificate carries are checked whether or not this is set.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_ocsp: bool,
    /// Refuse OCSP answers whose thisUpdate is older than this (seconds); their nextUpdate
    /// always applies. Must exceed the workers' certificate renewal interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_max_age_secs: Option<u64>,
}

impl Default for GpuPolicyConfig {
    fn default() -> Self {
        Self {
            roots: default_gpu_roots(),
            refs: None,
            min_driver: None,
            count: None,
            require_ocsp: false,
            ocsp_max_age_secs: None,
        }
    }
}

impl GpuPolicyConfig {
    /// The GPU policy, with the reference values of `refs` and of `manifest_refs` (the
    /// pinned manifest role's).
    fn load(
        &self,
        base: &Path,
        manifest_refs: Option<&measurements::gpu::GpuReferenceValues>,
    ) -> Result<measurements::gpu::GpuPolicy, ConfigError> {
        use measurements::gpu::{DriverVersion, GpuPolicy, GpuReferenceValues};
        let roots = self
            .roots
            .iter()
            .map(|r| {
                if r == "nvidia" {
                    Ok(measurements::gpu::nvidia_root())
                } else {
                    let path = base.join(r);
                    Ok(TrustRoot::new(path.display().to_string(), read(&path)?))
                }
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        if roots.is_empty() {
            return Err(field("gpu.roots", "empty"));
        }
        let mut refs = GpuReferenceValues {
            format: measurements::gpu::refs::GPU_REFS_FORMAT_V1.into(),
            sets: Vec::new(),
        };
        if let Some(file) = &self.refs {
            let path = base.join(file);
            let from_file = GpuReferenceValues::from_json(&read(&path)?)
                .map_err(|e| field("gpu.refs", format!("{}: {e}", path.display())))?;
            refs.sets.extend(from_file.sets);
        }
        if let Some(m) = manifest_refs {
            refs.sets.extend(m.sets.iter().cloned());
        }
        if refs.sets.is_empty() {
            return Err(field(
                "gpu.refs",
                "no reference values: set refs = \"<file>\" (`cocoon-measure gpu refs`) or pin a \
                 manifest whose role carries gpu reference values",
            ));
        }
        refs.validate().map_err(|e| field("gpu.refs", e))?;
        let mut policy = GpuPolicy::new(roots, refs);
        if let Some(v) = &self.min_driver {
            policy.min_driver =
                Some(DriverVersion::parse(v).map_err(|e| field("gpu.min_driver", e))?);
        }
        if self.count == Some(0) {
            return Err(field("gpu.count", "must be at least 1"));
        }
        policy.gpu_count = self.count;
        if self.ocsp_max_age_secs == Some(0) {
            return Err(field("gpu.ocsp_max_age_secs", "must be at least 1"));
        }
        policy.require_ocsp = self.require_ocsp;
        policy.ocsp_max_age_secs = self.ocsp_max_age_secs;
        Ok(policy)
    }
}

impl Default for PolicyConfig {
    /// What an empty `[policy]` section says (it pins nothing, so loading refuses it).
    fn default() -> Self {
        Self {
            roots: default_roots(),
            images: Vec::new(),
            manifest: None,
            tcb_statuses: default_statuses(),
            allow_debug: false,
            rtmr3: Vec::new(),
            models: BTreeMap::new(),
            allow_any_config: false,
            max_collateral_age_secs: default_max_age(),
            gpu: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default_roots(v: &[String]) -> bool {
    *v == default_roots()
}

fn is_default_statuses(v: &[String]) -> bool {
    *v == default_statuses()
}

fn is_default_max_age(v: &Option<u64>) -> bool {
    *v == default_max_age()
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn field(field: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        detail: detail.into(),
    }
}

impl PolicyConfig {
    /// Builds the policy, reading root and manifest files relative to `base`; a pinned
    /// manifest's acceptance is recorded with the system time ([`Self::load_at`]).
    pub fn load(&self, base: &Path, required: Required) -> Result<Policy, ConfigError> {
        self.load_at(base, required, SystemClock.now())
    }

    /// [`Self::load`] with the time (Unix seconds) written into the manifest record's
    /// `recorded_at`; no acceptance decision depends on it.
    pub fn load_at(
        &self,
        base: &Path,
        required: Required,
        now: u64,
    ) -> Result<Policy, ConfigError> {
        let mut policy = Policy::production();
        policy.roots = self
            .roots
            .iter()
            .map(|r| {
                if r == "intel" {
                    Ok(TrustRoot::intel())
                } else {
                    let path = base.join(r);
                    Ok(TrustRoot::new(path.display().to_string(), read(&path)?))
                }
            })
            .collect::<Result<_, ConfigError>>()?;
        if policy.roots.is_empty() {
            return Err(field("roots", "empty"));
        }
        policy.allowed_tcb_statuses.clear();
        for s in &self.tcb_statuses {
            let status = parse_tcb_status(s).map_err(|d| field("tcb_statuses", d))?;
            policy = policy.allow_tcb_status(status);
        }
        policy.allow_debug = self.allow_debug;
        policy.max_collateral_age_secs = self.max_collateral_age_secs;
        let mut images: BTreeSet<ImageHash> = self
            .images
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e: measurements::HexError| field("images", e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let mut rtmr3 = self
            .rtmr3
            .iter()
            .map(|s| parse_hex_array::<48>(s, "rtmr3").map_err(|e| field("rtmr3", e.to_string())))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let mut models: BTreeMap<String, BTreeSet<[u8; 32]>> = BTreeMap::new();
        for (name, digest) in &self.models {
            protocol::meta::check_model(name)
                .map_err(|e| field("models", format!("{name:?}: {}", e.message)))?;
            let d = parse_hex_array::<32>(digest, "model digest")
                .map_err(|e| field("models", format!("{name}: {e}")))?;
            models.entry(name.clone()).or_default().insert(d);
        }
        let mut manifest_gpu = None;
        if let Some(pin) = &self.manifest {
            let role = self.manifest_role(pin, base, now)?;
            manifest_gpu = role.gpu.clone();
            images.insert(role.image_hash);
            rtmr3.extend(role.rtmr3.iter().copied());
            for (name, digest) in &role.models {
                models.entry(name.clone()).or_default().insert(digest.0);
            }
        }
        if images.is_empty() {
            return Err(ConfigError::NoImages);
        }
        policy.allowed_images = Some(images);
        if !rtmr3.is_empty() {
            policy.allowed_rtmr3 = Some(rtmr3);
        } else if required.config && !self.allow_any_config {
            return Err(ConfigError::NoConfigPin {
                peer: required.peer.as_str(),
            });
        }
        if !models.is_empty() {
            policy.allowed_models = Some(models);
        } else if required.models && !self.allow_any_config {
            return Err(ConfigError::NoModelPin);
        }
        policy.gpu = match (&self.gpu, &manifest_gpu) {
            (Some(g), m) => Some(g.load(base, m.as_ref())?),
            (None, Some(m)) => Some(GpuPolicyConfig::default().load(base, Some(m))?),
            (None, None) => None,
        };
        Ok(policy)
    }

    /// What a service whose own evidence is real TDX evidence refuses to be configured with:
    /// a root other than Intel's, debug TDs, or unpinned configurations. (A host that wants
    /// any of these must boot the service on the simulated platform, whose evidence no
    /// production verifier accepts.)
    pub fn check_production(&self) -> Result<(), ConfigError> {
        if let Some(root) = self.roots.iter().find(|r| *r != "intel") {
            return Err(ConfigError::Production {
                field: "roots",
                detail: format!("only Intel's root is trusted, not {root:?}"),
            });
        }
        if self.allow_debug {
            return Err(ConfigError::Production {
                field: "allow_debug",
                detail: "debug TDs are never accepted".into(),
            });
        }
        if self.allow_any_config {
            return Err(ConfigError::Production {
                field: "allow_any_config",
                detail: "peers' configurations must be pinned".into(),
            });
        }
        if let Some(root) = self
            .gpu
            .iter()
            .flat_map(|g| &g.roots)
            .find(|r| *r != "nvidia")
        {
            return Err(ConfigError::Production {
                field: "gpu.roots",
                detail: format!("only NVIDIA's device identity root is trusted, not {root:?}"),
            });
        }
        Ok(())
    }

    fn manifest_role(
        &self,
        pin: &ManifestPin,
        base: &Path,
        now: u64,
    ) -> Result<RoleMeasurement, ConfigError> {
        let field = |detail: String| field("manifest", detail);
        let keys = pin
            .publisher_keys
            .iter()
            .map(|k| {
                let b =
                    parse_hex_array::<32>(k, "publisher key").map_err(|e| field(e.to_string()))?;
                ed25519_dalek_key(&b).map_err(field)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = base.join(&pin.file);
        let signed = SignedManifest::from_json(&read(&path)?)
            .map_err(|e| field(format!("{}: {e}", path.display())))?;
        let (manifest, signers) = signed
            .verify(&keys)
            .map_err(|e| field(format!("{}: {e}", path.display())))?;
        let role = manifest.roles.get(&pin.role).ok_or_else(|| {
            field(format!(
                "{}: no role {:?} (roles: {:?})",
                path.display(),
                pin.role,
                manifest.roles.keys().collect::<Vec<_>>()
            ))
        })?;
        let entry = RecordEntry::new(&signed, &manifest, &signers, now)
            .map_err(|e| field(format!("{}: {e}", path.display())))?;
        let record = match &pin.record {
            Some(r) => base.join(r),
            None => manifest_record::default_record_path(&path),
        };
        manifest_record::accept(&record, &entry, pin.allow_rollback)?;
        Ok(role.clone())
    }
}

fn ed25519_dalek_key(bytes: &[u8; 32]) -> Result<measurements::manifest::VerifyingKey, String> {
    measurements::manifest::VerifyingKey::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> String {
        "ab".repeat(32)
    }

    fn parse(text: &str) -> PolicyConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse(&format!("images = [\"{}\"]", img()));
        let p = c.load(Path::new("."), Required::by(Role::Worker)).unwrap();
        assert!(p.roots[0].is_intel());
        assert!(!p.allow_debug);
        assert_eq!(p.allowed_images.unwrap().len(), 1);
        assert_eq!(
            p.max_collateral_age_secs,
            Some(DEFAULT_MAX_COLLATERAL_AGE_SECS)
        );
        let none = parse("");
        assert!(matches!(
            none.load(Path::new("."), Required::by(Role::Worker)),
            Err(ConfigError::NoImages)
        ));
        assert!(toml::from_str::<PolicyConfig>("surprise = 1").is_err());
        let bad = parse(&format!(
            "images = [\"{}\"]\ntcb_statuses = [\"Fine\"]",
            img()
        ));
        assert!(bad
            .load(Path::new("."), Required::by(Role::Worker))
            .is_err());
    }

    /// Regression (trust hole): a client or proxy policy that pins only an image used to load
    /// and accept any runtime configuration of that image.
    #[test]
    fn config_and_model_pins_are_required() {
        let image_only = parse(&format!("images = [\"{}\"]", img()));
        let err = image_only
            .load(Path::new("."), Required::by(Role::Client))
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoConfigPin { peer: "proxy" }));
        let msg = err.to_string();
        assert!(
            msg.contains("rtmr3") && msg.contains("expect-config"),
            "{msg}"
        );
        assert!(matches!(
            image_only.load(Path::new("."), Required::by(Role::Proxy)),
            Err(ConfigError::NoConfigPin { peer: "worker" })
        ));

        let rtmr3 = "cd".repeat(48);
        let config_only = parse(&format!("images = [\"{}\"]\nrtmr3 = [\"{rtmr3}\"]", img()));
        let p = config_only
            .load(Path::new("."), Required::by(Role::Client))
            .unwrap();
        assert_eq!(p.allowed_rtmr3.unwrap().len(), 1);
        let err = config_only
            .load(Path::new("."), Required::by(Role::Proxy))
            .unwrap_err();
        assert!(matches!(err, ConfigError::NoModelPin), "{err}");

        let full = parse(&format!(
            "images = [\"{}\"]\nrtmr3 = [\"{rtmr3}\"]\nmodels = {{ \"tiny\" = \"{}\" }}",
            img(),
            "ef".repeat(32)
        ));
        let p = full
            .load(Path::new("."), Required::by(Role::Proxy))
            .unwrap();
        assert!(p.check_model("tiny", &"ef".repeat(32)).is_ok());
        let e = p.check_model("tiny", &"00".repeat(32)).unwrap_err();
        assert_eq!(e.code(), "model_not_allowed");
        assert!(p.check_model("other", &"ef".repeat(32)).is_err());
        assert!(p.check_model("tiny", "not hex").is_err());

        let dev = parse(&format!(
            "images = [\"{}\"]\nallow_any_config = true",
            img()
        ));
        let p = dev.load(Path::new("."), Required::by(Role::Proxy)).unwrap();
        assert!(!p.pins_config());
        assert!(p.allowed_models.is_none());

        let bad_model = parse(&format!(
            "images = [\"{}\"]\nallow_any_config = true\nmodels = {{ \"a b\" = \"{}\" }}",
            img(),
            "ef".repeat(32)
        ));
        assert!(bad_model
            .load(Path::new("."), Required::by(Role::Proxy))
            .is_err());
    }

    #[test]
    fn production_refuses_development_settings() {
        let ok = parse(&format!("images = [\"{}\"]", img()));
        assert!(ok.check_production().is_ok());
        for (extra, field) in [
            ("roots = [\"sim-root.der\"]", "roots"),
            ("roots = [\"intel\", \"sim-root.der\"]", "roots"),
            ("allow_debug = true", "allow_debug"),
            ("allow_any_config = true", "allow_any_config"),
        ] {
            let c = parse(&format!("images = [\"{}\"]\n{extra}", img()));
            match c.check_production() {
                Err(ConfigError::Production { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }
}
