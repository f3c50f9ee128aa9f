//! What the proxy pins of a worker besides its image: the runtime configuration (RTMR3) and the
//! models it registers; and that a registered worker whose evidence stops passing on the
//! proxy's own clock is disconnected.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ratls::FixedClock;

fn model_pin(digest: [u8; 32]) -> measurements::Policy {
    let mut p = worker_policy();
    p.allowed_models = Some(BTreeMap::from([(MODEL.to_string(), [digest].into())]));
    p
}

/// Regression (trust hole): the proxy never checked the model hash a worker registered, so a
/// genuine worker image serving another model (or an upstream server's) was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pinned_models_register() {
    // FakeWorker registers MODEL with digest ab…ab.
    let p = start_proxy_with(model_pin([0xcd; 32]), Arc::new(ratls::SystemClock), |_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("other-model")).await;
    wait_until("refusal", Duration::from_secs(20), || {
        p.stats()["worker_rejections"]["model_not_allowed"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(p.running.state().registry.len(), 0);

    let ok = start_proxy_with(model_pin([0xab; 32]), Arc::new(ratls::SystemClock), |_| {}).await;
    let _w = FakeWorker::connect(ok.running.worker_addr, WorkerSpec::new("pinned-model")).await;
    ok.wait_workers(1).await;
}

/// A worker whose RTMR3 (runtime configuration) is not pinned is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_configurations_are_refused() {
    let mut policy = worker_policy();
    policy.allowed_rtmr3 = Some([[0x99; 48]].into());
    let p = start_proxy_with(policy, Arc::new(ratls::SystemClock), |_| {}).await;
    let w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("reconfigured")).await;
    wait_until("refusal", Duration::from_secs(20), || {
        w.obs.refused.load(Ordering::SeqCst)
    })
    .await;
    // The worker can see the alert before the proxy has counted the refusal.
    wait_until("counted", Duration::from_secs(5), || {
        p.stats()["worker_rejections"]["rtmr3_mismatch"].as_u64() >= Some(1)
    })
    .await;
    let s = p.stats();
    assert!(
        s["worker_rejections"]["rtmr3_mismatch"].as_u64() >= Some(1),
        "{s}"
    );

    let mut policy = worker_policy();
    policy.allowed_rtmr3 = Some([worker_regs().rtmr[3]].into());
    let ok = start_proxy_with(policy, Arc::new(ratls::SystemClock), |_| {}).await;
    let _w = FakeWorker::connect(ok.running.worker_addr, WorkerSpec::new("pinned-config")).await;
    ok.wait_workers(1).await;
}

/// Regression: the proxy verified a worker only at the handshake, so expiry depended on the
/// worker rotating its own certificate on a clock its host controls. Now the proxy re-checks
/// on its own clock and closes the link once the certificate has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_workers_are_disconnected_on_the_proxys_clock() {
    let clock = Arc::new(FixedClock::new(now()));
    let p = start_proxy_with(worker_policy(), clock.clone(), |_| {}).await;
    let _w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("expiring")).await;
    p.wait_workers(1).await;
    // The fake worker's certificate is valid for 6 hours.
    clock.advance(7 * 3600);
    p.wait_workers(0).await;
    let s = p.stats();
    assert!(
        s["worker_rejections"]["certificate"].as_u64() >= Some(1),
        "the closed link is counted by its reason: {s}"
    );
}
