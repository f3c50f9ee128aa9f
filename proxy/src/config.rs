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
//! worker_idle_timeout_secs = 30      # no byte from a worker for this long: timeout (crate::relay)
//! handshake_timeout_secs = 10        # TLS handshake and registration of a new connection
//! worker_token_budget_percent = 100  # tokens in flight per worker, % of capacity x max_context
//! queue_max_per_model = 64           # requests waiting for a worker slot, per model (429 beyond)
//! queue_timeout_secs = 60            # longest wait in that queue (then 503)
//! shutdown_drain_secs = 30           # SIGTERM: streams may finish for this long, then stop (work done billed) and end with an error
//!
//! # client-port limits (optional, all below are defaults; see crate::limits)
//! client_max_connections = 1024      # open client connections (TCP accepted) in total
//! client_max_connections_per_ip = 64 # open client connections from one peer IP address
//! client_header_timeout_secs = 10    # HTTP/1.1: a request head must arrive within this
//! client_idle_timeout_secs = 60      # a connection with no request in progress is closed
//! client_body_timeout_secs = 30      # the whole request body must arrive within this (408)
//! client_stall_secs = 60             # a client that takes nothing of its stream this long: cut (crate::relay)
//! client_h2_max_streams = 32         # HTTP/2 concurrent streams per client connection
//! client_h2_stream_window_bytes = 262144      # HTTP/2 receive window per stream
//! client_h2_connection_window_bytes = 1048576 # HTTP/2 receive window per connection
//! client_max_header_bytes = 16384    # HTTP/2 header list / HTTP/1.1 read buffer (>= 8192)
//! client_body_budget_bytes = 67108864 # request bodies buffered at once, all requests (503)
//! client_abandon_burst = 32          # streams an account may abandon before billing (0 = no limit) (429)
//! client_abandon_interval_secs = 2   # and one more per this many seconds (crate::limits::Abandons)
//!
//! record_forwarded = "forwarded.log" # optional development test hook (crate::record); sim only
//!
//! [prices]                           # optional, each field optional (Cocoon's params v3)
//! price_per_token = 10               # nano-TON per adjusted token, paid by clients
//! worker_fee_per_token = 8           # nano-TON per adjusted token, earned by the worker
//! prompt_multiplier = 10000          # per class, 10000 = 1.0 (protocol::usage::Prices)
//! cached_multiplier = 1000
//! completion_multiplier = 40000
//! reasoning_multiplier = 40000
//!
//! [accounts]                         # optional
//! default_balance_nano = 1000000000000   # development: unknown accounts start with this
//! balances = { "<account id hex>" = 5000000000 }
//!
//! [ledger]                           # optional: the durable ledger (else in memory)
//! path = "ledger.redb"               # opening balances above apply to new accounts only
//!
//! [keys]                             # required with [ledger]: Kp and the wallet key
//! dir = "keys"                       # proxy::keystore::EncryptedFileStore (development)
//! passphrase_file = "keys.pass"
//!
//! [payments]                         # optional, needs [ledger]: settle on TON (crate::payments)
//! chain_url = "https://toncenter.com/api/v2"
//! params_boc = "<hex>"               # the network's params v3; prices come from here
//! owner = "<proxy contract owner>"
//! root = "<root contract>"
//!
//! [tee]                              # attestation::config::TeeConfig
//! kind = "sim"
//! platform_file = "sim-platform.json"
//! registers_file = "proxy-registers.json"
//!
//! [policy]                           # ratls::config::PolicyConfig: worker images accepted
//! roots = ["sim-root.der"]
//! images = ["<worker image hash hex>"]
//! rtmr3 = ["<worker RTMR3 hex>"]      # required: the worker's runtime configuration
//! models = { "smollm2" = "<sha256 hex>" }   # required: models a worker may register
//! ```
//! Relative paths are resolved against the config file's directory.
//!
//! Every default above is one `DEFAULT_*` constant of this module, used only by
//! [`ProxyConfig::local`] (and [`ClientLimits::default`]); [`ConfigFile::into_loaded`] starts
//! from those values and applies what the file sets. A unit test checks that this example
//! states the same numbers. [`ConfigFile`] is also `Serialize` (only the keys set are written):
//! `cocoon-host` renders proxy configs from it. Loading is the shared
//! [`ratls::service_config`] helper. The client-port limits bound what an unauthenticated or
//! unfunded peer can make the proxy hold (docs/threat-model.md, "Limits that protect the
//! proxy"): a refused connection is closed right after `accept`; a refused request gets an
//! OpenAI-style error; each refusal is counted by reason in `/metrics` and `/jsonstats`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use attestation::config::TeeConfig;
use measurements::Policy;
use protocol::usage::Prices;
use ratls::config::PolicyConfig;
use serde::{Deserialize, Serialize};

