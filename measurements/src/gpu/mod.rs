//! NVIDIA GPU (Hopper, H100) attestation evidence: the pure verifier.
//!
//! A confidential-computing H100 answers an SPDM GET_MEASUREMENTS request with a report
//! signed by a key that its firmware certifies under NVIDIA's device PKI. [`verify_gpu`]
//! decides whether such evidence is acceptable:
//!
//! 1. [`report::GpuReport::parse`]: strict parse of request + response (DMTF DSP0274 SPDM 1.1
//!    section 10.11) and NVIDIA's opaque fields (driver and VBIOS versions, FWID, NVDEC0).
//! 2. [`chain::verify_chain`]: exactly `policy.chain_len` certificates (5 for Hopper), each
//!    signed (ecdsa-with-SHA384, P-384) by the next and valid at `at`, issuers are CAs, and the
//!    top one byte-identical to a pinned root ([`NVIDIA_DEVICE_IDENTITY_CA_PEM`] in production).
//! 3. The leaf's FWID extension equals the report's FWID (binds the attestation key to the
//!    firmware that holds it).
//! 4. The report signature (ECDSA P-384 over SHA-384 of everything before it) with the leaf key.
//! 5. The request nonce equals the verifier's nonce (freshness).
//! 6. Optionally OCSP for the chain ([`ocsp`]), judged at its own time.
//! 7. Policy: minimum driver version, a reference set for the exact (driver, VBIOS) pair, and
//!    every referenced measurement equal to an allowed value ([`refs`], with NVIDIA's skips).
//!
//! Every failure is a [`GpuRejection`] with a stable [`GpuRejection::code`].
//!
//! [`rim`] turns NVIDIA's reference integrity manifests into [`refs::GpuReferenceValues`];
//! [`xmldsig`] verifies their XML signatures to the pinned NVIDIA CoRIM signing root. [`sim`] signs synthetic
//! Hopper-format reports under a simulated root for CI without a GPU.
//!
//! Trust boundary: report, chain and OCSP responses are untrusted bytes (the host relays
//! them). Trust comes from the pinned root, the nonce the verifier chose, and the reference
//! values a signed manifest carries. Pure: no files, sockets or clock; times are parameters.

pub mod bundle;
pub mod chain;
pub mod ocsp;
pub mod refs;
pub mod report;
pub mod rim;
pub mod sim;
pub mod xml;
pub mod xmldsig;

use std::collections::BTreeSet;

use x509_cert::Certificate;

use crate::policy::TrustRoot;
pub use ocsp::{OcspEvidence, OcspStatus};
pub use refs::{
    Comparison, DriverVersion, GpuReferenceSet, GpuReferenceValues, Mismatch, SkipReason,
};
pub use report::{GpuReport, ReportError};

/// NVIDIA Device Identity CA (PEM), the root of every Hopper device certificate chain.
/// SHA-256 of its DER: `102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48`
/// (checked by a test).
pub const NVIDIA_DEVICE_IDENTITY_CA_PEM: &[u8] =
    include_bytes!("../../roots/nvidia_device_identity_ca.pem");

/// Number of certificates in a Hopper attestation chain (leaf to root).
pub const HOPPER_CHAIN_LEN: usize = 5;

