//! [`Wallet`]: a Cocoon wallet that cocoon's services send through — the proxy's (anchors,
//! charge vouchers, refunds, fee payouts, the proxy contract's deployment) and the worker's
//! (payout vouchers to its worker contract).
//!
//! One external per send: `sig subwallet=0 valid_until seqno (mode ^msg)×≤4`, signed with the
//! wallet key. The seqno is read from the wallet's data on chain (an uninitialised wallet is
//! seqno 0 and the external carries its state init: the wallet deploys on first use). Sends are
//! serialised (one seqno at a time). After sending, the wallet's seqno is polled until it
//! advances or `timeout` passes; the external's own transaction is then found by the hash of the
//! message and returned. `valid_until` is the chain's time plus `timeout`, so an external that
//! timed out can no longer land once the chain's clock has passed it.
//!
//! Messages use send mode 3 (fees paid separately, errors ignored): the seqno advances even if a
//! message cannot be sent, which is then reported as [`WalletError::NotSent`] from the wallet
//! transaction's outbound messages.

use std::sync::Arc;
use std::time::Duration;

use crate::tonchain::external_boc;
use crate::{AccountStatus, ChainError, ChainTx, TonChain};
use ed25519_dalek::SigningKey;
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::{check_code, ContractKind, StateInit, WalletData};
use ton::messages::wallet::{InternalMessage, WalletExternal, MAX_MESSAGES};
use ton::messages::MessageError;

/// Send mode of every message: pay fees separately (1) + ignore errors (2).
pub const SEND_MODE: u8 = 3;
/// The Cocoon wallet refuses externals while it holds less than this (exit 1035).
pub const MIN_WALLET_BALANCE: u128 = 2_000_000_000;

/// Why a wallet send failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("wallet {wallet}: chain: {source}")]
    Chain {
        wallet: Addr,
        #[source]
        source: ChainError,
    },
    #[error("wallet {wallet}: message: {source}")]
    Message {
        wallet: Addr,
        #[source]
        source: MessageError,
    },
    #[error("wallet {wallet}: {count} messages in one external, at most 4")]
    TooMany { wallet: Addr, count: usize },
    #[error("wallet {wallet}: account is {status:?}")]
    Unusable { wallet: Addr, status: AccountStatus },
    #[error("wallet {wallet}: on-chain code or data is not this key's wallet: {reason}")]
    Foreign { wallet: Addr, reason: String },
    #[error("wallet {wallet}: balance {balance} nano is below the {needed} nano this send needs (2 TON minimum plus the values)")]
    Underfunded {
        wallet: Addr,
        balance: u128,
        needed: u128,
    },
    #[error("wallet {wallet}: seqno {seqno} not processed after {waited_ms} ms")]
    Timeout {
        wallet: Addr,
        seqno: u32,
        waited_ms: u128,
    },
    #[error("wallet {wallet}: seqno {seqno} was used by another external (another sender with this wallet key?)")]
    Superseded { wallet: Addr, seqno: u32 },
    #[error("wallet {wallet}: seqno {seqno}: {sent} of {expected} messages sent (exit code {exit_code:?}; wallet balance too low?)")]
    NotSent {
        wallet: Addr,
        seqno: u32,
        expected: usize,
        sent: usize,
        exit_code: Option<i32>,
    },
}

/// An external the wallet processed.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The seqno it used.
    pub seqno: u32,
    /// The wallet's transaction for it.
    pub tx: ChainTx,
}

