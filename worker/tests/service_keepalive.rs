//! The worker's stream keepalive (SSE comments while the engine is silent, e.g. during a long
//! prompt), the end of streams at shutdown (an error event, never a silent cut), and the stall
//! limit (a consumer that stops reading does not hold a capacity slot).

mod service_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use protocol::sse::{Decoder, EVENT_ERROR, EVENT_USAGE, KEEPALIVE};
use protocol::{ApiError, ErrorKind};
use serde_json::json;
use service_support::*;
use worker::service::ServiceOptions;

fn chat(max_tokens: u32) -> http::Request<http_body_util::Full<Bytes>> {
    completion_request(
        "/v1/chat/completions",
        MODEL,
        max_tokens,
        chat_body(json!({})),
    )
}

/// How many keepalive comments `bytes` holds, and at which offset the first event starts.
fn keepalives_before_first_event(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0;
    let mut at = 0;
    while bytes[at..].starts_with(KEEPALIVE) {
        n += 1;
        at += KEEPALIVE.len();
    }
    (n, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prefill_sends_keepalives_then_the_stream() {
    let mut h = Harness::start(Options {
        tokens: 3,
        prefill_delay: Duration::from_millis(1300),
        service: ServiceOptions {
            stream_keepalive: Some(Duration::from_millis(300)),
            ..ServiceOptions::default()
        },
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let started = Instant::now();
    let resp = send(&mut conn, chat(16)).await;
    // The first keepalive starts the response, long before the first token.
    let headers_after = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        headers_after < Duration::from_millis(1000),
        "{headers_after:?}"
    );
    let bytes = body_bytes(resp).await;
    let (n, first_event) = keepalives_before_first_event(&bytes);
    // 1.3 s of prefill at one keepalive per 300 ms of silence: 4 (timer jitter: 3 to 4).
    assert!((3..=4).contains(&n), "{n} keepalives");
    let events = Decoder::default().feed(&bytes[first_event..]).unwrap();
    let texts = events.iter().filter(|e| e.name.is_none()).count();
    assert_eq!(texts, 3 + 1 + 1, "3 tokens, the finish chunk, [DONE]");
    assert!(events
        .iter()
        .any(|e| e.name.as_deref() == Some(EVENT_USAGE)));
    assert!(events.last().unwrap().is_done());
    // Tokens flowing: no keepalive between them.
    assert!(!bytes[first_event..]
        .windows(KEEPALIVE.len())
        .any(|w| w == KEEPALIVE));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keepalives_the_answer_waits_for_the_first_token() {
    let mut h = Harness::start(Options {
        tokens: 2,
        prefill_delay: Duration::from_millis(800),
        service: ServiceOptions {
            stream_keepalive: None,
            ..ServiceOptions::default()
        },
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let started = Instant::now();
    let resp = send(&mut conn, chat(16)).await;
    assert!(started.elapsed() >= Duration::from_millis(800));
    let bytes = body_bytes(resp).await;
    assert_eq!(keepalives_before_first_event(&bytes).0, 0);
    assert!(!bytes.windows(KEEPALIVE.len()).any(|w| w == KEEPALIVE));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_a_keepalive_is_an_error_event() {
    // The response started with keepalives (prefill), so a failure is in the stream.
    let mut h = Harness::start(Options {
        prefill_delay: Duration::from_secs(5),
        service: ServiceOptions {
            stream_keepalive: Some(Duration::from_millis(200)),
            ..ServiceOptions::default()
        },
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let resp = send(&mut conn, chat(16)).await;
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move { body_bytes(resp).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.service.end_streams();
    let bytes = reader.await.unwrap();
    let (n, first_event) = keepalives_before_first_event(&bytes);
    assert!(n >= 1, "{n}");
    // The prompt work done is reported (the proxy bills it), then the error event.
    let events = Decoder::default().feed(&bytes[first_event..]).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].name.as_deref(), Some(EVENT_USAGE));
    let usage: protocol::Usage = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(
        (usage.completion_tokens, usage.prompt_tokens > 0),
        (0, true)
    );
    assert_eq!(events[1].name.as_deref(), Some(EVENT_ERROR));
    assert_eq!(
        ApiError::from_json(502, events[1].data.as_bytes()).kind,
        ErrorKind::Unavailable
    );
}

/// Reads `resp` until it ends; returns its events.
async fn read_all(resp: http::Response<hyper::body::Incoming>) -> Vec<protocol::sse::Event> {
    let mut body = resp.into_body();
    let mut d = Decoder::default();
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("frame in time")
    {
        if let Ok(data) = frame.expect("frame").into_data() {
            out.extend(d.feed(&data).expect("sse"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_streams_ends_each_stream_with_an_error_event() {
    let mut h = Harness::start(Options {
        tokens: 1000,
        tokens_per_second: 50.0,
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let resp = send(&mut conn, chat(1000)).await;
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(read_all(resp));
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.service.end_streams();
    let events = reader.await.unwrap();
    let last = events.last().expect("events");
    assert_eq!(last.name.as_deref(), Some(EVENT_ERROR));
    let e = ApiError::from_json(502, last.data.as_bytes());
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("shutting down"), "{}", e.message);
    assert!(events.len() > 2 && events.len() < 900, "{}", events.len());
    assert!(!events.iter().any(|e| e.is_done()));
    // The work done so far is reported just before the error event.
    assert_eq!(events[events.len() - 2].name.as_deref(), Some(EVENT_USAGE));
    // A request after that is answered 503 at once.
    let (status, e) = error_of(send(&mut conn, chat(16)).await).await;
    assert_eq!((status, e.kind), (503, ErrorKind::Unavailable));
    let s = h.service.stats().snapshot();
    assert_eq!(s.active_generations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_short_streams_and_ends_long_ones_with_an_error() {
    let mut h = Harness::start(Options {
        tokens: 1000,
        tokens_per_second: 50.0,
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let long = send(&mut conn, chat(1000)).await;
    let short = send(&mut conn, chat(10)).await;
    let long = tokio::spawn(read_all(long));
    let short = tokio::spawn(read_all(short));
    let started = Instant::now();
    let stopped = h.worker.shutdown(Duration::from_millis(800)).await;
    assert!(stopped, "everything stopped");
    assert!(started.elapsed() < Duration::from_secs(4));
    // 10 tokens at 50/s end within the drain: complete.
    let short = short.await.unwrap();
    assert!(short.last().unwrap().is_done());
    assert!(short.iter().any(|e| e.name.as_deref() == Some(EVENT_USAGE)));
    // 1000 tokens do not: the stream reports the work done so far (its proxy bills it), then
    // ends with the error event and no [DONE].
    let long = long.await.unwrap();
    let last = long.last().unwrap();
    assert_eq!(last.name.as_deref(), Some(EVENT_ERROR));
    assert_eq!(
        ApiError::from_json(502, last.data.as_bytes()).kind,
        ErrorKind::Unavailable
    );
    assert!(!long.iter().any(|e| e.is_done()));
    let usage = &long[long.len() - 2];
    assert_eq!(usage.name.as_deref(), Some(EVENT_USAGE));
    let usage: protocol::Usage = serde_json::from_str(&usage.data).unwrap();
    let deltas = long.iter().filter(|e| e.name.is_none()).count() as u64;
    assert!(
        usage.completion_tokens > 0 && usage.completion_tokens < 1000,
        "{usage:?}"
    );
    // Every token sent is in the usage (an event per token, and the role chunk).
    assert!(usage.completion_tokens + 2 >= deltas, "{usage:?} {deltas}");
    let s = h.service.stats().snapshot();
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (0, 0),
        "{s:?}"
    );
}

/// A consumer that stops reading (here: the proxy's receive window, 16 KiB, never moved, as
/// when its client stops reading) ends the generation after the stall limit and frees the
/// capacity slot; the next request on the same worker is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_frees_the_slot_after_the_stall_limit() {
    let stall = Duration::from_millis(500);
    let mut h = Harness::start(Options {
        tokens: 4000,
        capacity: 1,
        proxy_stream_window: Some(16 * 1024),
        service: ServiceOptions {
            stream_stall: Some(stall),
            ..ServiceOptions::default()
        },
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let started = Instant::now();
    let stalled = send(&mut conn, chat(4000)).await;
    assert_eq!(stalled.status(), 200);
    // The body is never read.
    let freed_after = loop {
        let s = h.service.stats().snapshot();
        if s.stalled == 1 && s.active_generations == 0 {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(freed_after >= stall, "{freed_after:?}");
    assert!(
        freed_after < stall + Duration::from_secs(2),
        "{freed_after:?}"
    );
    let s = h.service.stats().snapshot();
    assert_eq!((s.completed, s.cancelled), (0, 0), "{s:?}");
    // The one slot serves the next request.
    let events = events(send(&mut conn, chat(4)).await).await;
    assert!(events.last().unwrap().is_done());
    assert_eq!(h.service.stats().snapshot().completed, 1);
    drop(stalled);
    h.shutdown();
}

/// A consumer that reads slowly but keeps reading is not cut, although the whole stream takes
/// longer than the stall limit: the clock runs only while it takes nothing. (The worker sees
/// progress one gathered frame, at most 16 KiB, at a time: a consumer must take one such
/// frame within the limit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_keeps_reading_is_not_cut() {
    let mut h = Harness::start(Options {
        tokens: 500,
        capacity: 1,
        proxy_stream_window: Some(4 * 1024),
        service: ServiceOptions {
            stream_stall: Some(Duration::from_secs(3)),
            ..ServiceOptions::default()
        },
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let started = Instant::now();
    let mut body = send(&mut conn, chat(500)).await.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes.extend_from_slice(&data);
        }
        // One chunk (about 0.6 KB with this window) per 50 ms: far slower than the worker; a
        // 16 KiB frame drains in about 1.5 s.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let events = Decoder::default().feed(&bytes).unwrap();
    assert!(events.last().unwrap().is_done(), "{took:?}");
    let s = h.service.stats().snapshot();
    assert_eq!((s.completed, s.stalled), (1, 0), "{s:?} after {took:?}");
    assert!(
        took > Duration::from_secs(3),
        "the stream took less than the stall limit: {took:?}"
    );
    h.shutdown();
}
