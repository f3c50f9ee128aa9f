//! Registration, the streaming relay with accounting, the model list, and the error paths.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use protocol::meta::{H_MAX_PROMPT_TOKENS, H_MAX_TOKENS, H_MODEL};
use protocol::usage::Prices;
use proxy::Ledger;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_registers_and_models_are_listed() {
    let p = start_proxy(|_| {}).await;
    let w = FakeWorker::connect(p.running.worker_addr, WorkerSpec::new("w-a")).await;
    p.wait_workers(1).await;
    let s = p.stats();
    let worker = &s["workers"][0];
    assert_eq!(worker["name"], "w-a");
    assert_eq!(worker["image_hash"], worker_regs().image_hash().to_string());
    assert_eq!(worker["models"][0], MODEL);
    assert_eq!(worker["capacity"], 64);
    assert_eq!(worker["in_flight"], 0);

    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.get("/v1/models").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let j = json_body(resp).await;
    assert_eq!(j["object"], "list");
    assert_eq!(j["data"][0]["id"], MODEL);
    assert_eq!(j["data"][0]["object"], "model");
    assert_eq!(j["data"][0]["owned_by"], "cocoon");
    assert!(j["data"][0]["created"].as_u64().unwrap() > 1_700_000_000);

    // The worker leaves the registry (and the model list) when its connection closes.
    w.kill();
    p.wait_workers(0).await;
    let j = json_body(c.get("/v1/models").await).await;
    assert_eq!(j["data"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_relay_and_usage_is_billed_per_client_and_worker() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("w-a");
    spec.coefficient_milli = 1500;
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;

    for http1 in [false, true] {
        let mut c = client_with(p.running.client_addr, 3 + u8::from(http1), http1).await;
        let before = p.ledger_balance(&c.account);
        let resp = c.send(chat(MODEL, 100_000, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let evs = events(resp.into_body()).await;
        let data: Vec<_> = evs.iter().filter(|(_, e)| e.name.is_none()).collect();
        assert_eq!(data.len(), 33, "32 chunks and [DONE]");
        assert!(data[0].1.data.contains("tok0 "));
        assert!(evs.last().unwrap().1.is_done());
        let usage = usage_of(&evs).expect("usage event");
        assert_eq!(usage.completion_tokens, 32);
        assert!(error_of(&evs).is_none());

        let cost = Prices::default().cost(&usage, 1500);
        let s = p.stats();
        let rec = &s["clients"][&c.account];
        assert_eq!(rec["requests"], 1);
        assert_eq!(rec["prompt_tokens"], usage.prompt_tokens);
        assert_eq!(rec["cached_tokens"], usage.cached_tokens);
        assert_eq!(rec["completion_tokens"], usage.completion_tokens);
        assert_eq!(rec["reasoning_tokens"], usage.reasoning_tokens);
        assert_eq!(rec["cost_nano"], cost);
        let after = p.ledger_balance(&c.account);
        assert_eq!(before.unwrap_or(1_000_000_000_000) - after.unwrap(), cost);
        assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
    }
    let s = p.stats();
    let wu = &s["worker_usage"]["1"];
    assert_eq!(wu["name"], "w-a");
    assert_eq!(wu["requests"], 2);
    assert_eq!(wu["completion_tokens"], 64);
    assert_eq!(s["tokens"]["completion"], 64);
    assert_eq!(s["requests"]["by_status"]["200"], 2);
    assert_eq!(s["workers"][0]["in_flight"], 0);
    assert!(s["workers"][0]["latency_ema_ms"].as_f64().is_some());

    // The worker got the body untouched and the proxy's metadata.
    let bodies = w.obs.bodies.lock().unwrap().clone();
    assert!(bodies.iter().all(|b| b.as_ref() == BODY));
    let h = w.obs.headers.lock().unwrap()[0].clone();
    assert_eq!(h[H_MODEL], MODEL);
    assert_eq!(
        h[H_MAX_TOKENS], "4096",
        "clamped to the model's max_completion_tokens"
    );
    assert_eq!(h[H_MAX_PROMPT_TOKENS], "4096");
    assert!(h.get("authorization").is_none());

    let (status, metrics) = p.admin("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("cocoon_proxy_requests_total{status=\"200\"} 2"));
    assert!(metrics.contains("cocoon_proxy_tokens_total{class=\"completion\"} 64"));
    assert!(metrics.contains("cocoon_proxy_workers_connected 1"));
    assert!(metrics.contains("cocoon_proxy_active_requests 0"));
    let (_, text) = p.admin("/stats").await;
    assert!(text.contains("w-a"));
    let (_, json) = p.admin("/jsonstats").await;
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["clients"].as_object().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths() {
    let p = start_proxy(|c| {
        // No queue: a request that finds the worker busy is refused at once (tests/queue.rs
        // covers the queue).
        c.queue.max_per_model = 0;
        c.accounts.default_balance_nano = None;
        c.accounts.balances.insert(
            ratls::account::AccountKey::from_seed([9; 32]).account_id(),
            1_000_000_000,
        );
        c.accounts.balances.insert(
            ratls::account::AccountKey::from_seed([8; 32]).account_id(),
            100,
        );
    })
    .await;
    let mut spec = WorkerSpec::new("w-a");
    spec.capacity = 1;
    spec.tokens = 400;
    spec.interval = Duration::from_millis(5);
    let _w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let mut rich = client(p.running.client_addr, 9).await;
    let mut poor = client(p.running.client_addr, 8).await;
    let mut stranger = client(p.running.client_addr, 7).await;

    // 404: unknown model, unknown path.
    let r = rich.send(chat("no-such-model", 16, None, BODY)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&json_body(r).await), "model_not_found");
    let r = rich.get("/v1/embeddings").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(&json_body(r).await), "not_found");

    // 400: missing metadata.
    let mut req = chat(MODEL, 16, None, BODY);
    req.headers_mut().remove(H_MODEL);
    let r = rich.send(req).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(json_body(r).await["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cocoon-model"));

    // 402: price cap below the reservation; balance too small; unknown account.
    let r = rich.send(chat(MODEL, 16, Some(10), BODY)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(json_body(r).await["error"]["message"]
        .as_str()
        .unwrap()
        .contains("price cap 10"));
    let r = poor.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error_kind(&json_body(r).await), "insufficient_funds");
    let r = stranger.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);

    // 413: body above 4 MiB (declared, and streamed without a length over HTTP/2).
    let big = vec![b' '; (4 << 20) + 1];
    let r = rich.send(chat(MODEL, 16, None, &big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_kind(&json_body(r).await), "payload_too_large");
    let mut req = chat(MODEL, 16, None, &big);
    req.headers_mut().remove(http::header::CONTENT_LENGTH);
    let r = rich.send(req).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 429: the only worker (capacity 1) is busy.
    let busy = rich.send(chat(MODEL, 400, None, BODY)).await;
    assert_eq!(busy.status(), StatusCode::OK);
    let r = rich.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_kind(&json_body(r).await), "no_capacity");
    let evs = events(busy.into_body()).await;
    assert!(usage_of(&evs).is_some());

    // Nothing stays reserved; refused requests are not billed.
    let s = p.stats();
    assert_eq!(s["clients"].as_object().unwrap().len(), 1);
    assert_eq!(s["clients"][&rich.account]["requests"], 1);
    for acct in [&rich.account, &poor.account] {
        assert_eq!(p.ledger.balance(acct).unwrap().reserved_nano, 0);
    }
    let by = &s["requests"]["by_status"];
    assert_eq!(by["404"], 2);
    assert_eq!(by["402"], 3);
    assert_eq!(by["413"], 2);
    assert_eq!(by["429"], 1);
}

/// A whole response body.
async fn body_bytes(resp: http::Response<hyper::body::Incoming>) -> Vec<u8> {
    use http_body_util::BodyExt;
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// A worker whose events arrive cut at every byte offset (into two DATA frames): the client
/// gets exactly the bytes the worker sent (comment lines and CRLF included), and the usage
/// event is found and billed every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cut_at_every_offset_are_relayed_byte_for_byte_and_billed() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("w-split");
    spec.behavior = Behavior::Replay;
    let _w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let usage = protocol::Usage {
        prompt_tokens: 5,
        cached_tokens: 1,
        completion_tokens: 2,
        reasoning_tokens: 0,
    };
    let stream: Vec<u8> = [
        &b": keepalive\n\n"[..],
        &token_event(MODEL, 0),
        b"data: {\"crlf\":1}\r\n\r\n",
        &protocol::sse::Event::usage(&usage).encode(),
        &protocol::sse::Event::done().encode(),
    ]
    .concat();
    let cost = Prices::default().cost(&usage, 1000);
    let mut c = client(p.running.client_addr, 5).await;
    let mut balance = 1_000_000_000_000;
    for at in 0..=stream.len() {
        let frames = [&stream[..at], &stream[at..]]
            .into_iter()
            .filter(|f| !f.is_empty())
            .map(text)
            .collect();
        let body = serde_json::to_vec(&Replay { frames, die: false }).unwrap();
        let resp = c.send(chat(MODEL, 16, None, &body)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(text(&body_bytes(resp).await), text(&stream), "cut at {at}");
        balance -= cost;
        assert_eq!(p.ledger_balance(&c.account), Some(balance), "cut at {at}");
    }
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
    let s = p.stats();
    assert_eq!(s["clients"][&c.account]["requests"], stream.len() + 1);
    assert_eq!(s["requests"]["stream_errors"], 0);
}

/// A worker lost in the middle of an event: the client gets the whole events before it, then
/// the proxy's error event — never the partial event — and nothing is billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lost_mid_event_gets_the_error_event_on_the_boundary() {
    let p = start_proxy(|_| {}).await;
    let mut c = client(p.running.client_addr, 6).await;
    let whole = [token_event(MODEL, 0), token_event(MODEL, 1)].concat();
    let third = token_event(MODEL, 2);
    for cut in [1, third.len() / 2, third.len() - 1] {
        let mut spec = WorkerSpec::new("w-lost");
        spec.behavior = Behavior::Replay;
        let w = FakeWorker::connect(p.running.worker_addr, spec).await;
        p.wait_workers(1).await;
        let frames = vec![
            text(&whole[..whole.len() / 3]),
            text(&[&whole[whole.len() / 3..], &third[..cut]].concat()),
        ];
        let body = serde_json::to_vec(&Replay { frames, die: true }).unwrap();
        let resp = c.send(chat(MODEL, 16, None, &body)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let got = body_bytes(resp).await;
        assert!(got.starts_with(&whole), "cut at {cut}: {}", text(&got));
        let tail = &got[whole.len()..];
        let evs = protocol::sse::Decoder::default().feed(tail).unwrap();
        assert_eq!(evs.len(), 1, "cut at {cut}: {}", text(tail));
        assert_eq!(evs[0].name.as_deref(), Some(protocol::sse::EVENT_ERROR));
        let err = protocol::ApiError::from_json(502, evs[0].data.as_bytes());
        assert_eq!(err.kind, protocol::ErrorKind::Upstream);
        assert_eq!(
            tail,
            protocol::sse::Event::error(&err).encode(),
            "cut at {cut}"
        );
        drop(w);
        p.wait_workers(0).await;
    }
    assert_eq!(p.ledger_balance(&c.account), Some(1_000_000_000_000));
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
    assert_eq!(p.stats()["requests"]["stream_errors"], 3);
}

/// A ledger that counts the reservations taken and released (the in-memory ledger inside).
#[derive(Debug)]
struct Counting {
    inner: proxy::MemoryLedger,
    reserves: std::sync::atomic::AtomicU64,
    releases: std::sync::atomic::AtomicU64,
}

impl Ledger for Counting {
    fn reserve(
        &self,
        account: &str,
        amount: u64,
    ) -> Result<proxy::ledger::Reservation, proxy::ledger::LedgerError> {
        self.reserves
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.reserve(account, amount)
    }
    fn commit(
        &self,
        reservation: &proxy::ledger::Reservation,
        cost: u64,
        usage: &protocol::Usage,
        worker: Option<&str>,
    ) -> Result<proxy::ledger::Committed, proxy::ledger::LedgerError> {
        self.inner.commit(reservation, cost, usage, worker)
    }
    fn release(
        &self,
        reservation: &proxy::ledger::Reservation,
    ) -> Result<(), proxy::ledger::LedgerError> {
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.release(reservation)
    }
    fn balance(&self, account: &str) -> Option<proxy::ledger::Balance> {
        self.inner.balance(account)
    }
    fn records(&self) -> std::collections::BTreeMap<String, proxy::ledger::UsageRecord> {
        self.inner.records()
    }
}

/// The funds held while a request's body uploads become its reservation at the worker when
/// the amounts agree (the worker picked is the cheapest): one reservation per request, none
/// released. At a dearer worker (the cheap one is full) the upload hold is released and the
/// dearer reservation taken. Either way nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_hold_becomes_the_reservation_at_the_cheapest_worker() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut config = proxy::ProxyConfig::local("test-proxy");
    config.accounts.default_balance_nano = Some(1_000_000_000_000);
    let ledger = std::sync::Arc::new(Counting {
        inner: proxy::MemoryLedger::new(&config.accounts),
        reserves: 0.into(),
        releases: 0.into(),
    });
    let running = start_proxy_on(
        config,
        worker_policy(),
        std::sync::Arc::new(ratls::SystemClock),
        ledger.clone(),
    )
    .await;
    let mut cheap = WorkerSpec::new("cheap");
    cheap.capacity = 1;
    cheap.tokens = 1000;
    cheap.interval = Duration::from_millis(1);
    let _cheap = FakeWorker::connect(running.worker_addr, cheap).await;
    wait_workers(&running, 1).await;
    let mut c = client(running.client_addr, 1).await;
    let counts = || (ledger.reserves.load(SeqCst), ledger.releases.load(SeqCst));
    for _ in 0..3 {
        let evs = events(c.send(chat(MODEL, 8, None, BODY)).await.into_body()).await;
        assert_eq!(usage_of(&evs).unwrap().completion_tokens, 8);
    }
    assert_eq!(
        counts(),
        (3, 0),
        "one reservation per request, none released"
    );

    // The cheap worker busy with a long stream; a dearer one joins.
    let long = c.send(chat(MODEL, 1000, None, BODY)).await;
    assert_eq!(long.status(), StatusCode::OK);
    let long = tokio::spawn(events(long.into_body()));
    let mut dear = WorkerSpec::new("dear");
    dear.coefficient_milli = 2000;
    dear.tokens = 8;
    dear.interval = Duration::from_millis(1);
    let _dear = FakeWorker::connect(running.worker_addr, dear).await;
    wait_workers(&running, 2).await;
    let mut c2 = client(running.client_addr, 1).await;
    let evs = events(c2.send(chat(MODEL, 8, None, BODY)).await.into_body()).await;
    assert_eq!(usage_of(&evs).unwrap().completion_tokens, 8);
    let long = long.await.unwrap();
    assert_eq!(usage_of(&long).unwrap().completion_tokens, 1000);
    // The long one: one more; the one at the dearer worker: the hold released, one taken.
    assert_eq!(counts(), (6, 1));
    let b = ledger.balance(&c.account).unwrap();
    assert_eq!(b.reserved_nano, 0);
}
