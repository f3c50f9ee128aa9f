//! `cocoon-host launch --local`: the whole network as local processes on the simulated TEE.
//!
//! Order: locate the role binaries (next to `cocoon-host`), derive each TD role's registers from
//! its binary ([`crate::registers`]), fetch or check the model ([`crate::model`]), generate a
//! fresh simulated platform, write the layout ([`crate::local`]), then start `cocoon-proxy`,
//! `cocoon-worker` and `cocoon-client` one after the other, each only once the previous one
//! printed its readiness line. Then print the endpoints, write `urls.json`, and wait: SIGINT or
//! SIGTERM stops every child (exit 0); a child that dies stops the others (exit 1).
//! `--print-config` prints the files and writes nothing; `--write-config` writes them and
//! starts nothing.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use attestation::sim::SimPlatform;

use crate::local::{self, ModelPlan, Plan, Urls};
use crate::model;
use crate::registers::{binary_digest, RoleMeasurement};
use crate::supervise::{self, Running, Spec};
use crate::Exit;
use protocol::Role;

/// Which engine the worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// In-process GGUF inference (the real model).
    Mistralrs,
    /// A stub that streams fixed tokens (no model download).
    Stub,
}

/// Options of `launch --local`.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub dir: PathBuf,
    pub model: Option<PathBuf>,
    pub engine: EngineChoice,
    pub port: u16,
    pub print_config: bool,
    /// Write the files into `dir` and exit (nothing started).
    pub write_config: bool,
    pub bin_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub ready_timeout: Duration,
    pub verbose: bool,
    pub python: String,
    /// The local worker's capacity (requests at once).
    pub worker_capacity: u32,
    /// Run with money ([`crate::money`]).
    pub payments: bool,
    /// Simulated GPUs in the worker (0: none, and no GPU evidence required).
    pub sim_gpus: u32,
}

/// A launch failure and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

fn fail(exit: Exit, message: impl Into<String>) -> Failure {
    Failure {
        exit,
        message: message.into(),
    }
}

/// Name of the stub model.
pub const STUB_MODEL: &str = "cocoon-stub";
/// Time children get to stop after SIGTERM before SIGKILL (the worker drains for up to 30 s).
const STOP_GRACE: Duration = Duration::from_secs(40);

/// `$XDG_CACHE_HOME/cocoon` or `~/.cache/cocoon`, else a directory under the temp dir.
pub fn cache_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("cocoon");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".cache").join("cocoon"),
        None => std::env::temp_dir().join("cocoon"),
    }
}

/// The directory holding `cocoon-host` (where the other binaries are expected).
pub fn own_bin_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// A free loopback port (bound and released; another process could take it in between).
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn binary(bin_dir: &Path, name: &str) -> Result<PathBuf, Failure> {
    let p = bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(fail(
            Exit::Usage,
            format!(
                "{} not found (expected next to cocoon-host); build it: cargo build --release -p {name}",
                p.display()
            ),
        ))
    }
}

fn measure(role: Role, path: &Path) -> Result<RoleMeasurement, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| fail(Exit::Usage, format!("{}: {e}", path.display())))?;
    Ok(RoleMeasurement::new(role, binary_digest(&bytes)))
}

struct Binaries {
    proxy: PathBuf,
    worker: PathBuf,
    client: PathBuf,
}

fn model_plan(opts: &LocalOptions) -> Result<(ModelPlan, Option<model::ModelFile>), Failure> {
    match (opts.engine, &opts.model) {
        (EngineChoice::Stub, _) => Ok((
            ModelPlan::Stub {
                name: STUB_MODEL.into(),
            },
            None,
        )),
        (EngineChoice::Mistralrs, Some(path)) => {
            let m = model::given(path).map_err(|e| fail(Exit::Usage, e.to_string()))?;
            let plan = ModelPlan::Gguf {
                name: model::name_for(&m.path),
                path: m.path.clone(),
                sha256: m.sha256.clone(),
            };
            Ok((plan, Some(m)))
        }
        (EngineChoice::Mistralrs, None) if opts.print_config || opts.write_config => Ok((
            ModelPlan::Gguf {
                name: model::MODEL_NAME.into(),
                path: opts.cache_dir.join("models").join(model::GGUF_FILE),
                sha256: model::GGUF_SHA256.into(),
            },
            None,
        )),
        (EngineChoice::Mistralrs, None) => {
            let m = model::ensure_default(&opts.cache_dir.join("models"), &opts.python)
                .map_err(|e| fail(Exit::ModelFetch, format!("model fetch failed: {e}")))?;
            let plan = ModelPlan::Gguf {
                name: model::MODEL_NAME.into(),
                path: m.path.clone(),
                sha256: m.sha256.clone(),
            };
            Ok((plan, Some(m)))
        }
    }
}

