//! Attested HTTP/2 connections to the proxy.
//!
//! Each dial is TCP → TLS 1.3 (RA-TLS: the proxy's certificate must pass the policy, we present
//! the account certificate) → HTTP/2 (ALPN `h2` required). Connections sit in a fixed number of
//! slots; a request takes the next slot round-robin and redials it when its connection has
//! closed or is older than [`MAX_CONNECTION_AGE`] (so that evidence, collateral freshness and
//! policy are re-checked periodically even on a busy connection). HTTP/2 keep-alive pings
//! detect a proxy that went away. A dial that fails verification fails the request that
//! triggered it and nothing is sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use measurements::ImageHash;
use protocol::{ApiError, ErrorKind};
use ratls::account::AccountKey;
use ratls::{CertResolver, Clock, PeerVerifier, RaTlsServerVerifier, Role};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::config::ClientConfig;

/// Lifetime of the account certificate presented to the proxy.
const ACCOUNT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Renew the account certificate when less than this remains.
const ACCOUNT_CERT_MARGIN_SECS: u64 = 3600;
/// Name sent as SNI; RA-TLS verifiers ignore it (identity is the attestation).
const SERVER_NAME: &str = "proxy.cocoon.invalid";

/// Connections older than this are replaced by a fresh, freshly verified one.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);
/// HTTP/2 ping interval on a connection, and the time allowed for the answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// A pooled connection and when it was dialed.
struct Slot {
    sender: Sender,
    dialed: Instant,
}

impl Slot {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && self.dialed.elapsed() < MAX_CONNECTION_AGE
    }
}

/// What the proxy proved on the most recent connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The proxy's image hash (one of the policy's allowed images).
    pub image_hash: ImageHash,
    /// The TCB status of its platform.
    pub tcb_status: String,
    /// The trust root its quote chains to.
    pub root: String,
}

pub(crate) struct Pool {
    addr: String,
    connector: TlsConnector,
    verifier: Arc<PeerVerifier>,
    account_key: Arc<AccountKey>,
    resolver: Arc<CertResolver>,
    clock: Arc<dyn Clock>,
    connect_timeout: Duration,
    slots: Vec<Mutex<Option<Slot>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

impl Pool {
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, ApiError> {
        let mut verifier = PeerVerifier::new(config.policy.clone(), config.clock.clone())
            .with_roles([Role::Proxy]);
        if let Some(source) = &config.collateral_source {
            verifier = verifier.with_collateral_source(source.clone());
        }
        let verifier = Arc::new(verifier);
        let resolver = config
            .account_key
            .resolver(config.clock.now())
            .map_err(|e| internal("account certificate", e))?;
        let tls = ratls::client_config(
            Some(resolver.clone()),
            Arc::new(RaTlsServerVerifier::new(verifier.clone())),
            &[b"h2"],
        )
        .map_err(|e| internal("tls config", e))?;
        Ok(Self {
            addr: config.proxy.clone(),
            connector: TlsConnector::from(Arc::new(tls)),
            verifier,
            account_key: config.account_key.clone(),
            resolver,
            clock: config.clock.clone(),
            connect_timeout: config.connect_timeout,
            slots: (0..config.connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// A sender on a live connection (dialing one if the slot's connection is gone).
    pub(crate) async fn sender(&self) -> Result<Sender, ApiError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.usable()) {
            return Ok(s.sender.clone());
        }
        // Dropping the old sender lets its connection finish its streams and close.
        *slot = None;
        let (sender, _) = self.dial().await?;
        *slot = Some(Slot {
            sender: sender.clone(),
            dialed: Instant::now(),
        });
        Ok(sender)
    }

    /// Whether a pooled connection is open now (no I/O; a slot being dialed counts as not
    /// open).
    pub(crate) fn has_open_connection(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.try_lock()
                .is_ok_and(|s| s.as_ref().is_some_and(Slot::usable))
        })
    }

    /// Forgets every connection (the next requests dial anew).
    pub(crate) async fn reset(&self) {
        for slot in &self.slots {
            *slot.lock().await = None;
        }
    }

    /// Dials a new connection into a free or dead slot (or the first slot), returning what the
    /// proxy proved.
    pub(crate) async fn warm(&self) -> Result<ProxyInfo, ApiError> {
        let (sender, info) = self.dial().await?;
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            if slot.as_ref().is_none_or(|s| !s.usable()) {
                *slot = Some(Slot {
                    sender,
                    dialed: Instant::now(),
                });
                break;
            }
        }
        Ok(info)
    }

    fn renew_account_cert(&self) -> Result<(), ApiError> {
        let now = self.clock.now();
        if self.resolver.needs_renewal(now, ACCOUNT_CERT_MARGIN_SECS) {
            let cert = self
                .account_key
                .certificate(now, ACCOUNT_CERT_LIFETIME)
                .map_err(|e| internal("account certificate", e))?;
            self.resolver
                .renew(&cert)
                .map_err(|e| internal("account certificate", e))?;
        }
        Ok(())
    }

    async fn dial(&self) -> Result<(Sender, ProxyInfo), ApiError> {
        let addr = &self.addr;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorKind::Timeout,
                    format!("proxy {addr}: connect timed out"),
                )
            })?
            .map_err(|e| {
                ApiError::new(ErrorKind::Upstream, format!("proxy {addr}: connect: {e}"))
            })?;
        let _ = tcp.set_nodelay(true);
        self.renew_account_cert()?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| internal("server name", e))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.connector.connect(name, tcp))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorKind::Timeout,
                    format!("proxy {addr}: tls handshake timed out"),
                )
            })?
            .map_err(|e| handshake_error(addr, &e))?;
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(b"h2") {
            return Err(ApiError::new(
                ErrorKind::Upstream,
                format!("proxy {addr}: did not negotiate http/2 (alpn h2)"),
            ));
        }
        let peer = self
            .verifier
            .peer_of(session)
            .map_err(|e| attestation_error(addr, &e))?;
        let info = ProxyInfo {
            image_hash: peer.image_hash(),
            tcb_status: peer.attestation.tcb_status.to_string(),
            root: peer.attestation.root_name.clone(),
        };
        tracing::info!(
            proxy = %addr,
            image = %info.image_hash,
            tcb = %info.tcb_status,
            root = %info.root,
            "proxy attested"
        );
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy {addr}: http/2 handshake: {e}"),
                )
            })?;
        let proxy = addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(proxy = %proxy, error = %e, "proxy connection ended");
            }
        });
        Ok((sender, info))
    }
}

fn attestation_error(addr: &str, e: &ratls::RatlsError) -> ApiError {
    ApiError::new(
        ErrorKind::Attestation,
        format!(
            "proxy {addr}: {}",
            e.rejection()
                .map_or_else(|| e.to_string(), |r| format!("attestation rejected: {r}"))
        ),
    )
}

/// Maps a failed TLS handshake: a verifier rejection names its reason (kind `attestation`),
/// anything else is an upstream failure.
pub(crate) fn handshake_error(addr: &str, e: &std::io::Error) -> ApiError {
    match ratls::ratls_io_error(e) {
        Some(r) => attestation_error(addr, r),
        None => ApiError::new(
            ErrorKind::Upstream,
            format!("proxy {addr}: tls handshake: {e}"),
        ),
    }
}
