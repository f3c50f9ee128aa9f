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
    #[error("model {model} with digest {digest} not allowed by policy: {detail}")]
    ModelNotAllowed {
        model: String,
        digest: String,
        detail: String,
    },
    #[error("report_data mismatch: expected {expected}, got {got}")]
    ReportDataMismatch { expected: String, got: String },
    #[error("quote verification failed: {0}")]
    Verification(String),
    /// The peer's GPU evidence (carried in its RA-TLS certificate) failed; the inner reason
    /// names why ([`crate::gpu::GpuRejection::code`]).
    #[error("gpu evidence: {0}")]
    Gpu(crate::gpu::GpuRejection),
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
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::ReportDataMismatch { .. } => "report_data_mismatch",
            Self::Verification(_) => "verification",
            Self::Gpu(_) => "gpu_evidence",
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
    check_windows(collateral, now)?;
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

/// The first validity window of `collateral` that `now` is outside of, as its rejection
/// (`CollateralNotYetValid` or `CollateralExpired`).
pub fn check_windows(collateral: &Collateral, now: u64) -> Result<(), Rejection> {
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
    Ok(())
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
///
/// dcap-qvl 0.7.1 (pinned exactly) reports every failure as text. Each message it can produce
/// is listed, with the reason code it must get here, in
/// `tests/fixtures/dcap_qvl_0.7.1_messages.json`; `tests/dcap_qvl_reasons.rs` checks the
/// mapping and that the list matches the dcap-qvl source. The rules are tried in order, on the
/// whole chain ("context: cause"), so a message that names its cause (a date that does not
/// parse inside "TDX module identity check", a debug QE inside "QE report validation failed")
/// gets the cause's reason. Only the rejections of dcap-qvl's own optional policy, which this
/// crate never enables (it passes `QuotePolicy::claims_only`; [`Policy`] decides), and text
/// matching no rule stay [`Rejection::Verification`].
pub fn classify(err: &anyhow::Error) -> Rejection {
    let msg = format!("{err:#}");
    let has = |s: &str| msg.contains(s);
    let any = |list: &[&str]| list.iter().any(|s| msg.contains(s));
    // Verdicts of a signature or binding check: unambiguous whatever else the text says.
    if has("Signature is invalid for tcb_info") {
        return Rejection::CollateralSignature { item: "tcb_info" };
    }
    if has("Signature is invalid for qe_identity") {
        return Rejection::CollateralSignature {
            item: "qe_identity",
        };
    }
    if has("Signature is invalid for qe_report") {
        return Rejection::QeReportSignature;
    }
    if has("ISV enclave report signature is invalid") {
        return Rejection::QuoteSignature;
    }
    if has("QE report hash mismatch") {
        return Rejection::QeReportBinding;
    }
    // Validity windows (normally caught before dcap-qvl runs, see `verify_evidence`).
    let expired = [
        ("TCBInfo expired", "tcb_info"),
        ("QE Identity expired", "qe_identity"),
        ("CrlExpired", "crl"),
        ("Collateral expired", "collateral"),
    ];
    if let Some((_, item)) = expired.into_iter().find(|(s, _)| has(s)) {
        // dcap-qvl's text carries no dates.
        return Rejection::CollateralExpired {
            item,
            next_update: 0,
            now: 0,
        };
    }
    if has("TCBInfo issue date is in the future") {
        return Rejection::CollateralNotYetValid {
            item: "tcb_info",
            issued_at: 0,
            now: 0,
        };
    }
    if has("QE Identity issue date is in the future") {
        return Rejection::CollateralNotYetValid {
            item: "qe_identity",
            issued_at: 0,
            now: 0,
        };
    }
    if any(QUOTE_HEADER) {
        return Rejection::QuoteHeader { detail: msg };
    }
    if any(CERTIFICATION_DATA) {
        return Rejection::CertificateChain { detail: msg };
    }
    if any(MALFORMED_COLLATERAL) {
        return Rejection::MalformedCollateral(msg);
    }
    if any(PCK_EXTENSION) {
        return Rejection::CertificateChain {
            detail: format!("pck certificate sgx extension: {msg}"),
        };
    }
    if any(CERTIFICATE_CHAIN) {
        return Rejection::CertificateChain { detail: msg };
    }
    if has("TCB status is invalid: Revoked") {
        return Rejection::TcbRevoked;
    }
    if has("No matching TCB level") {
        return Rejection::NoMatchingTcbLevel;
    }
    if has("Fmspc mismatch") {
        return Rejection::FmspcMismatch;
    }
    if let Some(status) = between(&msg, "TCB status ", " is not acceptable by policy") {
        return Rejection::TcbStatusNotAllowed {
            status: status.to_string(),
            advisory_ids: Vec::new(),
        };
    }
    if has("TCB too old") {
        return Rejection::TcbStatusNotAllowed {
            status: msg,
            advisory_ids: Vec::new(),
        };
    }
    if let Some(id) = between(&msg, "Advisory ID ", " is rejected by policy") {
        return Rejection::AdvisoryRejected(id.to_string());
    }
    if any(QE_IDENTITY) {
        return Rejection::QeIdentity { detail: msg };
    }
    if has("TDX module") {
        return Rejection::TdxModule { detail: msg };
    }
    // The TD 1.5 current TCB matched no level (its specific causes are matched above).
    if has("Failed to evaluate the current TDX TCB") {
        return Rejection::NoMatchingTcbLevel;
    }
    if has("Debug mode is enabled") {
        return Rejection::DebugTd {
            td_attributes: "reported by dcap-qvl".into(),
        };
    }
    if any(TD_ATTRIBUTES) {
        return Rejection::TdAttribute { detail: msg };
    }
    if is_bare_webpki_error(&msg) {
        // The root CA checked against the CRLs: dcap-qvl passes webpki's error on as is.
        return Rejection::CertificateChain {
            detail: format!("root ca against the crls: {msg}"),
        };
    }
    Rejection::Verification(msg)
}

/// The quote's structure and header as dcap-qvl reads them.
const QUOTE_HEADER: &[&str] = &[
    "Failed to decode quote",
    "Unsupported DCAP quote version",
    "Unknown QE vendor ID",
    "Unsupported TEE type",
    "TEE quote must have version",
    "Unsupported DCAP attestation key type",
    "Failed to get TD10 report",
    "Failed to get signed quote scope",
    "Invalid QE auth data length",
];

/// The quote's certification data (the PCK chain it carries, or a type without one).
const CERTIFICATION_DATA: &[&str] = &[
    "PCK certificate",
    "PCK CA",
    "PCK cert format",
    "Unsupported cert type",
    "Certification data type",
    "encrypted_ppid_params",
    "ENCRYPTED_PPID",
    "No certificates found in PEM chain",
];

/// Collateral that does not parse or does not fit the quote: JSON, dates, CRL DER, issuer
/// chain PEM (the PCK chain's PEM is matched above), field encodings, signature lengths (only
/// the collateral's signatures have a variable length; the quote's are fixed arrays).
const MALFORMED_COLLATERAL: &[&str] = &[
    "Failed to decode TcbInfo",
    "Failed to decode QeIdentity",
    "Failed to parse root CA CRL",
    "Failed to parse PCK CRL",
    "Failed to parse CRL",
    "CRL number",
    "RFC3339",
    "issue date",
    "next update",
    "issueDate",
    "nextUpdate",
    "tcbDate",
    "TCB date",
    "Failed to decode TCB FMSPC",
    " as hex",
    "has invalid length",
    "missing tdxModule field",
    "component count mismatch",
    "Unrecognized TCB status",
    "non-TDX TCB info",
    "non-SGX TCB info",
    "Unsupported QE Identity id/version",
    "No TCB levels found in QE Identity",
    "Invalid key length",
    "ECDSA signature sequence",
    "INTEGER",
    "encode_ecdsa_sig",
    "Failed to parse certs",
];

/// The Intel SGX extension of the PCK leaf certificate (FMSPC, CPUSVN, PCESVN, flags).
const PCK_EXTENSION: &[&str] = &[
    "Intel extension",
    "Invalid OID encoding",
    "appears more than once",
    "Failed to decode DER object",
    "Failed to get subobject",
    "Failed to load sequence",
    "Failed to load nested sequence",
    "Failed to get entry",
    "Failed to get name",
    "Failed to get value",
    "Failed to read entry",
    "Failed to read OID",
    "Failed to read value",
    "OID is missing",
    "Failed to find Fmspc",
    "Fmspc length mismatch",
    "Failed to decode Fmspc",
    "CpuSvn",
    "PceSvn",
    "DER recursion depth",
    "Unexpected BOOLEAN length",
    "Unexpected ENUMERATED length",
];

/// Certificate chains (PCK, TCB info and QE identity signers) up to the pinned root, and CRLs.
const CERTIFICATE_CHAIN: &[&str] = &[
    "certificate chain",
    "Certificate chain",
    "leaf certificate",
    "Too many intermediate certificates",
    "RevocationOptionsBuilder",
    "must be issued directly by the root CA",
    "Failed to load root ca",
    "Failed to parse root CA certificate",
    "Failed to parse certificate for time window",
    "Failed to decode certificate",
    "CRL",
];

/// The QE report against the QE identity.
const QE_IDENTITY: &[&str] = &[
    "QE MRSIGNER",
    "QE ISVPRODID",
    "QE MISCSELECT",
    "QE ATTRIBUTES",
    "QE report validation",
    "QE ISVSVN",
    "Failed to decode QE report",
];

/// TD attributes and service TD binding (debug is matched separately).
const TD_ATTRIBUTES: &[&str] = &[
    "TD profiling",
    "Reserved bits in TD",
    "TD migration",
    "SERVTD_EXT",
    "SEPT_VE_DISABLE",
    "MR service TD",
    "TD attributes",
];

/// The text between `start` and `end` in `msg`, if both occur in that order.
fn between<'a>(msg: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let (_, rest) = msg.split_once(start)?;
    let (value, _) = rest.split_once(end)?;
    Some(value)
}

