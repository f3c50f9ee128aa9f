//! A bare relay for the relay benchmark (diagnostic row `bare`, `COCOON_BENCH_BARE=1`): the
//! stacks cocoon-proxy is built on — hyper's HTTP/2 server over rustls to the client, and
//! [`proxy::link`] (`h2` driven directly) over rustls to the upstream — with no proxy logic in
//! between: no admission, accounts, billing, event splitting or stall watch. Its figures are
//! the floor of a relay on these stacks, so the gap between it and cocoon is what the proxy's
//! own code costs, and the gap between it and nginx what the stacks cost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::link::{Link, Settings, UpBody};
use ratls::{server_config, Role};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use crate::common::{now, proxy_regs, resolver};

/// Thread name of the bare relay's runtime (its CPU time is read by that name).
pub const THREAD: &str = "bare-rt";

/// A running bare relay on a runtime of its own (one worker thread, like the proxy's).
pub struct Bare {
    pub addr: SocketAddr,
    /// The name of its runtime's thread (its CPU time is read by that name).
    pub thread: String,
    rt: Option<Runtime>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

const SETTINGS: Settings = Settings {
    stream_window: 256 << 10,
    connection_window: 1 << 30,
    keepalive_interval: Duration::from_secs(30),
    keepalive_timeout: Duration::from_secs(30),
};

/// Starts the relay in front of `upstream` (the bench's SSE server, HTTP/2 over TLS). Call it
/// outside any runtime. With a nonzero `spin` it busy-waits that long per request between
/// reading the body and forwarding it: CPU standing in for a proxy's request logic, to show
/// what each microsecond of it costs in added latency on the machine (`COCOON_BENCH_BARE_SPIN_US`).
pub fn start(upstream: SocketAddr, spin: Duration) -> Result<Bare, String> {
    let thread = if spin.is_zero() {
        THREAD.to_string()
    } else {
        format!("{THREAD}+{}", spin.as_micros())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(&thread)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let addr = rt.block_on(async move {
        tokio::spawn(serve(upstream, spin))
            .await
            .map_err(|e| e.to_string())?
    })?;
    Ok(Bare {
        addr,
        thread,
        rt: Some(rt),
    })
}

async fn serve(upstream: SocketAddr, spin: Duration) -> Result<SocketAddr, String> {
    let tls = crate::nginx::upstream_tls(upstream)
        .await
        .map_err(|e| e.to_string())?;
    let (link, conn) = proxy::link::handshake(tls, SETTINGS)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(proxy::link::drive(conn, SETTINGS));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cfg = server_config(resolver(proxy_regs(), Role::Proxy, now()), None, &[b"h2"])
        .map_err(|e| e.to_string())?;
    tokio::spawn(crate::nginx::serve_tls(listener, cfg, move |tls| {
        let link = link.clone();
        async move {
            let service = service_fn(move |req| relay(link.clone(), req, spin));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    }));
    Ok(addr)
}

/// Sends the request on to the upstream as it came (headers and body) and relays its
/// response as received.
async fn relay(
    link: Link,
    req: Request<Incoming>,
    spin: Duration,
) -> Result<Response<UpBody>, Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let start = Instant::now();
    while start.elapsed() < spin {
        std::hint::spin_loop();
    }
    let mut up = Request::post("https://upstream.invalid/v1/chat/completions").body(body)?;
    *up.headers_mut() = parts.headers;
    Ok(link.send(up).await?)
}