/// `count` simulated GPUs under a fresh simulated NVIDIA root (none for 0).
fn sim_gpus(
    count: u32,
    ocsp_listen: Option<SocketAddr>,
) -> Result<Option<local::SimGpuPlan>, Failure> {
    if count == 0 {
        return Ok(None);
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| fail(Exit::Usage, format!("simulated gpu seed: {e}")))?;
    Ok(Some(local::SimGpuPlan {
        seed,
        count,
        ocsp_listen,
    }))
}

/// Serves the simulated OCSP responder of `gpu` (if it has one) on a task of the launcher's
/// runtime, for as long as the launcher runs.
async fn start_sim_ocsp(gpu: &local::SimGpuPlan) -> Result<(), Failure> {
    let Some(addr) = gpu.ocsp_listen else {
        return Ok(());
    };
    let root = measurements::gpu::sim::SimNvidiaRoot::from_seed(gpu.seed)
        .map_err(|e| fail(Exit::Usage, format!("simulated gpu root: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        fail(
            Exit::Usage,
            format!("simulated gpu ocsp responder on {addr}: {e}"),
        )
    })?;
    let responder = std::sync::Arc::new(ratls::gpu_ocsp::SimOcspResponder::new(
        root,
        std::sync::Arc::new(ratls::clock::SystemClock),
    ));
    tokio::spawn(responder.serve(listener));
    println!("cocoon-host: simulated gpu ocsp responder at http://{addr}/ocsp");
    Ok(())
}

fn plan(opts: &LocalOptions, bins: &Binaries, model: ModelPlan) -> Result<Plan, Failure> {
    let port = |what: &str| {
        free_port().map_err(|e| fail(Exit::Usage, format!("no free port for {what}: {e}")))
    };
    let client_listen = SocketAddr::from(([127, 0, 0, 1], opts.port));
    if !opts.print_config && !opts.write_config && opts.port != 0 {
        TcpListener::bind(client_listen).map_err(|e| {
            fail(
                Exit::Usage,
                format!("{client_listen} is not free ({e}); choose another with --port"),
            )
        })?;
    }
    let proxy_worker_listen = port("the proxy's worker port")?;
    let mut proxy_client_listen = port("the proxy's client port")?;
    let mut proxy_admin_listen = port("the proxy's admin port")?;
    // Ports are released before use; make sure the three differ.
    while proxy_client_listen == proxy_worker_listen {
        proxy_client_listen = port("the proxy's client port")?;
    }
    while proxy_admin_listen == proxy_worker_listen || proxy_admin_listen == proxy_client_listen {
        proxy_admin_listen = port("the proxy's admin port")?;
    }
    // The launcher answers OCSP for the simulated GPUs only while it runs the network.
    let ocsp_listen = if opts.sim_gpus > 0 && !opts.print_config && !opts.write_config {
        let mut p = port("the simulated gpu ocsp responder")?;
        while [proxy_worker_listen, proxy_client_listen, proxy_admin_listen].contains(&p) {
            p = port("the simulated gpu ocsp responder")?;
        }
        Some(p)
    } else {
        None
    };
    Ok(Plan {
        proxy_worker_listen,
        proxy_client_listen,
        proxy_admin_listen,
        client_listen,
        proxy: measure(Role::Proxy, &bins.proxy)?,
        worker: measure(Role::Worker, &bins.worker)?,
        model,
        max_completion_tokens: local::LOCAL_MAX_COMPLETION_TOKENS,
        worker_capacity: opts.worker_capacity,
        payments: None,
        gpu: sim_gpus(opts.sim_gpus, ocsp_listen)?,
    })
}

