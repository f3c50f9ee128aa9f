//! The worker's outbound connections: one loop per proxy address that dials, runs mutual
//! RA-TLS 1.3, and serves HTTP/2 on the resulting stream (the worker is the TLS client and the
//! HTTP/2 server; see [`crate::service`]). The RA-TLS certificate the worker presents is a
//! [`ratls::Identity`] with [`worker_claims`], renewed before it expires.
//!
//! # Trust boundary
//!
//! The network and the proxy address are untrusted until the handshake: the proxy must
//! present an RA-TLS certificate whose evidence passes the worker's `[policy]` (roots, TCB
//! status, allowed proxy images) and that claims the proxy role. A refused proxy is logged with
//! the named reason ([`DialError::ProxyRejected`]) and retried with backoff (its image may be
//! updated). Addresses are IP literals: no DNS is consulted. The worker's own certificate
//! binds a fresh key to a quote from its TEE ([`ratls::issue`]).
//!
//! # Lifecycle
//!
//! [`run`] reconnects with exponential backoff ([`Backoff`]: 100 ms doubling to 10 s, equal
//! jitter, reset once a connection has lived 30 s). When the [`ratls::Identity`] renews the certificate, live
//! connections are rotated: a GOAWAY lets their streams finish in the background while a new
//! connection (presenting the new certificate) is dialed at once. On shutdown, connections
//! send GOAWAY and drain for at most [`Link::drain`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ratls::{
    client_config, CertInfo, CertResolver, Claims, PeerVerifier, RaTlsServerVerifier, RatlsError,
    Role, VerifiedPeer,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::service::Service;

