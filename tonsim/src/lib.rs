//! A local TON chain that runs Cocoon's real compiled contracts.
//!
//! Purpose: test what cocoon sends to its payment contracts (built by the `ton` crate) against the
//! code the network runs, without a network. [`Chain`] keeps accounts (address → balance, code,
//! data, status), delivers an external or internal message and then every internal message that
//! follows, in logical-time order, and records each transaction ([`TxRecord`]: account, inbound
//! message, compute exit code, success, outbound messages, fees).
//!
//! Real: the compiled contract code (`ton::contracts`, hash-pinned), the TVM and the transaction
//! executor (tycho-vm / tycho-executor, a pure-Rust TON-compatible executor running TVM version
//! 12 semantics: storage, credit, compute, action and bounce phases, gas and forwarding fees),
//! and TON mainnet's blockchain config (fee prices, limits), committed as
//! `fixtures/ton-mainnet-config.boc` from @ton/sandbox 0.41.0. Signature checks are always on.
//!
//! Simulated: no consensus, blocks or validators; no sharding and a single workchain (0);
//! one global logical-time counter; unix time given by the caller ([`Chain::set_now`], no
//! clock); get-methods ([`Chain::run_get_method`]) run with getter gas; messages injected from outside ([`Chain::send_internal`]) come from "treasury"
//! accounts whose own transactions and fees are not run; and [`Chain::add_treasury`] accounts
//! accept everything with empty code. The executor's tycho-specific extensions are switched
//! off ([`config::ton_executor_params`]).
//!
//! Chain access: [`TonChain`] is the I/O interface the rest of cocoon uses (send an external,
//! read an account, run a get-method, list transactions, chain time), implemented by
//! [`LocalChain`] (this chain on its own thread, each external processed to completion) and
//! [`HttpChain`] (a toncenter-style TON HTTP API v2 over http or https — rustls, Mozilla roots;
//! JSON shapes in [`toncenter`]); [`ChainConfig`] selects one. [`http_server::LocalServer`] is
//! test support: it serves a [`LocalChain`] through the same HTTP endpoints (plain or TLS) so
//! the real client runs end to end on loopback. The live network (toncenter) was not
//! exercised. Trust boundary: everything an HTTP API returns is untrusted input; the client
//! parses it as such (typed errors, bounded sizes) and describes transactions from their own
//! BOC, but it cannot detect a server that lies consistently — that needs proofs (liteserver
//! API), which this client does not check.
//!
//! Interop: cells cross between the `ton` crate and tycho-types as BOC bytes
//! (`convert`), each conversion checked by representation hash.
//!
//! Features: `local` (default) compiles the local chain — the TVM and executor (tycho-*),
//! `Chain`, `LocalChain` and the test server `http_server`. Without it
//! (`default-features = false`) the crate is only [`TonChain`], [`HttpChain`], [`ChainConfig`]
//! and the toncenter shapes, with no TVM library: transactions, messages and externals are
//! parsed and built by the `ton` crate (`ton::transaction`), cross-checked against tycho-types
//! in `tests/txparse.rs`. API clients (cocoon-client) depend on it that way.
#![forbid(unsafe_code)]

#[cfg(feature = "local")]
pub mod chain;
pub mod chain_config;
#[cfg(feature = "local")]
pub mod config;
#[cfg(feature = "local")]
pub mod convert;
pub mod error;
#[cfg(feature = "local")]
pub mod getter;
pub mod http_client;
#[cfg(feature = "local")]
pub mod http_server;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "local")]
pub mod log;
pub mod proxy_contract;
pub mod toncenter;
pub mod tonchain;
pub mod wallet;

#[cfg(feature = "local")]
pub use chain::{AccountInfo, Chain, Internal, Status};
pub use chain_config::ChainConfig;
pub use error::SimError;
#[cfg(feature = "local")]
pub use getter::GetValue;
pub use http_client::HttpChain;
#[cfg(feature = "local")]
pub use local::LocalChain;
#[cfg(feature = "local")]
pub use log::{Compute, InMsg, OutMsg, TxRecord};
pub use tonchain::{AccountState, AccountStatus, ChainError, ChainTx, StackValue, TonChain, TxId};
