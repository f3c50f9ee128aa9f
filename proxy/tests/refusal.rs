//! Workers whose attestation fails are refused with the named reason: counted in /jsonstats
//! and /metrics, and logged (rate-limited).

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ratls::Role;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_unknown_image_and_wrong_role_workers_are_refused_with_the_reason() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    let p = start_proxy(|_| {}).await;
    let cases = [
        ("debug", debug_worker_regs(), Role::Worker, "debug_td"),
        (
            "unknown",
            unknown_worker_regs(),
            Role::Worker,
            "image_not_allowed",
        ),
        ("as-proxy", worker_regs(), Role::Proxy, "role_not_allowed"),
    ];
    for (name, regs, role, _) in &cases {
        let mut spec = WorkerSpec::new(name);
        spec.regs = *regs;
        spec.role = *role;
        let w = FakeWorker::connect(p.running.worker_addr, spec).await;
        wait_until("refusal", Duration::from_secs(20), || {
            w.obs.refused.load(Ordering::SeqCst)
        })
        .await;
    }
    // A second debug worker: counted, but its log line is suppressed (rate limit).
    let mut spec = WorkerSpec::new("debug-2");
    spec.regs = debug_worker_regs();
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    wait_until("refusal", Duration::from_secs(20), || {
        w.obs.refused.load(Ordering::SeqCst)
    })
    .await;
    wait_until("counted", Duration::from_secs(5), || {
        p.stats()["worker_rejections"]["debug_td"] == 2
    })
    .await;

    assert_eq!(p.running.state().registry.len(), 0);
    let s = p.stats();
    for (_, _, _, code) in &cases[1..] {
        assert_eq!(s["worker_rejections"][code], 1, "{code}");
    }
    let (_, metrics) = p.admin("/metrics").await;
    assert!(metrics.contains("cocoon_proxy_worker_rejections_total{reason=\"debug_td\"} 2"));
    assert!(
        metrics.contains("cocoon_proxy_worker_rejections_total{reason=\"image_not_allowed\"} 1")
    );
    assert!(metrics.contains("cocoon_proxy_workers_connected 0"));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("worker refused"))
        .collect();
    println!("{}", refused.join("\n"));
    assert_eq!(refused.len(), 3, "one line per reason: {refused:#?}");
    assert!(refused
        .iter()
        .any(|l| l.contains("reason=\"debug_td\"") && l.contains("debug bit set")));
    assert!(refused
        .iter()
        .any(|l| l.contains("reason=\"image_not_allowed\"") && l.contains("not among")));
    assert!(refused
        .iter()
        .any(|l| l.contains("reason=\"role_not_allowed\"")));

    // A good worker still gets in.
    let _good = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("good")).await;
    p.wait_workers(1).await;
}
