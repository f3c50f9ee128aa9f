//! `client.toml` and the runtime configuration it is validated into.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # local OpenAI-compatible endpoint (default)
//! proxy = "127.0.0.1:9102"           # the proxy's client port, host:port (default)
//! account_key_file = "client.key"    # created with mode 0600 if missing (default)
//! default_max_tokens = 256           # optional: cocoon-max-tokens when a request names no
//!                                    # max_tokens (unset: up to the model's max_completion_tokens)
//! price_cap_nano = 1000000           # optional: most one request may cost, nano-TON
//! allowed_hosts = ["myhost.lan"]     # optional: Host names accepted besides loopback (default [])
//! api_key = "sk-local-…"             # optional: require Authorization: Bearer <api_key>
//!
//! encryption = "required"           # "required" (default): prompts are sealed to attested
//!                                    # workers ([`crate::e2e`]); "off": plaintext to the proxy
//! receipts_file = "receipts.jsonl"   # optional: log of verified worker receipts with their
//!                                    # cost ([`crate::receipts`])
//!
//! [prices]                           # optional: prices the receipt log computes costs at
//! price_per_token = 10               # (all six keys; default protocol::usage::Prices)
//! worker_fee_per_token = 8
//! prompt_multiplier = 10000
//! cached_multiplier = 1000
//! completion_multiplier = 40000
//! reasoning_multiplier = 40000
//!
//! [policy]                           # which proxies to trust (ratls::config::PolicyConfig)
//! roots = ["sim-root.der"]
//! images = ["<proxy image hash>"]
//!
//! [worker_policy]                    # which workers to encrypt to (required unless
//! roots = ["sim-root.der"]           # encryption = "off")
//! images = ["<worker image hash>"]
//! rtmr3 = ["<worker runtime configuration>"]
//! ```
//! Relative paths are resolved against the config file's directory. Unknown keys are errors.
//!
//! `allowed_hosts` entries are host names or IP addresses, without port or scheme, matched
//! exactly (case-insensitively, no wildcards) against the request's `Host` and `Origin`;
//! `localhost`, `127.x.y.z` and `[::1]` are always accepted (see [`crate::serve::guard`]).
//! Listening on a non-loopback address needs the name or address clients use in this list,
//! and an `api_key`: the Host check stops browsers, not other machines. `api_key` must be
//! visible ASCII without spaces; it is never logged, and only its digest is kept once loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use measurements::Policy;
use protocol::meta::MAX_TOKENS_LIMIT;
use ratls::account::AccountKey;
use ratls::config::PolicyConfig;
use ratls::{Clock, CollateralSource, SystemClock};
use serde::{Deserialize, Serialize};

use zeroize::Zeroize;

use crate::key::{self, KeyFileError};
use crate::serve::{Access, AllowedHost, ApiKey};

/// Default local listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default proxy address.
pub const DEFAULT_PROXY: &str = "127.0.0.1:9102";
/// Default account key file.
pub const DEFAULT_KEY_FILE: &str = "client.key";
/// Largest request body the local endpoint accepts (the protocol limit, 4 MiB).
pub const DEFAULT_MAX_BODY: usize = protocol::MAX_REQUEST_BODY;

pub use ratls::service_config::ConfigError;
use ratls::service_config::{field, ServiceConfig};

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_proxy() -> String {
    DEFAULT_PROXY.into()
}
fn default_key_file() -> PathBuf {
    DEFAULT_KEY_FILE.into()
}