pub use ratls::service_config::ConfigError;
use ratls::service_config::{field, ServiceConfig};

/// Largest request body the proxy accepts from a client (413 above).
pub const MAX_BODY_BYTES: usize = protocol::MAX_REQUEST_BODY;

/// Upper bound for `max_prompt_tokens`.
pub const MAX_PROMPT_TOKENS_LIMIT: u32 = 1_000_000;

/// Default `worker_keepalive_interval_ms`.
pub const DEFAULT_WORKER_KEEPALIVE_INTERVAL_MS: u64 = 500;
/// Default `worker_keepalive_timeout_ms`.
pub const DEFAULT_WORKER_KEEPALIVE_TIMEOUT_MS: u64 = 1000;
/// Default `worker_idle_timeout_secs`: six missed stream keepalives of a worker (it sends one
/// every 5 s while it has nothing else to send, e.g. during prompt processing).
pub const DEFAULT_WORKER_IDLE_TIMEOUT_SECS: u64 = 30;
/// Default `worker_token_budget_percent`.
pub const DEFAULT_WORKER_TOKEN_BUDGET_PERCENT: u32 = 100;
/// Default `queue_max_per_model`.
pub const DEFAULT_QUEUE_MAX_PER_MODEL: u32 = 64;
/// Default `queue_timeout_secs`.
pub const DEFAULT_QUEUE_TIMEOUT_SECS: u64 = 60;
/// Default `shutdown_drain_secs`.
pub const DEFAULT_SHUTDOWN_DRAIN_SECS: u64 = 30;
/// Largest `queue_max_per_model`.
pub const MAX_QUEUE_PER_MODEL: u32 = 100_000;
/// Largest `queue_timeout_secs`, `worker_idle_timeout_secs` and `shutdown_drain_secs`.
pub const MAX_WAIT_SECS: u64 = 3600;
/// Default `handshake_timeout_secs`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default `client_max_connections`.
pub const DEFAULT_CLIENT_MAX_CONNECTIONS: u32 = 1024;
/// Default `client_max_connections_per_ip`.
pub const DEFAULT_CLIENT_MAX_CONNECTIONS_PER_IP: u32 = 64;
/// Default `client_header_timeout_secs`.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default `client_idle_timeout_secs`.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Default `client_body_timeout_secs`.
pub const DEFAULT_CLIENT_BODY_TIMEOUT_SECS: u64 = 30;
/// Default `client_stall_secs` (nginx's `send_timeout` default, the same idea).
pub const DEFAULT_CLIENT_STALL_SECS: u64 = 60;
/// Default `client_h2_max_streams`.
pub const DEFAULT_CLIENT_H2_MAX_STREAMS: u32 = 32;
/// Default `client_h2_stream_window_bytes`.
pub const DEFAULT_CLIENT_H2_STREAM_WINDOW_BYTES: u32 = 256 << 10;
/// Default `client_h2_connection_window_bytes`.
pub const DEFAULT_CLIENT_H2_CONNECTION_WINDOW_BYTES: u32 = 1 << 20;
/// Default `client_max_header_bytes`.
pub const DEFAULT_CLIENT_MAX_HEADER_BYTES: u32 = 16 << 10;
/// Default `client_body_budget_bytes`: sixteen bodies of the largest size.
pub const DEFAULT_CLIENT_BODY_BUDGET_BYTES: u64 = 64 << 20;
/// Default `client_abandon_burst`: an app that gives up on a burst of streams at once (a page
/// closed with many requests in flight) stays within it.
pub const DEFAULT_CLIENT_ABANDON_BURST: u32 = 32;
/// Default `client_abandon_interval_secs`: 30 more abandoned streams a minute.
pub const DEFAULT_CLIENT_ABANDON_INTERVAL_SECS: u64 = 2;
/// Largest `client_abandon_burst`.
pub const MAX_CLIENT_ABANDON_BURST: u32 = 100_000;

