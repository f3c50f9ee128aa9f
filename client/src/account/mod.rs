//! The client's TON account: a Cocoon wallet (the only wallet the `ton` crate implements, code
//! hash `7a48f05c…`) holding the client's funds, and the client contract it owns, tied to one
//! proxy contract. `cocoon-client account …` drives it; every operation goes through a
//! [`TonChain`] (toncenter v2 over HTTP in production, the local chain in tests).
//!
//! Addresses. The wallet is `WalletData::initial(pubkey, owner)`: its address depends on the
//! key and on the wallet's *owner*, an address the user controls that may send anything from
//! the wallet and withdraw all of it (the wallet refuses externals below 2 TON, so only the
//! owner can recover the last 2 TON). The client contract is `ClientData::initial(wallet,
//! proxy, Kp, min_client_stake, params)`: its owner is the wallet (owner-only requests come
//! from it and refunds go back to it). Kp and params are read from the proxy contract's data
//! and accepted only if the proxy's *initial* state built from them derives to the given proxy
//! address (and its code and embedded code are the pinned ones): a server cannot substitute
//! another key or other params without changing the address.
//!
//! Operations (all owner requests carry the wallet as `send_excesses_to`):
//! - deploy: state init + `top_up(amount)`, amount ≥ the stake, value amount + 0.3 TON;
//! - top-up: `top_up(amount)`, value amount + 0.2 TON (the contract needs amount + 0.1 TON);
//!   the stored balance rises by exactly `amount`, the rest comes back as excess;
//! - bind: `set secret hash` to the binding hash of a cocoon account key (value 0.2 TON), so
//!   the proxy bills that TLS account to this contract;
//! - withdraw: returns the balance above the stake (value 0.2 TON);
//! - refund: `request_refund` — the first one pays out the balance above the stake and starts
//!   closing (`unlock_ts = now + client_delay_before_close`); the proxy then closes the
//!   contract with a signed `grant_refund`, or, after `unlock_ts`, a second `refund` forces it
//!   (paid from the proxy's stake).
//!
//! Every operation is one wallet external (send mode 3: fees paid separately, errors ignored,
//! so the seqno always advances), valid for the wait timeout, then followed on chain
//! ([`wait`]): the wallet's transaction, then every transaction its message causes on the
//! wallet, client and proxy contracts; the first failure is reported with its account and exit
//! code ([`AccountError::Failed`]). Before sending, the wallet must hold the value, a fee
//! margin and the 2 TON the wallet contract needs to send the next request.
//!
//! Trust boundary: the chain API is untrusted (see `tonsim::tonchain`); what it returns is
//! parsed with typed errors. The wallet seed stays in this process (never logged).

pub mod charge;
pub mod settings;
pub mod wait;

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ton::address::{Addr, Coins, FriendlyFlags};
use ton::cell::Cell;
use ton::contracts::{check_code, ClientData, ContractKind, StateInit, WalletData};
use ton::messages::unsigned::Request;
use ton::messages::wallet::{InternalMessage, WalletExternal};
use tonsim::tonchain::{external_boc, ClientState};
use tonsim::{AccountStatus, ChainError, TonChain};

pub use wait::{Step, WaitOptions};

/// Nanotons per TON.
pub const TON: u128 = Coins::TON;
/// The Cocoon wallet refuses to send when it holds less (exit code 1035).
pub const WALLET_MIN_BALANCE: u128 = 2 * TON;
/// Kept for the wallet's own fees on top of the value it sends.
pub const WALLET_FEE_MARGIN: u128 = 50_000_000;
/// Attached to a deploy on top of the amount (the contract keeps 0.11 TON and needs 0.1 TON
/// for the request; the rest returns as excess).
pub const DEPLOY_EXTRA: u128 = 300_000_000;
/// Attached to a top-up on top of the amount (the contract needs 0.1 TON).
pub const TOP_UP_EXTRA: u128 = 200_000_000;
/// Attached to withdraw and request_refund.
pub const REQUEST_VALUE: u128 = 200_000_000;
/// Wallet send mode: pay fees separately (1) + ignore errors (2).
const SEND_MODE: u8 = 3;

