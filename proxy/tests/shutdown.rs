//! Graceful shutdown of the proxy (in process; tests/binary.rs sends SIGTERM to the binary):
//! queued requests get 503 at once, streams that finish within the drain deadline complete,
//! the rest end with a `service_unavailable` error event.

mod common;

use std::time::{Duration, Instant};

use common::real::BODY_STUB;
use common::*;
use http::StatusCode;
use protocol::ErrorKind;
use proxy::Ledger as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_ends_streams_with_an_error_event() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("two");
    spec.capacity = 2;
    spec.tokens = 400;
    spec.interval = Duration::from_millis(10); // long stream: 4 s; short (20 tokens): 0.2 s
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client(p.running.client_addr, 1).await;
    let long = c.send(chat(MODEL, 400, None, BODY)).await;
    let short = c.send(chat(MODEL, 20, None, BODY)).await;
    assert_eq!(
        (long.status(), short.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let long = tokio::spawn(events(long.into_body()));
    let short = tokio::spawn(events(short.into_body()));
    let mut q = c.stream_handle().unwrap();
    let queued = tokio::spawn(async move {
        let resp = q.send(chat(MODEL, 20, None, BODY)).await;
        (Instant::now(), resp.status(), json_body(resp).await)
    });
    wait_until("one queued", Duration::from_secs(5), || {
        state.queues.depth(MODEL) == 1
    })
    .await;

    let started = Instant::now();
    let drain = Duration::from_secs(1);
    let stopping = tokio::spawn(p.running.shutdown(drain));
    // The queued request is refused at once.
    let (at, status, body) = queued.await.unwrap();
    assert!(at.duration_since(started) < Duration::from_millis(500));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_kind(&body), "service_unavailable");
    assert!(proxy::admin::json_stats(&state).shutting_down);
    // The short stream completes within the drain deadline.
    let short = short.await.unwrap();
    assert!(error_of(&short).is_none());
    assert_eq!(usage_of(&short).unwrap().completion_tokens, 20);
    // The long one is stopped at its worker at the deadline: its stream ends with the usage
    // of the work done (billed), then the error event instead of [DONE], then the body ends.
    let long = long.await.unwrap();
    let (at, err) = error_of(&long).expect("error event");
    let after = at.duration_since(started);
    assert!(
        after >= drain && after < drain + Duration::from_millis(500),
        "{after:?}"
    );
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("shutting down"), "{}", err.message);
    assert!(err.message.contains("billed"), "{}", err.message);
    let usage = usage_of(&long).expect("the usage of the work done");
    assert!(
        (50..300).contains(&usage.completion_tokens),
        "{usage:?} after {drain:?} at 100 tokens/s"
    );
    assert_eq!(long.last().unwrap().1.name.as_deref(), Some("cocoon-error"));
    assert!(!long.iter().any(|(_, e)| e.is_done()));
    assert_eq!(w.obs.stopped.load(std::sync::atomic::Ordering::SeqCst), 1);
    stopping.await.unwrap();
    assert!(started.elapsed() < drain + proxy::server::CUT_FLUSH + Duration::from_secs(1));
    // Both streams are billed, nothing stays reserved (the queued one never was).
    let b = p.ledger.balance(&c.account).unwrap();
    assert_eq!(b.reserved_nano, 0);
    let s = proxy::admin::json_stats(&state);
    assert_eq!(s.requests.stopped, 1);
    assert_eq!(s.requests.abandoned, 0);
}

