//! [`ratls::Identity`]: issue, renewal in the last quarter of the lifetime, subscribers seeing
//! the new certificate, retry after a failed renewal, and stop on shutdown. The renewal loop
//! runs on paused tokio time; the identity's clock reads that time.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use attestation::config::OpenedTee;
use attestation::{TeeDevice, TeeError};
use common::*;
use measurements::{Sha384, TdRegisters};
use ratls::{Claims, Clock, Identity, PeerVerifier, Role};
use tokio::sync::watch;
use tokio::time::Instant;

const LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// A quarter of [`LIFETIME`]: the certificate is due this long before it expires.
const MARGIN: Duration = Duration::from_secs(3600);

/// Unix seconds that advance with tokio's (paused) clock, starting at [`NOW`].
#[derive(Debug)]
struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now(&self) -> u64 {
        NOW + self.0.elapsed().as_secs()
    }
}

/// The simulated TD, failing the next `fail` quotes on request.
#[derive(Debug)]
struct Flaky {
    inner: attestation::sim::SimTdx,
    fail: AtomicU32,
    quotes: AtomicU32,
}

impl TeeDevice for Flaky {
    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, TeeError> {
        self.quotes.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail.load(Ordering::SeqCst);
        if fail > 0 {
            self.fail.store(fail - 1, Ordering::SeqCst);
            return Err(TeeError::Quote("injected failure".into()));
        }
        self.inner.quote(report_data)
    }

    fn extend_rtmr(&self, index: u8, digest: &Sha384, event: &[u8]) -> Result<(), TeeError> {
        self.inner.extend_rtmr(index, digest, event)
    }

    fn registers(&self) -> Result<TdRegisters, TeeError> {
        self.inner.registers()
    }
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: tee(registers()),
        fail: AtomicU32::new(0),
        quotes: AtomicU32::new(0),
    })
}

fn identity(device: Arc<Flaky>, clock: Arc<dyn Clock>) -> Arc<Identity> {
    let tee = OpenedTee {
        device,
        sim_platform: Some(fixture().platform.clone()),
        collateral_source: None,
        gpu: None,
    };
    let claims = Claims::new(Role::Proxy, 1).with_extra("name", "id-test");
    Arc::new(Identity::issue(tee, claims, LIFETIME, clock).expect("issue"))
}

#[test]
fn certificate_is_attested_and_renewed_only_when_due() {
    let clock = clock(NOW);
    let id = identity(flaky(), clock.clone());
    let first = id.resolver().current();
    let peer = PeerVerifier::new(policy(), clock.clone())
        .with_roles([Role::Proxy])
        .verify(first.cert[0].as_ref())
        .expect("verifies");
    assert_eq!(peer.image_hash(), registers().image_hash());
    assert_eq!(
        peer.claims().extra.get("name").map(String::as_str),
        Some("id-test")
    );
    assert_eq!(id.current().generation, 0);
    assert_eq!(id.current().not_after, NOW + LIFETIME.as_secs());

    // Not due yet; due in the last quarter of the lifetime.
    assert!(!id.renew_if_due(NOW + 3600).unwrap());
    let due = NOW + LIFETIME.as_secs() - MARGIN.as_secs();
    assert!(!id.renew_if_due(due - 1).unwrap());
    assert!(id.renew_if_due(due).unwrap());
    let second = id.resolver().current();
    assert_ne!(first.cert[0], second.cert[0]);
    assert_eq!(id.current().generation, 1);
    assert_eq!(id.current().not_after, due + LIFETIME.as_secs());
}

#[tokio::test(start_paused = true)]
async fn renewal_loop_renews_before_expiry_and_subscribers_see_it() {
    let start = Instant::now();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock(start));
    let id = identity(flaky(), clock.clone());
    let first = id.current();
    let mut rx = id.subscribe();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(id.clone().run_renewal(stopped));

    tokio::time::timeout(LIFETIME, rx.changed())
        .await
        .expect("renewed before expiry")
        .expect("identity alive");
    let renewed_after = start.elapsed();
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen.generation, 1);
    assert_ne!(seen.spki_der, first.spki_der, "a fresh key");
    assert_eq!(seen, id.current());
    // Due a quarter of the lifetime before expiry, and checked at least every minute.
    assert!(renewed_after >= LIFETIME - MARGIN, "{renewed_after:?}");
    assert!(
        renewed_after <= LIFETIME - MARGIN + Duration::from_secs(61),
        "{renewed_after:?}"
    );
    // The resolver serves the new certificate, and it verifies at the time it was renewed.
    let served = id.resolver().current();
    let peer = PeerVerifier::new(policy(), clock.clone())
        .verify(served.cert[0].as_ref())
        .expect("renewed certificate verifies");
    assert_eq!(peer.evidence.spki_der, seen.spki_der);

    // And again a lifetime minus the margin later.
    tokio::time::timeout(LIFETIME, rx.changed())
        .await
        .expect("renewed again")
        .expect("identity alive");
    assert_eq!(rx.borrow().generation, 2);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_is_retried() {
    let start = Instant::now();
    let device = flaky();
    let id = identity(device.clone(), Arc::new(TokioClock(start)));
    assert_eq!(id.retry(), ratls::identity::DEFAULT_RETRY);
    device.fail.store(2, Ordering::SeqCst);
    let mut rx = id.subscribe();
    let (_stop, stopped) = watch::channel(false);
    let task = tokio::spawn(id.clone().run_renewal(stopped));

    tokio::time::timeout(LIFETIME, rx.changed())
        .await
        .expect("renewed despite two failures")
        .expect("identity alive");
    let renewed_after = start.elapsed();
    // One initial quote, two failed attempts, one success.
    assert_eq!(device.quotes.load(Ordering::SeqCst), 4);
    assert_eq!(rx.borrow().generation, 1);
    let due = LIFETIME - MARGIN;
    assert!(renewed_after >= due + 2 * id.retry(), "{renewed_after:?}");
    assert!(
        renewed_after <= due + 2 * id.retry() + Duration::from_secs(3 * 61),
        "{renewed_after:?}"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn renewal_loop_stops_on_shutdown_without_renewing() {
    let device = flaky();
    let id = identity(device.clone(), Arc::new(TokioClock(Instant::now())));

    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(id.clone().run_renewal(stopped));
    tokio::time::sleep(Duration::from_secs(600)).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops on the signal")
        .unwrap();

    // A dropped sender is a shutdown too.
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(id.clone().run_renewal(stopped));
    drop(stop);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("stops when the sender is gone")
        .unwrap();

    assert_eq!(
        device.quotes.load(Ordering::SeqCst),
        1,
        "only the first issue"
    );
    assert_eq!(id.current().generation, 0);
}
