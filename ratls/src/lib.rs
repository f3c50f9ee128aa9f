//! cocoon-ratls: RA-TLS 1.3 — TLS certificates that carry TDX evidence, and rustls verifiers
//! that accept a peer only if that evidence passes a [`measurements::Policy`].
//!
//! # What a certificate says
//!
//! A service inside a TD generates a fresh Ed25519 key and asks its TEE for a quote whose
//! report_data binds that key and the service's [`Claims`] ([`cert::issue`]):
//!
//! ```text
//! report_data = SHA-512( "cocoon/ratls/v1" || 0x00
//!                        || DER SubjectPublicKeyInfo of the certificate key
//!                        || SHA-256(claims bytes) )                       (64 bytes)
//! ```
//!
//! The SPKI is DER (self-delimiting) and the claims digest has a fixed length, so the
//! encoding is injective. The certificate is self-signed with that key, short-lived (default
//! [`cert::DEFAULT_LIFETIME`], not-before backdated by [`cert::CLOCK_SKEW_ALLOWANCE_SECS`]) and
//! carries, in **critical** extensions under the cocoon private OID arc
//! `1.3.6.1.4.1.59999.7.1` ([`oids`]):
//!
//! | OID | content (DER `OCTET STRING`) | required |
//! | --- | --- | --- |
//! | `1.3.6.1.4.1.59999.7.1.1` | the TDX quote (v4/v5) | yes |
//! | `1.3.6.1.4.1.59999.7.1.2` | the claims, canonical JSON ([`claims`]) | yes |
//! | `1.3.6.1.4.1.59999.7.1.3` | quote collateral JSON ([`measurements::Collateral::to_json`]) | no |
//! | `1.3.6.1.4.1.59999.7.1.4` | GPU evidence bundle ([`measurements::gpu::bundle`]) | no |
//!
//! A certificate with GPU evidence names the bundle's SHA-256 (hex) in its claims under
//! [`claims::GPU_EVIDENCE_CLAIM`], and the evidence answers a nonce derived from the
//! certificate's key ([`measurements::gpu::bundle::evidence_nonce`]); a policy with a `gpu`
//! requirement checks both and verifies the bundle ([`verify`]).
//!
//! The arc is a placeholder: PEN 59999 is not registered to this project and must be replaced
//! by a registered IANA Private Enterprise Number before production.
//!
//! # Trust boundary
//!
//! Everything in a peer certificate is untrusted input: [`evidence::parse_cert`] is written
//! for arbitrary bytes (and fuzzed). Trust comes only from the caller's policy (roots, images,
//! TCB statuses). Embedded collateral may come from the untrusted peer because every signature
//! in it chains to a root the policy pins; its freshness is checked against the verifier's
//! clock. The verifier recomputes report_data from the certificate's own key and claims, so a
//! quote lifted into a certificate with another key fails with "report_data mismatch"; the
//! TLS 1.3 CertificateVerify then proves possession of that key.
//!
//! Stock webpki rejects these certificates (unknown critical extensions, no CA): the
//! verifiers in [`tls`] do every check themselves. Server names are ignored — a peer's
//! identity is its attestation, not a DNS name. Only TLS 1.3 with Ed25519 signatures is
//! accepted, and the configs built by [`tls::client_config`] / [`tls::server_config`] disable
//! session resumption so that every connection is verified under the current policy and time.
//!
//! A rejection surfaces in the handshake of the verifying side as
//! `rustls::Error::Other(OtherError(Arc<RatlsError>))`, whose text names the reason
//! ("other error: attestation rejected: td attributes: debug bit set (…)");
//! [`ratls_error`] / [`ratls_io_error`] recover the typed [`RatlsError`] and its
//! [`measurements::Rejection`]. The rejected peer receives only a `handshake_failure` alert.
//!
//! Time is a parameter: library code takes `now` (Unix seconds) or a [`clock::Clock`]; only
//! [`clock::SystemClock`] reads the system clock.
//!
//! A service's own certificate, issued from its TEE and renewed before expiry, is an
//! [`identity::Identity`] (shared by the proxy and the worker).
//!
//! A policy that pins a signed manifest ([`config`]) keeps an append-only local record of the
//! manifests it accepted ([`manifest_record`]), so a swapped or rolled-back manifest is refused.
//!
//! Every service (proxy, worker, client) has a `[policy]` section, so this crate also holds the
//! one loader of their TOML config files ([`service_config`]: read, parse, validate, one error
//! type).

pub mod account;
pub mod cache;
pub mod cert;
pub mod claims;
pub mod clock;
pub mod config;
pub mod evidence;
pub mod gpu_ocsp;
pub mod identity;
pub mod key_file;
pub mod logging;
pub mod manifest_record;
pub mod pccs;
pub mod service_config;
pub mod testing;
pub mod tls;
pub mod verify;

pub use cache::{AttestationCache, CacheStats};
pub use cert::{issue, CertResolver, IssuedCert};
pub use claims::{Claims, Role};
pub use clock::{Clock, FixedClock, SystemClock};
pub use evidence::{parse_cert, CertError, PeerEvidence};
pub use identity::{CertInfo, ClaimsRotation, Identity};
pub use tls::{client_config, server_config, RaTlsClientVerifier, RaTlsServerVerifier};
pub use verify::{verify_peer, CollateralSource, PeerVerifier, StaticCollateral, VerifiedPeer};

