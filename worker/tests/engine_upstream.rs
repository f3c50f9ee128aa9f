//! The upstream engine against a fake OpenAI-compatible server (hyper, on loopback).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use protocol::Usage;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use worker::engine::upstream::{
    UpstreamConfig, UpstreamConfigError, UpstreamEngine, UpstreamModel,
};
use worker::engine::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Message, Sampling,
};

/// What the fake server answers.
#[derive(Clone, Debug)]
enum Behavior {
    /// 200 text/event-stream with these body pieces, `gap` apart.
    Stream { pieces: Vec<Bytes>, gap: Duration },
    /// An error status with a body.
    Status(u16, String),
    /// 200 with another content type.
    Json(String),
    /// Streams `data:` chunks every 20 ms forever.
    Endless,
    /// Never answers.
    Hang,
}

#[derive(Debug, Default)]
struct Seen {
    path: Option<String>,
    body: Option<Value>,
    auth: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    seen: Mutex<Seen>,
    client_gone: AtomicBool,
    connections: AtomicUsize,
}

type Body = BoxBody<Bytes, Infallible>;

fn streaming(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    BoxBody::new(StreamBody::new(stream))
}

async fn handle(req: Request<Incoming>, b: Behavior, state: Arc<State>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.map(|c| c.to_bytes());
    let body = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
    *state.seen.lock().unwrap() = Seen {
        path: Some(path),
        body,
        auth,
    };
    let sse = |body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    };
    match b {
        Behavior::Stream { pieces, gap } => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                for p in pieces {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            });
            sse(streaming(rx))
        }
        Behavior::Status(code, text) => Response::builder()
            .status(code)
            .body(BoxBody::new(Full::new(Bytes::from(text))))
            .unwrap(),
        Behavior::Json(text) => Response::builder()
            .header("content-type", "application/json")
            .body(BoxBody::new(Full::new(Bytes::from(text))))
            .unwrap(),
        Behavior::Endless => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0.. {
                    let ev = format!(
                        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i} \"}}}}]}}\n\n"
                    );
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        state.client_gone.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            sse(streaming(rx))
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            sse(BoxBody::new(Full::new(Bytes::new())))
        }
    }
}