/// Smallest `client_max_header_bytes` (hyper's HTTP/1.1 read buffer cannot be smaller).
pub const MIN_CLIENT_MAX_HEADER_BYTES: u32 = 8192;
/// Largest `client_max_header_bytes`.
pub const MAX_CLIENT_MAX_HEADER_BYTES: u32 = 1 << 20;
/// Largest HTTP/2 window (RFC 9113 section 6.9.1: 2^31 - 1).
pub const MAX_H2_WINDOW_BYTES: u32 = (1 << 31) - 1;
/// Smallest HTTP/2 window (RFC 9113 section 6.9.2 initial value).
pub const MIN_H2_WINDOW_BYTES: u32 = 65_535;

/// The `[prices]` section: every field optional, defaulting to [`Prices::default`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PricesFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_fee_per_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_multiplier: Option<u32>,
}

impl PricesFile {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PricesFile {
    fn resolve(&self) -> Result<Prices, ConfigError> {
        let d = Prices::default();
        let p = Prices {
            price_per_token: self.price_per_token.unwrap_or(d.price_per_token),
            worker_fee_per_token: self.worker_fee_per_token.unwrap_or(d.worker_fee_per_token),
            prompt_multiplier: self.prompt_multiplier.unwrap_or(d.prompt_multiplier),
            cached_multiplier: self.cached_multiplier.unwrap_or(d.cached_multiplier),
            completion_multiplier: self
                .completion_multiplier
                .unwrap_or(d.completion_multiplier),
            reasoning_multiplier: self.reasoning_multiplier.unwrap_or(d.reasoning_multiplier),
        };
        if p.worker_fee_per_token > p.price_per_token {
            return Err(field(
                "prices.worker_fee_per_token",
                format!(
                    "{} is more than price_per_token {}",
                    p.worker_fee_per_token, p.price_per_token
                ),
            ));
        }
        Ok(p)
    }
}

/// The `[accounts]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsFile {
    /// Development: an account seen for the first time is created with this balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_balance_nano: Option<u64>,
    /// Opening balances by account id (hex Ed25519 public key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub balances: BTreeMap<String, u64>,
}

impl AccountsFile {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The `[ledger]` section: where the durable ledger lives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// The redb file (created on first start).
    pub path: PathBuf,
}

/// The `[keys]` section: the development key store (proxy::keystore).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// Directory of the encrypted key files (created 0700).
    pub dir: PathBuf,
    /// File holding the passphrase the keys are encrypted under.
    pub passphrase_file: PathBuf,
}

/// The durable ledger and its key store (validated; paths resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerSettings {
    pub path: PathBuf,
    pub keys_dir: PathBuf,
    pub passphrase_file: PathBuf,
}

/// The config file as written (the schema: `cocoon-host` renders proxy configs from it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub name: String,
    pub worker_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_prompt_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_keepalive_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_keepalive_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_idle_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_token_budget_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_per_model: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_drain_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_connections_per_ip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_header_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_body_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_stall_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_h2_max_streams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_h2_stream_window_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_h2_connection_window_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_header_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_body_budget_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_abandon_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_abandon_interval_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "PricesFile::is_empty")]
    pub prices: PricesFile,
    #[serde(default, skip_serializing_if = "AccountsFile::is_empty")]
    pub accounts: AccountsFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payments: Option<crate::payments::PaymentsConfig>,
    /// Development test hook: a file that records every byte forwarded ([`crate::record`]);
    /// refused unless `tee.kind = "sim"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_forwarded: Option<PathBuf>,
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
    /// The longest silence tolerated from a worker serving a request: before its response
    /// headers (then the request is retried elsewhere) and between bytes of its stream (then
    /// the stream ends with a `timeout` error event). SSE comments (keepalives) count.
    pub worker_idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A worker's budget of tokens in flight, in percent of its capacity × its largest
    /// advertised `max_context` (see [`crate::queue`]).
    pub worker_token_budget_percent: u32,
    /// The per-model admission queue (see [`crate::queue`]).
    pub queue: QueueLimits,
    /// After SIGTERM/SIGINT: how long streams in progress may finish before each remaining
    /// one is ended with a `service_unavailable` error event.
    pub shutdown_drain: Duration,
    /// Largest client request body ([`MAX_BODY_BYTES`]).
    pub max_body_bytes: usize,
    /// Limits of the client port (see the module docs).
    pub client: ClientLimits,
    /// Development test hook: record every forwarded byte here ([`crate::record`]).
    pub record_forwarded: Option<PathBuf>,
}

