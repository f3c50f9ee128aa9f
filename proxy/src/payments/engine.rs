//! [`Payments`]: the watcher, anchor and charge steps, payout vouchers, proxy-fee withdrawal and
//! the engine's statistics. Each step is a public async function (tests drive them one by one);
//! [`Payments::start`] runs them in one background task.
//!
//! * Watcher ([`Payments::sync_chain`]): reads the proxy contract's transactions above the last
//!   one processed (the chain returns the newest first and at most a limit: the limit doubles
//!   while a poll comes back full), oldest first, and acts on each inbound message (see
//!   [`super::inbound`]): client notification from the derived client contract →
//!   `observe_client`; worker notification from the derived worker contract → paid tokens;
//!   save_state from this proxy's wallet → `check_anchor`, `anchor_confirmed`. A process starts
//!   from the beginning of the contract's history, so an anchor written by a newer copy of the
//!   ledger (or by a clone) is seen before anything is signed.
//! * Anchor ([`Payments::anchor`]): when some count is not anchored yet, `begin_anchor` and
//!   send `save_state(seqno, digest)` to the proxy contract; the watcher confirms it.
//! * Charges ([`Payments::settle`]): a client whose anchored, uncharged usage reaches the
//!   threshold gets a charge voucher for the anchored count; a claimed voucher not seen applied
//!   is re-sent (identical bytes) after `voucher_retry`; a client in closing state gets
//!   `grant_refund` once everything billed to it is anchored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ton::address::Addr;
use ton::cell::{Cell, CellError};
use ton::contracts::{ClientData, ContractKind, ProxyData, StateInit, WorkerData};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::messages::unsigned::Request;
use ton::messages::MessageError;
use ton::params::ParamsV3;
use tonsim::{AccountStatus, ChainError, ChainTx, TonChain};

use super::inbound::{classify, parse_inbound, ProxyInbound};
use super::stats::{ClientStats, PaymentsStats, WorkerStats};
use super::{Health, PaymentsSettings, RollbackError};
use super::{ProxyWallet, Sent, WalletError};
use crate::ledger::durable::DurableLedger;
use crate::ledger::LedgerError;

/// An engine step failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The chain contradicts the ledger (see [`Health::Fatal`]); nothing is signed any more.
    #[error("{0}")]
    Rollback(RollbackError),
    #[error("the chain's history has not been read yet")]
    NotSynced,
    #[error(transparent)]
    Wallet(Box<WalletError>),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error("message: {0}")]
    Message(#[from] MessageError),
    #[error("contract address derivation: {0}")]
    Cell(#[from] CellError),
}

impl From<WalletError> for PaymentsError {
    fn from(e: WalletError) -> Self {
        PaymentsError::Wallet(Box::new(e))
    }
}

/// What the engine needs.
pub struct PaymentsSetup {
    pub chain: Arc<dyn TonChain>,
    pub ledger: Arc<DurableLedger>,
    /// The proxy key Kp (vouchers).
    pub proxy_key: SigningKey,
    /// The wallet key.
    pub wallet_key: SigningKey,
    /// The network's params (any code they carry is ignored: the pinned worker and client
    /// code is embedded in the proxy contract's copy).
    pub params: ParamsV3,
    pub settings: PaymentsSettings,
}

impl std::fmt::Debug for PaymentsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsSetup")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A client contract as its last notification described it.
#[derive(Clone, Copy, Debug)]
struct ChainClient {
    state: u8,
    balance: u128,
    stake: u128,
}

/// A worker contract as its notifications described it.
#[derive(Clone, Copy, Debug, Default)]
struct ChainWorker {
    state: u8,
    tokens: u64,
    paid_nano: u128,
}

#[derive(Debug, Default)]
struct EngineState {
    cursor_lt: u64,
    synced: bool,
    chain_now: Option<u32>,
    last_poll: Option<Instant>,
    last_tx_utime: Option<u32>,
    last_anchor: Option<(u32, u32)>,
    clients: HashMap<Addr, ChainClient>,
    workers: HashMap<Addr, ChainWorker>,
    /// Vouchers sent and not yet seen applied: target → (count, when).
    sent: HashMap<Addr, (u64, Instant)>,
    /// Client contracts by the account binding hash they carry
    /// ([`ton::contracts::account_binding_hash`]); the latest notification wins.
    bindings: HashMap<[u8; 32], Addr>,
    /// The proxy contract was seen deployed (or deployed by this engine).
    contract_active: bool,
    ignored: u64,
    malformed: u64,
    gaps: u64,
    last_error: Option<String>,
}

/// The payments engine (see the module docs).
pub struct Payments {
    chain: Arc<dyn TonChain>,
    ledger: Arc<DurableLedger>,
    kp: SigningKey,
    kp_pub: [u8; 32],
    wallet: ProxyWallet,
    proxy: Addr,
    proxy_init: StateInit,
    /// Params as client and worker contracts embed them (no code).
    params: ParamsV3,
    client_code: Cell,
    worker_code: Cell,
    settings: PaymentsSettings,
    health: watch::Sender<Health>,
    state: Mutex<EngineState>,
    sync_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments")
            .field("proxy", &self.proxy)
            .field("wallet", &self.wallet.address())
            .finish_non_exhaustive()
    }
}

