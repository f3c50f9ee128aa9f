//! The worker's earnings: payout vouchers from its proxies, checked and submitted to its
//! worker contracts (`[payout]` in the worker config; off when absent).
//!
//! # Flow
//! The worker registers the **owner** of its worker contracts ([`protocol::payout`]); a worker
//! contract is `WorkerData::initial(owner, proxy contract, Kp, params)`, one per proxy
//! contract, and pays `Δ × worker_fee_per_token` to that owner for every voucher that raises
//! its token count. A proxy POSTs its latest voucher after registration and whenever it has
//! anchored more of this worker's tokens. [`Payouts::receive`]:
//! 1. reads the proxy contract from the chain ([`tonsim::proxy_contract::read_proxy`]: pinned
//!    code, key and params that derive to its address), once per proxy contract;
//! 2. derives the worker contract itself and requires the voucher's to be that one;
//! 3. parses the voucher strictly and checks Kp's signature over it, its op (payout), its
//!    target (the worker contract) and its count;
//! 4. refuses a count below the **floor**: the highest count this worker has accepted from
//!    that proxy contract (kept in `state_file`, if configured) or the count the worker
//!    contract has already paid on chain (read at first contact). A proxy whose ledger was
//!    rolled back or cloned signs lower counts; the connection is then refused
//!    ([`PayoutError::Backwards`], 401 on the wire, and the service stops serving that
//!    connection);
//! 5. keeps the voucher and wakes the submitter.
//!
//! The submitter sends each voucher above the paid count from the worker's **wallet** (a
//! Cocoon wallet, `tonsim::wallet::Wallet`, which pays the fees; its excess comes back to it),
//! repacked with the wallet as the excess address, with the worker contract's state init while
//! the contract is not deployed yet; then it reads the contract's paid count back (a voucher
//! sent but not yet paid is sent again only after [`RESEND_AFTER`]). Failures are kept
//! ([`ProxyEarnings::last_error`]) and retried every [`RETRY`]. The wallet's wait for the chain
//! holds no lock that [`Payouts::receive`] or [`Payouts::earnings`] need.
//!
//! # Trust
//! The owner address and the wallet key are the GPU owner's: they come from the host-written
//! config, and the host may know them (they pay the host's owner). What the host cannot do is
//! make the worker accept a voucher that Kp did not sign for this worker contract, or make a
//! proxy's counts go backwards unnoticed while the state file or the chain remembers them.
//! Everything the chain API returns is untrusted input (typed errors, no panics).

use std::collections::{btree_map, BTreeMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use protocol::payout::{PayoutAck, PayoutAdvert, PayoutVoucher, PROXY_WENT_BACKWARDS};
use protocol::{ApiError, ErrorKind};
use serde::Serialize;
use tokio::sync::Notify;
use ton::address::Addr;
use ton::cell::Cell;
use ton::contracts::{StateInit, WorkerData};
use ton::messages::signed::{SignedMessage, SignedOp};
use tonsim::proxy_contract::{read_proxy, ProxyInfo};
use tonsim::wallet::Wallet;
use tonsim::{AccountStatus, TonChain};

/// How often the submitter retries what failed (and re-reads paid counts).
pub const RETRY: Duration = Duration::from_secs(10);
/// A voucher sent but not yet seen paid on chain is sent again after this long (a live chain
/// applies the worker contract's transaction a block after the wallet's).
pub const RESEND_AFTER: Duration = Duration::from_secs(120);

/// One voucher to submit (a copy taken under the lock).
struct Job {
    proxy: Addr,
    contract: Addr,
    init: StateInit,
    tokens: u64,
    cell: Cell,
    sent: Option<(u64, Instant)>,
}

/// What [`Payouts`] needs (from `[payout]`).
pub struct PayoutSetup {
    pub chain: Arc<dyn TonChain>,
    /// Owner of the worker contracts: receives the earnings.
    pub owner: Addr,
    /// The wallet that submits vouchers (and pays their fees).
    pub wallet_key: SigningKey,
    /// Owner in that wallet's data (part of its address).
    pub wallet_owner: Addr,
    /// Highest accepted count per proxy contract, across restarts (none: the chain's paid
    /// count is the only floor after a restart).
    pub state_file: Option<PathBuf>,
    /// Value sent with each voucher (the excess returns to the wallet).
    pub voucher_value_nano: u128,
    /// Wait for a wallet external (also its validity).
    pub wallet_timeout: Duration,
    /// Poll interval while waiting.
    pub poll: Duration,
}

impl std::fmt::Debug for PayoutSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutSetup")
            .field("owner", &self.owner)
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

/// Why a voucher was refused or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    #[error("payout: {0}")]
    Malformed(String),
    #[error("payout: proxy contract {addr}: {reason}")]
    Proxy { addr: String, reason: String },
    #[error("payout: the voucher is for worker contract {got}, ours under this proxy is {ours}")]
    WrongContract { ours: String, got: String },
    #[error("payout: voucher rejected: {0}")]
    Voucher(String),
    /// The proxy signed a lower count than one already seen: rolled back or cloned.
    #[error("{PROXY_WENT_BACKWARDS}: proxy contract {proxy} signed {got} tokens for this worker, {seen} were seen before")]
    Backwards { proxy: String, seen: u64, got: u64 },
    #[error("payout: state file {path}: {detail}")]
    State { path: PathBuf, detail: String },
}

