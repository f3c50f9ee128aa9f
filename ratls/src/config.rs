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
//! tcb_statuses = ["UpToDate"]       # default
//! allow_debug = false               # default; development only
//! rtmr3 = []                        # accepted RTMR3 values; empty = not checked
//! max_collateral_age_secs = 2592000 # optional
//! ```
//! At least one image must be pinned (directly or through the manifest): a service never runs
//! with "any image". Relative paths are resolved against the config file's directory.
//!
//! A pinned manifest is accepted only if a pinned publisher key signed it *and* the local
//! append-only record of accepted manifests agrees ([`crate::manifest_record`]): a manifest with
//! the same issued_at as an accepted one but other content is refused ("manifest swapped"), an
//! older one is refused ("manifest rollback") unless `allow_rollback = true`. Loading appends
//! one line to the record the first time a manifest is accepted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use measurements::manifest::SignedManifest;
use measurements::policy::parse_tcb_status;
use measurements::{parse_hex_array, ImageHash, Policy, TrustRoot};
use serde::Deserialize;

use crate::clock::{Clock, SystemClock};
use crate::manifest_record::{self, RecordEntry, RecordFileError};

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
    #[error("policy.manifest: {0}")]
    ManifestRecord(#[from] RecordFileError),
}

fn default_roots() -> Vec<String> {
    vec!["intel".into()]
}

fn default_statuses() -> Vec<String> {
    vec!["UpToDate".into()]
}

/// A signed manifest to take image hashes from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPin {
    pub file: PathBuf,
    pub publisher_keys: Vec<String>,
    /// The role whose image is accepted ("worker", "proxy").
    pub role: String,
    /// Append-only record of accepted manifests (default: `<file>.accepted.jsonl`, next to the
    /// manifest).
    #[serde(default)]
    pub record: Option<PathBuf>,
    /// Accept a manifest older than the newest one accepted from its publisher key.
    #[serde(default)]
    pub allow_rollback: bool,
}

/// The `[policy]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default = "default_roots")]
    pub roots: Vec<String>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub manifest: Option<ManifestPin>,
    #[serde(default = "default_statuses")]
    pub tcb_statuses: Vec<String>,
    #[serde(default)]
    pub allow_debug: bool,
    #[serde(default)]
    pub rtmr3: Vec<String>,
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl PolicyConfig {
    /// Builds the policy, reading root and manifest files relative to `base`; a pinned
    /// manifest's acceptance is recorded with the system time ([`Self::load_at`]).
    pub fn load(&self, base: &Path) -> Result<Policy, ConfigError> {
        self.load_at(base, SystemClock.now())
    }

    /// [`Self::load`] with the time (Unix seconds) written into the manifest record's
    /// `recorded_at`; no acceptance decision depends on it.
    pub fn load_at(&self, base: &Path, now: u64) -> Result<Policy, ConfigError> {
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
            return Err(ConfigError::Field {
                field: "roots",
                detail: "empty".into(),
            });
        }
        policy.allowed_tcb_statuses.clear();
        for s in &self.tcb_statuses {
            let status = parse_tcb_status(s).map_err(|detail| ConfigError::Field {
                field: "tcb_statuses",
                detail,
            })?;
            policy = policy.allow_tcb_status(status);
        }
        policy.allow_debug = self.allow_debug;
        policy.max_collateral_age_secs = self.max_collateral_age_secs;
        let mut images: BTreeSet<ImageHash> = self
            .images
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e: measurements::HexError| ConfigError::Field {
                        field: "images",
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        if let Some(pin) = &self.manifest {
            images.extend(self.manifest_images(pin, base, now)?);
        }
        if images.is_empty() {
            return Err(ConfigError::NoImages);
        }
        policy.allowed_images = Some(images);
        if !self.rtmr3.is_empty() {
            policy.allowed_rtmr3 = Some(
                self.rtmr3
                    .iter()
                    .map(|s| {
                        parse_hex_array::<48>(s, "rtmr3").map_err(|e| ConfigError::Field {
                            field: "rtmr3",
                            detail: e.to_string(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            );
        }
        Ok(policy)
    }

    fn manifest_images(
        &self,
        pin: &ManifestPin,
        base: &Path,
        now: u64,
    ) -> Result<Vec<ImageHash>, ConfigError> {
        let field = |detail: String| ConfigError::Field {
            field: "manifest",
            detail,
        };
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
        Ok(vec![role.image_hash])
    }
}

fn ed25519_dalek_key(bytes: &[u8; 32]) -> Result<measurements::manifest::VerifyingKey, String> {
    measurements::manifest::VerifyingKey::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c: PolicyConfig =
            toml::from_str(&format!("images = [\"{}\"]", "ab".repeat(32))).unwrap();
        let p = c.load(Path::new(".")).unwrap();
        assert!(p.roots[0].is_intel());
        assert!(!p.allow_debug);
        assert_eq!(p.allowed_images.unwrap().len(), 1);
        let none: PolicyConfig = toml::from_str("").unwrap();
        assert!(matches!(
            none.load(Path::new(".")),
            Err(ConfigError::NoImages)
        ));
        assert!(toml::from_str::<PolicyConfig>("surprise = 1").is_err());
        let bad: PolicyConfig = toml::from_str(&format!(
            "images = [\"{}\"]\ntcb_statuses = [\"Fine\"]",
            "ab".repeat(32)
        ))
        .unwrap();
        assert!(bad.load(Path::new(".")).is_err());
    }
}