/// The engine's background task; [`PaymentsTask::shutdown`] stops it.
#[derive(Debug)]
pub struct PaymentsTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl PaymentsTask {
    /// Stops the task and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// The qid of a voucher: derived from what it says, so the same voucher is the same bytes.
pub fn voucher_qid(op: SignedOp, target: &Addr, count: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(b"cocoon voucher qid v1");
    h.update(op.op().to_be_bytes());
    h.update([target.workchain as u8]);
    h.update(target.hash);
    h.update(count.to_be_bytes());
    let d = h.finalize();
    let mut q = [0u8; 8];
    q.copy_from_slice(&d[..8]);
    u64::from_be_bytes(q)
}

fn saturating_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Payments {
    /// Builds the engine: derives the proxy contract and wallet addresses.
    pub fn new(setup: PaymentsSetup) -> Result<Arc<Self>, PaymentsError> {
        let s = setup.settings;
        let kp_pub = setup.proxy_key.verifying_key().to_bytes();
        let client_code = ContractKind::Client.code();
        let worker_code = ContractKind::Worker.code();
        let params = setup.params.without_code();
        let proxy_params = params.for_proxy(worker_code.clone(), client_code.clone());
        let proxy_init = ProxyData::initial(s.owner, kp_pub, s.root, proxy_params).state_init()?;
        let proxy = proxy_init.address()?;
        let wallet = ProxyWallet::new(
            setup.chain.clone(),
            setup.wallet_key,
            s.wallet_owner,
            s.wallet_timeout,
            s.poll_interval,
        )?;
        let (health, _) = watch::channel(Health::Syncing);
        Ok(Arc::new(Self {
            chain: setup.chain,
            ledger: setup.ledger,
            kp: setup.proxy_key,
            kp_pub,
            wallet,
            proxy,
            proxy_init,
            params,
            client_code,
            worker_code,
            settings: s,
            health,
            state: Mutex::new(EngineState::default()),
            sync_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The proxy contract's address.
    pub fn proxy_contract(&self) -> Addr {
        self.proxy
    }

    /// The proxy wallet.
    pub fn wallet(&self) -> &ProxyWallet {
        &self.wallet
    }

    /// The engine's health; the proxy stops serving on [`Health::Fatal`].
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The client contract the proxy contract derives for `owner`.
    /// The client contract bound to the TLS account key `account` (hex Ed25519 public key):
    /// the one whose last notification carried its binding hash. Its raw address is the
    /// ledger account.
    pub fn account_contract(&self, account: &str) -> Option<Addr> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(account, &mut key).ok()?;
        let h = ton::contracts::account_binding_hash(&key);
        self.lock().bindings.get(&h).copied()
    }

    pub fn client_contract(&self, owner: &Addr) -> Result<Addr, CellError> {
        let data = ClientData::initial(
            *owner,
            self.proxy,
            self.kp_pub,
            self.params.min_client_stake,
            self.params.clone(),
        );
        StateInit {
            code: self.client_code.clone(),
            data: data.to_cell()?,
        }
        .address()
    }

    /// The worker contract the proxy contract derives for `owner`.
    pub fn worker_contract(&self, owner: &Addr) -> Result<Addr, CellError> {
        let data = WorkerData::initial(*owner, self.proxy, self.kp_pub, self.params.clone());
        StateInit {
            code: self.worker_code.clone(),
            data: data.to_cell()?,
        }
        .address()
    }

    fn ensure_healthy(&self) -> Result<(), PaymentsError> {
        match &*self.health.borrow() {
            Health::Fatal(e) => Err(PaymentsError::Rollback(e.clone())),
            Health::Syncing => Err(PaymentsError::NotSynced),
            Health::Healthy => Ok(()),
        }
    }

    fn fatal(&self, e: RollbackError) -> PaymentsError {
        tracing::error!(error = %e, "payments: the chain contradicts the ledger; stop serving");
        self.health.send_replace(Health::Fatal(e.clone()));
        PaymentsError::Rollback(e)
    }

    // ---- watcher ------------------------------------------------------------------------

    /// Reads and processes the proxy contract's new transactions (see the module docs).
    /// Returns how many were read.
    pub async fn sync_chain(&self) -> Result<usize, PaymentsError> {
        let _guard = self.sync_lock.lock().await;
        if let Health::Fatal(e) = &*self.health.borrow() {
            return Err(PaymentsError::Rollback(e.clone()));
        }
        let cursor = self.lock().cursor_lt;
        let mut limit = self.settings.history_page;
        let mut txs = loop {
            let txs = self.chain.transactions(&self.proxy, cursor, limit).await?;
            if txs.len() < limit {
                break txs;
            }
            if limit >= self.settings.history_max {
                tracing::warn!(
                    limit,
                    "payments: more proxy-contract transactions than history_max; older ones skipped"
                );
                self.lock().gaps += 1;
                break txs;
            }
            limit = limit.saturating_mul(2).min(self.settings.history_max);
        };
        let now = self.chain.now().await?;
        txs.sort_by_key(|t| t.id.lt);
        let n = txs.len();
        for tx in &txs {
            if tx.id.lt <= cursor {
                continue;
            }
            self.process(tx)?;
            let mut st = self.lock();
            st.cursor_lt = tx.id.lt;
            st.last_tx_utime = Some(tx.utime);
        }
        {
            let mut st = self.lock();
            st.chain_now = Some(now);
            st.last_poll = Some(Instant::now());
            st.synced = true;
        }
        self.health.send_if_modified(|h| {
            if *h == Health::Syncing {
                *h = Health::Healthy;
                true
            } else {
                false
            }
        });
        Ok(n)
    }

    fn process(&self, tx: &ChainTx) -> Result<(), PaymentsError> {
        let Some(boc) = &tx.in_msg else {
            return Ok(());
        };
        let inbound = match parse_inbound(boc) {
            Ok(Some(i)) if !i.bounced => i,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::debug!(lt = tx.id.lt, error = %e, "payments: unreadable inbound message");
                self.lock().malformed += 1;
                return Ok(());
            }
        };
        let what = match classify(inbound.body.as_ref()) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(lt = tx.id.lt, error = %e, "payments: malformed notification");
                self.lock().malformed += 1;
                return Ok(());
            }
        };
        match what {
            ProxyInbound::Client(n) => {
                if self.client_contract(&n.owner).ok() != Some(inbound.src) {
                    tracing::debug!(src = %inbound.src, "payments: client notification from a non-derived address ignored");
                    self.lock().ignored += 1;
                    return Ok(());
                }
                let sn = &n.snapshot;
                let ticket = self
                    .ledger
                    .observe_client(
                        &inbound.src.to_string(),
                        saturating_u64(sn.balance.nano()),
                        saturating_u64(sn.stake.nano()),
                        sn.tokens_used,
                    )
                    .map_err(|e| self.fatal(e))?;
                drop(ticket);
                let mut st = self.lock();
                if sn.secret_hash != [0; 32] {
                    st.bindings.insert(sn.secret_hash, inbound.src);
                }
                st.clients.insert(
                    inbound.src,
                    ChainClient {
                        state: sn.state,
                        balance: sn.balance.nano(),
                        stake: sn.stake.nano(),
                    },
                );
                if matches!(st.sent.get(&inbound.src), Some((c, _)) if *c <= sn.tokens_used) {
                    st.sent.remove(&inbound.src);
                }
            }
            ProxyInbound::Worker(n) => {
                if self.worker_contract(&n.owner).ok() != Some(inbound.src) {
                    tracing::debug!(src = %inbound.src, "payments: worker notification from a non-derived address ignored");
                    self.lock().ignored += 1;
                    return Ok(());
                }
                let mut st = self.lock();
                let w = st.workers.entry(inbound.src).or_default();
                w.state = n.state;
                w.tokens = w.tokens.max(n.tokens);
                if let Some(p) = &n.payout {
                    w.paid_nano = w.paid_nano.saturating_add(p.worker_part.nano());
                }
            }
            ProxyInbound::Anchor { seqno, digest } => {
                if inbound.src != self.wallet.address() {
                    tracing::debug!(src = %inbound.src, "payments: anchor from another sender ignored");
                    self.lock().ignored += 1;
                    return Ok(());
                }
                self.ledger
                    .check_anchor(seqno, &digest)
                    .map_err(|e| self.fatal(e))?;
                if let Some(ticket) = self.ledger.anchor_confirmed(seqno) {
                    drop(ticket);
                }
                self.lock().last_anchor = Some((seqno, tx.utime));
            }
            ProxyInbound::Other => {}
        }
        Ok(())
    }

    // ---- anchor -------------------------------------------------------------------------

    /// Whether some count in the ledger is not covered by a confirmed anchor.
    pub fn has_unanchored(&self) -> bool {
        self.ledger
            .clients()
            .values()
            .any(|a| a.used_tokens > a.anchored_tokens)
            || self
                .ledger
                .workers()
                .values()
                .any(|w| w.tokens > w.anchored_tokens)
    }

    /// Anchors the ledger if something is waiting to be anchored, then reads the chain (which
    /// confirms it). Returns the anchor's seqno.
    pub async fn anchor(&self) -> Result<Option<u32>, PaymentsError> {
        self.ensure_healthy()?;
        if !self.has_unanchored() {
            return Ok(None);
        }
        let (seqno, digest) = self.ledger.begin_anchor().await?;
        // The contract field is an int32: the ledger's u32 seqno is stored bit for bit.
        let body = Request::SaveState {
            qid: u64::from(seqno),
            seqno: seqno as i32,
            hash: digest,
        }
        .to_cell()?;
        self.wallet
            .send_one(
                self.proxy,
                self.settings.anchor_value_nano,
                false,
                None,
                Some(body),
            )
            .await?;
        tracing::info!(seqno, "payments: anchor sent");
        self.sync_chain().await?;
        Ok(Some(seqno))
    }

    // ---- charges ------------------------------------------------------------------------

    /// A signed voucher (`op` with `count`) for `target`, excess to the proxy wallet.
    pub fn voucher(&self, op: SignedOp, target: &Addr, count: u64) -> Result<Cell, MessageError> {
        build_signed(
            &self.kp,
            &SignedPayload {
                op,
                qid: voucher_qid(op, target, count),
                tokens: Some(count),
                expected_address: *target,
            },
            &self.wallet.address(),
        )
    }

    async fn send_voucher(
        &self,
        op: SignedOp,
        target: Addr,
        count: u64,
    ) -> Result<Sent, PaymentsError> {
        let body = self.voucher(op, &target, count)?;
        let sent = self
            .wallet
            .send_one(
                target,
                self.settings.voucher_value_nano,
                true,
                None,
                Some(body),
            )
            .await;
        // Recorded even on failure: the retry waits `voucher_retry` either way.
        self.lock().sent.insert(target, (count, Instant::now()));
        let sent = sent?;
        tracing::info!(client = %target, count, op = ?op, "payments: voucher sent");
        Ok(sent)
    }

    /// Sends the charge (and refund) vouchers that are due; returns how many were sent.
    pub async fn settle(&self) -> Result<usize, PaymentsError> {
        self.ensure_healthy()?;
        let price = self.params.price_per_token.nano();
        let mut sent = 0;
        for (account, a) in self.ledger.clients() {
            let Ok(addr) = Addr::parse_raw(&account) else {
                continue; // not a chain account (development deposits)
            };
            let (chain, last) = {
                let st = self.lock();
                (st.clients.get(&addr).copied(), st.sent.get(&addr).copied())
            };
            let Some(chain) = chain else {
                continue; // never seen on chain
            };
            let retry_due = last.is_none_or(|(_, at)| at.elapsed() >= self.settings.voucher_retry);
            match chain.state {
                0 => {
                    if a.voucher_tokens > a.charged_tokens {
                        if retry_due {
                            self.send_voucher(SignedOp::Charge, addr, a.voucher_tokens)
                                .await?;
                            sent += 1;
                        }
                        continue;
                    }
                    let due = a.anchored_tokens.saturating_sub(a.charged_tokens);
                    if due == 0 || u128::from(due) * price < self.settings.charge_threshold_nano {
                        continue;
                    }
                    if let Some((count, ticket)) = self.ledger.claim_charge_voucher(&account) {
                        ticket.wait().await?;
                        self.send_voucher(SignedOp::Charge, addr, count).await?;
                        sent += 1;
                    }
                }
                1 => {
                    // Closing: grant the refund once everything billed is anchored.
                    if a.used_tokens > a.anchored_tokens || !retry_due {
                        continue;
                    }
                    let count = match self.ledger.claim_charge_voucher(&account) {
                        Some((count, ticket)) => {
                            ticket.wait().await?;
                            count
                        }
                        None => a.voucher_tokens.max(a.charged_tokens),
                    };
                    self.send_voucher(SignedOp::GrantRefund, addr, count)
                        .await?;
                    sent += 1;
                }
                _ => {}
            }
        }
        Ok(sent)
    }

    // ---- workers and proxy fees ---------------------------------------------------------

    /// The payout voucher for the worker contract `worker` (its ledger account is the raw
    /// address): a new one for its anchored count, else the last one again (the same bytes);
    /// `None` if nothing was ever anchored for it.
    pub async fn payout_voucher(
        &self,
        worker: &Addr,
    ) -> Result<Option<(u64, Cell)>, PaymentsError> {
        self.ensure_healthy()?;
        let account = worker.to_string();
        let count = match self.ledger.claim_payout_voucher(&account) {
            Some((count, ticket)) => {
                ticket.wait().await?;
                count
            }
            None => match self.ledger.worker(&account) {
                Some(w) if w.voucher_tokens > 0 => w.voucher_tokens,
                _ => return Ok(None),
            },
        };
        let body = self.voucher(SignedOp::Payout, worker, count)?;
        Ok(Some((count, body)))
    }

    /// The charge voucher for the client contract bound to the TLS account `account` (hex
    /// key), for a client that submits its charge itself: a new one for its anchored count,
    /// else the last one again if the chain has not charged it yet. `None` if the account is
    /// bound to no contract or nothing is due.
    pub async fn charge_voucher(
        &self,
        account: &str,
    ) -> Result<Option<(Addr, u64, Cell)>, PaymentsError> {
        self.ensure_healthy()?;
        let Some(contract) = self.account_contract(account) else {
            return Ok(None);
        };
        let ledger_account = contract.to_string();
        let count = match self.ledger.claim_charge_voucher(&ledger_account) {
            Some((count, ticket)) => {
                ticket.wait().await?;
                count
            }
            None => match self.ledger.client(&ledger_account) {
                Some(a) if a.voucher_tokens > a.charged_tokens => a.voucher_tokens,
                _ => return Ok(None),
            },
        };
        let body = self.voucher(SignedOp::Charge, &contract, count)?;
        tracing::info!(client = %contract, count, "payments: charge voucher handed to the client");
        Ok(Some((contract, count, body)))
    }

    /// The payout voucher last issued for `worker`, signed again (the same bytes), without
    /// claiming anything new; `None` if none was issued. What the proxy shows a worker right
    /// after registration, so that a worker that has seen a higher count refuses it before
    /// it gets any request.
    pub fn issued_payout_voucher(
        &self,
        worker: &Addr,
    ) -> Result<Option<(u64, Cell)>, PaymentsError> {
        if let Health::Fatal(e) = &*self.health.borrow() {
            return Err(PaymentsError::Rollback(e.clone()));
        }
        match self.ledger.worker(&worker.to_string()) {
            Some(w) if w.voucher_tokens > 0 => {
                let body = self.voucher(SignedOp::Payout, worker, w.voucher_tokens)?;
                Ok(Some((w.voucher_tokens, body)))
            }
            _ => Ok(None),
        }
    }

    /// How often the engine polls the chain (and the relay offers workers new vouchers).
    pub fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
    }

