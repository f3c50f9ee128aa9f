//! Signed measurement manifests.
//!
//! A manifest says, for each role (worker, proxy), which measured image a publisher vouches
//! for: the [`ImageHash`] and the registers it covers, plus optional expected RTMR3 values and
//! model digests. Clients pin publisher keys (Ed25519) and accept images named by a manifest
//! that one of those keys signed.
//!
//! # Wire form
//! ```json
//! { "manifest": { "format": "cocoon-manifest/v1", "publisher": "...", "issued_at": 1700000000,
//!                 "source_commit": "...", "roles": { "worker": { "image_hash": "…", "registers": {…} } } },
//!   "signatures": [ { "public_key": "<32-byte hex>", "signature": "<64-byte hex>" } ] }
//! ```
//!
//! # Canonical bytes (what is signed)
//! `b"cocoon/manifest-signature/v1\0" || canonical_json(manifest)`, where `canonical_json` is
//! the manifest object serialized with: object keys sorted by their UTF-8 bytes, no whitespace,
//! strings escaped as JSON requires (`"` `\` and control characters; control characters other
//! than `\b \f \n \r \t` as `\u00XX` lowercase hex; everything else literal UTF-8), integers in
//! plain decimal, `true`/`false`/`null`. Floating-point numbers are not allowed anywhere in a
//! manifest. This is the integer-only, ASCII-key subset of RFC 8785 (JCS); it does not depend
//! on how any JSON library prints or orders fields.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, Verifier as _};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registers::{hex32, ImageHash, Sha384, TdRegisters};

/// Format identifier of version 1 manifests.
pub const MANIFEST_FORMAT_V1: &str = "cocoon-manifest/v1";
/// Domain tag prepended to the canonical bytes before signing.
pub const SIGNATURE_DOMAIN_V1: &[u8] = b"cocoon/manifest-signature/v1\0";

/// Manifest errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest json: {0}")]
    Json(String),
    #[error("manifest format {0:?} not supported (expected {MANIFEST_FORMAT_V1:?})")]
    Format(String),
    #[error("manifest contains a non-integer number at {0}")]
    Float(String),
    #[error("manifest role {role}: image_hash {stated} does not match its registers ({computed})")]
    ImageHashMismatch {
        role: String,
        stated: ImageHash,
        computed: ImageHash,
    },
    #[error("manifest role {role}: gpu reference values: {detail}")]
    Gpu { role: String, detail: String },
    #[error("manifest signature {index}: malformed {what}")]
    MalformedSignature { index: usize, what: &'static str },
    #[error("manifest has no valid signature by a pinned publisher key ({signatures} signatures, {pinned} pinned keys)")]
    NotSigned { signatures: usize, pinned: usize },
    #[error("manifest signature by {public_key} does not verify")]
    BadSignature { public_key: String },
}

/// What a publisher states about one role's image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMeasurement {
    pub image_hash: ImageHash,
    pub registers: TdRegisters,
    /// Accepted RTMR3 values (replayed runtime configurations), if the publisher pins them.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex48_vec")]
    pub rtmr3: Vec<Sha384>,
    /// Model name → SHA-256 of the model file the role serves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Hex32>,
    /// Reference values for the GPUs the role's machines attach (`cocoon-gpu-refs/v1`, e.g.
    /// from `cocoon-measure gpu refs`); absent when the role has no GPU policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::GpuReferenceValues>,
}

/// A 32-byte value serialized as hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hex32(#[serde(with = "hex32")] pub [u8; 32]);

/// The signed content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub publisher: String,
    /// Unix seconds.
    pub issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    pub roles: BTreeMap<String, RoleMeasurement>,
}

/// One signature over the canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    pub public_key: String,
    pub signature: String,
}

/// A manifest as published: content plus signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: Value,
    pub signatures: Vec<ManifestSignature>,
}

impl Manifest {
    /// A new v1 manifest.
    pub fn new(publisher: impl Into<String>, issued_at: u64) -> Self {
        Self {
            format: MANIFEST_FORMAT_V1.into(),
            publisher: publisher.into(),
            issued_at,
            source_commit: None,
            roles: BTreeMap::new(),
        }
    }

