//! The GPU's certificate chain: PEM decoding, link-by-link ECDSA P-384 verification, validity
//! at a given time, the pinned root, and the leaf's FWID extension.
//!
//! Hopper presents five certificates, leaf first (see `shared/testdata/nvidia`):
//! `GH100 A01 GSP FMC LF` (attestation key, carries the FWID) ← `GH100 A01 GSP BROM` (per-device
//! identity, provisioned by NVIDIA) ← `NVIDIA GH100 Provisioner ICA 1` ← `NVIDIA GH100
//! Identity` ← `NVIDIA Device Identity CA` (self-signed root). Every signature is
//! ecdsa-with-SHA384 by a P-384 key (RFC 5480, RFC 5758 section 3.2).
//!
//! Trust boundary: the chain is untrusted input; trust comes only from the root certificate
//! the policy pins, compared byte for byte.

use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence};
use p384::ecdsa::VerifyingKey;
use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use super::GpuRejection;

/// ecdsa-with-SHA384 (RFC 5758).
pub const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// id-ecPublicKey (RFC 5480).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-sha384 (RFC 5754).
pub const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// The extension in which NVIDIA's attestation certificates carry the FWID (a TCG DICE arc).
pub const NVIDIA_FWID_EXT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");

/// Value of NVIDIA's FWID extension as Hopper's leaf certificate carries it:
/// `SEQUENCE { INTEGER, SubjectPublicKeyInfo, SEQUENCE { OID hash, OCTET STRING fwid } }`.
#[derive(Clone, Debug, Sequence)]
struct FwidExtension {
    version: u32,
    key: SubjectPublicKeyInfoOwned,
    fwid: FwidValue,
}

#[derive(Clone, Debug, Sequence)]
struct FwidValue {
    hash_algorithm: ObjectIdentifier,
    digest: OctetString,
}

/// Most certificates accepted in one chain.
const MAX_CHAIN_CERTS: usize = 16;

/// Decodes a PEM bundle of certificates (leaf first). Only whitespace may surround the
/// `CERTIFICATE` blocks; anything else is an error. (x509-cert's own `load_pem_chain` is not
/// used: it underflows on empty input, found by the `gpu_evidence_parse` fuzz target.)
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<Certificate>, GpuRejection> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let bad = |d: String| GpuRejection::MalformedChain(format!("pem certificate chain: {d}"));
    let mut rest = std::str::from_utf8(pem).map_err(|_| bad("not utf-8 text".into()))?;
    let mut certs = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        if !rest.starts_with(BEGIN) {
            return Err(bad("text outside a certificate block".into()));
        }
        let end = rest
            .find(END)
            .ok_or_else(|| bad("unterminated certificate block".into()))?
            + END.len();
        // `end` follows a match of `find`, so it is a character boundary.
        let (block, tail) = rest.split_at(end);
        let (label, der) =
            der::pem::decode_vec(block.as_bytes()).map_err(|e| bad(e.to_string()))?;
        if label != "CERTIFICATE" {
            return Err(bad(format!("block labelled {label}")));
        }
        certs.push(parse_der_cert(&der)?);
        if certs.len() > MAX_CHAIN_CERTS {
            return Err(bad(format!("more than {MAX_CHAIN_CERTS} certificates")));
        }
        rest = tail;
    }
    if certs.is_empty() {
        return Err(GpuRejection::MalformedChain(
            "no certificate in the chain".into(),
        ));
    }
    Ok(certs)
}

/// Decodes one DER certificate.
pub fn parse_der_cert(der: &[u8]) -> Result<Certificate, GpuRejection> {
    Certificate::from_der(der)
        .map_err(|e| GpuRejection::MalformedChain(format!("der certificate: {e}")))
}

/// The certificate's subject as text, for reasons.
pub fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

/// An ECDSA P-384 signature that does not verify (or, in DER, does not parse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ecdsa p-384 signature does not verify")]
pub struct BadSignature;

/// A P-384 public key, checked to be a point on the curve, kept in uncompressed SEC1 form.
/// Signatures are verified with ring (a cold GPU check became 2.1–2.6× faster than with the
/// pure-Rust `p384` crate, docs/performance.md); `p384` only parses and validates the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P384Key(Vec<u8>);

