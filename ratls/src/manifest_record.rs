//! An append-only local record of the signed manifests a verifier has accepted, so that a
//! manifest silently swapped or rolled back at its distribution point is noticed.
//!
//! # Format (`cocoon-manifest-record/v1`)
//! JSON Lines: one object per accepted manifest, each line ending in `\n`:
//!
//! ```json
//! {"format":"cocoon-manifest-record/v1","manifest_sha256":"<hex>","publisher_keys":["<hex>"],
//!  "publisher":"…","issued_at":1700000000,"source_commit":"…","images":{"proxy":"<hex>"},
//!  "recorded_at":1700000500}
//! ```
//!
//! * `manifest_sha256`: SHA-256 of the bytes the signatures cover
//!   (`SignedManifest::signed_bytes`: domain tag ‖ canonical manifest JSON). Signatures are not
//!   included, so adding a co-signature does not make a "new" manifest.
//! * `publisher_keys`: the pinned keys whose signatures verified (hex, sorted).
//! * `images`: role → image hash. `recorded_at`: Unix seconds when the line was written
//!   (informational; no decision uses it).
//!
//! The file is only ever opened for appending; nothing here rewrites or truncates it.
//!
//! # Rules ([`check`])
//! Against the earlier lines that share a publisher key with the candidate:
//! 1. same `issued_at`, different `manifest_sha256` → refused, "manifest swapped" (no override:
//!    a publisher gives every release a new `issued_at`);
//! 2. `issued_at` older than the newest accepted → refused, "manifest rollback", unless the
//!    policy sets `allow_rollback = true`;
//! 3. already recorded (same `manifest_sha256`, same or more keys) → accepted, nothing written
//!    (loading a config twice is idempotent); otherwise accepted and one line appended.
//!
//! A line that does not parse — including an empty line and a last line without its `\n`
//! (an interrupted write) — refuses every manifest until an operator repairs the file: the
//! record is evidence, and guessing past damage would defeat it.
//!
//! Rollback is tracked per publisher key: after a key rotation the new key starts a new
//! history. The record protects against a changed manifest *file* (e.g. fetched from a
//! mirror); it does not protect against an attacker who can write the record itself.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use measurements::manifest::{Manifest, ManifestError, SignedManifest, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format identifier of record lines.
pub const RECORD_FORMAT_V1: &str = "cocoon-manifest-record/v1";

/// Suffix of the default record path: `<manifest file>.accepted.jsonl`.
pub const DEFAULT_RECORD_SUFFIX: &str = ".accepted.jsonl";

/// One accepted manifest (one line of the record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordEntry {
    pub format: String,
    pub manifest_sha256: String,
    pub publisher_keys: Vec<String>,
    pub publisher: String,
    pub issued_at: u64,
    pub source_commit: Option<String>,
    pub images: BTreeMap<String, String>,
    pub recorded_at: u64,
}

impl RecordEntry {
    /// The entry for a manifest that verified with `signers`, recorded at `now`.
    pub fn new(
        signed: &SignedManifest,
        manifest: &Manifest,
        signers: &[VerifyingKey],
        now: u64,
    ) -> Result<Self, ManifestError> {
        let mut keys: Vec<String> = signers.iter().map(|k| hex::encode(k.as_bytes())).collect();
        keys.sort();
        keys.dedup();
        Ok(Self {
            format: RECORD_FORMAT_V1.into(),
            manifest_sha256: hex::encode(Sha256::digest(signed.signed_bytes()?)),
            publisher_keys: keys,
            publisher: manifest.publisher.clone(),
            issued_at: manifest.issued_at,
            source_commit: manifest.source_commit.clone(),
            images: manifest
                .roles
                .iter()
                .map(|(role, m)| (role.clone(), m.image_hash.to_string()))
                .collect(),
            recorded_at: now,
        })
    }

    /// The line to append, with its `\n`.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    fn shares_key(&self, other: &Self) -> Option<&str> {
        self.publisher_keys
            .iter()
            .find(|k| other.publisher_keys.contains(k))
            .map(String::as_str)
    }

    fn validate(&self) -> Result<(), String> {
        if self.format != RECORD_FORMAT_V1 {
            return Err(format!(
                "format {:?}, expected {RECORD_FORMAT_V1:?}",
                self.format
            ));
        }
        let hex_len = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_len(&self.manifest_sha256, 64) {
            return Err("manifest_sha256 is not 64 hex characters".into());
        }
        if self.publisher_keys.is_empty() || !self.publisher_keys.iter().all(|k| hex_len(k, 64)) {
            return Err("publisher_keys must be 64-hex-character keys, at least one".into());
        }
        Ok(())
    }
}