/// An account error. Messages name the account, amount or exit code at fault.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The chain API failed (unreachable, malformed answer, API error).
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// The wallet key file.
    #[error(transparent)]
    Key(#[from] crate::key::KeyFileError),
    /// The account settings (`account.toml` or flags).
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// No active contract at the proxy address.
    #[error("proxy contract {addr}: no active contract there (status {status:?}); check the proxy address")]
    ProxyNotFound { addr: Addr, status: AccountStatus },
    /// The account at the proxy address is not a Cocoon proxy contract we accept.
    #[error("proxy contract {addr}: {reason}")]
    ProxyInvalid { addr: Addr, reason: String },
    /// The proxy contract is closing or closed.
    #[error("proxy contract {addr} is {state}: it accepts no new clients")]
    ProxyClosed { addr: Addr, state: &'static str },
    /// The wallet address holds something else than this key's Cocoon wallet.
    #[error("wallet {addr}: {reason}")]
    WalletInvalid { addr: Addr, reason: String },
    /// The wallet cannot pay for the request.
    #[error(
        "wallet {addr}: insufficient funds: holds {}, needs {} ({} to send + {} fees + {} the \
         wallet must keep to send later requests)",
        ton_str(*balance), ton_str(value + WALLET_FEE_MARGIN + WALLET_MIN_BALANCE),
        ton_str(*value), ton_str(WALLET_FEE_MARGIN), ton_str(WALLET_MIN_BALANCE)
    )]
    InsufficientFunds {
        addr: Addr,
        balance: u128,
        value: u128,
    },
    /// The client contract does not exist yet.
    #[error("client contract {addr} is not deployed (run `cocoon-client account deploy`)")]
    NotDeployed { addr: Addr },
    /// The client contract exists already.
    #[error("client contract {addr} is already deployed (use `topup`)")]
    AlreadyDeployed { addr: Addr },
    /// The client contract's data or state is not what the command needs.
    #[error("client contract {addr}: {reason}")]
    ClientState { addr: Addr, reason: String },
    /// An amount is out of range.
    #[error("amount {amount} nanoton: {reason}")]
    Amount { amount: u128, reason: String },
    /// The chain did not accept the wallet's external message.
    #[error("wallet {addr}: external message rejected: {reason}")]
    Rejected { addr: Addr, reason: String },
    /// A transaction of the operation failed.
    #[error("{role} {addr}: transaction failed: {}", wait::describe_failure(*exit_code, *action_code, *aborted))]
    Failed {
        role: &'static str,
        addr: Addr,
        exit_code: Option<i32>,
        action_code: Option<i32>,
        aborted: bool,
    },
    /// The wallet accepted the external but sent no message.
    #[error(
        "wallet {addr}: accepted the request but sent nothing (balance too low for the value?)"
    )]
    NotSent { addr: Addr },
    /// The operation's transactions did not appear in time.
    #[error("timed out after {secs} s waiting for the {what} transaction of {addr} (it may still land until the message expires)")]
    Timeout {
        what: &'static str,
        addr: Addr,
        secs: u64,
    },
    /// Malformed data from the chain (a transaction or message that does not parse).
    #[error("chain data: {0}")]
    Malformed(String),
}

/// `12.345000000 TON`.
pub fn ton_str(nano: u128) -> String {
    format!("{}.{:09} TON", nano / TON, nano % TON)
}

/// `12.345000000 TON (12345000000 nanoton)`.
pub fn amount_str(nano: u128) -> String {
    format!("{} ({nano} nanoton)", ton_str(nano))
}

/// An address in raw form and user-friendly (non-bounceable) form.
pub fn addr_str(a: &Addr) -> String {
    let f = a.to_friendly(FriendlyFlags {
        bounceable: false,
        testnet: false,
    });
    format!("{a} ({f})")
}

/// Client contract state names.
pub fn state_name(state: u8) -> &'static str {
    match state {
        0 => "normal",
        1 => "closing",
        2 => "closed",
        _ => "unknown",
    }
}

/// The client's Cocoon wallet: key, owner, state init and address.
#[derive(Debug)]
pub struct Wallet {
    key: SigningKey,
    owner: Addr,
    init: StateInit,
    addr: Addr,
}