/// The file as written (see the module docs): the schema, from which `cocoon-host` also
/// renders client configs. Serializing writes the keys with defaults too, and leaves out the
/// optional keys that are unset.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_proxy")]
    pub proxy: String,
    #[serde(default = "default_key_file")]
    pub account_key_file: PathBuf,
    /// `cocoon-max-tokens` for requests that name no `max_tokens`; unset: up to the model's
    /// advertised `max_completion_tokens` (the proxy reserves for that many), as OpenAI
    /// generates up to the context left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cap_nano: Option<u64>,
    /// Host names or addresses the local endpoint answers to besides loopback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// If set, apps must send `Authorization: Bearer <api_key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretText>,
    /// Whether requests are sealed end to end to workers (default: required).
    #[serde(default, skip_serializing_if = "Encryption::is_required")]
    pub encryption: Encryption,
    /// Log of verified worker receipts ([`crate::receipts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts_file: Option<PathBuf>,
    /// Prices for the receipt log's costs (default [`protocol::usage::Prices::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<protocol::usage::Prices>,
    pub policy: PolicyConfig,
    /// What workers must prove to be sent a sealed request (required with encryption on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_policy: Option<PolicyConfig>,
    /// A PCCS for collateral of the proxy's and workers' quotes, used besides (and when
    /// fresher than) what their certificates embed ([`ratls::pccs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pccs: Option<attestation::PccsConfig>,
    /// The client's TON account, for `serve` to check what the chain shows charged against
    /// its receipts and to send its own charge past half its stake
    /// ([`crate::account::charge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountLink>,
}

/// `[account]` in `client.toml`.
///
/// ```toml
/// [account]
/// settings = "account.toml"   # `cocoon-client account` settings (key, owner, proxy, chain)
/// check_secs = 30             # how often serve checks the charges
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountLink {
    /// account.toml, relative to client.toml's directory.
    pub settings: PathBuf,
    #[serde(default = "AccountLink::default_check_secs")]
    pub check_secs: u64,
}

impl AccountLink {
    fn default_check_secs() -> u64 {
        30
    }
}

/// `encryption` in `client.toml`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// Every request is sealed to verified workers; a plaintext answer is an error.
    #[default]
    Required,
    /// Requests go in plaintext to the attested proxy (for upstream engines that need it).
    Off,
}

impl Encryption {
    fn is_required(&self) -> bool {
        *self == Self::Required
    }
}

/// A secret as written in the config file: `Debug` shows nothing, the text is wiped on drop.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl SecretText {
    /// The secret itself (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretText {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretText {}

impl ClientConfigFile {
    /// A config with the policy and every other key at its default.
    pub fn new(policy: PolicyConfig) -> Self {
        Self {
            listen: default_listen(),
            proxy: default_proxy(),
            account_key_file: default_key_file(),
            default_max_tokens: None,
            price_cap_nano: None,
            allowed_hosts: Vec::new(),
            api_key: None,
            encryption: Encryption::Required,
            receipts_file: None,
            prices: None,
            policy,
            worker_policy: None,
            pccs: None,
            account: None,
        }
    }
}

/// What [`ClientConfigFile::check`] validates without I/O.
#[derive(Debug)]
struct Checked {
    listen: SocketAddr,
    access: Access,
}

