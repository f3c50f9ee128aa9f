//! A client that leaves pays for the work done (proxy/src/relay/settle.rs): instead of
//! resetting the worker's stream, the proxy asks the worker to stop the generation
//! (`POST /cocoon/v1/cancel`, naming it by the proxy's stream tag), reads the usage the
//! stopped stream ends with and bills it. A worker that stops nothing is reset and the stream
//! counts as abandoned (the limit in `abandon.rs`).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use proxy::Ledger as _;

const WAIT: Duration = Duration::from_secs(10);

/// What a new account starts with in the test proxy (`accounts.default_balance_nano`).
const DEFAULT_BALANCE: u64 = 1_000_000_000_000;

async fn with_worker(p: &TestProxy, spec: WorkerSpec) -> FakeWorker {
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    w
}

/// A worker sending a token every 20 ms (1 s per stream).
fn slow(name: &str) -> WorkerSpec {
    let mut spec = WorkerSpec::new(name);
    spec.tokens = 50;
    spec.interval = Duration::from_millis(20);
    spec
}

fn requests(p: &TestProxy, what: &str) -> u64 {
    p.stats()["requests"][what].as_u64().unwrap()
}

/// Reads `n` data frames of a stream, then drops it (the client leaves).
async fn read_and_leave(resp: http::Response<hyper::body::Incoming>, n: usize) {
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = 0;
    while seen < n {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame");
        if frame.is_data() {
            seen += 1;
        }
    }
}

/// The tag the proxy sent request `i` (in arrival order) to the worker with.
fn tag_of(w: &FakeWorker, i: usize) -> String {
    w.obs.headers.lock().unwrap()[i][protocol::meta::H_STREAM_TAG]
        .to_str()
        .unwrap()
        .to_string()
}

/// Mid-stream: the worker stops the generation within a few milliseconds of the client
/// leaving (its stream is not reset), the usage so far is billed to the account — the
/// prompt and the tokens generated, far less than the reservation — and the stream is
/// counted as stopped, not abandoned. The slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_pays_for_the_tokens_generated() {
    let p = start_proxy(|_| {}).await;
    let w = with_worker(&p, slow("w")).await;
    let mut c = client(p.running.client_addr, 1).await;
    let before = DEFAULT_BALANCE;
    assert!(p.ledger.balance(&c.account).is_none(), "a new account");
    read_and_leave(c.send(chat(MODEL, 50, None, BODY)).await, 3).await;
    let left = Instant::now();
    wait_until("the worker stopped the generation", WAIT, || {
        w.obs.stopped.load(Ordering::SeqCst) == 1
    })
    .await;
    let stop_ms = w.obs.stopped_at.lock().unwrap().unwrap() - left;
    wait_until("billed", WAIT, || requests(&p, "stopped") == 1).await;
    println!("client left -> worker stopped the generation: {stop_ms:?}");
    assert!(stop_ms < Duration::from_secs(1), "{stop_ms:?}");
    assert_eq!(w.obs.cancelled.load(Ordering::SeqCst), 0, "not reset");
    assert_eq!(w.obs.completed.load(Ordering::SeqCst), 0);
    assert_eq!(requests(&p, "abandoned"), 0);
    let s = p.stats();
    let usage = &s["clients"][&c.account];
    assert_eq!(usage["requests"], 1);
    assert_eq!(usage["prompt_tokens"], 7);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((3..50).contains(&completion), "{completion} tokens billed");
    wait_until("the reservation released", WAIT, || {
        p.ledger.balance(&c.account).unwrap().reserved_nano == 0
    })
    .await;
    let after = p.ledger.balance(&c.account).unwrap();
    let charged = before - after.balance_nano;
    assert_eq!(
        s["clients"][&c.account]["cost_nano"].as_u64().unwrap(),
        charged
    );
    assert!(charged > 0);
    assert_eq!(s["workers"][0]["in_flight"], 0);
    let (_, metrics) = p.admin("/metrics").await;
    assert!(
        metrics.contains("cocoon_proxy_stopped_streams_total 1"),
        "{metrics}"
    );
}