impl P384Key {
    /// Parses a SEC1 point (compressed or not) and checks that it is on P-384.
    pub fn from_sec1(point: &[u8]) -> Result<Self, String> {
        let key = VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| "invalid p-384 public point".to_string())?;
        Ok(Self(key.to_encoded_point(false).as_bytes().to_vec()))
    }

    /// Verifies an ECDSA-SHA384 signature in DER (as X.509 and OCSP carry it). Inside
    /// [`with_signature_memo`], a signature this key already verified over the same bytes is
    /// not verified again.
    pub fn verify_der(&self, msg: &[u8], sig_der: &[u8]) -> Result<(), BadSignature> {
        let seen = memo::key(&self.0, sig_der, msg);
        if seen.as_ref().is_some_and(memo::contains) {
            return Ok(());
        }
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &self.0)
            .verify(msg, sig_der)
            .map_err(|_| BadSignature)?;
        if let Some(k) = seen {
            memo::insert(k);
        }
        Ok(())
    }

    /// Verifies an ECDSA-SHA384 signature as r ‖ s, 48 bytes each (SPDM, XML-DSig).
    pub fn verify_fixed(&self, msg: &[u8], sig: &[u8]) -> Result<(), BadSignature> {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &self.0)
            .verify(msg, sig)
            .map_err(|_| BadSignature)
    }
}

/// Runs `f` with a memo of the DER signatures verified in it: the GPUs of one machine share
/// their CA certificates and those CAs' OCSP answers, so verifying eight GPUs checked the same
/// signatures eight times. A hit needs the same key, signature and signed bytes (SHA-256 of
/// the three, length-prefixed), so it stands for a verification that succeeded on exactly
/// these bytes; failures are never remembered. The memo lives only for the call (nested calls
/// share it) and holds nothing time-dependent: validity windows are checked every time.
pub fn with_signature_memo<T>(f: impl FnOnce() -> T) -> T {
    let _scope = memo::Scope::enter();
    f()
}

mod memo {
    use std::cell::RefCell;
    use std::collections::HashSet;

    use sha2::{Digest, Sha256};

    thread_local! {
        static MEMO: RefCell<Option<HashSet<[u8; 32]>>> = const { RefCell::new(None) };
    }

    /// The memo is on while a scope lives (the outermost one clears it on drop).
    pub(super) struct Scope {
        outermost: bool,
    }

    impl Scope {
        pub(super) fn enter() -> Self {
            let outermost = MEMO.with(|m| {
                let mut m = m.borrow_mut();
                let fresh = m.is_none();
                if fresh {
                    *m = Some(HashSet::new());
                }
                fresh
            });
            Self { outermost }
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            if self.outermost {
                MEMO.with(|m| *m.borrow_mut() = None);
            }
        }
    }

    /// The memo key of a verification, when a memo is on.
    pub(super) fn key(point: &[u8], sig: &[u8], msg: &[u8]) -> Option<[u8; 32]> {
        if MEMO.with(|m| m.borrow().is_none()) {
            return None;
        }
        let mut h = Sha256::new();
        for part in [point, sig, msg] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Some(h.finalize().into())
    }

    pub(super) fn contains(k: &[u8; 32]) -> bool {
        MEMO.with(|m| m.borrow().as_ref().is_some_and(|s| s.contains(k)))
    }

    pub(super) fn insert(k: [u8; 32]) {
        MEMO.with(|m| {
            if let Some(s) = m.borrow_mut().as_mut() {
                s.insert(k);
            }
        });
    }
}

/// The P-384 public key of a certificate.
pub fn p384_key(cert: &Certificate) -> Result<P384Key, String> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(format!("key algorithm {} is not ec", spki.algorithm.oid));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(SECP384R1) {
        return Err("key is not on p-384".into());
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    P384Key::from_sec1(point)
}