fn print_config(plan: &Plan) -> Result<(), Failure> {
    let files = local::render(plan).map_err(|e| fail(Exit::Usage, e.to_string()))?;
    println!("# proxy image  {}", plan.proxy.image_hash);
    println!("# worker image {}", plan.worker.image_hash);
    for f in files {
        println!("\n# ==> {} <==\n{}", f.name, f.text.trim_end());
    }
    Ok(())
}

fn spec(opts: &LocalOptions, role: &'static str, program: &Path, config: &str) -> Spec {
    Spec {
        role,
        program: program.to_path_buf(),
        args: [
            (role == "client").then(|| OsString::from("serve")),
            Some(OsString::from("--config")),
            Some(opts.dir.join(config).into_os_string()),
        ]
        .into_iter()
        .flatten()
        .collect(),
        cwd: opts.dir.clone(),
        log: opts.dir.join(local::LOG_DIR).join(format!("{role}.log")),
        ready_prefix: match role {
            "proxy" => protocol::guest::PROXY_READY,
            "worker" => protocol::guest::WORKER_READY,
            _ => protocol::guest::CLIENT_READY,
        },
        ready_timeout: opts.ready_timeout,
        echo: opts.verbose,
    }
}

/// Runs `cocoon-client account` to learn (and create) the account id.
fn account_id(opts: &LocalOptions, client: &Path) -> Result<String, Failure> {
    let out = std::process::Command::new(client)
        .arg("account")
        .arg("--config")
        .arg(opts.dir.join(local::CLIENT_CONFIG))
        .output()
        .map_err(|e| fail(Exit::ChildFailed, format!("{}: {e}", client.display())))?;
    if !out.status.success() {
        return Err(fail(
            Exit::ChildFailed,
            format!(
                "cocoon-client account failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Stops every child (reverse start order) and returns.
async fn stop_all(children: &mut [Running]) {
    for c in children.iter() {
        c.terminate();
    }
    for c in children.iter_mut().rev() {
        c.stop(STOP_GRACE).await;
    }
}

/// `launch --local` (see the module docs).
pub async fn run_local(opts: LocalOptions) -> Result<(), Failure> {
    let bins = Binaries {
        proxy: binary(&opts.bin_dir, "cocoon-proxy")?,
        worker: binary(&opts.bin_dir, "cocoon-worker")?,
        client: binary(&opts.bin_dir, "cocoon-client")?,
    };
    let (model_plan, model_file) = model_plan(&opts)?;
    let mut plan = plan(&opts, &bins, model_plan)?;
    if opts.payments && (opts.print_config || opts.write_config) {
        return Err(fail(
            Exit::Usage,
            "--payments runs the local chain inside the launcher: it cannot be combined with \
             --print-config or --write-config",
        ));
    }
    if opts.print_config {
        return print_config(&plan);
    }
    let money = if opts.payments {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| fail(Exit::Usage, format!("{}: {e}", opts.dir.display())))?;
        let m = crate::money::Money::start(&opts.dir)
            .await
            .map_err(|e| fail(Exit::Usage, format!("payments: {e}")))?;
        plan.payments = Some(local::PaymentsPlan {
            proxy: m.proxy_payments(),
            worker: m.worker_payout(),
            client_account: m.client_account_toml(),
        });
        println!(
            "cocoon-host: local TON chain at {} (proxy wallet {}, worker wallet {}, proxy contract {})",
            m.url, m.proxy_wallet, m.worker_wallet, m.proxy_contract
        );
        Some(m)
    } else {
        None
    };
    let platform = SimPlatform::generate()
        .map_err(|e| fail(Exit::Usage, format!("simulated platform: {e}")))?;
    // A stale urls.json would tell scripts the network is up.
    let _ = std::fs::remove_file(opts.dir.join(local::URLS_FILE));
    local::write(&opts.dir, &plan, &platform).map_err(|e| fail(Exit::Usage, e.to_string()))?;
    if opts.write_config {
        println!(
            "cocoon-host: local network files in {} (nothing started)",
            opts.dir.display()
        );
        return Ok(());
    }
    let account = account_id(&opts, &bins.client)?;
    println!(
        "cocoon-host: local network in {} (proxy image {}, worker image {})",
        opts.dir.display(),
        plan.proxy.image_hash,
        plan.worker.image_hash
    );
    if let Some(m) = &model_file {
        println!(
            "cocoon-host: model {} = {} (sha256 {})",
            plan.model.name(),
            m.path.display(),
            m.sha256
        );
    }

    if let Some(gpu) = &plan.gpu {
        start_sim_ocsp(gpu).await?;
    }

    // From here on SIGINT/SIGTERM stop the children instead of killing only the launcher.
    let mut signals = Signals::new()?;
    let mut children: Vec<Running> = Vec::new();
    let mut client_funds: Option<(String, u128)> = None;
    for (role, program, config) in [
        ("proxy", &bins.proxy, local::PROXY_CONFIG),
        ("worker", &bins.worker, local::WORKER_CONFIG),
        ("client", &bins.client, local::CLIENT_CONFIG),
    ] {
        println!("cocoon-host: starting {role}");
        let spec = spec(&opts, role, program, config);
        let started = tokio::select! {
            r = supervise::start(&spec) => r,
            name = signals.recv() => {
                // The child being started is killed when its future is dropped.
                println!("cocoon-host: {name} while starting {role}; stopping");
                stop_all(&mut children).await;
                return Ok(());
            }
        };
        match started {
            Ok(r) => {
                println!("cocoon-host: {}", r.ready_line);
                children.push(r);
            }
            Err(e) => {
                stop_all(&mut children).await;
                return Err(fail(Exit::ChildFailed, e.to_string()));
            }
        }
        if role == "proxy" {
            if let Some(m) = &money {
                let funded = tokio::select! {
                    r = fund_client(m, &account, plan.proxy_admin_listen) => r,
                    name = signals.recv() => {
                        println!("cocoon-host: {name} while funding the client; stopping");
                        stop_all(&mut children).await;
                        return Ok(());
                    }
                };
                match funded {
                    Ok((contract, before)) => {
                        println!(
                            "cocoon-host: client contract {contract} holds {} (bound to account {account})",
                            client::account::ton_str(before)
                        );
                        client_funds = Some((contract, before));
                    }
                    Err(e) => {
                        stop_all(&mut children).await;
                        return Err(fail(Exit::ChildFailed, format!("payments: {e}")));
                    }
                }
            }
        }
    }
    let client_url = children[2]
        .ready_line
        .trim_start_matches(protocol::guest::CLIENT_READY)
        .trim()
        .to_string();
    let admin = format!("http://{}", plan.proxy_admin_listen);
    let urls = Urls {
        client: client_url.clone(),
        jsonstats: format!("{admin}/jsonstats"),
        admin: admin.clone(),
        proxy_workers: plan.proxy_worker_listen.to_string(),
        proxy_clients: plan.proxy_client_listen.to_string(),
        model: plan.model.name().to_string(),
        account,
        proxy_image: plan.proxy.image_hash.to_string(),
        worker_image: plan.worker.image_hash.to_string(),
        dir: opts.dir.display().to_string(),
        pids: local::Pids {
            launcher: std::process::id(),
            proxy: children[0].pid,
            worker: children[1].pid,
            client: children[2].pid,
        },
        chain: money.as_ref().map(|m| m.url.clone()),
        client_contract: client_funds.as_ref().map(|(c, _)| c.clone()),
        payments: money.as_ref().map(|_| {
            opts.dir
                .join(crate::money::PAYMENTS_FILE)
                .display()
                .to_string()
        }),
        prices: money.as_ref().map(|m| m.prices_json()),
    };
    if let Err(e) = local::write_urls(&opts.dir, &urls) {
        stop_all(&mut children).await;
        return Err(fail(Exit::Usage, e.to_string()));
    }
    print_ready(&urls);
    let reporter = match (money, client_funds) {
        (Some(m), Some((contract, before))) => Some(tokio::spawn(report(
            m,
            contract,
            before,
            plan.proxy_admin_listen,
            opts.dir.clone(),
        ))),
        _ => None,
    };
    let result = monitor(children, signals).await;
    if let Some(r) = reporter {
        r.abort();
    }
    result
}

/// Waits for the proxy's contract, funds the client contract bound to `account` and waits
/// until the proxy has seen it; returns the contract and its balance.
async fn fund_client(
    m: &crate::money::Money,
    account: &str,
    admin: SocketAddr,
) -> Result<(String, u128), String> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(account, &mut key).map_err(|e| format!("account id {account:?}: {e}"))?;
    m.wait_proxy_contract(Duration::from_secs(60)).await?;
    let contract = m.fund_client(&key).await?.to_string();
    let before = m.client_balance().await?;
    let started = std::time::Instant::now();
    loop {
        if let Ok(j) = crate::money::get_json(admin, "/jsonstats").await {
            if j["payments"]["clients"][&contract]["chain_balance_nano"]
                .as_u64()
                .is_some()
            {
                return Ok((contract, before));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the proxy did not see client contract {contract} within 60 s (see logs/proxy.log)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `payments.json` (and prints the figures) each time the proxy reports everything
/// billed to the local client as charged and paid out, with new usage since the last time.
async fn report(
    m: crate::money::Money,
    contract: String,
    before: u128,
    admin: SocketAddr,
    dir: PathBuf,
) {
    let mut last = (0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(j) = crate::money::get_json(admin, "/jsonstats").await else {
            continue;
        };
        let (requests, billed, settled) = crate::money::proxy_view(&j, &contract);
        if !settled || (requests, billed) == last {
            continue;
        }
        let f = match m.figures(before, requests).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("cocoon-host: payments: {e}");
                continue;
            }
        };
        // The chain must show what the proxy says it settled.
        if f.charged_tokens != billed || f.paid_tokens != billed {
            continue;
        }
        last = (requests, billed);
        if let Err(e) = crate::money::write_figures(&dir, &f) {
            eprintln!("cocoon-host: payments: {e}");
            continue;
        }
        let ton = |n: u128| client::account::ton_str(n);
        println!(
            "cocoon-host: payments settled on chain after {requests} request(s), {billed} tokens:\n  \
             client contract {} → {} (charged {})\n  worker owner earned {}; proxy contract kept {}",
            ton(f.client_balance_before_nano),
            ton(f.client_balance_after_nano),
            ton(f.charged_nano),
            ton(f.worker_earned_nano),
            ton(f.proxy_kept_nano),
        );
    }
}

fn print_ready(urls: &Urls) {
    println!("{}", protocol::guest::HOST_READY);
    println!("  OpenAI API    {}   (model {})", urls.client, urls.model);
    println!("  proxy admin   {}", urls.jsonstats);
    println!("  files, logs   {} (urls.json, logs/)", urls.dir);
    println!("try it:");
    println!(
        "  curl -s {}/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hello\"}}],\"max_tokens\":32}}'",
        urls.client, urls.model
    );
    println!("Ctrl-C stops the network.");
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let sig = |k| signal(k).map_err(|e| fail(Exit::ChildFailed, format!("signals: {e}")));
        Ok(Self {
            int: sig(SignalKind::interrupt())?,
            term: sig(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Waits for a signal (stop everything, exit 0) or a child's death (stop the rest, exit 1).
async fn monitor(mut children: Vec<Running>, mut signals: Signals) -> Result<(), Failure> {
    let (first, rest) = children.split_at_mut(1);
    let (second, third) = rest.split_at_mut(1);
    let (p, w, c) = (&mut first[0], &mut second[0], &mut third[0]);
    let died = tokio::select! {
        _ = signals.recv() => None,
        s = p.wait() => Some((p.role, s)),
        s = w.wait() => Some((w.role, s)),
        s = c.wait() => Some((c.role, s)),
    };
    match died {
        None => {
            println!("cocoon-host: stopping");
            stop_all(&mut children).await;
            println!("cocoon-host: stopped");
            Ok(())
        }
        Some((role, status)) => {
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            let idx = children.iter().position(|c| c.role == role).unwrap_or(0);
            let tail = children[idx].tail_lines().await;
            let log = children[idx].log.clone();
            stop_all(&mut children).await;
            Err(fail(
                Exit::ChildFailed,
                format!(
                    "{role} exited ({status}){}",
                    supervise::tail_text(&tail, &log)
                ),
            ))
        }
    }
}
