//! Time limits that account for prompt processing: the proxy's worker idle timeout counts any
//! byte from the worker as progress (SSE keepalive comments included) and passes keepalives
//! on to the client; a silent worker is timed out before or after its first byte.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::real::{start_real_worker, BODY_STUB};
use common::*;
use http::StatusCode;
use protocol::sse::{Decoder, KEEPALIVE};
use protocol::ErrorKind;
use worker::engine::stub::StubEngine;
use worker::service::ServiceOptions;

fn idle_1s(c: &mut proxy::ProxyConfig) {
    c.worker_idle_timeout = Duration::from_secs(1);
}

/// A prompt that takes 2.5 s to process, with keepalives every 300 ms: the proxy (idle
/// timeout 1 s) keeps the request, relays keepalives to the client, and the stream completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_keep_a_long_prefill_alive() {
    let p = start_proxy(idle_1s).await;
    let engine = StubEngine::new("stub", 8, 1000.0).with_prefill_delay(Duration::from_millis(2500));
    let worker = start_real_worker(
        p.running.worker_addr,
        engine,
        ServiceOptions {
            stream_keepalive: Some(Duration::from_millis(300)),
            ..ServiceOptions::default()
        },
    );
    p.wait_workers(1).await;
    let mut c = client(p.running.client_addr, 1).await;
    let started = Instant::now();
    let resp = c.send(chat("stub", 16, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "headers with the first keepalive"
    );
    let bytes = raw_body(resp.into_body()).await;
    assert!(started.elapsed() >= Duration::from_millis(2500));
    let keepalives = bytes
        .windows(KEEPALIVE.len())
        .filter(|w| *w == KEEPALIVE)
        .count();
    // ~8 sent by the worker; coalesced per read, at least a few reach the client.
    assert!((2..=9).contains(&keepalives), "{keepalives} keepalives");
    assert!(bytes.starts_with(KEEPALIVE));
    let evs = Decoder::default().feed(&bytes).unwrap();
    assert!(evs
        .iter()
        .all(|e| e.name.as_deref() != Some("cocoon-error")));
    assert!(evs.last().unwrap().is_done());
    let usage = evs
        .iter()
        .find(|e| e.name.as_deref() == Some("cocoon-usage"))
        .map(|e| serde_json::from_str::<protocol::Usage>(&e.data).unwrap())
        .unwrap();
    assert_eq!(usage.completion_tokens, 8);
    let s = p.stats();
    assert_eq!(s["requests"]["stream_errors"], 0);
    assert_eq!(s["clients"][&c.account]["completion_tokens"], 8);
    let _ = worker.shutdown(Duration::from_secs(5)).await;
}

/// The same prompt from a worker that sends nothing while it works: after 1 s the proxy
/// answers 504 timeout and resets the worker's stream, which stops the generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_prefill_is_timed_out() {
    let p = start_proxy(idle_1s).await;
    let engine = StubEngine::new("stub", 8, 1000.0).with_prefill_delay(Duration::from_secs(5));
    let worker = start_real_worker(
        p.running.worker_addr,
        engine,
        ServiceOptions {
            stream_keepalive: None,
            ..ServiceOptions::default()
        },
    );
    p.wait_workers(1).await;
    let mut c = client(p.running.client_addr, 1).await;
    let started = Instant::now();
    let resp = c.send(chat("stub", 16, None, BODY_STUB)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = json_body(resp).await;
    assert_eq!(error_kind(&body), "timeout");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("worker_idle_timeout_secs"), "{message}");
    let stats = worker.service().stats();
    wait_until(
        "the worker stopped generating",
        Duration::from_secs(2),
        || stats.snapshot().active_generations == 0,
    )
    .await;
    assert_eq!(stats.snapshot().cancelled, 1);
    assert_eq!(p.stats()["workers"][0]["in_flight"], 0);
    let _ = worker.shutdown(Duration::from_secs(5)).await;
}