/// Whether `msg` is a webpki error as its Debug form prints it (`CertRevoked`,
/// `TrailingData(Certificate)`, `CrlExpired { time: …, next_update: … }`) with no context.
fn is_bare_webpki_error(msg: &str) -> bool {
    let end = msg
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(msg.len());
    let (name, rest) = msg.split_at(end);
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().skip(1).any(|c| c.is_ascii_uppercase())
        && (rest.is_empty() || rest.starts_with('(') || rest.starts_with(" {"))
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    fn code(err: anyhow::Error) -> &'static str {
        classify(&err).code()
    }

    #[test]
    fn the_cause_wins_over_the_context() {
        let date = anyhow::anyhow!("Failed to parse RFC3339 datetime: premature end of input")
            .context("Invalid TDX module tcbDate");
        assert_eq!(code(date), "malformed_collateral");
        let debug_qe =
            anyhow::anyhow!("Debug mode is enabled").context("QE report validation failed");
        assert_eq!(code(debug_qe), "qe_identity");
        assert_eq!(code(anyhow::anyhow!("Debug mode is enabled")), "debug_td");
        let current = anyhow::anyhow!("No matching TCB level found")
            .context("Failed to evaluate the current TDX TCB (TEE_TCB_SVN2)");
        assert_eq!(code(current), "no_matching_tcb_level");
        let qe_for_sgx = anyhow::anyhow!(
            "Unsupported QE Identity id/version for the quote TEE type: QE version 2 \
             (expected TD_QE version [2, 3])"
        );
        assert_eq!(code(qe_for_sgx), "malformed_collateral");
    }

    #[test]
    fn policy_texts_carry_their_values() {
        let r = classify(&anyhow::anyhow!(
            "TCB status OutOfDate is not acceptable by policy"
        ));
        assert_eq!(
            r,
            Rejection::TcbStatusNotAllowed {
                status: "OutOfDate".into(),
                advisory_ids: vec![],
            }
        );
        let r = classify(&anyhow::anyhow!(
            "Advisory ID INTEL-SA-00837 is rejected by policy"
        ));
        assert_eq!(r, Rejection::AdvisoryRejected("INTEL-SA-00837".into()));
    }

    #[test]
    fn bare_webpki_errors_are_recognized() {
        for yes in [
            "CertRevoked",
            "BadDer",
            "TrailingData(Certificate)",
            "CrlExpired { time: UnixTime(1), next_update: UnixTime(0) }",
        ] {
            assert!(is_bare_webpki_error(yes), "{yes}");
        }
        for no in [
            "Fmspc mismatch",
            "",
            "X",
            "lowercase",
            "Some text: CertRevoked",
            "É",
        ] {
            assert!(!is_bare_webpki_error(no), "{no}");
        }
        assert_eq!(
            code(anyhow::anyhow!("UnknownRevocationStatus")),
            "certificate_chain"
        );
        assert_eq!(
            code(anyhow::anyhow!("something dcap-qvl never says")),
            "verification"
        );
    }
}
