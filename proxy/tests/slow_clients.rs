//! The `cocoon-proxy` process under slow, unfunded clients: 40 connections that declare a
//! 4 000 000-byte body and upload it (all but the last byte, which never comes) with an
//! account the proxy does not know, plus 10 connections that never send a request. The
//! proxy's resident memory stays bounded and a funded client is served meanwhile.
//!
//! The old proxy read every body before looking at the account: 40 × ~4 MB in memory
//! (12 MB → 180 MB RSS) and every connection held until the client gave up.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::*;
use common::slow::*;
use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

const SLOW: usize = 40;
const IDLE: usize = 10;
const DECLARED: u64 = 4_000_000;

/// Growth allowed over the warmed-up baseline. Per open connection the proxy holds a rustls
/// session (two TLS record buffers of ~16.6 KiB plus queues), hyper's HTTP/1.1 read buffer
/// (≤ client_max_header_bytes, 16 KiB) and write buffer, and a task: well under 256 KiB;
/// 51 connections ≈ 13 MiB at most. Refused bodies are never buffered (the body budget stays
/// at 0), so 24 MiB leaves room for allocator slack while staying far below the ~160 MB that
/// 40 buffered bodies cost.
const GROWTH_BOUND_KIB: u64 = 24 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_unfunded_connections_leave_memory_bounded_and_funded_clients_served() {
    let test_started = Instant::now();
    let dir = scratch("slow-clients");
    let funded = account_of(2);
    let mut cfg = config();
    // The fake worker shares this process with 40 uploads and a memory sampler; on a loaded
    // 2-core machine (a debug build encrypts 160 MB slowly) it can miss the default 1 s pong
    // deadline, and the proxy rightly drops it. Keepalive is not what this test is about.
    cfg.worker_keepalive_timeout_ms = Some(10_000);
    cfg.accounts = proxy::config::AccountsFile {
        default_balance_nano: None,
        balances: [(funded.to_string(), 1_000_000_000_000)].into(),
    };
    let config = write_config(&dir, &cfg);
    let mut child = spawn(&config);
    let [workers, clients, admin] = read_ready(&mut child).await;
    let pid = child.id();

    let _w = FakeWorker::connect(workers, WorkerSpec::new("w")).await;
    let mut c = client(clients, 2).await;
    wait_for_model(&mut c).await;
    // Warm up: a served request, so the baseline includes its allocations.
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    events(resp.into_body()).await;
    let baseline = rss_kib(pid);

    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(h1_raw(clients, 1).await);
    }
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(tokio::spawn(unfunded_upload(clients)));
    }
    // A funded client is served while the unfunded uploads run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = Instant::now();
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
    let served = served.elapsed();

    let mut saw_402 = 0;
    for t in slow {
        if t.await.unwrap() == Some(402) {
            saw_402 += 1;
        }
    }
    // Hold the idle connections while measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, metrics) = admin_get(admin, "/metrics").await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("(missing)")
            .to_string()
    };
    println!(
        "proxy VmRSS: baseline {baseline} KiB, peak {peak} KiB (+{} KiB, bound +{GROWTH_BOUND_KIB} KiB) \
         with {SLOW} slow unfunded uploads and {IDLE} idle connections; {saw_402} clients read the 402; \
         funded request served in {served:?}",
        peak.saturating_sub(baseline)
    );
    println!(
        "{}\n{}",
        line("cocoon_proxy_client_refusals_total{reason=\"insufficient_funds\"}"),
        line("cocoon_proxy_client_connections")
    );
    assert!(
        peak.saturating_sub(baseline) < GROWTH_BOUND_KIB,
        "rss grew from {baseline} KiB to {peak} KiB"
    );
    assert!(metrics.contains(&format!(
        "cocoon_proxy_client_refusals_total{{reason=\"insufficient_funds\"}} {SLOW}"
    )));
    assert!(
        metrics.contains("cocoon_proxy_request_body_bytes 0"),
        "no refused body was buffered"
    );
    assert!(
        saw_402 >= SLOW / 2,
        "most clients read their 402 ({saw_402})"
    );

    drop(idle);
    terminate(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(test_started.elapsed() < Duration::from_secs(60));
}

async fn wait_for_model(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = json_body(c.get("/v1/models").await).await;
        if !j["data"].as_array().unwrap().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An unknown account (seed 1) declares [`DECLARED`] bytes and uploads all but the last one
/// as fast as the proxy takes them, reading the answer meanwhile; then it waits. Returns the
/// status it read, if any, within 10 s.
async fn unfunded_upload(proxy: std::net::SocketAddr) -> Option<u16> {
    let tls = h1_raw(proxy, 1).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let upload = tokio::spawn(async move {
        if wr.write_all(&h1_head(DECLARED)).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0u64;
        while sent + (chunk.len() as u64) < DECLARED {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
        }
        let _ = wr.flush().await;
        // The rest never comes.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let head = h1_read_head(&mut rd, Duration::from_secs(10)).await;
    upload.abort();
    head.map(|h| h.status)
}