/// Verifies a DER-encoded ECDSA signature over `msg` with `alg`, which must be
/// ecdsa-with-SHA384 without parameters.
pub fn verify_ecdsa_p384(
    key: &P384Key,
    alg: &spki::AlgorithmIdentifierOwned,
    msg: &[u8],
    sig_der: &[u8],
) -> Result<(), String> {
    if alg.oid != ECDSA_WITH_SHA384 || alg.parameters.is_some() {
        return Err(format!(
            "signature algorithm {} is not ecdsa-with-sha384",
            alg.oid
        ));
    }
    key.verify_der(msg, sig_der)
        .map_err(|BadSignature| "ecdsa signature does not verify (or is not DER)".to_string())
}

/// Verifies that `cert` was signed by `issuer_key` (signature algorithm, tbs bytes).
pub fn verify_signed_by(cert: &Certificate, issuer_key: &P384Key) -> Result<(), String> {
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err("outer and inner signature algorithms differ".into());
    }
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("re-encoding tbs: {e}"))?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or("signature bit string has unused bits")?;
    verify_ecdsa_p384(issuer_key, &cert.signature_algorithm, &tbs, sig)
}

/// `(not_before, not_after)` in Unix seconds.
pub fn validity(cert: &Certificate) -> (u64, u64) {
    let v = &cert.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

/// Checks that a certificate is valid at `at`.
pub fn check_validity(cert: &Certificate, index: usize, at: u64) -> Result<(), GpuRejection> {
    let (nb, na) = validity(cert);
    if at < nb {
        return Err(GpuRejection::CertificateNotYetValid {
            index,
            subject: subject(cert),
            not_before: nb,
            at,
        });
    }
    if at > na {
        return Err(GpuRejection::CertificateExpired {
            index,
            subject: subject(cert),
            not_after: na,
            at,
        });
    }
    Ok(())
}

/// Whether a certificate may issue certificates: BasicConstraints cA set and, if KeyUsage is
/// present, keyCertSign.
pub fn is_ca(cert: &Certificate) -> bool {
    let mut ca = false;
    let mut ku_ok = true;
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == BASIC_CONSTRAINTS {
            ca = BasicConstraints::from_der(ext.extn_value.as_bytes())
                .map(|bc| bc.ca)
                .unwrap_or(false);
        } else if ext.extn_id == KEY_USAGE {
            ku_ok = KeyUsage::from_der(ext.extn_value.as_bytes())
                .map(|ku| ku.0.contains(KeyUsages::KeyCertSign))
                .unwrap_or(false);
        }
    }
    ca && ku_ok
}

/// Verifies the chain (leaf first): its length, every link's issuer name and signature, each
/// certificate's validity at `at`, CA constraints on every issuer, and that the last
/// certificate is byte-identical to one of `roots` (returns that root's index).
pub fn verify_chain(
    certs: &[Certificate],
    expected_len: usize,
    roots: &[Vec<u8>],
    at: u64,
) -> Result<usize, GpuRejection> {
    if certs.len() != expected_len {
        return Err(GpuRejection::ChainLength {
            expected: expected_len,
            got: certs.len(),
        });
    }
    let top = certs.last().ok_or(GpuRejection::ChainLength {
        expected: expected_len,
        got: 0,
    })?;
    let top_der = top
        .to_der()
        .map_err(|e| GpuRejection::MalformedChain(format!("re-encoding root: {e}")))?;
    let root_index =
        roots
            .iter()
            .position(|r| *r == top_der)
            .ok_or_else(|| GpuRejection::UntrustedRoot {
                subject: subject(top),
                fingerprint: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&top_der)),
            })?;
    for (i, cert) in certs.iter().enumerate() {
        check_validity(cert, i, at)?;
        // The root signs itself; every other certificate is signed by the next one.
        let issuer = certs.get(i + 1).unwrap_or(cert);
        let link = |detail: String| GpuRejection::ChainSignature {
            index: i,
            subject: subject(cert),
            detail,
        };
        if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            return Err(link(format!(
                "issuer {} is not the next certificate's subject {}",
                cert.tbs_certificate.issuer,
                subject(issuer)
            )));
        }
        // Every issuer, the self-signed root included, must be a CA.
        if !is_ca(issuer) {
            return Err(link(format!("issuer {} is not a ca", subject(issuer))));
        }
        let key = p384_key(issuer).map_err(&link)?;
        verify_signed_by(cert, &key).map_err(link)?;
    }
    Ok(root_index)
}

