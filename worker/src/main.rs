//! `cocoon-worker --config worker.toml`: serves LLM inference inside a TDX guest to attested
//! proxies (see the library docs of `cocoon-worker` for the design).
//!
//! Steps: load and validate the config; open the TEE; load the models; issue the RA-TLS
//! certificate; dial every proxy (one reconnecting loop each) and serve them; renew the
//! certificate before expiry; on SIGTERM or SIGINT send GOAWAY, let streams drain for up to
//! 30 s, exit.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). Once the first proxy registration has
//! completed, one line goes to stdout:
//!
//! ```text
//! cocoon-worker: ready (proxy 127.0.0.1:9101, models [smollm2-135m, other])
//! ```
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | clean shutdown after SIGTERM or SIGINT (also `--help`, `--version`) |
//! | 1 | other fatal error (a model failed to load, the runtime failed) |
//! | 2 | bad command line or configuration |
//! | 3 | the TEE is unavailable (device missing, quote generation failed) |

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ratls::{PeerVerifier, Role, SystemClock};
use tokio::sync::watch;
use worker::config::{BuildError, WorkerConfig};
use worker::dial::{self, Certs, Link};
use worker::service::{Service, WorkerInfo};

/// How long connections may drain after SIGTERM.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

/// Serves LLM inference inside a TDX guest to attested cocoon proxies.
///
/// Exit codes: 0 clean shutdown, 1 fatal error, 2 bad usage or config, 3 TEE unavailable.
#[derive(Debug, Parser)]
#[command(name = "cocoon-worker", version)]
struct Args {
    /// The worker's TOML configuration file.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
}

/// The documented exit codes (module docs); 0 is a clean shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// Another fatal error (a model failed to load, the runtime failed).
    Fatal = 1,
    /// Bad command line or configuration.
    Config = 2,
    /// The TEE is unavailable (device missing, quote generation failed).
    Tee = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// A fatal error and the exit code it maps to.
#[derive(Debug)]
struct Fatal {
    code: Exit,
    error: anyhow::Error,
}

trait OrExit<T> {
    fn or_exit(self, code: Exit) -> Result<T, Fatal>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: Exit) -> Result<T, Fatal> {
        self.map_err(|e| Fatal {
            code,
            error: e.into(),
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon-worker: tokio runtime: {e}");
            return Exit::Fatal.into();
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            tracing::error!(code = f.code as u8, "{:#}", f.error);
            eprintln!("cocoon-worker: {:#}", f.error);
            f.code.into()
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: Args) -> Result<(), Fatal> {
    let config = WorkerConfig::load(&args.config)
        .context("configuration")
        .or_exit(Exit::Config)?;
    let clock = Arc::new(SystemClock);
    let tee = config
        .tee
        .open_for_config(&config.base_dir, config.config_sha256)
        .context("tee")
        .or_exit(Exit::Tee)?;
    let lifetime = config.cert_lifetime;
    let certs = tokio::task::spawn_blocking({
        let clock = clock.clone();
        move || Certs::issue(tee, dial::worker_claims(), lifetime, clock)
    })
    .await
    .or_exit(Exit::Fatal)?
    .map_err(|e| {
        let code = if matches!(e, ratls::RatlsError::Tee(_)) {
            Exit::Tee
        } else {
            Exit::Fatal
        };
        Fatal {
            code,
            error: anyhow::Error::new(e).context("issuing the ra-tls certificate"),
        }
    })?;
    let certs = Arc::new(certs);

    let mut served = Vec::new();
    for spec in &config.models {
        tracing::info!(model = %spec.name, engine = ?spec.engine, "loading model");
        match spec.build(config.capacity).await {
            Ok(m) => {
                tracing::info!(
                    model = %m.advert.name,
                    model_hash = %m.advert.model_hash,
                    max_context = m.advert.max_context,
                    max_completion_tokens = m.advert.max_completion_tokens,
                    "model ready"
                );
                served.push(m);
            }
            Err(e @ BuildError::NotBuilt { .. }) => return Err(e).or_exit(Exit::Config),
            Err(e) => return Err(e).or_exit(Exit::Fatal),
        }
    }
    let service = Service::new(
        WorkerInfo {
            name: config.name.clone(),
            capacity: config.capacity,
            price_coefficient_milli: config.price_coefficient_milli,
        },
        served,
        clock.clone(),
    )
    .context("service")
    .or_exit(Exit::Config)?;

    if !config.policy.pins_config() {
        tracing::info!("proxies are pinned by image; their runtime configuration is not pinned");
    }
    let verifier =
        Arc::new(PeerVerifier::new(config.policy.clone(), clock.clone()).with_roles([Role::Proxy]));
    let tls = Arc::new(
        dial::tls_config(certs.resolver(), verifier.clone())
            .context("tls config")
            .or_exit(Exit::Fatal)?,
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = tokio::spawn(announce_ready(service.clone()));
    let renewal = tokio::spawn(certs.clone().run_renewal(shutdown_rx.clone()));
    let mut links = Vec::new();
    for proxy in &config.proxies {
        let mut link = Link::new(*proxy, tls.clone(), verifier.clone(), service.clone());
        link.drain = SHUTDOWN_DRAIN;
        link.renewed = Some(certs.subscribe());
        links.push(tokio::spawn(dial::run(link, shutdown_rx.clone())));
    }
    tracing::info!(
        worker = %config.name,
        proxies = ?config.proxies,
        models = ?service.adverts().iter().map(|a| &a.name).collect::<Vec<_>>(),
        "worker started"
    );

    wait_for_signal().await.or_exit(Exit::Fatal)?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    ready.abort();
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN + Duration::from_secs(5), async {
        for l in links {
            let _ = l.await;
        }
        let _ = renewal.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections did not drain in time");
    }
    Ok(())
}

/// Prints the readiness line after the first registration.
async fn announce_ready(service: Service) {
    let mut events = service.subscribe();
    let Ok(first) = events.recv().await else {
        return;
    };
    let models: Vec<&str> = service.adverts().iter().map(|a| a.name.as_str()).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} (proxy {}, models [{}])",
        protocol::guest::WORKER_READY,
        first.proxy,
        models.join(", ")
    );
    let _ = out.flush();
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
