//! The worker's TOML configuration, parsed strictly and validated into [`WorkerConfig`].
//!
//! ```toml
//! name = "worker-1"
//! proxies = ["127.0.0.1:9101"]     # proxy worker-port addresses, ip:port literals
//! capacity = 8                     # concurrent generations (1..=100000)
//! price_coefficient_milli = 1000   # default 1000 (list price)
//! cert_lifetime_secs = 21600       # RA-TLS certificate lifetime, default 6 h (300..=604800)
//! status_listen = "127.0.0.1:9104" # optional: /healthz and /readyz (plain HTTP, crate::status)
//! stream_keepalive_secs = 5        # SSE keepalive comment after this long silent, 0 = off (..=3600)
//! stream_stall_secs = 300          # end a stream whose consumer takes nothing this long, 0 = off (..=3600)
//! shutdown_drain_secs = 30         # SIGTERM: streams may finish for this long, then stop (usage so far reported) and end with an error (..=3600)
//!
//! [tee]                            # attestation::config::TeeConfig
//! kind = "sim"
//! platform_file = "sim-platform.json"
//! registers_file = "worker-registers.json"
//!
//! [policy]                         # ratls::config::PolicyConfig: the proxies trusted
//! roots = ["sim-root.der"]
//! images = ["<proxy image hash hex>"]
//!
//! [gpu]                            # optional: GPU evidence in every certificate (GpuFile)
//! kind = "nvml"                    # real GPUs through the NVIDIA driver (crate::gpu)
//! refs = "gpu-refs.json"           # optional: the worker's own check compares measurements too
//! ocsp_url = "http://10.0.2.2:8082" # optional: OCSP for the GPU chains in every certificate
//! # kind = "sim": seed = "<64 hex>", count = 1, driver = "550.127.05",
//! #               vbios = "96.00.9F.00.01", label = "cocoon-sim-gpu" (development, CI)
//!
//! [[models]]
//! name = "smollm2-135m"
//! engine = "mistralrs"             # "mistralrs" | "upstream" | "stub" ([`ModelFile`])
//! gguf = "/path/model.gguf"        # mistralrs only
//! max_completion_tokens = 512      # optional for mistralrs and stub, required for upstream
//! max_context = 2048               # optional for mistralrs and stub, required for upstream
//! # upstream: url = "http://127.0.0.1:8000", upstream_model = "...",
//! #           model_hash = "<sha256 hex>", api_key = "..." (optional)
//! # stub: tokens = 32, tokens_per_second = 1000.0 (both optional); its context is
//! #       max_context (4096 when unset), for mistralrs the model's own is an upper bound
//! ```
//!
//! Relative paths (in `[tee]`, `[policy]` and `gguf`) are resolved against the directory of
//! the config file. Every error names the field (`models[1].url: …`). [`WorkerConfigFile`] is
//! the schema (also `Serialize`: `cocoon-host` renders worker configs from it); each
//! `[[models]]` entry is a [`ModelFile`], one variant per engine. Loading is the shared
//! [`ratls::service_config`] helper.
//!
//! # Trust boundary
//!
//! The config is provided by the host and measured by `cocoon-init` before the worker starts;
//! the worker still validates every field, since a bad value must fail loudly, not degrade.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use attestation::config::TeeConfig;
use measurements::Policy;
use ratls::config::PolicyConfig;
use serde::{Deserialize, Serialize};

pub use ratls::service_config::ConfigError;
use ratls::service_config::{field, ServiceConfig};

mod model_file;
pub use model_file::ModelFile;

use crate::engine::stub::StubEngine;
use crate::engine::upstream::{UpstreamConfig, UpstreamEngine, UpstreamModel};
use crate::engine::Engine;
use crate::service::ServedModel;

/// Most models one worker serves (registration limit).
pub const MAX_MODELS: usize = 64;

