//! `cocoon-proxy --config proxy.toml`: the proxy service.
//!
//! Logs go to stderr (`RUST_LOG` filters, default `info`). Once every listener is bound it
//! prints `cocoon-proxy: ready (workers <addr>, clients <addr>, admin <addr>)` to stdout.
//!
//! On SIGTERM or SIGINT it stops accepting, answers new requests 503, lets streams in
//! progress finish for `shutdown_drain_secs`, ends the rest with a `service_unavailable`
//! error event ([`proxy::RunningProxy::shutdown`]) and exits.
//!
//! Exit codes: 0 clean shutdown on SIGTERM/SIGINT; 1 other failure; 2 config invalid;
//! 3 TEE unavailable; 4 ledger, key store or payments setup unusable; 5 the chain contradicts
//! the ledger (rolled back or cloned proxy; payments on).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use proxy::{ExitCode, Proxy};
use ratls::{Clock, Identity, RatlsError, SystemClock};
use tokio::sync::watch;

/// cocoon proxy: attests workers, authenticates client accounts, routes and bills requests.
#[derive(Debug, Parser)]
#[command(name = "cocoon-proxy", version)]
struct Args {
    /// Path of the proxy's TOML config.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    ratls::logging::init_tracing("info");
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::Other
        }
    };
    std::process::ExitCode::from(code as u8)
}

async fn run(args: Args) -> ExitCode {
    let loaded = match proxy::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(config = %args.config.display(), error = %e, "invalid config");
            return ExitCode::Config;
        }
    };
    let mut tee = match loaded
        .tee
        .open_for_config(&loaded.base_dir, loaded.config_sha256)
    {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "tee unavailable");
            return ExitCode::Tee;
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Err(e) = ratls::pccs::attach(&loaded.tee, &mut tee, &loaded.base_dir, clock.clone()) {
        tracing::error!(error = %e, "invalid [tee.pccs]");
        return ExitCode::Config;
    }
    let collateral_source = tee.collateral_source.clone();
    let identity = match Identity::issue(
        tee,
        proxy::claims(&loaded.proxy.name),
        ratls::cert::DEFAULT_LIFETIME,
        clock.clone(),
    ) {
        Ok(i) => Arc::new(i),
        Err(e @ RatlsError::Tee(_)) => {
            tracing::error!(error = %e, "tee unavailable");
            return ExitCode::Tee;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot issue the ra-tls certificate");
            return ExitCode::Other;
        }
    };
    let opened = match proxy::ledger::open_configured(
        loaded.ledger.as_ref(),
        &loaded.proxy.prices,
        &loaded.proxy.accounts,
    ) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "ledger unusable; refusing to start");
            return ExitCode::Ledger;
        }
    };
    if let Some(r) = opened.recovery {
        tracing::info!(
            clients = r.clients,
            workers = r.workers,
            stale_reservations = r.stale_reservations,
            stale_reserved_nano = r.stale_reserved_nano,
            "ledger opened"
        );
    }
    let (ledger, payments) = match (&loaded.payments, opened.durable, opened.keys, opened.kp) {
        (Some(settings), Some(durable), Some(keys), Some(kp)) => {
            match start_payments(settings, durable.clone(), &keys, &kp) {
                Ok(p) => {
                    let paid: Arc<dyn proxy::Ledger> =
                        Arc::new(proxy::payments::PaidLedger::new(durable, p.clone()));
                    (paid, Some(p))
                }
                Err(e) => {
                    tracing::error!(error = %e, "payments unusable; refusing to start");
                    return ExitCode::Ledger;
                }
            }
        }
        _ => (opened.ledger, None),
    };
    let payments_task = payments.as_ref().map(|p| p.start());
    let drain = loaded.proxy.shutdown_drain;
    let running = match (Proxy {
        config: loaded.proxy,
        resolver: identity.resolver(),
        worker_policy: loaded.worker_policy,
        collateral_source,
        clock: clock.clone(),
        ledger,
        payments: payments.clone(),
    })
    .start()
    .await
    {
        Ok(r) => r,
        Err(proxy::StartError::Config(e)) => {
            tracing::error!(error = %e, "invalid config");
            return ExitCode::Config;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::Other;
        }
    };
    let (stop_renewal, renewal_stopped) = watch::channel(false);
    tokio::spawn(identity.clone().run_renewal(renewal_stopped));
    // Installed before the readiness line: a SIGTERM sent right after it must be handled
    // (the default action would kill the process without draining).
    let signals = Signals::install();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.readiness_line());
        let _ = out.flush();
    }
    let signal = tokio::select! {
        s = signals.wait() => s,
        reason = rollback(payments.clone()) => {
            // The chain contradicts the ledger: a rolled-back or cloned proxy must not serve.
            tracing::error!(%reason, "payments: the chain contradicts the ledger; stopping");
            let _ = stop_renewal.send(true);
            running.shutdown(Duration::ZERO).await;
            if let Some(t) = payments_task {
                t.shutdown().await;
            }
            return ExitCode::Rollback;
        }
    };
    let _ = stop_renewal.send(true);
    let code = match signal {
        Ok(name) => {
            tracing::info!(signal = name, drain_secs = drain.as_secs(), "shutting down");
            running.shutdown(drain).await;
            ExitCode::Clean
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for signals");
            running.shutdown(Duration::ZERO).await;
            ExitCode::Other
        }
    };
    // After the streams: the charges of streams that finished while draining are settled.
    if let Some(t) = payments_task {
        t.shutdown().await;
    }
    code
}

/// The payments engine's chain, keys and settings, started from the config.
fn start_payments(
    settings: &proxy::payments::PaymentsSettings,
    durable: Arc<proxy::ledger::durable::DurableLedger>,
    keys: &proxy::keystore::EncryptedFileStore,
    kp: &[u8; 32],
) -> Result<Arc<proxy::payments::Payments>, String> {
    use proxy::keystore::KeyStore as _;
    let api_key = tonsim::chain_config::ApiKey::from_env(settings.chain_api_key_env.as_deref())
        .map_err(|e| format!("payments.{e}"))?;
    let chain = tonsim::HttpChain::new(&settings.chain_url, api_key).map_err(|e| e.to_string())?;
    let wallet = keys
        .load_or_create(proxy::keystore::WALLET_KEY)
        .map_err(|e| e.to_string())?;
    let p = proxy::payments::Payments::new(proxy::payments::PaymentsSetup {
        chain: Arc::new(chain),
        ledger: durable,
        proxy_key: ed25519_dalek::SigningKey::from_bytes(kp),
        wallet_key: ed25519_dalek::SigningKey::from_bytes(&wallet),
        params: settings.params.clone(),
        settings: settings.clone(),
    })
    .map_err(|e| e.to_string())?;
    tracing::info!(
        wallet = %p.wallet().address(),
        contract = %p.proxy_contract(),
        "payments on: fund the wallet; the proxy deploys its contract"
    );
    Ok(p)
}

/// Resolves when the payments engine turns fatal (never without payments).
async fn rollback(payments: Option<Arc<proxy::payments::Payments>>) -> String {
    let Some(p) = payments else {
        return std::future::pending().await;
    };
    let mut health = p.health();
    loop {
        if let proxy::payments::Health::Fatal(e) = &*health.borrow_and_update() {
            return e.to_string();
        }
        if health.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// SIGTERM and SIGINT handlers, installed at once.
struct Signals(std::io::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self(
            signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?))),
        )
    }

    /// The name of the first signal received.
    async fn wait(self) -> std::io::Result<&'static str> {
        let (mut term, mut int) = self.0?;
        Ok(tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        })
    }
}
