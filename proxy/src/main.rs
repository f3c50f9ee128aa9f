//! `cocoon-proxy --config proxy.toml`: the proxy service.
//!
//! Logs go to stderr (`RUST_LOG` filters, default `info`). Once every listener is bound it
//! prints `cocoon-proxy: ready (workers <addr>, clients <addr>, admin <addr>)` to stdout.
//!
//! Exit codes: 0 clean shutdown on SIGTERM/SIGINT; 1 other failure; 2 config invalid;
//! 3 TEE unavailable; 4 ledger or key store unusable.

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

/// How long requests in progress may finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    let tee = match loaded
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
    let ledger = match proxy::ledger::open_configured(
        loaded.ledger.as_ref(),
        &loaded.proxy.prices,
        &loaded.proxy.accounts,
    ) {
        Ok((ledger, recovery)) => {
            if let Some(r) = recovery {
                tracing::info!(
                    clients = r.clients,
                    workers = r.workers,
                    stale_reservations = r.stale_reservations,
                    stale_reserved_nano = r.stale_reserved_nano,
                    "ledger opened"
                );
            }
            ledger
        }
        Err(e) => {
            tracing::error!(error = %e, "ledger unusable; refusing to start");
            return ExitCode::Ledger;
        }
    };
    let running = match (Proxy {
        config: loaded.proxy,
        resolver: identity.resolver(),
        worker_policy: loaded.worker_policy,
        clock: clock.clone(),
        ledger,
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
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.readiness_line());
        let _ = out.flush();
    }
    let signal = wait_for_signal().await;
    let _ = stop_renewal.send(true);
    match signal {
        Ok(name) => {
            tracing::info!(signal = name, "shutting down");
            running.shutdown(SHUTDOWN_GRACE).await;
            ExitCode::Clean
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for signals");
            running.shutdown(Duration::ZERO).await;
            ExitCode::Other
        }
    }
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