/// A worker that stops sending mid-stream (its connection healthy): the stream ends with a
/// timeout error event after the idle limit, and the worker's stream is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_after_its_first_tokens_is_timed_out() {
    let p = start_proxy(idle_1s).await;
    let mut spec = WorkerSpec::new("stall");
    spec.behavior = Behavior::StallAfter(3);
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = events(resp.into_body()).await;
    let stalled = w.obs.failed_at.lock().unwrap().expect("stalled");
    assert_eq!(evs.iter().filter(|(_, e)| e.name.is_none()).count(), 3);
    let (at, err) = error_of(&evs).expect("error event");
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(
        err.message.contains("worker_idle_timeout_secs"),
        "{}",
        err.message
    );
    let silent = at.duration_since(stalled);
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_secs(3),
        "{silent:?}"
    );
    wait_until("the worker's stream reset", Duration::from_secs(2), || {
        w.obs.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    let s = p.stats();
    assert_eq!(s["requests"]["stream_errors"], 1);
    assert_eq!(s["workers"][0]["in_flight"], 0);
}

/// A client that stops reading a long stream (its HTTP/2 window, 4 KiB, never moves): the
/// worker's stall limit (here 1 s) ends the generation and frees its slot; when the client
/// reads again it gets an error event saying why, nothing is billed, and the worker is not
/// blamed (the proxy saw its client take nothing for longer than `CLIENT_STALL_MARK`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_the_worker_without_blaming_it() {
    let p = start_proxy(|_| {}).await;
    let engine = StubEngine::new("stub", 4000, 0.0);
    let worker = start_real_worker(
        p.running.worker_addr,
        engine,
        ServiceOptions {
            stream_stall: Some(Duration::from_secs(1)),
            ..ServiceOptions::default()
        },
    );
    p.wait_workers(1).await;
    let mut c = client_with_window(p.running.client_addr, 1, 4 << 10).await;
    let resp = c.send(chat("stub", 4000, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Not reading: the worker stalls, then gives up after its limit.
    let started = Instant::now();
    loop {
        let s = worker.service().stats().snapshot();
        if s.stalled == 1 && s.active_generations == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still not reading past the proxy's stall mark, then reading everything.
    tokio::time::sleep(proxy::relay::CLIENT_STALL_MARK + Duration::from_secs(1)).await;
    let bytes = raw_body(resp.into_body()).await;
    let evs = Decoder::default().feed(&bytes).unwrap();
    let last = evs.last().unwrap();
    assert_eq!(last.name.as_deref(), Some("cocoon-error"), "{last:?}");
    assert!(last.data.contains("not reading"), "{}", last.data);
    let s = p.stats();
    let w = &s["workers"][0];
    assert_eq!(w["failures"], 0, "the worker was blamed: {w}");
    assert!(
        s["clients"][&c.account]["completion_tokens"]
            .as_u64()
            .unwrap_or(0)
            == 0,
        "an abandoned stream is not billed: {s}"
    );
    let _ = worker.shutdown(Duration::from_secs(5)).await;
}

/// A crowd of clients that stop reading, over HTTP/2 (a 4 KiB window that never moves) and
/// HTTP/1.1 (a small TCP receive buffer never drained), takes every slot of a worker. The
/// proxy's `client_stall_secs` (here 2 s) ends their streams: the proxy frees the slots (a
/// client that reads is then served in full) and stops each generation at the worker, which
/// ends its stream with the usage of the work done: that is billed to the stalled client (it
/// asked for those tokens), nothing is abandoned, the stalled clients get an error event
/// naming the limit when they read again, and the worker is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_stalled_clients_over_both_protocols_does_not_lock_the_worker() {
    const H2_STALLED: u8 = 5;
    const H1_STALLED: u8 = 3;
    const STALLED: u64 = (H2_STALLED + H1_STALLED) as u64;
    let p = start_proxy(|c| c.client.stall_timeout = Duration::from_secs(2)).await;
    // Long streams: an HTTP/1.1 client's kernel buffers and the proxy's socket send buffer
    // (which grows to megabytes) absorb a few thousand tokens before anything stalls.
    let engine = StubEngine::new("stub", 100_000, 0.0).with_max_context(200_000);
    // The worker's own stall limit stays at its default (300 s): here the proxy acts.
    let worker = start_real_worker(p.running.worker_addr, engine, ServiceOptions::default());
    p.wait_workers(1).await;
    assert_eq!(
        p.stats()["workers"][0]["capacity"],
        STALLED,
        "one slot each"
    );
    let mut stalled = Vec::new();
    for seed in 0..H2_STALLED {
        let mut c = client_with_window(p.running.client_addr, 40 + seed, 4 << 10).await;
        let resp = c.send(chat("stub", 100_000, None, BODY_STUB)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        stalled.push((c, resp));
    }
    for seed in 0..H1_STALLED {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4 << 10).unwrap();
        let tcp = socket.connect(p.running.client_addr).await.unwrap();
        let mut c = client_on(tcp, 50 + seed, true).await.unwrap();
        let resp = c.send(chat("stub", 100_000, None, BODY_STUB)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        stalled.push((c, resp));
    }
    assert_eq!(p.stats()["workers"][0]["in_flight"], STALLED);
    // The proxy cuts all of them: the worker stops each generation, the slots come back,
    // the work done is billed.
    let started = Instant::now();
    loop {
        let s = worker.service().stats().snapshot();
        let ps = p.stats();
        if s.stopped == STALLED
            && s.active_generations == 0
            && ps["workers"][0]["in_flight"] == 0
            && ps["requests"]["client_stalls"] == STALLED
            && ps["requests"]["stopped"] == STALLED
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{s:?} {}",
            ps["requests"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ws = worker.service().stats().snapshot();
    assert_eq!((ws.stalled, ws.cancelled), (0, 0), "{ws:?}");
    assert_eq!(
        (ws.unbilled_prompt_tokens, ws.unbilled_completion_tokens),
        (0, 0),
        "{ws:?}"
    );
    assert_eq!(p.stats()["requests"]["abandoned"], 0);
    // A client that reads is served in full.
    let mut reader = client(p.running.client_addr, 60).await;
    let resp = reader.send(chat("stub", 200, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs = Decoder::default()
        .feed(&raw_body(resp.into_body()).await)
        .unwrap();
    assert!(
        evs.iter()
            .any(|e| e.name.as_deref() == Some("cocoon-usage")),
        "the reading client's stream completes"
    );
    // The stalled clients read again: each stream ends with an error event, not a hang.
    for (i, (c, resp)) in stalled.into_iter().enumerate() {
        let bytes = tokio::time::timeout(Duration::from_secs(20), raw_body(resp.into_body()))
            .await
            .unwrap_or_else(|_| panic!("stalled client {i} hangs"));
        let evs = Decoder::default().feed(&bytes).unwrap();
        let last = evs.last().unwrap();
        assert_eq!(
            last.name.as_deref(),
            Some("cocoon-error"),
            "client {i}: {last:?}"
        );
        assert!(
            last.data.contains("client_stall_secs") && last.data.contains("billed"),
            "client {i}: {}",
            last.data
        );
        let s = p.stats();
        let billed = s["clients"][&c.account]["completion_tokens"]
            .as_u64()
            .unwrap_or(0);
        // At least what reached the client, usually far more (what the worker generated
        // into the buffers before it was stopped).
        let received = evs.iter().filter(|e| e.name.is_none()).count() as u64;
        assert!(
            billed + 1 >= received && billed > 0,
            "client {i}: billed {billed}, received {received} events"
        );
        // The usage it was billed on comes right before the error.
        let usage = &evs[evs.len() - 2];
        assert_eq!(
            usage.name.as_deref(),
            Some(protocol::sse::EVENT_USAGE),
            "client {i}: {usage:?}"
        );
        let usage: protocol::usage::Usage = serde_json::from_str(&usage.data).unwrap();
        assert_eq!(usage.completion_tokens, billed, "client {i}");
    }
    let s = p.stats();
    let w = &s["workers"][0];
    assert_eq!(w["failures"], 0, "the worker was blamed: {w}");
    assert_eq!(w["in_flight"], 0);
    let _ = worker.shutdown(Duration::from_secs(5)).await;
}

/// A stalled client that reads again while its stream is still being settled (the worker
/// takes 2 s to end a stopped generation): it gets what was queued, waits for the settle,
/// then the usage it was billed on and the error event; never a stream that just ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_reading_during_the_settle_gets_the_billed_end() {
    let p = start_proxy(|c| c.client.stall_timeout = Duration::from_secs(1)).await;
    let mut spec = WorkerSpec::new("slow-stop");
    spec.tokens = 100_000;
    spec.interval = Duration::from_micros(100);
    spec.stop_delay = Duration::from_secs(2);
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let mut c = client_with_window(p.running.client_addr, 1, 4 << 10).await;
    let resp = c.send(chat(MODEL, 100_000, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let started = Instant::now();
    while p.stats()["requests"]["client_stalls"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cut = Instant::now();
    assert_eq!(p.stats()["requests"]["stopped"], 0, "still settling");
    let evs = tokio::time::timeout(Duration::from_secs(10), events(resp.into_body()))
        .await
        .expect("the stream ends");
    let (at, err) = error_of(&evs).expect("an error event");
    let waited = at.duration_since(cut);
    println!("error {waited:?} after the cut, {} events", evs.len());
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(err.message.contains("billed"), "{}", err.message);
    let n = evs.len();
    assert_eq!(
        evs[n - 2].1.name.as_deref(),
        Some(protocol::sse::EVENT_USAGE),
        "the usage right before the error"
    );
    let usage = usage_of(&evs).unwrap();
    assert!(usage.completion_tokens > 0);
    let s = p.stats();
    assert_eq!(s["requests"]["stopped"], 1);
    assert_eq!(s["requests"]["abandoned"], 0);
    assert_eq!(
        s["clients"][&c.account]["completion_tokens"],
        usage.completion_tokens
    );
    assert_eq!(w.obs.stopped.load(Ordering::SeqCst), 1);
}