/// Why GPU evidence was rejected. Messages are lowercase and name the field and values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuRejection {
    #[error("malformed gpu report: {0}")]
    MalformedReport(#[from] ReportError),
    #[error("malformed certificate chain: {0}")]
    MalformedChain(String),
    #[error("malformed ocsp response {item}: {detail}")]
    MalformedOcsp { item: usize, detail: String },
    #[error("certificate chain has {got} certificates, expected {expected}")]
    ChainLength { expected: usize, got: usize },
    #[error("untrusted root: the chain ends at {subject} (sha256 {fingerprint}), which the policy does not pin")]
    UntrustedRoot {
        subject: String,
        fingerprint: String,
    },
    #[error("certificate {index} ({subject}): {detail}")]
    ChainSignature {
        index: usize,
        subject: String,
        detail: String,
    },
    #[error("certificate {index} ({subject}) expired: not after {not_after}, at {at}")]
    CertificateExpired {
        index: usize,
        subject: String,
        not_after: u64,
        at: u64,
    },
    #[error("certificate {index} ({subject}) not yet valid: not before {not_before}, at {at}")]
    CertificateNotYetValid {
        index: usize,
        subject: String,
        not_before: u64,
        at: u64,
    },
    #[error("leaf certificate has no fwid extension")]
    FwidMissing,
    #[error("fwid mismatch: leaf certificate {cert}, report {report}")]
    FwidMismatch { cert: String, report: String },
    #[error("report signature does not verify with the leaf certificate's key")]
    ReportSignature,
    #[error("nonce mismatch: expected {expected}, report requested {got}")]
    NonceMismatch { expected: String, got: String },
    #[error("report does not cover all measurements (request param2 {0:#04x}, expected 0xff)")]
    PartialMeasurements(u8),
    #[error("ocsp: no response for certificate {index} ({subject})")]
    OcspMissing { index: usize, subject: String },
    #[error("ocsp response {item} is for no certificate of the chain")]
    OcspUnmatched { item: usize },
    #[error("ocsp response for certificate {index} ({subject}): bad signature: {detail}")]
    OcspSignature {
        index: usize,
        subject: String,
        detail: String,
    },
    #[error("ocsp: certificate {index} ({subject}) revoked at {revoked_at}")]
    OcspRevoked {
        index: usize,
        subject: String,
        revoked_at: u64,
    },
    #[error("ocsp: certificate {index} ({subject}) status unknown")]
    OcspUnknown { index: usize, subject: String },
    #[error("ocsp response for certificate {index} ({subject}) stale: valid {this_update}..{next_update}, at {at}")]
    OcspStale {
        index: usize,
        subject: String,
        this_update: u64,
        next_update: u64,
        at: u64,
    },
    #[error("ocsp response for certificate {index} ({subject}) not yet valid: this update {this_update}, at {at}")]
    OcspNotYetValid {
        index: usize,
        subject: String,
        this_update: u64,
        at: u64,
    },
    #[error("ocsp responses required by policy but none given")]
    OcspRequired,
    #[error("driver {got} below the minimum {minimum}")]
    DriverTooOld { got: String, minimum: String },
    #[error("no reference values for driver {driver} with vbios {vbios}")]
    NoReferences { driver: String, vbios: String },
    #[error("{}", describe_mismatches(.mismatches))]
    MeasurementMismatch {
        checked: usize,
        mismatches: Vec<Mismatch>,
    },
    #[error("{got} gpus presented evidence, policy requires {expected}")]
    GpuCount { expected: usize, got: usize },
    #[error("gpu {index} repeats the device certificate serial {serial} of an earlier gpu")]
    DuplicateGpu { index: usize, serial: String },
    #[error("malformed gpu evidence bundle: {0}")]
    MalformedBundle(String),
    #[error("the policy requires gpu evidence; the certificate carries none")]
    EvidenceMissing,
    #[error("the certificate carries gpu evidence its quoted claims do not name")]
    EvidenceUnclaimed,
    #[error("gpu evidence hash mismatch: the quoted claims name {claimed}, the certificate carries {got}")]
    EvidenceHashMismatch { claimed: String, got: String },
}

impl GpuRejection {
    /// A short stable code for the reason, for JSON output and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedReport(_) => "malformed_report",
            Self::MalformedChain(_) => "malformed_chain",
            Self::MalformedOcsp { .. } => "malformed_ocsp",
            Self::ChainLength { .. } => "chain_length",
            Self::UntrustedRoot { .. } => "untrusted_root",
            Self::ChainSignature { .. } => "chain_signature",
            Self::CertificateExpired { .. } => "certificate_expired",
            Self::CertificateNotYetValid { .. } => "certificate_not_yet_valid",
            Self::FwidMissing => "fwid_missing",
            Self::FwidMismatch { .. } => "fwid_mismatch",
            Self::ReportSignature => "report_signature",
            Self::NonceMismatch { .. } => "nonce_mismatch",
            Self::PartialMeasurements(_) => "partial_measurements",
            Self::OcspMissing { .. } => "ocsp_missing",
            Self::OcspUnmatched { .. } => "ocsp_unmatched",
            Self::OcspSignature { .. } => "ocsp_signature",
            Self::OcspRevoked { .. } => "ocsp_revoked",
            Self::OcspUnknown { .. } => "ocsp_unknown",
            Self::OcspStale { .. } => "ocsp_stale",
            Self::OcspNotYetValid { .. } => "ocsp_not_yet_valid",
            Self::OcspRequired => "ocsp_required",
            Self::DriverTooOld { .. } => "driver_too_old",
            Self::NoReferences { .. } => "no_references",
            Self::MeasurementMismatch { .. } => "measurement_mismatch",
            Self::GpuCount { .. } => "gpu_count",
            Self::DuplicateGpu { .. } => "duplicate_gpu",
            Self::MalformedBundle(_) => "malformed_bundle",
            Self::EvidenceMissing => "gpu_evidence_missing",
            Self::EvidenceUnclaimed => "gpu_evidence_unclaimed",
            Self::EvidenceHashMismatch { .. } => "gpu_evidence_hash_mismatch",
        }
    }

    /// Whether the input was unusable (as opposed to well-formed evidence that failed).
    pub fn is_malformed_input(&self) -> bool {
        matches!(
            self,
            Self::MalformedReport(_)
                | Self::MalformedChain(_)
                | Self::MalformedOcsp { .. }
                | Self::MalformedBundle(_)
        )
    }
}