/// The FWID in the leaf's NVIDIA FWID extension.
pub fn leaf_fwid(leaf: &Certificate) -> Result<Vec<u8>, GpuRejection> {
    let ext = leaf
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == NVIDIA_FWID_EXT)
        .ok_or(GpuRejection::FwidMissing)?;
    let v = FwidExtension::from_der(ext.extn_value.as_bytes())
        .map_err(|e| GpuRejection::MalformedChain(format!("leaf fwid extension: {e}")))?;
    if v.fwid.hash_algorithm != ID_SHA384 || v.fwid.digest.as_bytes().len() != 48 {
        return Err(GpuRejection::MalformedChain(format!(
            "leaf fwid extension: hash {} with {} bytes, expected sha384 with 48",
            v.fwid.hash_algorithm,
            v.fwid.digest.as_bytes().len()
        )));
    }
    let _ = (v.version, &v.key);
    Ok(v.fwid.digest.as_bytes().to_vec())
}

/// Encodes the FWID extension value (for the simulated generator).
pub fn encode_fwid_extension(
    key: SubjectPublicKeyInfoOwned,
    fwid: &[u8],
) -> Result<Vec<u8>, der::Error> {
    FwidExtension {
        version: 1,
        key,
        fwid: FwidValue {
            hash_algorithm: ID_SHA384,
            digest: OctetString::new(fwid)?,
        },
    }
    .to_der()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::{SimGpu, SimNvidiaRoot};

    /// A simulated GPU's chain (leaf first) and, for its leaf, the signed bytes, signature and
    /// issuer key.
    fn leaf_link() -> (Vec<u8>, Vec<u8>, P384Key) {
        let root = SimNvidiaRoot::from_seed([7; 32]).unwrap();
        let gpu = SimGpu::new("550.127.05", "96.00.9F.00.04", "memo");
        let (_, pem) = root.evidence(&gpu, &[1; 32]).unwrap();
        let certs = parse_pem_chain(pem.as_bytes()).unwrap();
        let tbs = certs[0].tbs_certificate.to_der().unwrap();
        let sig = certs[0].signature.as_bytes().unwrap().to_vec();
        (tbs, sig, p384_key(&certs[1]).unwrap())
    }

    #[test]
    fn the_signature_memo_skips_only_exact_repeats_and_lives_for_its_call() {
        let (tbs, sig, key) = leaf_link();
        let other_key = {
            let root = SimNvidiaRoot::from_seed([8; 32]).unwrap();
            let gpu = SimGpu::new("550.127.05", "96.00.9F.00.04", "other");
            let (_, pem) = root.evidence(&gpu, &[1; 32]).unwrap();
            p384_key(&parse_pem_chain(pem.as_bytes()).unwrap()[1]).unwrap()
        };
        let mut edited = tbs.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        with_signature_memo(|| {
            assert_eq!(key.verify_der(&tbs, &sig), Ok(()));
            assert!(memo::contains(&memo::key(&key.0, &sig, &tbs).unwrap()));
            // Same signature, other bytes or other key: verified for real, and refused.
            assert_eq!(key.verify_der(&edited, &sig), Err(BadSignature));
            assert_eq!(other_key.verify_der(&tbs, &sig), Err(BadSignature));
            // Failures are not remembered.
            assert!(!memo::contains(&memo::key(&key.0, &sig, &edited).unwrap()));
            // A nested call shares the memo and does not end it.
            with_signature_memo(|| assert!(memo::key(&key.0, &sig, &tbs).is_some()));
            assert!(memo::contains(&memo::key(&key.0, &sig, &tbs).unwrap()));
            assert_eq!(key.verify_der(&tbs, &sig), Ok(()));
        });
        // Outside a call there is no memo.
        assert!(memo::key(&key.0, &sig, &tbs).is_none());
        assert_eq!(key.verify_der(&edited, &sig), Err(BadSignature));
        assert_eq!(key.verify_der(&tbs, &sig), Ok(()));
    }
}