/// The file as written (the schema). `models` entries are parsed one by one (see
/// [`ModelFile`]), so their errors name the entry and key.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfigFile {
    pub name: String,
    pub proxies: Vec<String>,
    pub capacity: u32,
    #[serde(default = "default_price")]
    pub price_coefficient_milli: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_lifetime_secs: Option<u64>,
    /// `ip:port` of the status port ([`crate::status`]); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_keepalive_secs: Option<u64>,
    /// A stream whose consumer takes nothing for this long is ended and its slot freed
    /// ([`crate::service`], "Stalled consumers"); 0 = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_stall_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_drain_secs: Option<u64>,
    pub tee: TeeConfig,
    pub policy: PolicyConfig,
    pub models: Vec<ModelFile>,
    /// Earnings: payout vouchers submitted to the worker contracts ([`crate::payout`]);
    /// absent: the worker serves unpaid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<PayoutFile>,
    /// GPU evidence in the worker's certificates; absent: none (a proxy whose policy requires
    /// GPU evidence refuses the worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuFile>,
}

fn default_sim_gpu_count() -> u32 {
    1
}

fn default_sim_driver() -> String {
    "550.127.05".into()
}

fn default_sim_vbios() -> String {
    "96.00.9F.00.01".into()
}

fn default_sim_label() -> String {
    "cocoon-sim-gpu".into()
}

/// `[gpu]`: where the evidence of the worker's GPUs comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum GpuFile {
    /// The NVIDIA driver's NVML library ([`crate::gpu`]).
    Nvml {
        /// Reference values (`cocoon-gpu-refs/v1`) for the worker's own check; without them
        /// it checks chain, signature and nonce only (verifiers hold the references).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refs: Option<PathBuf>,
        /// Refuse to start on a driver below this version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_driver: Option<String>,
        /// OCSP responder for the GPU chains (`ratls::gpu_ocsp`): NVIDIA's service through a
        /// forwarder on the host, e.g. `http://10.0.2.2:8082`. Without it the certificates
        /// carry no OCSP, and verifiers that require it refuse the worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ocsp_url: Option<String>,
    },
    /// Simulated GPUs under the simulated NVIDIA root derived from `seed` (development, CI;
    /// refused on real TDX).
    Sim {
        /// 32 bytes, hex: the simulated root and device keys derive from it.
        seed: String,
        #[serde(default = "default_sim_gpu_count")]
        count: u32,
        #[serde(default = "default_sim_driver")]
        driver: String,
        #[serde(default = "default_sim_vbios")]
        vbios: String,
        /// The simulated measurements derive from it.
        #[serde(default = "default_sim_label")]
        label: String,
        /// OCSP responder for the simulated chains (one that answers for the simulated root,
        /// as `cocoon-host launch --local` runs); as for `nvml`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ocsp_url: Option<String>,
    },
}

/// A validated `[gpu]`.
#[derive(Clone, Debug)]
pub enum GpuSpec {
    /// NVML, with the policy of the worker's own check.
    Nvml {
        policy: measurements::gpu::GpuPolicy,
        ocsp_url: Option<String>,
    },
    /// Simulated GPUs ([`GpuFile::Sim`]).
    Sim {
        seed: [u8; 32],
        gpus: Vec<measurements::gpu::sim::SimGpu>,
        ocsp_url: Option<String>,
    },
}

impl GpuSpec {
    /// The OCSP responder of the section, if any.
    pub fn ocsp_url(&self) -> Option<&str> {
        match self {
            Self::Nvml { ocsp_url, .. } | Self::Sim { ocsp_url, .. } => ocsp_url.as_deref(),
        }
    }
}

/// Checks an `ocsp_url` ([`ratls::gpu_ocsp::check_url`], the check the source repeats when
/// it opens) at load, so a bad one is a config error naming the field.
fn check_ocsp_url(url: &Option<String>) -> Result<(), ConfigError> {
    match url {
        Some(u) => ratls::gpu_ocsp::check_url(u).map_err(|e| field("gpu.ocsp_url", e)),
        None => Ok(()),
    }
}

