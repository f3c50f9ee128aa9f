//! The proxy's TOML config ([`ConfigFile`], `deny_unknown_fields`) and the validated runtime
//! type ([`ProxyConfig`]) that the rest of the crate uses.
//!
//! ```toml
//! name = "proxy-1"
//! worker_listen = "127.0.0.1:9101"   # workers dial in here (mutual RA-TLS, HTTP/2)
//! client_listen = "127.0.0.1:9102"   # clients (TLS 1.3 with account certificates)
//! admin_listen = "127.0.0.1:9103"    # /stats, /jsonstats, /metrics; loopback only
//! max_prompt_tokens = 4096           # prompt budget reserved per request
//!
//! # optional, all below are defaults
//! worker_keepalive_interval_ms = 500 # HTTP/2 ping to workers when the connection is quiet
//! worker_keepalive_timeout_ms = 1000 # no pong within this: the worker is gone
//! worker_response_timeout_secs = 120 # request sent, no response headers: retry elsewhere
//! handshake_timeout_secs = 10        # TLS handshake and registration of a new connection
//!
//! [prices]                           # optional; nano-TON per token, each field optional
//! prompt_nano_per_token = 10
//! cached_nano_per_token = 1
//! completion_nano_per_token = 40
//! reasoning_nano_per_token = 40
//!
//! [accounts]                         # optional
//! default_balance_nano = 1000000000000   # development: unknown accounts start with this
//! balances = { "<account id hex>" = 5000000000 }
//!
//! [tee]                              # attestation::config::TeeConfig
//! kind = "sim"
//! platform_file = "sim-platform.json"
//! registers_file = "proxy-registers.json"
//!
//! [policy]                           # ratls::config::PolicyConfig: worker images accepted
//! roots = ["sim-root.der"]
//! images = ["<worker image hash hex>"]
//! ```
//! Relative paths are resolved against the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attestation::config::TeeConfig;
use measurements::Policy;
use protocol::usage::Prices;
use ratls::config::PolicyConfig;
use serde::Deserialize;

/// Largest request body the proxy accepts from a client (413 above).
pub const MAX_BODY_BYTES: usize = protocol::MAX_REQUEST_BODY;

/// Upper bound for `max_prompt_tokens`.
pub const MAX_PROMPT_TOKENS_LIMIT: u32 = 1_000_000;

/// Config errors; each names the field or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{field}: {detail}")]
    Field { field: &'static str, detail: String },
    #[error(transparent)]
    Policy(#[from] ratls::config::ConfigError),
}

fn field(field: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        detail: detail.into(),
    }
}

/// The `[prices]` section: every field optional, defaulting to [`Prices::default`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesFile {
    pub prompt_nano_per_token: Option<u64>,
    pub cached_nano_per_token: Option<u64>,
    pub completion_nano_per_token: Option<u64>,
    pub reasoning_nano_per_token: Option<u64>,
}

impl PricesFile {
    fn resolve(&self) -> Prices {
        let d = Prices::default();
        Prices {
            prompt_nano_per_token: self
                .prompt_nano_per_token
                .unwrap_or(d.prompt_nano_per_token),
            cached_nano_per_token: self
                .cached_nano_per_token
                .unwrap_or(d.cached_nano_per_token),
            completion_nano_per_token: self
                .completion_nano_per_token
                .unwrap_or(d.completion_nano_per_token),
            reasoning_nano_per_token: self
                .reasoning_nano_per_token
                .unwrap_or(d.reasoning_nano_per_token),
        }
    }
}

/// The `[accounts]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// Development: an account seen for the first time is created with this balance.
    #[serde(default)]
    pub default_balance_nano: Option<u64>,
    /// Opening balances by account id (hex Ed25519 public key).
    #[serde(default)]
    pub balances: BTreeMap<String, u64>,
}

/// The config file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: String,
    pub worker_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_prompt_tokens: u32,
    #[serde(default)]
    pub worker_keepalive_interval_ms: Option<u64>,
    #[serde(default)]
    pub worker_keepalive_timeout_ms: Option<u64>,
    #[serde(default)]
    pub worker_response_timeout_secs: Option<u64>,
    #[serde(default)]
    pub handshake_timeout_secs: Option<u64>,
    #[serde(default)]
    pub prices: PricesFile,
    #[serde(default)]
    pub accounts: AccountsFile,
    pub tee: TeeConfig,
    pub policy: PolicyConfig,
}

/// Account funding rules (validated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountsConfig {
    pub default_balance_nano: Option<u64>,
    pub balances: BTreeMap<String, u64>,
}

