//! The worker's TOML configuration, parsed strictly and validated into [`WorkerConfig`].
//!
//! ```toml
//! name = "worker-1"
//! proxies = ["127.0.0.1:9101"]     # proxy worker-port addresses, ip:port literals
//! capacity = 8                     # concurrent generations (1..=100000)
//! price_coefficient_milli = 1000   # default 1000 (list price)
//! cert_lifetime_secs = 21600       # RA-TLS certificate lifetime, default 6 h (300..=604800)
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
//! [[models]]
//! name = "smollm2-135m"
//! engine = "mistralrs"             # "mistralrs" | "upstream" | "stub"
//! gguf = "/path/model.gguf"        # mistralrs only
//! max_completion_tokens = 512      # optional for mistralrs and stub, required for upstream
//! max_context = 2048               # optional for mistralrs and stub, required for upstream
//! # upstream: url = "http://127.0.0.1:8000", upstream_model = "...",
//! #           model_hash = "<sha256 hex>", api_key = "..." (optional)
//! # stub: tokens = 32, tokens_per_second = 1000.0 (both optional)
//! ```
//!
//! Relative paths (in `[tee]`, `[policy]` and `gguf`) are resolved against the directory of
//! the config file. Every error names the field (`models[1].url: …`).
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
use serde::Deserialize;

use crate::engine::stub::StubEngine;
use crate::engine::upstream::{UpstreamConfig, UpstreamEngine, UpstreamModel};
use crate::engine::Engine;
use crate::service::ServedModel;

/// Most models one worker serves (registration limit).
pub const MAX_MODELS: usize = 64;

/// Config errors; each names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{field}: {detail}")]
    Field { field: String, detail: String },
    #[error(transparent)]
    Policy(#[from] ratls::config::ConfigError),
}

fn field(field: impl Into<String>, detail: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        detail: detail.into(),
    }
}

/// The file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfigFile {
    pub name: String,
    pub proxies: Vec<String>,
    pub capacity: u32,
    #[serde(default = "default_price")]
    pub price_coefficient_milli: u32,
    #[serde(default)]
    pub cert_lifetime_secs: Option<u64>,
    pub tee: TeeConfig,
    pub policy: PolicyConfig,
    pub models: Vec<ModelFile>,
}

fn default_price() -> u32 {
    1000
}

/// Which engine serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Mistralrs,
    Upstream,
    Stub,
}

/// One `[[models]]` entry as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub engine: EngineKind,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub max_context: Option<u32>,
    // mistralrs
    #[serde(default)]
    pub gguf: Option<PathBuf>,
    // upstream
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub model_hash: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    // stub
    #[serde(default)]
    pub tokens: Option<u32>,
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub name: String,
    pub proxies: Vec<SocketAddr>,
    pub capacity: u32,
    pub price_coefficient_milli: u32,
    pub cert_lifetime: Duration,
    /// Opened by the caller with [`TeeConfig::open`] and [`WorkerConfig::base_dir`].
    pub tee: TeeConfig,
    /// What proxies must prove.
    pub policy: Policy,
    pub models: Vec<ModelSpec>,
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
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base)
    }

    /// Parses and validates `text`; `path` names the file in errors, `base` resolves
    /// relative paths.
    pub fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let file: WorkerConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let mut config = file.validate(base)?;
        config.config_sha256 = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
        Ok(config)
    }
}

impl WorkerConfigFile {
    /// Validates into the runtime type.
    pub fn validate(self, base: &Path) -> Result<WorkerConfig, ConfigError> {
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
        Ok(WorkerConfig {
            name: self.name,
            proxies,
            capacity: self.capacity,
            price_coefficient_milli: self.price_coefficient_milli,
            cert_lifetime: Duration::from_secs(lifetime),
            tee: self.tee,
            policy,
            models,
            base_dir: base.to_path_buf(),
            config_sha256: [0; 32],
        })
    }
}

impl ModelFile {
    fn validate(self, at: &str, base: &Path) -> Result<ModelSpec, ConfigError> {
        protocol::meta::check_model(&self.name)
            .map_err(|e| field(format!("{at}.name"), e.message))?;
        for (name, v) in [
            ("max_completion_tokens", self.max_completion_tokens),
            ("max_context", self.max_context),
        ] {
            if v == Some(0) {
                return Err(field(format!("{at}.{name}"), "must be positive"));
            }
        }
        let engine_name = match self.engine {
            EngineKind::Mistralrs => "mistralrs",
            EngineKind::Upstream => "upstream",
            EngineKind::Stub => "stub",
        };
        let given = [
            ("gguf", self.gguf.is_some(), EngineKind::Mistralrs),
            ("url", self.url.is_some(), EngineKind::Upstream),
            (
                "upstream_model",
                self.upstream_model.is_some(),
                EngineKind::Upstream,
            ),
            (
                "model_hash",
                self.model_hash.is_some(),
                EngineKind::Upstream,
            ),
            ("api_key", self.api_key.is_some(), EngineKind::Upstream),
            ("tokens", self.tokens.is_some(), EngineKind::Stub),
            (
                "tokens_per_second",
                self.tokens_per_second.is_some(),
                EngineKind::Stub,
            ),
        ];
        for (name, is_set, for_engine) in given {
            if is_set && for_engine != self.engine {
                return Err(field(
                    format!("{at}.{name}"),
                    format!("not an option of engine = \"{engine_name}\""),
                ));
            }
        }
        let required = |name: &str, v: Option<String>| {
            v.filter(|s| !s.is_empty()).ok_or_else(|| {
                field(
                    format!("{at}.{name}"),
                    format!("required for engine = \"{engine_name}\""),
                )
            })
        };
        let engine = match self.engine {
            EngineKind::Mistralrs => {
                let gguf = self.gguf.ok_or_else(|| {
                    field(format!("{at}.gguf"), "required for engine = \"mistralrs\"")
                })?;
                EngineSpec::MistralRs {
                    gguf: base.join(gguf),
                }
            }
            EngineKind::Upstream => {
                if self.max_completion_tokens.is_none() {
                    return Err(field(
                        format!("{at}.max_completion_tokens"),
                        "required for engine = \"upstream\"",
                    ));
                }
                if self.max_context.is_none() {
                    return Err(field(
                        format!("{at}.max_context"),
                        "required for engine = \"upstream\"",
                    ));
                }
                let model_hash = required("model_hash", self.model_hash)?;
                if model_hash.len() != 64 || hex::decode(&model_hash).is_err() {
                    return Err(field(
                        format!("{at}.model_hash"),
                        "expected 64 hex digits (sha-256 of the weights)",
                    ));
                }
                EngineSpec::Upstream {
                    url: required("url", self.url)?,
                    upstream_model: required("upstream_model", self.upstream_model)?,
                    model_hash: model_hash.to_ascii_lowercase(),
                    api_key: self.api_key,
                }
            }
            EngineKind::Stub => {
                let tokens_per_second = self.tokens_per_second.unwrap_or(1000.0);
                if !tokens_per_second.is_finite() || tokens_per_second < 0.0 {
                    return Err(field(
                        format!("{at}.tokens_per_second"),
                        "expected a finite number >= 0 (0 = as fast as possible)",
                    ));
                }
                EngineSpec::Stub {
                    tokens: self.tokens.unwrap_or(32),
                    tokens_per_second,
                }
            }
        };
        Ok(ModelSpec {
            name: self.name,
            max_completion_tokens: self.max_completion_tokens,
            max_context: self.max_context,
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
            } => Arc::new(StubEngine::new(&self.name, *tokens, *tokens_per_second)),
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
