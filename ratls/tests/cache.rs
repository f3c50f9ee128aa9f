//! The attestation cache: hits, expiry, collateral changes, policy changes, eviction.

mod common;

use std::sync::Arc;
use std::time::Duration;

use attestation::TeeDevice;
use common::*;
use measurements::Policy;
use ratls::cert::{assemble, CertKey};
use ratls::verify::StaticCollateral;
use ratls::{verify_peer, AttestationCache, Claims, PeerVerifier, RatlsError, Role};

fn rejection_code(err: &RatlsError) -> &'static str {
    err.rejection()
        .map(|r| r.code())
        .unwrap_or("not a rejection")
}

#[test]
fn second_verification_is_a_hit() {
    let c = cert(registers(), Role::Worker);
    let v = verifier(policy(), clock(NOW));
    let first = v.verify(&c.cert_der).unwrap();
    assert!(!first.cache_hit);
    let second = v.verify(&c.cert_der).unwrap();
    assert!(second.cache_hit);
    assert_eq!(first.attestation, second.attestation);
    let stats = v.cache().unwrap().stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.inserts, stats.len),
        (1, 1, 1, 1)
    );
}

#[test]
fn entries_expire_after_ttl() {
    let c = cert(registers(), Role::Worker);
    let clock = clock(NOW);
    let cache = Arc::new(AttestationCache::new(60, 16));
    let v = PeerVerifier::new(policy(), clock.clone()).with_cache(cache.clone());
    v.verify(&c.cert_der).unwrap();
    clock.advance(30);
    assert!(v.verify(&c.cert_der).unwrap().cache_hit);
    clock.advance(31);
    let again = v.verify(&c.cert_der).unwrap();
    assert!(!again.cache_hit, "expired entry must not be used");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.expired, stats.inserts), (1, 1, 2));
}

#[test]
fn entries_expire_with_the_evidence() {
    // Collateral valid until NOW + 100; the cache TTL is long. After NOW + 100 the cached
    // evidence is stale: not used, and full verification names the expiry.
    let short = collateral_window(&fixture().platform, NOW - 100, 200);
    let c = cert_with(registers(), Role::Worker, Some(&short));
    let clock = clock(NOW);
    let cache = Arc::new(AttestationCache::new(86_400, 16));
    let v = PeerVerifier::new(policy(), clock.clone()).with_cache(cache.clone());
    v.verify(&c.cert_der).unwrap();
    clock.set(NOW + 101);
    let err = v.verify(&c.cert_der).unwrap_err();
    assert_eq!(rejection_code(&err), "collateral_expired", "{err}");
    assert!(err.to_string().contains("collateral expired"), "{err}");
    assert_eq!(cache.stats().hits, 0);
    assert_eq!(cache.stats().expired, 1);
}

#[test]
fn policy_change_applies_on_a_hit() {
    let c = cert(registers(), Role::Worker);
    let v = verifier(policy(), clock(NOW));
    v.verify(&c.cert_der).unwrap();
    v.set_policy(other_image_policy());
    let err = v.verify(&c.cert_der).unwrap_err();
    assert_eq!(rejection_code(&err), "image_not_allowed", "{err}");
    v.set_policy(Policy::production().with_images([registers().image_hash()]));
    let err = v.verify(&c.cert_der).unwrap_err();
    assert_eq!(rejection_code(&err), "untrusted_root", "{err}");
    let mut strict_age = policy();
    strict_age.max_collateral_age_secs = Some(60);
    v.set_policy(strict_age);
    let err = v.verify(&c.cert_der).unwrap_err();
    assert_eq!(rejection_code(&err), "collateral_too_old", "{err}");
    let stats = v.cache().unwrap().stats();
    assert_eq!(
        (stats.hits, stats.inserts),
        (3, 1),
        "rejections came from hits"
    );
    v.set_policy(policy());
    assert!(v.verify(&c.cert_der).unwrap().cache_hit);
}

