//! Quote verification: structure, signatures and collateral through dcap-qvl, then policy.
//!
//! [`verify_evidence`] does the cryptographic work that does not depend on policy (beyond the
//! set of trusted roots): it checks the PCK certificate chain up to a pinned root with both
//! CRLs, the TCB info and QE identity signatures and validity, the QE report signature and its
//! binding to the attestation key, the quote signature, and matches the platform's TCB level
//! (Intel TDX DCAP Quote Verification; dcap-qvl implements Intel QVL's steps). It returns
//! [`Evidence`]. [`crate::Policy::check`] then decides. [`verify_quote`] does both.
//!
//! Every failure is a [`Rejection`] that names the reason. dcap-qvl reports errors as text; the
//! mapping from its messages to typed reasons is in [`classify`] and covered by tests on real
//! and simulated quotes. Validity windows are checked here first so that expiry always gets a
//! precise reason.

use sha2::{Digest, Sha256};

use crate::collateral::Collateral;
use crate::policy::{Policy, TcbStatus, TrustRoot};
use crate::quote::{ParsedQuote, TdReport};
use crate::registers::ImageHash;
use crate::QuoteError;

/// Why evidence was rejected. Messages are lowercase and name the field and values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed quote: {0}")]
    Malformed(#[from] QuoteError),
    #[error("quote header: {detail}")]
    QuoteHeader { detail: String },
    #[error("malformed collateral: {0}")]
    MalformedCollateral(String),
    #[error("untrusted root: the quote's pck chain ends at a root with sha256 {fingerprint}, which the policy does not trust")]
    UntrustedRoot { fingerprint: String },
    #[error("collateral expired: {item} next update {next_update} is before now {now}")]
    CollateralExpired {
        item: &'static str,
        next_update: u64,
        now: u64,
    },
    #[error("collateral not yet valid: {item} issued at {issued_at}, after now {now}")]
    CollateralNotYetValid {
        item: &'static str,
        issued_at: u64,
        now: u64,
    },
    #[error(
        "collateral too old: issued at {issued_at}, more than {max_age_secs} s before now {now}"
    )]
    CollateralTooOld {
        issued_at: u64,
        max_age_secs: u64,
        now: u64,
    },
    #[error("collateral signature invalid: {item}")]
    CollateralSignature { item: &'static str },
    #[error("certificate chain: {detail}")]
    CertificateChain { detail: String },
    #[error("qe report signature invalid (not signed by the pck key)")]
    QeReportSignature,
    #[error("qe report does not bind the attestation key (hash mismatch)")]
    QeReportBinding,
    #[error("qe identity mismatch: {detail}")]
    QeIdentity { detail: String },
    #[error("quote signature invalid (body does not match the attestation key's signature)")]
    QuoteSignature,
    #[error("no matching tcb level for the platform in the tcb info")]
    NoMatchingTcbLevel,
    #[error("fmspc of the pck certificate does not match the tcb info")]
    FmspcMismatch,
    #[error("tdx module identity: {detail}")]
    TdxModule { detail: String },
    #[error("tcb status revoked")]
    TcbRevoked,
    #[error("tcb status {status} not allowed by policy (advisories: {advisory_ids:?})")]
    TcbStatusNotAllowed {
        status: String,
        advisory_ids: Vec<String>,
    },
    #[error("advisory {0} rejected by policy")]
    AdvisoryRejected(String),
    #[error("td attributes: debug bit set ({td_attributes})")]
    DebugTd { td_attributes: String },
    #[error("td attributes: {detail}")]
    TdAttribute { detail: String },
    #[error("image hash {got} not among the {allowed} allowed by policy")]
    ImageNotAllowed { got: ImageHash, allowed: usize },
    #[error("rtmr3 mismatch: got {got}, not an expected runtime configuration")]
    Rtmr3Mismatch { got: String },
    #[error("report_data mismatch: expected {expected}, got {got}")]
    ReportDataMismatch { expected: String, got: String },
    #[error("quote verification failed: {0}")]
    Verification(String),
}