impl GpuFile {
    /// `count` simulated GPUs with the default versions under the root of `seed`.
    pub fn sim(seed: [u8; 32], count: u32) -> Self {
        Self::Sim {
            seed: hex::encode(seed),
            count,
            driver: default_sim_driver(),
            vbios: default_sim_vbios(),
            label: default_sim_label(),
            ocsp_url: None,
        }
    }

    /// Validates the section (`production`: the worker runs on real TDX, which refuses
    /// simulated GPUs).
    pub fn into_spec(self, base: &Path, production: bool) -> Result<GpuSpec, ConfigError> {
        use measurements::gpu::{DriverVersion, GpuPolicy, GpuReferenceValues};
        match self {
            Self::Nvml {
                refs,
                min_driver,
                ocsp_url,
            } => {
                check_ocsp_url(&ocsp_url)?;
                let mut policy = match refs {
                    Some(file) => {
                        let path = base.join(file);
                        let bytes = std::fs::read(&path).map_err(|e| {
                            field("gpu.refs", format!("cannot read {}: {e}", path.display()))
                        })?;
                        let refs = GpuReferenceValues::from_json(&bytes)
                            .and_then(|r| r.validate().map(|()| r))
                            .map_err(|e| field("gpu.refs", format!("{}: {e}", path.display())))?;
                        GpuPolicy::production(refs)
                    }
                    None => GpuPolicy::inspect(),
                };
                if let Some(v) = min_driver {
                    policy.min_driver =
                        Some(DriverVersion::parse(&v).map_err(|e| field("gpu.min_driver", e))?);
                }
                Ok(GpuSpec::Nvml { policy, ocsp_url })
            }
            Self::Sim {
                seed,
                count,
                driver,
                vbios,
                label,
                ocsp_url,
            } => {
                check_ocsp_url(&ocsp_url)?;
                if production {
                    return Err(field(
                        "gpu.kind",
                        "refused on real TDX: simulated GPUs prove nothing",
                    ));
                }
                let seed = measurements::parse_hex_array::<32>(&seed, "seed")
                    .map_err(|e| field("gpu.seed", e.to_string()))?;
                if !(1..=measurements::gpu::bundle::MAX_GPUS as u32).contains(&count) {
                    return Err(field(
                        "gpu.count",
                        format!("{count} (1..={})", measurements::gpu::bundle::MAX_GPUS),
                    ));
                }
                DriverVersion::parse(&driver).map_err(|e| field("gpu.driver", e))?;
                if measurements::gpu::report::encode_vbios_version(&vbios).is_none() {
                    return Err(field(
                        "gpu.vbios",
                        format!("{vbios:?}: expected five hex pairs (96.00.9F.00.01)"),
                    ));
                }
                let gpus = measurements::gpu::sim::SimGpu::machine(count, &driver, &vbios, &label);
                Ok(GpuSpec::Sim {
                    seed,
                    gpus,
                    ocsp_url,
                })
            }
        }
    }
}

/// `[payout]`: where the worker is paid and how it submits vouchers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutFile {
    /// TON HTTP API v2 (toncenter-style) base URL.
    pub chain_url: String,
    /// Environment variable holding the API key (the key stays out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_api_key_env: Option<String>,
    /// Owner of the worker contracts: the address that receives the earnings.
    pub owner: String,
    /// The submitting wallet's key file (64 hex characters, mode 0600).
    pub wallet_key: PathBuf,
    /// Owner in the wallet's data (part of its address); default `owner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_owner: Option<String>,
    /// Highest accepted voucher count per proxy contract, kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Value sent with each voucher (the excess returns to the wallet); default 0.7 TON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher_value_nano: Option<u64>,
    /// Wait for a wallet transaction (also its validity); default 90 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_timeout_ms: Option<u64>,
}

/// `[payout]` validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayoutSpec {
    pub chain_url: String,
    pub chain_api_key_env: Option<String>,
    pub owner: ton::address::Addr,
    pub wallet_key: PathBuf,
    pub wallet_owner: ton::address::Addr,
    pub state_file: Option<PathBuf>,
    pub voucher_value_nano: u128,
    pub wallet_timeout: Duration,
}

