//! The limit on streams abandoned before they were billed (`client_abandon_burst`,
//! `client_abandon_interval_secs`; proxy::limits::Abandons): a client that resets its streams
//! before the worker's usage report would get the work for free (docs/threat-model.md, the
//! abort free-ride). The proxy stops such a stream at the worker and bills the work done
//! (`stop.rs`); only a stream that yields no usage that way — its worker stops nothing —
//! is abandoned, and each account may abandon only a few in a row. The fake workers here
//! stop nothing (`honors_cancel = false`), like a worker without the cancel route.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use proxy::Ledger as _;

const PROMPT: Duration = Duration::from_secs(10);

async fn with_worker(p: &TestProxy, mut spec: WorkerSpec) -> FakeWorker {
    spec.honors_cancel = false;
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    w
}

fn abandoned(p: &TestProxy) -> u64 {
    p.stats()["requests"]["abandoned"].as_u64().unwrap()
}

/// Starts a stream and drops it after its first data frame.
async fn start_and_drop(c: &mut Client) {
    let resp = c.send(chat(MODEL, 64, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    loop {
        let frame = tokio::time::timeout(PROMPT, body.frame())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame");
        if frame.is_data() {
            break;
        }
    }
}

/// Two abandoned streams use up an allowance of 2: the account's next request gets 429
/// `rate_limit_exceeded` with `Retry-After`, another account is served, a completed stream
/// never counts, and the allowance comes back after the interval. Nothing abandoned was
/// billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_streams_are_limited_per_account() {
    let p = start_proxy(|c| {
        c.client.abandon_burst = 2;
        c.client.abandon_interval = Duration::from_secs(2);
    })
    .await;
    let mut spec = WorkerSpec::new("slow");
    spec.tokens = 50;
    spec.interval = Duration::from_millis(20); // 1 s per stream
    let w = with_worker(&p, spec).await;
    let mut a = client(p.running.client_addr, 1).await;
    let a_account = a.account.clone();

    // Completed: billed, not abandoned.
    let done = a.send(chat(MODEL, 4, None, BODY)).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert!(usage_of(&events(done.into_body()).await).is_some());
    let charged = p.ledger.balance(&a_account).unwrap();

    for n in 1..=2 {
        start_and_drop(&mut a).await;
        wait_until("the abandoned stream counted", PROMPT, || {
            abandoned(&p) == n
        })
        .await;
    }
    let resp = a.send(chat(MODEL, 4, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let body = json_body(resp).await;
    assert_eq!(error_kind(&body), "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("client_abandon_burst (2"), "{message}");
    assert_eq!(p.stats()["client_refusals"]["abandon_limit"], 1);

    // Another account is not affected.
    let mut b = client(p.running.client_addr, 2).await;
    let resp = b.send(chat(MODEL, 4, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());

    // Nothing of the abandoned streams was billed.
    wait_until("the reservations released", PROMPT, || {
        p.ledger.balance(&a_account).unwrap().reserved_nano == 0
    })
    .await;
    let after = p.ledger.balance(&a_account).unwrap();
    assert_eq!(after.balance_nano, charged.balance_nano);

    // One interval later the account may try again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = a.send(chat(MODEL, 4, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(usage_of(&events(resp.into_body()).await).is_some());
    assert_eq!(abandoned(&p), 2);
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 5);
    let (_, metrics) = p.admin("/metrics").await;
    assert!(metrics.contains("cocoon_proxy_abandoned_streams_total 2"));
}

/// A client that leaves while the worker processes its prompt (no response yet) abandons the
/// stream too; one that leaves while queued (no worker had started) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_during_prompt_processing_counts_leaving_the_queue_does_not() {
    let p = start_proxy(|c| {
        c.client.abandon_burst = 1;
        c.client.abandon_interval = Duration::from_secs(60);
    })
    .await;
    let mut spec = WorkerSpec::new("hang");
    spec.capacity = 1;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let a = client(p.running.client_addr, 1).await;
    let mut first = a.stream_handle().unwrap();
    let at_worker = tokio::spawn(async move { first.send(chat(MODEL, 4, None, BODY)).await });
    wait_until("at the worker", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut second = a.stream_handle().unwrap();
    let queued = tokio::spawn(async move { second.send(chat(MODEL, 4, None, BODY)).await });
    wait_until("queued", PROMPT, || {
        p.stats()["queues"][MODEL]["queued"].as_u64() == Some(1)
    })
    .await;
    queued.abort();
    wait_until("left the queue", PROMPT, || {
        p.stats()["queues"][MODEL]["queued"].as_u64() == Some(0)
    })
    .await;
    assert_eq!(abandoned(&p), 0, "nothing was started for the queued one");
    at_worker.abort();
    wait_until("the started one counted", PROMPT, || abandoned(&p) == 1).await;
    let mut c = a.stream_handle().unwrap();
    let resp = c.send(chat(MODEL, 4, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_kind(&json_body(resp).await), "rate_limit_exceeded");
}

/// One connection's worth of the abort free-ride against the real worker service (stub
/// engine, 200 ms prompt processing): 16 streams at a time, each reset 20 ms after it was
/// sent (during prompt processing), for 3 s. Every generation the worker started is stopped
/// on the proxy's cancel and its prompt billed: nothing is left unbilled at the worker,
/// nothing is abandoned, so the account is not refused either — it pays for what it asked.
/// Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abort_free_ride_is_billed() {
    use common::real::{start_real_worker, BODY_STUB};
    use worker::engine::stub::StubEngine;
    use worker::service::ServiceOptions;

    const RUN: Duration = Duration::from_secs(3);
    let p = start_proxy(|_| {}).await;
    let worker = start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 64, 200.0).with_prefill_delay(Duration::from_millis(200)),
        ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    let c = client(p.running.client_addr, 1).await;
    let end = std::time::Instant::now() + RUN;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut h = c.stream_handle().unwrap();
        tasks.push(tokio::spawn(async move {
            while std::time::Instant::now() < end {
                let send = h.send(chat("stub", 64, None, BODY_STUB));
                if let Ok(resp) = tokio::time::timeout(Duration::from_millis(20), send).await {
                    drop(resp);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = worker.service().stats();
    wait_until("the worker idle", PROMPT, || {
        stats.snapshot().active_generations == 0
    })
    .await;
    let s = stats.snapshot();
    wait_until("every stream settled", PROMPT, || {
        p.stats()["requests"]["stopped"].as_u64().unwrap() + abandoned(&p) >= s.stopped
    })
    .await;
    let j = p.stats();
    let billed = j["requests"]["stopped"].as_u64().unwrap();
    let prompt = j["clients"][&c.account]["prompt_tokens"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "in {RUN:?}: {} generations started, {} stopped on the proxy's cancel, {billed} billed \
         ({prompt} prompt tokens), {} abandoned; unbilled at the worker: {} prompt tokens",
        s.requests,
        s.stopped,
        abandoned(&p),
        s.unbilled_prompt_tokens
    );
    assert!(s.requests > 16, "{} generations", s.requests);
    assert_eq!(s.unbilled_prompt_tokens, 0, "work left unbilled");
    assert_eq!(abandoned(&p), 0);
    assert_eq!(billed, s.stopped + s.completed);
    assert_eq!(
        j["client_refusals"]["abandon_limit"].as_u64().unwrap_or(0),
        0
    );
}
