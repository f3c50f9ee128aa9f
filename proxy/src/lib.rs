//! cocoon-proxy: attests workers, authenticates client accounts, routes requests to workers
//! on metadata only, relays the response streams and accounts usage.
//!
//! # Data flow
//!
//! ```text
//!  client ──TLS 1.3 (proxy: RA-TLS cert, client: account cert)──▶ client port
//!          HTTP/2 or HTTP/1.1, OpenAI JSON body + cocoon-* metadata headers
//!                                   │ route on RequestMeta, reserve, pick a worker
//!                                   ▼
//!  worker ──mutual RA-TLS 1.3, worker dials in──▶ worker port; the proxy is the HTTP/2
//!          client on that stream: Hello → Registration, then one stream per request
//! ```
//!
//! * [`workers`]: the worker port, RA-TLS verification of workers, registration.
//! * [`registry`]: registered workers, capacity (requests and tokens), health, selection.
//! * [`queue`]: admission to a worker slot, the bounded per-model queue with a deadline.
//! * [`relay`]: forwarding, retry before the first byte, SSE relay, billing.
//! * [`api`]: the client port and its routes; [`admin`]: `/stats`, `/jsonstats`, `/metrics`;
//!   [`health`]: `/healthz` and `/readyz` on both.
//! * [`limits`]: connection caps, deadlines, the body budget, refusal codes; [`admission`]: the
//!   funds check before the body and the bounded body read; [`funds`]: reservations.
//! * [`response`]: the response body type and the JSON/error responses ([`protocol::response`]).
//! * [`state`]: what every handler shares; [`listen`]: the accept loop of every port;
//!   `coalesce`: one socket write per runtime pass on client connections.
//! * [`ledger`]: the accounting seam ([`ledger::Ledger`]; in memory, or durable in redb);
//!   [`keystore`]: where Kp and the wallet key live.
//! * [`payments`]: settles the durable ledger on TON (anchors, charge and payout vouchers).
//! * [`config`]: the TOML config; [`server`]: start and shutdown. The proxy's RA-TLS
//!   certificate is a [`ratls::Identity`] with [`claims`] (issued and renewed there).
//!
//! # Trust boundary
//!
//! * Workers are untrusted until their RA-TLS evidence passes the configured worker policy
//!   (roots, image hashes, TCB status, TD attributes — a debug TD is refused) and they claim
//!   the worker role. Everything a worker sends afterwards (registration, status codes, the
//!   event stream, usage) comes from attested code but is still treated as untrusted input:
//!   bounded sizes, validated registration, usage charged at most the reservation.
//! * Clients are not TEEs: the account certificate proves possession of an account key;
//!   balances decide what an account may spend. Client metadata headers are validated by
//!   [`protocol::RequestMeta::from_headers`].
//! * Request bodies (prompts) and response streams (completions) pass through the proxy's
//!   memory: TLS terminates inside the proxy TEE, and the body is buffered (≤ 4 MiB) so a
//!   request can be retried on another worker. The proxy never parses request bodies and
//!   never logs bodies or completions; it scans the response stream only to find the
//!   `cocoon-usage` event (and event boundaries). End-to-end encryption from the client to the worker's attested key
//!   is future work; until then the proxy TEE sees plaintext in memory.
//! * A request whose client leaves is stopped at its worker on the proxy's cancel and billed
//!   for the work done ([`relay`], docs/threat-model.md); one cut by a worker failure is not
//!   billed (no usage report arrives).
//!
//! Spec references: the wire protocol is [`protocol`] (DESIGN.md "Wire"); RA-TLS is
//! [`ratls`].

pub mod admin;
pub mod admission;
pub mod api;
mod coalesce;
pub mod config;
pub mod funds;
pub mod health;
pub mod keystore;
pub mod ledger;
pub mod limits;
pub mod link;
pub mod listen;
pub mod payments;
pub mod queue;
pub mod record;
pub mod registry;
pub mod relay;
pub mod response;
pub mod running;
pub mod server;
pub mod stall;
pub mod state;
pub mod stats;
pub mod workers;

pub use config::{LoadedConfig, ProxyConfig};
pub use ledger::{Ledger, MemoryLedger, UsageRecord};
pub use server::{Proxy, RunningProxy, StartError};
pub use state::State;

/// The claims in the proxy's RA-TLS certificate: role proxy, the protocol version, the
/// proxy's `name`.
pub fn claims(name: &str) -> ratls::Claims {
    ratls::Claims::new(ratls::Role::Proxy, protocol::PROTOCOL_VERSION).with_extra("name", name)
}

/// Exit codes of the `cocoon-proxy` binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Clean shutdown after SIGTERM or SIGINT.
    Clean = 0,
    /// Any other failure (listener, runtime).
    Other = 1,
    /// The config file is unreadable or invalid.
    Config = 2,
    /// The TEE is unavailable (no quote, no certificate).
    Tee = 3,
    /// The ledger or its key store cannot be used (modified file, wrong key or passphrase,
    /// unreadable); the message names what failed.
    Ledger = 4,
    /// Payments on: the chain shows an anchor or a charge this ledger never made (a rolled-back
    /// or cloned proxy); the proxy stopped serving.
    Rollback = 5,
}
