//! The simulated Intel TDX platform, for development and CI where no TDX hardware exists.
//!
//! A [`SimPlatform`] plays Intel's whole attestation infrastructure in miniature:
//!
//! ```text
//! "Cocoon Simulated TDX Root CA (NOT INTEL)"      self-signed, signs the root CA CRL
//!  ├── "Cocoon Simulated PCK Platform CA (NOT INTEL)"   signs the PCK CRL
//!  │    └── "Cocoon Simulated PCK Certificate (NOT INTEL)"  carries Intel's SGX extension
//!  │         (OID 1.2.840.113741.1.13.1), signs the QE report
//!  └── "Cocoon Simulated TCB Signing (NOT INTEL)"    signs TCB info and QE identity JSON
//! attestation key (certified by the QE report) ── signs each quote's header and TD report
//! ```
//!
//! [`SimPlatform::quote`] emits real-format TDX quotes version 4 (Intel TDX DCAP Quoting
//! Library API, "Quote Format": header, TD report body, ECDSA quote signature data with QE
//! report certification data type 6 wrapping a PCK certificate chain type 5), and
//! [`SimPlatform::collateral`] emits the matching collateral (root CA CRL, PCK CRL, TCB info,
//! QE identity and their issuer chains) as a `dcap_qvl::QuoteCollateralV3`. dcap-qvl verifies
//! the pair with `QuoteVerifier::new(platform.root_ca_der().to_vec())`, the same code path as
//! real evidence; with Intel's root (`QuoteVerifier::new_prod()`) it fails.
//!
//! [`SimTdx`] is the guest-side [`crate::TeeDevice`] on top of a platform: it holds the TD's
//! registers, extends RTMR 2 and 3 live and quotes over the current values.
//!
//! Everything derives from a 32-byte seed ([`SimPlatform::from_seed`]), so output is
//! reproducible for a given seed, parameters and collateral times. Certificates are valid from
//! [`SIM_CERT_NOT_BEFORE`] to [`SIM_CERT_NOT_AFTER`]; collateral validity is chosen per call.
//!
//! # Trust boundary
//!
//! Nothing produced here is evidence of anything: whoever holds the seed (the host launcher,
//! the guest, anyone who reads a [`SimPlatformSeed`]) can sign any registers. The simulated
//! root is therefore never trusted by production policy, which pins Intel's SGX Root CA; a
//! verifier accepts simulated quotes only when its policy names the simulated root explicitly.
//! The seed is handled like a key only out of habit (it is elided from `Debug` output).

mod collateral;
mod device;
mod keys;
mod pki;
mod quote;

use measurements::registers::{TdRegisters, TD_ATTR_SEPT_VE_DISABLE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};

pub use device::{SimRtmrEvent, SimTdx};

use keys::SimKey;
use pki::SimPki;

/// Start of the validity of every simulated certificate: 2024-01-01T00:00:00Z.
pub const SIM_CERT_NOT_BEFORE: u64 = 1_704_067_200;
/// End of the validity of every simulated certificate: 2049-12-31T23:59:59Z.
pub const SIM_CERT_NOT_AFTER: u64 = 2_524_607_999;

/// Format tag of a serialized [`SimPlatformSeed`].
pub const SIM_PLATFORM_FORMAT_V1: &str = "cocoon-sim-tdx-platform/v1";

/// TD attributes of a simulated TD unless the caller chooses others: SEPT_VE_DISABLE set,
/// DEBUG and every other bit clear (little-endian, as in the quote).
pub const DEFAULT_TD_ATTRIBUTES: [u8; 8] = TD_ATTR_SEPT_VE_DISABLE.to_le_bytes();

/// XFAM of a simulated TD unless the caller chooses another (x87, SSE, AVX, AVX-512 state,
/// PK, CET and AMX state enabled, as on a typical Sapphire Rapids TD).
pub const DEFAULT_XFAM: [u8; 8] = [0xe7, 0x02, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00];

