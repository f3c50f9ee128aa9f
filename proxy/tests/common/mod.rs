//! The proxy's fixtures: an in-process proxy, a fake worker (an HTTP/2 server over RA-TLS that
//! speaks the protocol, with failure modes) and a client. The simulated platform, the test TDs,
//! their certificates and policies come from `cocoon-test-support` (re-exported here).
#![allow(dead_code)]

pub mod chain;
pub mod process;
pub mod real;
pub mod slow;

pub use test_support::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use measurements::{Policy, TdRegisters};
use protocol::meta::H_MAX_TOKENS;
use protocol::sse::{Decoder, Event};
use protocol::{ApiError, Hello, ModelAdvert, Registration, RequestId, RequestMeta, Usage};
use proxy::{MemoryLedger, Proxy, ProxyConfig, RunningProxy};
use ratls::account::AccountKey;
use ratls::{client_config, PeerVerifier, RaTlsServerVerifier, Role, SystemClock};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub const MODEL: &str = "stub-model";

pub struct TestProxy {
    pub running: RunningProxy,
    pub ledger: Arc<MemoryLedger>,
}

impl TestProxy {
    pub fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.running.json_stats()).expect("json")
    }

    /// Waits until `n` workers are registered.
    pub async fn wait_workers(&self, n: usize) {
        wait_workers(&self.running, n).await;
    }

    /// GETs `path` on the admin port.
    pub async fn admin(&self, path: &str) -> (StatusCode, String) {
        admin_get(self.running.admin_addr, path).await
    }
}

/// Waits until `n` workers are registered at `running` (at most 20 s).
pub async fn wait_workers(running: &RunningProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.state().registry.len() != n {
        assert!(Instant::now() < deadline, "expected {n} workers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GETs `path` on the admin port at `admin`.
pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts a proxy with the default test config changed by `tweak`.
pub async fn start_proxy(tweak: impl FnOnce(&mut ProxyConfig)) -> TestProxy {
    start_proxy_with(worker_policy(), Arc::new(SystemClock), tweak).await
}

/// [`start_proxy`] with a worker policy and a clock of the test's choosing.
pub async fn start_proxy_with(
    policy: Policy,
    clock: Arc<dyn ratls::Clock>,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> TestProxy {
    let mut config = ProxyConfig::local("test-proxy");
    config.accounts.default_balance_nano = Some(1_000_000_000_000);
    tweak(&mut config);
    let ledger = Arc::new(MemoryLedger::new(&config.accounts));
    let running = start_proxy_on(config, policy, clock, ledger.clone()).await;
    TestProxy { running, ledger }
}

/// A proxy with `config`, `policy` and `clock` keeping its accounts in `ledger` (the test
/// proxy's identity, no payments).
pub async fn start_proxy_on(
    config: ProxyConfig,
    policy: Policy,
    clock: Arc<dyn ratls::Clock>,
    ledger: Arc<dyn proxy::Ledger>,
) -> RunningProxy {
    Proxy {
        config,
        resolver: resolver(proxy_regs(), Role::Proxy, now()),
        worker_policy: policy,
        clock,
        ledger,
        payments: None,
        collateral_source: None,
    }
    .start()
    .await
    .expect("proxy starts")
}

/// How a fake worker answers completion requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behavior {
    Normal,
    /// Answer with this status and an error body.
    Status(u16),
    /// Reset the stream before any response.
    Reset,
    /// Never answer (no response headers).
    Hang,
    /// Close the whole connection after this many tokens.
    DieAfter(u32),
    /// Stop all I/O (without closing) after this many tokens.
    FreezeAfter(u32),
    /// Send nothing more on this stream after this many tokens (the connection stays
    /// healthy) until the proxy resets it.
    StallAfter(u32),
    /// Send the frames the request body lists ([`Replay`]), one DATA frame each, then end the
    /// stream or close the connection.
    Replay,
}

/// A request body for [`Behavior::Replay`]: the worker sends `frames` as they are.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    pub frames: Vec<String>,
    /// Close the whole connection after the frames instead of ending the stream.
    pub die: bool,
}

#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub name: String,
    pub model: String,
    pub capacity: u32,
    pub tokens: u32,
    pub interval: Duration,
    pub coefficient_milli: u32,
    pub prompt_tokens: u64,
    pub behavior: Behavior,
    pub regs: TdRegisters,
    pub role: Role,
    /// End-to-end keys in the worker's claims: encrypted requests are answered sealed.
    pub e2e: Option<Arc<FakeE2e>>,
    /// Whether it stops a generation on the proxy's cancel (`POST /cocoon/v1/cancel`),
    /// ending its stream with the usage so far, as the real worker does; `false`: it answers
    /// 404 to every cancel, like a worker without the route.
    pub honors_cancel: bool,
    /// How long it takes, once stopped, to end the stream with the usage so far.
    pub stop_delay: Duration,
    /// What it does once stopped (after `stop_delay`).
    pub on_stop: OnStop,
    /// Whether it keeps generating (one token per `interval`) during `stop_delay`, as an
    /// engine that finishes its batch before it sees the stop.
    pub streams_while_stopping: bool,
    /// Whether it keeps each request's headers and body in [`WorkerObs`] (tests read them;
    /// the relay benchmark turns it off: a store that grows per request is no worker's work).
    pub record: bool,
}

/// What a fake worker does when the proxy stops a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStop {
    /// Ends the stream with the usage so far and `[DONE]`, as the real worker does.
    Usage,
    /// Closes the whole connection (a crash).
    Die,
    /// Sends bytes that are no event stream (not UTF-8).
    Garbage,
}