/// What to do with an accepted candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Already in the record at this line (1-based); nothing to write.
    AlreadyRecorded { line: usize },
    /// Append this line (ends with `\n`).
    Append(String),
}

/// Why a candidate manifest is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("line {line}: malformed record line: {detail}")]
    Malformed { line: usize, detail: String },
    #[error(
        "manifest swapped: publisher key {key} issued_at {issued_at} was accepted with content \
         sha256 {recorded} (line {line}), this manifest has {candidate}"
    )]
    Swapped {
        key: String,
        issued_at: u64,
        recorded: String,
        candidate: String,
        line: usize,
    },
    #[error(
        "manifest rollback: issued_at {issued_at} is older than issued_at {newest} accepted from \
         publisher key {key} (line {line}); set allow_rollback = true to accept it"
    )]
    Rollback {
        key: String,
        issued_at: u64,
        newest: u64,
        line: usize,
    },
}

/// Parses the record (see the module docs): every line, numbered from 1.
pub fn parse(record: &str) -> Result<Vec<(usize, RecordEntry)>, RecordError> {
    record
        .split_inclusive('\n')
        .enumerate()
        .map(|(i, raw)| {
            let line = i + 1;
            let malformed = |detail: String| RecordError::Malformed { line, detail };
            let Some(text) = raw.strip_suffix('\n') else {
                return Err(malformed("no trailing newline (interrupted write?)".into()));
            };
            if text.trim().is_empty() {
                return Err(malformed("empty line".into()));
            }
            let entry: RecordEntry =
                serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
            entry.validate().map_err(malformed)?;
            Ok((line, entry))
        })
        .collect()
}

/// Decides whether `candidate` may be accepted given the record text (pure; see the rules in
/// the module docs).
pub fn check(
    record: &str,
    candidate: &RecordEntry,
    allow_rollback: bool,
) -> Result<Decision, RecordError> {
    let entries = parse(record)?;
    let related = || {
        entries
            .iter()
            .filter_map(|(line, e)| e.shares_key(candidate).map(|k| (*line, e, k)))
    };
    if let Some((line, e, key)) = related().find(|(_, e, _)| {
        e.issued_at == candidate.issued_at && e.manifest_sha256 != candidate.manifest_sha256
    }) {
        return Err(RecordError::Swapped {
            key: key.to_string(),
            issued_at: e.issued_at,
            recorded: e.manifest_sha256.clone(),
            candidate: candidate.manifest_sha256.clone(),
            line,
        });
    }
    if let Some((line, newest, key)) = related().max_by_key(|(_, e, _)| e.issued_at) {
        if candidate.issued_at < newest.issued_at && !allow_rollback {
            return Err(RecordError::Rollback {
                key: key.to_string(),
                issued_at: candidate.issued_at,
                newest: newest.issued_at,
                line,
            });
        }
    }
    let recorded = entries.iter().find(|(_, e)| {
        e.manifest_sha256 == candidate.manifest_sha256
            && candidate
                .publisher_keys
                .iter()
                .all(|k| e.publisher_keys.contains(k))
    });
    Ok(match recorded {
        Some((line, _)) => Decision::AlreadyRecorded { line: *line },
        None => Decision::Append(candidate.to_line()),
    })
}

/// The record path used when the policy names none: `<manifest file>.accepted.jsonl`.
pub fn default_record_path(manifest_file: &Path) -> PathBuf {
    let mut name = manifest_file.as_os_str().to_owned();
    name.push(DEFAULT_RECORD_SUFFIX);
    PathBuf::from(name)
}

/// A record that could not be read or written, or that refuses the manifest.
#[derive(Debug, thiserror::Error)]
pub enum RecordFileError {
    #[error("manifest record {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest record {path}: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: RecordError,
    },
}

