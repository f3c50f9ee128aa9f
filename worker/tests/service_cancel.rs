//! Capacity and cancellation: a full worker answers 429 once no slot frees within
//! `CAPACITY_WAIT` (the race that wait closes is tested through a proxy, in
//! `proxy/tests/queue.rs`); a proxy that drops a stream stops the generation and frees its
//! permit.

mod service_support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use protocol::ErrorKind;
use serde_json::json;
use service_support::*;

/// Sends a chat completion of `max_tokens` on `conn` and checks that it completes.
async fn complete(conn: &mut ProxyConn, max_tokens: u32) -> Vec<protocol::sse::Event> {
    let resp = send(
        conn,
        completion_request(
            "/v1/chat/completions",
            MODEL,
            max_tokens,
            chat_body(json!({})),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let evs = events(resp).await;
    assert!(evs.last().unwrap().is_done());
    evs
}

fn slow() -> Options {
    Options {
        tokens: 1000,
        tokens_per_second: 100.0,
        capacity: 1,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_exhausted_is_429_and_freed_after_cancel() {
    let mut h = Harness::start(slow()).await;
    let mut conn = h.next_conn().await;
    let chat = "/v1/chat/completions";
    let first = send(
        &mut conn,
        completion_request(chat, MODEL, 1000, chat_body(json!({}))),
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(h.service.stats().snapshot().active_generations, 1);

    let asked = Instant::now();
    let (status, e) = error_of(
        send(
            &mut conn,
            completion_request(chat, MODEL, 1000, chat_body(json!({}))),
        )
        .await,
    )
    .await;
    assert_eq!((status, e.kind), (429, ErrorKind::NoCapacity));
    assert!(
        asked.elapsed() >= worker::service::CAPACITY_WAIT,
        "429 only after waiting for a slot: {:?}",
        asked.elapsed()
    );
    assert_eq!(h.service.stats().snapshot().no_capacity, 1);

    drop(first);
    let stats = h.service.stats();
    wait_until("the permit to be released", Duration::from_secs(2), || {
        stats.snapshot().active_generations == 0
    })
    .await;
    complete(&mut conn, 2).await;
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_stops_the_engine() {
    let mut h = Harness::start(slow()).await;
    let mut conn = h.next_conn().await;
    let resp = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 1000, chat_body(json!({}))),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read a few chunks (the stub emits one every 10 ms).
    let mut frames = 0;
    while frames < 3 {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("frame");
        if f.is_data() {
            frames += 1;
        }
    }
    let stats = h.service.stats();
    assert_eq!(stats.snapshot().active_generations, 1);
    // The proxy gives up: dropping the body resets the HTTP/2 stream.
    drop(body);
    wait_until("the generation to stop", Duration::from_secs(2), || {
        stats.snapshot().active_generations == 0
    })
    .await;
    let s = stats.snapshot();
    assert_eq!((s.cancelled, s.completed), (1, 0));
    // The connection itself is still fine.
    let ok = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 2, chat_body(json!({}))),
    )
    .await;
    assert_eq!(ok.status(), 200);
    h.shutdown();
}

/// The work of streams that end without a usage report is counted (`unbilled_*`): a stream
/// dropped mid-generation counts its prompt and the tokens sampled so far, one dropped during
/// prompt processing its prompt only, a completed one nothing (it is billed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_work_is_counted_as_unbilled() {
    // "hello there": 3 prompt tokens as the stub counts them.
    const PROMPT_TOKENS: u64 = 3;
    let mut h = Harness::start(Options {
        prefill_delay: Duration::from_millis(300),
        ..slow()
    })
    .await;
    let mut conn = h.next_conn().await;
    let stats = h.service.stats();
    let chat = "/v1/chat/completions";

    // Dropped during prompt processing (no response yet).
    let early = tokio::time::timeout(
        Duration::from_millis(100),
        send(
            &mut conn,
            completion_request(chat, MODEL, 1000, chat_body(json!({}))),
        ),
    )
    .await;
    assert!(early.is_err(), "no answer during the prefill delay");
    wait_until(
        "the first generation to stop",
        Duration::from_secs(2),
        || stats.snapshot().cancelled == 1 && stats.snapshot().active_generations == 0,
    )
    .await;
    let s = stats.snapshot();
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (PROMPT_TOKENS, 0)
    );

    // Dropped after some tokens.
    let resp = send(
        &mut conn,
        completion_request(chat, MODEL, 1000, chat_body(json!({}))),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while received < 5 {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = f.into_data() {
            received += data
                .windows(b"\"content\"".len())
                .filter(|w| *w == b"\"content\"")
                .count() as u64;
        }
    }
    drop(body);
    wait_until(
        "the second generation to stop",
        Duration::from_secs(2),
        || stats.snapshot().cancelled == 2 && stats.snapshot().active_generations == 0,
    )
    .await;
    let s = stats.snapshot();
    assert_eq!(s.unbilled_prompt_tokens, 2 * PROMPT_TOKENS);
    let sampled = s.unbilled_completion_tokens;
    assert!(
        (received..1000).contains(&sampled),
        "{sampled} tokens counted, {received} received"
    );

    // Completed: billed, so nothing is added.
    complete(&mut conn, 3).await;
    let s = stats.snapshot();
    assert_eq!(s.completed, 1);
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (2 * PROMPT_TOKENS, sampled)
    );
    h.shutdown();
}

fn cancel_request(id: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut b = http::Request::post(format!("http://worker{}", protocol::paths::CANCEL));
    if let Some(id) = id {
        b = b.header(protocol::meta::H_REQUEST_ID, id);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

fn usage_event(evs: &[protocol::sse::Event]) -> protocol::Usage {
    let ev = evs
        .iter()
        .find(|e| e.name.as_deref() == Some(protocol::sse::EVENT_USAGE))
        .expect("a usage event");
    serde_json::from_str(&ev.data).unwrap()
}

/// `POST /cocoon/v1/cancel` stops a generation mid-stream: the stream ends like a completed
/// one, with the usage of the work done so far (prompt, tokens sampled) and `[DONE]`, and
/// nothing is left unbilled. Stopping it again, an unknown id or no id are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_generation_ends_with_its_usage_so_far() {
    let mut h = Harness::start(slow()).await;
    let mut conn = h.next_conn().await;
    let stats = h.service.stats();
    let resp = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 1000, chat_body(json!({}))),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while seen.windows(9).filter(|w| w == b"\"content\"").count() < 5 {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = f.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    let stopped = send(&mut conn, cancel_request(Some("req-42"))).await;
    assert_eq!(stopped.status(), 200);
    assert_eq!(body_bytes(stopped).await, br#"{"stopped":1}"#.to_vec());
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the stream ends at once")
        .expect("body")
        .to_bytes();
    seen.extend_from_slice(&rest);
    let evs = protocol::sse::Decoder::default().feed(&seen).unwrap();
    assert!(evs.last().unwrap().is_done(), "ends with [DONE]");
    let received = evs
        .iter()
        .filter(|e| e.data.contains("\"content\""))
        .count() as u64;
    let usage = usage_event(&evs);
    assert_eq!(usage.prompt_tokens, 3);
    assert!(
        (received..1000).contains(&usage.completion_tokens),
        "{} billed, {received} received",
        usage.completion_tokens
    );
    let s = stats.snapshot();
    assert_eq!((s.stopped, s.cancelled, s.completed), (1, 0, 0));
    assert_eq!(
        (s.unbilled_prompt_tokens, s.unbilled_completion_tokens),
        (0, 0)
    );
    assert_eq!(s.active_generations, 0);

    // Nothing runs under that id any more; an id is required.
    let again = send(&mut conn, cancel_request(Some("req-42"))).await;
    assert_eq!(error_of(again).await.0, 404);
    let (status, e) = error_of(send(&mut conn, cancel_request(None)).await).await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest));
    let (status, _) = error_of(send(&mut conn, cancel_request(Some("has space"))).await).await;
    assert_eq!(status, 400);
    h.shutdown();
}

/// Stopped during prompt processing (no byte sent yet): the answer is a stream holding only
/// the usage (the prompt) and `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_stopped_before_its_first_byte_reports_its_prompt() {
    let mut h = Harness::start(Options {
        prefill_delay: Duration::from_millis(500),
        ..slow()
    })
    .await;
    let mut conn = h.next_conn().await;
    let mut sender = conn.send.clone();
    let pending = tokio::spawn(async move {
        sender.ready().await.unwrap();
        sender
            .send_request(completion_request(
                "/v1/chat/completions",
                MODEL,
                1000,
                chat_body(json!({})),
            ))
            .await
            .unwrap()
    });
    let stats = h.service.stats();
    wait_until("the generation to start", Duration::from_secs(2), || {
        stats.snapshot().active_generations == 1
    })
    .await;
    let stopped = send(&mut conn, cancel_request(Some("req-42"))).await;
    assert_eq!(stopped.status(), 200);
    let resp = tokio::time::timeout(Duration::from_millis(400), pending)
        .await
        .expect("answered before the prefill would have ended")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let evs = events(resp).await;
    assert!(evs.last().unwrap().is_done());
    let usage = usage_event(&evs);
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 0));
    assert_eq!(stats.snapshot().stopped, 1);
    h.shutdown();
}