/// What a fake worker's receipt says ([`FakeE2e`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptMode {
    /// A receipt as the real worker signs it.
    Valid,
    /// The valid receipt with one byte of its usage flipped after signing.
    Edited,
    /// Validly signed, but for another request hash.
    OtherRequest,
    /// None at all.
    Missing,
}

/// A fake worker's end-to-end keys: it opens sealed requests and answers with sealed chunks
/// and a receipt (`receipt`), the way `worker::e2e` does.
#[derive(Debug)]
pub struct FakeE2e {
    pub key: protocol::e2e::RecipientKey,
    pub signing: ed25519_dalek::SigningKey,
    pub receipt: ReceiptMode,
    /// Usage the receipt and the inner usage event report.
    pub usage: Usage,
}

impl FakeE2e {
    pub fn new(seed: u8, receipt: ReceiptMode) -> Self {
        Self {
            key: protocol::e2e::RecipientKey::derive(seed, &[seed; 32]),
            signing: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
            receipt,
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 3,
                ..Usage::default()
            },
        }
    }

    pub fn keys(&self) -> protocol::e2e::WorkerKeys {
        protocol::e2e::WorkerKeys {
            key_config: self.key.config().clone(),
            receipt_key: self.signing.verifying_key(),
        }
    }

    /// The worker's claims with these keys.
    pub fn claims(&self) -> ratls::Claims {
        let mut c = ratls::Claims::new(Role::Worker, 1);
        for (k, v) in self.keys().claims() {
            c.extra.insert(k.to_string(), v);
        }
        c
    }

    pub fn claims_hash(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.claims().to_canonical_json().unwrap()).into()
    }
}

impl WorkerSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            model: MODEL.into(),
            capacity: 64,
            tokens: 32,
            interval: Duration::from_micros(500),
            coefficient_milli: 1000,
            prompt_tokens: 7,
            behavior: Behavior::Normal,
            regs: worker_regs(),
            role: Role::Worker,
            e2e: None,
            honors_cancel: true,
            stop_delay: Duration::ZERO,
            on_stop: OnStop::Usage,
            streams_while_stopping: false,
            record: true,
        }
    }
}

/// What a fake worker observed.
#[derive(Debug, Default)]
pub struct WorkerObs {
    pub requests: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cancelled_at: Mutex<Option<Instant>>,
    pub headers: Mutex<Vec<HeaderMap>>,
    pub bodies: Mutex<Vec<Bytes>>,
    pub failed_at: Mutex<Option<Instant>>,
    /// Set once the proxy's handshake failed (refused).
    pub refused: AtomicBool,
    /// Cancels received (`POST /cocoon/v1/cancel`), answered or not.
    pub cancels: AtomicU64,
    /// Generations stopped by a cancel (their streams ended with the usage so far).
    pub stopped: AtomicU64,
    /// When the last one was stopped.
    pub stopped_at: Mutex<Option<Instant>>,
}