fn describe_mismatches(m: &[Mismatch]) -> String {
    let Some(first) = m.first() else {
        return "measurement mismatch".into();
    };
    let more = if m.len() > 1 {
        format!(" ({} mismatches in all)", m.len())
    } else {
        String::new()
    };
    format!(
        "measurement index {} mismatch: got {}, expected one of [{}]{more}",
        first.index,
        first.got.as_deref().unwrap_or("no such block"),
        first.expected.join(", ")
    )
}

/// What a GPU verifier accepts.
#[derive(Clone, Debug)]
pub struct GpuPolicy {
    /// Roots the chain may end at (byte-identical). Production: NVIDIA Device Identity CA only.
    pub roots: Vec<TrustRoot>,
    /// Exact number of certificates in the chain (leaf to root).
    pub chain_len: usize,
    /// Reference values; the report's (driver, VBIOS) pair must have a set. `None` compares
    /// nothing and accepts any versions (inspection tools only, never services).
    pub references: Option<GpuReferenceValues>,
    /// Reject drivers below this version.
    pub min_driver: Option<DriverVersion>,
    /// Exact number of GPUs [`verify_gpus`] requires.
    pub gpu_count: Option<usize>,
    /// Require OCSP responses for the chain.
    pub require_ocsp: bool,
    /// Reject OCSP responses whose thisUpdate is older than this at their check time.
    pub ocsp_max_age_secs: Option<u64>,
}

impl GpuPolicy {
    /// A 5-certificate Hopper chain to one of `roots`, these reference values, nothing else
    /// required (no minimum driver, any GPU count, no OCSP).
    pub fn new(roots: Vec<TrustRoot>, references: GpuReferenceValues) -> Self {
        Self {
            roots,
            chain_len: HOPPER_CHAIN_LEN,
            references: Some(references),
            min_driver: None,
            gpu_count: None,
            require_ocsp: false,
            ocsp_max_age_secs: None,
        }
    }

    /// NVIDIA's root, a 5-certificate Hopper chain, these reference values; nothing else.
    pub fn production(references: GpuReferenceValues) -> Self {
        Self::new(vec![nvidia_root()], references)
    }

    /// Like [`GpuPolicy::production`] but without reference values (inspection only).
    pub fn inspect() -> Self {
        Self {
            references: None,
            ..Self::production(GpuReferenceValues {
                format: refs::GPU_REFS_FORMAT_V1.into(),
                sets: Vec::new(),
            })
        }
    }
}

/// NVIDIA Device Identity CA as a [`TrustRoot`] (DER decoded from the embedded PEM).
pub fn nvidia_root() -> TrustRoot {
    // The embedded PEM is a reviewed constant; a test checks that it decodes and its
    // fingerprint. Should it ever fail to decode, no chain can match the empty root.
    let der = pem_to_der(NVIDIA_DEVICE_IDENTITY_CA_PEM).unwrap_or_default();
    TrustRoot::new("nvidia-device-identity-ca", der)
}

