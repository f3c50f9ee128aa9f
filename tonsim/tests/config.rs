//! The committed mainnet config is the reviewed one, parses, and keeps signature checks on.

use tonsim::config::{mainnet_config, ton_executor_params, TON_MAINNET_CONFIG_BOC};

#[test]
fn fixture_is_the_reviewed_file() {
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(TON_MAINNET_CONFIG_BOC)),
        "5e632204a785a02c20a5a2f0413b13f87bdd942a8a1e0628d13c99b346fb797c"
    );
}

#[test]
fn parses_with_ton_mainnet_prices() {
    let c = mainnet_config(1_750_000_000).unwrap();
    assert_eq!(c.global_id, -239, "TON mainnet global id");
    assert_eq!(c.global.version, 12);
    // basechain gas and forwarding prices (params 21, 25)
    assert_eq!(c.gas_prices.gas_price, 26_214_400);
    assert_eq!(c.gas_prices.flat_gas_price, 40_000);
    assert_eq!(c.fwd_prices.lump_price, 400_000);
    assert!(c
        .workchains
        .get(&0)
        .is_some_and(|w| w.accept_msgs && w.active));
}

#[test]
fn signature_checks_stay_on() {
    let p = ton_executor_params(1, 1, [0; 32]);
    assert!(!p.vm_modifiers.chksig_always_succeed);
    assert_eq!(p.vm_modifiers.signature_with_id, None);
    assert!(!p.vm_modifiers.enable_signature_domains);
}
