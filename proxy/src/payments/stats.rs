//! The payments engine's figures ([`PaymentsStats`], serde) for `/jsonstats`, filled by
//! [`super::Payments::stats`] from the ledger and the last chain poll (no I/O).

use std::collections::BTreeMap;

use serde::Serialize;

/// Per-client figures of [`PaymentsStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    /// Tokens billed by the ledger (cumulative).
    pub billed_tokens: u64,
    /// Billed tokens covered by a confirmed anchor.
    pub anchored_tokens: u64,
    /// Highest count a voucher was claimed for.
    pub voucher_tokens: u64,
    /// Tokens charged on chain (`tokens_used`).
    pub charged_tokens: u64,
    /// Billed, not yet charged on chain.
    pub pending_tokens: u64,
    pub pending_nano: u128,
    /// Contract state from its last notification (0 open, 1 closing, 2 closed).
    pub chain_state: Option<u8>,
    pub chain_balance_nano: Option<u128>,
    pub chain_stake_nano: Option<u128>,
}

/// Per-worker figures of [`PaymentsStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    pub billed_tokens: u64,
    pub anchored_tokens: u64,
    pub voucher_tokens: u64,
    /// Tokens the worker contract reported paid.
    pub paid_tokens: u64,
    /// Sum of `worker_part` of the payouts seen.
    pub paid_nano: u128,
    /// Billed, not yet paid on chain.
    pub pending_tokens: u64,
    pub chain_state: Option<u8>,
}

/// The engine's figures for `/jsonstats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PaymentsStats {
    pub health: String,
    pub proxy_contract: String,
    pub wallet: String,
    pub chain_now: Option<u32>,
    pub last_tx_utime: Option<u32>,
    /// Chain time minus the time of the last proxy-contract transaction seen.
    pub chain_lag_s: Option<u32>,
    pub last_poll_age_ms: Option<u64>,
    pub last_anchor_seqno: Option<u32>,
    pub last_anchor_age_s: Option<u32>,
    /// Notifications from addresses that are not the derived contract, anchors from others.
    pub ignored_messages: u64,
    pub malformed_messages: u64,
    /// Polls that hit `history_max` (older transactions of that poll were not read).
    pub history_gaps: u64,
    pub last_error: Option<String>,
    pub clients: BTreeMap<String, ClientStats>,
    pub workers: BTreeMap<String, WorkerStats>,
}