use measurements::Rejection;

/// The OIDs of cocoon's certificate extensions (cocoon private arc `1.3.6.1.4.1.59999.7.1`,
/// a placeholder to be replaced by a registered PEN before production).
pub mod oids {
    /// The cocoon RA-TLS arc.
    pub const ARC: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 7, 1];
    /// The TDX quote.
    pub const QUOTE: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 7, 1, 1];
    /// The claims (canonical JSON).
    pub const CLAIMS: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 7, 1, 2];
    /// Quote collateral JSON (optional).
    pub const COLLATERAL: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 7, 1, 3];
    /// GPU evidence bundle (optional; [`measurements::gpu::bundle`]).
    pub const GPU_EVIDENCE: &[u64] = &[1, 3, 6, 1, 4, 1, 59999, 7, 1, 4];
}

/// Domain tag of the report_data binding, version 1.
pub const REPORT_DATA_TAG: &[u8] = b"cocoon/ratls/v1\0";

/// Errors of issuing and verifying RA-TLS certificates.
#[derive(Debug, thiserror::Error)]
pub enum RatlsError {
    /// The peer certificate is malformed or fails a structural check.
    #[error("peer certificate: {0}")]
    Cert(#[from] CertError),
    /// The evidence was rejected; the reason is named.
    #[error("attestation rejected: {0}")]
    Attestation(#[from] Rejection),
    /// No collateral: none embedded, and the collateral source failed or is absent.
    #[error("collateral unavailable: {0}")]
    CollateralUnavailable(String),
    /// The peer's claimed role is not one the verifier accepts.
    #[error("role {got} not allowed (allowed: {allowed})")]
    RoleNotAllowed { got: Role, allowed: String },
    /// The TEE could not produce a quote.
    #[error("quote generation: {0}")]
    Tee(#[from] attestation::TeeError),
    /// The GPU evidence for a certificate could not be collected.
    #[error("gpu evidence: {0}")]
    Gpu(#[from] attestation::GpuSourceError),
    /// Certificate construction failed.
    #[error("certificate issuance: {0}")]
    Issue(String),
    /// The TLS key could not be loaded.
    #[error("tls key: {0}")]
    Key(String),
    /// A TLS configuration could not be built.
    #[error("tls config: {0}")]
    Config(String),
    /// The peer used TLS 1.2, which RA-TLS does not support.
    #[error("tls 1.2 is not supported (ra-tls is tls 1.3 only)")]
    Tls12,
    /// A handshake signature scheme other than Ed25519.
    #[error("handshake signature scheme {0} not allowed (ed25519 only)")]
    SignatureScheme(String),
    /// The CertificateVerify signature did not verify with the certificate key.
    #[error("handshake signature invalid: {0}")]
    HandshakeSignature(String),
    /// The peer sent certificates besides its own; RA-TLS certificates are self-signed.
    #[error(
        "peer sent {0} chain certificates besides its own (ra-tls certificates are self-signed)"
    )]
    UnexpectedChain(usize),
    /// The connection has no peer certificate.
    #[error("no peer certificate on the connection")]
    NoPeerCertificate,
}

impl RatlsError {
    /// A short stable code for metrics and logs: the attestation rejection's own code
    /// ([`Rejection::code`]), else the step that failed. Exhaustive, so a new variant must
    /// name its code here.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Attestation(r) => r.code(),
            Self::Cert(_) => "certificate",
            Self::CollateralUnavailable(_) => "collateral_unavailable",
            Self::RoleNotAllowed { .. } => "role_not_allowed",
            Self::Tee(_) => "tee",
            Self::Gpu(_) => "gpu",
            Self::Issue(_) => "certificate_issuance",
            Self::Key(_) => "tls_key",
            Self::Config(_) => "tls_config",
            Self::Tls12 => "tls12",
            Self::SignatureScheme(_) => "signature_scheme",
            Self::HandshakeSignature(_) => "handshake_signature",
            Self::UnexpectedChain(_) => "unexpected_chain",
            Self::NoPeerCertificate => "no_peer_certificate",
        }
    }

    /// The attestation rejection, if this error is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Attestation(r) => Some(r),
            _ => None,
        }
    }
}

/// Finds the [`RatlsError`] inside a rustls error produced by this crate's verifiers.
///
/// The verifiers return `rustls::Error::Other(OtherError(Arc<RatlsError>))`, whose text is
/// `"other error: <reason>"`; this gives the typed value back.
pub fn ratls_error(err: &rustls::Error) -> Option<&RatlsError> {
    match err {
        rustls::Error::Other(other) => other.0.downcast_ref::<RatlsError>(),
        _ => None,
    }
}

/// Finds the [`RatlsError`] inside an I/O error from a TLS stream (e.g. tokio-rustls).
pub fn ratls_io_error(err: &std::io::Error) -> Option<&RatlsError> {
    let inner = err.get_ref()?;
    if let Some(r) = inner.downcast_ref::<RatlsError>() {
        return Some(r);
    }
    ratls_error(inner.downcast_ref::<rustls::Error>()?)
}
