//! Starting and stopping the worker: the [`Service`], one dial loop per proxy ([`crate::dial`])
//! and the renewal of its RA-TLS [`Identity`], all stopped by one shutdown signal.
//!
//! [`Worker`] is what `main` (and the tests) assemble from a validated config, an issued
//! identity and loaded models; [`Worker::start`] spawns everything on the current tokio
//! runtime and returns a [`RunningWorker`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use measurements::Policy;
use ratls::{Clock, Identity, PeerVerifier, RatlsError, Role};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};

use crate::config::{BuildError, WorkerConfig};
use crate::dial::{self, Link, LinkOptions};
use crate::service::{ServedModel, Service, ServiceError, ServiceOptions, WorkerInfo};

/// After the drain deadline: how long the error events that end the remaining streams may
/// take to reach the proxies before the connections are closed.
pub const STREAM_END_FLUSH: Duration = Duration::from_secs(3);

/// Errors starting the worker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The models and worker settings do not make a service (none, or a model twice).
    #[error("service: {0}")]
    Service(#[from] ServiceError),
    /// The TLS config for dialing proxies could not be built.
    #[error("tls config: {0}")]
    Tls(#[from] RatlsError),
}

/// Everything the worker needs to start.
#[derive(Debug)]
pub struct Worker {
    pub info: WorkerInfo,
    pub models: Vec<ServedModel>,
    /// The proxies to dial.
    pub proxies: Vec<SocketAddr>,
    /// The worker's certificate (renewed by the running worker until shutdown).
    pub identity: Arc<Identity>,
    /// What proxies must prove.
    pub proxy_policy: Policy,
    /// Time for verifying proxies and for the service.
    pub clock: Arc<dyn Clock>,
    pub links: LinkOptions,
    /// How the service streams (keepalives).
    pub options: ServiceOptions,
    /// Earnings ([`crate::payout`]), when `[payout]` is configured.
    pub payouts: Option<Arc<crate::payout::Payouts>>,
    /// End-to-end keys ([`crate::e2e`]), published in `identity`'s claims; without them the
    /// worker refuses encrypted requests.
    pub e2e: Option<Arc<crate::e2e::E2eKeys>>,
}

impl Worker {
    /// The worker `config` describes, serving `models` under `identity`.
    pub fn from_config(
        config: &WorkerConfig,
        models: Vec<ServedModel>,
        identity: Arc<Identity>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            info: WorkerInfo {
                name: config.name.clone(),
                capacity: config.capacity,
                price_coefficient_milli: config.price_coefficient_milli,
            },
            models,
            proxies: config.proxies.clone(),
            identity,
            proxy_policy: config.policy.clone(),
            clock,
            links: LinkOptions::default(),
            options: ServiceOptions {
                stream_keepalive: config.stream_keepalive,
                stream_stall: config.stream_stall,
            },
            payouts: None,
            e2e: None,
        }
    }

    /// Builds the service and starts dialing every proxy, and the certificate renewal, on the
    /// current tokio runtime.
    pub fn start(self) -> Result<RunningWorker, StartError> {
        let service =
            Service::with_options(self.info, self.models, self.clock.clone(), self.options)?;
        if !self.proxy_policy.pins_config() {
            tracing::info!(
                "proxies are pinned by image; their runtime configuration is not pinned"
            );
        }
        let verifier = Arc::new(
            PeerVerifier::new(self.proxy_policy, self.clock.clone()).with_roles([Role::Proxy]),
        );
        let tls = Arc::new(dial::tls_config(
            self.identity.resolver(),
            verifier.clone(),
        )?);
        // Subscribed before any link dials, so the first registration cannot be missed.
        let registrations = std::sync::Mutex::new(Some(service.subscribe()));
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(self.identity.clone().run_renewal(rx.clone()))];
        if let Some(keys) = &self.e2e {
            service.attach_e2e(keys.clone());
        }
        if let Some(p) = &self.payouts {
            service.attach_payouts(p.clone());
            let mut stop = rx.clone();
            tasks.push(tokio::spawn(p.clone().run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })));
            tracing::info!(owner = %p.advert().owner, wallet = %p.wallet(), "payouts on: vouchers are submitted from the wallet; keep it funded (2 TON + 0.7 TON per voucher)");
        }
        let mut links = Vec::new();
        for proxy in &self.proxies {
            let mut link = Link::new(*proxy, tls.clone(), verifier.clone(), service.clone())
                .with_options(&self.links);
            link.renewed = Some(self.identity.subscribe());
            tasks.push(tokio::spawn(dial::run(link.clone(), rx.clone())));
            links.push(link);
        }
        tracing::info!(
            worker = %service.info().name,
            proxies = ?self.proxies,
            models = ?service.adverts().iter().map(|a| &a.name).collect::<Vec<_>>(),
            "worker started"
        );
        Ok(RunningWorker {
            service,
            registrations,
            identity: self.identity,
            links,
            shutdown,
            tasks,
        })
    }
}