/// Default `payout.voucher_value_nano` (0.7 TON, as the proxy's charge vouchers).
pub const DEFAULT_VOUCHER_VALUE_NANO: u64 = 700_000_000;
/// Default `payout.wallet_timeout_ms`.
pub const DEFAULT_WALLET_TIMEOUT_MS: u64 = 90_000;

impl PayoutFile {
    fn validate(self, base: &Path) -> Result<PayoutSpec, ConfigError> {
        let addr = |key: &str, v: &str| {
            ton::address::Addr::parse_any(v)
                .map_err(|e| field(format!("payout.{key}"), format!("{v:?}: {e}")))
        };
        if !(self.chain_url.starts_with("http://") || self.chain_url.starts_with("https://")) {
            return Err(field(
                "payout.chain_url",
                "expected an http:// or https:// URL",
            ));
        }
        let owner = addr("owner", &self.owner)?;
        let wallet_owner = match &self.wallet_owner {
            Some(w) => addr("wallet_owner", w)?,
            None => owner,
        };
        let value = self
            .voucher_value_nano
            .unwrap_or(DEFAULT_VOUCHER_VALUE_NANO);
        if !(10_000_000..=100_000_000_000).contains(&value) {
            return Err(field(
                "payout.voucher_value_nano",
                format!("{value} (0.01..=100 TON in nanoton)"),
            ));
        }
        let timeout = self.wallet_timeout_ms.unwrap_or(DEFAULT_WALLET_TIMEOUT_MS);
        if !(1_000..=3_600_000).contains(&timeout) {
            return Err(field(
                "payout.wallet_timeout_ms",
                format!("{timeout} (1000..=3600000)"),
            ));
        }
        Ok(PayoutSpec {
            chain_url: self.chain_url,
            chain_api_key_env: self.chain_api_key_env,
            owner,
            wallet_key: base.join(self.wallet_key),
            wallet_owner,
            state_file: self.state_file.map(|p| base.join(p)),
            voucher_value_nano: u128::from(value),
            wallet_timeout: Duration::from_millis(timeout),
        })
    }
}

impl WorkerConfigFile {
    /// A config with the required keys and every optional one at its default.
    pub fn new(
        name: impl Into<String>,
        proxies: Vec<String>,
        capacity: u32,
        tee: TeeConfig,
        policy: PolicyConfig,
        models: Vec<ModelFile>,
    ) -> Self {
        Self {
            name: name.into(),
            proxies,
            capacity,
            price_coefficient_milli: DEFAULT_PRICE_COEFFICIENT_MILLI,
            cert_lifetime_secs: None,
            status_listen: None,
            stream_keepalive_secs: None,
            stream_stall_secs: None,
            shutdown_drain_secs: None,
            tee,
            policy,
            models,
            payout: None,
            gpu: None,
        }
    }
}

/// Default `price_coefficient_milli` (the list price).
pub const DEFAULT_PRICE_COEFFICIENT_MILLI: u32 = 1000;
/// Default `stream_keepalive_secs` ([`crate::service::DEFAULT_STREAM_KEEPALIVE`]).
pub const DEFAULT_STREAM_KEEPALIVE_SECS: u64 = crate::service::DEFAULT_STREAM_KEEPALIVE.as_secs();
/// Default `stream_stall_secs` ([`crate::service::DEFAULT_STREAM_STALL`]).
pub const DEFAULT_STREAM_STALL_SECS: u64 = crate::service::DEFAULT_STREAM_STALL.as_secs();
/// Default `shutdown_drain_secs`.
pub const DEFAULT_SHUTDOWN_DRAIN_SECS: u64 = 30;
/// Largest `stream_keepalive_secs`, `stream_stall_secs` and `shutdown_drain_secs`.
pub const MAX_WAIT_SECS: u64 = 3600;

