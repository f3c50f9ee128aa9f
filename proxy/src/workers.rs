//! The worker port: workers dial in, both sides attest (mutual RA-TLS, the worker must claim
//! the worker role and pass the proxy's worker policy), then the proxy becomes the HTTP/2
//! client on the accepted stream and registers the worker with a `Hello` → `Registration`
//! exchange. The worker stays in the registry until its connection closes; HTTP/2 pings
//! (keepalive interval/timeout from the config) detect a silently dead worker.
//!
//! Every refusal is counted by a reason code ([`Refusal::code`]: the attestation rejection's
//! code, or a connection/registration step) and logged, rate-limited per code.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use protocol::meta::H_VERSION;
use protocol::register::negotiate;
use protocol::{ApiError, Hello, Registration, PROTOCOL_VERSION, SUPPORTED_VERSIONS};
use ratls::RatlsError;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::registry::{token_budget, Worker, WorkerE2e, WorkerInfo, WorkerSender};
use crate::relay::WORKER_AUTHORITY;
use crate::state::State;

/// Flow-control window per request stream from a worker. Bounds what the proxy buffers for a
/// client that reads slower than its worker generates (capacity × this, at most).
const WORKER_STREAM_WINDOW: u32 = 256 << 10;
/// Connection window for a worker connection: large, so that per-stream windows are what
/// limits buffering. (HTTP/2's small-DATA-frame protection allows half of this much framing
/// overhead; a worker sending one token per frame to slow clients must stay well under it.)
const WORKER_CONNECTION_WINDOW: u32 = 1 << 30;
/// Concurrent requests the proxy sends one worker at most, whatever it registers.
pub const MAX_WORKER_CAPACITY: u32 = 4096;

/// How often the proxy re-verifies a connected worker's certificate and evidence.
pub const RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest registration document accepted.
const MAX_REGISTRATION_BYTES: usize = 64 << 10;

/// Why a worker connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    /// The worker's RA-TLS certificate or evidence was rejected.
    #[error("{detail}")]
    Attestation { code: &'static str, detail: String },
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    #[error("http/2 handshake: {0}")]
    Http2(String),
    #[error("registration timed out")]
    RegistrationTimeout,
    #[error("connection closed before registration")]
    Closed,
    #[error("hello: {0}")]
    Hello(String),
    #[error("registration invalid: {0}")]
    Invalid(String),
    #[error("protocol version: {0}")]
    Version(String),
    /// A registered worker's certificate or evidence stopped passing (checked on the proxy's
    /// clock); the connection was closed.
    #[error("evidence no longer valid, connection closed: {detail}")]
    Expired { code: &'static str, detail: String },
    /// The worker refused this proxy's payout voucher as lower than one it saw before
    /// (this proxy's ledger went backwards), or its payout owner is not an address.
    #[error("payout: {0}")]
    Payout(String),
}

impl Refusal {
    /// A stable code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Attestation { code, .. } => code,
            Self::Expired { code, .. } => code,
            Self::Tls(_) => "tls_handshake",
            Self::Http2(_) => "http2_handshake",
            Self::RegistrationTimeout => "registration_timeout",
            Self::Closed => "closed_before_registration",
            Self::Hello(_) => "hello_failed",
            Self::Invalid(_) => "registration_invalid",
            Self::Version(_) => "unsupported_version",
            Self::Payout(_) => "payout_refused",
        }
    }

    fn ratls(e: &RatlsError) -> Self {
        Self::Attestation {
            code: e.code(),
            detail: e.to_string(),
        }
    }
}

/// Accepts worker connections until `shutdown` fires, then waits for the open ones (the
/// owner aborts this task after its grace period).
pub(crate) async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    crate::listen::accept_connections(listener, shutdown, "worker", true, move |tcp, addr| {
        handle(state.clone(), acceptor.clone(), tcp, addr)
    })
    .await;
}

async fn handle(state: Arc<State>, acceptor: TlsAcceptor, tcp: TcpStream, addr: SocketAddr) {
    if let Err(refusal) = serve(&state, acceptor, tcp, addr).await {
        refuse(&state, addr, &refusal);
    }
}

