//! Simulated evidence through cocoon's own verifier and policy (`measurements::verify_quote`):
//! accepted only when the policy names the simulated root, and never for a debug TD by default.

use attestation::sim::{default_registers, SimPlatform};
use measurements::policy::TcbStatus;
use measurements::registers::TD_ATTR_DEBUG;
use measurements::verify::{verify_quote, Rejection};
use measurements::{Collateral, Policy, TdRegisters, TrustRoot};

const ISSUED_AT: u64 = 1_760_000_000;
const VALID_FOR: u64 = 7 * 24 * 3600;
const NOW: u64 = ISSUED_AT + 60;

fn platform() -> SimPlatform {
    SimPlatform::from_seed(*b"cocoon sim policy test seed 0001").unwrap()
}

fn regs() -> TdRegisters {
    let mut r = default_registers();
    r.mrtd = [0xa1; 48];
    r.rtmr[1] = [0xb2; 48];
    r
}

fn sim_policy(p: &SimPlatform) -> Policy {
    Policy::simulated(TrustRoot::new(
        "cocoon-simulated-root",
        p.root_ca_der().to_vec(),
    ))
}

fn collateral(p: &SimPlatform) -> Collateral {
    Collateral::new(p.collateral(ISSUED_AT, VALID_FOR).unwrap()).unwrap()
}

#[test]
fn accepted_under_a_policy_naming_the_simulated_root() {
    let p = platform();
    let quote = p.quote(&regs(), &[7; 64]).unwrap();
    let policy = sim_policy(&p)
        .with_images([regs().image_hash()])
        .with_report_data([7; 64]);
    let ev = verify_quote(&quote, &collateral(&p), NOW, &policy).unwrap();
    assert_eq!(ev.tcb_status, TcbStatus::UpToDate);
    assert_eq!(ev.report.registers, regs());
    assert_eq!(ev.root_name, "cocoon-simulated-root");
    assert!(ev.valid_until <= ISSUED_AT + VALID_FOR);
}

#[test]
fn production_policy_rejects_every_simulated_quote() {
    let p = platform();
    let c = collateral(&p);
    for attrs in [
        default_registers().td_attributes,
        [0x01, 0, 0, 0x10, 0, 0, 0, 0],
    ] {
        let mut r = regs();
        r.td_attributes = attrs;
        let quote = p.quote(&r, &[0; 64]).unwrap();
        let prod = Policy::production().allow_tcb_status(TcbStatus::OutOfDate);
        match verify_quote(&quote, &c, NOW, &prod) {
            Err(Rejection::UntrustedRoot { fingerprint }) => {
                assert_eq!(
                    fingerprint,
                    hex::encode(TrustRoot::new("s", p.root_ca_der().to_vec()).fingerprint())
                );
            }
            other => panic!("expected untrusted root, got {other:?}"),
        }
    }
    // Also when the caller supplies Intel's root by value and even with debug allowed.
    let mut lax = Policy::production();
    lax.allow_debug = true;
    let quote = p.quote(&regs(), &[0; 64]).unwrap();
    assert!(matches!(
        verify_quote(&quote, &c, NOW, &lax),
        Err(Rejection::UntrustedRoot { .. })
    ));
}

#[test]
fn debug_td_rejected_by_default_policy_and_allowed_by_dev_policy() {
    let p = platform();
    let mut r = regs();
    r.td_attributes = (u64::from_le_bytes(r.td_attributes) | TD_ATTR_DEBUG).to_le_bytes();
    let quote = p.quote(&r, &[0; 64]).unwrap();
    let c = collateral(&p);
    let err = verify_quote(&quote, &c, NOW, &sim_policy(&p)).unwrap_err();
    assert!(matches!(err, Rejection::DebugTd { .. }), "{err:?}");
    assert!(err.to_string().contains("debug bit set"));
    let mut dev = sim_policy(&p);
    dev.allow_debug = true;
    verify_quote(&quote, &c, NOW, &dev).unwrap();
    // The debug TD's image hash differs from the production TD's.
    assert_ne!(r.image_hash(), regs().image_hash());
}

#[test]
fn outofdate_simulated_platform_needs_opt_in() {
    let p = platform();
    let raw = p
        .collateral_with_status(
            ISSUED_AT,
            VALID_FOR,
            TcbStatus::OutOfDate,
            &["INTEL-SA-01234"],
        )
        .unwrap();
    let c = Collateral::new(raw).unwrap();
    let quote = p.quote(&regs(), &[0; 64]).unwrap();
    assert!(matches!(
        verify_quote(&quote, &c, NOW, &sim_policy(&p)),
        Err(Rejection::TcbStatusNotAllowed { .. })
    ));
    let ev = verify_quote(
        &quote,
        &c,
        NOW,
        &sim_policy(&p).allow_tcb_status(TcbStatus::OutOfDate),
    )
    .unwrap();
    assert_eq!(ev.advisory_ids, vec!["INTEL-SA-01234".to_string()]);
}

#[test]
fn expired_simulated_collateral() {
    let p = platform();
    let quote = p.quote(&regs(), &[0; 64]).unwrap();
    let err = verify_quote(
        &quote,
        &collateral(&p),
        ISSUED_AT + VALID_FOR + 1,
        &sim_policy(&p),
    )
    .unwrap_err();
    assert!(
        matches!(err, Rejection::CollateralExpired { .. }),
        "{err:?}"
    );
    // CRLs expire at their nextUpdate: the boundary gets the named reason too.
    let end = ISSUED_AT + VALID_FOR;
    let err = verify_quote(&quote, &collateral(&p), end, &sim_policy(&p)).unwrap_err();
    assert!(
        matches!(err, Rejection::CollateralExpired { item, .. } if item.ends_with("crl")),
        "{err:?}"
    );
    verify_quote(&quote, &collateral(&p), end - 1, &sim_policy(&p)).unwrap();
}

#[test]
fn quote_format_v5_verifies_like_v4() {
    let p = platform();
    let q4 = p.quote(&regs(), &[3; 64]).unwrap();
    let q5 = p.quote_v5(&regs(), &[3; 64]).unwrap();
    assert_eq!(q5.len(), q4.len() + 6);
    let policy = sim_policy(&p).with_images([regs().image_hash()]);
    let ev4 = verify_quote(&q4, &collateral(&p), NOW, &policy).unwrap();
    let ev5 = verify_quote(&q5, &collateral(&p), NOW, &policy).unwrap();
    assert_eq!((ev4.quote_version, ev5.quote_version), (4, 5));
    assert_eq!(ev4.report, ev5.report);
    // The body descriptor is signed: changing it breaks the quote.
    let mut bad = q5.clone();
    bad[48] = 3;
    assert!(verify_quote(&bad, &collateral(&p), NOW, &policy).is_err());
    let mut flipped = q5;
    flipped[100] ^= 1;
    assert_eq!(
        verify_quote(&flipped, &collateral(&p), NOW, &policy).unwrap_err(),
        Rejection::QuoteSignature
    );
}