#[test]
fn other_collateral_is_verified_again() {
    // Two certificates with one key and one quote, embedding different collateral.
    let claims = Claims::new(Role::Worker, 1).to_canonical_json().unwrap();
    let key = CertKey::generate().unwrap();
    let quote = tee(registers()).quote(&key.report_data(&claims)).unwrap();
    let other = collateral_window(&fixture().platform, NOW - 60, 86_400);
    let build = |json: Vec<u8>| {
        assemble(
            &key,
            &quote,
            &claims,
            Some(&json),
            NOW,
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    let a = build(fixture().collateral.to_json());
    let b = build(other.to_json());
    let v = verifier(policy(), clock(NOW));
    assert!(!v.verify(&a.cert_der).unwrap().cache_hit);
    assert!(!v.verify(&b.cert_der).unwrap().cache_hit);
    assert!(v.verify(&b.cert_der).unwrap().cache_hit);
    let stats = v.cache().unwrap().stats();
    assert_eq!(
        (stats.collateral_changed, stats.inserts, stats.len),
        (1, 2, 1)
    );
}

#[test]
fn collateral_from_source_when_not_embedded() {
    let c = cert_with(registers(), Role::Worker, None);
    let v = verifier(policy(), clock(NOW));
    let err = v.verify(&c.cert_der).unwrap_err();
    assert!(matches!(err, RatlsError::CollateralUnavailable(_)), "{err}");
    let with_source = PeerVerifier::new(policy(), clock(NOW))
        .with_collateral_source(Arc::new(StaticCollateral(fixture().collateral.clone())));
    with_source.verify(&c.cert_der).unwrap();
    assert!(with_source.verify(&c.cert_der).unwrap().cache_hit);

    // The free function with no cache.
    let source = StaticCollateral(fixture().collateral.clone());
    let peer = verify_peer(&c.cert_der, NOW, &policy(), Some(&source), None).unwrap();
    assert!(!peer.cache_hit);
    assert_eq!(peer.claims().role, Role::Worker);
}

#[test]
fn capacity_bounds_the_cache() {
    let cache = Arc::new(AttestationCache::new(600, 2));
    let v = PeerVerifier::new(policy(), clock(NOW)).with_cache(cache.clone());
    let certs: Vec<_> = (0..3).map(|_| cert(registers(), Role::Worker)).collect();
    for c in &certs {
        v.verify(&c.cert_der).unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.len, stats.evictions), (2, 1));
    // The oldest was evicted; the newest two are hits.
    assert!(!v.verify(&certs[0].cert_der).unwrap().cache_hit);
    assert!(v.verify(&certs[2].cert_der).unwrap().cache_hit);
}

#[test]
fn rejected_roles_and_uncached_verifier() {
    let c = cert(registers(), Role::Client);
    let v = PeerVerifier::new(policy(), clock(NOW))
        .without_cache()
        .with_roles([Role::Worker, Role::Proxy]);
    let err = v.verify(&c.cert_der).unwrap_err();
    assert!(err.to_string().contains("role client not allowed"), "{err}");
    let ok = cert(registers(), Role::Worker);
    assert!(!v.verify(&ok.cert_der).unwrap().cache_hit);
    assert!(!v.verify(&ok.cert_der).unwrap().cache_hit);
}

#[test]
fn concurrent_verification_shares_the_cache() {
    let c = Arc::new(cert(registers(), Role::Worker));
    let v = verifier(policy(), clock(NOW));
    v.verify(&c.cert_der).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (v, c) = (v.clone(), c.clone());
            std::thread::spawn(move || v.verify(&c.cert_der).map(|p| p.cache_hit))
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().unwrap());
    }
    assert_eq!(v.cache().unwrap().stats().hits, 4);
}

#[test]
fn repeated_certificate_still_checks_its_validity_window_and_binding() {
    let c = cert(registers(), Role::Worker);
    let v = verifier(policy(), clock(NOW));
    v.verify_at(&c.cert_der, NOW).unwrap();
    assert!(v.verify_at(&c.cert_der, NOW + 1).unwrap().cache_hit);
    // Same bytes, later than not_after: rejected although the parse is remembered.
    let err = v.verify_at(&c.cert_der, NOW + 7 * 3600).unwrap_err();
    assert!(matches!(err, RatlsError::Cert(_)), "{err}");
    // Before not_before too.
    assert!(matches!(
        v.verify_at(&c.cert_der, NOW - 3600).unwrap_err(),
        RatlsError::Cert(_)
    ));
    // A lifted quote is rejected on every attempt, not only the first.
    let lifted = lifted_quote_cert(Role::Worker);
    for _ in 0..2 {
        let err = v.verify_at(&lifted.cert_der, NOW).unwrap_err();
        assert_eq!(rejection_code(&err), "report_data_mismatch");
    }
}

/// Regression (freshness): a peer's embedded collateral used to win over the verifier's own
/// source, so a platform could keep presenting old "UpToDate" collateral until it expired.
/// Now the later-issued one is used, and the policy's maximum age rejects what is too old.
#[test]
fn fresher_collateral_wins_over_the_embedded_one() {
    let old = collateral_window(&fixture().platform, NOW - 20 * 86400, 30 * 86400);
    let fresh = collateral_window(&fixture().platform, NOW - 3600, 30 * 86400);
    let c = cert_with(registers(), Role::Worker, Some(&old));
    let mut strict = policy();
    strict.max_collateral_age_secs = Some(7 * 86400);

    // Only the embedded (20 days old) collateral: too old for a 7-day policy.
    let embedded_only = PeerVerifier::new(strict.clone(), clock(NOW));
    let err = embedded_only.verify(&c.cert_der).unwrap_err();
    assert_eq!(rejection_code(&err), "collateral_too_old", "{err}");

    // The verifier's own source has fresher collateral: that one is used.
    let with_source = PeerVerifier::new(strict.clone(), clock(NOW))
        .with_collateral_source(Arc::new(StaticCollateral(fresh.clone())));
    let peer = with_source.verify(&c.cert_der).unwrap();
    assert_eq!(peer.attestation.collateral_issued_at, fresh.issued_at());

    // An older source does not replace fresher embedded collateral.
    let c2 = cert_with(registers(), Role::Worker, Some(&fresh));
    let older_source = PeerVerifier::new(strict, clock(NOW))
        .with_collateral_source(Arc::new(StaticCollateral(old)));
    let peer = older_source.verify(&c2.cert_der).unwrap();
    assert_eq!(peer.attestation.collateral_issued_at, fresh.issued_at());
}
