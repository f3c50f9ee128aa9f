//! cocoon-measurements: the one place that decides whether TDX (and GPU) evidence passes.
//!
//! Pure: every function takes bytes and values (including the current time) and returns typed
//! results. Nothing here opens files or sockets or reads the clock (house style rules 1 and 2).
//!
//! * [`quote`] parses TDX quotes v4/v5 (Intel TDX DCAP Quoting Library API, "Quote Format").
//! * [`verify`] verifies a quote against collateral (PCK chain to a pinned root, CRLs, TCB info,
//!   QE identity) through dcap-qvl, then applies cocoon's [`policy`].
//! * [`registers`] defines the image hash over MRTD, RTMR0-2, TD attributes, XFAM and the
//!   owner/config IDs.
//! * [`manifest`] defines signed measurement manifests (Ed25519 over a specified canonical form).
//! * [`gpu`] verifies NVIDIA H100 (Hopper) evidence: the SPDM 1.1 measurement report, its
//!   P-384 certificate chain to NVIDIA's pinned root, OCSP, and reference values from RIMs.
//! * [`manifest_diff`] compares manifests and build records and names the register and artifact
//!   that changed.
//!
//! Trust boundary: quotes, collateral and manifests are untrusted bytes. Trust comes only from
//! the roots, publisher keys and image hashes the caller puts into a [`policy::Policy`].

pub mod boot;
pub mod collateral;
pub mod eventlog;
pub mod gpu;
pub mod le;
pub mod manifest;
pub mod manifest_diff;
pub mod memory;
pub mod policy;
pub mod quote;
pub mod registers;
pub mod runtime_log;
pub mod tdvf;
pub mod verify;

pub use collateral::{Collateral, CollateralError};
pub use policy::{Policy, TcbStatus, TrustRoot};
pub use quote::{ParsedQuote, TdReport};
pub use registers::{ImageHash, Sha384, TdRegisters};
pub use verify::{Rejection, VerifiedQuote, Verifier};

/// The Intel SGX Root CA certificate (DER). SHA-256 fingerprint
/// `44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3`, checked by a test.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("../roots/intel_sgx_root_ca.der");

/// Errors from parsing a quote's structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("quote truncated at {field} (offset {offset}): need {need} bytes, have {have}")]
    Truncated {
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("unsupported quote version {0} (expected 4 or 5)")]
    UnsupportedVersion(u16),
    #[error("not a TDX quote: tee type {0:#x}")]
    NotTdx(u32),
    #[error("unsupported quote v5 body type {0}")]
    UnsupportedBodyType(u16),
    #[error("quote v5 body type {body_type} has size {got}, expected {expected}")]
    BodySize {
        body_type: u16,
        expected: usize,
        got: u32,
    },
    #[error("hex quote input is not utf-8 text")]
    HexNotUtf8,
    #[error("hex quote input: {0}")]
    Hex(String),
}

/// A hex string that does not decode to the expected number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: expected {expected} hex-encoded bytes, got {got:?}")]
pub struct HexError {
    pub what: &'static str,
    pub expected: usize,
    pub got: String,
}

/// Decodes a fixed-length hex string (case-insensitive, optional `0x`).
pub fn parse_hex_array<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], HexError> {
    let err = || HexError {
        what,
        expected: N,
        got: s.chars().take(140).collect(),
    };
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let v = hex::decode(t).map_err(|_| err())?;
    v.try_into().map_err(|_| err())
}
