//! nginx as a same-run baseline for the relay benchmark: Debian's nginx binary run as one
//! foreground process (`master_process off`, so the process is the worker whose CPU time is
//! read) with a generated config in a temporary prefix. It terminates TLS 1.3 + HTTP/2 from the
//! bench client (presenting the proxy's RA-TLS certificate, so the client is the very one the
//! cocoon rows use) and proxies over TLS, HTTP/1.1 keep-alive, unbuffered, to [`sse_upstream`]:
//! a fast SSE server streaming exactly the fake worker's events, framed as it frames them.
//! [`Upstream::Http2`] is the same with HTTP/2 to the upstream (nginx's `grpc_pass`, which
//! relays any HTTP/2 exchange, unbuffered, one upstream connection per request in flight from
//! a keep-alive pool): the shape cocoon's worker hop has.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use protocol::RequestMeta;
use ratls::{client_config, server_config, PeerVerifier, RaTlsServerVerifier, Role, SystemClock};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::{
    cert, event_stream, now, proxy_regs, resolver, token_event, usage_tail, worker_policy,
    worker_regs, GatheringBody,
};

/// Request header: microseconds between two tokens of the upstream's stream (0: max rate).
pub const H_INTERVAL_US: &str = "x-bench-interval-us";

/// The nginx binary: `COCOON_BENCH_NGINX`, else Debian's paths, else `nginx` on `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COCOON_BENCH_NGINX") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/nginx"),
        PathBuf::from("/usr/bin/nginx"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A running nginx; killed (it is this process's own child) and its prefix removed on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub version: String,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The Ed25519 key as PKCS#8 v1 (OpenSSL refuses ring's v2 document with the public key).
fn pkcs8_v1(v2: &[u8]) -> Result<Vec<u8>, String> {
    // PrivateKeyInfo { version 0, algorithm id-Ed25519, privateKey OCTET STRING { seed } }.
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let at = v2
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .ok_or("no ed25519 seed in the key")?;
    let seed = v2.get(at + 4..at + 36).ok_or("short ed25519 key")?;
    Ok([&PREFIX[..], seed].concat())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How nginx speaks to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// `proxy_pass https://`, HTTP/1.1 keep-alive (nginx's usual reverse proxy).
    Http1,
    /// `grpc_pass grpcs://`: HTTP/2 over TLS.
    Http2,
}

fn config(dir: &Path, port: u16, upstream: SocketAddr, to: Upstream) -> String {
    let d = dir.display();
    let location = match to {
        Upstream::Http1 => {
            "proxy_pass https://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse on;"
        }
        Upstream::Http2 => {
            "grpc_pass grpcs://sse;
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_session_reuse on;"
        }
    };
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream sse {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_protocols TLSv1.3;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            {location}
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts `bin` in front of `upstream`; waits until it accepts connections.
    pub async fn start(bin: &Path, upstream: SocketAddr, to: Upstream) -> Result<Nginx, String> {
        let version = Command::new(bin)
            .arg("-v")
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let version = String::from_utf8_lossy(&version.stderr)
            .trim()
            .trim_start_matches("nginx version: ")
            .to_string();
        let dir =
            std::env::temp_dir().join(format!("cocoon-relay-nginx-{}-{to:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // The proxy's own RA-TLS certificate (Ed25519): the bench client verifies nginx
        // exactly as it verifies cocoon-proxy.
        let issued = cert(proxy_regs(), Role::Proxy, now());
        let write = |name: &str, text: String| -> Result<(), String> {
            let mut f = std::fs::File::create(dir.join(name)).map_err(|e| e.to_string())?;
            f.write_all(text.as_bytes()).map_err(|e| e.to_string())
        };
        write("cert.pem", pem("CERTIFICATE", &issued.cert_der))?;
        write(
            "key.pem",
            pem("PRIVATE KEY", &pkcs8_v1(&issued.key_pkcs8_der)?),
        )?;
        let port = free_port().map_err(|e| e.to_string())?;
        write("nginx.conf", config(&dir, port, upstream, to))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut nginx = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            version,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                return Err(format!("exited ({status}): {}", log.trim()));
            }
            if TcpStream::connect(nginx.addr).await.is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err("not listening after 5 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The nginx process (with `master_process off`, its one thread does all the work).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Streams the fake worker's events for a request: `max_tokens` token events, then the usage
/// event and `[DONE]`, one token per [`H_INTERVAL_US`] (as fast as the reader takes them
/// without it). Framed exactly as the fake worker frames cocoon's rows: answered once the
/// first event is ready (the response head and that event leave together), then each DATA
/// frame carries every event ready by then ([`GatheringBody`]), so that every row relays the
/// same bytes in the same frames.
async fn serve_sse(req: Request<Incoming>) -> Result<Response<GatheringBody>, Infallible> {
    // The same metadata headers the proxy forwards to a worker.
    let (model, n) = RequestMeta::from_headers(req.headers())
        .map_or((String::new(), 0), |m| (m.model, m.max_tokens));
    let interval = req
        .headers()
        .get(H_INTERVAL_US)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_micros);
    let _ = req.into_body().collect().await;
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut tick = (!interval.is_zero()).then(|| tokio::time::interval(interval));
        for i in 0..n {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            if tx.send(token_event(&model, i)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(usage_tail(7, n)).await;
    });
    let first = rx.recv().await;
    Ok(event_stream(GatheringBody { first, rx }))
}

/// Starts the SSE upstream on the current runtime: TLS 1.3 (a worker RA-TLS certificate),
/// HTTP/1.1 or HTTP/2.
pub async fn sse_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = server_config(
        resolver(worker_regs(), Role::Worker, now()),
        None,
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    tokio::spawn(serve_tls(listener, cfg, |tls| async move {
        let _ = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), service_fn(serve_sse))
            .await;
    }));
    addr
}

/// Accepts TCP connections on `listener` (no Nagle), completes TLS with `cfg`, and runs
/// `serve` on each connection in a task of its own.
pub async fn serve_tls<F, Fut>(listener: TcpListener, cfg: rustls::ServerConfig, serve: F)
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let serve = Arc::new(serve);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                serve(tls).await;
            }
        });
    }
}

/// TLS 1.3 to the upstream (no Nagle), verifying its worker RA-TLS certificate; ALPN `h2`.
pub async fn upstream_tls(
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let verifier = Arc::new(
        PeerVerifier::new(worker_policy(), Arc::new(SystemClock)).with_roles([Role::Worker]),
    );
    let cfg = client_config(None, Arc::new(RaTlsServerVerifier::new(verifier)), &[b"h2"])
        .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("upstream.invalid").map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// An HTTP/2 client straight to the upstream (the "direct" row of nginx's latency).
pub async fn upstream_client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tls = upstream_tls(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(256 << 10)
        .initial_connection_window_size(1 << 30)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}
