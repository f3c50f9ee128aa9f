//! Load: 100 concurrent streaming requests through the proxy to two workers.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_no_errors_all_usage_recorded() {
    let p = start_proxy(|_| {}).await;
    let mut workers = Vec::new();
    for name in ["load-a", "load-b"] {
        let mut spec = WorkerSpec::new(name);
        spec.capacity = 64;
        spec.tokens = 32;
        spec.interval = Duration::from_micros(500); // 2000 tokens/s per stream
        workers.push(FakeWorker::connect(p.running.worker_addr, spec).await);
    }
    p.wait_workers(2).await;

    const CLIENTS: u8 = 10;
    const PER_CLIENT: usize = 10;
    let mut clients = Vec::new();
    for seed in 1..=CLIENTS {
        clients.push(client(p.running.client_addr, seed).await);
    }
    // Sample the proxy's active requests to report the real concurrency.
    let state = p.running.state().clone();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let a = state.stats.active_requests.load(Ordering::Relaxed);
                peak.fetch_max(a, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..PER_CLIENT {
                let mut c = c.stream_handle().unwrap();
                let barrier = barrier.clone();
                streams.push(tokio::spawn(async move {
                    let resp = c.send(chat(MODEL, 64, None, BODY)).await;
                    assert_eq!(resp.status(), StatusCode::OK);
                    // Every request is admitted before any stream is read.
                    barrier.wait().await;
                    events(resp.into_body()).await
                }));
            }
            let mut out = Vec::new();
            for s in streams {
                out.push(s.await.unwrap());
            }
            out
        }));
    }
    let mut usage_total = protocol::Usage::default();
    let mut n = 0;
    for t in tasks {
        for evs in t.await.unwrap() {
            assert!(error_of(&evs).is_none());
            assert_eq!(evs.iter().filter(|(_, e)| e.name.is_none()).count(), 33);
            usage_total.add(&usage_of(&evs).expect("usage"));
            n += 1;
        }
    }
    sampler.abort();
    println!(
        "100 streams x 32 tokens through the proxy in {:?}; peak active requests {}",
        started.elapsed(),
        peak.load(Ordering::Relaxed)
    );
    assert_eq!(n, 100);

    let s = p.stats();
    let clients = s["clients"].as_object().unwrap();
    assert_eq!(clients.len(), usize::from(CLIENTS));
    let sum = |m: &serde_json::Map<String, serde_json::Value>, k: &str| -> u64 {
        m.values().map(|r| r[k].as_u64().unwrap()).sum()
    };
    assert_eq!(sum(clients, "requests"), 100);
    assert_eq!(
        sum(clients, "completion_tokens"),
        usage_total.completion_tokens
    );
    assert_eq!(sum(clients, "prompt_tokens"), usage_total.prompt_tokens);
    let per_worker = s["worker_usage"].as_object().unwrap();
    assert_eq!(sum(per_worker, "requests"), 100);
    assert_eq!(sum(per_worker, "completion_tokens"), 3200);
    assert_eq!(sum(per_worker, "cost_nano"), sum(clients, "cost_nano"));
    assert_eq!(s["tokens"]["completion"], 3200);
    assert_eq!(s["requests"]["by_status"]["200"], 100);
    assert_eq!(s["requests"]["stream_errors"], 0);
    assert_eq!(s["requests"]["retries"], 0);
    for w in s["workers"].as_array().unwrap() {
        assert_eq!(w["in_flight"], 0);
        println!("worker {} served {}", w["name"], w["requests"]);
    }
    assert_eq!(s["requests"]["active"], 0);
}
