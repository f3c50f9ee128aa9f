//! A fake proxy: an RA-TLS server (simulated TDX platform, proxy role, account certificates
//! required) speaking HTTP/2 with canned answers chosen by the `cocoon-model` header, and a
//! small HTTP/1.1 client for the local endpoint. The simulated platform, the proxy's TD and
//! its certificate come from `cocoon-test-support` (re-exported here).
#![allow(dead_code)]

pub use test_support::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use client::config::ClientConfig;
use client::serve::{self, ServeOptions};
use client::Client;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use measurements::{ImageHash, Policy, TdRegisters};
use protocol::sse::Event;
use protocol::{ApiError, ErrorKind, Usage};
use ratls::account::AccountKey;
use ratls::Role;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Usage the fake proxy reports for every successful request.
pub const USAGE: Usage = Usage {
    prompt_tokens: 11,
    cached_tokens: 0,
    completion_tokens: 3,
    reasoning_tokens: 0,
};

/// One request as the fake proxy received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub account: Option<String>,
}

pub struct FakeProxy {
    pub addr: SocketAddr,
    pub image: ImageHash,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub control: Arc<Control>,
}

/// Switches of a running fake proxy.
#[derive(Debug)]
pub struct Control {
    /// Answer the model list with no models.
    pub no_models: AtomicBool,
    /// Set to stop: the listener closes and open connections are dropped.
    pub down: tokio::sync::watch::Sender<bool>,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            no_models: AtomicBool::new(false),
            down: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl FakeProxy {
    /// Stops the proxy: its port is closed, its connections dropped.
    pub fn stop(&self) {
        self.control.down.send_replace(true);
    }
}

/// Models the fake proxy serves; `GET /v1/models/{id}` finds them by their raw path.
pub const FAKE_MODELS: [&str; 2] = ["ok", "org/name"];

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "cocoon"})
}

fn chat_chunk(delta: serde_json::Value, finish: Option<&str>) -> Event {
    Event::data(
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_750_000_000,
            "model": "ok", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
        .to_string(),
    )
}

fn text_chunk(text: &str, finish: Option<&str>) -> Event {
    Event::data(
        json!({
            "id": "cmpl-fake", "object": "text_completion", "created": 1_750_000_000,
            "model": "ok", "choices": [{"index": 0, "text": text, "finish_reason": finish}]
        })
        .to_string(),
    )
}

/// The fake proxy's response bodies.
type ProxyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).boxed()
}

fn sse(events: &[Event]) -> Response<ProxyBody> {
    let body: Vec<u8> = events.iter().flat_map(Event::encode).collect();
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(full(body))
        .expect("response")
}

fn error(e: &ApiError) -> Response<ProxyBody> {
    Response::builder()
        .status(e.status())
        .header("content-type", "application/json")
        .body(full(e.to_json()))
        .expect("response")
}

/// A stream that sends `first` and then nothing, without ending.
fn endless(first: Event) -> Response<ProxyBody> {
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(first.encode())))
    });
    let body = http_body_util::StreamBody::new(first.chain(futures::stream::pending()));
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .expect("response")
}

/// A stream of `frames`, each sent `gap` after the one before (as a worker's keepalives come
/// while it processes a prompt).
fn paced(gap: Duration, frames: Vec<Vec<u8>>) -> Response<ProxyBody> {
    let frames = futures::stream::iter(frames).then(move |f| async move {
        tokio::time::sleep(gap).await;
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(f)))
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        .expect("response")
}

/// The canned answer for a request.
fn answer(path: &str, model: &str, control: &Control) -> Response<ProxyBody> {
    if path == "/v1/models" {
        let data: Vec<_> = if control.no_models.load(Ordering::SeqCst) {
            Vec::new()
        } else {
            FAKE_MODELS.iter().map(|id| model_object(id)).collect()
        };
        let body = json!({"object": "list", "data": data});
        return Response::new(full(body.to_string()));
    }
    if let Some(raw) = path.strip_prefix("/v1/models/") {
        return match FAKE_MODELS.iter().find(|id| **id == raw) {
            Some(id) => Response::new(full(model_object(id).to_string())),
            None => error(
                &ApiError::new(ErrorKind::ModelNotFound, format!("no model at {raw:?}"))
                    .with_param("model"),
            ),
        };
    }
    let done = [Event::usage(&USAGE), Event::done()];
    match (path, model) {
        ("/v1/completions", _) => sse(&[
            text_chunk("Hello", None),
            text_chunk(" world", Some("stop")),
            done[0].clone(),
            done[1].clone(),
        ]),
        (_, "ok") => sse(&[
            chat_chunk(json!({"role": "assistant", "content": ""}), None),
            chat_chunk(json!({"content": "Hello"}), None),
            chat_chunk(json!({"content": " world"}), None),
            chat_chunk(json!({}), Some("stop")),
            Event::named("cocoon-receipt", "{}"),
            done[0].clone(),
            done[1].clone(),
        ]),
        (_, "midfail") => sse(&[
            chat_chunk(json!({"content": "Hel"}), None),
            Event::error(&ApiError::new(ErrorKind::Timeout, "worker stalled")),
        ]),
        (_, "firstfail") => sse(&[Event::error(&ApiError::new(
            ErrorKind::Upstream,
            "worker connection lost",
        ))]),
        (_, "truncated") => sse(&[chat_chunk(json!({"content": "Hel"}), None)]),
        // A long prompt: keepalive comments, then the answer (or an error).
        (_, "slowprefill") | (_, "prefillfail") => {
            let keepalive = protocol::sse::KEEPALIVE.to_vec();
            let mut frames = vec![keepalive.clone(), keepalive];
            if model == "slowprefill" {
                frames.push(
                    [
                        chat_chunk(json!({"role": "assistant", "content": "Hello"}), None),
                        chat_chunk(json!({}), Some("stop")),
                        done[0].clone(),
                        done[1].clone(),
                    ]
                    .iter()
                    .flat_map(|e| e.encode())
                    .collect(),
                );
            } else {
                frames.push(
                    Event::error(&ApiError::new(
                        ErrorKind::Upstream,
                        "worker connection lost",
                    ))
                    .encode(),
                );
            }
            paced(Duration::from_millis(100), frames)
        }
        (_, "endless") => endless(chat_chunk(json!({"content": "Hel"}), None)),
        (_, "busy") => error(&ApiError::new(ErrorKind::NoCapacity, "all workers busy")),
        (_, "unknownfield") => error(
            &ApiError::new(ErrorKind::InvalidRequest, "unknown field `foo`").with_param("foo"),
        ),
        (_, m) => error(
            &ApiError::new(ErrorKind::ModelNotFound, format!("no worker serves {m}"))
                .with_param("model"),
        ),
    }
}

