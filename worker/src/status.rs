//! The worker's status port (`status_listen` in the config; off by default): plain HTTP/1.1
//! serving only the liveness and readiness probes ([`protocol::health`]).
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `{"status":"ok"}` once the process runs (also while models load) |
//! | `GET /readyz` | 200 when the models are loaded and at least one proxy registration is open; else 503 naming [`MODELS_LOADING`] and/or [`NO_PROXY`] |
//! | `GET /stats` | the service's counters ([`crate::service::StatsSnapshot`]: generations running, requests, how streams ended, refusals, and the tokens of work done for streams that ended without a usage report, `unbilled_*`); 404 while the models load |
//! | `GET /earnings` | with `[payout]`: the worker's earnings ([`crate::payout::Earnings`]: owner, wallet, per proxy contract the worker contract, voucher / paid / pending tokens and nanoton, last error); else 404 |
//! | anything else | 404 |
//!
//! # Trust boundary
//!
//! The port is the worker's only listener; everything else is dialed out. Whoever reaches it
//! (the host, for a port outside the guest's loopback) learns whether the worker is loaded and
//! registered, its request and token counts (which the host could estimate from traffic
//! anyway) and its earnings (the same figures the chain shows publicly: contract addresses
//! and token counts), nothing more: no prompts, keys or proxy network addresses. Answers come from
//! state the worker holds (no attestation or engine call per probe). Connections are capped
//! ([`MAX_CONNECTIONS`]) and must send their request head within [`HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::health::{self, Probe, Readiness};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::service::Service;

/// Reason: the engines are still loading the models.
pub const MODELS_LOADING: &str = "models loading";
/// Reason: no proxy connection with an answered registration is open.
pub const NO_PROXY: &str = "no proxy registration";
/// Open status connections at most (more are closed at accept).
pub const MAX_CONNECTIONS: usize = 64;
/// Time a status connection has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probes report: set to serving once the models are loaded and the worker started.
#[derive(Debug, Default)]
pub struct Status {
    service: OnceLock<Service>,
}

impl Status {
    /// A status with nothing loaded yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The models are loaded and `service` (of the started worker) serves them.
    pub fn serving(&self, service: &Service) {
        let _ = self.service.set(service.clone());
    }

    /// The verdict now.
    pub fn readiness(&self) -> Readiness {
        let mut r = Readiness::ready();
        match self.service.get() {
            None => {
                r.missing(MODELS_LOADING);
                r.missing(NO_PROXY);
            }
            Some(s) if s.open_registrations() == 0 => r.missing(NO_PROXY),
            Some(_) => {}
        }
        r
    }

    /// The answer to one request.
    pub async fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.uri().path() == EARNINGS {
            return self.earnings(req).await;
        }
        if req.uri().path() == STATS {
            return self.stats(req);
        }
        let resp = match Probe::from_path(req.uri().path()) {
            Some(_) if !Probe::allows(req.method()) => health::method_not_allowed(),
            Some(Probe::Liveness) => health::liveness(),
            Some(Probe::Readiness) => self.readiness().response(),
            None => protocol::response::json(
                StatusCode::NOT_FOUND,
                br#"{"status":"not_found"}"#.to_vec(),
            ),
        };
        resp.map(|b| Full::new(Bytes::from(b)))
    }

    async fn earnings<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let json =
            |status, body: Vec<u8>| protocol::response::json(status, Full::new(Bytes::from(body)));
        if req.method() != http::Method::GET {
            return health::method_not_allowed().map(|b| Full::new(Bytes::from(b)));
        }
        match self.service.get().and_then(|s| s.payouts()) {
            Some(p) => {
                let body = serde_json::to_vec_pretty(&p.earnings().await).unwrap_or_default();
                json(StatusCode::OK, body)
            }
            None => json(
                StatusCode::NOT_FOUND,
                br#"{"status":"not_found","reason":"no [payout] in the worker config"}"#.to_vec(),
            ),
        }
    }
}

/// The earnings route.
pub const EARNINGS: &str = "/earnings";
/// The counters route.
pub const STATS: &str = "/stats";

impl Status {
    fn stats<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let json =
            |status, body: Vec<u8>| protocol::response::json(status, Full::new(Bytes::from(body)));
        if req.method() != http::Method::GET {
            return health::method_not_allowed().map(|b| Full::new(Bytes::from(b)));
        }
        match self.service.get() {
            Some(s) => {
                let body = serde_json::to_vec_pretty(&s.stats().snapshot()).unwrap_or_default();
                json(StatusCode::OK, body)
            }
            None => json(
                StatusCode::NOT_FOUND,
                br#"{"status":"not_found","reason":"models loading"}"#.to_vec(),
            ),
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves the probes on `listener` until `shutdown` is set (or its sender dropped).
pub async fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "status port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "status port: connection cap reached; closed");
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let status = status.clone();
                async move { Ok::<_, Infallible>(status.respond(&req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn before_loading_both_reasons_are_named() {
        let s = Status::new();
        assert_eq!(s.readiness().reasons, [MODELS_LOADING, NO_PROXY]);
        let req = Request::get("/readyz").body(()).unwrap();
        assert_eq!(
            s.respond(&req).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let req = Request::get("/healthz").body(()).unwrap();
        assert_eq!(s.respond(&req).await.status(), StatusCode::OK);
        let req = Request::get("/jsonstats").body(()).unwrap();
        assert_eq!(s.respond(&req).await.status(), StatusCode::NOT_FOUND);
        let req = Request::delete("/healthz").body(()).unwrap();
        assert_eq!(
            s.respond(&req).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let req = Request::get(EARNINGS).body(()).unwrap();
        assert_eq!(s.respond(&req).await.status(), StatusCode::NOT_FOUND);
        let req = Request::get(STATS).body(()).unwrap();
        assert_eq!(s.respond(&req).await.status(), StatusCode::NOT_FOUND);
    }
}