/// The running generations of one fake worker connection by (request id, stream tag).
type FakeStops = Arc<Mutex<HashMap<(String, u64), Arc<Notify>>>>;

/// A generation's entry in [`FakeStops`], removed on drop.
struct FakeStop {
    stops: FakeStops,
    key: Option<(String, u64)>,
    signal: Arc<Notify>,
}

impl FakeStop {
    fn register(stops: &FakeStops, headers: &HeaderMap) -> Self {
        let key = stop_key(headers);
        let signal = Arc::new(Notify::new());
        if let Some(k) = &key {
            stops.lock().unwrap().insert(k.clone(), signal.clone());
        }
        Self {
            stops: stops.clone(),
            key,
            signal,
        }
    }

    /// Resolves once a cancel names this generation.
    async fn requested(&self) {
        self.signal.notified().await
    }
}

impl Drop for FakeStop {
    fn drop(&mut self) {
        if let Some(k) = &self.key {
            self.stops.lock().unwrap().remove(k);
        }
    }
}

fn stop_key(headers: &HeaderMap) -> Option<(String, u64)> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let id = text(protocol::meta::H_REQUEST_ID)?;
    let tag = text(protocol::meta::H_STREAM_TAG)?.parse().ok()?;
    Some((id.to_string(), tag))
}

/// Ends the stream of a generation stopped after `tokens` as `spec.on_stop` says.
async fn end_stopped(spec: &WorkerSpec, tx: &mpsc::Sender<Bytes>, kill: &Notify, tokens: u32) {
    let until = tokio::time::Instant::now() + spec.stop_delay;
    let mut tokens = tokens;
    while spec.streams_while_stopping && tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, tx.send(token_event(&spec.model, tokens))).await {
            Ok(Ok(())) => tokens += 1,
            Ok(Err(_)) => return,
            Err(_) => break,
        }
        tokio::time::sleep(spec.interval.max(Duration::from_millis(1))).await;
    }
    tokio::time::sleep_until(until).await;
    match spec.on_stop {
        OnStop::Usage => {
            let _ = tx.send(stopped_tail(spec.prompt_tokens, tokens)).await;
        }
        OnStop::Die => kill.notify_one(),
        OnStop::Garbage => {
            let _ = tx.send(Bytes::from_static(b"data: \xff\xfe\n\n")).await;
        }
    }
}

/// The usage event and `[DONE]` of a generation stopped after `completion_tokens`.
fn stopped_tail(prompt_tokens: u64, completion_tokens: u32) -> Bytes {
    let usage = Usage {
        prompt_tokens,
        completion_tokens: u64::from(completion_tokens),
        ..Usage::default()
    };
    let mut tail = Event::usage(&usage).encode();
    tail.extend(Event::done().encode());
    Bytes::from(tail)
}

pub struct FakeWorker {
    pub obs: Arc<WorkerObs>,
    pub task: JoinHandle<()>,
}