impl ClientConfigFile {
    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        ratls::service_config::parse(text, path)
    }

    /// Checks the fields that need no I/O.
    fn check(&self) -> Result<Checked, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            field(
                "listen",
                format!("{:?}: {e} (expected ip:port)", self.listen),
            )
        })?;
        check_proxy_addr(&self.proxy)?;
        if let Some(n) = self.default_max_tokens {
            if !(1..=MAX_TOKENS_LIMIT).contains(&n) {
                return Err(field(
                    "default_max_tokens",
                    format!("{n} outside 1..={MAX_TOKENS_LIMIT}"),
                ));
            }
        }
        let allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|h| h.parse::<AllowedHost>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| field("allowed_hosts", e.to_string()))?;
        let api_key = self
            .api_key
            .as_ref()
            .map(|k| ApiKey::new(k.expose()))
            .transpose()
            .map_err(|e| field("api_key", e.to_string()))?;
        Ok(Checked {
            listen,
            access: Access {
                allowed_hosts,
                api_key,
            },
        })
    }

    /// Validates the file and loads what it names (policy roots and manifest, the account key,
    /// created if missing), resolving relative paths against `base`.
    pub fn load(&self, base: &Path) -> Result<ServeConfig, ConfigError> {
        let Checked { listen, access } = self.check()?;
        let policy = self
            .policy
            .load(base, ratls::config::Required::by(ratls::Role::Client))?;
        let worker_policy = match (self.encryption, &self.worker_policy) {
            (Encryption::Off, _) => None,
            (Encryption::Required, None) => {
                return Err(field(
                    "worker_policy",
                    "encryption = \"required\" needs a [worker_policy] naming the workers to seal requests to (or encryption = \"off\")",
                ))
            }
            (Encryption::Required, Some(p)) => Some(p.load(
                base,
                ratls::config::Required {
                    peer: ratls::Role::Worker,
                    config: true,
                    models: false,
                },
            )?),
        };
        let receipts = match &self.receipts_file {
            Some(p) => Some(Arc::new(
                crate::receipts::ReceiptLog::open(&base.join(p), self.prices.unwrap_or_default())
                    .map_err(|e| field("receipts_file", format!("{}: {e}", p.display())))?,
            )),
            None if self.prices.is_some() => {
                return Err(field("prices", "only used with receipts_file"))
            }
            None => None,
        };
        let collateral_source = match &self.pccs {
            Some(p) => {
                let roots = policy.roots.clone();
                let source = ratls::pccs::PccsSource::new(p, base, roots, Arc::new(SystemClock))
                    .map_err(|e| field("pccs", e.to_string()))?;
                Some(Arc::new(source) as Arc<dyn CollateralSource>)
            }
            None => None,
        };
        let account = match &self.account {
            Some(link) => {
                if !(1..=86_400).contains(&link.check_secs) {
                    return Err(field("account", "check_secs must be 1..=86400"));
                }
                let path = base.join(&link.settings);
                let settings = crate::account::settings::AccountFile::read(&path)
                    .map_err(|e| field("account", e.to_string()))?;
                Some((settings, Duration::from_secs(link.check_secs)))
            }
            None => None,
        };
        let key_path = base.join(&self.account_key_file);
        let (account_key, created) = key::load_or_create(&key_path)
            .map_err(|e: KeyFileError| ConfigError::Resource(Box::new(e)))?;
        Ok(ServeConfig {
            listen,
            account,
            max_body: DEFAULT_MAX_BODY,
            access,
            key_path,
            key_created: created,
            client: ClientConfig {
                default_max_tokens: self.default_max_tokens,
                price_cap_nano: self.price_cap_nano,
                worker_policy,
                receipts,
                collateral_source,
                ..ClientConfig::new(self.proxy.clone(), Arc::new(account_key), policy)
            },
        })
    }
}

impl ServiceConfig for ClientConfigFile {
    type Valid = ServeConfig;

    fn validate(self, base: &Path) -> Result<ServeConfig, ConfigError> {
        self.load(base)
    }
}

/// Reads, parses and validates `client.toml` at `path` ([`ratls::service_config::open`]; the
/// file text, which may hold the api key, is wiped after parsing).
pub fn open(path: &Path) -> Result<ServeConfig, ConfigError> {
    Ok(ratls::service_config::open::<ClientConfigFile>(path)?.config)
}

fn check_proxy_addr(addr: &str) -> Result<(), ConfigError> {
    let ok = addr
        .rsplit_once(':')
        .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(field("proxy", format!("{addr:?}: expected host:port")))
    }
}