/// Decodes one PEM certificate to DER.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, GpuRejection> {
    use der::Encode;
    let certs = chain::parse_pem_chain(pem)?;
    match certs.as_slice() {
        [one] => one
            .to_der()
            .map_err(|e| GpuRejection::MalformedChain(e.to_string())),
        _ => Err(GpuRejection::MalformedChain(format!(
            "expected one certificate, got {}",
            certs.len()
        ))),
    }
}

/// One GPU's evidence as the worker relays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The SPDM request + response bytes.
    pub report: Vec<u8>,
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: Vec<u8>,
    /// OCSP responses for the chain, if collected.
    pub ocsp: Option<OcspEvidence>,
}

/// Evidence that passed verification and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGpu {
    pub driver_version: String,
    pub vbios_version: String,
    pub fwid: Vec<u8>,
    /// Serial of the per-device identity certificate (chain index 1), hex.
    pub device_serial: String,
    /// Name of the pinned root the chain ended at.
    pub root_name: String,
    pub measurements_checked: usize,
    pub skipped: Vec<(u16, SkipReason)>,
    pub ocsp: Vec<OcspStatus>,
    /// The times at which every certificate of the chain is valid (latest notBefore, earliest
    /// notAfter): the verdict holds for any time in this window (OCSP aside).
    pub chain_valid: (u64, u64),
    /// The times at which every accepted OCSP response is fresh under the policy
    /// ([`ocsp::window`]); `(0, u64::MAX)` without OCSP. With OCSP judged at the chain's time
    /// (the RA-TLS hop), the verdict holds in the intersection of both windows.
    pub ocsp_valid: (u64, u64),
}

/// Verifies one GPU's evidence: report signed by a chain to a pinned root, the expected
/// nonce, OCSP if given, and the policy. `at` is the time for the chain's validity; OCSP
/// responses are judged at their own [`OcspEvidence::at`].
pub fn verify_gpu(
    evidence: &GpuEvidence,
    expected_nonce: &[u8; 32],
    at: u64,
    policy: &GpuPolicy,
) -> Result<VerifiedGpu, GpuRejection> {
    let certs = chain::parse_pem_chain(&evidence.chain_pem)?;
    verify_gpu_certs(
        &evidence.report,
        &certs,
        evidence.ocsp.as_ref(),
        expected_nonce,
        at,
        policy,
    )
}

/// [`verify_gpu`] with the chain already decoded (leaf first).
pub fn verify_gpu_certs(
    report_bytes: &[u8],
    certs: &[Certificate],
    ocsp: Option<&OcspEvidence>,
    expected_nonce: &[u8; 32],
    at: u64,
    policy: &GpuPolicy,
) -> Result<VerifiedGpu, GpuRejection> {
    let report = GpuReport::parse(report_bytes)?;
    let root_ders: Vec<Vec<u8>> = policy.roots.iter().map(|r| r.der.clone()).collect();
    let root_index = chain::verify_chain(certs, policy.chain_len, &root_ders, at)?;
    let leaf = &certs[0];
    let cert_fwid = chain::leaf_fwid(leaf)?;
    if cert_fwid != report.fwid {
        return Err(GpuRejection::FwidMismatch {
            cert: hex::encode(&cert_fwid),
            report: hex::encode(&report.fwid),
        });
    }
    verify_report_signature(report_bytes, &report, leaf)?;
    if report.request_nonce != *expected_nonce {
        return Err(GpuRejection::NonceMismatch {
            expected: hex::encode(expected_nonce),
            got: hex::encode(report.request_nonce),
        });
    }
    if report.measurement_operation != 0xFF {
        return Err(GpuRejection::PartialMeasurements(
            report.measurement_operation,
        ));
    }
    let ocsp = match ocsp {
        Some(o) => ocsp::check_chain_ocsp(certs, o, policy.ocsp_max_age_secs)?,
        None if policy.require_ocsp => return Err(GpuRejection::OcspRequired),
        None => Vec::new(),
    };
    let chain_valid = certs
        .iter()
        .map(chain::validity)
        .fold((0u64, u64::MAX), |(from, until), (nb, na)| {
            (from.max(nb), until.min(na))
        });
    let ocsp_valid = ocsp::window(&ocsp, policy.ocsp_max_age_secs);
    check_versions_and_measurements(&report, policy).map(|cmp| VerifiedGpu {
        chain_valid,
        ocsp_valid,
        driver_version: report.driver_version.clone(),
        vbios_version: report.vbios_version.clone(),
        fwid: report.fwid.clone(),
        device_serial: certs
            .get(1)
            .map(|c| hex::encode(c.tbs_certificate.serial_number.as_bytes()))
            .unwrap_or_default(),
        root_name: policy.roots[root_index].name.clone(),
        measurements_checked: cmp.checked,
        skipped: cmp.skipped,
        ocsp,
    })
}