/// A Cocoon wallet (see the module docs).
pub struct Wallet {
    chain: Arc<dyn TonChain>,
    key: SigningKey,
    init: StateInit,
    addr: Addr,
    timeout: Duration,
    poll: Duration,
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Wallet {
    /// The wallet of `key` owned by `owner` (its address follows from both).
    pub fn new(
        chain: Arc<dyn TonChain>,
        key: SigningKey,
        owner: Addr,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Self, MessageError> {
        let init = WalletData::initial(key.verifying_key().to_bytes(), owner)
            .state_init()
            .map_err(|source| MessageError::Field {
                field: "wallet state init",
                source,
            })?;
        let addr = init.address().map_err(|source| MessageError::Field {
            field: "wallet address",
            source,
        })?;
        Ok(Self {
            chain,
            key,
            init,
            addr,
            timeout,
            poll,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The wallet's address.
    pub fn address(&self) -> Addr {
        self.addr
    }

    fn chain_err(&self) -> impl Fn(ChainError) -> WalletError + '_ {
        move |source| WalletError::Chain {
            wallet: self.addr,
            source,
        }
    }

    /// The seqno the next external must carry, the wallet's balance and last transaction lt;
    /// `deployed` false when the wallet has no code yet.
    async fn status(&self) -> Result<WalletStatus, WalletError> {
        let a = self
            .chain
            .account(&self.addr)
            .await
            .map_err(self.chain_err())?;
        let last_lt = a.last_tx.map_or(0, |t| t.lt);
        match a.status {
            AccountStatus::NonExist | AccountStatus::Uninit => Ok(WalletStatus {
                seqno: 0,
                deployed: false,
                balance: a.balance,
                last_lt,
            }),
            AccountStatus::Frozen => Err(WalletError::Unusable {
                wallet: self.addr,
                status: a.status,
            }),
            AccountStatus::Active => {
                let foreign = |reason: String| WalletError::Foreign {
                    wallet: self.addr,
                    reason,
                };
                let code = a.code.ok_or_else(|| foreign("no code".into()))?;
                check_code(&code, ContractKind::Wallet).map_err(|e| foreign(e.to_string()))?;
                let data = a.data.ok_or_else(|| foreign("no data".into()))?;
                let d = WalletData::from_cell(&data).map_err(|e| foreign(e.to_string()))?;
                if d.pubkey != self.key.verifying_key().to_bytes() {
                    return Err(foreign("another public key".into()));
                }
                Ok(WalletStatus {
                    seqno: d.seqno,
                    deployed: true,
                    balance: a.balance,
                    last_lt,
                })
            }
        }
    }

    /// The wallet's current seqno (`None`: not deployed yet).
    pub async fn seqno(&self) -> Result<Option<u32>, WalletError> {
        let s = self.status().await?;
        Ok(s.deployed.then_some(s.seqno))
    }

    /// Sends up to four internal messages in one external and waits until the wallet has
    /// processed it (see the module docs).
    pub async fn send(&self, messages: &[InternalMessage]) -> Result<Sent, WalletError> {
        if messages.len() > MAX_MESSAGES || messages.is_empty() {
            return Err(WalletError::TooMany {
                wallet: self.addr,
                count: messages.len(),
            });
        }
        let _guard = self.lock.lock().await;
        let st = self.status().await?;
        let needed = messages.iter().fold(MIN_WALLET_BALANCE, |acc, m| {
            acc.saturating_add(m.value.nano())
        });
        if st.balance < needed {
            return Err(WalletError::Underfunded {
                wallet: self.addr,
                balance: st.balance,
                needed,
            });
        }
        let msg_err = |source| WalletError::Message {
            wallet: self.addr,
            source,
        };
        let mut cells = Vec::with_capacity(messages.len());
        for m in messages {
            cells.push((SEND_MODE, m.to_cell().map_err(msg_err)?));
        }
        let now = self.chain.now().await.map_err(self.chain_err())?;
        let timeout_s = u32::try_from(self.timeout.as_secs()).unwrap_or(u32::MAX);
        let body = WalletExternal {
            subwallet: 0,
            valid_until: now.saturating_add(timeout_s.max(1)),
            seqno: st.seqno,
            messages: cells,
        }
        .sign(&self.key)
        .map_err(msg_err)?;
        let init = (!st.deployed).then_some(&self.init);
        let boc = external_boc(self.addr, init, &body).map_err(self.chain_err())?;
        let msg_hash = message_hash(&boc);
        self.chain
            .send_message(&boc)
            .await
            .map_err(self.chain_err())?;
        let started = tokio::time::Instant::now();
        loop {
            let now = self.status().await?;
            if now.deployed && now.seqno > st.seqno {
                break;
            }
            if started.elapsed() >= self.timeout {
                return Err(WalletError::Timeout {
                    wallet: self.addr,
                    seqno: st.seqno,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
        let txs = self
            .chain
            .transactions(&self.addr, st.last_lt, 256)
            .await
            .map_err(self.chain_err())?;
        let tx = txs
            .into_iter()
            .find(|t| msg_hash.is_some() && t.in_msg.as_deref().and_then(message_hash) == msg_hash)
            .ok_or(WalletError::Superseded {
                wallet: self.addr,
                seqno: st.seqno,
            })?;
        if tx.out_msgs.len() < messages.len() {
            return Err(WalletError::NotSent {
                wallet: self.addr,
                seqno: st.seqno,
                expected: messages.len(),
                sent: tx.out_msgs.len(),
                exit_code: tx.exit_code,
            });
        }
        Ok(Sent {
            seqno: st.seqno,
            tx,
        })
    }

    /// Sends one message.
    pub async fn send_one(
        &self,
        dest: Addr,
        value: u128,
        bounce: bool,
        init: Option<StateInit>,
        body: Option<Cell>,
    ) -> Result<Sent, WalletError> {
        self.send(&[InternalMessage {
            bounce,
            dest,
            value: ton::address::Coins::from_nano(value),
            init,
            body,
        }])
        .await
    }
}

struct WalletStatus {
    seqno: u32,
    deployed: bool,
    balance: u128,
    last_lt: u64,
}

/// Representation hash of a message BOC (`None` if it does not decode).
fn message_hash(boc: &[u8]) -> Option<[u8; 32]> {
    ton::boc::decode(boc).ok().map(|c| c.hash())
}
