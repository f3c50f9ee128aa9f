//! cocoon-client: the library apps use to reach a cocoon proxy, and the local
//! OpenAI-compatible endpoint (`cocoon-client serve`) built on it.
//!
//! # Trust boundary
//!
//! The client is where attestation is enforced for end users. A prompt leaves this process only
//! over a TLS 1.3 connection whose server certificate carried TDX evidence that passed the
//! client's own [`measurements::Policy`] (pinned roots, pinned proxy image hashes or a signed
//! manifest, TCB status, no debug TD) — checked by [`ratls::RaTlsServerVerifier`] during the
//! handshake of *every* connection (resumption is disabled), and limited to peers that claim the
//! proxy role. A connection that fails verification never carries a byte of a request; the
//! caller gets an [`ApiError`] of kind [`ErrorKind::Attestation`] whose message names the reason
//! ("attestation rejected: image hash … not among the 1 allowed by policy").
//!
//! Everything the proxy sends back (status, headers, event stream) is untrusted input: event
//! sizes are bounded by [`protocol::sse::Decoder`], error bodies are read up to a limit, and
//! malformed chunks become typed errors, never panics. The account key (Ed25519, see
//! [`ratls::account`]) authenticates the client to the proxy; it is not evidence of anything.
//!
//! Prompts, completions and the account key are never logged; logs carry request ids, models,
//! statuses and token counts only.
//!
//! The local endpoint is a second boundary: it spends the account, and any web page the user
//! visits can send it requests. [`serve::guard`] admits only loopback `Host` names (plus the
//! configured `allowed_hosts`), refuses cross-origin browser requests and never sends CORS
//! headers, requires `Content-Type: application/json` on POST bodies and, with `api_key` set,
//! a bearer token. Secrets held here (the key file's seed text, the api key) are wiped on drop.
//!
//! # Layers
//! * [`config`]: `client.toml` (serde, `deny_unknown_fields`) → runtime [`ClientConfig`] /
//!   [`config::ServeConfig`]; [`key`] loads or creates the account key file (mode 0600).
//! * [`Client`] ([`client`]): a pool of attested HTTP/2 connections to the proxy; request
//!   metadata headers ([`protocol::meta`]); streams of [`protocol::sse::Event`]s.
//! * [`openai`]: the OpenAI shapes — request fields the client reads ([`RequestFields`]), the
//!   relay of a stream to an app ([`openai::Relay`]) and aggregation of a stream into one JSON
//!   response ([`openai::Aggregator`]).
//! * [`serve`]: the local HTTP/1.1 server speaking the OpenAI API for apps; [`serve::guard`]
//!   decides who may call it.
//! * [`account`]: the client's TON account (`cocoon-client account …`): a Cocoon wallet and the
//!   client contract it owns, driven through `tonsim::TonChain` (toncenter v2); settings in
//!   `account.toml` ([`account::settings`]). Depends on `cocoon-tonsim` without its `local`
//!   feature, so no TVM library is linked.

#![forbid(unsafe_code)]

pub mod account;
pub mod client;
pub mod config;
mod conn;
pub mod e2e;
pub mod key;
pub mod openai;
pub mod receipts;
pub mod serve;

pub use client::{Client, EventStream, ProxyInfo, StreamItem};
pub use config::{ClientConfig, ConfigError};
pub use openai::RequestFields;
pub use protocol::{ApiError, ErrorKind};
