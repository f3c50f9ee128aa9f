//! The proxy's payments engine: it settles the durable ledger's counts on TON through Cocoon's
//! contracts.
//!
//! ```text
//!   ledger (redb) ──begin_anchor──▶ save_state(seqno, digest) ──wallet──▶ proxy contract
//!        ▲  ▲                                                               │ every inbound
//!        │  └─check_anchor / anchor_confirmed ◀──────── watcher ◀────────────┘ message
//!        │      observe_client (client notifications, 1-nano ones included)
//!        └─claim_charge_voucher ──▶ signed charge / grant_refund ──wallet──▶ client contract
//!          claim_payout_voucher ──▶ signed payout (handed to the worker by the relay)
//! ```
//!
//! * [`ProxyWallet`] (`tonsim::wallet::Wallet`) sends from the proxy's Cocoon wallet (seqno from the chain, deploys
//!   with its first external, waits until the external is processed).
//! * [`engine::Payments`] runs the watcher (every transaction of the proxy contract, read from
//!   its inbound message, aborted and compute-skipped ones included), the anchor task and the
//!   charge task, and signs payout vouchers for the relay. A [`RollbackError`] is fatal: it
//!   is published as [`Health::Fatal`] and the engine signs nothing afterwards.
//! * [`inbound`] reads and classifies inbound messages (pure); [`stats`] holds the figures.
//!
//! Trust boundary: everything read from the chain is untrusted. A notification counts only if
//! its sender is the address the proxy contract itself would derive for the claimed owner
//! (client: owner, proxy contract, Kp, `min_client_stake`, params without code; worker: owner,
//! proxy contract, Kp, params without code); an anchor counts only from this proxy's wallet.
//! Vouchers are signed only for counts the ledger has anchored (the ledger enforces it), with
//! a qid derived from the count, so a re-sent voucher is byte-identical to the first.
//!
//! Spec references: the testdata README ("The money flow", "Layouts"), docs/payments.md
//! ("Proxy payments engine"), docs/threat-model.md ("Proxy keys and ledger").

pub mod engine;
pub mod inbound;
pub mod paid;
pub mod stats;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use ton::address::{Addr, AddrError};

pub use crate::ledger::durable::RollbackError;
pub use engine::{Payments, PaymentsError, PaymentsSetup};
pub use paid::PaidLedger;
pub use stats::{ClientStats, PaymentsStats, WorkerStats};
pub use tonsim::wallet::{Sent, Wallet as ProxyWallet, WalletError};

const TON: u64 = 1_000_000_000;

/// `[payments]` of the proxy config (TOML); see docs/payments.md, "Proxy payments engine".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The TON HTTP API v2 (toncenter-style) base URL, e.g. `https://toncenter.com/api/v2`
    /// or cocoon-host's local chain.
    pub chain_url: String,
    /// Environment variable holding the API key, if the API needs one (keys stay out of
    /// config files, which are measured and shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_api_key_env: Option<String>,
    /// The network's params (v3) as the root contract publishes them: BOC, hex. Billing prices
    /// come from here (the `[prices]` section must be absent).
    pub params_boc: String,
    /// Owner of the proxy contract (receives proxy fees; part of its address). Raw or
    /// user-friendly form.
    pub owner: String,
    /// The Cocoon root contract (part of the proxy contract's address).
    pub root: String,
    /// Owner of the proxy's Cocoon wallet (part of its address); default: `owner`.
    #[serde(default)]
    pub wallet_owner: Option<String>,
    /// How often the ledger is anchored on chain (when something is waiting to be anchored).
    #[serde(default = "default_anchor_interval_ms")]
    pub anchor_interval_ms: u64,
    /// How often the proxy contract's transactions are read.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A charge voucher is sent once a client's anchored, uncharged usage is worth this much
    /// (Cocoon: 1 TON).
    #[serde(default = "default_charge_threshold_nano")]
    pub charge_threshold_nano: u64,
    /// A voucher not yet seen applied on chain is sent again after this long.
    #[serde(default = "default_voucher_retry_ms")]
    pub voucher_retry_ms: u64,
    /// How long a wallet external may take to be processed (also its validity).
    #[serde(default = "default_wallet_timeout_ms")]
    pub wallet_timeout_ms: u64,
    /// Value attached to a charge or grant_refund voucher (the excess returns to the wallet).
    #[serde(default = "default_voucher_value_nano")]
    pub voucher_value_nano: u64,
    /// Value attached to a save_state anchor (stays on the proxy contract).
    #[serde(default = "default_anchor_value_nano")]
    pub anchor_value_nano: u64,
    /// Value attached to a proxy-fees payout request (the excess returns to the wallet).
    #[serde(default = "default_payout_request_value_nano")]
    pub payout_request_value_nano: u64,
    /// Value the proxy contract is deployed with.
    #[serde(default = "default_deploy_value_nano")]
    pub deploy_value_nano: u64,
    /// Transactions asked for per poll (doubled while a poll comes back full, up to
    /// `history_max`).
    #[serde(default = "default_history_page")]
    pub history_page: usize,
    /// Most transactions read in one poll; more than that is counted as a history gap.
    #[serde(default = "default_history_max")]
    pub history_max: usize,
}