/// Errors of the simulated platform.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("random seed: {0}")]
    Rng(String),
    #[error("key derivation for {label}: no valid p-256 scalar in 256 attempts")]
    KeyDerivation { label: &'static str },
    #[error("ecdsa signing of {what} failed")]
    Signing { what: &'static str },
    #[error("building {what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: unix time {secs} is out of range")]
    TimeOutOfRange { what: &'static str, secs: u64 },
    #[error("collateral validity must be at least one second, got {0}")]
    EmptyValidity(u64),
    #[error("invalid platform parameter {field}: {reason}")]
    InvalidParams { field: &'static str, reason: String },
    #[error("unsupported simulated platform format {got:?} (expected {expected:?})")]
    UnsupportedFormat { expected: &'static str, got: String },
    #[error("simulated platform json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The platform TCB and TDX module values a simulated platform reports. The defaults model an
/// up-to-date Sapphire Rapids platform running TDX module 1.5; the FMSPC is made up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPlatformParams {
    /// Family-model-stepping-platform-custom SKU, in the PCK certificate and the TCB info.
    #[serde(with = "hex_array")]
    pub fmspc: [u8; 6],
    /// PCE identifier.
    #[serde(with = "hex_array")]
    pub pce_id: [u8; 2],
    /// The 16 SGX TCB component SVNs (the PCK certificate's CPUSVN).
    #[serde(with = "hex_array")]
    pub cpu_svn: [u8; 16],
    /// PCE SVN, at most 0x7fff (dcap-qvl reads the certificate's INTEGER as at most 2 bytes).
    pub pce_svn: u16,
    /// TEE_TCB_SVN of the TD report: byte 0 is the TDX module ISVSVN, byte 1 the module major
    /// version (non-zero selects the TCB info's `TDX_<vv>` module identity).
    #[serde(with = "hex_array")]
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: measurement of the (simulated) TDX module.
    #[serde(with = "hex_array")]
    pub mrseam: [u8; 48],
    /// ISVSVN of the simulated TD quoting enclave.
    pub qe_isv_svn: u16,
    /// tcbEvaluationDataNumber of the TCB info and QE identity.
    pub tcb_evaluation_data_number: u32,
}

impl Default for SimPlatformParams {
    fn default() -> Self {
        let mut tee_tcb_svn = [0u8; 16];
        tee_tcb_svn[..3].copy_from_slice(&[6, 1, 3]);
        Self {
            fmspc: [0x5c, 0x0c, 0x00, 0x5e, 0x00, 0x00],
            pce_id: [0, 0],
            cpu_svn: [3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0],
            pce_svn: 13,
            tee_tcb_svn,
            mrseam: Sha384::digest(b"cocoon simulated TDX module (NOT INTEL)").into(),
            qe_isv_svn: 4,
            tcb_evaluation_data_number: 17,
        }
    }
}

impl SimPlatformParams {
    fn validate(&self) -> Result<(), SimError> {
        if self.pce_svn > 0x7fff {
            return Err(SimError::InvalidParams {
                field: "pce_svn",
                reason: format!("{} exceeds 0x7fff", self.pce_svn),
            });
        }
        Ok(())
    }
}

/// Everything needed to recreate a [`SimPlatform`]: the seed plus its parameters. A host
/// launcher serializes this (JSON) to hand "the platform" to a simulated guest.
///
/// The seed is not a secret in any meaningful sense: the simulated root it derives is never
/// trusted in production, and whoever runs the simulation may sign anything with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPlatformSeed {
    /// Always [`SIM_PLATFORM_FORMAT_V1`].
    pub format: String,
    #[serde(with = "hex_array")]
    pub seed: [u8; 32],
    pub params: SimPlatformParams,
}

impl std::fmt::Debug for SimPlatformSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatformSeed")
            .field("format", &self.format)
            .field("seed", &"[elided]")
            .field("params", &self.params)
            .finish()
    }
}

impl SimPlatformSeed {
    /// Serializes to JSON.
    pub fn to_json(&self) -> Result<String, SimError> {
        Ok(serde_json::to_string(self)?)
    }

    /// Parses JSON produced by [`Self::to_json`] (unknown fields are rejected).
    pub fn from_json(json: &str) -> Result<Self, SimError> {
        Ok(serde_json::from_str(json)?)
    }
}

/// The simulated QE's identity: fixed values, distinct from Intel's TD quoting enclave.
#[derive(Clone, Debug)]
struct SimQe {
    mrenclave: [u8; 32],
    mrsigner: [u8; 32],
}

impl SimQe {
    fn new() -> Self {
        Self {
            mrenclave: Sha256::digest(b"cocoon simulated TD quoting enclave (NOT INTEL)").into(),
            mrsigner: Sha256::digest(b"cocoon simulated TD quoting enclave signer (NOT INTEL)")
                .into(),
        }
    }
}

/// A simulated TDX platform: PKI, attestation key and collateral signer. See the module docs.
pub struct SimPlatform {
    seed: [u8; 32],
    params: SimPlatformParams,
    pki: SimPki,
    attestation_key: SimKey,
    qe: SimQe,
    /// QE ID placed in the quote header's user data.
    qe_id: [u8; 16],
    /// Signature data after the quote signature: attestation key and certification data.
    signature_tail: Vec<u8>,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("params", &self.params)
            .field(
                "root_ca_sha256",
                &hex::encode(Sha256::digest(self.root_ca_der())),
            )
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// A platform with default parameters derived from `seed`. Deterministic.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, SimError> {
        Self::with_params(seed, SimPlatformParams::default())
    }

    /// A platform with a fresh random seed and default parameters.
    pub fn generate() -> Result<Self, SimError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SimError::Rng(e.to_string()))?;
        Self::from_seed(seed)
    }

    /// A platform with the given parameters derived from `seed`. Deterministic.
    pub fn with_params(seed: [u8; 32], params: SimPlatformParams) -> Result<Self, SimError> {
        params.validate()?;
        let pki = SimPki::build(&seed, &params)?;
        let attestation_key = SimKey::derive(&seed, "attestation key")?;
        let qe = SimQe::new();
        let qe_id = keys::derive_bytes(&seed, "qe id");
        let mut platform = Self {
            seed,
            params,
            pki,
            attestation_key,
            qe,
            qe_id,
            signature_tail: Vec::new(),
        };
        platform.signature_tail = platform.build_signature_tail()?;
        Ok(platform)
    }

    /// Recreates a platform from [`Self::export`] output.
    pub fn from_export(export: &SimPlatformSeed) -> Result<Self, SimError> {
        if export.format != SIM_PLATFORM_FORMAT_V1 {
            return Err(SimError::UnsupportedFormat {
                expected: SIM_PLATFORM_FORMAT_V1,
                got: export.format.chars().take(80).collect(),
            });
        }
        Self::with_params(export.seed, export.params.clone())
    }

    /// The seed and parameters that recreate this platform.
    pub fn export(&self) -> SimPlatformSeed {
        SimPlatformSeed {
            format: SIM_PLATFORM_FORMAT_V1.to_string(),
            seed: self.seed,
            params: self.params.clone(),
        }
    }

    /// The platform's parameters.
    pub fn params(&self) -> &SimPlatformParams {
        &self.params
    }

    /// The simulated root CA certificate (DER): the trust anchor a verifier must name
    /// explicitly to accept this platform's quotes.
    pub fn root_ca_der(&self) -> &[u8] {
        self.pki.root.der()
    }

    /// The PCK certificate chain as the quote carries it: PEM leaf, platform CA, root.
    pub fn pck_chain_pem(&self) -> String {
        self.pki.pck_chain_pem()
    }

    /// The raw attestation public key (`x || y`) that signs this platform's quotes.
    pub fn attestation_public_key(&self) -> [u8; 64] {
        self.attestation_key.public_raw()
    }
}

