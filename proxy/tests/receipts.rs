//! Billing of encrypted requests on worker receipts: a fake worker with end-to-end keys in its
//! attested claims opens the sealed request and answers sealed, with a receipt that is valid,
//! edited after signing, for another request, or missing. Only the valid one is billed. And
//! the real worker rotating its keys with its certificate mid-run: every request answered is
//! charged once.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use protocol::e2e::H_BUDGET_TOKENS;
use protocol::sse::{EVENT_E2E, EVENT_RECEIPT};
use protocol::usage::Prices;

/// A chat request sealed to `e2e`'s key, with its binding headers.
fn sealed(e2e: &FakeE2e, n: u64) -> http::Request<Full<Bytes>> {
    sealed_to(MODEL, &[e2e.key.config().clone()], n)
}

/// A proxy with one fake worker holding end-to-end keys from `seed` (answering sealed
/// requests per `mode`, or with `behavior` when that is a status), and a client of it.
async fn sealed_network(
    seed: u8,
    mode: ReceiptMode,
    behavior: Behavior,
) -> (TestProxy, Arc<FakeE2e>, FakeWorker, Client) {
    let p = start_proxy(|_| {}).await;
    let e2e = Arc::new(FakeE2e::new(seed, mode));
    let w = FakeWorker::connect(
        p.running.worker_addr,
        WorkerSpec {
            e2e: Some(e2e.clone()),
            behavior,
            ..WorkerSpec::new("sealed")
        },
    )
    .await;
    p.wait_workers(1).await;
    let c = client(p.running.client_addr, 1).await;
    (p, e2e, w, c)
}