fn default_anchor_interval_ms() -> u64 {
    30_000
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_charge_threshold_nano() -> u64 {
    TON
}
fn default_voucher_retry_ms() -> u64 {
    120_000
}
fn default_wallet_timeout_ms() -> u64 {
    90_000
}
fn default_voucher_value_nano() -> u64 {
    700_000_000
}
fn default_anchor_value_nano() -> u64 {
    10_000_000
}
fn default_payout_request_value_nano() -> u64 {
    500_000_000
}
fn default_deploy_value_nano() -> u64 {
    TON
}
fn default_history_page() -> usize {
    256
}
fn default_history_max() -> usize {
    65_536
}

/// Why a `[payments]` section is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentsConfigError {
    #[error("payments.{field}: {source}")]
    Address {
        field: &'static str,
        #[source]
        source: AddrError,
    },
    #[error("payments.params_boc: {0}")]
    Params(String),
    #[error("payments.{field}: must be above zero")]
    Zero { field: &'static str },
    #[error("payments.history_max ({max}) is below payments.history_page ({page})")]
    History { page: usize, max: usize },
}

/// The validated runtime form of [`PaymentsConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentsSettings {
    pub chain_url: String,
    pub chain_api_key_env: Option<String>,
    pub params: ton::params::ParamsV3,
    pub owner: Addr,
    pub root: Addr,
    pub wallet_owner: Addr,
    pub anchor_interval: Duration,
    pub poll_interval: Duration,
    pub charge_threshold_nano: u128,
    pub voucher_retry: Duration,
    pub wallet_timeout: Duration,
    pub voucher_value_nano: u128,
    pub anchor_value_nano: u128,
    pub payout_request_value_nano: u128,
    pub deploy_value_nano: u128,
    pub history_page: usize,
    pub history_max: usize,
}

impl PaymentsConfig {
    /// A config with every default for the given chain, params, proxy-contract owner and root.
    pub fn new(chain_url: &str, params: &ton::params::ParamsV3, owner: &Addr, root: &Addr) -> Self {
        Self {
            chain_url: chain_url.to_string(),
            chain_api_key_env: None,
            params_boc: params
                .without_code()
                .to_cell()
                .map(|c| ton::boc::encode_hex(&c))
                .unwrap_or_default(),
            owner: owner.to_string(),
            root: root.to_string(),
            wallet_owner: None,
            anchor_interval_ms: default_anchor_interval_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            charge_threshold_nano: default_charge_threshold_nano(),
            voucher_retry_ms: default_voucher_retry_ms(),
            wallet_timeout_ms: default_wallet_timeout_ms(),
            voucher_value_nano: default_voucher_value_nano(),
            anchor_value_nano: default_anchor_value_nano(),
            payout_request_value_nano: default_payout_request_value_nano(),
            deploy_value_nano: default_deploy_value_nano(),
            history_page: default_history_page(),
            history_max: default_history_max(),
        }
    }

