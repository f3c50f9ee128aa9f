//! The worker's HTTP/2 service over a real RA-TLS loopback connection (simulated TDX), with a
//! test proxy as the HTTP/2 client: registration, streaming, errors, capacity, cancellation.

mod service_support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use protocol::sse::EVENT_USAGE;
use protocol::{ErrorKind, Hello, Registration, Usage};
use serde_json::{json, Value};
use service_support::*;

fn data(e: &protocol::sse::Event) -> Value {
    serde_json::from_str(&e.data).expect("json chunk")
}

/// The text of chat chunks `evs`, concatenated.
fn delta_text(evs: &[protocol::sse::Event]) -> String {
    evs.iter()
        .map(|e| {
            data(e)["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_registers_and_ping_answers() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    assert_eq!(conn.worker.claims().role, ratls::Role::Worker);
    let mut events = h.service.subscribe();
    let hello = Hello {
        versions: vec![1, 7],
        proxy: "test-proxy".into(),
    };
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(serde_json::to_vec(&hello).unwrap())))
        .unwrap();
    let resp = send(&mut conn, req).await;
    assert_eq!(resp.status(), 200);
    let reg: Registration = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    reg.validate().unwrap();
    assert_eq!(reg.version, 1);
    assert_eq!(reg.worker, "test-worker");
    assert_eq!(reg.capacity, 4);
    assert_eq!(reg.price_coefficient_milli, 1500);
    assert_eq!(reg.models.len(), 1);
    assert_eq!(reg.models[0].name, MODEL);
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.proxy, h.addr.to_string());
    assert_eq!(ev.proxy_name, "test-proxy");
    assert_eq!(h.service.stats().snapshot().registrations, 1);

    // No common version.
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(r#"{"versions":[9],"proxy":"p"}"#)))
        .unwrap();
    let (status, e) = error_of(send(&mut conn, req).await).await;
    assert_eq!((status, e.kind), (400, ErrorKind::UnsupportedVersion));
    // Unknown hello field.
    let req = Request::post("http://worker/cocoon/v1/hello")
        .body(Full::new(Bytes::from(
            r#"{"versions":[1],"proxy":"p","x":1}"#,
        )))
        .unwrap();
    assert_eq!(error_of(send(&mut conn, req).await).await.0, 400);

    let req = Request::get("http://worker/cocoon/v1/ping")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send(&mut conn, req).await;
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert_eq!(v, json!({"active": 0, "capacity": 4}));

    let req = Request::get("http://worker/admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, e) = error_of(send(&mut conn, req).await).await;
    assert_eq!((status, e.kind), (404, ErrorKind::NotFound));
    let req = Request::get("http://worker/v1/chat/completions")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(error_of(send(&mut conn, req).await).await.0, 404);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_chunks_then_usage_then_done() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let req = completion_request("/v1/chat/completions", MODEL, 100, chat_body(json!({})));
    let resp = send(&mut conn, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let evs = events(resp).await;
    // 5 text chunks, the finish chunk, cocoon-usage, [DONE].
    assert_eq!(evs.len(), 8, "{evs:?}");
    let first = data(&evs[0]);
    assert_eq!(first["id"], "chatcmpl-req-42");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["created"], NOW);
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let text = delta_text(&evs[..5]);
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ");
    assert_eq!(data(&evs[5])["choices"][0]["finish_reason"], "stop");
    assert_eq!(evs[6].name.as_deref(), Some(EVENT_USAGE));
    let usage: Usage = serde_json::from_str(&evs[6].data).unwrap();
    // The stub counts words + 1 per message ("hello there" -> 3).
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 3,
            cached_tokens: 0,
            completion_tokens: 5,
            reasoning_tokens: 0
        }
    );
    assert!(evs[7].is_done());
    let s = h.service.stats().snapshot();
    assert_eq!((s.requests, s.completed, s.active_generations), (1, 1, 0));

    // max_tokens clamps (the header's 3 here) and finish_reason becomes "length".
    let req = completion_request("/v1/chat/completions", MODEL, 3, chat_body(json!({})));
    let evs = events(send(&mut conn, req).await).await;
    assert_eq!(evs.len(), 6);
    assert_eq!(data(&evs[3])["choices"][0]["finish_reason"], "length");
    let usage: Usage = serde_json::from_str(&evs[4].data).unwrap();
    assert_eq!(usage.completion_tokens, 3);
    h.shutdown();
}