/// Starts a fake proxy with `regs` on the simulated platform.
pub async fn spawn_proxy_with(regs: TdRegisters) -> FakeProxy {
    spawn_proxy_at(regs, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts a fake proxy with `regs` listening on `addr`.
pub async fn spawn_proxy_at(regs: TdRegisters, addr: SocketAddr) -> FakeProxy {
    let resolver = resolver(regs, Role::Proxy, now());
    let config = ratls::account::account_server_config(resolver, &[b"h2"]).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let control = Arc::new(Control::default());
    let log = requests.clone();
    let ctl = control.clone();
    let mut down = control.down.subscribe();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => return,
                },
                _ = down.wait_for(|d| *d) => return,
            };
            let acceptor = acceptor.clone();
            let log = log.clone();
            let ctl = ctl.clone();
            let mut conn_down = ctl.down.subscribe();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let account = ratls::account::peer_account(tls.get_ref().1);
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    let account = account.clone();
                    let ctl = ctl.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let model = parts
                            .headers
                            .get("cocoon-model")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        log.lock().unwrap().push(Recorded {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_string(),
                            headers: parts.headers.clone(),
                            body,
                            account,
                        });
                        Ok::<_, Infallible>(answer(parts.uri.path(), &model, &ctl))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service);
                tokio::select! {
                    _ = conn => {}
                    _ = conn_down.wait_for(|d| *d) => {}
                }
            });
        }
    });
    FakeProxy {
        addr,
        image: proxy_regs().image_hash(),
        requests,
        control,
    }
}

pub async fn spawn_proxy() -> FakeProxy {
    spawn_proxy_with(proxy_regs()).await
}

/// A client config for `proxy` that accepts `image` on the simulated root.
pub fn client_config(proxy: &FakeProxy, image: ImageHash) -> ClientConfig {
    let mut c = ClientConfig::new(
        proxy.addr.to_string(),
        Arc::new(AccountKey::from_seed([5u8; 32])),
        Policy::simulated(sim_root()).with_images([image]),
    );
    c.connect_timeout = Duration::from_secs(5);
    c.idle_timeout = Duration::from_secs(10);
    c
}

/// Starts the local endpoint for `config`; returns its address.
pub async fn spawn_local(config: ClientConfig) -> SocketAddr {
    spawn_local_with(config, ServeOptions::default()).await
}

/// Starts the local endpoint for `config` with `opts`; returns its address.
pub async fn spawn_local_with(config: ClientConfig, opts: ServeOptions) -> SocketAddr {
    let client = Arc::new(Client::new(config).expect("client"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve::run(listener, client, opts, std::future::pending()));
    addr
}

/// Starts the local endpoint for `config` with `opts`, stopped when `stop` fires; returns its
/// address and the server task (which ends once `run` returns).
pub async fn spawn_local_stoppable(
    config: ClientConfig,
    opts: ServeOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let client = Arc::new(Client::new(config).expect("client"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(serve::run(listener, client, opts, async move {
        let _ = stop.await;
    }));
    (addr, task)
}

/// A raw HTTP/1.1 exchange: writes the whole request, then reads the whole response (the way
/// simple clients do). Returns status, lowercase header lines, body.
pub async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let status = head[9..12].parse().expect("status");
    (status, head.to_ascii_lowercase(), rest.as_bytes().to_vec())
}

/// One request with `Connection: close` and a Content-Length body; the response body is
/// de-chunked if needed.
/// Sends a chat completions `body` on a raw connection of its own (keep-alive unless
/// `close`), to read its answer byte by byte; returns the connection.
pub async fn send_chat_raw(addr: SocketAddr, body: &[u8], close: bool) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let host = addr.to_string();
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/json"),
    ];
    request_with(addr, method, path, &headers, body).await
}

/// Like [`request`], with exactly `headers` (plus Content-Length and `Connection: close`).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let (status, head, body) = raw_http(addr, &head, body).await;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after 10 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The cancels (`POST /cocoon/v1/cancel`) the fake proxy received so far.
pub fn cancels(proxy: &FakeProxy) -> Vec<Recorded> {
    proxy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == protocol::paths::CANCEL)
        .cloned()
        .collect()
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(body)))
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    let mut d = protocol::sse::Decoder::default();
    d.feed(body)
        .expect("sse")
        .into_iter()
        .map(|e| {
            assert!(e.name.is_none(), "cocoon event leaked to the app: {e:?}");
            e.data
        })
        .collect()
}