/// Counts and (rate-limited) logs a refusal.
pub(crate) fn refuse(state: &State, addr: SocketAddr, refusal: &Refusal) {
    let code = refusal.code();
    state.stats.count_refusal(code);
    if let Some(suppressed) = state.stats.log_limiter.allow(code, Instant::now()) {
        tracing::warn!(
            peer = %addr,
            reason = code,
            detail = %refusal,
            suppressed_since_last = suppressed,
            "worker refused"
        );
    }
}

async fn serve(
    state: &Arc<State>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<(), Refusal> {
    let cfg = &state.config;
    let tls = tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| Refusal::HandshakeTimeout)?
        .map_err(|e| match ratls::ratls_io_error(&e) {
            Some(r) => Refusal::ratls(r),
            None => Refusal::Tls(e),
        })?;
    let peer = state
        .worker_verifier
        .peer_of(tls.get_ref().1)
        .map_err(|e| Refusal::ratls(&e))?;
    let image_hash = peer.image_hash().to_string();
    let cert_der: Vec<u8> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| Refusal::ratls(&RatlsError::NoPeerCertificate))?;
    let e2e = protocol::e2e::WorkerKeys::from_claims(&peer.claims().extra)
        .map_err(|e| Refusal::Attestation {
            code: "e2e_claims",
            detail: e.to_string(),
        })?
        .map(|keys| WorkerE2e {
            key_hash: keys.key_config.key_hash(),
            receipt_key: keys.receipt_key,
            claims_hash: Sha256::digest(&peer.evidence.claims_bytes).into(),
            cert_der: Arc::from(cert_der.as_slice()),
        });

    let settings = crate::link::Settings {
        stream_window: WORKER_STREAM_WINDOW,
        connection_window: WORKER_CONNECTION_WINDOW,
        keepalive_interval: cfg.worker_keepalive_interval,
        keepalive_timeout: cfg.worker_keepalive_timeout,
    };
    let (sender, conn) =
        tokio::time::timeout(cfg.handshake_timeout, crate::link::handshake(tls, settings))
            .await
            .map_err(|_| Refusal::HandshakeTimeout)?
            .map_err(|e| Refusal::Http2(crate::link::describe(&e)))?;
    let mut conn = pin!(crate::link::drive(conn, settings));
    let registration = tokio::select! {
        _ = &mut conn => return Err(Refusal::Closed),
        r = tokio::time::timeout(cfg.handshake_timeout, hello(state, sender.clone())) => {
            r.map_err(|_| Refusal::RegistrationTimeout)??
        }
    };

    let policy = state.worker_verifier.policy();
    for m in &registration.models {
        policy
            .check_model(&m.name, &m.model_hash)
            .map_err(|r| Refusal::Attestation {
                code: r.code(),
                detail: r.to_string(),
            })?;
    }

    // With payments on, the worker's tokens are billed to its worker contract, and the worker
    // sees the last voucher before it gets any request (a worker that has seen a higher
    // count refuses this proxy here).
    let payout = match (&state.payments, &registration.payout) {
        (Some(payments), Some(advert)) => {
            let owner: ton::address::Addr = advert
                .owner
                .parse()
                .map_err(|e| Refusal::Payout(format!("owner {:?}: {e}", advert.owner)))?;
            let contract = payments
                .worker_contract(&owner)
                .map_err(|e| Refusal::Payout(format!("worker contract: {e}")))?;
            let mut pusher = PayoutPusher {
                payments: payments.clone(),
                contract,
                sender: sender.clone(),
                acked: 0,
            };
            let issued = payments
                .issued_payout_voucher(&contract)
                .map_err(|e| Refusal::Payout(e.to_string()))?;
            if let Some((tokens, voucher)) = issued {
                tokio::select! {
                    _ = &mut conn => return Err(Refusal::Closed),
                    r = tokio::time::timeout(cfg.handshake_timeout, pusher.push(tokens, &voucher)) => {
                        match r {
                            Ok(Err(PushError::Refused(m))) => return Err(Refusal::Payout(m)),
                            // The worker could not check it now (its chain API is slow or
                            // down): it serves, and the voucher is offered again every poll;
                            // a refusal then closes the connection.
                            Err(_) => tracing::warn!(name = %registration.worker, "the worker did not answer the payout voucher in time; offered again later"),
                            Ok(Err(PushError::Failed(m))) => tracing::warn!(name = %registration.worker, error = %m, "payout voucher not accepted yet"),
                            Ok(Ok(())) => {}
                        }
                    }
                }
            }
            Some(pusher)
        }
        (Some(_), None) => {
            tracing::warn!(name = %registration.worker, "worker registered no payout owner: it serves unpaid");
            None
        }
        _ => None,
    };
    let account = payout
        .as_ref()
        .map_or_else(|| registration.worker.clone(), |p| p.contract.to_string());

    let id = state.registry.next_id();
    let info = WorkerInfo {
        id,
        name: registration.worker.clone(),
        account,
        addr,
        image_hash,
        models: registration.models.clone(),
        capacity: registration.capacity.min(MAX_WORKER_CAPACITY),
        token_budget: token_budget(
            registration.capacity.min(MAX_WORKER_CAPACITY),
            &registration.models,
            cfg.worker_token_budget_percent,
        ),
        price_coefficient_milli: registration.price_coefficient_milli,
        version: registration.version,
        registered_at: unix_now(),
        e2e,
        gpus: peer
            .gpus
            .iter()
            .map(crate::registry::GpuSummary::of)
            .collect(),
    };
    tracing::info!(
        worker = id,
        name = %info.name,
        peer = %addr,
        image = %info.image_hash,
        models = ?info.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        capacity = info.capacity,
        token_budget = info.token_budget,
        gpus = info.gpus.len(),
        "worker registered"
    );
    let models: Vec<String> = info.models.iter().map(|m| m.name.clone()).collect();
    state.registry.insert(Arc::new(Worker::new(info, sender)));
    // Requests waiting for these models may go to the new worker.
    crate::admission::dispatch_models(state, &models);
    state
        .stats
        .workers_registered
        .fetch_add(1, Ordering::Relaxed);
    let result = tokio::select! {
        r = conn => r.map_err(|e| e.to_string()),
        refusal = recheck(state, &cert_der) => {
            state.registry.remove(id);
            crate::admission::dispatch_models(state, &models);
            return Err(refusal);
        }
        refusal = PayoutPusher::run(payout) => {
            state.registry.remove(id);
            crate::admission::dispatch_models(state, &models);
            return Err(refusal);
        }
    };
    state.registry.remove(id);
    // Requests waiting only for this worker's models learn that nobody serves them.
    crate::admission::dispatch_models(state, &models);
    match result {
        Ok(()) => tracing::info!(worker = id, "worker disconnected"),
        Err(e) => tracing::info!(worker = id, error = %e, "worker connection lost"),
    }
    Ok(())
}