/// Events that are already queued when the body is read go out in one DATA frame
/// (`protocol::sse::gather`); the event sequence is the same as one frame per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_events_are_gathered_into_frames_without_changing_the_stream() {
    use http_body_util::BodyExt;
    let mut h = Harness::start(Options {
        tokens: 40,
        ..Options::default()
    })
    .await;
    let mut conn = h.next_conn().await;
    let req = completion_request("/v1/chat/completions", MODEL, 100, chat_body(json!({})));
    let resp = send(&mut conn, req).await;
    assert_eq!(resp.status(), 200);
    // A reader that falls behind: the generation fills the stream's channel meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            frames.push(d);
        }
    }
    let bytes: Vec<u8> = frames.concat();
    let evs = protocol::sse::Decoder::default().feed(&bytes).expect("sse");
    // 40 text chunks, the finish chunk, cocoon-usage, [DONE].
    assert_eq!(evs.len(), 43);
    let text = delta_text(&evs[..40]);
    let want: String = (0..40).map(|i| format!("tok{i} ")).collect();
    assert_eq!(text, want);
    assert!(evs[42].is_done());
    assert!(
        frames.len() < 20,
        "{} frames for 43 events: queued events were not gathered",
        frames.len()
    );
    // Frames still end on event boundaries (the end of the stream may be an empty frame).
    for f in frames.iter().filter(|f| !f.is_empty()) {
        assert!(f.ends_with(b"\n\n"), "a frame ends mid-event");
    }
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_usage_adds_the_openai_usage_chunk_and_completions_stream() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let body = chat_body(json!({"stream_options": {"include_usage": true}, "max_tokens": 2}));
    let evs = events(
        send(
            &mut conn,
            completion_request("/v1/chat/completions", MODEL, 100, body),
        )
        .await,
    )
    .await;
    // 2 text chunks, finish chunk, OpenAI usage chunk, cocoon-usage, [DONE].
    assert_eq!(evs.len(), 6, "{evs:?}");
    let u = data(&evs[3]);
    assert_eq!(u["choices"], json!([]));
    assert_eq!(u["usage"]["prompt_tokens"], 3);
    assert_eq!(u["usage"]["completion_tokens"], 2);
    assert_eq!(u["usage"]["total_tokens"], 5);
    assert_eq!(evs[4].name.as_deref(), Some(EVENT_USAGE));
    assert!(evs[5].is_done());

    let body = json!({"model": MODEL, "prompt": "one two three four", "max_tokens": 2});
    let req = completion_request("/v1/completions", MODEL, 100, body.to_string());
    let evs = events(send(&mut conn, req).await).await;
    assert_eq!(evs.len(), 5);
    let c = data(&evs[0]);
    assert_eq!(c["id"], "cmpl-req-42");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["text"], "tok0 ");
    let usage: Usage = serde_json::from_str(&evs[3].data).unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 2));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_statuses_before_any_byte() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let chat = "/v1/chat/completions";
    let cases: Vec<(Request<Full<Bytes>>, u16, ErrorKind, &str)> = vec![
        (
            completion_request(chat, MODEL, 10, chat_body(json!({"functions": []}))),
            400,
            ErrorKind::InvalidRequest,
            "unknown field `functions`",
        ),
        (
            completion_request(
                chat,
                MODEL,
                10,
                format!(r#"{{"model":"{MODEL}","model":"{MODEL}","messages":[]}}"#),
            ),
            400,
            ErrorKind::InvalidRequest,
            "duplicate key `model`",
        ),
        (
            completion_request(chat, MODEL, 10, "{\"model\":"),
            400,
            ErrorKind::InvalidRequest,
            "malformed json",
        ),
        (
            completion_request(
                chat,
                "other-model",
                10,
                chat_body(json!({"model": "other-model"})),
            ),
            404,
            ErrorKind::ModelNotFound,
            "not served",
        ),
        (
            completion_request(chat, MODEL, 10, chat_body(json!({"model": "other-model"}))),
            404,
            ErrorKind::ModelNotFound,
            "does not match",
        ),
        (
            completion_request(chat, MODEL, 10, vec![b' '; 5 << 20]),
            413,
            ErrorKind::PayloadTooLarge,
            "exceeds the limit",
        ),
    ];
    for (req, status, kind, text) in cases {
        let (got_status, e) = error_of(send(&mut conn, req).await).await;
        assert_eq!((got_status, e.kind), (status, kind), "{text}: {e:?}");
        assert!(e.message.contains(text), "{text}: {}", e.message);
    }
    // Missing cocoon headers.
    let req = Request::post(format!("http://worker{chat}"))
        .body(Full::new(chat_body(json!({}))))
        .unwrap();
    let (status, e) = error_of(send(&mut conn, req).await).await;
    assert_eq!(status, 400);
    assert!(e.message.contains("missing header"), "{}", e.message);
    let s = h.service.stats().snapshot();
    assert_eq!(s.rejected, 7);
    assert_eq!(s.active_generations, 0);
    h.shutdown();
}
