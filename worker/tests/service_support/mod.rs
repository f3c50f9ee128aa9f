//! A test "proxy": accepts the worker's outbound RA-TLS connection on loopback and speaks
//! HTTP/2 to it as the client, on the simulated TDX platform (`cocoon-test-support`,
//! re-exported here).
#![allow(dead_code)]

pub use test_support::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use measurements::Policy;
use protocol::sse::{Decoder, Event};
use protocol::{RequestId, RequestMeta};
use ratls::{
    server_config, Clock, FixedClock, Identity, PeerVerifier, RaTlsClientVerifier, Role,
    VerifiedPeer,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use worker::dial::{self, Backoff, Link, LinkOptions};
use worker::engine::stub::StubEngine;
use worker::service::{ServedModel, Service, ServiceOptions, WorkerInfo};
use worker::{RunningWorker, Worker};

pub const MODEL: &str = "stub-model";

pub fn clock() -> Arc<FixedClock> {
    fixed_clock(NOW)
}

/// Options of a harness.
#[derive(Clone, Debug)]
pub struct Options {
    pub tokens: u32,
    pub tokens_per_second: f64,
    pub capacity: u32,
    /// Proxy images the worker trusts (default: the test proxy's).
    pub worker_trusts: Policy,
    /// The stub engine's delay before its first token.
    pub prefill_delay: Duration,
    /// The service's options (keepalives).
    pub service: ServiceOptions,
    /// The test proxy's HTTP/2 receive window per stream (default: hyper's).
    pub proxy_stream_window: Option<u32>,
    /// Whether the worker also dials a [`RawProxy`] (its connections in [`Harness::hostile`]).
    pub hostile_proxy: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tokens: 5,
            tokens_per_second: 0.0,
            capacity: 4,
            worker_trusts: policy_for(&proxy_regs()),
            prefill_delay: Duration::ZERO,
            service: ServiceOptions::default(),
            proxy_stream_window: None,
            hostile_proxy: false,
        }
    }
}

/// The test proxy: accepts RA-TLS connections from workers (image [`worker_regs`]) and hands
/// each out as an HTTP/2 client connection.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub conns: mpsc::Receiver<Result<ProxyConn, String>>,
}

impl TestProxy {
    /// A proxy whose certificate is issued at `now`, verifying workers with `clock`.
    pub async fn start(now: u64, clock: Arc<dyn Clock>) -> Self {
        Self::start_with_window(now, clock, None).await
    }

    /// [`TestProxy::start`], its HTTP/2 receive window per stream `window` bytes if given (a
    /// small one plays a proxy whose client stopped reading).
    pub async fn start_with_window(now: u64, clock: Arc<dyn Clock>, window: Option<u32>) -> Self {
        let (addr, conns) = accept_workers(now, clock, move |tls, worker| async move {
            let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            if let Some(w) = window {
                builder.initial_stream_window_size(w);
            }
            let (send, conn) = builder
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(ProxyConn { send, worker, task })
        })
        .await;
        Self { addr, conns }
    }
}

/// The proxy's side of a worker's connection after the RA-TLS handshake.
pub type ProxyTls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A hostile proxy: attested like [`TestProxy`] (the worker's policy accepts it), it hands
/// out each worker connection as the bare TLS stream, for tests that write raw HTTP/2 frames
/// ([`test_support::h2raw`]) as a compromised proxy could.
pub struct RawProxy {
    pub addr: SocketAddr,
    pub conns: mpsc::Receiver<Result<ProxyTls, String>>,
}

impl RawProxy {
    pub async fn start(now: u64, clock: Arc<dyn Clock>) -> Self {
        let (addr, conns) = accept_workers(now, clock, |tls, _| async move { Ok(tls) }).await;
        Self { addr, conns }
    }

    /// The next connection the worker makes to this proxy.
    pub async fn next_conn(&mut self) -> ProxyTls {
        tokio::time::timeout(Duration::from_secs(20), self.conns.recv())
            .await
            .expect("worker connected in time")
            .expect("proxy alive")
            .expect("connection accepted")
    }
}

/// A proxy's listener: accepts RA-TLS connections from workers (image [`worker_regs`], its
/// certificate issued at `now`, workers verified with `clock`) and hands each to `then`.
async fn accept_workers<T, F, Fut>(
    now: u64,
    clock: Arc<dyn Clock>,
    then: F,
) -> (SocketAddr, mpsc::Receiver<Result<T, String>>)
where
    T: Send + 'static,
    F: Fn(ProxyTls, VerifiedPeer) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy_verifier =
        Arc::new(PeerVerifier::new(policy_for(&worker_regs()), clock).with_roles([Role::Worker]));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(
            resolver(proxy_regs(), Role::Proxy, now),
            Some(Arc::new(RaTlsClientVerifier::new(proxy_verifier.clone()))),
            &[b"h2"],
        )
        .expect("server config"),
    ));
    let (conn_tx, conns) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let accepted = async {
                let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                let worker = proxy_verifier
                    .peer_of(tls.get_ref().1)
                    .map_err(|e| e.to_string())?;
                then(tls, worker).await
            }
            .await;
            if conn_tx.send(accepted).await.is_err() {
                return;
            }
        }
    });
    (addr, conns)
}

