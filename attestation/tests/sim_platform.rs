//! The simulated TDX platform against the real verifier (dcap-qvl) and the quote parser.

use std::sync::Arc;

use attestation::sim::{default_registers, SimPlatform, SimPlatformSeed, SimTdx};
use attestation::TeeDevice;
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{QuoteCollateralV3, QuotePolicy, TcbStatus};
use measurements::quote::{ParsedQuote, V4_REPORT_DATA_OFFSET};
use measurements::registers::{extend_sha384, TD_ATTR_DEBUG};
use measurements::TdRegisters;

const SEED: [u8; 32] = *b"cocoon sim platform test seed 01";
const ISSUED_AT: u64 = 1_750_000_000; // 2025-06-15T15:06:40Z
const VALID_FOR: u64 = 30 * 24 * 3600;
const NOW: u64 = ISSUED_AT + 3600;

fn platform() -> SimPlatform {
    SimPlatform::from_seed(SEED).unwrap()
}

fn registers() -> TdRegisters {
    let mut regs = default_registers();
    regs.mrtd = [0x11; 48];
    regs.rtmr = [[0x21; 48], [0x22; 48], [0x23; 48], [0; 48]];
    regs.mrconfigid = [0x31; 48];
    regs
}

fn report_data() -> [u8; 64] {
    let mut rd = [0u8; 64];
    for (i, b) in rd.iter_mut().enumerate() {
        *b = i as u8;
    }
    rd
}

fn verifier(p: &SimPlatform) -> QuoteVerifier {
    QuoteVerifier::new(p.root_ca_der().to_vec())
}

fn verify_err(v: &QuoteVerifier, quote: &[u8], collateral: &QuoteCollateralV3, now: u64) -> String {
    match v.verify(quote, collateral, now) {
        Ok(report) => panic!("expected rejection, got {report:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn sim_quote_verifies_under_the_sim_root() {
    let p = platform();
    let regs = registers();
    let rd = report_data();
    let quote = p.quote(&regs, &rd).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();

    let report = verifier(&p).verify(&quote, &collateral, NOW).unwrap();
    assert_eq!(report.status, "UpToDate");
    assert!(report.advisory_ids.is_empty());
    let td = report.report.as_td10().unwrap();
    assert_eq!(td.mr_td, regs.mrtd);
    assert_eq!(td.rt_mr3, regs.rtmr[3]);
    assert_eq!(td.report_data, rd);

    let parsed = ParsedQuote::parse(&quote).unwrap();
    assert_eq!(parsed.version, 4);
    assert_eq!(parsed.report.registers, regs);
    assert_eq!(parsed.report.report_data, rd);

    // Also at the edges of the window.
    verifier(&p).verify(&quote, &collateral, ISSUED_AT).unwrap();
    verifier(&p)
        .verify(&quote, &collateral, ISSUED_AT + VALID_FOR - 1)
        .unwrap();
}

#[test]
fn sim_quote_passes_dcap_qvl_strict_policy() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let claims = verifier(&p)
        .verify_with_policy(&quote, collateral, NOW, &QuotePolicy::strict(NOW))
        .unwrap();
    assert_eq!(claims.tcb.status, TcbStatus::UpToDate);
    assert_eq!(claims.platform.pck.fmspc, p.params().fmspc);
    assert_eq!(
        claims.earliest_issue_date,
        ISSUED_AT.min(attestation::sim::SIM_CERT_NOT_BEFORE)
    );
    assert_eq!(claims.earliest_expiration_date, ISSUED_AT + VALID_FOR);
}

#[test]
fn sim_quote_fails_under_intels_root() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    verify_err(&QuoteVerifier::new_prod(), &quote, &collateral, NOW);
    let intel_root = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../measurements/roots/intel_sgx_root_ca.der"
    ))
    .unwrap();
    verify_err(&QuoteVerifier::new(intel_root), &quote, &collateral, NOW);
    // And a different simulated platform's root does not work either.
    let other = SimPlatform::from_seed([0xee; 32]).unwrap();
    verify_err(&verifier(&other), &quote, &collateral, NOW);
}