impl FakeWorker {
    /// Connects to the proxy and serves until killed.
    pub async fn connect(proxy: SocketAddr, spec: WorkerSpec) -> Self {
        let obs = Arc::new(WorkerObs::default());
        let task = tokio::spawn(run_worker(proxy, spec, obs.clone()));
        Self { obs, task }
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A transport that can be frozen: all reads and writes stay pending forever.
struct Freezable<T> {
    inner: T,
    frozen: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Freezable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Freezable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body fed by a channel (dropped by hyper when the stream is reset).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A token stream as the worker sends it: what is already queued goes out in one DATA frame
/// (`protocol::sse::gather`), so that benchmarks at max rate see the worker's framing. `first`: the
/// event the worker already holds when it answers (the real worker answers with its first
/// output in hand, so its response head and first event leave together).
pub struct GatheringBody {
    pub first: Option<Bytes>,
    pub rx: mpsc::Receiver<Bytes>,
}

impl Body for GatheringBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let first = match self.first.take() {
            Some(b) => b,
            None => match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(b) => b,
                None => return Poll::Ready(None),
            },
        };
        let rx = &mut self.rx;
        let data = protocol::sse::gather(first, || rx.try_recv().ok());
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// A 200 response carrying `body` as `text/event-stream` (how a worker answers a stream).
pub fn event_stream<B>(body: B) -> Response<B> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

type WorkerBody =
    http_body_util::Either<Full<Bytes>, http_body_util::Either<ChannelBody, GatheringBody>>;

fn full(status: StatusCode, body: Vec<u8>) -> Response<WorkerBody> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

async fn run_worker(proxy: SocketAddr, spec: WorkerSpec, obs: Arc<WorkerObs>) {
    let resolver = match &spec.e2e {
        Some(e2e) => Arc::new(
            ratls::CertResolver::new(&cert_with_claims(spec.regs, &e2e.claims(), now())).unwrap(),
        ),
        None => resolver(spec.regs, spec.role, now()),
    };
    let verifier = Arc::new(PeerVerifier::new(proxy_policy(), Arc::new(SystemClock)));
    let cfg = client_config(
        Some(resolver),
        Arc::new(RaTlsServerVerifier::new(verifier)),
        &[b"h2"],
    )
    .unwrap();
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let io = Freezable {
        inner: tcp,
        frozen: frozen.clone(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = match connector
        .connect(ServerName::try_from("proxy.invalid").unwrap(), io)
        .await
    {
        Ok(t) => t,
        Err(_) => {
            obs.refused.store(true, Ordering::SeqCst);
            return;
        }
    };
    let kill = Arc::new(Notify::new());
    let spec = Arc::new(spec);
    let stops = FakeStops::default();
    let svc = {
        let (obs, kill, frozen) = (obs.clone(), kill.clone(), frozen.clone());
        service_fn(move |req: Request<Incoming>| {
            let (spec, obs, kill, frozen, stops) = (
                spec.clone(),
                obs.clone(),
                kill.clone(),
                frozen.clone(),
                stops.clone(),
            );
            async move { handle(req, spec, obs, kill, frozen, stops).await }
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc);
    // A handshake failure on the proxy side shows up as an immediately failing connection.
    tokio::select! {
        r = conn => {
            if r.is_err() {
                obs.refused.store(true, Ordering::SeqCst);
            }
        }
        _ = kill.notified() => {}
    }
}

async fn handle(
    req: Request<Incoming>,
    spec: Arc<WorkerSpec>,
    obs: Arc<WorkerObs>,
    kill: Arc<Notify>,
    frozen: Arc<AtomicBool>,
    stops: FakeStops,
) -> Result<Response<WorkerBody>, io::Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let headers = parts.headers;
    if path == protocol::paths::CANCEL {
        obs.cancels.fetch_add(1, Ordering::SeqCst);
        let running = stop_key(&headers)
            .filter(|_| spec.honors_cancel)
            .and_then(|k| stops.lock().unwrap().get(&k).cloned());
        return Ok(match running {
            Some(signal) => {
                signal.notify_one();
                full(StatusCode::OK, br#"{"stopped":1}"#.to_vec())
            }
            None => full(
                StatusCode::NOT_FOUND,
                ApiError::new(protocol::ErrorKind::NotFound, "nothing runs").to_json(),
            ),
        });
    }
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    if path == protocol::paths::HELLO {
        let hello: Hello = serde_json::from_slice(&body).map_err(io::Error::other)?;
        assert_eq!(hello.proxy, "test-proxy");
        let reg = Registration {
            version: 1,
            worker: spec.name.clone(),
            models: vec![ModelAdvert {
                name: spec.model.clone(),
                model_hash: "ab".repeat(32),
                max_context: 8192,
                max_completion_tokens: 4096,
            }],
            capacity: spec.capacity,
            price_coefficient_milli: spec.coefficient_milli,
            payout: None,
        };
        return Ok(full(StatusCode::OK, serde_json::to_vec(&reg).unwrap()));
    }
    obs.requests.fetch_add(1, Ordering::SeqCst);
    if spec.record {
        obs.headers.lock().unwrap().push(headers.clone());
        obs.bodies.lock().unwrap().push(body.clone());
    }
    if let (Some(e2e), true, false) = (
        &spec.e2e,
        protocol::e2e::is_encrypted(&headers),
        matches!(spec.behavior, Behavior::Status(_)),
    ) {
        return Ok(sealed_answer(
            &path,
            &headers,
            &body,
            e2e,
            spec.coefficient_milli,
        ));
    }
    match spec.behavior {
        Behavior::Replay => return Ok(replay(&body, kill)),
        Behavior::Status(s) => {
            let err = ApiError::new(
                protocol::error::kind_for_status(s),
                format!("fake worker status {s}"),
            );
            return Ok(full(StatusCode::from_u16(s).unwrap(), err.to_json()));
        }
        Behavior::Reset => return Err(io::Error::other("reset")),
        Behavior::Hang => {
            // Never answers, unless stopped: then just the usage of the prompt.
            let stop = FakeStop::register(&stops, &headers);
            stop.requested().await;
            obs.stopped.fetch_add(1, Ordering::SeqCst);
            *obs.stopped_at.lock().unwrap() = Some(Instant::now());
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tx.try_send(stopped_tail(spec.prompt_tokens, 0)).unwrap();
            let mut r = Response::new(http_body_util::Either::Right(http_body_util::Either::Left(
                ChannelBody(rx),
            )));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            return Ok(r);
        }
        _ => {}
    }
    let max_tokens: u32 = headers
        .get(H_MAX_TOKENS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX);
    let n = spec.tokens.min(max_tokens);
    let plain = matches!(spec.behavior, Behavior::Normal);
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let stop = FakeStop::register(&stops, &headers);
    tokio::spawn(async move {
        let mut tick = (!spec.interval.is_zero()).then(|| tokio::time::interval(spec.interval));
        for i in 0..n {
            let stopped = tokio::select! {
                biased;
                () = stop.requested() => true,
                () = std::future::ready(()) => false,
            };
            if stopped {
                obs.stopped.fetch_add(1, Ordering::SeqCst);
                *obs.stopped_at.lock().unwrap() = Some(Instant::now());
                end_stopped(&spec, &tx, &kill, i).await;
                return;
            }
            match spec.behavior {
                Behavior::DieAfter(k) if i == k => {
                    *obs.failed_at.lock().unwrap() = Some(Instant::now());
                    kill.notify_one();
                    return;
                }
                Behavior::FreezeAfter(k) if i == k => {
                    *obs.failed_at.lock().unwrap() = Some(Instant::now());
                    frozen.store(true, Ordering::SeqCst);
                    return;
                }
                Behavior::StallAfter(k) if i == k => {
                    *obs.failed_at.lock().unwrap() = Some(Instant::now());
                    tx.closed().await;
                    obs.cancelled.fetch_add(1, Ordering::SeqCst);
                    *obs.cancelled_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                _ => {}
            }
            if let Some(t) = tick.as_mut() {
                tokio::select! {
                    _ = t.tick() => {}
                    () = stop.requested() => {
                        obs.stopped.fetch_add(1, Ordering::SeqCst);
                        *obs.stopped_at.lock().unwrap() = Some(Instant::now());
                        end_stopped(&spec, &tx, &kill, i).await;
                        return;
                    }
                }
            }
            if tx.send(token_event(&spec.model, i)).await.is_err() {
                obs.cancelled.fetch_add(1, Ordering::SeqCst);
                *obs.cancelled_at.lock().unwrap() = Some(Instant::now());
                return;
            }
        }
        if tx.send(usage_tail(spec.prompt_tokens, n)).await.is_ok() {
            obs.completed.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Like the real worker, a plain stream is answered once its first event is ready.
    let first = if plain { rx.recv().await } else { None };
    Ok(event_stream(http_body_util::Either::Right(
        http_body_util::Either::Right(GatheringBody { first, rx }),
    )))
}

/// A sealed answer to a sealed request: one content chunk, usage and `[DONE]` chunks, the
/// receipt in the clear (per `e2e.receipt`) and the final chunk carrying it.
fn sealed_answer(
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    e2e: &FakeE2e,
    coefficient_milli: u32,
) -> Response<WorkerBody> {
    use base64::Engine as _;
    use protocol::sse::{EVENT_E2E, EVENT_RECEIPT};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let endpoint = protocol::Endpoint::from_path(path).expect("endpoint");
    let meta = RequestMeta::from_headers(headers).expect("meta");
    let binding = protocol::e2e::binding_from_headers(endpoint, &meta, headers).expect("binding");
    let opened = protocol::e2e::open_request(&binding, body, &e2e.key).expect("opens");
    let mut sealer = opened.response.sealer();
    let mut frames = Vec::new();
    let mut chunk = |plain: &[u8], last: bool| {
        let c = sealer.seal(plain, last).unwrap();
        Bytes::from(Event::named(EVENT_E2E, b64(&c)).encode())
    };
    frames.push(chunk(&Event::data(r#"{"choices":[]}"#).encode(), false));
    frames.push(chunk(&Event::usage(&e2e.usage).encode(), false));
    frames.push(chunk(&Event::done().encode(), false));
    let mut receipt = protocol::e2e::Receipt {
        request_id: meta.request_id.as_str().to_string(),
        request_hash: opened.request_hash,
        claims_hash: e2e.claims_hash(),
        model: meta.model.clone(),
        model_digest: "ab".repeat(32),
        usage: e2e.usage,
        price_coefficient_milli: coefficient_milli,
        finish_reason: "stop".into(),
        chunks: 3,
        time: now(),
    };
    if e2e.receipt == ReceiptMode::OtherRequest {
        receipt.request_hash[0] ^= 1;
    }
    let mut last = Vec::new();
    if e2e.receipt != ReceiptMode::Missing {
        let mut signed = receipt.sign(&e2e.signing).unwrap();
        if e2e.receipt == ReceiptMode::Edited {
            // The completion count's last byte (the usage sits before the coefficient,
            // finish reason, chunk count, time and signature).
            let at = signed.len() - 64 - 8 - 4 - (2 + 4) - 4 - 8 - 1;
            signed[at] ^= 1;
        }
        let ev = Event::named(EVENT_RECEIPT, b64(&signed)).encode();
        frames.push(Bytes::from(ev.clone()));
        last = ev;
    }
    frames.push(chunk(&last, true));
    let (tx, rx) = mpsc::channel::<Bytes>(frames.len());
    for f in frames {
        tx.try_send(f).unwrap();
    }
    let mut r = Response::new(http_body_util::Either::Right(http_body_util::Either::Left(
        ChannelBody(rx),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// Streams the frames of a [`Replay`] body.
fn replay(body: &[u8], kill: Arc<Notify>) -> Response<WorkerBody> {
    let script: Replay = serde_json::from_slice(body).expect("replay body");
    let (tx, rx) = mpsc::channel::<Bytes>(script.frames.len().max(1));
    for f in script.frames {
        tx.try_send(Bytes::from(f)).expect("channel has room");
    }
    if script.die {
        tokio::spawn(async move {
            // Let the frames reach the proxy, then drop the connection mid-stream.
            tokio::time::sleep(Duration::from_millis(50)).await;
            kill.notify_one();
            drop(tx);
        });
    } else {
        drop(tx);
    }
    let mut r = Response::new(http_body_util::Either::Right(http_body_util::Either::Left(
        ChannelBody(rx),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// The fake worker's `i`-th token event (an OpenAI chat chunk), as one encoded event.
pub fn token_event(model: &str, i: u32) -> Bytes {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}],
    });
    Bytes::from(Event::data(chunk.to_string()).encode())
}

/// The fake worker's last write: the usage event for `completion_tokens` and `[DONE]`.
pub fn usage_tail(prompt_tokens: u64, completion_tokens: u32) -> Bytes {
    let usage = Usage {
        prompt_tokens,
        cached_tokens: 2,
        completion_tokens: u64::from(completion_tokens),
        reasoning_tokens: 1,
    };
    let mut tail = Event::usage(&usage).encode();
    tail.extend(Event::done().encode());
    Bytes::from(tail)
}

/// A client with an account key, over HTTP/2 (or HTTP/1.1) to the proxy's client port.
pub struct Client {
    pub account: String,
    send: ClientSend,
}

enum ClientSend {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

pub async fn client(proxy: SocketAddr, seed: u8) -> Client {
    client_with(proxy, seed, false).await
}

pub async fn client_with(proxy: SocketAddr, seed: u8, http1: bool) -> Client {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    client_on(tcp, seed, http1).await.expect("client handshake")
}

/// The account id of the client key with `seed`.
pub fn account_of(seed: u8) -> String {
    AccountKey::from_seed([seed; 32]).account_id()
}

/// TLS to the proxy's client port over `tcp` with the account key of `seed`, offering `http1`
/// or h2 by ALPN.
pub async fn client_tls(
    tcp: TcpStream,
    seed: u8,
    http1: bool,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let key = AccountKey::from_seed([seed; 32]);
    let verifier = Arc::new(PeerVerifier::new(proxy_policy(), Arc::new(SystemClock)));
    let alpn: &[&[u8]] = if http1 { &[b"http/1.1"] } else { &[b"h2"] };
    let cfg = client_config(
        Some(key.resolver(now()).unwrap()),
        Arc::new(RaTlsServerVerifier::new(verifier)),
        alpn,
    )
    .unwrap();
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("proxy.invalid").unwrap(), tcp)
        .await
}

/// A [`Client`] over `tcp` (an error if the proxy refuses the connection).
pub async fn client_on(tcp: TcpStream, seed: u8, http1: bool) -> io::Result<Client> {
    client_on_with_window(tcp, seed, http1, 256 << 10).await
}

/// An HTTP/2 [`Client`] whose receive window per stream is `window` bytes (a small one plays a
/// client that stops reading: the proxy can send it no more than that).
pub async fn client_with_window(proxy: SocketAddr, seed: u8, window: u32) -> Client {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    client_on_with_window(tcp, seed, false, window)
        .await
        .expect("client handshake")
}

async fn client_on_with_window(
    tcp: TcpStream,
    seed: u8,
    http1: bool,
    stream_window: u32,
) -> io::Result<Client> {
    let key = AccountKey::from_seed([seed; 32]);
    let tls = client_tls(tcp, seed, http1).await?;
    let io = TokioIo::new(tls);
    let send = if http1 {
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        ClientSend::H1(s)
    } else {
        // Like a sane client library: modest stream windows, a large connection window (so
        // that HTTP/2's small-frame protection does not trip while the caller reads slowly).
        let (s, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(stream_window)
            .initial_connection_window_size(1 << 30)
            .handshake(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        ClientSend::H2(s)
    };
    Ok(Client {
        account: key.account_id(),
        send,
    })
}

static REQ: AtomicU64 = AtomicU64::new(0);

/// A chat request with metadata headers.
pub fn chat(
    model: &str,
    max_tokens: u32,
    price_cap: Option<u64>,
    body: &[u8],
) -> Request<Full<Bytes>> {
    let meta = RequestMeta {
        version: 1,
        request_id: RequestId::parse(&format!("req-{}", REQ.fetch_add(1, Ordering::Relaxed)))
            .unwrap(),
        model: model.into(),
        max_tokens,
        price_cap,
    };
    let mut req = Request::post("https://proxy.invalid/v1/chat/completions")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("host", "proxy.invalid")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    meta.write_headers(req.headers_mut());
    req
}

pub const BODY: &[u8] = br#"{"model":"stub-model","messages":[{"role":"user","content":"secret prompt"}],"stream":true}"#;

impl Client {
    /// Another handle on the same HTTP/2 connection (`None` for HTTP/1.1).
    pub fn stream_handle(&self) -> Option<Client> {
        match &self.send {
            ClientSend::H2(s) => Some(Client {
                account: self.account.clone(),
                send: ClientSend::H2(s.clone()),
            }),
            ClientSend::H1(_) => None,
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match &mut self.send {
            ClientSend::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.expect("response")
            }
            ClientSend::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.expect("response")
            }
        }
    }

    /// [`Client::send`] that returns `None` when the connection failed instead of panicking.
    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Option<Response<Incoming>> {
        match &mut self.send {
            ClientSend::H2(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await.ok()
            }
            ClientSend::H1(s) => {
                s.ready().await.ok()?;
                s.send_request(req).await.ok()
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Response<Incoming> {
        let req = Request::get(format!("https://proxy.invalid{path}"))
            .header("host", "proxy.invalid")
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }
}

/// [`events`] that stops at a broken body (returns what arrived) instead of panicking.
pub async fn try_events(body: Incoming) -> Vec<(Instant, Event)> {
    let mut body = body;
    let mut d = Decoder::default();
    let mut out = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let Ok(evs) = d.feed(&data) else { break };
            for ev in evs {
                out.push((Instant::now(), ev));
            }
        }
    }
    out
}

/// Reads a whole SSE body: events with their arrival times.
pub async fn events(body: Incoming) -> Vec<(Instant, Event)> {
    let mut body = body;
    let mut d = Decoder::default();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Ok(data) = frame.into_data() {
            for ev in d.feed(&data).expect("sse") {
                out.push((Instant::now(), ev));
            }
        }
    }
    out
}

/// Reads a whole body as bytes.
pub async fn raw_body(body: Incoming) -> Bytes {
    body.collect().await.expect("body").to_bytes()
}

pub async fn json_body(resp: Response<Incoming>) -> serde_json::Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).expect("json body")
}

/// The usage event of a stream.
pub fn usage_of(evs: &[(Instant, Event)]) -> Option<Usage> {
    evs.iter()
        .find(|(_, e)| e.name.as_deref() == Some(protocol::sse::EVENT_USAGE))
        .map(|(_, e)| serde_json::from_str(&e.data).unwrap())
}

pub fn error_of(evs: &[(Instant, Event)]) -> Option<(Instant, ApiError)> {
    evs.iter()
        .find(|(_, e)| e.name.as_deref() == Some(protocol::sse::EVENT_ERROR))
        .map(|(t, e)| (*t, ApiError::from_json(502, e.data.as_bytes())))
}

pub fn error_kind(v: &serde_json::Value) -> String {
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

impl TestProxy {
    pub fn ledger_balance(&self, account: &str) -> Option<u64> {
        use proxy::Ledger;
        self.ledger.balance(account).map(|b| b.balance_nano)
    }
}

/// A chat request for `model` sealed to `keys`, with its binding headers.
pub fn sealed_to(model: &str, keys: &[protocol::e2e::KeyConfig], n: u64) -> Request<Full<Bytes>> {
    sealed_to_max(model, keys, n, 16)
}

/// [`sealed_to`] asking for up to `max_tokens`.
pub fn sealed_to_max(
    model: &str,
    keys: &[protocol::e2e::KeyConfig],
    n: u64,
    max_tokens: u32,
) -> Request<Full<Bytes>> {
    let meta = RequestMeta {
        version: 1,
        request_id: protocol::RequestId::parse(&format!("sealed-{n}")).unwrap(),
        model: model.into(),
        max_tokens,
        price_cap: None,
    };
    let binding = protocol::e2e::Binding {
        path: protocol::Endpoint::ChatCompletions.path().into(),
        request_id: meta.request_id.as_str().into(),
        model: model.into(),
        max_tokens,
        price_cap: None,
        time: now(),
        recipients: keys.iter().map(|k| k.key_hash()).collect(),
    };
    let body = serde_json::json!({
        "model": model, "messages": [{"role": "user", "content": "one two three"}],
    });
    let s = protocol::e2e::seal_request(
        &binding,
        keys,
        body.to_string().as_bytes(),
        &mut rand_core::UnwrapErr(rand_core::OsRng),
    )
    .unwrap();
    let mut req = http::Request::post("https://proxy.invalid/v1/chat/completions")
        .header(http::header::CONTENT_TYPE, protocol::e2e::CONTENT_TYPE)
        .header("host", "proxy.invalid")
        .body(Full::new(Bytes::from(s.envelope)))
        .unwrap();
    meta.write_headers(req.headers_mut());
    protocol::e2e::write_headers(&binding, req.headers_mut());
    req
}