/// Re-verifies a registered worker's certificate and evidence on the proxy's own clock every
/// [`RECHECK_INTERVAL`], and returns once they no longer pass (certificate or collateral
/// expired, collateral too old, policy changed). Dropping the connection future then closes
/// the link: expiry does not depend on the worker rotating its certificate on a clock its
/// host controls. A pass is normally a cache hit (microseconds).
async fn recheck(state: &State, cert_der: &[u8]) -> Refusal {
    loop {
        tokio::time::sleep(RECHECK_INTERVAL).await;
        if let Err(e) = state.worker_verifier.verify(cert_der) {
            return Refusal::Expired {
                code: e.code(),
                detail: e.to_string(),
            };
        }
    }
}

/// Hands a worker its payout vouchers over its connection ([`protocol::payout`]).
struct PayoutPusher {
    payments: Arc<crate::payments::Payments>,
    contract: ton::address::Addr,
    sender: WorkerSender,
    /// The highest count the worker acknowledged.
    acked: u64,
}

enum PushError {
    /// The worker refuses this proxy (401: it saw a higher count).
    Refused(String),
    /// Anything else (transport, a worker that cannot read the chain now): offered again.
    Failed(String),
}

impl PayoutPusher {
    /// Offers new vouchers every poll interval; returns only when the worker refuses this
    /// proxy (never without payouts).
    async fn run(this: Option<Self>) -> Refusal {
        let Some(mut this) = this else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(this.payments.poll_interval()).await;
            // Claims the anchored count (durably) when it is above the last voucher.
            let voucher = match this.payments.payout_voucher(&this.contract).await {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(contract = %this.contract, error = %e, "payout voucher not available");
                    continue;
                }
            };
            if voucher.0 <= this.acked {
                continue;
            }
            match this.push(voucher.0, &voucher.1).await {
                Ok(()) => {}
                Err(PushError::Refused(m)) => return Refusal::Payout(m),
                Err(PushError::Failed(m)) => {
                    tracing::warn!(contract = %this.contract, error = %m, "payout voucher not accepted yet")
                }
            }
        }
    }

    async fn push(&mut self, tokens: u64, voucher: &ton::cell::Cell) -> Result<(), PushError> {
        let body = protocol::payout::PayoutVoucher {
            proxy_contract: self.payments.proxy_contract().to_string(),
            worker_contract: self.contract.to_string(),
            tokens,
            voucher: ton::boc::encode_hex(voucher),
        };
        let (status, bytes) = post_json(&self.sender, protocol::paths::PAYOUT, &body)
            .await
            .map_err(PushError::Failed)?;
        if status == http::StatusCode::UNAUTHORIZED {
            return Err(PushError::Refused(
                ApiError::from_json(status.as_u16(), &bytes).message,
            ));
        }
        if !status.is_success() {
            let e = ApiError::from_json(status.as_u16(), &bytes);
            return Err(PushError::Failed(format!(
                "status {}: {}",
                status.as_u16(),
                e.message
            )));
        }
        let ack: protocol::payout::PayoutAck = serde_json::from_slice(&bytes)
            .map_err(|e| PushError::Failed(format!("answer: {e}")))?;
        self.acked = self.acked.max(ack.highest_tokens.min(tokens));
        tracing::info!(contract = %self.contract, tokens, "payout voucher handed to the worker");
        Ok(())
    }
}

