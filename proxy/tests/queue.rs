//! Admission: the per-model queue (fair between accounts, bounded, with a deadline) and the
//! token budget of workers (proxy::queue).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use proxy::Ledger as _;

const PROMPT: Duration = Duration::from_secs(10);

async fn with_worker(p: &TestProxy, spec: WorkerSpec) -> FakeWorker {
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    w
}

fn queued(p: &TestProxy) -> u64 {
    p.stats()["queues"][MODEL]["queued"].as_u64().unwrap_or(0)
}

fn outcome(p: &TestProxy, what: &str) -> u64 {
    p.stats()["queue_outcomes"][what].as_u64().unwrap()
}

/// 32 concurrent streams on one worker of capacity 4: 4 run, 28 wait in the queue, all 32
/// complete and are billed; the worker never has more than 4 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streams_on_capacity_four_all_complete() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("four");
    spec.capacity = 4;
    spec.tokens = 16;
    spec.interval = Duration::from_millis(40); // ~650 ms per stream
    let w = with_worker(&p, spec).await;
    let state = p.running.state().clone();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(w) = state.registry.list().first() {
                    peak.fetch_max(u64::from(w.snapshot().in_flight), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let clients = [
        client(p.running.client_addr, 1).await,
        client(p.running.client_addr, 2).await,
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..16 {
            let mut c = c.stream_handle().unwrap();
            tasks.push(tokio::spawn(async move {
                let resp = c.send(chat(MODEL, 64, None, BODY)).await;
                assert_eq!(resp.status(), StatusCode::OK);
                events(resp.into_body()).await
            }));
        }
    }
    for t in tasks {
        let evs = t.await.unwrap();
        assert!(error_of(&evs).is_none());
        assert_eq!(usage_of(&evs).unwrap().completion_tokens, 16);
    }
    sampler.abort();
    println!("32 streams through 4 slots in {:?}", started.elapsed());
    assert_eq!(peak.load(Ordering::Relaxed), 4);
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 32);
    assert_eq!(w.obs.completed.load(Ordering::SeqCst), 32);
    let s = p.stats();
    assert_eq!(s["requests"]["by_status"]["200"], 32);
    assert_eq!(
        s["queue_outcomes"]["admitted"], 28,
        "all but the first 4 waited"
    );
    assert_eq!(s["queue_outcomes"]["full"], 0);
    assert_eq!(s["queues"][MODEL]["queued"], 0);
    assert!(s["queues"][MODEL]["wait_ema_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(s["workers"][0]["in_flight"], 0);
    assert_eq!(s["workers"][0]["tokens_in_flight"], 0);
    let (_, metrics) = p.admin("/metrics").await;
    assert!(metrics.contains(&format!("cocoon_proxy_queue_depth{{model=\"{MODEL}\"}} 0")));
    assert!(metrics.contains("cocoon_proxy_queue_outcomes_total{outcome=\"admitted\"} 28"));
}

/// With 4 running and 32 queued (queue_max_per_model = 32), one more request of one of the
/// two (equally loaded) accounts gets 429 with Retry-After; the queue and the worker are
/// untouched by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let p = start_proxy(|c| c.queue.max_per_model = 32).await;
    let mut spec = WorkerSpec::new("hang");
    spec.capacity = 4;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let mut waiting = Vec::new();
    let mut clients = Vec::new();
    for seed in 1..=2u8 {
        let c = client(p.running.client_addr, seed).await;
        for _ in 0..18 {
            let mut c = c.stream_handle().unwrap();
            waiting.push(tokio::spawn(async move {
                c.send(chat(MODEL, 16, None, BODY)).await
            }));
        }
        clients.push(c);
    }
    wait_until("4 running, 32 queued", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 4 && queued(&p) == 32
    })
    .await;
    let c = &mut clients[0];
    let started = Instant::now();
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = json_body(resp).await;
    assert_eq!(error_kind(&body), "no_capacity");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("queue is full (32 waiting"), "{message}");
    assert_eq!(queued(&p), 32);
    assert_eq!(outcome(&p, "full"), 1);
    assert_eq!(outcome(&p, "displaced"), 0);
    assert_eq!(p.stats()["client_refusals"]["queue_full"], 1);
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 4);
    for t in waiting {
        t.abort();
    }
    wait_until("queue emptied by the clients leaving", PROMPT, || {
        queued(&p) == 0 && p.stats()["workers"][0]["in_flight"] == 0
    })
    .await;
}