/// During prompt processing (the worker has sent no response yet): the proxy's attempt
/// outlives the client's request, stops the generation and bills the prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_prompt_processing_pays_for_the_prompt() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("prefill");
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let c = client(p.running.client_addr, 1).await;
    let mut h = c.stream_handle().unwrap();
    let sent = tokio::spawn(async move { h.send(chat(MODEL, 50, None, BODY)).await });
    wait_until("at the worker", WAIT, || {
        w.obs.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    sent.abort();
    let left = Instant::now();
    wait_until("billed", WAIT, || requests(&p, "stopped") == 1).await;
    let stop_ms = w.obs.stopped_at.lock().unwrap().unwrap() - left;
    println!("client left during prompt processing -> worker stopped: {stop_ms:?}");
    assert!(stop_ms < Duration::from_secs(1), "{stop_ms:?}");
    let s = p.stats();
    assert_eq!(s["clients"][&c.account]["prompt_tokens"], 7);
    assert_eq!(s["clients"][&c.account]["completion_tokens"], 0);
    assert_eq!(requests(&p, "abandoned"), 0);
    assert_eq!(s["requests"]["active"], 0);
    wait_until("the slot freed", WAIT, || {
        p.stats()["workers"][0]["in_flight"] == 0
    })
    .await;
}

/// A worker that stops nothing (no cancel route, 404): the proxy reads what is already on its
/// way for a moment, then resets the stream; nothing is billed and the stream counts as
/// abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_nothing_is_reset_and_the_stream_abandoned() {
    let p = start_proxy(|_| {}).await;
    let mut spec = slow("old");
    spec.honors_cancel = false;
    let w = with_worker(&p, spec).await;
    let mut c = client(p.running.client_addr, 1).await;
    let before = DEFAULT_BALANCE;
    assert!(p.ledger.balance(&c.account).is_none(), "a new account");
    read_and_leave(c.send(chat(MODEL, 50, None, BODY)).await, 3).await;
    let left = Instant::now();
    wait_until("the stream reset", WAIT, || {
        w.obs.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    let reset = w.obs.cancelled_at.lock().unwrap().unwrap() - left;
    assert!(reset < Duration::from_secs(2), "reset after {reset:?}");
    assert_eq!(w.obs.cancels.load(Ordering::SeqCst), 1);
    wait_until("counted", WAIT, || requests(&p, "abandoned") == 1).await;
    assert_eq!(requests(&p, "stopped"), 0);
    wait_until("the reservation released", WAIT, || {
        p.ledger.balance(&c.account).unwrap().reserved_nano == 0
    })
    .await;
    assert_eq!(p.ledger.balance(&c.account).unwrap().balance_nano, before);
}

/// Two clients send requests with the same id to the same worker (ids are the clients'):
/// the one that leaves has its own generation stopped — the cancel names the proxy's tag —
/// and the other's stream completes in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_only_its_own_request_when_ids_collide() {
    let p = start_proxy(|_| {}).await;
    let w = with_worker(&p, slow("shared")).await;
    let mut a = client(p.running.client_addr, 1).await;
    let mut b = client(p.running.client_addr, 2).await;
    let same = |mut req: http::Request<_>| {
        req.headers_mut().insert(
            protocol::meta::H_REQUEST_ID,
            http::HeaderValue::from_static("same-id"),
        );
        req
    };
    let a_resp = a.send(same(chat(MODEL, 50, None, BODY))).await;
    let b_resp = b.send(same(chat(MODEL, 50, None, BODY))).await;
    assert_ne!(tag_of(&w, 0), tag_of(&w, 1));
    read_and_leave(a_resp, 2).await;
    wait_until("a's generation stopped", WAIT, || {
        w.obs.stopped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(b_resp.status(), StatusCode::OK);
    let evs = events(b_resp.into_body()).await;
    let usage = usage_of(&evs).expect("b's stream completes");
    assert_eq!(usage.completion_tokens, 50);
    assert_eq!(w.obs.completed.load(Ordering::SeqCst), 1);
    assert_eq!(w.obs.stopped.load(Ordering::SeqCst), 1);
    wait_until("a billed", WAIT, || requests(&p, "stopped") == 1).await;
    let s = p.stats();
    assert!(
        s["clients"][&a.account]["completion_tokens"]
            .as_u64()
            .unwrap()
            < 50
    );
    assert_eq!(s["clients"][&b.account]["completion_tokens"], 50);
}

async fn status_json(resp: http::Response<hyper::body::Incoming>) -> (u16, serde_json::Value) {
    (resp.status().as_u16(), json_body(resp).await)
}

fn cancel(id: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::post(format!("https://proxy.invalid{}", protocol::paths::CANCEL));
    if let Some(id) = id {
        b = b.header(protocol::meta::H_REQUEST_ID, id);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// A client that gives up on a request may cancel it (`POST /cocoon/v1/cancel`) instead of
/// resetting it: its stream then ends like a completed one, with the usage of the work done
/// (billed) and `[DONE]` — what an end-to-end client needs to keep the receipt. Only the
/// account's own requests; an unknown id is 404, a missing one 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_ends_the_stream_with_the_usage_so_far() {
    let p = start_proxy(|_| {}).await;
    let w = with_worker(&p, slow("w")).await;
    let mut a = client(p.running.client_addr, 1).await;
    let mut other = client(p.running.client_addr, 2).await;
    let req = chat(MODEL, 50, None, BODY);
    let id = req.headers()[protocol::meta::H_REQUEST_ID]
        .to_str()
        .unwrap()
        .to_string();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while seen.windows(7).filter(|w| w == b"\"index\"").count() < 3 {
        let f = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(d) = f.into_data() {
            seen.extend_from_slice(&d);
        }
    }
    // Another account cannot stop it; nor an unknown id; an id is required.
    let (status, j) = status_json(other.send(cancel(Some(&id))).await).await;
    assert_eq!(status, 404, "{j}");
    assert_eq!(error_kind(&j), "not_found");
    let (status, _) =
        status_json(a.stream_handle().unwrap().send(cancel(Some("nope"))).await).await;
    assert_eq!(status, 404);
    let (status, _) = status_json(a.stream_handle().unwrap().send(cancel(None)).await).await;
    assert_eq!(status, 400);
    let (status, j) = status_json(a.stream_handle().unwrap().send(cancel(Some(&id))).await).await;
    assert_eq!(
        (status, j.to_string()),
        (200, r#"{"stopped":1}"#.to_string())
    );
    // Cancelling again while the stream ends is answered without asking the worker again.
    for _ in 0..3 {
        let (status, _) =
            status_json(a.stream_handle().unwrap().send(cancel(Some(&id))).await).await;
        assert!(status == 200 || status == 404, "{status}");
    }
    assert_eq!(
        w.obs.cancels.load(Ordering::SeqCst),
        1,
        "one cancel reached the worker"
    );
    // Counted as the client's cancel, not as a stream the proxy stopped.
    assert_eq!(requests(&p, "cancelled"), 1);
    assert_eq!(requests(&p, "stopped"), 0);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the stream ends at once")
        .unwrap()
        .to_bytes();
    seen.extend_from_slice(&rest);
    let evs = protocol::sse::Decoder::default().feed(&seen).unwrap();
    assert!(evs.last().unwrap().is_done());
    let usage: protocol::Usage = serde_json::from_str(
        &evs.iter()
            .find(|e| e.name.as_deref() == Some(protocol::sse::EVENT_USAGE))
            .expect("usage")
            .data,
    )
    .unwrap();
    assert!((3..50).contains(&usage.completion_tokens), "{usage:?}");
    assert_eq!(w.obs.stopped.load(Ordering::SeqCst), 1);
    let s = p.stats();
    assert_eq!(
        s["clients"][&a.account]["completion_tokens"],
        usage.completion_tokens
    );
    assert_eq!(s["requests"]["abandoned"], 0);
    assert_eq!(s["requests"]["stopped"], 0, "not a client that left");
}

/// A worker that says it stopped the generation but never ends the stream (it lies, or hangs):
/// the proxy gives up after the settle limit, resets the stream, frees the slot and counts the
/// stream as abandoned; nothing is billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_claims_a_stop_but_never_ends_is_reset_after_the_limit() {
    let p = start_proxy(|_| {}).await;
    let mut spec = slow("liar");
    spec.behavior = Behavior::StallAfter(3);
    let w = with_worker(&p, spec).await;
    let mut c = client(p.running.client_addr, 1).await;
    read_and_leave(c.send(chat(MODEL, 50, None, BODY)).await, 3).await;
    let left = Instant::now();
    wait_until("the stream reset", WAIT, || {
        w.obs.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    let took = w.obs.cancelled_at.lock().unwrap().unwrap() - left;
    println!("a worker that never ends a stopped stream is reset after {took:?}");
    assert!(
        took >= proxy::relay::SETTLE_LIMIT - Duration::from_millis(100)
            && took < proxy::relay::SETTLE_LIMIT + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(w.obs.cancels.load(Ordering::SeqCst), 1);
    wait_until("counted and freed", WAIT, || {
        let s = p.stats();
        s["requests"]["abandoned"] == 1 && s["workers"][0]["in_flight"] == 0
    })
    .await;
    assert_eq!(requests(&p, "stopped"), 0);
    assert_eq!(
        p.stats()["clients"][&c.account]["cost_nano"]
            .as_u64()
            .unwrap_or(0),
        0
    );
}

/// Twelve accounts at once against the real worker service (stub engine, 30 ms prompt
/// processing, 40 tokens at 400/s, 8 slots), each sending 8 requests and, by a fixed
/// pseudo-random choice per request, leaving during prompt processing, leaving after 1–3
/// frames, or reading to the end: every generation the worker ran is billed exactly once —
/// the proxy billed one prompt per generation the worker completed or stopped — nothing is
/// left unbilled at the worker, no stream was reset or abandoned, and no slot or reservation
/// is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generation_is_billed_once_whether_its_client_stays_or_leaves() {
    use common::real::{start_real_worker, BODY_STUB};
    use worker::engine::stub::StubEngine;
    use worker::service::ServiceOptions;

    let p = start_proxy(|_| {}).await;
    let worker = start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 40, 400.0).with_prefill_delay(Duration::from_millis(30)),
        ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    // What one request's prompt comes to (the stub's count of BODY_STUB's prompt).
    let mut first = client(p.running.client_addr, 99).await;
    let resp = first.send(chat("stub", 40, None, BODY_STUB)).await;
    let prompt = usage_of(&events(resp.into_body()).await)
        .expect("usage")
        .prompt_tokens;
    let mut accounts = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let mut c = client(p.running.client_addr, i + 1).await;
        accounts.push(c.account.clone());
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(i);
            let mut stayed = 0;
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let send = c.send(chat("stub", 40, None, BODY_STUB));
                match x % 5 {
                    // Gone during prompt processing (or while queued).
                    0 => {
                        let _ = tokio::time::timeout(Duration::from_millis(10), send).await;
                    }
                    // Gone after 1-3 frames.
                    n @ 1..=3 => {
                        let resp = send.await;
                        assert_eq!(resp.status(), StatusCode::OK);
                        let mut body = resp.into_body();
                        for _ in 0..n {
                            match body.frame().await {
                                Some(Ok(_)) => {}
                                _ => break,
                            }
                        }
                    }
                    _ => {
                        let resp = send.await;
                        assert_eq!(resp.status(), StatusCode::OK);
                        let evs = events(resp.into_body()).await;
                        assert_eq!(usage_of(&evs).expect("usage").completion_tokens, 40);
                        stayed += 1;
                    }
                }
            }
            stayed
        }));
    }
    let mut stayed = 0;
    for t in tasks {
        stayed += t.await.unwrap();
    }
    let stats = worker.service().stats();
    wait_until("everything settled", WAIT, || {
        let s = p.stats();
        stats.snapshot().active_generations == 0
            && s["requests"]["active"] == 0
            && s["workers"][0]["in_flight"] == 0
    })
    .await;
    // The last settles may still be writing their charges.
    let w = stats.snapshot();
    wait_until("every prompt billed", WAIT, || {
        p.stats()["tokens"]["prompt"].as_u64() == Some(prompt * (w.completed + w.stopped))
    })
    .await;
    let s = p.stats();
    println!(
        "96 requests (and one before): {stayed} read to the end; worker: {} completed, {} stopped, {} reset; \
         proxy: {} prompts billed, {} stopped, {} abandoned",
        w.completed,
        w.stopped,
        w.cancelled,
        s["tokens"]["prompt"].as_u64().unwrap() / prompt,
        s["requests"]["stopped"],
        s["requests"]["abandoned"]
    );
    assert!(w.completed > stayed && w.stopped > 0, "{w:?}");
    assert_eq!(w.cancelled, 0, "no stream was reset");
    assert_eq!(
        (w.unbilled_prompt_tokens, w.unbilled_completion_tokens),
        (0, 0)
    );
    assert_eq!(s["requests"]["abandoned"], 0);
    for a in &accounts {
        let b = p.ledger.balance(a).expect("account used");
        assert_eq!(b.reserved_nano, 0, "a reservation left behind");
    }
}

