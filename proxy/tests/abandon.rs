//! The limit on streams abandoned before they were billed (`client_abandon_burst`,
//! `client_abandon_interval_secs`; proxy::limits::Abandons): a client that resets its streams
//! before the worker's usage report gets the work for free (docs/threat-model.md, the abort
//! free-ride), so each account may do that only a few times in a row.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use proxy::Ledger as _;

const PROMPT: Duration = Duration::from_secs(10);

async fn with_worker(p: &TestProxy, spec: WorkerSpec) -> FakeWorker {
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