    /// Checks the section and converts it to its runtime form.
    pub fn validate(&self) -> Result<PaymentsSettings, PaymentsConfigError> {
        let addr = |field: &'static str, text: &str| {
            Addr::parse_any(text).map_err(|source| PaymentsConfigError::Address { field, source })
        };
        let params = ton::boc::decode_hex(self.params_boc.trim())
            .map_err(|e| PaymentsConfigError::Params(e.to_string()))
            .and_then(|c| {
                ton::params::ParamsV3::from_cell(&c)
                    .map_err(|e| PaymentsConfigError::Params(e.to_string()))
            })?;
        if params.worker_fee_per_token > params.price_per_token {
            return Err(PaymentsConfigError::Params(
                "worker_fee_per_token is above price_per_token".into(),
            ));
        }
        if self.chain_url.is_empty() {
            return Err(PaymentsConfigError::Zero { field: "chain_url" });
        }
        let owner = addr("owner", &self.owner)?;
        let root = addr("root", &self.root)?;
        let wallet_owner = match &self.wallet_owner {
            Some(w) => addr("wallet_owner", w)?,
            None => owner,
        };
        for (field, v) in [
            ("anchor_interval_ms", self.anchor_interval_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("voucher_retry_ms", self.voucher_retry_ms),
            ("wallet_timeout_ms", self.wallet_timeout_ms),
            ("history_page", self.history_page as u64),
        ] {
            if v == 0 {
                return Err(PaymentsConfigError::Zero { field });
            }
        }
        if self.history_max < self.history_page {
            return Err(PaymentsConfigError::History {
                page: self.history_page,
                max: self.history_max,
            });
        }
        Ok(PaymentsSettings {
            chain_url: self.chain_url.clone(),
            chain_api_key_env: self.chain_api_key_env.clone(),
            params,
            owner,
            root,
            wallet_owner,
            anchor_interval: Duration::from_millis(self.anchor_interval_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            charge_threshold_nano: self.charge_threshold_nano.into(),
            voucher_retry: Duration::from_millis(self.voucher_retry_ms),
            wallet_timeout: Duration::from_millis(self.wallet_timeout_ms),
            voucher_value_nano: self.voucher_value_nano.into(),
            anchor_value_nano: self.anchor_value_nano.into(),
            payout_request_value_nano: self.payout_request_value_nano.into(),
            deploy_value_nano: self.deploy_value_nano.into(),
            history_page: self.history_page,
            history_max: self.history_max,
        })
    }
}

/// Whether the proxy may keep serving, as the payments engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The chain's history has not been read yet (no vouchers are signed).
    Syncing,
    /// The ledger agrees with the chain.
    Healthy,
    /// The chain contradicts the ledger (rolled back or cloned): stop serving. Sticky.
    Fatal(RollbackError),
}

impl Health {
    /// Whether the proxy must stop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Health::Fatal(_))
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Syncing => f.write_str("syncing"),
            Health::Healthy => f.write_str("healthy"),
            Health::Fatal(e) => write!(f, "fatal: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_render_and_reparse() {
        let owner = Addr::basechain([1; 32]);
        let root = Addr::basechain([2; 32]);
        let params = ton::params::ParamsV3::reference();
        let boc = ton::boc::encode_hex(&params.without_code().to_cell().unwrap());
        let text = format!(
            "chain_url = \"http://127.0.0.1:1/api/v2\"\nparams_boc = \"{boc}\"\n\
             owner = \"{owner}\"\nroot = \"{root}\"\n"
        );
        let c: PaymentsConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            c,
            PaymentsConfig::new("http://127.0.0.1:1/api/v2", &params, &owner, &root)
        );
        let s = c.validate().unwrap();
        assert_eq!(s.anchor_interval, Duration::from_secs(30));
        assert_eq!(s.poll_interval, Duration::from_secs(1));
        assert_eq!(s.charge_threshold_nano, 1_000_000_000);
        assert_eq!(s.wallet_owner, owner);
        assert_eq!(s.params, params.without_code());
        let back: PaymentsConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn config_errors_name_the_field() {
        let owner = Addr::basechain([1; 32]);
        let params = ton::params::ParamsV3::reference();
        let new = || PaymentsConfig::new("http://x/api/v2", &params, &owner, &owner);
        let mut c = new();
        c.root = "nope".into();
        assert!(matches!(
            c.validate(),
            Err(PaymentsConfigError::Address { field: "root", .. })
        ));
        let mut c = new();
        c.params_boc = "00".into();
        assert!(matches!(c.validate(), Err(PaymentsConfigError::Params(_))));
        let mut c = new();
        c.poll_interval_ms = 0;
        assert_eq!(
            c.validate(),
            Err(PaymentsConfigError::Zero {
                field: "poll_interval_ms"
            })
        );
        let text = format!(
            "chain_url = \"u\"\nparams_boc = \"00\"\nowner = \"{owner}\"\nroot = \"{owner}\"\nsurprise = 1\n"
        );
        assert!(toml::from_str::<PaymentsConfig>(&text).is_err());
    }
}