/// The worker breaks while the proxy settles a stream whose client left: it crashes (its
/// connection closes) or answers the stop with bytes that are no event stream. Nothing is
/// billed, nothing stays reserved, the stream counts as abandoned and as the worker's
/// failure, and the proxy goes on serving with the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_breaks_while_its_stream_is_settled_costs_nothing() {
    for on_stop in [OnStop::Die, OnStop::Garbage] {
        let p = start_proxy(|_| {}).await;
        let mut spec = slow("breaks");
        spec.on_stop = on_stop;
        let w = with_worker(&p, spec).await;
        let mut c = client(p.running.client_addr, 1).await;
        read_and_leave(c.send(chat(MODEL, 50, None, BODY)).await, 2).await;
        wait_until("stopped at the worker", WAIT, || {
            w.obs.stopped.load(Ordering::SeqCst) == 1
        })
        .await;
        wait_until("settled", WAIT, || requests(&p, "abandoned") == 1).await;
        wait_until("the reservation released", WAIT, || {
            p.ledger.balance(&c.account).unwrap().reserved_nano == 0
        })
        .await;
        let s = p.stats();
        assert_eq!(requests(&p, "stopped"), 0, "{on_stop:?}");
        assert_eq!(
            p.ledger.balance(&c.account).unwrap().balance_nano,
            DEFAULT_BALANCE,
            "{on_stop:?}: nothing billed"
        );
        if on_stop == OnStop::Garbage {
            // Still connected: the failure is on its record.
            assert_eq!(s["workers"][0]["failures"], 1, "{s}");
            assert_eq!(s["workers"][0]["in_flight"], 0, "{s}");
        }
        // The proxy serves on, with a healthy worker.
        let _next = with_worker(&p, WorkerSpec::new("next")).await;
        let evs = events(c.send(chat(MODEL, 4, None, BODY)).await.into_body()).await;
        assert_eq!(usage_of(&evs).unwrap().completion_tokens, 4, "{on_stop:?}");
    }
}
