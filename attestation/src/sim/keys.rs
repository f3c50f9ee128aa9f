//! Deterministic key material of the simulated platform.
//!
//! Every private key and identifier of a [`super::SimPlatform`] is derived from its 32-byte
//! seed with SHA-256 under a versioned domain tag, so a seed reproduces the same root CA, PCK
//! chain and attestation key byte for byte. All signatures are ECDSA P-256 / SHA-256 with
//! RFC 6979 deterministic nonces.
//!
//! Trust boundary: none of this is secret in a meaningful sense. The simulated root is trusted
//! only by a verifier whose policy names it explicitly; production policy pins Intel's root.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

use super::SimError;

/// Domain tag of every derivation from the platform seed (version 1).
const DERIVE_TAG: &[u8] = b"cocoon/sim-tdx/derive/v1\0";

/// Derives 32 bytes from `seed` for `label` (and a retry `counter` for keys).
pub(crate) fn derive(seed: &[u8; 32], label: &str, counter: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DERIVE_TAG);
    h.update(seed);
    h.update((label.len() as u64).to_be_bytes());
    h.update(label.as_bytes());
    h.update([counter]);
    h.finalize().into()
}

/// Derives `N <= 32` bytes from `seed` for `label`.
pub(crate) fn derive_bytes<const N: usize>(seed: &[u8; 32], label: &str) -> [u8; N] {
    let full = derive(seed, label, 0);
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(full.iter()) {
        *o = *b;
    }
    out
}

/// A P-256 key of the simulated platform, usable both for raw `r || s` signatures (quotes,
/// QE reports, collateral JSON) and as an rcgen signer (certificates, CRLs).
#[derive(Clone)]
pub(crate) struct SimKey {
    secret: SigningKey,
    /// SEC1 uncompressed public point (`0x04 || x || y`).
    public_sec1: Vec<u8>,
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKey")
            .field("public", &hex::encode(&self.public_sec1))
            .finish_non_exhaustive()
    }
}

impl SimKey {
    /// Derives the key named `label` from `seed`. A candidate scalar that is zero or not below
    /// the group order (probability about 2^-32) is rejected and the next counter is tried.
    pub(crate) fn derive(seed: &[u8; 32], label: &'static str) -> Result<Self, SimError> {
        for counter in 0..=u8::MAX {
            let candidate = derive(seed, label, counter);
            if let Ok(secret) = SigningKey::from_bytes(&candidate.into()) {
                let public_sec1 = secret
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return Ok(Self {
                    secret,
                    public_sec1,
                });
            }
        }
        Err(SimError::KeyDerivation { label })
    }

    /// The raw public key `x || y` (64 bytes), as a quote carries the attestation key.
    pub(crate) fn public_raw(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        if let Some(xy) = self.public_sec1.get(1..65) {
            out.copy_from_slice(xy);
        }
        out
    }

    fn sign(&self, msg: &[u8], what: &'static str) -> Result<Signature, SimError> {
        self.secret
            .try_sign(msg)
            .map_err(|_| SimError::Signing { what })
    }

    /// ECDSA signature over SHA-256(`msg`) as raw `r || s` (64 bytes), the encoding Intel uses
    /// in quotes and collateral.
    pub(crate) fn sign_raw(&self, msg: &[u8], what: &'static str) -> Result<[u8; 64], SimError> {
        let sig = self.sign(msg, what)?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

impl rcgen::PublicKeyData for SimKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SimKey {
    /// DER-encoded `Ecdsa-Sig-Value`, as X.509 certificates and CRLs carry it.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig = self
            .sign(msg, "certificate")
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn derivation_is_deterministic_and_label_separated() {
        let seed = [7u8; 32];
        let a = SimKey::derive(&seed, "a").unwrap();
        let a2 = SimKey::derive(&seed, "a").unwrap();
        let b = SimKey::derive(&seed, "b").unwrap();
        assert_eq!(a.public_raw(), a2.public_raw());
        assert_ne!(a.public_raw(), b.public_raw());
        assert_eq!(
            a.sign_raw(b"msg", "t").unwrap(),
            a2.sign_raw(b"msg", "t").unwrap()
        );
        let other_seed = SimKey::derive(&[8u8; 32], "a").unwrap();
        assert_ne!(a.public_raw(), other_seed.public_raw());
    }

    #[test]
    fn raw_signature_verifies() {
        let key = SimKey::derive(&[1u8; 32], "k").unwrap();
        let sig = key.sign_raw(b"hello", "t").unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        key.secret.verifying_key().verify(b"hello", &sig).unwrap();
    }

    #[test]
    fn derive_bytes_truncates() {
        let seed = [3u8; 32];
        let full = derive(&seed, "x", 0);
        let short: [u8; 6] = derive_bytes(&seed, "x");
        assert_eq!(&full[..6], &short);
    }
}