fn default_price() -> u32 {
    DEFAULT_PRICE_COEFFICIENT_MILLI
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub name: String,
    pub proxies: Vec<SocketAddr>,
    pub capacity: u32,
    pub price_coefficient_milli: u32,
    pub cert_lifetime: Duration,
    /// Where `/healthz` and `/readyz` are served ([`crate::status`]), if anywhere.
    pub status_listen: Option<SocketAddr>,
    /// SSE keepalive interval of streams (`None`: off); see [`crate::service`].
    pub stream_keepalive: Option<Duration>,
    /// Stall limit of streams (`None`: off); see [`crate::service`].
    pub stream_stall: Option<Duration>,
    /// After SIGTERM/SIGINT: how long streams may finish before each is ended with a
    /// `service_unavailable` error event.
    pub shutdown_drain: Duration,
    /// Opened by the caller with [`TeeConfig::open`] and [`WorkerConfig::base_dir`].
    pub tee: TeeConfig,
    /// What proxies must prove.
    pub policy: Policy,
    pub models: Vec<ModelSpec>,
    /// Earnings ([`crate::payout`]); `None`: unpaid.
    pub payout: Option<PayoutSpec>,
    /// GPU evidence ([`GpuSpec`]); `None`: certificates carry none.
    pub gpu: Option<GpuSpec>,
    /// The config file's directory (relative paths are resolved against it).
    pub base_dir: PathBuf,
    /// SHA-256 of the config text: what a simulated process measures into RTMR3
    /// ([`TeeConfig::open_for_config`]).
    pub config_sha256: [u8; 32],
}

/// One validated model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// Upper bound on completion tokens (the engine's own limit applies too).
    pub max_completion_tokens: Option<u32>,
    pub max_context: Option<u32>,
    pub engine: EngineSpec,
}

/// Engine-specific settings.
#[derive(Clone, PartialEq)]
pub enum EngineSpec {
    /// In-process GGUF inference (feature `mistralrs`); the path is absolute.
    MistralRs { gguf: PathBuf },
    /// An OpenAI-compatible server.
    Upstream {
        url: String,
        upstream_model: String,
        model_hash: String,
        api_key: Option<String>,
    },
    /// The stub engine (tests, load tests).
    Stub { tokens: u32, tokens_per_second: f64 },
}

impl EngineSpec {
    /// What a worker running on real TDX refuses: the stub engine (not a model), and an
    /// upstream server outside the TD (prompts would leave it in plaintext; only a server on
    /// the TD's own loopback interface is inside the measured boundary).
    pub fn check_production(&self, at: &str) -> Result<(), ConfigError> {
        match self {
            Self::MistralRs { .. } => Ok(()),
            Self::Stub { .. } => Err(field(
                format!("{at}.engine"),
                "refused on real TDX: the stub engine serves no model",
            )),
            Self::Upstream { url, .. } if url_is_loopback(url) => Ok(()),
            Self::Upstream { url, .. } => Err(field(
                format!("{at}.url"),
                format!(
                    "refused on real TDX: {:?} is outside the TD (prompts would leave it in \
                     plaintext); only a loopback upstream inside the TD is allowed",
                    url.chars().take(128).collect::<String>()
                ),
            )),
        }
    }
}

/// Whether an `http(s)://host[:port][/...]` URL names a loopback host (`localhost`,
/// `127.0.0.0/8`, `::1`). Anything unparseable is not loopback.
pub fn url_is_loopback(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, port)) if port.is_empty() || port.starts_with(':') => h,
            _ => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((h, _port)) => h,
            None => authority,
        }
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

impl std::fmt::Debug for EngineSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MistralRs { gguf } => f.debug_struct("MistralRs").field("gguf", gguf).finish(),
            Self::Upstream {
                url,
                upstream_model,
                model_hash,
                api_key,
            } => f
                .debug_struct("Upstream")
                .field("url", url)
                .field("upstream_model", upstream_model)
                .field("model_hash", model_hash)
                .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
                .finish(),
            Self::Stub {
                tokens,
                tokens_per_second,
            } => f
                .debug_struct("Stub")
                .field("tokens", tokens)
                .field("tokens_per_second", tokens_per_second)
                .finish(),
        }
    }
}