/// What the library needs to reach a proxy.
#[derive(Clone)]
pub struct ClientConfig {
    /// The proxy's client port, `host:port`.
    pub proxy: String,
    /// The account key presented as a TLS client certificate.
    pub account_key: Arc<AccountKey>,
    /// What the proxy's evidence must satisfy.
    pub policy: Policy,
    /// The verifier's clock (production: [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Collateral for proxies whose certificates embed none.
    pub collateral_source: Option<Arc<dyn CollateralSource>>,
    /// `cocoon-max-tokens` for requests that name no max_tokens; `None`:
    /// [`MAX_TOKENS_LIMIT`], which the proxy clamps to the model's advertised
    /// `max_completion_tokens` (so the request may generate up to what the model allows).
    pub default_max_tokens: Option<u32>,
    /// `cocoon-price-cap` on every request, if set.
    pub price_cap_nano: Option<u64>,
    /// HTTP/2 connections kept to the proxy (requests are spread over them).
    pub connections: usize,
    /// Limit for TCP connect and for the TLS handshake, each.
    pub connect_timeout: Duration,
    /// Limit for the response headers and for the gap between two stream events.
    pub idle_timeout: Duration,
    /// What workers' evidence must satisfy for requests to be encrypted end to end to them
    /// ([`crate::e2e`]). `None`: requests go in plaintext to the (attested) proxy.
    pub worker_policy: Option<Policy>,
    /// Where verified worker receipts are logged ([`crate::receipts`]).
    pub receipts: Option<Arc<crate::receipts::ReceiptLog>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("proxy", &self.proxy)
            .field("account", &self.account_key.account_id())
            .field("default_max_tokens", &self.default_max_tokens)
            .field("price_cap_nano", &self.price_cap_nano)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A config with defaults: system clock, no collateral source, 2 connections, 10 s connect
    /// and 300 s idle limits, no default max tokens (up to the model's limit), no price cap.
    pub fn new(proxy: impl Into<String>, account_key: Arc<AccountKey>, policy: Policy) -> Self {
        Self {
            proxy: proxy.into(),
            account_key,
            policy,
            clock: Arc::new(SystemClock),
            collateral_source: None,
            default_max_tokens: None,
            price_cap_nano: None,
            connections: 2,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            worker_policy: None,
            receipts: None,
        }
    }
}