/// Reads the record at `path` (a missing file is an empty record), [`check`]s the candidate
/// and appends its line if needed (the file is opened for appending only, and synced).
pub fn accept(
    path: &Path,
    candidate: &RecordEntry,
    allow_rollback: bool,
) -> Result<Decision, RecordFileError> {
    let io = |source| RecordFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let decision =
        check(&text, candidate, allow_rollback).map_err(|source| RecordFileError::Refused {
            path: path.to_path_buf(),
            source,
        })?;
    if let Decision::Append(line) = &decision {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurements::manifest::SigningKey;
    use measurements::TdRegisters;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn entry(issued_at: u64, mrtd: u8, signer: u8) -> RecordEntry {
        let mut regs = TdRegisters::ZERO;
        regs.mrtd = [mrtd; 48];
        let m = Manifest::new("pub", issued_at).with_role("proxy", regs);
        let signed = m.sign(&key(signer)).unwrap();
        let (m, signers) = signed.verify(&[key(signer).verifying_key()]).unwrap();
        RecordEntry::new(&signed, &m, &signers, 5).unwrap()
    }

    fn append(record: &mut String, e: &RecordEntry, allow_rollback: bool) {
        match check(record, e, allow_rollback).unwrap() {
            Decision::Append(line) => record.push_str(&line),
            other => panic!("expected append, got {other:?}"),
        }
    }

    #[test]
    fn first_accept_then_idempotent_then_newer() {
        let mut record = String::new();
        let v1 = entry(100, 1, 1);
        append(&mut record, &v1, false);
        assert_eq!(record.lines().count(), 1);
        assert_eq!(parse(&record).unwrap()[0].1, v1);
        assert_eq!(
            check(&record, &v1, false).unwrap(),
            Decision::AlreadyRecorded { line: 1 }
        );
        // Recorded at another time: still the same manifest.
        let mut again = v1.clone();
        again.recorded_at = 99;
        assert_eq!(
            check(&record, &again, false).unwrap(),
            Decision::AlreadyRecorded { line: 1 }
        );
        let v2 = entry(200, 2, 1);
        append(&mut record, &v2, false);
        assert_eq!(record.lines().count(), 2);
        // Another publisher key has its own history.
        let other = entry(50, 3, 2);
        append(&mut record, &other, false);
    }

    #[test]
    fn swap_is_refused_even_with_allow_rollback() {
        let mut record = String::new();
        append(&mut record, &entry(100, 1, 1), false);
        let swapped = entry(100, 2, 1);
        for allow in [false, true] {
            let err = check(&record, &swapped, allow).unwrap_err();
            assert!(matches!(
                err,
                RecordError::Swapped {
                    line: 1,
                    issued_at: 100,
                    ..
                }
            ));
            assert!(err.to_string().starts_with("manifest swapped: "), "{err}");
        }
    }

    #[test]
    fn rollback_is_refused_unless_allowed() {
        let mut record = String::new();
        let v1 = entry(100, 1, 1);
        append(&mut record, &v1, false);
        append(&mut record, &entry(200, 2, 1), false);
        let err = check(&record, &v1, false).unwrap_err();
        assert_eq!(
            err,
            RecordError::Rollback {
                key: hex::encode(key(1).verifying_key().as_bytes()),
                issued_at: 100,
                newest: 200,
                line: 2,
            }
        );
        assert!(err.to_string().starts_with("manifest rollback: "), "{err}");
        assert_eq!(
            check(&record, &v1, true).unwrap(),
            Decision::AlreadyRecorded { line: 1 }
        );
        assert!(matches!(
            check(&record, &entry(150, 3, 1), true).unwrap(),
            Decision::Append(_)
        ));
    }

    #[test]
    fn corrupt_records_are_refused_naming_the_line() {
        let good = entry(100, 1, 1).to_line();
        let cand = entry(200, 2, 1);
        let cases = [
            (format!("{good}not json\n"), 2),
            (format!("{good}\n{good}"), 2),
            (format!("{good}{}", good.trim_end()), 2),
            (good.replace(RECORD_FORMAT_V1, "other/v9"), 1),
            (
                good.replace("\"publisher\"", "\"extra\":1,\"publisher\""),
                1,
            ),
            (good.replace(&cand.publisher_keys[0], &"zz".repeat(32)), 1),
        ];
        for (text, line) in cases {
            let err = check(&text, &cand, false).unwrap_err();
            assert!(
                matches!(err, RecordError::Malformed { line: l, .. } if l == line),
                "{text:?}: {err}"
            );
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn default_path_sits_next_to_the_manifest() {
        assert_eq!(
            default_record_path(Path::new("/etc/cocoon/manifest.json")),
            PathBuf::from("/etc/cocoon/manifest.json.accepted.jsonl")
        );
    }
}