/// Sends `n` requests of client `c` one after another, each placed (at the worker or in the
/// queue) before the next is sent; returns their tasks.
async fn send_in_order(
    p: &TestProxy,
    w: &FakeWorker,
    c: &Client,
    n: u64,
) -> Vec<tokio::task::JoinHandle<http::Response<hyper::body::Incoming>>> {
    let placed = || w.obs.requests.load(Ordering::SeqCst) + queued(p);
    let before = placed();
    let mut tasks = Vec::new();
    for i in 1..=n {
        let mut c = c.stream_handle().unwrap();
        tasks.push(tokio::spawn(async move {
            c.send(chat(MODEL, 16, None, BODY)).await
        }));
        wait_until("the request placed", PROMPT, || placed() == before + i).await;
    }
    tasks
}

/// Fair order between accounts: account A fills both slots of a worker and queues 6 more;
/// account B's one request, queued last, gets the first slot that frees (A still has one in
/// flight, B none) instead of waiting behind A's whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_account_does_not_wait_behind_the_first_accounts_backlog() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("two");
    spec.capacity = 2;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let in_flight = p.running.state().queues.in_flight.clone();
    let a = client(p.running.client_addr, 1).await;
    let a_account = a.account.clone();
    // In order: the first two take the slots, the rest queue in arrival order.
    let mut a_tasks = send_in_order(&p, &w, &a, 8).await;
    assert_eq!(in_flight.of(&a_account), 2);
    assert_eq!(queued(&p), 6);
    let mut b = client(p.running.client_addr, 2).await;
    let b_account = b.account.clone();
    let b_task = tokio::spawn(async move { b.send(chat(MODEL, 16, None, BODY)).await });
    wait_until("B queued", PROMPT, || queued(&p) == 7).await;

    // One of A's running requests ends: its slot goes to B.
    a_tasks.remove(0).abort();
    wait_until("the freed slot taken", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(in_flight.of(&b_account), 1, "B got the slot");
    assert_eq!(in_flight.of(&a_account), 1);
    assert_eq!(queued(&p), 6, "A's 6 still wait");

    // A's other running request ends: A holds no slot now, B one, so the slot goes to A's
    // oldest waiter.
    a_tasks.remove(0).abort();
    wait_until("the second freed slot taken", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 4
    })
    .await;
    assert_eq!(in_flight.of(&a_account), 1);
    assert_eq!(in_flight.of(&b_account), 1);
    assert_eq!(queued(&p), 5);
    b_task.abort();
    for t in a_tasks {
        t.abort();
    }
    wait_until("all gone", PROMPT, || {
        queued(&p) == 0 && p.stats()["workers"][0]["in_flight"] == 0
    })
    .await;
    assert_eq!(in_flight.of(&a_account), 0);
    assert_eq!(in_flight.of(&b_account), 0);
}

/// A full queue against two accounts: account A holds the worker's slot and fills the queue
/// (4 places); A's next request is refused, but B's takes the place of A's newest waiter,
/// which gets 429 naming why. B can take places until both accounts are equally loaded (in
/// flight plus queued); then B is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_keeps_a_fair_share_for_a_second_account() {
    let p = start_proxy(|c| c.queue.max_per_model = 4).await;
    let mut spec = WorkerSpec::new("one");
    spec.capacity = 1;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let a = client(p.running.client_addr, 1).await;
    let mut a_tasks = send_in_order(&p, &w, &a, 5).await;
    assert_eq!(queued(&p), 4);
    // A alone: refused, as before.
    let mut a_more = a.stream_handle().unwrap();
    let resp = a_more.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(outcome(&p, "full"), 1);

    // B's first request: A's newest waiter gives up its place.
    let b = client(p.running.client_addr, 2).await;
    let mut b_tasks = Vec::new();
    let mut b0 = b.stream_handle().unwrap();
    b_tasks.push(tokio::spawn(async move {
        b0.send(chat(MODEL, 16, None, BODY)).await
    }));
    let displaced = a_tasks.pop().unwrap().await.unwrap();
    assert_eq!(displaced.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(displaced.headers()["retry-after"], "1");
    let body = json_body(displaced).await;
    assert_eq!(error_kind(&body), "no_capacity");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("gave its place"), "{message}");
    assert_eq!(outcome(&p, "displaced"), 1);
    assert_eq!(queued(&p), 4);

    // B's second: A (1 running + 3 queued = 4) is still heavier than B would be (2).
    let mut b1 = b.stream_handle().unwrap();
    b_tasks.push(tokio::spawn(async move {
        b1.send(chat(MODEL, 16, None, BODY)).await
    }));
    let displaced = a_tasks.pop().unwrap().await.unwrap();
    assert_eq!(displaced.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(outcome(&p, "displaced"), 2);
    assert_eq!(queued(&p), 4);

    // B's third would make B (3) as loaded as A (1 + 2): refused.
    let mut b2 = b.stream_handle().unwrap();
    let resp = b2.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let message = json_body(resp).await["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!message.contains("gave its place"), "{message}");
    assert_eq!(outcome(&p, "full"), 2);
    assert_eq!(outcome(&p, "displaced"), 2);
    assert_eq!(p.stats()["client_refusals"]["queue_full"], 4);
    assert_eq!(queued(&p), 4);
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 1);
    for t in a_tasks.into_iter().chain(b_tasks) {
        t.abort();
    }
    wait_until("all gone", PROMPT, || {
        queued(&p) == 0 && p.stats()["workers"][0]["in_flight"] == 0
    })
    .await;
}