/// The registration exchange.
async fn hello(state: &State, sender: WorkerSender) -> Result<Registration, Refusal> {
    let hello = Hello {
        versions: SUPPORTED_VERSIONS.to_vec(),
        proxy: state.config.name.clone(),
    };
    let (status, bytes) = post_json(&sender, protocol::paths::HELLO, &hello)
        .await
        .map_err(Refusal::Hello)?;
    if !status.is_success() {
        let err = ApiError::from_json(status.as_u16(), &bytes);
        return Err(Refusal::Hello(format!(
            "status {}: {}",
            status.as_u16(),
            err.message
        )));
    }
    let reg: Registration =
        serde_json::from_slice(&bytes).map_err(|e| Refusal::Invalid(e.to_string()))?;
    negotiate(SUPPORTED_VERSIONS, &[reg.version]).map_err(|e| Refusal::Version(e.message))?;
    reg.validate().map_err(|e| Refusal::Invalid(e.message))?;
    Ok(reg)
}

/// One JSON exchange on a worker's connection: POSTs `body` to `path` and returns the status
/// and the answer (at most [`MAX_REGISTRATION_BYTES`]); an error for a failed transport.
async fn post_json(
    sender: &WorkerSender,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<(http::StatusCode, Bytes), String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = Request::post(format!("https://{WORKER_AUTHORITY}{path}"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(H_VERSION, HeaderValue::from(PROTOCOL_VERSION))
        .body(Bytes::from(body))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send(req)
        .await
        .map_err(|e| crate::link::describe(&e))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_REGISTRATION_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer to {path}: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// Unix seconds now (informational timestamps only; never used for validity checks).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