impl Rejection {
    /// A short stable code for the reason, for JSON output and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_quote",
            Self::QuoteHeader { .. } => "quote_header",
            Self::MalformedCollateral(_) => "malformed_collateral",
            Self::UntrustedRoot { .. } => "untrusted_root",
            Self::CollateralExpired { .. } => "collateral_expired",
            Self::CollateralNotYetValid { .. } => "collateral_not_yet_valid",
            Self::CollateralTooOld { .. } => "collateral_too_old",
            Self::CollateralSignature { .. } => "collateral_signature",
            Self::CertificateChain { .. } => "certificate_chain",
            Self::QeReportSignature => "qe_report_signature",
            Self::QeReportBinding => "qe_report_binding",
            Self::QeIdentity { .. } => "qe_identity",
            Self::QuoteSignature => "quote_signature",
            Self::NoMatchingTcbLevel => "no_matching_tcb_level",
            Self::FmspcMismatch => "fmspc_mismatch",
            Self::TdxModule { .. } => "tdx_module",
            Self::TcbRevoked => "tcb_revoked",
            Self::TcbStatusNotAllowed { .. } => "tcb_status_not_allowed",
            Self::AdvisoryRejected(_) => "advisory_rejected",
            Self::DebugTd { .. } => "debug_td",
            Self::TdAttribute { .. } => "td_attribute",
            Self::ImageNotAllowed { .. } => "image_not_allowed",
            Self::Rtmr3Mismatch { .. } => "rtmr3_mismatch",
            Self::ReportDataMismatch { .. } => "report_data_mismatch",
            Self::Verification(_) => "verification",
        }
    }

    /// Whether the input was unusable (as opposed to well-formed evidence that failed).
    pub fn is_malformed_input(&self) -> bool {
        matches!(self, Self::Malformed(_) | Self::MalformedCollateral(_))
    }
}

/// Cryptographically verified evidence, before policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub quote_version: u16,
    pub report: TdReport,
    pub tcb_status: TcbStatus,
    pub advisory_ids: Vec<String>,
    /// SHA-256 of the DER root certificate the chains were verified against.
    pub root_fingerprint: [u8; 32],
    pub root_name: String,
    /// Earliest expiry over the collateral and certificates: the evidence is stale after it.
    pub valid_until: u64,
    /// Latest issue time over the collateral.
    pub collateral_issued_at: u64,
}

/// Verified evidence that also passed a policy.
pub type VerifiedQuote = Evidence;

impl Evidence {
    /// The image hash of the TD's registers.
    pub fn image_hash(&self) -> ImageHash {
        self.report.registers.image_hash()
    }
}

/// Verifies a quote against collateral at time `now` (Unix seconds), trusting `roots`.
pub fn verify_evidence(
    quote: &[u8],
    collateral: &Collateral,
    now: u64,
    roots: &[TrustRoot],
) -> Result<Evidence, Rejection> {
    let parsed = ParsedQuote::parse(quote)?;
    let root = select_root(quote, roots)?;
    for w in &collateral.windows {
        if now < w.issued_at {
            return Err(Rejection::CollateralNotYetValid {
                item: w.item,
                issued_at: w.issued_at,
                now,
            });
        }
        if now > w.last_valid_second() {
            return Err(Rejection::CollateralExpired {
                item: w.item,
                next_update: w.next_update,
                now,
            });
        }
    }
    // Debug is decided by our policy (with a typed reason), so dcap-qvl is told to allow it.
    let verifier = dcap_qvl::verify::QuoteVerifier::new(root.der.clone()).allow_debug(true);
    let claims = verifier
        .verify_with_policy(
            quote,
            &collateral.raw,
            now,
            &dcap_qvl::QuotePolicy::claims_only(now),
        )
        .map_err(|e| classify(&e))?;
    Ok(Evidence {
        quote_version: parsed.version,
        report: parsed.report,
        tcb_status: claims.tcb.status,
        advisory_ids: claims.tcb.advisory_ids,
        root_fingerprint: root.fingerprint(),
        root_name: root.name.clone(),
        valid_until: claims.earliest_expiration_date.min(collateral.expires_at()),
        collateral_issued_at: collateral.issued_at(),
    })
}

/// Verifies a quote and applies `policy`.
pub fn verify_quote(
    quote: &[u8],
    collateral: &Collateral,
    now: u64,
    policy: &Policy,
) -> Result<VerifiedQuote, Rejection> {
    let ev = verify_evidence(quote, collateral, now, &policy.roots)?;
    policy.check(&ev, now)?;
    Ok(ev)
}

/// Stateless verifier handle; kept as a type so services can hold one.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    pub policy: Policy,
}

impl Verifier {
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }

    pub fn verify(
        &self,
        quote: &[u8],
        collateral: &Collateral,
        now: u64,
    ) -> Result<VerifiedQuote, Rejection> {
        verify_quote(quote, collateral, now, &self.policy)
    }
}