/// Registers of a TD with nothing measured yet and the default attributes and XFAM
/// ([`DEFAULT_TD_ATTRIBUTES`], [`DEFAULT_XFAM`]).
pub fn default_registers() -> TdRegisters {
    TdRegisters {
        td_attributes: DEFAULT_TD_ATTRIBUTES,
        xfam: DEFAULT_XFAM,
        ..TdRegisters::ZERO
    }
}

/// Serde for fixed-length byte arrays as lowercase hex strings.
mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        let len = v.len();
        v.try_into().map_err(|_| {
            serde::de::Error::custom(format!("expected {N} hex-encoded bytes, got {len}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_attributes_have_sept_ve_disable_and_no_debug() {
        let attrs = u64::from_le_bytes(DEFAULT_TD_ATTRIBUTES);
        assert_ne!(attrs & TD_ATTR_SEPT_VE_DISABLE, 0);
        assert_eq!(attrs & measurements::registers::TD_ATTR_DEBUG, 0);
        assert_eq!(default_registers().td_attributes, DEFAULT_TD_ATTRIBUTES);
    }

    #[test]
    fn export_roundtrips_through_json() {
        let platform = SimPlatform::from_seed([9u8; 32]).unwrap();
        let json = platform.export().to_json().unwrap();
        let back = SimPlatform::from_export(&SimPlatformSeed::from_json(&json).unwrap()).unwrap();
        assert_eq!(back.root_ca_der(), platform.root_ca_der());
        assert_eq!(back.params(), platform.params());
        assert!(!format!("{:?}", platform.export()).contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn export_rejects_unknown_format_and_fields() {
        let mut export = SimPlatform::from_seed([1u8; 32]).unwrap().export();
        export.format = "cocoon-sim-tdx-platform/v0".into();
        assert!(matches!(
            SimPlatform::from_export(&export),
            Err(SimError::UnsupportedFormat { .. })
        ));
        let json = SimPlatform::from_seed([1u8; 32])
            .unwrap()
            .export()
            .to_json()
            .unwrap()
            .replacen('{', "{\"extra\":1,", 1);
        assert!(SimPlatformSeed::from_json(&json).is_err());
    }

    #[test]
    fn pce_svn_must_fit_two_integer_bytes() {
        let params = SimPlatformParams {
            pce_svn: 0x8000,
            ..SimPlatformParams::default()
        };
        assert!(matches!(
            SimPlatform::with_params([0u8; 32], params),
            Err(SimError::InvalidParams {
                field: "pce_svn",
                ..
            })
        ));
    }
}