impl WorkerConfig {
    /// Reads and validates the config at `path` ([`ratls::service_config::open`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let opened = ratls::service_config::open::<WorkerConfigFile>(path)?;
        Ok(Self {
            config_sha256: opened.sha256,
            ..opened.config
        })
    }

    /// Parses and validates `text`; `path` names the file in errors, `base` resolves
    /// relative paths.
    pub fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut config = WorkerConfigFile::parse(text, path)?.validate(base)?;
        config.config_sha256 = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
        Ok(config)
    }
}

impl ServiceConfig for WorkerConfigFile {
    type Valid = WorkerConfig;

    /// The file without its `models` array is parsed by serde (errors name the file); then
    /// each entry by [`model_file::parse_entry`] (errors name `models[i].key`).
    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut table: toml::Table = ratls::service_config::parse(text, path)?;
        let entries = match table.get_mut("models") {
            Some(toml::Value::Array(a)) => std::mem::take(a),
            _ => Vec::new(),
        };
        let mut file: Self =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    detail: e.to_string().trim_end().to_string(),
                })?;
        file.models = entries
            .into_iter()
            .enumerate()
            .map(|(i, v)| model_file::parse_entry(i, v))
            .collect::<Result<_, _>>()?;
        Ok(file)
    }

    fn validate(self, base: &Path) -> Result<WorkerConfig, ConfigError> {
        self.into_config(base)
    }
}

impl WorkerConfigFile {
    /// Validates into the runtime type.
    pub fn into_config(self, base: &Path) -> Result<WorkerConfig, ConfigError> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self.name.bytes().all(|b| (0x21..0x7f).contains(&b));
        if !name_ok {
            return Err(field(
                "name",
                "expected 1-64 printable ascii characters without spaces",
            ));
        }
        if self.proxies.is_empty() {
            return Err(field("proxies", "at least one proxy address is required"));
        }
        let mut proxies = Vec::new();
        for (i, p) in self.proxies.iter().enumerate() {
            let addr: SocketAddr = p.parse().map_err(|_| {
                field(
                    format!("proxies[{i}]"),
                    format!("{p:?} is not an ip:port literal (no host names)"),
                )
            })?;
            if proxies.contains(&addr) {
                return Err(field(
                    format!("proxies[{i}]"),
                    format!("{addr} listed twice"),
                ));
            }
            proxies.push(addr);
        }
        if !(1..=100_000).contains(&self.capacity) {
            return Err(field("capacity", format!("{} (1..=100000)", self.capacity)));
        }
        if self.price_coefficient_milli == 0 {
            return Err(field("price_coefficient_milli", "must be positive"));
        }
        let lifetime = self
            .cert_lifetime_secs
            .unwrap_or(ratls::cert::DEFAULT_LIFETIME.as_secs());
        if !(300..=7 * 86400).contains(&lifetime) {
            return Err(field(
                "cert_lifetime_secs",
                format!("{lifetime} (300..=604800)"),
            ));
        }
        let status_listen = match &self.status_listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                field(
                    "status_listen",
                    format!("{a:?} is not an ip:port literal (no host names)"),
                )
            })?),
        };
        for (name, v) in [
            ("stream_keepalive_secs", self.stream_keepalive_secs),
            ("stream_stall_secs", self.stream_stall_secs),
            ("shutdown_drain_secs", self.shutdown_drain_secs),
        ] {
            if v.is_some_and(|v| v > MAX_WAIT_SECS) {
                return Err(field(
                    name,
                    format!("{} (0..={MAX_WAIT_SECS})", v.unwrap_or(0)),
                ));
            }
        }
        let keepalive = self
            .stream_keepalive_secs
            .unwrap_or(DEFAULT_STREAM_KEEPALIVE_SECS);
        let stall = self.stream_stall_secs.unwrap_or(DEFAULT_STREAM_STALL_SECS);
        let production = matches!(self.tee, TeeConfig::Tdx { .. });
        if production {
            self.policy.check_production()?;
        }
        let policy = self
            .policy
            .load(base, ratls::config::Required::by(ratls::Role::Worker))?;
        if self.models.is_empty() || self.models.len() > MAX_MODELS {
            return Err(field(
                "models",
                format!("{} models (1..={MAX_MODELS})", self.models.len()),
            ));
        }
        let mut models: Vec<ModelSpec> = Vec::new();
        for (i, m) in self.models.into_iter().enumerate() {
            let at = format!("models[{i}]");
            let spec = m.validate(&at, base)?;
            if production {
                spec.engine.check_production(&at)?;
            }
            if models.iter().any(|o| o.name == spec.name) {
                return Err(field(
                    format!("models[{i}].name"),
                    format!("{} configured twice", spec.name),
                ));
            }
            models.push(spec);
        }
        let payout = self.payout.map(|p| p.validate(base)).transpose()?;
        let gpu = self
            .gpu
            .map(|g| g.into_spec(base, production))
            .transpose()?;
        Ok(WorkerConfig {
            name: self.name,
            proxies,
            capacity: self.capacity,
            price_coefficient_milli: self.price_coefficient_milli,
            cert_lifetime: Duration::from_secs(lifetime),
            status_listen,
            stream_keepalive: (keepalive > 0).then(|| Duration::from_secs(keepalive)),
            stream_stall: (stall > 0).then(|| Duration::from_secs(stall)),
            shutdown_drain: Duration::from_secs(
                self.shutdown_drain_secs
                    .unwrap_or(DEFAULT_SHUTDOWN_DRAIN_SECS),
            ),
            tee: self.tee,
            policy,
            models,
            payout,
            gpu,
            base_dir: base.to_path_buf(),
            config_sha256: [0; 32],
        })
    }
}