/// The per-model admission queue: how many requests may wait for a worker slot, and for how
/// long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Requests waiting per model; one more gets 429 with `Retry-After`. 0: no queue (a
    /// request that finds no free slot gets 429 at once).
    pub max_per_model: u32,
    /// The longest a request waits; then 503 `service_unavailable` with `Retry-After`.
    pub timeout: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_per_model: DEFAULT_QUEUE_MAX_PER_MODEL,
            timeout: Duration::from_secs(DEFAULT_QUEUE_TIMEOUT_SECS),
        }
    }
}

/// The client-port limits (validated; defaults in the `DEFAULT_CLIENT_*` constants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open client connections in total; more are closed right after `accept`.
    pub max_connections: u32,
    /// Open client connections from one IP address; more are closed right after `accept`.
    pub max_connections_per_ip: u32,
    /// HTTP/1.1: the request head must arrive within this (else the connection is closed).
    pub header_timeout: Duration,
    /// A connection without a request in progress for this long is closed (also one that
    /// never sends a request).
    pub idle_timeout: Duration,
    /// The whole request body must arrive within this (else 408).
    pub body_timeout: Duration,
    /// A client that takes nothing of a response stream for this long (its HTTP/2 window or
    /// TCP buffer stays full) has the stream ended and its worker slot freed
    /// ([`crate::relay`]).
    pub stall_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per client connection.
    pub h2_max_streams: u32,
    /// HTTP/2 receive window per stream.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 receive window per connection.
    pub h2_connection_window_bytes: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE and the HTTP/1.1 read buffer bound.
    pub max_header_bytes: u32,
    /// Request-body bytes buffered at once across all requests (else 503 + Retry-After).
    pub body_budget_bytes: u64,
    /// Streams an account may abandon before they were billed, in a burst (0: no limit;
    /// [`crate::limits::Abandons`]).
    pub abandon_burst: u32,
    /// One more abandoned stream is allowed per this interval.
    pub abandon_interval: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_CLIENT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_CLIENT_MAX_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_secs(DEFAULT_CLIENT_HEADER_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_CLIENT_IDLE_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(DEFAULT_CLIENT_BODY_TIMEOUT_SECS),
            stall_timeout: Duration::from_secs(DEFAULT_CLIENT_STALL_SECS),
            h2_max_streams: DEFAULT_CLIENT_H2_MAX_STREAMS,
            h2_stream_window_bytes: DEFAULT_CLIENT_H2_STREAM_WINDOW_BYTES,
            h2_connection_window_bytes: DEFAULT_CLIENT_H2_CONNECTION_WINDOW_BYTES,
            max_header_bytes: DEFAULT_CLIENT_MAX_HEADER_BYTES,
            body_budget_bytes: DEFAULT_CLIENT_BODY_BUDGET_BYTES,
            abandon_burst: DEFAULT_CLIENT_ABANDON_BURST,
            abandon_interval: Duration::from_secs(DEFAULT_CLIENT_ABANDON_INTERVAL_SECS),
        }
    }
}

