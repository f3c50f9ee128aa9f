//! What every connection handler of the proxy shares: its config, the worker registry, the
//! ledger, statistics, the worker verifier and the client-port limit state. Built by
//! [`crate::server::Proxy::start`]; the port modules ([`crate::workers`], [`crate::api`],
//! [`crate::admin`]) and the request path ([`crate::relay`]) read it.

use std::sync::Arc;

use ratls::{CertResolver, Clock, PeerVerifier};
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::ledger::Ledger;
use crate::limits::Limits;
use crate::payments::Health;
use crate::registry::Registry;
use crate::stats::Stats;

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
    /// The payments engine's health, with payments on ([`crate::health`]).
    pub payments: Option<watch::Receiver<Health>>,
}
