//! The local network's files: what `launch --local` writes into its directory.
//!
//! ```text
//! DIR/
//!   sim-platform.json       simulated TDX platform (SimPlatformSeed JSON), fresh each launch
//!   sim-root.der            its root CA: the only root the generated policies trust
//!   sim-nvidia-root.der     the simulated NVIDIA root the worker's simulated GPUs chain to
//!   sim-gpu-refs.json       their reference values (cocoon-gpu-refs/v1); proxy and client
//!                           require GPU evidence under that root with these values
//!   proxy-registers.json    TdRegisters of the proxy "TD"  (derived from cocoon-proxy)
//!   worker-registers.json   TdRegisters of the worker "TD" (derived from cocoon-worker)
//!   worker.toml             pins the proxy image hash
//!   proxy.toml              pins the worker image hash, the worker's RTMR3 (worker.toml) and its model
//!   client.toml             pins the proxy image hash and the proxy's RTMR3 (proxy.toml)
//!   client.key              account key (created by cocoon-client, mode 0600, kept across launches)
//!   urls.json               endpoints, image hashes, model, account, pids (written once ready)
//!   with --payments (crate::money):
//!   keys/, keys.pass        the proxy's development key store (Kp, wallet key) and passphrase
//!   ledger.redb             the proxy's durable ledger (new each launch, like the chain)
//!   worker-wallet.key       the worker's wallet key; payout-state.json its highest vouchers
//!   payments.json           the money, read from the chain, once everything billed is settled
//!   logs/{proxy,worker,client}.log
//! ```
//! Rendering is pure ([`render()`]); [`write()`] puts the files on disk. Every config is built
//! as the service's own config file type by [`crate::render`] ([`Mode::Local`]) and serialized
//! with `toml::to_string`: no key is spelled here.
//!
//! Every process measures its own config file into RTMR3 (`TeeConfig::open_for_config`), so the
//! launcher, which writes those files, knows every RTMR3 it boots and pins them: the client pins
//! the proxy's configuration and the proxy pins the worker's configuration and model, as a
//! production policy must. The worker pins the proxy by image only: pinning both ways would be a
//! hash cycle (docs/threat-model.md, "Runtime configuration"). The files are rendered in that
//! order: worker, then proxy (which pins the worker), then client (which pins the proxy).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use attestation::sim::SimPlatform;
use serde::Serialize;
use sha2::Digest;
use worker::config::ModelFile;

use crate::render::{self, ClientSpec, Mode, Pins, ProxySpec, WorkerSpec};

use crate::registers::RoleMeasurement;

pub const PLATFORM_FILE: &str = "sim-platform.json";
pub const ROOT_FILE: &str = "sim-root.der";
pub const GPU_ROOT_FILE: &str = "sim-nvidia-root.der";
pub const GPU_REFS_FILE: &str = "sim-gpu-refs.json";
pub const PROXY_REGISTERS_FILE: &str = "proxy-registers.json";
pub const WORKER_REGISTERS_FILE: &str = "worker-registers.json";
pub const PROXY_CONFIG: &str = "proxy.toml";
pub const WORKER_CONFIG: &str = "worker.toml";
pub const CLIENT_CONFIG: &str = "client.toml";
pub const CLIENT_KEY: &str = "client.key";
pub const URLS_FILE: &str = "urls.json";
pub const LOG_DIR: &str = "logs";

/// Balance every client account starts with on the local proxy (1000 TON).
pub const LOCAL_BALANCE_NANO: u64 = 1_000_000_000_000;
/// The local proxy's `max_prompt_tokens`: SmolLM2's whole context. A long prompt is processed
/// in chunks that other requests interleave with (chunked prefill), so it no longer stalls
/// the worker; the engine refuses what does not fit with `context_length_exceeded`.
pub const LOCAL_MAX_PROMPT_TOKENS: u32 = 8192;
/// The local worker's `max_completion_tokens`: SmolLM2's whole context, so that a request
/// without `max_tokens` may generate up to the context left, as OpenAI does (the engine
/// stops at the end of the context with `finish_reason: "length"`).
pub const LOCAL_MAX_COMPLETION_TOKENS: u32 = 8192;
/// Tokens the local stub engine streams per completion.
pub const LOCAL_STUB_TOKENS: u32 = 32;
/// The local stub engine's speed.
pub const LOCAL_STUB_TOKENS_PER_SECOND: f64 = 200.0;

/// The model the worker serves.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelPlan {
    /// In-process GGUF inference; `sha256` (hex) is the digest of the file, which the worker
    /// registers and the proxy pins.
    Gguf {
        name: String,
        path: PathBuf,
        sha256: String,
    },
    /// The stub engine (no model file).
    Stub { name: String },
}

