//! `cocoon-client`: a local OpenAI-compatible endpoint that verifies the proxy's attestation
//! before any prompt leaves this machine.
//!
//! Exit codes: 0 clean shutdown (SIGINT/SIGTERM) or success, 1 runtime failure (e.g. the listen
//! address is taken; for `account …`: the chain is unreachable, a transaction failed, funds are
//! insufficient, a wait timed out), 2 usage or configuration error (bad flags or
//! `account.toml`, missing setting, the key file exists on `account init`).

mod account_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use client::serve::{self, ServeOptions};
use client::Client;

/// Exit codes of `cocoon-client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Clean = 0,
    Runtime = 1,
    Config = 2,
    /// `account audit`: the chain shows more charged than the receipts justify.
    Overcharged = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// cocoon client: verifies the proxy's TDX attestation, then serves the OpenAI API locally.
#[derive(Parser, Debug)]
#[command(name = "cocoon-client", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the OpenAI API (GET /v1/models[/ID], POST /v1/chat/completions, POST /v1/completions; GET /healthz, /readyz)
    /// on the configured local address. Prints `cocoon-client: ready http://ADDR/v1` when
    /// listening.
    Serve {
        /// client.toml
        #[arg(long)]
        config: PathBuf,
    },
    /// The client's account. With `--config client.toml` and no subcommand: print the account
    /// id (hex Ed25519 public key) of the configured account key, creating the key file if it
    /// is missing. With a subcommand: the TON wallet and client contract that pay for requests
    /// (settings from flags or `--account-config account.toml`).
    #[command(args_conflicts_with_subcommands = true)]
    Account {
        /// client.toml (prints the account id)
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Box<account_cli::Flags>,
        #[command(subcommand)]
        cmd: Option<account_cli::Cmd>,
    },
}

fn load(path: &Path) -> Result<client::config::ServeConfig, client::ConfigError> {
    client::config::open(path)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ratls::logging::init_tracing("info");
    let config_path = match cli.cmd {
        Cmd::Serve { ref config } => config.clone(),
        Cmd::Account {
            config: Some(ref config),
            cmd: None,
            ..
        } => config.clone(),
        Cmd::Account {
            config: None,
            flags,
            cmd: Some(cmd),
        } => return account_cli::run(*flags, cmd).into(),
        Cmd::Account { .. } => {
            eprintln!(
                "cocoon-client account: give --config client.toml (print the account id) or a \
                 subcommand (see --help)"
            );
            return Exit::Config.into();
        }
    };
    let config = match load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cocoon-client: {}: {e}", config_path.display());
            return Exit::Config.into();
        }
    };
    if config.key_created {
        tracing::info!(path = %config.key_path.display(), "created a new account key");
    }
    match cli.cmd {
        Cmd::Account { .. } => {
            println!("{}", config.client.account_key.account_id());
            Exit::Clean.into()
        }
        Cmd::Serve { .. } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cocoon-client: tokio runtime: {e}");
                    return Exit::Runtime.into();
                }
            };
            runtime.block_on(serve_main(config)).into()
        }
    }
}

async fn serve_main(config: client::config::ServeConfig) -> Exit {
    let account = config.client.account_key.account_id();
    let receipts = config.client.receipts.clone();
    let pins_config = config.client.policy.pins_config();
    let client = match Client::new(config.client) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("cocoon-client: {e}");
            return Exit::Config;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cocoon-client: listen on {}: {e}", config.listen);
            return Exit::Runtime;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cocoon-client: listen on {}: {e}", config.listen);
            return Exit::Runtime;
        }
    };
    tracing::info!(account = %account, proxy = %client.proxy(), "cocoon-client starting");
    if !pins_config {
        tracing::warn!(
            "DEVELOPMENT ONLY: the policy pins no runtime configuration of the proxy \
             (allow_any_config = true): a genuine proxy image configured by its host in any way \
             is accepted"
        );
    }
    if !addr.ip().is_loopback() && config.access.api_key.is_none() {
        tracing::warn!(
            listen = %addr,
            "no api_key on a non-loopback address: anyone who reaches it spends this account \
             (the host allowlist stops browsers, not other machines)"
        );
    }
    // Verify the proxy now so that a bad policy shows at start; requests dial again if needed.
    match client.warm().await {
        Ok(info) => {
            tracing::info!(image = %info.image_hash, tcb = %info.tcb_status, "proxy verified")
        }
        Err(e) => tracing::warn!(error = %e, "proxy not verified yet; requests will retry"),
    }
    // The account watcher: a proxy that over-charges ends the client (exit 3).
    let (overcharged_tx, overcharged) = tokio::sync::watch::channel(None::<String>);
    if let Some((settings, every)) = config.account {
        let acct = match settings.open().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cocoon-client: [account]: {e}");
                return Exit::Config;
            }
        };
        tracing::info!(client_contract = %acct.client_address(), "checking charges every {every:?}");
        tokio::spawn(watch_charges(
            acct,
            client.clone(),
            receipts,
            every,
            overcharged_tx,
        ));
    }
    // Installed before the readiness line: an early SIGTERM drains, not kills.
    let signal = shutdown_signal();
    let mut stop = overcharged.clone();
    let shutdown = async move {
        tokio::select! {
            () = signal => {}
            _ = stop.wait_for(Option::is_some) => {}
        }
    };
    println!("{}http://{addr}/v1", protocol::guest::CLIENT_READY);
    serve::run(
        listener,
        client,
        ServeOptions {
            max_body: config.max_body,
            access: config.access,
            ..ServeOptions::default()
        },
        shutdown,
    )
    .await;
    if let Some(reason) = overcharged.borrow().clone() {
        eprintln!("cocoon-client: stopped: {reason}");
        return Exit::Overcharged;
    }
    tracing::info!("cocoon-client: shutting down");
    Exit::Clean
}

/// `serve` with `[account]`: every `every`, one [`client::account::charge::round`]; an
/// over-charge is sent on `stop` (the client then stops, naming it). Other failures (chain or
/// proxy unreachable) are logged and retried.
async fn watch_charges(
    account: client::account::Account,
    client: Arc<Client>,
    receipts: Option<Arc<client::receipts::ReceiptLog>>,
    every: std::time::Duration,
    stop: tokio::sync::watch::Sender<Option<String>>,
) {
    use client::account::charge::{round, Round};
    let prices = protocol::usage::Prices::of_params(&account.proxy().params);
    loop {
        tokio::time::sleep(every).await;
        let justified = match &receipts {
            Some(log) => match log.audit_now(&prices) {
                Ok(a) => Some(u64::try_from(a.tokens).unwrap_or(u64::MAX)),
                Err(e) => {
                    tracing::warn!(error = %e, "receipt log unreadable; charges not checked");
                    continue;
                }
            },
            None => None,
        };
        match round(&account, justified, || client.charge_voucher()).await {
            Ok(Round::Idle) => {}
            Ok(Round::Submitted { tokens }) => {
                tracing::info!(
                    tokens,
                    "sent the client's own charge (unpaid usage above half the stake)"
                )
            }
            Err(e) if e.is_overcharge() => {
                tracing::error!(error = %e, "the proxy over-charges; stopping");
                stop.send_replace(Some(e.to_string()));
                return;
            }
            Err(e) => tracing::warn!(error = %e, "charge check failed; retrying"),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves at the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