    /// Asks the proxy contract to pay its accumulated fees to its owner.
    pub async fn withdraw_fees(&self) -> Result<Sent, PaymentsError> {
        let now = self.chain.now().await?;
        let body = Request::ProxyPayout {
            qid: u64::from(now),
            excess: self.wallet.address(),
        }
        .to_cell()?;
        Ok(self
            .wallet
            .send_one(
                self.proxy,
                self.settings.payout_request_value_nano,
                true,
                None,
                Some(body),
            )
            .await?)
    }

    /// Deploys the proxy contract through the wallet unless it is active already.
    pub async fn deploy_proxy_contract(&self) -> Result<Option<Sent>, PaymentsError> {
        let a = self.chain.account(&self.proxy).await?;
        if a.status == AccountStatus::Active {
            return Ok(None);
        }
        let sent = self
            .wallet
            .send_one(
                self.proxy,
                self.settings.deploy_value_nano,
                false,
                Some(self.proxy_init.clone()),
                None,
            )
            .await?;
        Ok(Some(sent))
    }

    // ---- running ------------------------------------------------------------------------

    /// One round: read the chain, anchor if the interval has passed, settle.
    async fn round(&self, next_anchor: &mut tokio::time::Instant) -> Result<(), PaymentsError> {
        if !self.lock().contract_active {
            // The proxy deploys its own contract once its wallet is funded.
            if let Some(sent) = self.deploy_proxy_contract().await? {
                tracing::info!(contract = %self.proxy, seqno = sent.seqno, "payments: proxy contract deployed");
            }
            self.lock().contract_active = true;
        }
        self.sync_chain().await?;
        if tokio::time::Instant::now() >= *next_anchor {
            *next_anchor = tokio::time::Instant::now() + self.settings.anchor_interval;
            self.anchor().await?;
        }
        if self.settle().await? > 0 {
            self.sync_chain().await?;
        }
        Ok(())
    }