/// Request ids are the clients' and a proxy's connection carries many clients, so two running
/// generations may share one: a cancel naming the proxy's stream tag stops only the one sent
/// with that tag; a malformed tag is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_tag_names_one_of_two_generations_with_the_same_id() {
    let mut h = Harness::start(Options {
        capacity: 2,
        ..slow()
    })
    .await;
    let mut conn = h.next_conn().await;
    let stats = h.service.stats();
    let mut bodies = Vec::new();
    for tag in [7u64, 8] {
        let mut req = completion_request("/v1/chat/completions", MODEL, 1000, chat_body(json!({})));
        req.headers_mut()
            .insert(protocol::meta::H_STREAM_TAG, tag.into());
        let resp = send(&mut conn, req).await;
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    let tagged = |tag: &str| {
        let mut req = cancel_request(Some("req-42"));
        req.headers_mut()
            .insert(protocol::meta::H_STREAM_TAG, tag.parse().unwrap());
        req
    };
    let (status, e) = error_of(send(&mut conn, tagged("x")).await).await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest));
    let (status, _) = error_of(send(&mut conn, tagged("9")).await).await;
    assert_eq!(status, 404, "no generation was sent with tag 9");
    let stopped = send(&mut conn, tagged("8")).await;
    assert_eq!(body_bytes(stopped).await, br#"{"stopped":1}"#.to_vec());
    let second = bodies.pop().unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), second.collect())
        .await
        .expect("the stopped stream ends at once")
        .expect("body")
        .to_bytes();
    let evs = protocol::sse::Decoder::default().feed(&rest).unwrap();
    assert!(evs.last().unwrap().is_done());
    let s = stats.snapshot();
    assert_eq!(
        (s.stopped, s.active_generations),
        (1, 1),
        "tag 7 still runs"
    );
    // Without a tag, every generation of the id stops (here the one left).
    let stopped = send(&mut conn, cancel_request(Some("req-42"))).await;
    assert_eq!(body_bytes(stopped).await, br#"{"stopped":1}"#.to_vec());
    h.shutdown();
}