impl ModelPlan {
    pub fn name(&self) -> &str {
        match self {
            Self::Gguf { name, .. } | Self::Stub { name } => name,
        }
    }

    /// The digest the worker registers for the model (the stub engine registers zeros).
    pub fn sha256(&self) -> String {
        match self {
            Self::Gguf { sha256, .. } => sha256.clone(),
            Self::Stub { .. } => "00".repeat(32),
        }
    }
}

/// The RTMR3 a process on the simulated platform measures for a config file with this text:
/// the replay of a runtime log with one `config` event (`TeeConfig::open_for_config`).
pub fn config_rtmr3(text: &str) -> String {
    let sha: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
    hex::encode(measurements::runtime_log::RuntimeLog::for_config(sha).replay())
}

/// Everything the configs depend on.
#[derive(Clone, Debug)]
pub struct Plan {
    pub proxy_worker_listen: SocketAddr,
    pub proxy_client_listen: SocketAddr,
    pub proxy_admin_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub proxy: RoleMeasurement,
    pub worker: RoleMeasurement,
    pub model: ModelPlan,
    pub max_completion_tokens: u32,
    pub worker_capacity: u32,
    /// With `--payments`: the proxy's `[payments]` and the worker's `[payout]`
    /// ([`crate::money`]).
    pub payments: Option<PaymentsPlan>,
    /// Simulated GPUs in the worker (`--sim-gpus`, default 1); `None`: no GPU evidence.
    pub gpu: Option<SimGpuPlan>,
}

/// The worker's simulated GPUs: their evidence goes into its certificates, and the proxy
/// and the client require it (the whole GPU attestation path, without a GPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGpuPlan {
    /// Seed of the simulated NVIDIA root and device keys (fresh each launch).
    pub seed: [u8; 32],
    pub count: u32,
    /// Where the launcher serves the simulated OCSP responder
    /// (`ratls::gpu_ocsp::SimOcspResponder`) while the network runs: the worker fetches its
    /// chains' answers there and the proxy and the client require them. `None` when the
    /// launcher only writes or prints configs (it would not be there to answer).
    pub ocsp_listen: Option<SocketAddr>,
}

impl SimGpuPlan {
    /// The worker's `[gpu]`.
    pub fn worker_file(&self) -> worker::config::GpuFile {
        let mut file = worker::config::GpuFile::sim(self.seed, self.count);
        if let worker::config::GpuFile::Sim { ocsp_url, .. } = &mut file {
            *ocsp_url = self.ocsp_url();
        }
        file
    }

    /// The responder's URL, if the launcher runs one.
    pub fn ocsp_url(&self) -> Option<String> {
        self.ocsp_listen.map(|a| format!("http://{a}/ocsp"))
    }

    /// `[policy.gpu]` of the worker's verifiers: the simulated root, the reference values,
    /// exactly `count` GPUs, and OCSP answers when the launcher runs the responder.
    pub fn policy(&self) -> ratls::config::GpuPolicyConfig {
        ratls::config::GpuPolicyConfig {
            roots: vec![GPU_ROOT_FILE.into()],
            refs: Some(GPU_REFS_FILE.into()),
            min_driver: None,
            count: Some(self.count as usize),
            require_ocsp: self.ocsp_listen.is_some(),
            ocsp_max_age_secs: None,
        }
    }

    /// The simulated NVIDIA root (DER) and the reference values (JSON) of these GPUs.
    pub fn files(&self) -> Result<(Vec<u8>, String), String> {
        let root = measurements::gpu::sim::SimNvidiaRoot::from_seed(self.seed)
            .map_err(|e| e.to_string())?;
        let der = root.root_der().map_err(|e| e.to_string())?;
        let spec = self
            .worker_file()
            .into_spec(Path::new("."), false)
            .map_err(|e| e.to_string())?;
        let worker::config::GpuSpec::Sim { gpus, .. } = spec else {
            return Err("not a simulated gpu section".into());
        };
        let refs = gpus
            .first()
            .map(|g| g.reference_values())
            .ok_or("no gpus")?;
        let json = serde_json::to_string_pretty(&refs).map_err(|e| e.to_string())?;
        Ok((der, json))
    }
}

/// The money sections of a local network with payments on.
#[derive(Clone, Debug)]
pub struct PaymentsPlan {
    pub proxy: proxy::payments::PaymentsConfig,
    pub worker: worker::config::PayoutFile,
    /// The client's `account.toml` ([`crate::money::CLIENT_ACCOUNT_FILE`]): the client
    /// checks its charges while serving (`[account]` in its config).
    pub client_account: String,
}

/// How often the local client checks what its contract was charged.
pub const CLIENT_CHARGE_CHECK_SECS: u64 = 5;

/// One generated text file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub name: &'static str,
    pub text: String,
}