/// One sealed request to a fresh worker answering with `mode`; returns the proxy's stats
/// and the events the client received.
async fn one(mode: ReceiptMode) -> (serde_json::Value, Vec<protocol::sse::Event>, String) {
    let (p, e2e, _w, mut c) = sealed_network(5, mode, Behavior::Normal).await;
    let resp = c.send(sealed(&e2e, 1)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let evs: Vec<_> = events(resp.into_body())
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    (p.stats(), evs, c.account.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_receipt_is_billed_at_its_usage() {
    let (s, evs, account) = one(ReceiptMode::Valid).await;
    // The proxy relayed sealed chunks and the receipt, nothing in plaintext.
    assert!(evs
        .iter()
        .all(|e| matches!(e.name.as_deref(), Some(EVENT_E2E) | Some(EVENT_RECEIPT))));
    assert_eq!(s["requests"]["receipts_valid"], 1);
    assert_eq!(s["requests"]["receipts_invalid"], 0);
    let usage = FakeE2e::new(5, ReceiptMode::Valid).usage;
    assert_eq!(s["clients"][&account]["requests"], 1);
    assert_eq!(
        s["clients"][&account]["cost_nano"],
        Prices::default().cost(&usage, 1000)
    );
    assert_eq!(s["clients"][&account]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_foreign_or_missing_receipt_is_not_billed() {
    for (mode, invalid) in [
        (ReceiptMode::Edited, 1),
        (ReceiptMode::OtherRequest, 1),
        (ReceiptMode::Missing, 0),
    ] {
        let (s, evs, account) = one(mode).await;
        assert!(!evs.is_empty(), "{mode:?}: the stream is relayed");
        assert_eq!(s["requests"]["receipts_valid"], 0, "{mode:?}");
        assert_eq!(s["requests"]["receipts_invalid"], invalid, "{mode:?}");
        assert!(
            s["clients"].get(&account).is_none() || s["clients"][&account]["cost_nano"] == 0,
            "{mode:?}: billed {}",
            s["clients"][&account]
        );
        assert_eq!(s["cost_nano"], 0, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_request_the_worker_refuses_is_not_charged() {
    // The worker's one generic 400 for an envelope that does not open (edited bytes or bound
    // headers): passed on, not retried, nothing billed, the reservation released.
    let (p, e2e, w, mut c) = sealed_network(8, ReceiptMode::Valid, Behavior::Status(400)).await;
    let resp = c.send(sealed(&e2e, 4)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let s = p.stats();
    assert_eq!(s["requests"]["retries"], 0);
    assert_eq!(s["cost_nano"], 0);
    assert_eq!(w.obs.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let b = proxy::ledger::Ledger::balance(p.ledger.as_ref(), &c.account).expect("account");
    assert_eq!(b.reserved_nano, 0);
    assert_eq!(b.balance_nano, 1_000_000_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_budget_travels_beside_the_bound_max_tokens() {
    let (_p, e2e, w, mut c) = sealed_network(6, ReceiptMode::Valid, Behavior::Normal).await;
    let resp = c.send(sealed(&e2e, 2)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = events(resp.into_body()).await;
    let h = w.obs.headers.lock().unwrap()[0].clone();
    // The client's bound header is forwarded unchanged; the proxy's reservation is separate.
    assert_eq!(h[protocol::meta::H_MAX_TOKENS], "16");
    assert_eq!(h[H_BUDGET_TOKENS], "16");
    // A sealed request whose recipient is not connected: 421, nothing reaches a worker.
    let other = FakeE2e::new(7, ReceiptMode::Valid);
    let resp = c.send(sealed(&other, 3)).await;
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(
        error_kind(&json_body(resp).await),
        "e2e_recipient_unavailable"
    );
    assert_eq!(w.obs.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The key configs of the workers the proxy's directory lists for `model`.
async fn directory(c: &mut Client, model: &str) -> Vec<protocol::e2e::KeyConfig> {
    use base64::Engine as _;
    let resp = c
        .get(&format!("{}?model={model}", protocol::paths::WORKERS))
        .await;
    let status = resp.status();
    let body = json_body(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dir: protocol::e2e::Directory = serde_json::from_value(body).unwrap();
    dir.workers
        .iter()
        .map(|e| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(&e.cert)
                .unwrap();
            let ev = ratls::parse_cert(&der).unwrap();
            protocol::e2e::WorkerKeys::from_claims(&ev.claims.extra)
                .unwrap()
                .unwrap()
                .key_config
        })
        .collect()
}

/// Sends `req`; whether it was answered (200 with a receipt in the stream) or not: refused
/// with 421 (its recipients are not connected, or the connection of its only recipient
/// closed while the request was on it: the worker moving to its renewed certificate), or 502
/// when every recipient it was tried on failed; no receipt, nothing charged — the final
/// counts check that.
async fn answered(c: &mut Client, req: http::Request<Full<Bytes>>) -> bool {
    let resp = c.send(req).await;
    match resp.status() {
        StatusCode::OK => {
            let evs = events(resp.into_body()).await;
            assert!(
                evs.iter()
                    .any(|(_, e)| e.name.as_deref() == Some(EVENT_RECEIPT)),
                "an answered request carries a receipt"
            );
            true
        }
        StatusCode::MISDIRECTED_REQUEST | StatusCode::BAD_GATEWAY => false,
        s => panic!("unexpected status {s}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_mid_run_charges_every_answered_request_once() {
    use worker::engine::stub::StubEngine;
    let p = start_proxy(|_| {}).await;
    let worker = common::real::start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 4, 0.0),
        worker::service::ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    let mut c = client(p.running.client_addr, 1).await;
    let old = directory(&mut c, "stub").await;
    assert_eq!(old.len(), 1);
    let mut n = 0;
    let mut ok = 0u64;
    for _ in 0..4 {
        n += 1;
        ok += u64::from(answered(&mut c, sealed_to("stub", &old, n)).await);
    }
    assert_eq!(ok, 4);

    // The certificate is renewed: new keys are published, the worker moves its connection
    // onto the new certificate (the old one serves until the new one registered: the
    // directory never goes empty), the old keys stay usable for the grace period.
    let id = worker.identity().clone();
    tokio::task::spawn_blocking(move || id.renew_at(now()))
        .await
        .unwrap()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let new = loop {
        let keys = directory(&mut c, "stub").await;
        if let Some(k) = keys.iter().find(|k| !old.contains(k)) {
            break k.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no new keys listed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Requests still sealed to the old key (a client with a cached directory): answered by
    // the old set while its connection is registered, else a 421 the client reseals after.
    // Either way, charged only when answered.
    let mut refused = 0;
    for _ in 0..3 {
        n += 1;
        if answered(&mut c, sealed_to("stub", &old, n)).await {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    for keys in [vec![new.clone()], vec![old[0].clone(), new.clone()]] {
        for _ in 0..3 {
            n += 1;
            assert!(answered(&mut c, sealed_to("stub", &keys, n)).await);
            ok += 1;
        }
    }
    let s = p.stats();
    assert_eq!(s["requests"]["receipts_valid"], ok, "refused {refused}");
    assert_eq!(s["requests"]["receipts_invalid"], 0);
    assert_eq!(s["clients"][&c.account]["requests"], ok);
    // "one two three" is 4 prompt tokens to the stub (3 words + 1 per message), 4 generated.
    let usage = protocol::Usage {
        prompt_tokens: 4,
        completion_tokens: 4,
        ..protocol::Usage::default()
    };
    assert_eq!(
        s["clients"][&c.account]["cost_nano"],
        ok * Prices::default().cost(&usage, 1000)
    );
}

/// The one recipient of a sealed request fails before answering (5xx): no other recipient is
/// connected, so no retry here can serve it. The proxy answers 421 e2e_recipient_unavailable
/// (the client fetches the keys again and reseals) rather than the worker's 502; nothing is
/// billed. A recipient that is only busy (429) stays a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_only_recipient_is_answered_421_so_the_client_reseals() {
    let (p, e2e, w, mut c) = sealed_network(9, ReceiptMode::Valid, Behavior::Status(503)).await;
    let resp = c.send(sealed(&e2e, 5)).await;
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    let body = json_body(resp).await;
    assert_eq!(error_kind(&body), "e2e_recipient_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("failed before answering"), "{message}");
    assert_eq!(w.obs.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(p.stats()["cost_nano"], 0);

    let (_p, e2e, _w, mut c) = sealed_network(10, ReceiptMode::Valid, Behavior::Status(429)).await;
    let resp = c.send(sealed(&e2e, 6)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A sealed stream still running at the proxy's drain deadline: the proxy stops it at the
/// real worker, bills the receipt over the work done, and puts its error event after the
/// receipt and before the final chunk (which holds the `[DONE]` the client releases last), so
/// the client reads the error first and still verifies the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_stream_stopped_at_the_drain_deadline_is_billed_on_its_receipt() {
    use protocol::sse::EVENT_ERROR;
    use worker::engine::stub::StubEngine;
    let p = start_proxy(|_| {}).await;
    let _worker = common::real::start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 16, 10.0),
        worker::service::ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client(p.running.client_addr, 1).await;
    let keys = directory(&mut c, "stub").await;
    let resp = c.send(sealed_to("stub", &keys, 1)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let reading = tokio::spawn(events(resp.into_body()));
    let started = std::time::Instant::now();
    let drain = std::time::Duration::from_millis(400);
    p.running.shutdown(drain).await;
    let evs: Vec<_> = reading.await.unwrap().into_iter().map(|(_, e)| e).collect();
    let names: Vec<&str> = evs
        .iter()
        .map(|e| e.name.as_deref().unwrap_or(""))
        .collect();
    let n = names.len();
    assert!(n >= 4, "{names:?}");
    assert_eq!(
        &names[n - 3..],
        [EVENT_RECEIPT, EVENT_ERROR, EVENT_E2E],
        "{names:?}"
    );
    let err = protocol::ApiError::from_json(502, evs[n - 2].data.as_bytes());
    assert_eq!(err.kind, protocol::ErrorKind::Unavailable);
    assert!(err.message.contains("billed"), "{}", err.message);
    assert!(started.elapsed() < drain + proxy::server::CUT_FLUSH);
    // Billed on the receipt: the prompt and the tokens generated before the deadline.
    use base64::Engine as _;
    let signed = base64::engine::general_purpose::STANDARD
        .decode(&evs[n - 3].data)
        .unwrap();
    let (receipt, _) = protocol::e2e::Receipt::parse_unverified(&signed).unwrap();
    assert_eq!(receipt.finish_reason, "cancelled");
    assert!(
        (1..16).contains(&receipt.usage.completion_tokens),
        "{:?}",
        receipt.usage
    );
    let s = proxy::admin::json_stats(&state);
    assert_eq!((s.requests.receipts_valid, s.requests.stopped), (1, 1));
    let b = proxy::Ledger::balance(&*p.ledger, &c.account).unwrap();
    assert_eq!(b.reserved_nano, 0);
    let spent = s.clients[&c.account].cost_nano;
    assert_eq!(spent, Prices::default().cost(&receipt.usage, 1000));
}

/// A client of an encrypted stream that stops reading (a 4 KiB HTTP/2 window that never
/// moves): at `client_stall_secs` the proxy stops the generation at the worker and bills it
/// on the worker's receipt, like a plaintext one on its usage; the worker keeps nothing
/// unbilled and is not blamed. When the client reads again its stream ends with the error
/// event naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sealed_stream_is_billed_on_its_receipt() {
    let p = start_proxy(|c| c.client.stall_timeout = std::time::Duration::from_secs(2)).await;
    let worker = common::real::start_long_stub_worker(p.running.worker_addr);
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let keys = directory(&mut client(p.running.client_addr, 1).await, "stub").await;
    let mut c = client_with_window(p.running.client_addr, 2, 4 << 10).await;
    let resp = c.send(sealed_to_max("stub", &keys, 1, 100_000)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    loop {
        let s = proxy::admin::json_stats(&state);
        let r = &s.requests;
        if (r.client_stalls, r.stopped, r.receipts_valid) == (1, 1, 1) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{:?}",
            s.requests
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    common::real::assert_stopped_and_billed(&worker, 1);
    let s = proxy::admin::json_stats(&state);
    assert_eq!(s.requests.abandoned, 0);
    assert_eq!(s.requests.receipts_invalid, 0);
    assert!(
        s.clients[&c.account].completion_tokens > 0,
        "{:?}",
        s.clients[&c.account]
    );
    let b = proxy::Ledger::balance(&*p.ledger, &c.account).unwrap();
    assert_eq!(b.reserved_nano, 0);
    // Reading again: what was queued, the receipt it was billed on, then the error event.
    let evs = tokio::time::timeout(std::time::Duration::from_secs(20), events(resp.into_body()))
        .await
        .expect("the stalled client's stream ends");
    let n = evs.len();
    let last = &evs[n - 1].1;
    assert_eq!(
        last.name.as_deref(),
        Some(protocol::sse::EVENT_ERROR),
        "{last:?}"
    );
    assert!(last.data.contains("client_stall_secs"), "{}", last.data);
    assert!(last.data.contains("billed"), "{}", last.data);
    let receipt = &evs[n - 2].1;
    assert_eq!(receipt.name.as_deref(), Some(EVENT_RECEIPT), "{receipt:?}");
    use base64::Engine as _;
    let signed = base64::engine::general_purpose::STANDARD
        .decode(&receipt.data)
        .unwrap();
    let (receipt, _) = protocol::e2e::Receipt::parse_unverified(&signed).unwrap();
    assert_eq!(receipt.finish_reason, "cancelled");
    assert_eq!(
        proxy::admin::json_stats(&state).clients[&c.account].cost_nano,
        Prices::default().cost(&receipt.usage, 1000)
    );
    assert_eq!(proxy::admin::json_stats(&state).workers[0].failures, 0);
}