/// A worker that does not stop the generation at the drain deadline (it ignores the cancel):
/// after [`proxy::relay::STOP_AT_CUT`] the stream ends with the error event all the same and
/// its worker stream is reset; nothing is billed, nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ignores_the_stop_at_the_deadline_is_cut_in_time() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("deaf");
    spec.tokens = 400;
    spec.interval = Duration::from_millis(10);
    spec.honors_cancel = false;
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client(p.running.client_addr, 1).await;
    let long = c.send(chat(MODEL, 400, None, BODY)).await;
    assert_eq!(long.status(), StatusCode::OK);
    let long = tokio::spawn(events(long.into_body()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let drain = Duration::from_millis(300);
    p.running.shutdown(drain).await;
    let long = long.await.unwrap();
    let (at, err) = error_of(&long).expect("error event");
    let after = at.duration_since(started);
    let limit = drain + proxy::relay::STOP_AT_CUT;
    assert!(
        after >= limit && after < limit + Duration::from_millis(500),
        "{after:?}"
    );
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(!err.message.contains("billed"), "{}", err.message);
    assert!(usage_of(&long).is_none());
    assert!(!long.iter().any(|(_, e)| e.is_done()));
    assert!(started.elapsed() < drain + proxy::server::CUT_FLUSH + Duration::from_secs(1));
    wait_until("the worker's stream reset", Duration::from_secs(5), || {
        w.obs.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
    assert_eq!(proxy::admin::json_stats(&state).requests.stopped, 0);
}

/// A client that left just before the shutdown: its stream is still being settled (the worker
/// takes 300 ms to end it with the usage so far). The shutdown waits for that, so the charge
/// is made before the process would exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_streams_of_clients_that_left_to_be_billed() {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("slow-stop");
    spec.tokens = 400;
    spec.interval = Duration::from_millis(10);
    spec.stop_delay = Duration::from_millis(300);
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.send(chat(MODEL, 400, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    use http_body_util::BodyExt as _;
    body.frame().await.unwrap().unwrap();
    drop(body);
    wait_until("the stop asked", Duration::from_secs(5), || {
        w.obs.stopped.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(proxy::admin::json_stats(&state).requests.stopped, 0);
    let started = Instant::now();
    p.running.shutdown(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Billed before the shutdown returned.
    let s = proxy::admin::json_stats(&state);
    assert_eq!((s.requests.stopped, s.requests.abandoned), (1, 0));
    assert!(s.clients[&c.account].cost_nano > 0);
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
}

/// A proxy with one worker whose prompt processing never ends unless it is stopped (it
/// honours stops when `honors_cancel`), and a client.
async fn with_prefilling_worker(
    honors_cancel: bool,
) -> (TestProxy, FakeWorker, std::sync::Arc<proxy::State>, Client) {
    let p = start_proxy(|_| {}).await;
    let mut spec = WorkerSpec::new("prefill");
    spec.behavior = Behavior::Hang;
    spec.honors_cancel = honors_cancel;
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let c = client(p.running.client_addr, 1).await;
    (p, w, state, c)
}

/// Waits until `w` received its first request.
async fn wait_at_worker(w: &FakeWorker) {
    wait_until("at the worker", Duration::from_secs(5), || {
        w.obs.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
}

/// A request whose worker is still processing the prompt at the drain deadline (no response
/// head yet): the proxy stops it at the worker, bills the prompt the worker reports, and the
/// client gets an answer that says why — never a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_in_prompt_processing_at_the_deadline_gets_an_error() {
    let (p, w, state, c) = with_prefilling_worker(true).await;
    let mut h = c.stream_handle().unwrap();
    let sent = tokio::spawn(async move {
        let resp = h.send(chat(MODEL, 50, None, BODY)).await;
        let status = resp.status();
        (status, events(resp.into_body()).await)
    });
    wait_at_worker(&w).await;
    let started = Instant::now();
    let drain = Duration::from_millis(300);
    p.running.shutdown(drain).await;
    let (status, evs) = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("answered")
        .unwrap();
    println!(
        "status {status}, {} events, {:?}",
        evs.len(),
        started.elapsed()
    );
    assert_eq!(status, StatusCode::OK);
    let (_, err) = error_of(&evs).expect("error event");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(usage_of(&evs).unwrap().prompt_tokens, 7);
    assert_eq!(w.obs.stopped.load(std::sync::atomic::Ordering::SeqCst), 1);
    let s = proxy::admin::json_stats(&state);
    assert_eq!((s.requests.stopped, s.requests.abandoned), (1, 0));
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
}

/// The same with a worker that does not answer the stop: the client gets 503
/// `service_unavailable` once [`proxy::relay::STOP_AT_CUT`] has passed after the deadline;
/// nothing is billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_worker_ignores_the_stop_at_the_deadline_gets_503() {
    let (p, w, state, c) = with_prefilling_worker(false).await;
    let mut h = c.stream_handle().unwrap();
    let sent = tokio::spawn(async move {
        let resp = h.send(chat(MODEL, 50, None, BODY)).await;
        (Instant::now(), resp.status(), json_body(resp).await)
    });
    wait_at_worker(&w).await;
    let started = Instant::now();
    let drain = Duration::from_millis(300);
    p.running.shutdown(drain).await;
    let (at, status, body) = sent.await.unwrap();
    let after = at.duration_since(started);
    let limit = drain + proxy::relay::STOP_AT_CUT;
    assert!(
        after >= limit && after < limit + Duration::from_millis(500),
        "{after:?}"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_kind(&body), "service_unavailable");
    assert!(w.obs.cancels.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(proxy::admin::json_stats(&state).requests.stopped, 0);
    wait_until("the reservation released", Duration::from_secs(10), || {
        p.ledger.balance(&c.account).unwrap().reserved_nano == 0
    })
    .await;
    assert_eq!(
        p.ledger.balance(&c.account).unwrap().balance_nano,
        1_000_000_000_000,
        "nothing billed"
    );
}

/// A client that stopped reading (its 4 KiB HTTP/2 window full) when the drain deadline
/// passes: its relay is not polled, so it cannot see the deadline itself; the proxy takes its
/// worker stream over, stops the generation and bills it before `shutdown` returns, without
/// waiting [`proxy::server::CUT_FLUSH`] for a client that takes nothing. The worker keeps
/// nothing unbilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_at_the_deadline_is_stopped_and_billed_before_exit() {
    let p = start_proxy(|_| {}).await;
    let worker = common::real::start_long_stub_worker(p.running.worker_addr);
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client_with_window(p.running.client_addr, 1, 4 << 10).await;
    let resp = c.send(chat("stub", 100_000, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The window fills at once; the worker generates into its buffers until they are full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let drain = Duration::from_millis(300);
    p.running.shutdown(drain).await;
    let took = started.elapsed();
    println!("shutdown took {took:?}");
    assert!(took < drain + Duration::from_secs(1), "{took:?}");
    let s = proxy::admin::json_stats(&state);
    assert_eq!((s.requests.stopped, s.requests.abandoned), (1, 0));
    assert!(
        s.clients[&c.account].completion_tokens > 0,
        "{:?}",
        s.clients[&c.account]
    );
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
    common::real::assert_stopped_and_billed(&worker, 1);
    drop(resp);
}

/// A worker streaming 1,000 tokens/s that takes 600 ms to end a stopped generation,
/// generating all the while (an engine finishing its batch), connected and serving.
async fn slow_stop_worker(p: &TestProxy) -> FakeWorker {
    let mut spec = WorkerSpec::new("slow-stop");
    spec.tokens = 20_000;
    spec.interval = Duration::from_millis(1);
    spec.stop_delay = Duration::from_millis(600);
    spec.streams_while_stopping = true;
    let w = FakeWorker::connect(p.running.worker_addr, spec).await;
    p.wait_workers(1).await;
    w
}

/// What a shutdown with streams stopped at its deadline must leave behind.
struct Billed {
    /// How long the shutdown took, and its drain deadline.
    took: Duration,
    drain: Duration,
    /// Generations the worker stopped.
    stopped: u64,
}

impl Billed {
    /// The shutdown kept its time limit; `w` stopped `stopped` generations and the proxy
    /// counted as many stopped and none abandoned; each of `accounts` was billed and has
    /// nothing left reserved.
    fn check(
        &self,
        w: &FakeWorker,
        state: &proxy::State,
        ledger: &proxy::MemoryLedger,
        accounts: &[String],
    ) {
        let took = self.took;
        assert!(took < self.drain + proxy::server::CUT_FLUSH, "{took:?}");
        assert_eq!(
            w.obs.stopped.load(std::sync::atomic::Ordering::SeqCst),
            self.stopped
        );
        let s = proxy::admin::json_stats(state);
        assert_eq!(
            (s.requests.stopped, s.requests.abandoned),
            (self.stopped, 0)
        );
        for account in accounts {
            assert!(
                s.clients[account].completion_tokens > 0,
                "{account}: {:?}",
                s.clients[account]
            );
            assert_eq!(ledger.balance(account).unwrap().reserved_nano, 0);
        }
    }
}

/// A client reading when the drain deadline passes stops reading right after, while its
/// worker takes 600 ms to end the stopped generation (generating all the while, as an engine
/// finishing its batch): its relay saw the deadline and awaits that end, but with the
/// client's window full it is not polled, so it cannot read it. The take-over at shutdown
/// reads the end and bills it before exit (before 2026-12-05 session 18 this stream was left
/// unbilled: a relay awaiting its end was never taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_just_after_the_deadline_is_billed_before_exit() {
    use http_body_util::BodyExt as _;
    let p = start_proxy(|_| {}).await;
    let w = slow_stop_worker(&p).await;
    let state = p.running.state().clone();
    let mut c = client_with_window(p.running.client_addr, 1, 4 << 10).await;
    let resp = c.send(chat(MODEL, 20_000, None, BODY)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let drain = Duration::from_millis(300);
    let started = Instant::now();
    let running = p.running;
    let shutdown = tokio::spawn(running.shutdown(drain));
    // Reads until 100 ms past the deadline, then takes nothing more.
    let (mut seen, mut last) = (0usize, started);
    let stop_reading = started + drain + Duration::from_millis(100);
    while Instant::now() < stop_reading {
        let left = stop_reading.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(f))) => {
                seen += f.into_data().map_or(0, |d| d.len());
                last = Instant::now();
            }
            Ok(_) => panic!("the stream ended while the client was reading"),
            Err(_) => break,
        }
    }
    assert!(
        last > started + drain,
        "the client was reading when the deadline passed ({:?} after the start, {seen} bytes)",
        last - started
    );
    shutdown.await.unwrap();
    let billed = Billed {
        took: started.elapsed(),
        drain,
        stopped: 1,
    };
    billed.check(&w, &state, &p.ledger, std::slice::from_ref(&c.account));
    drop(body);
}

/// Six streams of two accounts when the drain deadline passes, their worker taking 600 ms to
/// end each stopped generation (generating all the while): two clients keep reading, two
/// stop reading 100 ms after the deadline (their windows fill), two hang up then. Each of
/// the six is stopped at the worker and billed for the work done before the process exits;
/// none is abandoned, nothing stays reserved, and the shutdown keeps its time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_stallers_and_leavers_at_the_deadline_are_all_billed_before_exit() {
    use http_body_util::BodyExt as _;
    let p = start_proxy(|_| {}).await;
    let w = slow_stop_worker(&p).await;
    let state = p.running.state().clone();
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Reads,
        Stalls,
        Leaves,
    }
    let mut streams = Vec::new();
    for (i, kind) in [Kind::Reads, Kind::Stalls, Kind::Leaves]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let seed = 1 + (i % 2) as u8;
        let mut c = client_with_window(p.running.client_addr, seed, 4 << 10).await;
        let resp = c.send(chat(MODEL, 20_000, None, BODY)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push((kind, c, resp.into_body()));
    }
    let accounts = [account_of(1), account_of(2)];
    let drain = Duration::from_millis(300);
    let started = Instant::now();
    let running = p.running;
    let shutdown = tokio::spawn(running.shutdown(drain));
    let stop_reading = started + drain + Duration::from_millis(100);
    let mut readers = Vec::new();
    for (kind, c, mut body) in streams {
        readers.push(tokio::spawn(async move {
            // Everyone reads until 100 ms past the deadline; then the stallers keep the
            // stream but take nothing more, the leavers hang up, the readers read to the end.
            let mut ended = false;
            while kind == Kind::Reads || Instant::now() < stop_reading {
                let left = stop_reading.saturating_duration_since(Instant::now());
                let wait = if kind == Kind::Reads {
                    Duration::from_secs(10)
                } else {
                    left
                };
                match tokio::time::timeout(wait, body.frame()).await {
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            match kind {
                Kind::Reads => assert!(ended, "a reader's stream ends"),
                _ => assert!(
                    !ended,
                    "{kind:?}: the stream ended before the client let go"
                ),
            }
            if kind == Kind::Leaves {
                drop(body);
                drop(c);
                None
            } else {
                Some((c, body))
            }
        }));
    }
    let mut kept = Vec::new();
    for r in readers {
        kept.push(r.await.unwrap());
    }
    shutdown.await.unwrap();
    let billed = Billed {
        took: started.elapsed(),
        drain,
        stopped: 6,
    };
    billed.check(&w, &state, &p.ledger, &accounts);
    drop(kept);
}

/// The proxy and its worker shut down at the same moment (a host going down), a client
/// reading a stream: the client gets an error event, not a hang or a silent cut, the work
/// done is billed once, and nothing stays reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_worker_shutting_down_together_end_the_stream_with_an_error() {
    use worker::engine::stub::StubEngine;
    let p = start_proxy(|_| {}).await;
    let worker = common::real::start_real_worker(
        p.running.worker_addr,
        StubEngine::new("stub", 400, 100.0),
        worker::service::ServiceOptions::default(),
    );
    p.wait_workers(1).await;
    let state = p.running.state().clone();
    let mut c = client(p.running.client_addr, 1).await;
    let resp = c.send(chat("stub", 400, None, BODY_STUB)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let reading = tokio::spawn(events(resp.into_body()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let drain = Duration::from_millis(500);
    let (_, _) = tokio::join!(p.running.shutdown(drain), worker.shutdown(drain));
    let evs = tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("the stream ends")
        .unwrap();
    println!("both down in {:?}", started.elapsed());
    let (_, err) = error_of(&evs).expect("an error event");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{}", err.message);
    assert!(!evs.iter().any(|(_, e)| e.is_done()));
    let usage = usage_of(&evs).expect("the usage of the work done");
    let s = proxy::admin::json_stats(&state);
    assert_eq!(s.requests.abandoned, 0);
    assert_eq!(
        s.clients[&c.account].completion_tokens,
        usage.completion_tokens
    );
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
}