/// A file that could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("registers json: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Config(#[from] render::RenderError),
}

/// The proxy's config; `worker_rtmr3` is [`config_rtmr3`] of the worker's config.
pub fn proxy_config(plan: &Plan, worker_rtmr3: &str) -> proxy::config::ConfigFile {
    let mut file = render::proxy(
        Mode::Local,
        &ProxySpec {
            name: "local-proxy".into(),
            worker_listen: plan.proxy_worker_listen,
            client_listen: plan.proxy_client_listen,
            admin_listen: plan.proxy_admin_listen,
            max_prompt_tokens: LOCAL_MAX_PROMPT_TOKENS,
            // With payments, accounts are funded by their client contracts only.
            default_balance_nano: plan.payments.is_none().then_some(LOCAL_BALANCE_NANO),
            workers: Pins {
                images: vec![plan.worker.image_hash.to_string()],
                rtmr3: vec![worker_rtmr3.into()],
                models: [(plan.model.name().to_string(), plan.model.sha256())].into(),
                ..Pins::default()
            },
        },
    );
    if let Some(gpu) = &plan.gpu {
        file.policy.gpu = Some(gpu.policy());
    }
    if let Some(p) = &plan.payments {
        file.ledger = Some(proxy::config::LedgerFile {
            path: crate::money::LEDGER_FILE.into(),
        });
        file.keys = Some(proxy::config::KeysFile {
            dir: crate::money::KEYS_DIR.into(),
            passphrase_file: crate::money::PASSPHRASE_FILE.into(),
        });
        file.payments = Some(p.proxy.clone());
    }
    file
}

/// The worker's config (pins the proxy image only: see the module docs).
pub fn worker_config(plan: &Plan) -> worker::config::WorkerConfigFile {
    let model = match &plan.model {
        ModelPlan::Gguf { name, path, .. } => ModelFile::Mistralrs {
            name: name.clone(),
            gguf: path.clone(),
            max_completion_tokens: Some(plan.max_completion_tokens),
            max_context: None,
        },
        ModelPlan::Stub { name } => ModelFile::Stub {
            name: name.clone(),
            max_completion_tokens: Some(plan.max_completion_tokens),
            max_context: None,
            tokens: Some(LOCAL_STUB_TOKENS),
            tokens_per_second: Some(LOCAL_STUB_TOKENS_PER_SECOND),
        },
    };
    let mut file = render::worker(
        Mode::Local,
        &WorkerSpec {
            name: "local-worker".into(),
            proxies: vec![plan.proxy_worker_listen.to_string()],
            capacity: plan.worker_capacity,
            model,
            proxy: Pins {
                images: vec![plan.proxy.image_hash.to_string()],
                ..Pins::default()
            },
        },
    );
    file.payout = plan.payments.as_ref().map(|p| p.worker.clone());
    file.gpu = plan.gpu.as_ref().map(SimGpuPlan::worker_file);
    file
}

/// The client's config; `proxy_rtmr3` and `worker_rtmr3` are [`config_rtmr3`] of the proxy's
/// and the worker's configs. Requests are sealed end to end to the worker.
/// The client's receipt log in the local network's directory.
pub const CLIENT_RECEIPTS: &str = "receipts.jsonl";

pub fn client_config(
    plan: &Plan,
    proxy_rtmr3: &str,
    worker_rtmr3: &str,
) -> client::config::ClientConfigFile {
    let mut file = render::client(
        Mode::Local,
        &ClientSpec {
            listen: plan.client_listen,
            proxy: plan.proxy_client_listen.to_string(),
            account_key_file: CLIENT_KEY.into(),
            pins: Pins {
                images: vec![plan.proxy.image_hash.to_string()],
                rtmr3: vec![proxy_rtmr3.into()],
                ..Pins::default()
            },
            workers: Some(Pins {
                images: vec![plan.worker.image_hash.to_string()],
                rtmr3: vec![worker_rtmr3.into()],
                models: [(plan.model.name().to_string(), plan.model.sha256())].into(),
                ..Pins::default()
            }),
        },
    );
    if let (Some(gpu), Some(w)) = (&plan.gpu, file.worker_policy.as_mut()) {
        w.gpu = Some(gpu.policy());
    }
    // The client's own record of what it was served and what that costs (client::receipts).
    file.receipts_file = Some(CLIENT_RECEIPTS.into());
    // With payments: the client checks the chain's charges against those receipts (and sends
    // its own charge past half its stake).
    file.account = plan.payments.as_ref().map(|_| client::config::AccountLink {
        settings: crate::money::CLIENT_ACCOUNT_FILE.into(),
        check_secs: CLIENT_CHARGE_CHECK_SECS,
    });
    file
}

