//! Seeds for `fuzz/seeds/ratls_verify/`, built from real simulated evidence, and the outcome
//! each one has. `COCOON_WRITE_FUZZ_SEEDS=1 cargo test --lib` (in `fuzz/`) rewrites them;
//! without it the committed seeds are checked to be exactly what would be written.

use std::path::PathBuf;

use measurements::Collateral;
use ratls::{Claims, RatlsError, Role};

use super::*;

fn claims() -> Vec<u8> {
    Claims::new(Role::Worker, 1)
        .with_extra("test", "yes")
        .to_canonical_json()
        .unwrap()
}

fn collateral_json(h: &Harness) -> Vec<u8> {
    let raw = h.platform.collateral(NOW - 3600, 30 * 86400).unwrap();
    Collateral::new(raw).unwrap().to_json()
}

/// What a seed should do when verified.
enum Expect {
    Pass,
    Code(&'static str),
    NoCollateral,
}

fn seeds(h: &Harness) -> Vec<(&'static str, Input, Expect)> {
    let sim_quote = h.platform.quote(&h.registers, &[0u8; 64]).unwrap();
    let with = |mode, quote: &[u8], collateral: bool| Input {
        mode,
        claims: claims(),
        collateral: collateral.then(|| collateral_json(h)),
        quote: quote.to_vec(),
    };
    vec![
        (
            "requote_v4.bin",
            with(QuoteMode::Requote, &[], true),
            Expect::Pass,
        ),
        (
            "requote_v5.bin",
            with(QuoteMode::RequoteV5, &[], true),
            Expect::Pass,
        ),
        (
            "bind_sim_quote.bin",
            with(QuoteMode::Bind, &sim_quote, true),
            Expect::Code("quote_signature"),
        ),
        (
            "verbatim_sim_quote.bin",
            with(QuoteMode::Verbatim, &sim_quote, true),
            Expect::Code("report_data_mismatch"),
        ),
        (
            "requote_no_collateral.bin",
            with(QuoteMode::Requote, &[], false),
            Expect::NoCollateral,
        ),
    ]
}

#[test]
fn seeds_are_current_and_verify_as_expected() {
    let h = Harness::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/ratls_verify");
    let write = std::env::var("COCOON_WRITE_FUZZ_SEEDS").as_deref() == Ok("1");
    for (name, input, expect) in seeds(&h) {
        let bytes = input.encode().expect("parts fit");
        assert_eq!(Input::parse(&bytes), input, "{name}: format round trip");
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (COCOON_WRITE_FUZZ_SEEDS=1)", path.display()));
            assert!(
                committed == bytes,
                "{name} differs from what the generator writes (COCOON_WRITE_FUZZ_SEEDS=1)"
            );
        }
        let (_, result) = h.run(&input).expect("issued");
        match (expect, result) {
            (Expect::Pass, Ok(peer)) => {
                assert_eq!(peer.evidence.claims_bytes, input.claims, "{name}");
                assert_eq!(peer.image_hash(), h.registers.image_hash(), "{name}");
            }
            (Expect::Code(code), Err(e)) => {
                assert_eq!(e.rejection().map(|r| r.code()), Some(code), "{name}: {e}")
            }
            (Expect::NoCollateral, Err(RatlsError::CollateralUnavailable(_))) => {}
            (_, other) => panic!("{name}: unexpected outcome {other:?}"),
        }
    }
}

#[test]
fn short_and_oversized_lengths_are_clamped() {
    assert_eq!(
        Input::parse(&[]),
        Input {
            mode: QuoteMode::Verbatim,
            claims: vec![],
            collateral: None,
            quote: vec![],
        }
    );
    let input = Input::parse(&[0b110, 2, 0, b'{', b'}', 0xff, 0xff, b'x']);
    assert_eq!(input.mode, QuoteMode::Requote);
    assert_eq!(input.claims, b"{}");
    assert_eq!(input.collateral.as_deref(), Some(&b"x"[..]));
    assert!(input.quote.is_empty());
}