/// Everything `cocoon-client serve` runs with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// `[account]`: the account settings and how often serve checks the charges.
    pub account: Option<(crate::account::settings::AccountFile, Duration)>,
    /// Request bodies above this many bytes are refused with 413.
    pub max_body: usize,
    /// Who may use the local endpoint (allowed hosts, api key).
    pub access: Access,
    /// The account key file, and whether it was created by this load.
    pub key_path: PathBuf,
    pub key_created: bool,
    pub client: ClientConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "[policy]\nimages = [\"abababababababababababababababababababababababababababababababab\"]\nrtmr3 = [\"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\"]\n";

    #[test]
    fn defaults_apply_and_unknown_keys_are_refused() {
        let c = ClientConfigFile::parse(POLICY, Path::new("c.toml")).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.proxy, DEFAULT_PROXY);
        assert_eq!(c.default_max_tokens, None);
        assert_eq!(c.price_cap_nano, None);
        assert!(c.allowed_hosts.is_empty());
        assert!(c.api_key.is_none());
        let checked = c.check().unwrap();
        assert!(checked.access.allowed_hosts.is_empty());
        assert!(checked.access.api_key.is_none());
        let e = ClientConfigFile::parse(&format!("surprise = 1\n{POLICY}"), Path::new("c.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("c.toml"), "{e}");
        assert!(ClientConfigFile::parse("listen = \"x\"", Path::new("c.toml")).is_err());
    }

    /// The file type is the schema both ways (what `cocoon-host` relies on when it renders
    /// client configs): serializing and parsing again gives the same value.
    #[test]
    fn serialization_round_trips() {
        let text = format!(
            "default_max_tokens = 300\nprice_cap_nano = 7\nallowed_hosts = [\"myhost.lan\"]\napi_key = \"sk-local-1\"\n{POLICY}"
        );
        // `new` states the same defaults as the file.
        let parsed = ClientConfigFile::parse(POLICY, Path::new("c")).unwrap();
        assert_eq!(ClientConfigFile::new(parsed.policy.clone()), parsed);
        for t in [POLICY.to_string(), text] {
            let c = ClientConfigFile::parse(&t, Path::new("c")).unwrap();
            let out = toml::to_string(&c).unwrap();
            assert_eq!(
                ClientConfigFile::parse(&out, Path::new("c")).unwrap(),
                c,
                "{out}"
            );
        }
    }

    #[test]
    fn encryption_needs_a_worker_policy_unless_off() {
        let dir =
            std::env::temp_dir().join(format!("cocoon-client-e2e-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let workers = POLICY.replace("[policy]", "[worker_policy]");
        let load = |text: &str| {
            ClientConfigFile::parse(text, Path::new("c"))
                .unwrap()
                .load(&dir)
        };
        match load(POLICY) {
            Err(ConfigError::Field { field, .. }) => assert_eq!(field, "worker_policy"),
            other => panic!("{other:?}"),
        }
        assert!(load(&format!("{POLICY}{workers}"))
            .unwrap()
            .client
            .worker_policy
            .is_some());
        let off = format!("encryption = \"off\"\n{POLICY}");
        assert!(load(&off).unwrap().client.worker_policy.is_none());
        assert!(ClientConfigFile::parse(
            &format!("encryption = \"maybe\"\n{POLICY}"),
            Path::new("c")
        )
        .is_err());
        // Written back, the default is left out and "off" is kept.
        let c = ClientConfigFile::parse(&off, Path::new("c")).unwrap();
        assert!(toml::to_string(&c)
            .unwrap()
            .contains("encryption = \"off\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pccs_section_gives_the_verifiers_a_collateral_source() {
        let dir =
            std::env::temp_dir().join(format!("cocoon-client-pccs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let off = format!("encryption = \"off\"\n{POLICY}");
        let load = |extra: &str| {
            ClientConfigFile::parse(&format!("{off}{extra}"), Path::new("c"))
                .and_then(|c| c.load(&dir))
        };
        assert!(load("").unwrap().client.collateral_source.is_none());
        let with =
            load("[pccs]\nurl = \"https://pccs.example:8081\"\ncache_dir = \"collateral\"\n")
                .unwrap();
        assert!(with.client.collateral_source.is_some());
        match load("[pccs]\nurl = \"ftp://pccs.example\"\n") {
            Err(ConfigError::Field { field, .. }) => assert_eq!(field, "pccs"),
            other => panic!("{other:?}"),
        }
        assert!(load("[pccs]\nurl = \"http://pccs\"\nsurprise = 1\n").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fields_are_validated() {
        let bad = |extra: &str, field: &str| {
            let c = ClientConfigFile::parse(&format!("{extra}\n{POLICY}"), Path::new("c")).unwrap();
            match c.check() {
                Err(ConfigError::Field { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        };
        bad("listen = \"localhost\"", "listen");
        bad("proxy = \"nohost\"", "proxy");
        bad("proxy = \":80\"", "proxy");
        bad("proxy = \"h:0\"", "proxy");
        bad("default_max_tokens = 0", "default_max_tokens");
        bad("default_max_tokens = 2000000", "default_max_tokens");
        let c = ClientConfigFile::parse(
            &format!("default_max_tokens = 64\n{POLICY}"),
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.default_max_tokens, Some(64));
        c.check().unwrap();
        bad("allowed_hosts = [\"myhost.lan:8080\"]", "allowed_hosts");
        bad("allowed_hosts = [\"http://myhost.lan\"]", "allowed_hosts");
        bad("allowed_hosts = [\"*.lan\"]", "allowed_hosts");
        bad("api_key = \"\"", "api_key");
        bad("api_key = \"two words\"", "api_key");
    }

    #[test]
    fn access_fields_are_loaded_and_the_key_is_not_shown() {
        let text = format!(
            "allowed_hosts = [\"MyHost.lan\", \"192.168.1.5\"]\napi_key = \"sk-local-1\"\n{POLICY}"
        );
        let c = ClientConfigFile::parse(&text, Path::new("c")).unwrap();
        let checked = c.check().unwrap();
        assert_eq!(
            checked.access.allowed_hosts,
            vec![
                AllowedHost::Name("myhost.lan".into()),
                AllowedHost::Ip([192, 168, 1, 5].into())
            ]
        );
        let key = checked.access.api_key.as_ref().unwrap();
        assert!(key.matches(b"sk-local-1"));
        assert!(!key.matches(b"sk-local-2"));
        let shown = format!("{c:?} {checked:?}");
        assert!(!shown.contains("sk-local-1"), "{shown}");
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<SecretText>();
    }
}