impl PayoutError {
    /// The answer to the proxy: 401 for a proxy that went backwards (the worker refuses it),
    /// 400 for a bad voucher, 502 when the chain could not be read.
    pub fn api(&self) -> ApiError {
        let kind = match self {
            Self::Backwards { .. } => ErrorKind::Unauthorized,
            Self::Proxy { .. } | Self::State { .. } => ErrorKind::Upstream,
            _ => ErrorKind::InvalidRequest,
        };
        ApiError::new(kind, self.to_string())
    }
}

/// Earnings from one proxy contract.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyEarnings {
    pub proxy_contract: String,
    pub worker_contract: String,
    /// Highest voucher count accepted.
    pub voucher_tokens: u64,
    /// Tokens the worker contract has paid out (chain).
    pub paid_tokens: u64,
    /// Vouchers not paid yet.
    pub pending_tokens: u64,
    pub paid_nano: u128,
    pub pending_nano: u128,
    pub last_error: Option<String>,
}

/// Everything [`Payouts`] shows (the status port's `GET /earnings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Earnings {
    pub owner: String,
    pub wallet: String,
    pub paid_nano: u128,
    pub pending_nano: u128,
    pub proxies: Vec<ProxyEarnings>,
}

struct Entry {
    info: ProxyInfo,
    contract: Addr,
    init: StateInit,
    floor: u64,
    voucher: Option<(u64, Cell)>,
    /// The last voucher sent, and when.
    sent: Option<(u64, Instant)>,
    paid: u64,
    last_error: Option<String>,
}

/// The worker's payout state (see the module docs).
pub struct Payouts {
    chain: Arc<dyn TonChain>,
    owner: Addr,
    wallet: Wallet,
    state_file: Option<PathBuf>,
    voucher_value_nano: u128,
    entries: tokio::sync::Mutex<BTreeMap<Addr, Entry>>,
    /// Highest accepted count per proxy contract (what `state_file` holds).
    highest: Mutex<BTreeMap<String, u64>>,
    kick: Notify,
    /// One submitter pass at a time.
    submitting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Payouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payouts")
            .field("owner", &self.owner)
            .field("wallet", &self.wallet.address())
            .finish_non_exhaustive()
    }
}

impl Payouts {
    /// Loads the state file (if any) and sets up the wallet.
    pub fn new(setup: PayoutSetup) -> Result<Arc<Self>, PayoutError> {
        let highest = match &setup.state_file {
            Some(path) => load_state(path)?,
            None => BTreeMap::new(),
        };
        let wallet = Wallet::new(
            setup.chain.clone(),
            setup.wallet_key,
            setup.wallet_owner,
            setup.wallet_timeout,
            setup.poll,
        )
        .map_err(|e| PayoutError::Malformed(format!("wallet: {e}")))?;
        Ok(Arc::new(Self {
            chain: setup.chain,
            owner: setup.owner,
            wallet,
            state_file: setup.state_file,
            voucher_value_nano: setup.voucher_value_nano,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            highest: Mutex::new(highest),
            kick: Notify::new(),
            submitting: tokio::sync::Mutex::new(()),
        }))
    }

    /// What the worker registers.
    pub fn advert(&self) -> PayoutAdvert {
        PayoutAdvert {
            owner: self.owner.to_string(),
        }
    }

    /// The wallet that submits vouchers.
    pub fn wallet(&self) -> Addr {
        self.wallet.address()
    }