/// The validated runtime configuration of the proxy service (everything but TEE and policy,
/// which are opened separately; see [`LoadedConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub name: String,
    pub worker_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Prompt tokens reserved (and allowed at the worker) per request.
    pub max_prompt_tokens: u32,
    pub prices: Prices,
    pub accounts: AccountsConfig,
    pub worker_keepalive_interval: Duration,
    pub worker_keepalive_timeout: Duration,
    pub worker_response_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Largest client request body ([`MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
}

impl ProxyConfig {
    /// Defaults with every listener on an ephemeral loopback port (tests, benchmarks).
    pub fn local(name: &str) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            name: name.to_string(),
            worker_listen: any,
            client_listen: any,
            admin_listen: any,
            max_prompt_tokens: 4096,
            prices: Prices::default(),
            accounts: AccountsConfig::default(),
            worker_keepalive_interval: Duration::from_millis(500),
            worker_keepalive_timeout: Duration::from_millis(1000),
            worker_response_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            max_body_bytes: MAX_BODY_BYTES,
        }
    }

    /// Checks the values (also for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            return Err(field(
                "name",
                "expected 1-64 printable ascii characters without spaces",
            ));
        }
        if !(1..=MAX_PROMPT_TOKENS_LIMIT).contains(&self.max_prompt_tokens) {
            return Err(field(
                "max_prompt_tokens",
                format!(
                    "{} outside 1..={MAX_PROMPT_TOKENS_LIMIT}",
                    self.max_prompt_tokens
                ),
            ));
        }
        if !self.admin_listen.ip().is_loopback() {
            return Err(field(
                "admin_listen",
                format!("{} is not a loopback address", self.admin_listen),
            ));
        }
        let addrs = [
            ("worker_listen", self.worker_listen),
            ("client_listen", self.client_listen),
            ("admin_listen", self.admin_listen),
        ];
        for (i, (name, a)) in addrs.iter().enumerate() {
            for (other, b) in &addrs[i + 1..] {
                if a.port() != 0 && a == b {
                    return Err(field(name, format!("{a} is also {other}")));
                }
            }
        }
        for (name, d) in [
            (
                "worker_keepalive_interval_ms",
                self.worker_keepalive_interval,
            ),
            ("worker_keepalive_timeout_ms", self.worker_keepalive_timeout),
            ("worker_response_timeout_secs", self.worker_response_timeout),
            ("handshake_timeout_secs", self.handshake_timeout),
        ] {
            if d.is_zero() {
                return Err(field(name, "must be positive"));
            }
        }
        for account in self.accounts.balances.keys() {
            if account.len() != 64 || hex::decode(account).is_err() {
                return Err(field(
                    "accounts.balances",
                    format!("{account:?} is not an account id (64 hex characters)"),
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(field("max_body_bytes", "must be positive"));
        }
        Ok(())
    }
}

/// A loaded config file: runtime config, the TEE section and the worker policy.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub proxy: ProxyConfig,
    pub tee: TeeConfig,
    /// What worker evidence the proxy accepts.
    pub worker_policy: Policy,
    /// The config file's directory (relative paths are resolved against it).
    pub base_dir: PathBuf,
}

impl ConfigFile {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })
    }

    /// Validates into runtime types; the policy's files are read relative to `base_dir`.
    pub fn into_loaded(self, base_dir: &Path) -> Result<LoadedConfig, ConfigError> {
        let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
        let proxy = ProxyConfig {
            name: self.name,
            worker_listen: self.worker_listen,
            client_listen: self.client_listen,
            admin_listen: self.admin_listen,
            max_prompt_tokens: self.max_prompt_tokens,
            prices: self.prices.resolve(),
            accounts: AccountsConfig {
                default_balance_nano: self.accounts.default_balance_nano,
                balances: self.accounts.balances,
            },
            worker_keepalive_interval: ms(self.worker_keepalive_interval_ms, 500),
            worker_keepalive_timeout: ms(self.worker_keepalive_timeout_ms, 1000),
            worker_response_timeout: secs(self.worker_response_timeout_secs, 120),
            handshake_timeout: secs(self.handshake_timeout_secs, 10),
            max_body_bytes: MAX_BODY_BYTES,
        };
        proxy.validate()?;
        let worker_policy = self.policy.load(base_dir)?;
        Ok(LoadedConfig {
            proxy,
            tee: self.tee,
            worker_policy,
            base_dir: base_dir.to_path_buf(),
        })
    }
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    ConfigFile::parse(&text, path)?.into_loaded(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        format!(
            r#"
name = "proxy-1"
worker_listen = "127.0.0.1:9101"
client_listen = "127.0.0.1:9102"
admin_listen = "127.0.0.1:9103"
max_prompt_tokens = 4096
[prices]
completion_nano_per_token = 50
[accounts]
default_balance_nano = 1000
balances = {{ "{acct}" = 7 }}
[tee]
kind = "tdx"
[policy]
images = ["{img}"]
"#,
            acct = "ab".repeat(32),
            img = "cd".repeat(32)
        )
    }

    #[test]
    fn sample_loads_with_defaults() {
        let c = ConfigFile::parse(&sample(), Path::new("p.toml"))
            .unwrap()
            .into_loaded(Path::new("."))
            .unwrap();
        assert_eq!(c.proxy.name, "proxy-1");
        assert_eq!(c.proxy.prices.completion_nano_per_token, 50);
        assert_eq!(c.proxy.prices.prompt_nano_per_token, 10);
        assert_eq!(c.proxy.accounts.default_balance_nano, Some(1000));
        assert_eq!(
            c.proxy.worker_keepalive_interval,
            Duration::from_millis(500)
        );
        assert_eq!(c.proxy.max_body_bytes, MAX_BODY_BYTES);
        assert!(matches!(c.tee, TeeConfig::Tdx { .. }));
        assert_eq!(c.worker_policy.allowed_images.map(|i| i.len()), Some(1));
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |from: &str, to: &str| {
            let text = sample().replace(from, to);
            ConfigFile::parse(&text, Path::new("p.toml"))
                .and_then(|c| c.into_loaded(Path::new(".")))
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad("max_prompt_tokens = 4096", "max_prompt_tokens = 0").contains("max_prompt_tokens")
        );
        assert!(
            bad("admin_listen = \"127.0.0.1", "admin_listen = \"0.0.0.0").contains("admin_listen")
        );
        assert!(bad("name = \"proxy-1\"", "name = \"proxy-1\"\nsurprise = 1").contains("surprise"));
        assert!(bad("9102", "9101").contains("worker_listen"));
        assert!(bad(&format!("\"{}\" = 7", "ab".repeat(32)), "\"xyz\" = 7")
            .contains("accounts.balances"));
        assert!(bad(&format!("images = [\"{}\"]", "cd".repeat(32)), "").contains("no image"));
    }
}