impl ModelFile {
    /// The model's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Mistralrs { name, .. }
            | Self::Upstream { name, .. }
            | Self::Stub { name, .. } => name,
        }
    }

    fn validate(self, at: &str, base: &Path) -> Result<ModelSpec, ConfigError> {
        protocol::meta::check_model(self.name())
            .map_err(|e| field(format!("{at}.name"), e.message))?;
        let positive = |key: &str, v: Option<u32>| {
            if v == Some(0) {
                Err(field(format!("{at}.{key}"), "must be positive"))
            } else {
                Ok(v)
            }
        };
        let (name, max_completion_tokens, max_context, engine) = match self {
            Self::Mistralrs {
                name,
                gguf,
                max_completion_tokens,
                max_context,
            } => (
                name,
                max_completion_tokens,
                max_context,
                EngineSpec::MistralRs {
                    gguf: base.join(gguf),
                },
            ),
            Self::Upstream {
                name,
                url,
                upstream_model,
                model_hash,
                api_key,
                max_completion_tokens,
                max_context,
            } => {
                for (key, v) in [
                    ("url", &url),
                    ("upstream_model", &upstream_model),
                    ("model_hash", &model_hash),
                ] {
                    if v.is_empty() {
                        return Err(field(
                            format!("{at}.{key}"),
                            "required for engine = \"upstream\"",
                        ));
                    }
                }
                if model_hash.len() != 64 || hex::decode(&model_hash).is_err() {
                    return Err(field(
                        format!("{at}.model_hash"),
                        "expected 64 hex digits (sha-256 of the weights)",
                    ));
                }
                (
                    name,
                    Some(max_completion_tokens),
                    Some(max_context),
                    EngineSpec::Upstream {
                        url,
                        upstream_model,
                        model_hash: model_hash.to_ascii_lowercase(),
                        api_key,
                    },
                )
            }
            Self::Stub {
                name,
                max_completion_tokens,
                max_context,
                tokens,
                tokens_per_second,
            } => {
                let tokens_per_second = tokens_per_second.unwrap_or(1000.0);
                if !tokens_per_second.is_finite() || tokens_per_second < 0.0 {
                    return Err(field(
                        format!("{at}.tokens_per_second"),
                        "expected a finite number >= 0 (0 = as fast as possible)",
                    ));
                }
                (
                    name,
                    max_completion_tokens,
                    max_context,
                    EngineSpec::Stub {
                        tokens: tokens.unwrap_or(32),
                        tokens_per_second,
                    },
                )
            }
        };
        Ok(ModelSpec {
            name,
            max_completion_tokens: positive("max_completion_tokens", max_completion_tokens)?,
            max_context: positive("max_context", max_context)?,
            engine,
        })
    }
}