    /// Checks and keeps a voucher (see the module docs).
    pub async fn receive(&self, v: &PayoutVoucher) -> Result<PayoutAck, PayoutError> {
        v.validate()
            .map_err(|e| PayoutError::Malformed(e.message))?;
        let proxy: Addr = v
            .proxy_contract
            .parse()
            .map_err(|e| PayoutError::Malformed(format!("proxy_contract: {e}")))?;
        let mut entries = self.entries.lock().await;
        let e = match entries.entry(proxy) {
            btree_map::Entry::Occupied(o) => o.into_mut(),
            btree_map::Entry::Vacant(v) => v.insert(self.first_contact(proxy).await?),
        };
        if v.worker_contract != e.contract.to_string() {
            return Err(PayoutError::WrongContract {
                ours: e.contract.to_string(),
                got: v.worker_contract.clone(),
            });
        }
        let cell = ton::boc::decode_hex(&v.voucher)
            .map_err(|err| PayoutError::Voucher(format!("boc: {err}")))?;
        let m = SignedMessage::parse_verified(&cell, &e.info.public_key, &e.contract)
            .map_err(|err| PayoutError::Voucher(err.to_string()))?;
        if m.op != SignedOp::Payout {
            return Err(PayoutError::Voucher(format!("op {:?}, not a payout", m.op)));
        }
        if m.payload.tokens != Some(v.tokens) {
            return Err(PayoutError::Voucher(format!(
                "signed for {:?} tokens, announced {}",
                m.payload.tokens, v.tokens
            )));
        }
        if v.tokens < e.floor {
            return Err(PayoutError::Backwards {
                proxy: proxy.to_string(),
                seen: e.floor,
                got: v.tokens,
            });
        }
        if v.tokens > e.floor {
            self.remember(&proxy, v.tokens)?;
            e.floor = v.tokens;
            e.voucher = Some((v.tokens, cell));
            self.kick.notify_one();
        }
        Ok(PayoutAck {
            highest_tokens: e.floor,
        })
    }

    /// Reads the proxy contract, derives our worker contract, reads its paid count.
    async fn first_contact(&self, proxy: Addr) -> Result<Entry, PayoutError> {
        let err = |reason: String| PayoutError::Proxy {
            addr: proxy.to_string(),
            reason,
        };
        let info = read_proxy(self.chain.as_ref(), proxy)
            .await
            .map_err(|e| err(e.to_string()))?;
        let init = WorkerData::initial(self.owner, proxy, info.public_key, info.params.clone())
            .state_init()
            .map_err(|e| err(format!("worker contract: {e}")))?;
        let contract = init
            .address()
            .map_err(|e| err(format!("worker contract: {e}")))?;
        let paid = self
            .paid_tokens(&contract)
            .await
            .map_err(|e| err(format!("worker contract {contract}: {e}")))?;
        let remembered = self
            .highest
            .lock()
            .map(|h| h.get(&proxy.to_string()).copied().unwrap_or(0))
            .unwrap_or(0);
        Ok(Entry {
            info,
            contract,
            init,
            floor: remembered.max(paid),
            voucher: None,
            sent: None,
            paid,
            last_error: None,
        })
    }

    /// Tokens the worker contract has paid out (0 before it exists).
    async fn paid_tokens(&self, contract: &Addr) -> Result<u64, String> {
        let a = self
            .chain
            .account(contract)
            .await
            .map_err(|e| e.to_string())?;
        if a.status != AccountStatus::Active {
            return Ok(0);
        }
        let data = a.data.ok_or("active without data")?;
        let d = WorkerData::from_cell(&data).map_err(|e| e.to_string())?;
        Ok(d.tokens)
    }

    fn remember(&self, proxy: &Addr, tokens: u64) -> Result<(), PayoutError> {
        let mut h = self
            .highest
            .lock()
            .map_err(|_| PayoutError::Malformed("state lock poisoned".into()))?;
        h.insert(proxy.to_string(), tokens);
        if let Some(path) = &self.state_file {
            save_state(path, &h)?;
        }
        Ok(())
    }