fn verify_report_signature(
    bytes: &[u8],
    report: &GpuReport,
    leaf: &Certificate,
) -> Result<(), GpuRejection> {
    let key = chain::p384_key(leaf).map_err(|detail| GpuRejection::ChainSignature {
        index: 0,
        subject: chain::subject(leaf),
        detail,
    })?;
    let signed = bytes
        .get(..report.signed_len)
        .ok_or(GpuRejection::ReportSignature)?;
    key.verify_fixed(signed, &report.signature)
        .map_err(|_| GpuRejection::ReportSignature)
}

/// Applies the version rules and compares measurements (the policy part of [`verify_gpu`]).
pub fn check_versions_and_measurements(
    report: &GpuReport,
    policy: &GpuPolicy,
) -> Result<Comparison, GpuRejection> {
    if let Some(min) = &policy.min_driver {
        let got = DriverVersion::parse(&report.driver_version).map_err(|e| {
            GpuRejection::MalformedReport(ReportError::OpaqueField {
                field: "driver version",
                detail: e,
            })
        })?;
        if got < *min {
            return Err(GpuRejection::DriverTooOld {
                got: report.driver_version.clone(),
                minimum: min.to_string(),
            });
        }
    }
    let Some(refs) = &policy.references else {
        return Ok(Comparison::default());
    };
    let set = refs
        .find(&report.driver_version, &report.vbios_version)
        .ok_or_else(|| GpuRejection::NoReferences {
            driver: report.driver_version.clone(),
            vbios: report.vbios_version.clone(),
        })?;
    let cmp = refs::compare(report, set);
    if !cmp.mismatches.is_empty() {
        return Err(GpuRejection::MeasurementMismatch {
            checked: cmp.checked,
            mismatches: cmp.mismatches,
        });
    }
    Ok(cmp)
}

/// Verifies the evidence of every GPU of a machine: each as [`verify_gpu`] with the same
/// nonce, no device twice, and the count the policy requires.
pub fn verify_gpus(
    evidence: &[GpuEvidence],
    expected_nonce: &[u8; 32],
    at: u64,
    policy: &GpuPolicy,
) -> Result<Vec<VerifiedGpu>, GpuRejection> {
    let chains = evidence
        .iter()
        .map(|ev| chain::parse_pem_chain(&ev.chain_pem))
        .collect::<Result<Vec<_>, _>>()?;
    verify_machine(
        evidence
            .iter()
            .zip(&chains)
            .map(|(ev, certs)| (ev.report.as_slice(), certs.as_slice(), ev.ocsp.as_ref())),
        evidence.len(),
        expected_nonce,
        at,
        policy,
    )
}

/// The machine-level rules of [`verify_gpus`] over decoded evidence: (report, chain, OCSP).
pub(crate) fn verify_machine<'a>(
    gpus: impl Iterator<Item = (&'a [u8], &'a [Certificate], Option<&'a OcspEvidence>)>,
    count: usize,
    expected_nonce: &[u8; 32],
    at: u64,
    policy: &GpuPolicy,
) -> Result<Vec<VerifiedGpu>, GpuRejection> {
    if let Some(expected) = policy.gpu_count {
        if count != expected {
            return Err(GpuRejection::GpuCount {
                expected,
                got: count,
            });
        }
    }
    // The GPUs share their CA certificates and the CAs' OCSP answers: each shared signature
    // is verified once per call.
    chain::with_signature_memo(|| {
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(count);
        for (index, (report, certs, ocsp)) in gpus.enumerate() {
            let v = verify_gpu_certs(report, certs, ocsp, expected_nonce, at, policy)?;
            if !seen.insert(v.device_serial.clone()) {
                return Err(GpuRejection::DuplicateGpu {
                    index,
                    serial: v.device_serial,
                });
            }
            out.push(v);
        }
        Ok(out)
    })
}