/// Engine construction failures (each names the model).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("model {model}: {detail}")]
    Engine { model: String, detail: String },
    #[error("model {model}: engine \"mistralrs\" is not in this build (feature `mistralrs`)")]
    NotBuilt { model: String },
}

impl ModelSpec {
    /// Builds the engine and applies the configured limits to what it advertises.
    /// `capacity` (the worker's concurrent requests) sizes in-process batching. Loading an
    /// in-process model reads and hashes its weights and may block a runtime thread for
    /// seconds: call at startup on a multi-threaded runtime.
    pub async fn build(&self, capacity: u32) -> Result<ServedModel, BuildError> {
        let engine: Arc<dyn Engine> = match &self.engine {
            EngineSpec::Stub {
                tokens,
                tokens_per_second,
            } => {
                // The stub has the context it is configured with (4096 unless set).
                let stub = StubEngine::new(&self.name, *tokens, *tokens_per_second);
                let context = self.max_context.unwrap_or(stub.max_context);
                Arc::new(stub.with_max_context(context))
            }
            EngineSpec::Upstream {
                url,
                upstream_model,
                model_hash,
                api_key,
            } => {
                let mut cfg = UpstreamConfig::new(
                    url.clone(),
                    vec![UpstreamModel {
                        name: self.name.clone(),
                        upstream_name: upstream_model.clone(),
                        model_hash: model_hash.clone(),
                        max_context: self.max_context.unwrap_or(0),
                        max_completion_tokens: self.max_completion_tokens.unwrap_or(0),
                    }],
                );
                cfg.api_key = api_key.clone();
                Arc::new(UpstreamEngine::new(cfg).map_err(|e| BuildError::Engine {
                    model: self.name.clone(),
                    detail: e.to_string(),
                })?)
            }
            EngineSpec::MistralRs { gguf } => self.build_mistralrs(gguf, capacity).await?,
        };
        let mut advert = engine
            .models()
            .into_iter()
            .find(|a| a.name == self.name)
            .ok_or_else(|| BuildError::Engine {
                model: self.name.clone(),
                detail: "the engine does not report this model".into(),
            })?;
        if let Some(m) = self.max_completion_tokens {
            advert.max_completion_tokens = advert.max_completion_tokens.min(m);
        }
        if let Some(c) = self.max_context {
            advert.max_context = advert.max_context.min(c);
        }
        Ok(ServedModel { engine, advert })
    }

    #[cfg(not(feature = "mistralrs"))]
    async fn build_mistralrs(
        &self,
        _gguf: &Path,
        _capacity: u32,
    ) -> Result<Arc<dyn Engine>, BuildError> {
        Err(BuildError::NotBuilt {
            model: self.name.clone(),
        })
    }

    #[cfg(feature = "mistralrs")]
    async fn build_mistralrs(
        &self,
        gguf: &Path,
        capacity: u32,
    ) -> Result<Arc<dyn Engine>, BuildError> {
        use crate::engine::mistralrs::{MistralRsEngine, MistralRsOptions};
        let defaults = MistralRsOptions::default();
        let opts = MistralRsOptions {
            max_context: self.max_context.unwrap_or(defaults.max_context),
            max_completion_tokens: self
                .max_completion_tokens
                .unwrap_or(defaults.max_completion_tokens),
            max_num_seqs: (capacity as usize).clamp(1, 256),
            ..defaults
        };
        let engine = MistralRsEngine::load(&self.name, gguf, opts)
            .await
            .map_err(|e| BuildError::Engine {
                model: self.name.clone(),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(engine))
    }
}

#[cfg(test)]
mod tests;