/// Picks the trusted root the quote's embedded PCK chain ends at. The last certificate of the
/// chain must be byte-identical to a root of the policy; otherwise the quote is rejected as
/// [`Rejection::UntrustedRoot`] (a simulated quote under production policy ends here). If the
/// quote carries no PEM chain, the first root is used and dcap-qvl reports chain failures.
fn select_root<'a>(quote: &[u8], roots: &'a [TrustRoot]) -> Result<&'a TrustRoot, Rejection> {
    let first = roots.first().ok_or(Rejection::UntrustedRoot {
        fingerprint: "none (policy trusts no root)".into(),
    })?;
    let Some(chain) = embedded_chain(quote) else {
        return Ok(first);
    };
    let top = chain.last().map(|der| Sha256::digest(der).into());
    top.and_then(|fp: [u8; 32]| roots.iter().find(|r| r.fingerprint() == fp))
        .ok_or_else(|| Rejection::UntrustedRoot {
            fingerprint: top
                .map(hex::encode)
                .unwrap_or_else(|| "none (empty chain)".into()),
        })
}

/// The DER certificates of the quote's embedded PCK chain (certification data type 5), leaf
/// first, or `None` if the quote carries no PEM chain.
pub fn embedded_chain(quote: &[u8]) -> Option<Vec<Vec<u8>>> {
    let q = dcap_qvl::quote::Quote::parse(quote).ok()?;
    let pem = q.raw_cert_chain().ok()?;
    Some(pem_certs(pem))
}

/// Decodes every `CERTIFICATE` PEM block in `bytes` (invalid blocks are skipped).
pub fn pem_certs(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        match pem {
            Ok(p) if p.label == "CERTIFICATE" => out.push(p.contents),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

/// Maps a dcap-qvl error (text with context chain) to a typed reason.
pub fn classify(err: &anyhow::Error) -> Rejection {
    let msg = format!("{err:#}");
    let has = |s: &str| msg.contains(s);
    if has("Failed to decode quote")
        || has("quote version")
        || has("QE vendor ID")
        || has("attestation key type")
        || has("TEE type")
    {
        Rejection::QuoteHeader { detail: msg }
    } else if has("PCK certificate") || has("PCK CA") {
        Rejection::CertificateChain { detail: msg }
    } else if has("Failed to parse root CA CRL")
        || has("Failed to parse PCK CRL")
        || has("Failed to decode TcbInfo")
        || has("Failed to decode QeIdentity")
        || has("Failed to extract")
    {
        Rejection::MalformedCollateral(msg)
    } else if has("Signature is invalid for tcb_info") {
        Rejection::CollateralSignature { item: "tcb_info" }
    } else if has("Signature is invalid for qe_identity") {
        Rejection::CollateralSignature {
            item: "qe_identity",
        }
    } else if has("Signature is invalid for qe_report") {
        Rejection::QeReportSignature
    } else if has("QE report hash mismatch") {
        Rejection::QeReportBinding
    } else if has("ISV enclave report signature is invalid") {
        Rejection::QuoteSignature
    } else if has("No matching TCB level") {
        Rejection::NoMatchingTcbLevel
    } else if has("Fmspc mismatch") {
        Rejection::FmspcMismatch
    } else if has("Revoked") {
        Rejection::TcbRevoked
    } else if has("TCBInfo expired") {
        Rejection::CollateralExpired {
            item: "tcb_info",
            next_update: 0,
            now: 0,
        }
    } else if has("QE Identity expired") {
        Rejection::CollateralExpired {
            item: "qe_identity",
            next_update: 0,
            now: 0,
        }
    } else if has("QE MRSIGNER")
        || has("QE ISVPRODID")
        || has("QE MISCSELECT")
        || has("QE ATTRIBUTES")
        || has("QE Identity id/version")
        || has("QE report validation")
        || has("QE TCB")
        || has("QE ISVSVN")
    {
        Rejection::QeIdentity { detail: msg }
    } else if has("TDX module") {
        Rejection::TdxModule { detail: msg }
    } else if has("SEPT_VE_DISABLE") || has("TD migration") || has("Reserved bits in TD") {
        Rejection::TdAttribute { detail: msg }
    } else if has("certificate chain") || has("Certificate chain") || has("CRL") {
        Rejection::CertificateChain { detail: msg }
    } else {
        Rejection::Verification(msg)
    }
}