    /// Adds a role with registers; the image hash is computed from them.
    pub fn with_role(mut self, role: impl Into<String>, registers: TdRegisters) -> Self {
        self.roles.insert(
            role.into(),
            RoleMeasurement {
                image_hash: registers.image_hash(),
                registers,
                rtmr3: Vec::new(),
                models: BTreeMap::new(),
                gpu: None,
            },
        );
        self
    }

    /// Checks the format and that every stated image hash matches its registers.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT_V1 {
            return Err(ManifestError::Format(self.format.clone()));
        }
        for (role, m) in &self.roles {
            if let Some(gpu) = &m.gpu {
                gpu.validate().map_err(|detail| ManifestError::Gpu {
                    role: role.clone(),
                    detail,
                })?;
            }
            let computed = m.registers.image_hash();
            if computed != m.image_hash {
                return Err(ManifestError::ImageHashMismatch {
                    role: role.clone(),
                    stated: m.image_hash,
                    computed,
                });
            }
        }
        Ok(())
    }

    /// Every image hash the manifest names.
    pub fn image_hashes(&self) -> impl Iterator<Item = ImageHash> + '_ {
        self.roles.values().map(|m| m.image_hash)
    }

    /// Signs the manifest with `key`.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedManifest, ManifestError> {
        self.validate()?;
        let value = serde_json::to_value(self).map_err(|e| ManifestError::Json(e.to_string()))?;
        let mut signed = SignedManifest {
            manifest: value,
            signatures: Vec::new(),
        };
        signed.add_signature(key)?;
        Ok(signed)
    }
}

impl SignedManifest {
    /// Parses the published JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))
    }

    /// Pretty JSON for publication.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The bytes each signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        let mut out = SIGNATURE_DOMAIN_V1.to_vec();
        canonical_json(&self.manifest, "$", &mut out)?;
        Ok(out)
    }

    /// Adds a signature by `key` (co-signing).
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), ManifestError> {
        let msg = self.signed_bytes()?;
        self.signatures.push(ManifestSignature {
            public_key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(key.sign(&msg).to_bytes()),
        });
        Ok(())
    }

    /// Verifies that at least one signature by a `pinned` key is valid (a signature by a
    /// pinned key that does not verify is an error even if another one does), then parses and
    /// validates the manifest. Returns the manifest and the keys that signed it.
    pub fn verify(
        &self,
        pinned: &[VerifyingKey],
    ) -> Result<(Manifest, Vec<VerifyingKey>), ManifestError> {
        let msg = self.signed_bytes()?;
        let mut signers = Vec::new();
        for (index, s) in self.signatures.iter().enumerate() {
            let pk: [u8; 32] =
                crate::parse_hex_array(&s.public_key, "public_key").map_err(|_| {
                    ManifestError::MalformedSignature {
                        index,
                        what: "public_key",
                    }
                })?;
            let sig: [u8; 64] =
                crate::parse_hex_array(&s.signature, "signature").map_err(|_| {
                    ManifestError::MalformedSignature {
                        index,
                        what: "signature",
                    }
                })?;
            let Some(key) = pinned.iter().find(|k| k.as_bytes() == &pk) else {
                continue;
            };
            key.verify(&msg, &Signature::from_bytes(&sig))
                .map_err(|_| ManifestError::BadSignature {
                    public_key: s.public_key.clone(),
                })?;
            signers.push(*key);
        }
        if signers.is_empty() {
            return Err(ManifestError::NotSigned {
                signatures: self.signatures.len(),
                pinned: pinned.len(),
            });
        }
        let manifest: Manifest = serde_json::from_value(self.manifest.clone())
            .map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok((manifest, signers))
    }
}