#[test]
fn sim_collateral_outside_its_window_fails() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let v = verifier(&p);
    // The CRLs expire at nextUpdate itself (webpki: now >= nextUpdate), the JSON one second
    // later (dcap-qvl: now > nextUpdate); the CRLs are checked first.
    for now in [
        ISSUED_AT + VALID_FOR,
        ISSUED_AT + VALID_FOR + 1,
        ISSUED_AT + 10 * VALID_FOR,
    ] {
        let expired = verify_err(&v, &quote, &collateral, now);
        assert!(expired.contains("Expired"), "{expired}");
    }
    let early = verify_err(&v, &quote, &collateral, ISSUED_AT - 1);
    assert!(early.contains("future"), "{early}");
    // Certificates end at 2049-12-31: fresh collateral does not help after that.
    let late = attestation::sim::SIM_CERT_NOT_AFTER + 10;
    let c = p.collateral(late - 5, 100).unwrap();
    verify_err(&v, &quote, &c, late);
}

#[test]
fn debug_td_is_rejected_by_default() {
    let p = platform();
    let mut regs = registers();
    regs.td_attributes = (u64::from_le_bytes(regs.td_attributes) | TD_ATTR_DEBUG).to_le_bytes();
    let quote = p.quote(&regs, &report_data()).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let err = verify_err(&verifier(&p), &quote, &collateral, NOW);
    assert!(err.contains("Debug mode is enabled"), "{err}");
    // Only the attribute check fails: a verifier allowing debug accepts it.
    verifier(&p)
        .allow_debug(true)
        .verify(&quote, &collateral, NOW)
        .unwrap();
}

#[test]
fn byte_flips_fail() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let v = verifier(&p);
    let signed = 48 + 584;
    let sig_data = signed + 4;
    let qe_cert_data = sig_data + 64 + 64 + 6;
    let auth_data = qe_cert_data + 384 + 64 + 2;
    let pck_chain = auth_data + 32 + 6;
    let cases: &[(usize, &str)] = &[
        (20, "Unknown QE vendor ID"),
        (48 + 1, "ISV enclave report signature is invalid"), // TEE_TCB_SVN
        (48 + 136, "ISV enclave report signature is invalid"), // MRTD
        (48 + 136 + 7 * 48, "ISV enclave report signature is invalid"), // RTMR3
        (
            V4_REPORT_DATA_OFFSET + 63,
            "ISV enclave report signature is invalid",
        ),
        (sig_data + 10, "ISV enclave report signature is invalid"), // quote signature
        (sig_data + 64 + 5, "QE report hash mismatch"),             // attestation key
        (qe_cert_data + 300, "Signature is invalid for qe_report"), // QE report
        (
            qe_cert_data + 384 + 10,
            "Signature is invalid for qe_report",
        ), // QE report sig
        (auth_data + 3, "QE report hash mismatch"),                 // QE auth data
        (pck_chain + 200, "certificate"),                           // PCK leaf (PEM)
    ];
    for (offset, reason) in cases {
        let mut bad = quote.clone();
        bad[*offset] ^= 0x01;
        let err = verify_err(&v, &bad, &collateral, NOW);
        assert!(err.contains(reason), "offset {offset}: {err}");
    }
}

#[test]
fn collateral_tampering_fails() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let good = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let v = verifier(&p);

    let mut c = good.clone();
    c.tcb_info = c.tcb_info.replace(
        "\"tcbEvaluationDataNumber\":17",
        "\"tcbEvaluationDataNumber\":18",
    );
    assert_ne!(c.tcb_info, good.tcb_info);
    verify_err(&v, &quote, &c, NOW);

    let mut c = good.clone();
    c.qe_identity_signature[5] ^= 1;
    verify_err(&v, &quote, &c, NOW);

    let mut c = good.clone();
    let last = c.root_ca_crl.len() - 1;
    c.root_ca_crl[last] ^= 1;
    verify_err(&v, &quote, &c, NOW);

    let mut c = good.clone();
    let last = c.pck_crl.len() - 1;
    c.pck_crl[last] ^= 1;
    verify_err(&v, &quote, &c, NOW);
}

