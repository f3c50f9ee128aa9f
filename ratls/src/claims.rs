//! Claims: what a certificate's holder says about itself, bound into the quote.
//!
//! # Canonical encoding, version 1
//!
//! The claims bytes are `serde_json::to_vec` of [`Claims`]: compact JSON (no whitespace), the
//! object fields in the fixed order `role`, `protocol_version`, `extra`; `extra` is a
//! `BTreeMap<String, String>` so its keys appear in byte order; strings are escaped the way
//! serde_json escapes them. [`Claims::from_canonical_json`] accepts only bytes that are
//! exactly this encoding of the value they decode to, so one value has one encoding and the
//! SHA-256 in report_data names it unambiguously.
//!
//! report_data binding: see [`report_data`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::REPORT_DATA_TAG;

/// The `extra` entry naming the SHA-256 (hex) of the certificate's GPU evidence bundle.
pub const GPU_EVIDENCE_CLAIM: &str = "gpu_evidence";

/// Largest accepted claims encoding, in bytes.
pub const MAX_CLAIMS_LEN: usize = 8 * 1024;

/// The role a certificate holder plays in the network (the one definition, in `protocol`).
pub use protocol::Role;

/// What the certificate holder claims; bound into report_data through its canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub role: Role,
    /// The cocoon wire protocol version the holder speaks.
    pub protocol_version: u32,
    /// Free-form key/value claims (e.g. a model hash); sorted by key in the encoding.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// Claims bytes that are not a canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("claims are {len} bytes, more than the maximum {max}")]
    TooLarge { len: usize, max: usize },
    #[error("claims json: {0}")]
    Json(String),
    #[error("claims are not in canonical form (expected {expected} bytes of canonical json)")]
    NotCanonical { expected: usize },
}

impl Claims {
    /// Claims with no extra entries.
    pub fn new(role: Role, protocol_version: u32) -> Self {
        Self {
            role,
            protocol_version,
            extra: BTreeMap::new(),
        }
    }

    /// Adds a free-form entry.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The canonical encoding (see the module docs).
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ClaimsError> {
        let bytes = serde_json::to_vec(self).map_err(|e| ClaimsError::Json(e.to_string()))?;
        if bytes.len() > MAX_CLAIMS_LEN {
            return Err(ClaimsError::TooLarge {
                len: bytes.len(),
                max: MAX_CLAIMS_LEN,
            });
        }
        Ok(bytes)
    }

    /// Decodes claims, accepting only the canonical encoding.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ClaimsError> {
        if bytes.len() > MAX_CLAIMS_LEN {
            return Err(ClaimsError::TooLarge {
                len: bytes.len(),
                max: MAX_CLAIMS_LEN,
            });
        }
        let claims: Self =
            serde_json::from_slice(bytes).map_err(|e| ClaimsError::Json(e.to_string()))?;
        let canonical = claims.to_canonical_json()?;
        if canonical != bytes {
            return Err(ClaimsError::NotCanonical {
                expected: canonical.len(),
            });
        }
        Ok(claims)
    }
}

/// The report_data that binds a certificate key and claims:
///
/// ```text
/// SHA-512( "cocoon/ratls/v1" || 0x00 || spki_der || SHA-256(claims_bytes) )
/// ```
///
/// `spki_der` is the DER SubjectPublicKeyInfo of the certificate key, exactly as the
/// certificate carries it.
pub fn report_data(spki_der: &[u8], claims_bytes: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(REPORT_DATA_TAG);
    h.update(spki_der);
    h.update(Sha256::digest(claims_bytes));
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_encoding_is_pinned() {
        let c = Claims::new(Role::Worker, 1)
            .with_extra("z", "last")
            .with_extra("a", "first");
        let bytes = c.to_canonical_json().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"role":"worker","protocol_version":1,"extra":{"a":"first","z":"last"}}"#
        );
        assert_eq!(Claims::from_canonical_json(&bytes).unwrap(), c);
    }

    #[test]
    fn non_canonical_rejected() {
        for bad in [
            &br#"{"protocol_version":1,"role":"worker","extra":{}}"#[..],
            br#"{"role":"worker", "protocol_version":1,"extra":{}}"#,
            br#"{"role":"worker","protocol_version":1}"#,
            br#"{"role":"worker","protocol_version":1,"extra":{},"x":1}"#,
            br#"{"role":"admin","protocol_version":1,"extra":{}}"#,
            b"",
            b"\xff",
        ] {
            assert!(Claims::from_canonical_json(bad).is_err(), "{bad:?}");
        }
        let big = vec![b' '; MAX_CLAIMS_LEN + 1];
        assert!(matches!(
            Claims::from_canonical_json(&big),
            Err(ClaimsError::TooLarge { .. })
        ));
    }

    #[test]
    fn report_data_matches_definition() {
        let spki = [1u8, 2, 3];
        let claims = b"{}";
        let mut pre = b"cocoon/ratls/v1\0".to_vec();
        pre.extend_from_slice(&spki);
        pre.extend_from_slice(&Sha256::digest(claims));
        let want: [u8; 64] = Sha512::digest(&pre).into();
        assert_eq!(report_data(&spki, claims), want);
        assert_ne!(report_data(&spki, b"{ }"), want);
        assert_ne!(report_data(&[1, 2, 4], claims), want);
    }
}