    /// One submitter pass: every voucher above the paid count goes to its worker contract,
    /// unless the same voucher was sent less than [`RESEND_AFTER`] ago and the chain has not
    /// shown it yet. Returns how many were sent. The entries are not locked while the wallet
    /// waits for the chain, so vouchers keep being received and `/earnings` answers meanwhile.
    pub async fn submit_pending(&self) -> usize {
        let _one_pass = self.submitting.lock().await;
        let jobs: Vec<Job> = {
            let entries = self.entries.lock().await;
            entries
                .iter()
                .filter_map(|(proxy, e)| {
                    let (tokens, cell) = e.voucher.clone()?;
                    Some(Job {
                        proxy: *proxy,
                        contract: e.contract,
                        init: e.init.clone(),
                        tokens,
                        cell,
                        sent: e.sent,
                    })
                })
                .collect()
        };
        let mut sent = 0;
        for job in jobs {
            let outcome = self.submit(&job).await;
            let mut entries = self.entries.lock().await;
            let Some(e) = entries.get_mut(&job.proxy) else {
                continue;
            };
            match outcome {
                Ok((paid, sent_now)) => {
                    e.paid = e.paid.max(paid);
                    if sent_now {
                        e.sent = Some((job.tokens, Instant::now()));
                        sent += 1;
                    }
                    if e.voucher.as_ref().is_some_and(|(t, _)| e.paid >= *t) {
                        e.voucher = None;
                    }
                    e.last_error = None;
                }
                Err(err) => {
                    tracing::warn!(proxy = %job.proxy, error = %err, "payout not submitted");
                    e.last_error = Some(err);
                }
            }
        }
        sent
    }

    /// Sends one voucher if the chain has not paid it and it is not waiting for the chain;
    /// returns the paid count and whether it was sent.
    async fn submit(&self, job: &Job) -> Result<(u64, bool), String> {
        let paid = self.paid_tokens(&job.contract).await?;
        if paid >= job.tokens {
            return Ok((paid, false));
        }
        if let Some((tokens, at)) = job.sent {
            if tokens >= job.tokens && at.elapsed() < RESEND_AFTER {
                return Ok((paid, false));
            }
        }
        let deployed = self
            .chain
            .account(&job.contract)
            .await
            .map_err(|err| err.to_string())?
            .status
            == AccountStatus::Active;
        let body = SignedMessage::parse(&job.cell)
            .and_then(|m| m.repack(&self.wallet.address()))
            .map_err(|err| err.to_string())?;
        let init = (!deployed).then(|| job.init.clone());
        self.wallet
            .send_one(
                job.contract,
                self.voucher_value_nano,
                deployed,
                init,
                Some(body),
            )
            .await
            .map_err(|err| err.to_string())?;
        // On a live chain the worker contract's transaction may come a block later.
        let paid = self.paid_tokens(&job.contract).await?;
        if paid >= job.tokens {
            tracing::info!(proxy = %job.proxy, contract = %job.contract, tokens = job.tokens, "payout received");
        } else {
            tracing::info!(proxy = %job.proxy, contract = %job.contract, tokens = job.tokens, "payout voucher sent; waiting for the worker contract");
        }
        Ok((paid, true))
    }

    /// Runs the submitter until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.submit_pending().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// The worker's earnings, per proxy contract.
    pub async fn earnings(&self) -> Earnings {
        let entries = self.entries.lock().await;
        let mut out = Earnings {
            owner: self.owner.to_string(),
            wallet: self.wallet.address().to_string(),
            ..Earnings::default()
        };
        for e in entries.values() {
            let fee = e.info.params.worker_fee_per_token.nano();
            let pending = e.floor.saturating_sub(e.paid);
            let p = ProxyEarnings {
                proxy_contract: e.info.addr.to_string(),
                worker_contract: e.contract.to_string(),
                voucher_tokens: e.floor,
                paid_tokens: e.paid,
                pending_tokens: pending,
                paid_nano: u128::from(e.paid) * fee,
                pending_nano: u128::from(pending) * fee,
                last_error: e.last_error.clone(),
            };
            out.paid_nano += p.paid_nano;
            out.pending_nano += p.pending_nano;
            out.proxies.push(p);
        }
        out
    }
}

fn load_state(path: &PathBuf) -> Result<BTreeMap<String, u64>, PayoutError> {
    let err = |detail: String| PayoutError::State {
        path: path.clone(),
        detail,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the state atomically: a temporary file, fsync, rename.
fn save_state(path: &PathBuf, state: &BTreeMap<String, u64>) -> Result<(), PayoutError> {
    use std::io::Write;
    let err = |detail: String| PayoutError::State {
        path: path.clone(),
        detail,
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    Ok(())
}