#[test]
fn from_seed_is_deterministic() {
    let a = platform();
    let b = platform();
    assert_eq!(a.root_ca_der(), b.root_ca_der());
    assert_eq!(a.pck_chain_pem(), b.pck_chain_pem());
    assert_eq!(
        a.quote(&registers(), &report_data()).unwrap(),
        b.quote(&registers(), &report_data()).unwrap()
    );
    assert_eq!(
        serde_json::to_string(&a.collateral(ISSUED_AT, VALID_FOR).unwrap()).unwrap(),
        serde_json::to_string(&b.collateral(ISSUED_AT, VALID_FOR).unwrap()).unwrap()
    );
    let c = SimPlatform::from_seed([0xee; 32]).unwrap();
    assert_ne!(a.root_ca_der(), c.root_ca_der());
    assert_ne!(a.attestation_public_key(), c.attestation_public_key());
}

#[test]
fn exported_platform_produces_the_same_evidence() {
    let a = platform();
    let json = a.export().to_json().unwrap();
    let b = SimPlatform::from_export(&SimPlatformSeed::from_json(&json).unwrap()).unwrap();
    assert_eq!(
        a.quote(&registers(), &report_data()).unwrap(),
        b.quote(&registers(), &report_data()).unwrap()
    );
    let generated = SimPlatform::generate().unwrap();
    assert_ne!(generated.root_ca_der(), a.root_ca_der());
    let quote = generated.quote(&registers(), &report_data()).unwrap();
    let collateral = generated.collateral(ISSUED_AT, VALID_FOR).unwrap();
    verifier(&generated)
        .verify(&quote, &collateral, NOW)
        .unwrap();
}

#[test]
fn out_of_date_collateral_reports_status_and_advisories() {
    let p = platform();
    let quote = p.quote(&registers(), &report_data()).unwrap();
    let advisories = ["INTEL-SA-00960", "INTEL-SA-00982"];
    let collateral = p
        .collateral_with_status(ISSUED_AT, VALID_FOR, TcbStatus::OutOfDate, &advisories)
        .unwrap();
    let report = verifier(&p).verify(&quote, &collateral, NOW).unwrap();
    assert_eq!(report.status, "OutOfDate");
    assert_eq!(report.advisory_ids, advisories);
    // The strict policy rejects it.
    assert!(verifier(&p)
        .verify_with_policy(&quote, collateral, NOW, &QuotePolicy::strict(NOW))
        .is_err());
}

#[test]
fn sim_tdx_quotes_live_registers() {
    let p = Arc::new(platform());
    let initial = registers();
    let tdx = SimTdx::new(Arc::clone(&p), initial);
    let digest = [0x42u8; 48];
    tdx.extend_rtmr(3, &digest, b"cocoon config v1").unwrap();

    let rd = report_data();
    let quote = tdx.quote(&rd).unwrap();
    let parsed = ParsedQuote::parse(&quote).unwrap();
    let expected = extend_sha384(&initial.rtmr[3], &digest);
    assert_eq!(parsed.report.registers.rtmr[3], expected);
    assert_eq!(parsed.report.registers.rtmr[..3], initial.rtmr[..3]);
    assert_eq!(parsed.report.registers.mrtd, initial.mrtd);
    assert_eq!(tdx.registers().unwrap().rtmr[3], expected);

    let collateral = p.collateral(ISSUED_AT, VALID_FOR).unwrap();
    let report = verifier(&p).verify(&quote, &collateral, NOW).unwrap();
    assert_eq!(report.report.as_td10().unwrap().rt_mr3, expected);
}