/// queue_max_per_model = 0: no queue, an immediate 429 (with Retry-After).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_the_refusal_is_immediate() {
    let p = start_proxy(|c| c.queue.max_per_model = 0).await;
    let mut spec = WorkerSpec::new("one");
    spec.capacity = 1;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let mut c = client(p.running.client_addr, 1).await;
    let mut busy = c.stream_handle().unwrap();
    let first = tokio::spawn(async move { busy.send(chat(MODEL, 16, None, BODY)).await });
    wait_until("the first at the worker", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_kind(&json_body(resp).await), "no_capacity");
    first.abort();
}

/// A request that waits past queue_timeout_secs gets 503 service_unavailable with
/// Retry-After, and leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_deadline_answers_503() {
    let p = start_proxy(|c| c.queue.timeout = Duration::from_secs(1)).await;
    let mut spec = WorkerSpec::new("one");
    spec.capacity = 1;
    spec.behavior = Behavior::Hang;
    let w = with_worker(&p, spec).await;
    let mut c = client(p.running.client_addr, 1).await;
    let mut busy = c.stream_handle().unwrap();
    let first = tokio::spawn(async move { busy.send(chat(MODEL, 16, None, BODY)).await });
    wait_until("the first at the worker", PROMPT, || {
        w.obs.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    let account = c.account.clone();
    let started = Instant::now();
    let resp = c.send(chat(MODEL, 16, None, BODY)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = json_body(resp).await;
    assert_eq!(error_kind(&body), "service_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("within queue_timeout_secs (1s)"),
        "{message}"
    );
    assert_eq!(queued(&p), 0);
    assert_eq!(outcome(&p, "expired"), 1);
    assert_eq!(p.stats()["client_refusals"]["queue_timeout"], 1);
    assert_eq!(
        w.obs.requests.load(Ordering::SeqCst),
        1,
        "never reached the worker"
    );
    first.abort();
    wait_until("nothing reserved", PROMPT, || {
        p.ledger.balance(&account).unwrap().reserved_nano == 0
    })
    .await;
}

/// A queued client that goes away leaves the queue at once (its funds released); the request
/// behind it moves up and is served when the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_that_disconnects_frees_its_place() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("one");
    spec.capacity = 1;
    spec.tokens = 60;
    spec.interval = Duration::from_millis(25); // 1.5 s per stream
    let w = with_worker(&p, spec).await;
    let mut a = client(p.running.client_addr, 1).await;
    let running = a.send(chat(MODEL, 64, None, BODY)).await;
    assert_eq!(running.status(), StatusCode::OK);
    let running = tokio::spawn(events(running.into_body()));

    // B queues, then its connection goes away.
    let mut b = client(p.running.client_addr, 2).await;
    let b_account = b.account.clone();
    let b_task = tokio::spawn(async move { b.send(chat(MODEL, 64, None, BODY)).await });
    wait_until("B queued", PROMPT, || queued(&p) == 1).await;
    assert!(p.ledger.balance(&b_account).unwrap().reserved_nano > 0);
    // C queues behind B.
    let mut c = client(p.running.client_addr, 3).await;
    let c_task = tokio::spawn(async move {
        let resp = c.send(chat(MODEL, 64, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        events(resp.into_body()).await
    });
    wait_until("C queued", PROMPT, || queued(&p) == 2).await;
    let left = Instant::now();
    b_task.abort(); // drops B's connection
    wait_until("B left the queue", PROMPT, || queued(&p) == 1).await;
    println!("B left the queue {:?} after disconnecting", left.elapsed());
    assert!(left.elapsed() < Duration::from_secs(1));
    assert_eq!(p.ledger.balance(&b_account).unwrap().reserved_nano, 0);
    assert_eq!(outcome(&p, "abandoned"), 1);

    assert!(usage_of(&running.await.unwrap()).is_some());
    let evs = c_task.await.unwrap();
    assert_eq!(usage_of(&evs).unwrap().completion_tokens, 60);
    assert_eq!(queued(&p), 0);
    assert_eq!(
        w.obs.requests.load(Ordering::SeqCst),
        2,
        "B never reached the worker"
    );
    assert_eq!(outcome(&p, "admitted"), 1);
}

/// The token budget: with worker_token_budget_percent = 25, a worker of capacity 4 and
/// context 8192 holds 8192 tokens. A big request (body + 4090 completion tokens) runs; a
/// second big one does not fit and waits although slots are free; small requests that fit
/// go ahead of it — until it has been overtaken MAX_OVERTAKES times: then the next small one
/// waits behind it, and both run once the first big one ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_request_does_not_block_small_ones_nor_starve() {
    let p = start_proxy(|c| c.worker_token_budget_percent = 25).await;
    let mut spec = WorkerSpec::new("budget");
    spec.capacity = 4;
    spec.tokens = 150;
    spec.interval = Duration::from_millis(25); // big streams: ~3.75 s
    let _w = with_worker(&p, spec).await;
    assert_eq!(p.stats()["workers"][0]["token_budget"], 8192);
    let body_tokens = BODY.len() as u64; // the prompt estimate: body bytes (< 4096)
    let big_tokens = body_tokens + 4090;

    let mut c = client(p.running.client_addr, 1).await;
    let big1 = c.send(chat(MODEL, 4090, None, BODY)).await;
    assert_eq!(big1.status(), StatusCode::OK);
    let big1 = tokio::spawn(events(big1.into_body()));
    assert_eq!(p.stats()["workers"][0]["tokens_in_flight"], big_tokens);

    let mut c2 = c.stream_handle().unwrap();
    let big2 = tokio::spawn(async move {
        let resp = c2.send(chat(MODEL, 4090, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        events(resp.into_body()).await
    });
    wait_until("big 2 queued", PROMPT, || queued(&p) == 1).await;
    assert_eq!(p.stats()["workers"][0]["in_flight"], 1, "slots are free");

    // Small requests (1 completion token) overtake it, each at once.
    for i in 0..proxy::queue::MAX_OVERTAKES {
        let resp = c.send(chat(MODEL, 1, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK, "small {i}");
        assert!(usage_of(&events(resp.into_body()).await).is_some());
        assert_eq!(queued(&p), 1, "big 2 still waits after small {i}");
    }
    assert!(!big1.is_finished(), "the test needs big 1 still running");
    // Overtaken 16 times, big 2 now blocks the next small one.
    let mut c3 = c.stream_handle().unwrap();
    let late = tokio::spawn(async move {
        let resp = c3.send(chat(MODEL, 1, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        (Instant::now(), events(resp.into_body()).await)
    });
    wait_until("the late small one queued", PROMPT, || queued(&p) == 2).await;
    assert!(!big1.is_finished());
    let big1_evs = big1.await.unwrap();
    let big1_done = Instant::now();
    assert!(usage_of(&big1_evs).is_some());
    let (late_at, late_evs) = late.await.unwrap();
    assert!(late_at >= big1_done - Duration::from_millis(100));
    assert!(usage_of(&late_evs).is_some());
    assert!(usage_of(&big2.await.unwrap()).is_some());
    let s = p.stats();
    assert_eq!(s["queues"][MODEL]["queued"], 0);
    assert_eq!(s["workers"][0]["tokens_in_flight"], 0);
    assert_eq!(s["queue_outcomes"]["admitted"], 2);
}

/// A client cancels one of the 8 streams that fill a real worker while another request waits
/// in the proxy's queue: the proxy frees its slot at the reset and sends the queued request at
/// once, before the worker's cancelled generation has given back its slot. The worker waits
/// for that slot (`worker::service::CAPACITY_WAIT`) instead of answering 429, so every queued
/// request is served and the worker is not blamed. Before, nearly every round ended in a 502
/// "worker at capacity" for the client that had waited its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_a_cancelled_stream_is_served() {
    use common::real::{start_real_worker, BODY_STUB};
    use worker::engine::stub::StubEngine;
    use worker::service::ServiceOptions;

    let p = start_proxy(|_| {}).await;
    let worker = start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 4000, 200.0),
        ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    let c = client(p.running.client_addr, 1).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let resp = c
            .stream_handle()
            .unwrap()
            .send(chat("stub", 4000, None, BODY_STUB))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    for round in 0..20 {
        let mut h = c.stream_handle().unwrap();
        let waiting =
            tokio::spawn(async move { h.send(chat("stub", 4000, None, BODY_STUB)).await });
        let started = Instant::now();
        while p.stats()["queues"]["stub"]["queued"].as_u64().unwrap_or(0) == 0 {
            assert!(started.elapsed() < PROMPT, "round {round}: never queued");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(held.remove(0));
        let resp = tokio::time::timeout(PROMPT, waiting)
            .await
            .expect("answered in time")
            .unwrap();
        let status = resp.status();
        if status != StatusCode::OK {
            let body = raw_body(resp.into_body()).await;
            panic!("round {round}: {status} {}", String::from_utf8_lossy(&body));
        }
        held.push(resp);
    }
    let w = worker.service().stats().snapshot();
    // Each dropped stream was stopped on the proxy's cancel (and billed), not reset.
    assert_eq!((w.no_capacity, w.stopped, w.cancelled), (0, 20, 0), "{w:?}");
    let s = p.stats();
    assert_eq!(s["workers"][0]["failures"], 0, "{}", s["workers"][0]);
    assert_eq!(s["requests"]["worker_busy"], 0);
    drop(held);
    let _ = worker.shutdown(Duration::from_secs(1)).await;
}

/// An encrypted request waiting for its only recipient (full) does not hold up the waiters
/// behind it that another worker can take: when a slot frees at the other worker, the plain
/// request queued behind the sealed one gets it. Before, serving the queue stopped at the
/// first waiter with no free slot among its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_request_waiting_for_its_recipient_does_not_block_others() {
    let p = start_proxy(|_| {}).await;
    let e2e = std::sync::Arc::new(FakeE2e::new(5, ReceiptMode::Valid));
    // S: the sealed request's only recipient; plain requests hang there.
    let s = FakeWorker::connect(
        p.running.worker_addr,
        WorkerSpec {
            e2e: Some(e2e.clone()),
            behavior: Behavior::Hang,
            capacity: 1,
            ..WorkerSpec::new("sealed")
        },
    )
    .await;
    // P: no end-to-end keys; streams for ~1 s.
    let mut spec = WorkerSpec::new("plain");
    spec.capacity = 1;
    spec.tokens = 40;
    spec.interval = Duration::from_millis(25);
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(2).await;
    let c = client(p.running.client_addr, 1).await;
    // Two plain requests fill both slots: one hangs at S, one streams at P.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut h = c.stream_handle().unwrap();
        busy.push(tokio::spawn(async move {
            h.send(chat(MODEL, 64, None, BODY)).await
        }));
    }
    wait_until("both workers busy", PROMPT, || {
        s.obs.requests.load(Ordering::SeqCst) == 1 && w.obs.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    // The sealed request waits for S; a plain one waits behind it.
    let mut h = c.stream_handle().unwrap();
    let sealed = tokio::spawn(async move {
        h.send(sealed_to(MODEL, &[e2e.key.config().clone()], 1))
            .await
    });
    wait_until("sealed queued", PROMPT, || queued(&p) == 1).await;
    let mut h = c.stream_handle().unwrap();
    let plain = tokio::spawn(async move {
        let resp = h.send(chat(MODEL, 4, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        events(resp.into_body()).await
    });
    wait_until("plain queued", PROMPT, || queued(&p) == 2).await;
    // P's stream ends: its slot goes to the plain request.
    let evs = tokio::time::timeout(PROMPT, plain)
        .await
        .expect("the plain request is served when P frees")
        .unwrap();
    assert!(usage_of(&evs).is_some());
    assert_eq!(w.obs.requests.load(Ordering::SeqCst), 2);
    assert_eq!(queued(&p), 1, "the sealed one still waits for S");
    assert!(!sealed.is_finished());
    sealed.abort();
    for t in busy {
        t.abort();
    }
}
