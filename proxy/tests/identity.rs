//! The proxy's RA-TLS certificate: issued from the (simulated) TEE with the proxy role, and
//! renewed in place before it expires.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ratls::{FixedClock, Identity, PeerVerifier, Role, SystemClock};

#[test]
fn certificate_is_attested_and_renewed_before_expiry() {
    let tee = sim_tee(proxy_regs());
    let lifetime = Duration::from_secs(4 * 3600);
    let t0 = now();
    let id = Identity::issue(
        tee,
        proxy::claims("proxy-x"),
        lifetime,
        Arc::new(FixedClock::new(t0)),
    )
    .unwrap();
    let resolver = id.resolver();
    let first = resolver.current();
    let verifier =
        PeerVerifier::new(proxy_policy(), Arc::new(SystemClock)).with_roles([Role::Proxy]);
    let peer = verifier.verify(first.cert[0].as_ref()).expect("verifies");
    assert_eq!(peer.image_hash(), proxy_regs().image_hash());
    assert_eq!(
        peer.claims().extra.get("name").map(String::as_str),
        Some("proxy-x")
    );

    // Not due yet; due in the last quarter of the lifetime.
    assert!(!id.renew_if_due(t0 + 3600).unwrap());
    assert!(id.renew_if_due(t0 + 3 * 3600 + 60).unwrap());
    let second = resolver.current();
    assert_ne!(first.cert[0], second.cert[0]);
    assert!(resolver.not_after() >= t0 + 3 * 3600 + 60 + lifetime.as_secs());
}