impl Wallet {
    /// The wallet for `seed` owned by `owner`.
    pub fn new(seed: &[u8; 32], owner: Addr) -> Result<Wallet, AccountError> {
        let key = SigningKey::from_bytes(seed);
        let init = WalletData::initial(key.verifying_key().to_bytes(), owner)
            .state_init()
            .map_err(|e| AccountError::Malformed(format!("wallet state init: {e}")))?;
        let addr = init
            .address()
            .map_err(|e| AccountError::Malformed(format!("wallet address: {e}")))?;
        Ok(Wallet {
            key,
            owner,
            init,
            addr,
        })
    }

    /// The wallet's address.
    pub fn address(&self) -> Addr {
        self.addr
    }

    /// The wallet's owner.
    pub fn owner(&self) -> Addr {
        self.owner
    }

    /// The wallet's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

pub use tonsim::proxy_contract::ProxyInfo;

/// Reads and checks the proxy contract at `addr` (`tonsim::proxy_contract::read_proxy`).
pub async fn read_proxy(chain: &dyn TonChain, addr: Addr) -> Result<ProxyInfo, AccountError> {
    use tonsim::proxy_contract::{read_proxy, ProxyContractError as E};
    read_proxy(chain, addr).await.map_err(|e| match e {
        E::Chain(e) => AccountError::Chain(e),
        E::NotFound { addr, status } => AccountError::ProxyNotFound { addr, status },
        E::Invalid { addr, reason } => AccountError::ProxyInvalid { addr, reason },
    })
}

/// The client contract's state init for `wallet` and `proxy`.
pub fn client_init(wallet: &Addr, proxy: &ProxyInfo) -> Result<StateInit, AccountError> {
    ClientData::initial(
        *wallet,
        proxy.addr,
        proxy.public_key,
        proxy.params.min_client_stake,
        proxy.params.clone(),
    )
    .state_init()
    .map_err(|e| AccountError::Malformed(format!("client state init: {e}")))
}

/// Balances and states, as `balance` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balances {
    /// Wallet address.
    pub wallet: Addr,
    /// Wallet account status.
    pub wallet_status: AccountStatus,
    /// Wallet balance (nanoton).
    pub wallet_balance: u128,
    /// Client contract address.
    pub client: Addr,
    /// The client contract's state, if deployed.
    pub client_state: Option<ClientState>,
    /// The client contract account's own TON balance (storage and fee reserve).
    pub client_account_balance: u128,
}

/// What an operation did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Value the wallet attached.
    pub value: u128,
    /// Every transaction followed, in order.
    pub steps: Vec<Step>,
    /// The client contract's state afterwards.
    pub client_state: Option<ClientState>,
}

/// One client account: wallet, proxy and client contract on one chain.
#[derive(Debug)]
pub struct Account {
    chain: Arc<dyn TonChain>,
    wallet: Wallet,
    proxy: ProxyInfo,
    client_init: StateInit,
    client: Addr,
    wait: WaitOptions,
}

impl Account {
    /// Reads the proxy contract and derives the client contract.
    pub async fn open(
        chain: Arc<dyn TonChain>,
        wallet: Wallet,
        proxy: Addr,
        wait: WaitOptions,
    ) -> Result<Account, AccountError> {
        let proxy = read_proxy(chain.as_ref(), proxy).await?;
        let client_init = client_init(&wallet.addr, &proxy)?;
        let client = client_init
            .address()
            .map_err(|e| AccountError::Malformed(format!("client address: {e}")))?;
        Ok(Account {
            chain,
            wallet,
            proxy,
            client_init,
            client,
            wait,
        })
    }

    /// The client contract's address.
    pub fn client_address(&self) -> Addr {
        self.client
    }

    /// The wallet.
    pub fn wallet(&self) -> &Wallet {
        &self.wallet
    }

    /// The proxy.
    pub fn proxy(&self) -> &ProxyInfo {
        &self.proxy
    }

    /// The client contract's state (`None` if not deployed).
    pub async fn client_state(&self) -> Result<Option<ClientState>, AccountError> {
        let acc = self.chain.account(&self.client).await?;
        if acc.status != AccountStatus::Active {
            return Ok(None);
        }
        if let Some(code) = &acc.code {
            check_code(code, ContractKind::Client).map_err(|e| AccountError::ClientState {
                addr: self.client,
                reason: e.to_string(),
            })?;
        }
        let stack = self
            .chain
            .run_get_method(&self.client, ClientState::GET_METHOD)
            .await?;
        Ok(Some(ClientState::from_stack(&stack)?))
    }