/// Dial failures. Each names the proxy address.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect to proxy {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The worker's verifier refused the proxy's evidence; `reason` names why
    /// (e.g. "attestation rejected: image hash … not among the 1 allowed by policy").
    #[error("proxy {addr} refused: {reason}")]
    ProxyRejected {
        addr: SocketAddr,
        reason: String,
        /// Whether the refusal is an attestation rejection (as opposed to a malformed
        /// certificate, a wrong role, missing collateral).
        attestation: bool,
    },
    /// Any other handshake failure, including the proxy refusing this worker (a TLS alert).
    #[error("tls handshake with proxy {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} with proxy {addr} timed out after {after:?}")]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    #[error("verified proxy {addr} but could not read its evidence: {source}")]
    Evidence {
        addr: SocketAddr,
        #[source]
        source: RatlsError,
    },
    #[error("http/2 connection with proxy {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// Reconnect delays: exponential with equal jitter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A connection that lived at least this long resets the delay to `initial`.
    pub reset_after: Duration,
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            initial,
            max,
            reset_after,
            current: initial,
        }
    }

    /// The next delay, for `jitter` in [0, 1): between half and all of the current step.
    /// Doubles the step, up to `max`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Records that a connection lived for `lived`.
    pub fn connection_ended(&mut self, lived: Duration) {
        if lived >= self.reset_after {
            self.reset();
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// A value in [0, 1) from the process's random hasher keys (jitter only; not for secrets).
fn jitter() -> f64 {
    let h = RandomState::new().hash_one(Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The claims in the worker's certificate.
pub fn worker_claims() -> Claims {
    Claims::new(Role::Worker, protocol::PROTOCOL_VERSION)
}

/// The TLS client config for dialing proxies: our certificate from `resolver`, the proxy
/// verified by `verifier` (which should accept only [`Role::Proxy`]), ALPN `h2`.
pub fn tls_config(
    resolver: Arc<CertResolver>,
    verifier: Arc<PeerVerifier>,
) -> Result<rustls::ClientConfig, RatlsError> {
    client_config(
        Some(resolver),
        Arc::new(RaTlsServerVerifier::new(verifier)),
        &[b"h2"],
    )
}

/// Timeouts, backoff and drain of a proxy link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How long a closing connection may drain its streams.
    pub drain: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(20),
            drain: Duration::from_secs(600),
        }
    }
}

/// Everything one proxy link needs.
#[derive(Clone, Debug)]
pub struct Link {
    pub proxy: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// The verifier inside `tls` (to read the proxy's evidence after the handshake).
    pub verifier: Arc<PeerVerifier>,
    pub service: Service,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How long a closing connection may drain its streams.
    pub drain: Duration,
    /// Certificate renewals (from [`ratls::Identity::subscribe`]): each one rotates the
    /// connection.
    pub renewed: Option<watch::Receiver<CertInfo>>,
}

impl Link {
    /// A link with default timeouts and backoff ([`LinkOptions::default`]).
    pub fn new(
        proxy: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        verifier: Arc<PeerVerifier>,
        service: Service,
    ) -> Self {
        let LinkOptions {
            backoff,
            connect_timeout,
            handshake_timeout,
            drain,
        } = LinkOptions::default();
        Self {
            proxy,
            tls,
            verifier,
            service,
            backoff,
            connect_timeout,
            handshake_timeout,
            drain,
            renewed: None,
        }
    }

    /// The same link with `options`.
    pub fn with_options(mut self, options: &LinkOptions) -> Self {
        self.backoff = options.backoff.clone();
        self.connect_timeout = options.connect_timeout;
        self.handshake_timeout = options.handshake_timeout;
        self.drain = options.drain;
        self
    }
}

/// Dials the proxy and completes the RA-TLS handshake; returns the stream and the proxy's
/// verified evidence.
pub async fn connect(link: &Link) -> Result<(TlsStream<TcpStream>, VerifiedPeer), DialError> {
    let addr = link.proxy;
    let tcp = tokio::time::timeout(link.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Timeout {
            addr,
            what: "tcp connect",
            after: link.connect_timeout,
        })?
        .map_err(|source| DialError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(link.tls.clone());
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(link.handshake_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| DialError::Timeout {
            addr,
            what: "tls handshake",
            after: link.handshake_timeout,
        })?
        .map_err(|source| match ratls::ratls_io_error(&source) {
            Some(r) => DialError::ProxyRejected {
                addr,
                reason: r.to_string(),
                attestation: r.rejection().is_some(),
            },
            None => DialError::Handshake { addr, source },
        })?;
    let peer = link
        .verifier
        .peer_of(tls.get_ref().1)
        .map_err(|source| DialError::Evidence { addr, source })?;
    Ok((tls, peer))
}

/// How a served connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The proxy closed it.
    Closed,
    /// Shutdown was requested; the connection drained.
    Shutdown,
    /// The certificate was renewed; the connection drains in the background.
    Rotated,
}

async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means shutdown.
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn renewal(renewed: &mut Option<watch::Receiver<CertInfo>>) {
    if let Some(rx) = renewed {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    // No renewals (or the source is gone): never.
    std::future::pending().await
}

/// Longest a connection keeps serving after a certificate renewal while the connection on the
/// renewed certificate registers.
const HANDOVER: Duration = Duration::from_secs(10);

/// Serves HTTP/2 on an established connection until the proxy closes it, shutdown, or a
/// certificate renewal.
pub async fn serve(
    link: &Link,
    tls: TlsStream<TcpStream>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended, DialError> {
    let addr = link.proxy;
    let capacity = link.service.info().capacity;
    let mut renewed = link.renewed.clone();
    if let Some(r) = renewed.as_mut() {
        r.mark_unchanged();
    }
    let mut conn = Box::pin(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(capacity.saturating_mul(2).saturating_add(16))
            .max_pending_accept_reset_streams(protocol::http2_limits::MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(protocol::http2_limits::MAX_LOCAL_ERROR_RESETS)
            .serve_connection(
                TokioIo::new(tls),
                link.service.for_connection(addr.to_string()),
            ),
    );
    let drain = link.drain;
    tokio::select! {
        r = conn.as_mut() => r.map(|()| Ended::Closed).map_err(|source| DialError::Http { addr, source }),
        _ = wait_shutdown(shutdown) => {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(drain, conn).await.is_err() {
                tracing::warn!(proxy = %addr, "connection did not drain in {drain:?}; closing");
            }
            Ok(Ended::Shutdown)
        }
        _ = renewal(&mut renewed) => {
            // The proxy keeps this connection until the one on the renewed certificate has
            // registered (at most HANDOVER), so it always has one to route to; then this one
            // drains.
            let service = link.service.clone();
            let before = service.open_registrations();
            tokio::spawn(async move {
                let handover = async {
                    let deadline = Instant::now() + HANDOVER;
                    while service.open_registrations() <= before && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = handover => {}
                }
                conn.as_mut().graceful_shutdown();
                if tokio::time::timeout(drain, conn).await.is_err() {
                    tracing::warn!(proxy = %addr, "rotated connection did not drain in {drain:?}");
                }
            });
            Ok(Ended::Rotated)
        }
    }
}

/// The connection loop for one proxy: dial, serve, reconnect with backoff, until `shutdown`.
pub async fn run(link: Link, mut shutdown: watch::Receiver<bool>) {
    let addr = link.proxy;
    let mut backoff = link.backoff.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let connected = tokio::select! {
            r = connect(&link) => r,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        match connected {
            Ok((tls, peer)) => {
                tracing::info!(
                    proxy = %addr,
                    image = %peer.image_hash(),
                    tcb = %peer.attestation.tcb_status,
                    root = %peer.attestation.root_name,
                    "connected to attested proxy"
                );
                let since = Instant::now();
                let ended = serve(&link, tls, &mut shutdown).await;
                let lived = since.elapsed();
                match ended {
                    Ok(Ended::Shutdown) => return,
                    Ok(Ended::Rotated) => {
                        tracing::info!(proxy = %addr, "rotating the connection onto the renewed certificate");
                        backoff.reset();
                        continue;
                    }
                    Ok(Ended::Closed) => {
                        tracing::info!(proxy = %addr, ?lived, "proxy closed the connection")
                    }
                    Err(e) => {
                        tracing::warn!(proxy = %addr, error = %e, ?lived, "connection failed")
                    }
                }
                backoff.connection_ended(lived);
            }
            Err(DialError::ProxyRejected {
                reason,
                attestation,
                ..
            }) => {
                tracing::warn!(proxy = %addr, %reason, attestation, "proxy refused");
            }
            Err(e) => tracing::warn!(proxy = %addr, error = %e, "dial failed"),
        }
        let delay = backoff.next_delay(jitter());
        tracing::debug!(proxy = %addr, ?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(b.next_delay(0.0)), 50);
        assert_eq!(ms(b.next_delay(0.999_999)), 199);
        assert_eq!(ms(b.next_delay(0.5)), 300);
        for _ in 0..20 {
            b.next_delay(0.0);
        }
        assert_eq!(b.next_delay(1.0), Duration::from_secs(10));
        assert_eq!(b.next_delay(0.0), Duration::from_secs(5));
        b.connection_ended(Duration::from_secs(29));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(10));
        b.connection_ended(Duration::from_secs(30));
        assert_eq!(ms(b.next_delay(1.0)), 100);
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