/// A started worker. Dropping it signals shutdown and aborts its tasks.
#[derive(Debug)]
pub struct RunningWorker {
    service: Service,
    /// Registrations since before the first dial (taken by [`Self::readiness_line`]).
    registrations:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<crate::service::Registered>>>,
    identity: Arc<Identity>,
    links: Vec<Link>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningWorker {
    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// One link per proxy, as the dial loops use them.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Resolves, after the first registration with a proxy, to the line `main` prints
    /// ([`protocol::guest::WORKER_READY`]); `None` if the service is gone first.
    pub fn readiness_line(&self) -> impl Future<Output = Option<String>> + Send + 'static {
        let service = self.service.clone();
        let early = self
            .registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut events = early.unwrap_or_else(|| service.subscribe());
        async move {
            let first = events.recv().await.ok()?;
            let models: Vec<&str> = service.adverts().iter().map(|a| a.name.as_str()).collect();
            Some(format!(
                "{} (proxy {}, models [{}])",
                protocol::guest::WORKER_READY,
                first.proxy,
                models.join(", ")
            ))
        }
    }

    /// Signals shutdown without waiting: connections send GOAWAY and drain (for at most the
    /// links' `drain`), the renewal stops.
    pub fn signal_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every dial loop and the renewal have ended (after a shutdown signal); an
    /// error if one of them panicked.
    pub async fn stopped(&mut self) -> Result<(), JoinError> {
        // One at a time, removed once finished: if this future is dropped (a timeout), the
        // rest stay here and are aborted on drop.
        let mut result = Ok(());
        while let Some(t) = self.tasks.first_mut() {
            let ended = t.await;
            self.tasks.remove(0);
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }

    /// Signals shutdown and waits up to `drain` for the connections to drain; then ends the
    /// streams still running with a `service_unavailable` error event
    /// ([`Service::end_streams`]) and waits up to [`STREAM_END_FLUSH`] more. Returns whether
    /// everything stopped (the rest is aborted when `self` drops). The links' own
    /// [`LinkOptions::drain`] must be longer than `drain` for the error events to get out.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.signal_shutdown();
        let report = |r: Result<(), JoinError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "a worker task failed");
            }
            true
        };
        if let Ok(r) = tokio::time::timeout(drain, self.stopped()).await {
            return report(r);
        }
        let active = self.service.stats().snapshot().active_generations;
        tracing::info!(
            streams = active,
            "drain deadline passed; ending the remaining streams with an error event"
        );
        self.service.end_streams();
        match tokio::time::timeout(STREAM_END_FLUSH, self.stopped()).await {
            Ok(r) => report(r),
            Err(_) => false,
        }
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Loads every model of `config` (logging each), in order.
pub async fn build_models(config: &WorkerConfig) -> Result<Vec<ServedModel>, BuildError> {
    let mut served = Vec::new();
    for spec in &config.models {
        tracing::info!(model = %spec.name, engine = ?spec.engine, "loading model");
        let m = spec.build(config.capacity).await?;
        tracing::info!(
            model = %m.advert.name,
            model_hash = %m.advert.model_hash,
            max_context = m.advert.max_context,
            max_completion_tokens = m.advert.max_completion_tokens,
            "model ready"
        );
        served.push(m);
    }
    Ok(served)
}
