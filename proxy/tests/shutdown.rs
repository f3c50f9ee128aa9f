//! Graceful shutdown of the proxy (in process; tests/binary.rs sends SIGTERM to the binary):
//! queued requests get 503 at once, streams that finish within the drain deadline complete,
//! the rest end with a `service_unavailable` error event.

mod common;

use std::time::{Duration, Instant};

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
    let _w = FakeWorker::connect(p.running.worker_addr, spec).await;
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
    // The long one ends with the error event at the deadline, then the body ends.
    let long = long.await.unwrap();
    let (at, err) = error_of(&long).expect("error event");
    let after = at.duration_since(started);
    assert!(
        after >= drain && after < drain + Duration::from_secs(2),
        "{after:?}"
    );
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("shutting down"), "{}", err.message);
    assert!(usage_of(&long).is_none());
    assert_eq!(long.last().unwrap().1.name.as_deref(), Some("cocoon-error"));
    stopping.await.unwrap();
    assert!(started.elapsed() < drain + proxy::server::CUT_FLUSH + Duration::from_secs(1));
    // Nothing stays reserved: the cut stream is not billed, the queued one never was.
    assert_eq!(p.ledger.balance(&c.account).unwrap().reserved_nano, 0);
}