/// The proxy's config text ([`proxy_config`]).
pub fn proxy_toml(plan: &Plan, worker_rtmr3: &str) -> Result<String, render::RenderError> {
    render::to_text(&proxy_config(plan, worker_rtmr3))
}

/// The worker's config text ([`worker_config`]).
pub fn worker_toml(plan: &Plan) -> Result<String, render::RenderError> {
    render::to_text(&worker_config(plan))
}

/// The client's config text ([`client_config`]).
pub fn client_toml(
    plan: &Plan,
    proxy_rtmr3: &str,
    worker_rtmr3: &str,
) -> Result<String, render::RenderError> {
    render::to_text(&client_config(plan, proxy_rtmr3, worker_rtmr3))
}

fn registers_json(m: &RoleMeasurement) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&m.registers)
}

/// The text files of a plan (configs and registers).
pub fn render(plan: &Plan) -> Result<Vec<Rendered>, RenderError> {
    let worker = worker_toml(plan)?;
    let proxy = proxy_toml(plan, &config_rtmr3(&worker))?;
    let client = client_toml(plan, &config_rtmr3(&proxy), &config_rtmr3(&worker))?;
    Ok(vec![
        Rendered {
            name: PROXY_REGISTERS_FILE,
            text: registers_json(&plan.proxy)?,
        },
        Rendered {
            name: WORKER_REGISTERS_FILE,
            text: registers_json(&plan.worker)?,
        },
        Rendered {
            name: PROXY_CONFIG,
            text: proxy,
        },
        Rendered {
            name: WORKER_CONFIG,
            text: worker,
        },
        Rendered {
            name: CLIENT_CONFIG,
            text: client,
        },
    ])
}

/// Errors writing the layout (each names the path).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("simulated platform: {0}")]
    Platform(String),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("urls json: {0}")]
    Json(#[from] serde_json::Error),
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    std::fs::write(path, bytes).map_err(|source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the platform, its root, the registers and the configs into `dir` (created if
/// missing), and creates `dir/logs`.
pub fn write(dir: &Path, plan: &Plan, platform: &SimPlatform) -> Result<(), LayoutError> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| LayoutError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    mkdir(dir)?;
    mkdir(&dir.join(LOG_DIR))?;
    let seed = platform
        .export()
        .to_json()
        .map_err(|e| LayoutError::Platform(e.to_string()))?;
    write_file(&dir.join(PLATFORM_FILE), seed.as_bytes())?;
    write_file(&dir.join(ROOT_FILE), platform.root_ca_der())?;
    if let Some(gpu) = &plan.gpu {
        let (root, refs) = gpu.files().map_err(LayoutError::Platform)?;
        write_file(&dir.join(GPU_ROOT_FILE), &root)?;
        write_file(&dir.join(GPU_REFS_FILE), refs.as_bytes())?;
    }
    for f in render(plan)? {
        write_file(&dir.join(f.name), f.text.as_bytes())?;
    }
    if let Some(p) = &plan.payments {
        write_file(
            &dir.join(crate::money::CLIENT_ACCOUNT_FILE),
            p.client_account.as_bytes(),
        )?;
    }
    Ok(())
}

/// `urls.json`: what scripts need once the network is up.
#[derive(Clone, Debug, Serialize)]
pub struct Urls {
    /// OpenAI base URL of the local client.
    pub client: String,
    /// The proxy admin base URL (`/stats`, `/jsonstats`, `/metrics`).
    pub admin: String,
    pub jsonstats: String,
    pub proxy_workers: String,
    pub proxy_clients: String,
    pub model: String,
    /// The client's account id (hex Ed25519 public key), the key of its `/jsonstats` record.
    pub account: String,
    pub proxy_image: String,
    pub worker_image: String,
    pub dir: String,
    pub pids: Pids,
    /// With `--payments`: the local chain's HTTP API, the client contract, and where the
    /// settled figures go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_contract: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments: Option<String>,
    /// With `--payments`: the network's prices (`price_per_token`, `worker_fee_per_token`
    /// nanoton; `multipliers` per token class, 10000 = 1.0), so a client can compute what it
    /// owes from the usage it received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Pids {
    pub launcher: u32,
    pub proxy: Option<u32>,
    pub worker: Option<u32>,
    pub client: Option<u32>,
}

/// Writes `urls.json` atomically (temp file + rename).
pub fn write_urls(dir: &Path, urls: &Urls) -> Result<(), LayoutError> {
    let tmp = dir.join(format!("{URLS_FILE}.tmp"));
    write_file(&tmp, serde_json::to_string_pretty(urls)?.as_bytes())?;
    let dst = dir.join(URLS_FILE);
    std::fs::rename(&tmp, &dst).map_err(|source| LayoutError::Io { path: dst, source })
}

#[cfg(test)]
mod tests;