impl ClientLimits {
    fn validate(&self, max_body_bytes: usize) -> Result<(), ConfigError> {
        for (name, d) in [
            ("client_header_timeout_secs", self.header_timeout),
            ("client_idle_timeout_secs", self.idle_timeout),
            ("client_body_timeout_secs", self.body_timeout),
            ("client_stall_secs", self.stall_timeout),
            ("client_abandon_interval_secs", self.abandon_interval),
        ] {
            if d.is_zero() {
                return Err(field(name, "must be positive"));
            }
        }
        for (name, d) in [
            ("client_stall_secs", self.stall_timeout),
            ("client_abandon_interval_secs", self.abandon_interval),
        ] {
            if d > Duration::from_secs(MAX_WAIT_SECS) {
                return Err(field(
                    name,
                    format!("{}s is more than {MAX_WAIT_SECS}s", d.as_secs()),
                ));
            }
        }
        if self.abandon_burst > MAX_CLIENT_ABANDON_BURST {
            return Err(field(
                "client_abandon_burst",
                format!(
                    "{} is more than {MAX_CLIENT_ABANDON_BURST}",
                    self.abandon_burst
                ),
            ));
        }
        for (name, v) in [
            ("client_max_connections", self.max_connections),
            ("client_max_connections_per_ip", self.max_connections_per_ip),
            ("client_h2_max_streams", self.h2_max_streams),
        ] {
            if v == 0 {
                return Err(field(name, "must be positive"));
            }
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err(field(
                "client_max_connections_per_ip",
                format!(
                    "{} exceeds client_max_connections {}",
                    self.max_connections_per_ip, self.max_connections
                ),
            ));
        }
        for (name, v) in [
            ("client_h2_stream_window_bytes", self.h2_stream_window_bytes),
            (
                "client_h2_connection_window_bytes",
                self.h2_connection_window_bytes,
            ),
        ] {
            if !(MIN_H2_WINDOW_BYTES..=MAX_H2_WINDOW_BYTES).contains(&v) {
                return Err(field(
                    name,
                    format!("{v} outside {MIN_H2_WINDOW_BYTES}..={MAX_H2_WINDOW_BYTES}"),
                ));
            }
        }
        if !(MIN_CLIENT_MAX_HEADER_BYTES..=MAX_CLIENT_MAX_HEADER_BYTES)
            .contains(&self.max_header_bytes)
        {
            return Err(field(
                "client_max_header_bytes",
                format!(
                    "{} outside {MIN_CLIENT_MAX_HEADER_BYTES}..={MAX_CLIENT_MAX_HEADER_BYTES}",
                    self.max_header_bytes
                ),
            ));
        }
        if self.body_budget_bytes < max_body_bytes as u64 {
            return Err(field(
                "client_body_budget_bytes",
                format!(
                    "{} is below the largest request body ({max_body_bytes} bytes)",
                    self.body_budget_bytes
                ),
            ));
        }
        Ok(())
    }
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
            worker_keepalive_interval: Duration::from_millis(DEFAULT_WORKER_KEEPALIVE_INTERVAL_MS),
            worker_keepalive_timeout: Duration::from_millis(DEFAULT_WORKER_KEEPALIVE_TIMEOUT_MS),
            worker_idle_timeout: Duration::from_secs(DEFAULT_WORKER_IDLE_TIMEOUT_SECS),
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            worker_token_budget_percent: DEFAULT_WORKER_TOKEN_BUDGET_PERCENT,
            queue: QueueLimits::default(),
            shutdown_drain: Duration::from_secs(DEFAULT_SHUTDOWN_DRAIN_SECS),
            max_body_bytes: MAX_BODY_BYTES,
            client: ClientLimits::default(),
            record_forwarded: None,
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
                    return Err(field(*name, format!("{a} is also {other}")));
                }
            }
        }
        for (name, d) in [
            (
                "worker_keepalive_interval_ms",
                self.worker_keepalive_interval,
            ),
            ("worker_keepalive_timeout_ms", self.worker_keepalive_timeout),
            ("worker_idle_timeout_secs", self.worker_idle_timeout),
            ("handshake_timeout_secs", self.handshake_timeout),
            ("queue_timeout_secs", self.queue.timeout),
        ] {
            if d.is_zero() {
                return Err(field(name, "must be positive"));
            }
        }
        for (name, d) in [
            ("worker_idle_timeout_secs", self.worker_idle_timeout),
            ("queue_timeout_secs", self.queue.timeout),
            ("shutdown_drain_secs", self.shutdown_drain),
        ] {
            if d > Duration::from_secs(MAX_WAIT_SECS) {
                return Err(field(
                    name,
                    format!("{}s is more than {MAX_WAIT_SECS}s", d.as_secs()),
                ));
            }
        }
        if !(1..=100).contains(&self.worker_token_budget_percent) {
            return Err(field(
                "worker_token_budget_percent",
                format!("{} outside 1..=100", self.worker_token_budget_percent),
            ));
        }
        if self.queue.max_per_model > MAX_QUEUE_PER_MODEL {
            return Err(field(
                "queue_max_per_model",
                format!(
                    "{} is more than {MAX_QUEUE_PER_MODEL}",
                    self.queue.max_per_model
                ),
            ));
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
        self.client.validate(self.max_body_bytes)
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
    /// SHA-256 of the config file's bytes (all zero when built from text in code): what a
    /// simulated process measures into RTMR3 ([`TeeConfig::open_for_config`]).
    pub config_sha256: [u8; 32],
    /// The durable ledger (`None`: in memory).
    pub ledger: Option<LedgerSettings>,
    /// Settlement on TON (`None`: off).
    pub payments: Option<crate::payments::PaymentsSettings>,
}

