//! The real TDX vectors get exactly the verdicts ../shared/testdata/README.md lists, and byte
//! flips in them are rejected with typed reasons.

mod common;

use common::*;
use measurements::policy::TcbStatus;
use measurements::verify::{verify_evidence, verify_quote, Rejection};
use measurements::{ParsedQuote, Policy, TrustRoot};

#[test]
fn uptodate_vectors_are_accepted_by_production_policy() {
    for v in [UPTODATE, NEAR] {
        let ev = verify_quote(
            &v.quote_bytes(),
            &v.collateral(),
            v.at,
            &Policy::production(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(ev.tcb_status, TcbStatus::UpToDate, "{}", v.name);
        assert!(ev.advisory_ids.is_empty());
        assert_eq!(ev.quote_version, 4);
        assert_eq!(ev.root_name, "intel-sgx-root-ca");
    }
}

#[test]
fn near_registers_match_the_readme() {
    let q = ParsedQuote::parse(&NEAR.quote_bytes()).unwrap();
    assert!(hex::encode(q.report.registers.mrtd).starts_with("f06dfda6"));
    assert!(hex::encode(q.report.registers.rtmr[0]).starts_with("68102e7b"));
}

#[test]
fn outofdate_is_rejected_by_default_and_accepted_when_allowed() {
    let v = OUTOFDATE;
    let advisories = vec!["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"];
    match verify_quote(
        &v.quote_bytes(),
        &v.collateral(),
        v.at,
        &Policy::production(),
    ) {
        Err(Rejection::TcbStatusNotAllowed {
            status,
            advisory_ids,
        }) => {
            assert_eq!(status, "OutOfDate");
            assert_eq!(advisory_ids, advisories);
        }
        other => panic!("expected tcb status rejection, got {other:?}"),
    }
    let policy = Policy::production().allow_tcb_status(TcbStatus::OutOfDate);
    let ev = verify_quote(&v.quote_bytes(), &v.collateral(), v.at, &policy).unwrap();
    assert_eq!(ev.tcb_status, TcbStatus::OutOfDate);
    assert_eq!(ev.advisory_ids, advisories);

    let mut reject_one = policy.clone();
    reject_one
        .rejected_advisories
        .insert("INTEL-SA-00982".into());
    assert_eq!(
        verify_quote(&v.quote_bytes(), &v.collateral(), v.at, &reject_one).unwrap_err(),
        Rejection::AdvisoryRejected("INTEL-SA-00982".into())
    );
}

#[test]
fn no_matching_tcb_level() {
    let v = NOTCBLEVEL;
    assert_eq!(
        verify_quote(
            &v.quote_bytes(),
            &v.collateral(),
            v.at,
            &Policy::production()
        )
        .unwrap_err(),
        Rejection::NoMatchingTcbLevel
    );
}

#[test]
fn expired_and_not_yet_valid_collateral() {
    for v in [UPTODATE, NEAR, OUTOFDATE, NOTCBLEVEL] {
        let c = v.collateral();
        let after = c.expires_at() + 1;
        match verify_quote(&v.quote_bytes(), &c, after, &Policy::production()) {
            Err(Rejection::CollateralExpired { now, .. }) => assert_eq!(now, after),
            other => panic!("{}: expected expiry, got {other:?}", v.name),
        }
        let before = c.issued_at() - 1;
        assert!(
            matches!(
                verify_quote(&v.quote_bytes(), &c, before, &Policy::production()),
                Err(Rejection::CollateralNotYetValid { .. })
            ),
            "{}",
            v.name
        );
    }
}

#[test]
fn max_collateral_age() {
    let v = UPTODATE;
    let mut policy = Policy::production();
    policy.max_collateral_age_secs = Some(60);
    assert!(matches!(
        verify_quote(&v.quote_bytes(), &v.collateral(), v.at, &policy),
        Err(Rejection::CollateralTooOld { .. })
    ));
}

#[test]
fn policy_on_images_and_report_data() {
    let v = UPTODATE;
    let quote = v.quote_bytes();
    let parsed = ParsedQuote::parse(&quote).unwrap();
    let image = parsed.report.registers.image_hash();
    let ok = Policy::production().with_images([image]);
    verify_quote(&quote, &v.collateral(), v.at, &ok).unwrap();
    let other = Policy::production().with_images([measurements::ImageHash([9; 32])]);
    assert!(matches!(
        verify_quote(&quote, &v.collateral(), v.at, &other),
        Err(Rejection::ImageNotAllowed { got, .. }) if got == image
    ));
    let rd = Policy::production().with_report_data(parsed.report.report_data);
    verify_quote(&quote, &v.collateral(), v.at, &rd).unwrap();
    let wrong = Policy::production().with_report_data([0; 64]);
    assert!(matches!(
        verify_quote(&quote, &v.collateral(), v.at, &wrong),
        Err(Rejection::ReportDataMismatch { .. })
    ));
}

#[test]
fn a_root_other_than_the_chain_root_is_untrusted() {
    let v = UPTODATE;
    let other = Policy::simulated(TrustRoot::new("other", b"not the intel root".to_vec()));
    assert!(matches!(
        verify_quote(&v.quote_bytes(), &v.collateral(), v.at, &other),
        Err(Rejection::UntrustedRoot { .. })
    ));
}

fn flipped(quote: &[u8], at: usize) -> Vec<u8> {
    let mut q = quote.to_vec();
    q[at] ^= 0x01;
    q
}

fn reason(quote: &[u8]) -> Rejection {
    let v = UPTODATE;
    verify_evidence(quote, &v.collateral(), v.at, &[TrustRoot::intel()]).unwrap_err()
}

/// Offsets in a v4 quote: header 0..48, TD report 48..632, signature data length 632..636,
/// ECDSA signature 636..700, attestation key 700..764, certification data header 764..770,
/// QE report 770..1154, QE report signature 1154..1218, QE auth data (len + 32 bytes), then
/// the PCK chain PEM.
#[test]
fn targeted_byte_flips_name_their_reason() {
    let q = UPTODATE.quote_bytes();
    assert_eq!(reason(&flipped(&q, 184)), Rejection::QuoteSignature, "mrtd");
    assert_eq!(
        reason(&flipped(&q, 600)),
        Rejection::QuoteSignature,
        "report_data"
    );
    assert_eq!(
        reason(&flipped(&q, 44)),
        Rejection::QuoteSignature,
        "header user data"
    );
    assert!(
        matches!(reason(&flipped(&q, 20)), Rejection::QuoteHeader { .. }),
        "qe vendor id"
    );
    assert_eq!(
        reason(&flipped(&q, 650)),
        Rejection::QuoteSignature,
        "signature"
    );
    assert_eq!(
        reason(&flipped(&q, 720)),
        Rejection::QeReportBinding,
        "attestation key"
    );
    assert_eq!(
        reason(&flipped(&q, 900)),
        Rejection::QeReportSignature,
        "qe report"
    );
    assert_eq!(
        reason(&flipped(&q, 1160)),
        Rejection::QeReportSignature,
        "qe report sig"
    );
    // A flip inside the PCK leaf certificate's base64 body.
    let pem = q
        .windows(27)
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .unwrap();
    let r = reason(&flipped(&q, pem + 400));
    assert!(
        matches!(r, Rejection::CertificateChain { .. }),
        "pck leaf flip: {r:?}"
    );
}

/// Every sampled byte flip inside the quote structure is rejected, except in PEM line breaks
/// (whitespace that base64 ignores). The embedded root certificate must equal a pinned root.
/// Bytes after the structure are ignored (see `ParsedQuote::len`).
#[test]
fn every_sampled_byte_flip_is_rejected() {
    let q = UPTODATE.quote_bytes();
    let end = ParsedQuote::parse(&q).unwrap().len;
    assert_eq!(end, 4936, "the vector carries 70 bytes of zero padding");
    let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
    let mut tested = 0;
    for pos in (0..q.len()).step_by(11) {
        if q[pos] == b'\n' || pos >= end {
            continue;
        }
        let r = reason(&flipped(&q, pos));
        *reasons.entry(r.code()).or_default() += 1;
        tested += 1;
    }
    assert!(tested > 400);
    assert!(!reasons.contains_key("verification"), "{reasons:?}");
    for code in [
        "quote_signature",
        "qe_report_binding",
        "qe_report_signature",
        "certificate_chain",
        "untrusted_root",
    ] {
        assert!(
            reasons.contains_key(code),
            "{code} missing from {reasons:?}"
        );
    }
}

#[test]
fn truncations_are_malformed_not_panics() {
    let q = UPTODATE.quote_bytes();
    for len in [0, 1, 47, 48, 100, 631, 632, 635, 636, 700, 1000, 4935] {
        let r = reason(&q[..len]);
        assert!(
            matches!(
                r,
                Rejection::Malformed(_)
                    | Rejection::Verification(_)
                    | Rejection::CertificateChain { .. }
            ),
            "len {len}: {r:?}"
        );
    }
}

/// The FMSPC a collateral service is asked for is read from each real quote's PCK
/// certificate, and it is the FMSPC of the TCB info recorded for that quote.
#[test]
fn pck_identity_of_real_quotes_names_their_collateral() {
    use measurements::collateral::{pck_identity, PckCa};
    for v in [UPTODATE, NEAR, OUTOFDATE, NOTCBLEVEL] {
        let id = pck_identity(&v.quote_bytes()).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert!(id.tdx, "{}", v.name);
        let tcb: serde_json::Value = serde_json::from_str(&v.collateral().raw.tcb_info).unwrap();
        let want = tcb["fmspc"].as_str().unwrap().to_ascii_uppercase();
        assert_eq!(id.fmspc_hex(), want, "{}", v.name);
        assert!(matches!(id.ca, PckCa::Platform | PckCa::Processor));
    }
    // Not a quote, a quote cut short, a quote whose certificate bytes are damaged: a typed
    // error each, never a panic.
    let q = UPTODATE.quote_bytes();
    assert!(pck_identity(b"not a quote").is_err());
    assert!(pck_identity(&q[..q.len() / 2]).is_err());
    let pem_at = q.windows(11).position(|w| w == b"-----BEGIN ").unwrap();
    let mut bad = q.clone();
    for b in &mut bad[pem_at + 40..pem_at + 120] {
        *b = b'A';
    }
    assert!(pck_identity(&bad).is_err());
}