    /// Wallet and client contract balances.
    pub async fn balances(&self) -> Result<Balances, AccountError> {
        let w = self.chain.account(&self.wallet.addr).await?;
        let c = self.chain.account(&self.client).await?;
        Ok(Balances {
            wallet: self.wallet.addr,
            wallet_status: w.status,
            wallet_balance: w.balance,
            client: self.client,
            client_state: self.client_state().await?,
            client_account_balance: c.balance,
        })
    }

    /// Deploys the client contract with an initial top-up of `amount` (at least the stake).
    pub async fn deploy(&self, amount: u128) -> Result<Outcome, AccountError> {
        let stake = self.proxy.params.min_client_stake.nano();
        if amount < stake {
            return Err(AccountError::Amount {
                amount,
                reason: format!(
                    "the first top-up must cover the stake of {}",
                    ton_str(stake)
                ),
            });
        }
        if self.proxy.state != 0 {
            return Err(AccountError::ProxyClosed {
                addr: self.proxy.addr,
                state: state_name(self.proxy.state),
            });
        }
        if self.chain.account(&self.client).await?.status == AccountStatus::Active {
            return Err(AccountError::AlreadyDeployed { addr: self.client });
        }
        let body = self.top_up_body(amount)?;
        let value = checked_add(amount, DEPLOY_EXTRA)?;
        self.send(value, Some(self.client_init.clone()), body).await
    }

    /// Tops the client contract up by `amount`.
    pub async fn top_up(&self, amount: u128) -> Result<Outcome, AccountError> {
        if amount == 0 {
            return Err(AccountError::Amount {
                amount,
                reason: "must be positive".into(),
            });
        }
        self.require_deployed().await?;
        let body = self.top_up_body(amount)?;
        self.send(checked_add(amount, TOP_UP_EXTRA)?, None, body)
            .await
    }

    /// Binds the client contract to the cocoon account whose Ed25519 public key is
    /// `account_key`: sets the contract's secret hash to
    /// [`ton::contracts::account_binding_hash`], which the contract reports to the proxy in
    /// every notification. From then on the proxy bills requests made over TLS with that
    /// account key to this contract. Setting it again moves the binding.
    pub async fn bind(&self, account_key: &[u8; 32]) -> Result<Outcome, AccountError> {
        self.require_deployed().await?;
        let body = Request::SetSecret {
            qid: self.qid(),
            secret_hash: ton::contracts::account_binding_hash(account_key),
            excess: self.wallet.addr,
        }
        .to_cell()
        .map_err(|e| AccountError::Malformed(e.to_string()))?;
        self.send(REQUEST_VALUE, None, body).await
    }

    /// Asks the client contract to return the balance above the stake.
    pub async fn withdraw(&self) -> Result<Outcome, AccountError> {
        self.require_deployed().await?;
        let body = Request::Withdraw {
            qid: self.qid(),
            excess: self.wallet.addr,
        }
        .to_cell()
        .map_err(|e| AccountError::Malformed(e.to_string()))?;
        self.send(REQUEST_VALUE, None, body).await
    }

    /// Sends `request_refund` (starts closing, or forces the refund after the delay).
    pub async fn request_refund(&self) -> Result<Outcome, AccountError> {
        self.require_deployed().await?;
        let body = Request::RequestRefund {
            qid: self.qid(),
            excess: self.wallet.addr,
        }
        .to_cell()
        .map_err(|e| AccountError::Malformed(e.to_string()))?;
        self.send(REQUEST_VALUE, None, body).await
    }

    fn top_up_body(&self, amount: u128) -> Result<Cell, AccountError> {
        if amount >= 1 << 120 {
            return Err(AccountError::Amount {
                amount,
                reason: "too large".into(),
            });
        }
        Request::TopUp {
            qid: self.qid(),
            amount: Coins::from_nano(amount),
            excess: self.wallet.addr,
        }
        .to_cell()
        .map_err(|e| AccountError::Malformed(e.to_string()))
    }

