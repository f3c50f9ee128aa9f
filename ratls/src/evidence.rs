//! Parsing a peer's RA-TLS certificate into [`PeerEvidence`].
//!
//! Input is untrusted bytes: [`parse_cert`] never panics, bounds every length and returns a
//! [`CertError`] naming what is wrong. It checks the structure only (time-independent, so a
//! fuzz target can call it): X.509 v3, signature algorithm Ed25519 (inner and outer),
//! Ed25519 subject key, a valid self-signature over the TBS bytes, each cocoon extension
//! ([`crate::oids`]) present at most once and critical, quote and claims present, no other
//! critical extension except basicConstraints and keyUsage, canonical claims.
//! [`parse_cert_at`] adds the validity window. It does not judge the quote: that is
//! [`crate::verify`].

use measurements::{Collateral, CollateralError};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use crate::claims::{ClaimsError, MAX_CLAIMS_LEN};
use crate::oids;

/// Largest accepted certificate (the TLS 1.3 handshake message limit in rustls is 64 KiB).
pub const MAX_CERT_LEN: usize = 64 * 1024;
/// Largest accepted quote.
pub const MAX_QUOTE_LEN: usize = 32 * 1024;
/// Largest accepted claims extension.
pub const MAX_CLAIMS_EXT_LEN: usize = MAX_CLAIMS_LEN;
/// Largest accepted collateral JSON.
pub const MAX_COLLATERAL_LEN: usize = 60 * 1024;
/// Largest accepted GPU evidence bundle.
pub const MAX_GPU_EVIDENCE_LEN: usize = measurements::gpu::bundle::MAX_BUNDLE_LEN;

/// DER of the Ed25519 algorithm OID 1.3.101.112 (RFC 8410).
const ED25519_OID: &[u64] = &[1, 3, 101, 112];
/// basicConstraints and keyUsage: standard extensions tolerated as critical.
const KNOWN_CRITICAL: &[&[u64]] = &[&[2, 5, 29, 19], &[2, 5, 29, 15]];