/// One accepted connection, seen from the proxy.
pub struct ProxyConn {
    pub send: SendRequest<Full<Bytes>>,
    /// The worker's verified evidence.
    pub worker: VerifiedPeer,
    task: JoinHandle<()>,
}

impl ProxyConn {
    /// Closes the connection abruptly (drops the TLS stream).
    pub fn close(self) {
        self.task.abort();
    }
}

pub struct Harness {
    pub service: Service,
    pub addr: SocketAddr,
    pub certs: Arc<Identity>,
    pub conns: mpsc::Receiver<Result<ProxyConn, String>>,
    pub link: Link,
    pub clock: Arc<FixedClock>,
    pub worker: RunningWorker,
    /// The hostile proxy the worker dials too, with [`Options::hostile_proxy`].
    pub hostile: Option<RawProxy>,
}

impl Harness {
    pub async fn start(opts: Options) -> Self {
        let clock = clock();
        let engine = Arc::new(
            StubEngine::new(MODEL, opts.tokens, opts.tokens_per_second)
                .with_prefill_delay(opts.prefill_delay),
        );
        let proxy =
            TestProxy::start_with_window(NOW, clock.clone(), opts.proxy_stream_window).await;
        let (addr, conns) = (proxy.addr, proxy.conns);
        let hostile = match opts.hostile_proxy {
            true => Some(RawProxy::start(NOW, clock.clone()).await),
            false => None,
        };

        // The worker: its certificate from its (simulated) TEE, dialing the proxy.
        let certs = identity(
            worker_regs(),
            dial::worker_claims(),
            Duration::from_secs(6 * 3600),
            clock.clone(),
        );
        let worker = Worker {
            info: WorkerInfo {
                name: "test-worker".into(),
                capacity: opts.capacity,
                price_coefficient_milli: 1500,
            },
            models: ServedModel::all_of(engine),
            proxies: std::iter::once(addr)
                .chain(hostile.as_ref().map(|h| h.addr))
                .collect(),
            identity: certs.clone(),
            proxy_policy: opts.worker_trusts.clone(),
            clock: clock.clone(),
            links: LinkOptions {
                backoff: Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(200),
                    Duration::from_secs(30),
                ),
                drain: Duration::from_secs(5),
                ..LinkOptions::default()
            },
            options: opts.service,
            payouts: None,
            e2e: None,
        }
        .start()
        .expect("worker starts");
        Self {
            service: worker.service().clone(),
            addr,
            certs,
            conns,
            link: worker.links()[0].clone(),
            clock,
            worker,
            hostile,
        }
    }

    /// The next connection the worker makes.
    pub async fn next_conn(&mut self) -> ProxyConn {
        tokio::time::timeout(Duration::from_secs(20), self.conns.recv())
            .await
            .expect("worker connected in time")
            .expect("proxy alive")
            .expect("connection accepted")
    }

    pub fn shutdown(&self) {
        self.worker.signal_shutdown();
    }
}

/// A completion request with cocoon headers.
pub fn completion_request(
    path: &str,
    model: &str,
    max_tokens: u32,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let meta = RequestMeta {
        version: 1,
        request_id: RequestId::parse("req-42").expect("id"),
        model: model.into(),
        max_tokens,
        price_cap: None,
    };
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("http://worker{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .expect("request");
    meta.write_headers(req.headers_mut());
    req
}

pub fn chat_body(extra: serde_json::Value) -> Bytes {
    let mut v = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": true,
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    Bytes::from(v.to_string())
}

pub async fn send(conn: &mut ProxyConn, req: Request<Full<Bytes>>) -> Response<Incoming> {
    conn.send.ready().await.expect("connection ready");
    tokio::time::timeout(Duration::from_secs(20), conn.send.send_request(req))
        .await
        .expect("response in time")
        .expect("response")
}

pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes()
}

pub async fn events(resp: Response<Incoming>) -> Vec<Event> {
    let bytes = body_bytes(resp).await;
    Decoder::default().feed(&bytes).expect("sse")
}

pub async fn error_of(resp: Response<Incoming>) -> (u16, protocol::ApiError) {
    let status = resp.status().as_u16();
    let bytes = body_bytes(resp).await;
    (status, protocol::ApiError::from_json(status, &bytes))
}

/// GETs `path` on a worker's status port at `addr` (plain HTTP/1.1): status and JSON body.
pub async fn status_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "worker")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("json body"))
}

/// Polls `/readyz` at `addr` until it answers `status`; returns the body (panics after 20 s).
pub async fn readyz_until(addr: SocketAddr, status: u16) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = status_get(addr, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