    /// Runs the watcher, anchor and charge steps every `poll_interval` until shut down or a
    /// fatal error.
    pub fn start(self: &Arc<Self>) -> PaymentsTask {
        let (stop, mut stopped) = watch::channel(false);
        let me = self.clone();
        let handle = tokio::spawn(async move {
            let mut next_anchor = tokio::time::Instant::now() + me.settings.anchor_interval;
            loop {
                match me.round(&mut next_anchor).await {
                    Ok(()) => {}
                    Err(PaymentsError::Rollback(_)) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "payments: round failed");
                        me.lock().last_error = Some(e.to_string());
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(me.settings.poll_interval) => {}
                }
            }
        });
        PaymentsTask { stop, handle }
    }

    // ---- statistics ---------------------------------------------------------------------

    /// Worker tokens paid on chain, by worker contract, as the notifications reported them.
    pub fn paid_worker_tokens(&self) -> BTreeMap<Addr, u64> {
        self.lock()
            .workers
            .iter()
            .map(|(a, w)| (*a, w.tokens))
            .collect()
    }

    /// The engine's figures (no I/O: chain values are the last poll's).
    pub fn stats(&self) -> PaymentsStats {
        let price = self.params.price_per_token.nano();
        let ledger_clients = self.ledger.clients();
        let ledger_workers = self.ledger.workers();
        let health = self.health.borrow().to_string();
        let st = self.lock();
        let mut clients = BTreeMap::new();
        for (k, a) in ledger_clients {
            let chain = Addr::parse_raw(&k).ok().and_then(|a| st.clients.get(&a));
            let pending = a.used_tokens.saturating_sub(a.charged_tokens);
            clients.insert(
                k,
                ClientStats {
                    billed_tokens: a.used_tokens,
                    anchored_tokens: a.anchored_tokens,
                    voucher_tokens: a.voucher_tokens,
                    charged_tokens: a.charged_tokens,
                    pending_tokens: pending,
                    pending_nano: u128::from(pending) * price,
                    chain_state: chain.map(|c| c.state),
                    chain_balance_nano: chain.map(|c| c.balance),
                    chain_stake_nano: chain.map(|c| c.stake),
                },
            );
        }
        let mut workers = BTreeMap::new();
        for (k, w) in ledger_workers {
            let chain = Addr::parse_raw(&k).ok().and_then(|a| st.workers.get(&a));
            let paid = chain.map_or(0, |c| c.tokens);
            workers.insert(
                k,
                WorkerStats {
                    billed_tokens: w.tokens,
                    anchored_tokens: w.anchored_tokens,
                    voucher_tokens: w.voucher_tokens,
                    paid_tokens: paid,
                    paid_nano: chain.map_or(0, |c| c.paid_nano),
                    pending_tokens: w.tokens.saturating_sub(paid),
                    chain_state: chain.map(|c| c.state),
                },
            );
        }
        let lag = match (st.chain_now, st.last_tx_utime) {
            (Some(now), Some(t)) => Some(now.saturating_sub(t)),
            _ => None,
        };
        PaymentsStats {
            health,
            proxy_contract: self.proxy.to_string(),
            wallet: self.wallet.address().to_string(),
            chain_now: st.chain_now,
            last_tx_utime: st.last_tx_utime,
            chain_lag_s: lag,
            last_poll_age_ms: st
                .last_poll
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            last_anchor_seqno: st.last_anchor.map(|a| a.0),
            last_anchor_age_s: match (st.chain_now, st.last_anchor) {
                (Some(now), Some((_, t))) => Some(now.saturating_sub(t)),
                _ => None,
            },
            ignored_messages: st.ignored,
            malformed_messages: st.malformed,
            history_gaps: st.gaps,
            last_error: st.last_error.clone(),
            clients,
            workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voucher_qid_depends_on_op_target_and_count_only() {
        let a = Addr::basechain([1; 32]);
        let b = Addr::basechain([2; 32]);
        let q = voucher_qid(SignedOp::Charge, &a, 100);
        assert_eq!(q, voucher_qid(SignedOp::Charge, &a, 100));
        for other in [
            voucher_qid(SignedOp::Charge, &a, 101),
            voucher_qid(SignedOp::Charge, &b, 100),
            voucher_qid(SignedOp::GrantRefund, &a, 100),
        ] {
            assert_ne!(q, other);
        }
    }
}