/// Why a certificate is not a well-formed RA-TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate is {len} bytes, more than the maximum {max}")]
    TooLarge { len: usize, max: usize },
    #[error("x509 der: {0}")]
    Der(String),
    #[error("{0} trailing bytes after the certificate")]
    TrailingBytes(usize),
    #[error("x509 version {0}, expected v3")]
    Version(u32),
    #[error("signature algorithm {oid} is not ed25519 (1.3.101.112 without parameters)")]
    SignatureAlgorithm { oid: String },
    #[error("tbs signature algorithm {inner} differs from outer {outer}")]
    SignatureAlgorithmMismatch { inner: String, outer: String },
    #[error("subject key algorithm {oid} is not ed25519")]
    KeyAlgorithm { oid: String },
    #[error("ed25519 subject key is {0} bytes, expected 32")]
    KeyLength(usize),
    #[error("self-signature invalid (not made by the subject key)")]
    BadSignature,
    #[error("certificate outer encoding is not canonical der")]
    NonCanonical,
    #[error("certificate not yet valid: not before {not_before}, now {now}")]
    NotYetValid { not_before: u64, now: u64 },
    #[error("certificate expired: not after {not_after}, now {now}")]
    Expired { not_after: u64, now: u64 },
    #[error("certificate validity: {0}")]
    Validity(String),
    #[error("extension {name} ({oid}) missing")]
    MissingExtension { name: &'static str, oid: String },
    #[error("extension {oid} present more than once")]
    DuplicateExtension { oid: String },
    #[error("unknown critical extension {oid}")]
    UnknownCriticalExtension { oid: String },
    #[error("extension {name} ({oid}) must be critical")]
    NotCritical { name: &'static str, oid: String },
    #[error("extension {name}: {detail}")]
    ExtensionEncoding { name: &'static str, detail: String },
    #[error("extension {name} is {len} bytes, more than the maximum {max}")]
    ExtensionTooLarge {
        name: &'static str,
        len: usize,
        max: usize,
    },
    #[error("claims: {0}")]
    Claims(#[from] ClaimsError),
    #[error("embedded collateral: {0}")]
    Collateral(#[from] CollateralError),
}

/// What a peer certificate carries, structurally checked but not yet verified.
#[derive(Clone, Debug)]
pub struct PeerEvidence {
    /// DER SubjectPublicKeyInfo of the certificate key (Ed25519).
    pub spki_der: Vec<u8>,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: [u8; 32],
    /// The TDX quote bytes.
    pub quote: Vec<u8>,
    /// The claims, as encoded in the certificate (canonical JSON).
    pub claims_bytes: Vec<u8>,
    pub claims: crate::Claims,
    /// Collateral embedded by the peer: its JSON bytes and the parsed value.
    pub collateral: Option<(Vec<u8>, Collateral)>,
    /// The GPU evidence bundle, if the certificate carries one (parsed and verified only by
    /// a policy that requires GPU evidence: [`measurements::gpu::bundle`]).
    pub gpu_evidence: Option<Vec<u8>>,
    /// Validity, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

impl PeerEvidence {
    /// The report_data the quote must carry for this certificate.
    pub fn expected_report_data(&self) -> [u8; 64] {
        crate::claims::report_data(&self.spki_der, &self.claims_bytes)
    }

    /// Checks the validity window at `now` (inclusive bounds).
    pub fn check_validity(&self, now: u64) -> Result<(), CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(CertError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }
}

/// Parses and structurally checks an RA-TLS certificate (see the module docs). Does not look
/// at the time; use [`parse_cert_at`] for that.
pub fn parse_cert(der: &[u8]) -> Result<PeerEvidence, CertError> {
    if der.len() > MAX_CERT_LEN {
        return Err(CertError::TooLarge {
            len: der.len(),
            max: MAX_CERT_LEN,
        });
    }
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingBytes(rest.len()));
    }
    if cert.version() != X509Version::V3 {
        return Err(CertError::Version(cert.version().0));
    }
    let outer = &cert.signature_algorithm;
    if !oid_is(&outer.algorithm, ED25519_OID) || outer.parameters.is_some() {
        return Err(CertError::SignatureAlgorithm {
            oid: outer.algorithm.to_id_string(),
        });
    }
    let inner = &cert.tbs_certificate.signature;
    if inner.algorithm != outer.algorithm || inner.parameters.is_some() {
        return Err(CertError::SignatureAlgorithmMismatch {
            inner: inner.algorithm.to_id_string(),
            outer: outer.algorithm.to_id_string(),
        });
    }
    let spki = cert.public_key();
    if !oid_is(&spki.algorithm.algorithm, ED25519_OID) || spki.algorithm.parameters.is_some() {
        return Err(CertError::KeyAlgorithm {
            oid: spki.algorithm.algorithm.to_id_string(),
        });
    }
    let key_bytes: &[u8] = &spki.subject_public_key.data;
    let public_key: [u8; 32] = key_bytes
        .try_into()
        .map_err(|_| CertError::KeyLength(key_bytes.len()))?;
    if spki.subject_public_key.unused_bits != 0 {
        return Err(CertError::KeyLength(key_bytes.len()));
    }
    if cert.signature_value.unused_bits != 0 {
        return Err(CertError::BadSignature);
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public_key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| CertError::BadSignature)?;

    // Everything outside the TBS is unsigned: require its one canonical DER form, so a
    // certificate has exactly one encoding.
    if der != canonical_outer(cert.tbs_certificate.as_ref(), &cert.signature_value.data) {
        return Err(CertError::NonCanonical);
    }

    let validity = cert.validity();
    let not_before = unix(validity.not_before.timestamp(), "not before")?;
    let not_after = unix(validity.not_after.timestamp(), "not after")?;
    if not_after < not_before {
        return Err(CertError::Validity(format!(
            "not after {not_after} is before not before {not_before}"
        )));
    }

    let mut quote = None;
    let mut claims = None;
    let mut collateral = None;
    let mut gpu_evidence = None;
    let mut seen: Vec<String> = Vec::new();
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if seen.contains(&oid) {
            return Err(CertError::DuplicateExtension { oid });
        }
        seen.push(oid.clone());
        let (name, slot, max) = if oid_is(&ext.oid, oids::QUOTE) {
            ("quote", &mut quote, MAX_QUOTE_LEN)
        } else if oid_is(&ext.oid, oids::CLAIMS) {
            ("claims", &mut claims, MAX_CLAIMS_EXT_LEN)
        } else if oid_is(&ext.oid, oids::COLLATERAL) {
            ("collateral", &mut collateral, MAX_COLLATERAL_LEN)
        } else if oid_is(&ext.oid, oids::GPU_EVIDENCE) {
            ("gpu evidence", &mut gpu_evidence, MAX_GPU_EVIDENCE_LEN)
        } else {
            if ext.critical && !KNOWN_CRITICAL.iter().any(|k| oid_is(&ext.oid, k)) {
                return Err(CertError::UnknownCriticalExtension { oid });
            }
            continue;
        };
        if !ext.critical {
            return Err(CertError::NotCritical { name, oid });
        }
        let content = parse_der_octet_string(ext.value)
            .map_err(|detail| CertError::ExtensionEncoding { name, detail })?;
        if content.len() > max {
            return Err(CertError::ExtensionTooLarge {
                name,
                len: content.len(),
                max,
            });
        }
        *slot = Some(content.to_vec());
    }
    let missing = |name, arc: &[u64]| CertError::MissingExtension {
        name,
        oid: arc_string(arc),
    };
    let quote = quote.ok_or_else(|| missing("quote", oids::QUOTE))?;
    let claims_bytes = claims.ok_or_else(|| missing("claims", oids::CLAIMS))?;
    let claims = crate::Claims::from_canonical_json(&claims_bytes)?;
    let collateral = match collateral {
        Some(json) => {
            let parsed = Collateral::from_json(&json)?;
            Some((json, parsed))
        }
        None => None,
    };
    Ok(PeerEvidence {
        spki_der: spki.raw.to_vec(),
        public_key,
        quote,
        claims_bytes,
        claims,
        collateral,
        gpu_evidence,
        not_before,
        not_after,
    })
}

/// [`parse_cert`], then the validity window at `now`.
pub fn parse_cert_at(der: &[u8], now: u64) -> Result<PeerEvidence, CertError> {
    let ev = parse_cert(der)?;
    ev.check_validity(now)?;
    Ok(ev)
}

/// `SEQUENCE { tbs, AlgorithmIdentifier { id-Ed25519 }, BIT STRING { 0 unused bits, sig } }`.
fn canonical_outer(tbs: &[u8], sig: &[u8]) -> Vec<u8> {
    const ALG: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
    let mut body = Vec::with_capacity(tbs.len() + ALG.len() + sig.len() + 8);
    body.extend_from_slice(tbs);
    body.extend_from_slice(ALG);
    body.push(0x03);
    push_der_len(&mut body, sig.len() + 1);
    body.push(0x00);
    body.extend_from_slice(sig);
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(0x30);
    push_der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends a DER definite length (minimal form).
fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn unix(t: i64, what: &str) -> Result<u64, CertError> {
    u64::try_from(t).map_err(|_| CertError::Validity(format!("{what} {t} is before 1970")))
}

fn oid_is(oid: &x509_parser::der_parser::oid::Oid<'_>, arc: &[u64]) -> bool {
    oid.iter().is_some_and(|it| it.eq(arc.iter().copied()))
}

fn arc_string(arc: &[u64]) -> String {
    arc.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// DER `OCTET STRING` holding `content` (the value of each cocoon extension).
pub fn der_octet_string(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(0x04);
    push_der_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Decodes a DER `OCTET STRING` that spans all of `v` (definite, minimal length).
pub fn parse_der_octet_string(v: &[u8]) -> Result<&[u8], String> {
    let (&tag, rest) = v.split_first().ok_or("empty value")?;
    if tag != 0x04 {
        return Err(format!(
            "expected der octet string (tag 0x04), got tag {tag:#04x}"
        ));
    }
    let (&first, rest) = rest.split_first().ok_or("missing length")?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(format!("unsupported length form {first:#04x}"));
        }
        let digits = rest.get(..n).ok_or("truncated length")?;
        if digits.first() == Some(&0) {
            return Err("non-minimal length encoding".into());
        }
        let len = digits
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err("non-minimal length encoding".into());
        }
        (len, &rest[n..])
    };
    if body.len() != len {
        return Err(format!(
            "octet string length {len} but {} bytes follow",
            body.len()
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_string_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 70000] {
            let content = vec![0xabu8; len];
            let der = der_octet_string(&content);
            assert_eq!(parse_der_octet_string(&der).unwrap(), &content[..]);
        }
        assert_eq!(der_octet_string(&[1, 2]), vec![4, 2, 1, 2]);
        assert_eq!(&der_octet_string(&[0; 200])[..3], &[4, 0x81, 200]);
    }

    #[test]
    fn octet_string_rejects_bad_forms() {
        for bad in [
            &[][..],
            &[0x04],
            &[0x03, 0x00],
            &[0x04, 0x02, 0x01],
            &[0x04, 0x01, 0x01, 0x02],
            &[0x04, 0x81, 0x01, 0x00],
            &[0x04, 0x82, 0x00, 0x80],
            &[0x04, 0x80],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x82, 0x01],
        ] {
            assert!(parse_der_octet_string(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oid_helpers() {
        assert_eq!(arc_string(oids::QUOTE), "1.3.6.1.4.1.59999.7.1.1");
        let oid = x509_parser::der_parser::oid::Oid::from(oids::CLAIMS).unwrap();
        assert!(oid_is(&oid, oids::CLAIMS));
        assert!(!oid_is(&oid, oids::QUOTE));
        assert!(!oid_is(&oid, oids::ARC));
    }
}