impl ConfigFile {
    /// A config with the required keys and every optional one unset (the defaults apply).
    pub fn new(
        name: impl Into<String>,
        [worker_listen, client_listen, admin_listen]: [SocketAddr; 3],
        max_prompt_tokens: u32,
        tee: TeeConfig,
        policy: PolicyConfig,
    ) -> Self {
        Self {
            name: name.into(),
            worker_listen,
            client_listen,
            admin_listen,
            max_prompt_tokens,
            worker_keepalive_interval_ms: None,
            worker_keepalive_timeout_ms: None,
            worker_idle_timeout_secs: None,
            handshake_timeout_secs: None,
            worker_token_budget_percent: None,
            queue_max_per_model: None,
            queue_timeout_secs: None,
            shutdown_drain_secs: None,
            client_max_connections: None,
            client_max_connections_per_ip: None,
            client_header_timeout_secs: None,
            client_idle_timeout_secs: None,
            client_body_timeout_secs: None,
            client_stall_secs: None,
            client_h2_max_streams: None,
            client_h2_stream_window_bytes: None,
            client_h2_connection_window_bytes: None,
            client_max_header_bytes: None,
            client_body_budget_bytes: None,
            client_abandon_burst: None,
            client_abandon_interval_secs: None,
            prices: PricesFile::default(),
            accounts: AccountsFile::default(),
            ledger: None,
            keys: None,
            payments: None,
            record_forwarded: None,
            tee,
            policy,
        }
    }

    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        ratls::service_config::parse(text, path)
    }

    /// Validates into runtime types; the policy's files are read relative to `base_dir`.
    /// Every key the file leaves out keeps its value in [`ProxyConfig::local`] (the defaults).
    pub fn into_loaded(self, base_dir: &Path) -> Result<LoadedConfig, ConfigError> {
        let d = ProxyConfig::local(&self.name);
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let proxy = ProxyConfig {
            name: self.name,
            worker_listen: self.worker_listen,
            client_listen: self.client_listen,
            admin_listen: self.admin_listen,
            max_prompt_tokens: self.max_prompt_tokens,
            prices: self.prices.resolve()?,
            accounts: AccountsConfig {
                default_balance_nano: self.accounts.default_balance_nano,
                balances: self.accounts.balances,
            },
            worker_keepalive_interval: ms(
                self.worker_keepalive_interval_ms,
                d.worker_keepalive_interval,
            ),
            worker_keepalive_timeout: ms(
                self.worker_keepalive_timeout_ms,
                d.worker_keepalive_timeout,
            ),
            worker_idle_timeout: secs(self.worker_idle_timeout_secs, d.worker_idle_timeout),
            handshake_timeout: secs(self.handshake_timeout_secs, d.handshake_timeout),
            worker_token_budget_percent: self
                .worker_token_budget_percent
                .unwrap_or(d.worker_token_budget_percent),
            queue: QueueLimits {
                max_per_model: self.queue_max_per_model.unwrap_or(d.queue.max_per_model),
                timeout: secs(self.queue_timeout_secs, d.queue.timeout),
            },
            shutdown_drain: secs(self.shutdown_drain_secs, d.shutdown_drain),
            max_body_bytes: d.max_body_bytes,
            client: ClientLimits {
                max_connections: self
                    .client_max_connections
                    .unwrap_or(d.client.max_connections),
                max_connections_per_ip: self
                    .client_max_connections_per_ip
                    .unwrap_or(d.client.max_connections_per_ip),
                header_timeout: secs(self.client_header_timeout_secs, d.client.header_timeout),
                idle_timeout: secs(self.client_idle_timeout_secs, d.client.idle_timeout),
                body_timeout: secs(self.client_body_timeout_secs, d.client.body_timeout),
                stall_timeout: secs(self.client_stall_secs, d.client.stall_timeout),
                h2_max_streams: self
                    .client_h2_max_streams
                    .unwrap_or(d.client.h2_max_streams),
                h2_stream_window_bytes: self
                    .client_h2_stream_window_bytes
                    .unwrap_or(d.client.h2_stream_window_bytes),
                h2_connection_window_bytes: self
                    .client_h2_connection_window_bytes
                    .unwrap_or(d.client.h2_connection_window_bytes),
                max_header_bytes: self
                    .client_max_header_bytes
                    .unwrap_or(d.client.max_header_bytes),
                body_budget_bytes: self
                    .client_body_budget_bytes
                    .unwrap_or(d.client.body_budget_bytes),
                abandon_burst: self.client_abandon_burst.unwrap_or(d.client.abandon_burst),
                abandon_interval: secs(
                    self.client_abandon_interval_secs,
                    d.client.abandon_interval,
                ),
            },
            record_forwarded: self.record_forwarded.map(|p| base_dir.join(p)),
        };
        proxy.validate()?;
        if matches!(self.tee, TeeConfig::Tdx { .. }) {
            self.policy.check_production()?;
            if proxy.record_forwarded.is_some() {
                return Err(field(
                    "record_forwarded",
                    "a development test hook, refused on real TDX",
                ));
            }
        }
        let worker_policy = self
            .policy
            .load(base_dir, ratls::config::Required::by(ratls::Role::Proxy))?;
        let payments = match &self.payments {
            None => None,
            Some(p) => {
                let settings = p.validate().map_err(|e| field("payments", e.to_string()))?;
                if self.ledger.is_none() {
                    return Err(field(
                        "payments",
                        "needs [ledger]: vouchers are signed only for durable counts",
                    ));
                }
                if !self.prices.is_empty() {
                    return Err(field(
                        "prices",
                        "with [payments] the prices are the network's (params_boc); remove [prices]",
                    ));
                }
                Some(settings)
            }
        };
        let mut proxy = proxy;
        if let Some(p) = &payments {
            proxy.prices = Prices::of_params(&p.params);
        }
        let ledger = match (self.ledger, self.keys) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(field(
                    "keys",
                    "required with [ledger]: the ledger is keyed by the proxy key Kp",
                ))
            }
            (None, Some(_)) => return Err(field("keys", "only used with [ledger]")),
            (Some(l), Some(k)) => Some(LedgerSettings {
                path: base_dir.join(l.path),
                keys_dir: base_dir.join(k.dir),
                passphrase_file: base_dir.join(k.passphrase_file),
            }),
        };
        Ok(LoadedConfig {
            proxy,
            tee: self.tee,
            worker_policy,
            base_dir: base_dir.to_path_buf(),
            config_sha256: [0; 32],
            ledger,
            payments,
        })
    }
}

impl ServiceConfig for ConfigFile {
    type Valid = LoadedConfig;

    fn validate(self, base: &Path) -> Result<LoadedConfig, ConfigError> {
        self.into_loaded(base)
    }
}

/// Reads, parses and validates the config file at `path` ([`ratls::service_config::open`]).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let opened = ratls::service_config::open::<ConfigFile>(path)?;
    Ok(LoadedConfig {
        config_sha256: opened.sha256,
        ..opened.config
    })
}

#[cfg(test)]
mod tests;
