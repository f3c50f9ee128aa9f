//! Starting and stopping the proxy: the shared [`State`], the three listeners, shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use measurements::Policy;
use ratls::account::account_server_config;
use ratls::{
    server_config, CertResolver, Clock, PeerVerifier, RaTlsClientVerifier, RatlsError, Role,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ProxyConfig};
use crate::ledger::Ledger;
use crate::limits::Limits;
use crate::queue::Queues;
use crate::registry::Registry;
use crate::state::{Shutdown, State};
use crate::stats::Stats;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] RatlsError),
    #[error("record_forwarded {}: {source}", path.display())]
    Record {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the proxy needs to start.
#[derive(Debug)]
pub struct Proxy {
    pub config: ProxyConfig,
    /// The proxy's RA-TLS certificate (presented to workers and clients).
    pub resolver: Arc<CertResolver>,
    /// What worker evidence is accepted.
    pub worker_policy: Policy,
    /// Collateral for workers' quotes besides what their certificates embed (the proxy's
    /// `[tee.pccs]`; the fresher of the two is used).
    pub collateral_source: Option<Arc<dyn ratls::CollateralSource>>,
    /// Time for verifying workers.
    pub clock: Arc<dyn Clock>,
    pub ledger: Arc<dyn Ledger>,
    /// With payments on: the engine. `/readyz` reports its health, `/jsonstats` and
    /// `/metrics` its figures, and registered workers get its payout vouchers.
    pub payments: Option<Arc<crate::payments::Payments>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local(what: &'static str, l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl Proxy {
    /// Binds the three listeners and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<RunningProxy, StartError> {
        self.config.validate()?;
        if !self.worker_policy.pins_config() {
            tracing::warn!(
                "DEVELOPMENT ONLY: the worker policy pins no runtime configuration \
                 (allow_any_config = true): a worker image configured by its host in any way \
                 is accepted"
            );
        }
        let cfg = &self.config;
        let mut worker_verifier =
            PeerVerifier::new(self.worker_policy, self.clock.clone()).with_roles([Role::Worker]);
        if let Some(source) = self.collateral_source {
            worker_verifier = worker_verifier.with_collateral_source(source);
        }
        let worker_verifier = Arc::new(worker_verifier);
        let worker_tls = server_config(
            self.resolver.clone(),
            Some(Arc::new(RaTlsClientVerifier::new(worker_verifier.clone()))),
            &[b"h2"],
        )?;
        let client_tls = account_server_config(self.resolver.clone(), &[b"h2", b"http/1.1"])?;

        let workers = bind("worker_listen", cfg.worker_listen).await?;
        let clients = bind("client_listen", cfg.client_listen).await?;
        let admin = bind("admin_listen", cfg.admin_listen).await?;
        let worker_addr = local("worker_listen", &workers, cfg.worker_listen)?;
        let client_addr = local("client_listen", &clients, cfg.client_listen)?;
        let admin_addr = local("admin_listen", &admin, cfg.admin_listen)?;

        let recorder = match &cfg.record_forwarded {
            Some(path) => {
                tracing::warn!(
                    path = %path.display(),
                    "DEVELOPMENT ONLY: record_forwarded is on: every forwarded byte is written to this file"
                );
                Some(
                    crate::record::Recorder::open(path).map_err(|source| StartError::Record {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let state = Arc::new(State {
            recorder,
            limits: Limits::new(&self.config.client),
            stalls: crate::stall::Stalls::new(self.config.client.stall_timeout),
            running: Default::default(),
            config: self.config,
            registry: Registry::default(),
            ledger: self.ledger,
            stats: Arc::new(Stats::default()),
            worker_verifier,
            identity: self.resolver,
            clock: self.clock,
            payments: self.payments,
            queues: Queues::default(),
            shutdown: Shutdown::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(crate::workers::accept_loop(
                state.clone(),
                workers,
                TlsAcceptor::from(Arc::new(worker_tls)),
                rx.clone(),
            )),
            tokio::spawn(crate::api::accept_loop(
                state.clone(),
                clients,
                TlsAcceptor::from(Arc::new(client_tls)),
                rx.clone(),
            )),
            tokio::spawn(crate::admin::accept_loop(state.clone(), admin, rx)),
            tokio::spawn({
                let state = state.clone();
                async move { crate::stall::sweep(&state.stalls, &state.stats).await }
            }),
        ];
        tracing::info!(%worker_addr, %client_addr, %admin_addr, "proxy listening");
        Ok(RunningProxy {
            worker_addr,
            client_addr,
            admin_addr,
            state,
            shutdown,
            tasks,
        })
    }
}

/// After the drain deadline: how long the error events that end the remaining streams may
/// take to reach their clients before the connections are closed.
pub const CUT_FLUSH: Duration = Duration::from_secs(2);

/// After the drain deadline: a stream whose client has taken nothing for this long is
/// stopped and billed from outside its relay ([`crate::stall::Stalls::take_at_shutdown`]); a
/// client that reads takes a frame within milliseconds.
pub const SHUTDOWN_STALL_MARK: Duration = Duration::from_millis(200);

/// A started proxy. Dropping it stops every listener and connection.
#[derive(Debug)]
pub struct RunningProxy {
    pub worker_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The line `main` prints once the listeners are up.
    pub fn readiness_line(&self) -> String {
        format!(
            "{} (workers {}, clients {}, admin {})",
            protocol::guest::PROXY_READY,
            self.worker_addr,
            self.client_addr,
            self.admin_addr
        )
    }

    /// The `/jsonstats` snapshot.
    pub fn json_stats(&self) -> crate::admin::JsonStats {
        crate::admin::json_stats(&self.state)
    }

    /// Shuts down gracefully: stops accepting connections and requests (new requests get 503,
    /// queued ones too; open connections get HTTP/2 GOAWAY or lose keep-alive), lets streams
    /// in progress finish for up to `drain` (and streams whose clients left be settled), then
    /// stops each remaining generation at its worker and ends its stream with the usage of
    /// the work done and a `service_unavailable` error event
    /// ([`crate::relay::STOP_AT_CUT`]), waits up to [`CUT_FLUSH`] for those to reach their
    /// clients, and closes everything.
    pub async fn shutdown(mut self, drain: Duration) {
        let state = &self.state;
        state.shutdown.start_draining();
        let _ = self.shutdown.send(true);
        state.queues.fail_all(&protocol::ApiError::new(
            protocol::ErrorKind::Unavailable,
            "the proxy is shutting down; retry on another proxy",
        ));
        let active = || state.stats.active_requests.load(Ordering::Relaxed);
        let deadline = Instant::now() + drain;
        while active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if active() > 0 {
            tracing::info!(
                streams = active(),
                "drain deadline passed; stopping the remaining generations at their workers (their usage is billed) and ending their streams with an error event"
            );
            state.shutdown.cut();
            let flush = Instant::now() + CUT_FLUSH;
            let mut taken = 0;
            while active() > 0 && Instant::now() < flush {
                // Relays whose clients take nothing are not polled and cannot see the
                // deadline: their worker streams are stopped and billed from outside.
                taken += state
                    .stalls
                    .take_at_shutdown(Instant::now(), SHUTDOWN_STALL_MARK);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if taken > 0 {
                tracing::info!(
                    streams = taken,
                    "streams of clients taking nothing at the drain deadline: stopped at their workers and billed"
                );
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