    /// A query id (not stored by the contracts; random so that requests are distinguishable).
    fn qid(&self) -> u64 {
        let mut b = [0u8; 8];
        // A fixed query id is still valid: the contracts do not check it.
        let _ = getrandom::getrandom(&mut b);
        u64::from_le_bytes(b)
    }

    async fn require_deployed(&self) -> Result<(), AccountError> {
        match self.chain.account(&self.client).await?.status {
            AccountStatus::Active => Ok(()),
            _ => Err(AccountError::NotDeployed { addr: self.client }),
        }
    }

    /// Sends `body` with `value` (and `init`) from the wallet to the client contract, then
    /// follows the transactions.
    async fn send(
        &self,
        value: u128,
        init: Option<StateInit>,
        body: Cell,
    ) -> Result<Outcome, AccountError> {
        let w = self.wallet.addr;
        let acc = self.chain.account(&w).await?;
        let need = value
            .saturating_add(WALLET_FEE_MARGIN)
            .saturating_add(WALLET_MIN_BALANCE);
        if acc.balance < need {
            return Err(AccountError::InsufficientFunds {
                addr: w,
                balance: acc.balance,
                value,
            });
        }
        let (seqno, wallet_init) = match (&acc.status, &acc.code, &acc.data) {
            (AccountStatus::Active, Some(code), Some(data)) => {
                check_code(code, ContractKind::Wallet).map_err(|e| {
                    AccountError::WalletInvalid {
                        addr: w,
                        reason: e.to_string(),
                    }
                })?;
                let d = WalletData::from_cell(data).map_err(|e| AccountError::WalletInvalid {
                    addr: w,
                    reason: e.to_string(),
                })?;
                if d.pubkey != self.wallet.public_key() {
                    return Err(AccountError::WalletInvalid {
                        addr: w,
                        reason: "its public key is not this key's".into(),
                    });
                }
                (d.seqno, None)
            }
            (AccountStatus::Active, _, _) | (AccountStatus::Frozen, _, _) => {
                return Err(AccountError::WalletInvalid {
                    addr: w,
                    reason: format!("account status {:?} without wallet code", acc.status),
                })
            }
            _ => (0, Some(&self.wallet.init)),
        };
        let msg = InternalMessage {
            bounce: true,
            dest: self.client,
            value: Coins::from_nano(value),
            init,
            body: Some(body),
        }
        .to_cell()
        .map_err(|e| AccountError::Malformed(e.to_string()))?;
        let now = self.chain.now().await?;
        let ttl = u32::try_from(self.wait.timeout.as_secs()).unwrap_or(u32::MAX);
        let ext = WalletExternal {
            subwallet: 0,
            valid_until: now.saturating_add(ttl.max(1)),
            seqno,
            messages: vec![(SEND_MODE, msg)],
        }
        .sign(&self.wallet.key)
        .map_err(|e| AccountError::Malformed(e.to_string()))?;
        let boc = external_boc(w, wallet_init, &ext)?;

        let watch = |role, addr, must_run| wait::Watched {
            role,
            addr,
            must_run,
        };
        let watched = [
            watch("wallet", w, false),
            watch("client contract", self.client, true),
            watch("proxy contract", self.proxy.addr, false),
        ];
        let since = wait::last_lts(self.chain.as_ref(), &watched).await?;
        match self.chain.send_message(&boc).await {
            Ok(()) => {}
            Err(ChainError::Rejected { reason }) => {
                return Err(AccountError::Rejected { addr: w, reason })
            }
            Err(e) => return Err(e.into()),
        }
        let steps = wait::follow(self.chain.as_ref(), &boc, &watched, &since, &self.wait).await?;
        Ok(Outcome {
            value,
            steps,
            client_state: self.client_state().await?,
        })
    }
}

fn checked_add(a: u128, b: u128) -> Result<u128, AccountError> {
    a.checked_add(b).ok_or(AccountError::Amount {
        amount: a,
        reason: "too large".into(),
    })
}

/// Default wait: 2 minutes, polling every 2 seconds.
pub fn default_wait() -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(120),
        poll: Duration::from_secs(2),
    }
}
