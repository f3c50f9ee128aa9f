//! `cocoon-worker --config worker.toml`: serves LLM inference inside a TDX guest to attested
//! proxies (see the library docs of `cocoon-worker` for the design).
//!
//! Steps: load and validate the config; bind the status port if configured (`/healthz`
//! answers from here on, `/readyz` once the models are loaded and a proxy registration is
//! open: `worker::status`); open the TEE; load the models; issue the RA-TLS
//! certificate; dial every proxy (one reconnecting loop each) and serve them; renew the
//! certificate before expiry; on SIGTERM or SIGINT send GOAWAY, let streams drain for up to
//! `shutdown_drain_secs` (default 30), end the rest with a `service_unavailable` error event
//! ([`worker::RunningWorker::shutdown`]), exit.
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
//! | 4 | `[gpu]`: no GPU evidence (driver library missing, CC mode off, devtools mode on, or the evidence failed the worker's own check) |

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ratls::{Clock, Identity, SystemClock};
use tokio::sync::watch;
use worker::config::{BuildError, WorkerConfig};
use worker::dial;
use worker::run::build_models;
use worker::status::Status;
use worker::{StartError, Worker};

/// Serves LLM inference inside a TDX guest to attested cocoon proxies.
///
/// Exit codes: 0 clean shutdown, 1 fatal error, 2 bad usage or config, 3 TEE unavailable,
/// 4 GPU evidence unavailable or rejected.
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
    /// `[gpu]`: no GPU evidence, or evidence that failed the worker's own check.
    Gpu = 4,
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

/// The payout state and wallet from `[payout]`.
fn payouts(spec: &worker::config::PayoutSpec) -> anyhow::Result<Arc<worker::payout::Payouts>> {
    let api_key = tonsim::chain_config::ApiKey::from_env(spec.chain_api_key_env.as_deref())
        .map_err(anyhow::Error::msg)?;
    let chain = tonsim::HttpChain::new(&spec.chain_url, api_key)?;
    let seed = ratls::key_file::read_seed(&spec.wallet_key)?;
    Ok(worker::payout::Payouts::new(worker::payout::PayoutSetup {
        chain: Arc::new(chain),
        owner: spec.owner,
        wallet_key: ed25519_dalek::SigningKey::from_bytes(&seed),
        wallet_owner: spec.wallet_owner,
        state_file: spec.state_file.clone(),
        voucher_value_nano: spec.voucher_value_nano,
        wallet_timeout: spec.wallet_timeout,
        poll: std::time::Duration::from_millis(500),
    })?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    ratls::logging::init_tracing("info");
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

async fn run(args: Args) -> Result<(), Fatal> {
    let config = WorkerConfig::load(&args.config)
        .context("configuration")
        .or_exit(Exit::Config)?;
    let status = Status::new();
    let (stop_status, status_stopped) = watch::channel(false);
    if let Some(addr) = config.status_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("status_listen: cannot listen on {addr}"))
            .or_exit(Exit::Fatal)?;
        tracing::info!(%addr, "status port: /healthz, /readyz");
        tokio::spawn(worker::status::serve(
            listener,
            status.clone(),
            status_stopped,
        ));
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tee = config
        .tee
        .open_for_config(&config.base_dir, config.config_sha256)
        .context("tee")
        .or_exit(Exit::Tee)?;
    ratls::pccs::attach(&config.tee, &mut tee, &config.base_dir, clock.clone())
        .context("tee.pccs")
        .or_exit(Exit::Config)?;
    if let Some(spec) = &config.gpu {
        let source = worker::gpu::open_source(spec, clock.clone())
            .context("gpu")
            .or_exit(Exit::Gpu)?;
        tracing::info!(
            kind = source.kind(),
            "gpu evidence goes into every certificate"
        );
        tee.gpu = Some(source);
    }
    let lifetime = config.cert_lifetime;
    // End-to-end keys: generated here, held only in memory, published in the claims and
    // rotated with each certificate renewal.
    let e2e = worker::e2e::E2eKeys::generate();
    let claims = e2e.claims(dial::worker_claims());
    let e2e = Arc::new(e2e);
    let identity = tokio::task::spawn_blocking({
        let clock = clock.clone();
        let rotation: Arc<dyn ratls::ClaimsRotation> = e2e.clone();
        move || Identity::issue(tee, claims, lifetime, clock).map(|i| i.with_rotation(rotation))
    })
    .await
    .or_exit(Exit::Fatal)?
    .map_err(|e| {
        let code = match e {
            ratls::RatlsError::Tee(_) => Exit::Tee,
            ratls::RatlsError::Gpu(_) => Exit::Gpu,
            _ => Exit::Fatal,
        };
        Fatal {
            code,
            error: anyhow::Error::new(e).context("issuing the ra-tls certificate"),
        }
    })?;

    // The claims as the certificate carries them (the issuer may add the GPU evidence hash).
    e2e.published_in(&identity.claims());

    let models = build_models(&config).await.map_err(|e| {
        let code = match e {
            BuildError::NotBuilt { .. } => Exit::Config,
            BuildError::Engine { .. } => Exit::Fatal,
        };
        Fatal {
            code,
            error: e.into(),
        }
    })?;
    let drain = config.shutdown_drain;
    // Installed before anything is printed or dialed: an early SIGTERM drains, not kills.
    let signals = Signals::install();
    let mut worker = Worker::from_config(&config, models, Arc::new(identity), clock);
    worker.e2e = Some(e2e);
    if let Some(spec) = &config.payout {
        worker.payouts = Some(payouts(spec).context("payout").or_exit(Exit::Config)?);
    }
    // Longer than the stream drain, so that the error events ending streams get out.
    worker.links.drain = drain + worker::run::STREAM_END_FLUSH;
    let running = worker.start().map_err(|e| {
        let code = match e {
            StartError::Service(_) => Exit::Config,
            StartError::Tls(_) => Exit::Fatal,
        };
        Fatal {
            code,
            error: e.into(),
        }
    })?;
    status.serving(running.service());
    let ready = tokio::spawn({
        let line = running.readiness_line();
        async move {
            if let Some(line) = line.await {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    });

    signals.wait().await.or_exit(Exit::Fatal)?;
    tracing::info!("shutting down");
    ready.abort();
    let _ = stop_status.send(true);
    if !running.shutdown(drain).await {
        tracing::warn!("connections did not drain in time");
    }
    Ok(())
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

    /// Resolves at the first signal.
    async fn wait(self) -> std::io::Result<()> {
        let (mut term, mut int) = self.0?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
}