async fn server(b: Behavior) -> (SocketAddr, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            st.connections.fetch_add(1, Ordering::SeqCst);
            let (b, st) = (b.clone(), st.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (b, st) = (b.clone(), st.clone());
                    async move { Ok::<_, Infallible>(handle(req, b, st).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

fn model() -> UpstreamModel {
    UpstreamModel {
        name: "cocoon-llama".into(),
        upstream_name: "meta-llama/Llama-3.1-8B-Instruct".into(),
        model_hash: "AB".repeat(32),
        max_context: 8192,
        max_completion_tokens: 1024,
    }
}

fn engine(addr: SocketAddr) -> UpstreamEngine {
    let mut cfg = UpstreamConfig::new(format!("http://{addr}"), vec![model()]);
    cfg.api_key = Some("k3y".into());
    cfg.first_byte_timeout = Duration::from_millis(500);
    cfg.idle_timeout = Duration::from_millis(500);
    cfg.max_event_bytes = 4096;
    UpstreamEngine::new(cfg).unwrap()
}

fn request(input: Input, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        model: "cocoon-llama".into(),
        input,
        sampling: Sampling {
            max_tokens,
            temperature: None,
            top_p: Some(0.5),
            seed: Some(3),
            stop: vec!["###".into()],
            presence_penalty: Some(-0.5),
            frequency_penalty: Some(0.25),
            logit_bias: vec![],
            top_logprobs: None,
        },
        max_prompt_tokens: None,
        meter: Default::default(),
        tools: vec![],
        tool_choice: Default::default(),
        response_format: Default::default(),
    }
}

fn chat(max_tokens: u32) -> GenerationRequest {
    request(
        Input::Chat(vec![Message {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }]),
        max_tokens,
    )
}

/// Runs one generation; returns the texts, the final item on the channel and the result.
async fn run(
    e: &UpstreamEngine,
    req: GenerationRequest,
) -> (
    String,
    Option<Result<Chunk, EngineError>>,
    Result<(), EngineError>,
) {
    let (tx, mut rx) = mpsc::channel(4);
    let read = async {
        let (mut text, mut last) = (String::new(), None);
        while let Some(item) = rx.recv().await {
            match &item {
                Ok(Chunk::Text(t)) => text.push_str(t),
                _ => last = Some(item),
            }
        }
        (text, last)
    };
    let (result, (text, last)) = tokio::join!(e.generate(req, tx), read);
    (text, last, result)
}

fn data(v: &str) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn raw(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn ok_stream(pieces: Vec<Bytes>) -> Behavior {
    Behavior::Stream {
        pieces,
        gap: Duration::from_millis(1),
    }
}

fn upstream_err(r: &Result<(), EngineError>) -> String {
    match r {
        Err(EngineError::Upstream(m)) => m.clone(),
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_streams_text_usage_and_finish_reason() {
    let (addr, state) = server(ok_stream(vec![
        data(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#),
        data(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#),
        // one event split across two writes, with CRLF line ends
        raw("data: {\"choices\":[{\"index\":0,\"delta\":{\"con"),
        raw("tent\":\"lo\"}}]}\r\n\r\n"),
        data(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
        data(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
        ),
        data("[DONE]"),
    ]))
    .await;
    let e = engine(addr);
    let req = chat(64);
    let meter = req.meter.clone();
    let (text, last, result) = run(&e, req).await;
    assert_eq!(result, Ok(()));
    assert_eq!(text, "Hello");
    // One token per text event until the upstream's usage report replaces the count.
    let counted = meter.usage();
    assert_eq!((counted.prompt_tokens, counted.completion_tokens), (12, 3));
    assert_eq!(
        last,
        Some(Ok(Chunk::Done {
            usage: Usage {
                prompt_tokens: 12,
                cached_tokens: 8,
                completion_tokens: 3,
                reasoning_tokens: 1
            },
            finish_reason: FinishReason::Stop,
        }))
    );
    let seen = state.seen.lock().unwrap();
    assert_eq!(seen.path.as_deref(), Some("/v1/chat/completions"));
    assert_eq!(seen.auth.as_deref(), Some("Bearer k3y"));
    let body = seen.body.as_ref().unwrap();
    assert_eq!(body["model"], "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["top_p"], 0.5);
    assert_eq!(body["seed"], 3);
    assert_eq!(body["stop"], serde_json::json!(["###"]));
    assert_eq!(body["frequency_penalty"], 0.25);
    assert_eq!(body["presence_penalty"], -0.5);
    assert!(body.get("prompt").is_none());
    assert_eq!(body["messages"][0]["content"], "hi");
}

#[tokio::test]
async fn connections_are_reused() {
    let (addr, state) = server(ok_stream(vec![
        data(r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}"#),
        data(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
        data("[DONE]"),
    ]))
    .await;
    let e = engine(addr);
    for _ in 0..3 {
        assert_eq!(run(&e, chat(4)).await.2, Ok(()));
        // the body's end is read in the background after [DONE]
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn completion_uses_prompt_and_text() {
    let (addr, state) = server(ok_stream(vec![
        data(r#"{"choices":[{"index":0,"text":" Paris","finish_reason":null}]}"#),
        data(r#"{"choices":[{"index":0,"text":".","finish_reason":"length"}]}"#),
        data(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#),
        data("[DONE]"),
    ]))
    .await;
    let e = engine(addr);
    let (text, last, result) = run(&e, request(Input::Prompt("The capital".into()), 2)).await;
    assert_eq!(result, Ok(()));
    assert_eq!(text, " Paris.");
    assert_eq!(
        last,
        Some(Ok(Chunk::Done {
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                ..Usage::default()
            },
            finish_reason: FinishReason::Length,
        }))
    );
    let seen = state.seen.lock().unwrap();
    assert_eq!(seen.path.as_deref(), Some("/v1/completions"));
    assert_eq!(seen.body.as_ref().unwrap()["prompt"], "The capital");
}

#[tokio::test]
async fn usage_without_done_marker_is_accepted_at_eof() {
    let (addr, _) = server(ok_stream(vec![
        data(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}"#),
        data(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
    ]))
    .await;
    let (text, last, result) = run(&engine(addr), chat(4)).await;
    assert_eq!((text.as_str(), result), ("x", Ok(())));
    assert!(matches!(last, Some(Ok(Chunk::Done { .. }))));
}

#[tokio::test]
async fn error_status_is_an_upstream_error_with_the_body() {
    let (addr, _) = server(Behavior::Status(500, "model crashed\n".into())).await;
    let (text, last, result) = run(&engine(addr), chat(4)).await;
    let msg = upstream_err(&result);
    assert!(
        msg.contains("500") && msg.contains("model crashed"),
        "{msg}"
    );
    assert!(text.is_empty());
    // The error is also sent on the channel.
    assert_eq!(last, Some(Err(EngineError::Upstream(msg.clone()))));

    let (addr, _) = server(Behavior::Status(400, "y".repeat(100_000))).await;
    let (_, _, result) = run(&engine(addr), chat(4)).await;
    let msg = upstream_err(&result);
    assert!(
        msg.contains("400") && msg.len() < 1000,
        "{} bytes",
        msg.len()
    );
}

#[tokio::test]
async fn missing_usage_is_an_error() {
    let (addr, _) = server(ok_stream(vec![
        data(r#"{"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}"#),
        data("[DONE]"),
    ]))
    .await;
    let (text, _, result) = run(&engine(addr), chat(4)).await;
    assert_eq!(text, "a");
    assert_eq!(
        result,
        Err(EngineError::Upstream("upstream sent no usage".into()))
    );
}

#[tokio::test]
async fn malformed_streams_are_errors() {
    for (pieces, expect) in [
        (vec![data("{not json")], "malformed"),
        (
            vec![raw(&format!("data: {}", "z".repeat(10_000)))],
            "larger than",
        ),
        (
            vec![data(r#"{"error":{"message":"out of memory"}}"#)],
            "out of memory",
        ),
        (
            vec![data(
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":99}}"#,
            )],
            "99 completion tokens",
        ),
        (vec![Bytes::from_static(b"data: \xff\xfe\n\n")], "utf-8"),
    ] {
        let (addr, _) = server(ok_stream(pieces)).await;
        let (_, _, result) = run(&engine(addr), chat(4)).await;
        let msg = upstream_err(&result);
        assert!(msg.contains(expect), "{msg}");
    }
    let (addr, _) = server(Behavior::Json(r#"{"choices":[]}"#.into())).await;
    let msg = upstream_err(&run(&engine(addr), chat(4)).await.2);
    assert!(msg.contains("content-type"), "{msg}");
}

#[tokio::test]
async fn connection_failure_and_timeouts_are_upstream_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let msg = upstream_err(&run(&engine(addr), chat(4)).await.2);
    assert!(msg.contains("request failed"), "{msg}");

    let (addr, _) = server(Behavior::Hang).await;
    let t = Instant::now();
    let msg = upstream_err(&run(&engine(addr), chat(4)).await.2);
    assert!(msg.contains("no response"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(3));

    // Headers arrive but the body stalls.
    let (addr, _) = server(Behavior::Stream {
        pieces: vec![
            data(r#"{"choices":[{"delta":{"content":"a"}}]}"#),
            data("[DONE]"),
        ],
        gap: Duration::from_secs(10),
    })
    .await;
    let t = Instant::now();
    let (text, _, result) = run(&engine(addr), chat(4)).await;
    assert_eq!(text, "a");
    assert!(upstream_err(&result).contains("stalled"));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn dropping_the_receiver_aborts_the_upstream_request() {
    let (addr, state) = server(Behavior::Endless).await;
    let e = engine(addr);
    let (tx, mut rx) = mpsc::channel(1);
    let req = chat(1000);
    let meter = req.meter.clone();
    let gen = e.generate(req, tx);
    let cancel = async {
        let first = rx.recv().await;
        assert!(matches!(first, Some(Ok(Chunk::Text(_)))), "{first:?}");
        drop(rx);
        Instant::now()
    };
    let (result, dropped) = tokio::join!(gen, cancel);
    assert_eq!(result, Ok(()));
    assert!(dropped.elapsed() < Duration::from_secs(1));
    // The work until then: at least the token received (the prompt is the upstream's to
    // count; it reported none).
    let counted = meter.usage();
    assert_eq!(counted.prompt_tokens, 0);
    assert!(counted.completion_tokens >= 1, "{counted:?}");
    // The server sees the connection go away (its next write fails).
    let t = Instant::now();
    while !state.client_gone.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "upstream still streaming"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unknown_models_and_adverts() {
    let (addr, _) = server(Behavior::Hang).await;
    let e = engine(addr);
    let mut req = chat(4);
    req.model = "meta-llama/Llama-3.1-8B-Instruct".into();
    assert_eq!(
        run(&e, req).await.2,
        Err(EngineError::UnknownModel(
            "meta-llama/Llama-3.1-8B-Instruct".into()
        ))
    );
    let adverts = e.models();
    assert_eq!(adverts.len(), 1);
    assert_eq!(adverts[0].name, "cocoon-llama");
    assert_eq!(adverts[0].model_hash, "ab".repeat(32));
    assert_eq!(adverts[0].max_context, 8192);
    assert_eq!(adverts[0].max_completion_tokens, 1024);
}

#[test]
fn base_url_must_be_http_with_an_ip_literal() {
    let new = |url: &str| UpstreamEngine::new(UpstreamConfig::new(url, vec![model()]));
    for ok in [
        "http://127.0.0.1:8000",
        "http://10.0.0.2",
        "http://[::1]:9/api/",
    ] {
        assert!(new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "https://127.0.0.1",
        "http://localhost:8000",
        "http://vllm.internal",
        "127.0.0.1:8000",
        "http://u:p@127.0.0.1/",
        "http://127.0.0.1/?x=1",
        "",
    ] {
        assert!(
            matches!(new(bad), Err(UpstreamConfigError::BadUrl { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_path_prefix_is_kept() {
    let (addr, state) = server(ok_stream(vec![
        data(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0}}"#),
        data("[DONE]"),
    ]))
    .await;
    let e = UpstreamEngine::new(UpstreamConfig::new(
        format!("http://{addr}/openai/"),
        vec![model()],
    ))
    .unwrap();
    assert_eq!(run(&e, chat(4)).await.2, Ok(()));
    let path = state.seen.lock().unwrap().path.clone();
    assert_eq!(path.as_deref(), Some("/openai/v1/chat/completions"));
}

#[test]
fn config_is_validated() {
    let new = |models| UpstreamEngine::new(UpstreamConfig::new("http://127.0.0.1:1", models));
    let bad_hash = UpstreamModel {
        model_hash: "zz".into(),
        ..model()
    };
    assert!(matches!(
        new(vec![bad_hash]),
        Err(UpstreamConfigError::BadHash { .. })
    ));
    assert_eq!(
        new(vec![model(), model()]).unwrap_err(),
        UpstreamConfigError::DuplicateModel {
            model: "cocoon-llama".into()
        }
    );
    assert_eq!(new(vec![]).unwrap_err(), UpstreamConfigError::NoModels);
    let zero = UpstreamModel {
        max_context: 0,
        ..model()
    };
    assert!(matches!(
        new(vec![zero]),
        Err(UpstreamConfigError::Zero { .. })
    ));
    let mut cfg = UpstreamConfig::new("http://127.0.0.1:1", vec![model()]);
    cfg.api_key = Some("secret".into());
    assert!(!format!("{cfg:?}").contains("secret"));
    let e = UpstreamEngine::new(cfg.clone()).unwrap();
    assert!(!format!("{e:?}").contains("secret"));
    cfg.api_key = Some("bad\nkey".into());
    assert_eq!(
        UpstreamEngine::new(cfg).unwrap_err(),
        UpstreamConfigError::BadApiKey
    );
}
