//! What every connection handler of the proxy shares: its config, the worker registry, the
//! ledger, statistics, the worker verifier and the client-port limit state. Built by
//! [`crate::server::Proxy::start`]; the port modules ([`crate::workers`], [`crate::api`],
//! [`crate::admin`]) and the request path ([`crate::relay`]) read it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ratls::{CertResolver, Clock, PeerVerifier};
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::ledger::Ledger;
use crate::limits::Limits;
use crate::payments::Payments;
use crate::queue::Queues;
use crate::registry::Registry;
use crate::stats::Stats;

/// The proxy's shutdown phases: running, draining (no new requests; streams in progress may
/// finish), cut (every remaining stream ends with an error event).
#[derive(Debug)]
pub struct Shutdown {
    draining: AtomicBool,
    cut: AtomicBool,
    cut_tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            cut_tx: watch::channel(false).0,
        }
    }
}

impl Shutdown {
    /// New requests are refused from now on.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Streams still running must end now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn cut(&self) {
        self.draining.store(true, Ordering::Release);
        self.cut.store(true, Ordering::Release);
        self.cut_tx.send_replace(true);
    }

    /// Resolves once the drain deadline has passed (`cut`).
    pub fn when_cut(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cut_tx.subscribe();
        async move {
            let _ = rx.wait_for(|cut| *cut).await;
        }
    }
}

/// What every connection handler shares.
#[derive(Debug)]
pub struct State {
    pub config: ProxyConfig,
    pub registry: Registry,
    pub ledger: Arc<dyn Ledger>,
    pub stats: Arc<Stats>,
    /// Verifies workers (worker policy, worker role only).
    pub worker_verifier: Arc<PeerVerifier>,
    /// Client-port limit state (connection slots, body budget).
    pub limits: Limits,
    /// The proxy's RA-TLS certificate (its notAfter decides readiness).
    pub identity: Arc<CertResolver>,
    /// The proxy's clock (readiness: certificate expiry).
    pub clock: Arc<dyn Clock>,
    /// The payments engine, with payments on (health: [`crate::health`]; payouts:
    /// [`crate::workers`]).
    pub payments: Option<Arc<Payments>>,
    /// Requests waiting for a worker slot, per model.
    pub queues: Queues,
    /// Where the proxy is in shutting down.
    pub shutdown: Shutdown,
    /// The development recording hook (`record_forwarded`; [`crate::record`]).
    pub recorder: Option<crate::record::Recorder>,
    /// Live streams watched for clients that stopped reading ([`crate::stall`]).
    pub stalls: crate::stall::Stalls,
    /// The requests of each account at workers, for clients' cancels
    /// ([`crate::running`]).
    pub running: Arc<crate::running::Running>,
}