/// Writes the canonical JSON form of `v` (see the module docs) to `out`.
pub fn canonical_json(v: &Value, path: &str, out: &mut Vec<u8>) -> Result<(), ManifestError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(ManifestError::Float(path.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, &format!("{path}[{i}]"), out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                canonical_json(&map[k], &format!("{path}.{k}"), out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

mod hex48_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[[u8; 48]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 48]>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| crate::parse_hex_array(s, "rtmr3").map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn sample() -> Manifest {
        let mut regs = TdRegisters::ZERO;
        regs.mrtd = [1; 48];
        regs.td_attributes = (1u64 << 28).to_le_bytes();
        Manifest::new("cocoon test publisher", 1_700_000_000)
            .with_role("worker", regs)
            .with_role("proxy", TdRegisters::ZERO)
    }

    #[test]
    fn sign_verify_round_trip_through_json() {
        let signed = sample().sign(&key(1)).unwrap();
        let text = signed.to_json_pretty();
        let parsed = SignedManifest::from_json(text.as_bytes()).unwrap();
        let (m, signers) = parsed.verify(&[key(1).verifying_key()]).unwrap();
        assert_eq!(m, sample());
        assert_eq!(signers, vec![key(1).verifying_key()]);
    }

    #[test]
    fn canonical_bytes_ignore_key_order_and_whitespace() {
        let signed = sample().sign(&key(1)).unwrap();
        let reordered: Value = serde_json::from_str(&format!(
            "{{ \"roles\": {} ,\n \"publisher\": \"cocoon test publisher\", \"issued_at\": 1700000000, \"format\": \"cocoon-manifest/v1\" }}",
            serde_json::to_string(&signed.manifest["roles"]).unwrap()
        ))
        .unwrap();
        let other = SignedManifest {
            manifest: reordered,
            signatures: signed.signatures.clone(),
        };
        assert_eq!(
            other.signed_bytes().unwrap(),
            signed.signed_bytes().unwrap()
        );
        other.verify(&[key(1).verifying_key()]).unwrap();
    }

    #[test]
    fn canonical_form_is_pinned() {
        let v: Value =
            serde_json::from_str(r#"{"b":[1,-2,true,null],"a":"x\"\n\u0001é"}"#).unwrap();
        let mut out = Vec::new();
        canonical_json(&v, "$", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":\"x\\\"\\n\\u0001é\",\"b\":[1,-2,true,null]}"
        );
        let f: Value = serde_json::from_str(r#"{"a":1.5}"#).unwrap();
        assert_eq!(
            canonical_json(&f, "$", &mut Vec::new()),
            Err(ManifestError::Float("$.a".into()))
        );
    }

    #[test]
    fn tampering_and_wrong_keys_are_rejected() {
        let signed = sample().sign(&key(1)).unwrap();
        assert!(matches!(
            signed.verify(&[key(2).verifying_key()]),
            Err(ManifestError::NotSigned { .. })
        ));
        let mut tampered = signed.clone();
        tampered.manifest["issued_at"] = Value::from(1_700_000_001u64);
        assert!(matches!(
            tampered.verify(&[key(1).verifying_key()]),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut bad_hash = signed.clone();
        bad_hash.manifest["roles"]["worker"]["registers"]["mrtd"] =
            Value::from(hex::encode([2u8; 48]));
        bad_hash.signatures.clear();
        bad_hash.add_signature(&key(1)).unwrap();
        assert!(matches!(
            bad_hash.verify(&[key(1).verifying_key()]),
            Err(ManifestError::ImageHashMismatch { .. })
        ));
        let mut garbage = signed;
        garbage.signatures[0].signature = "zz".into();
        assert!(matches!(
            garbage.verify(&[key(1).verifying_key()]),
            Err(ManifestError::MalformedSignature { index: 0, .. })
        ));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let signed = sample().sign(&key(1)).unwrap();
        let mut extra = signed.clone();
        extra.manifest["surprise"] = Value::from(1);
        extra.signatures.clear();
        extra.add_signature(&key(1)).unwrap();
        assert!(matches!(
            extra.verify(&[key(1).verifying_key()]),
            Err(ManifestError::Json(_))
        ));
    }
}
