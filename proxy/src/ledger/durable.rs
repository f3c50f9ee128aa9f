//! The durable ledger: the proxy's accounts kept in a redb file, every value authenticated with
//! a key derived from the proxy key Kp, writes group-committed (one fsync for every mutation
//! that arrived while the previous fsync ran).
//!
//! ```text
//!   request ──reserve──▶ memory (authoritative, one mutex) ──op──▶ channel ──▶ writer thread
//!           ──commit───▶ memory ──op──▶ channel                    (batch: one redb txn, fsync)
//!           ◀──────────── Ticket::wait ◀── watch(durable seq, digest) ◀─┘
//! ```
//!
//! * Memory is the source of truth while the proxy runs; every mutation is numbered and queued
//!   under the same lock, so the file is always a prefix of the mutation sequence.
//! * A charge is not final until its [`Ticket`] reports it durable: the relay holds the usage
//!   event (and `[DONE]`) until then, so a client never sees a result the ledger could forget.
//! * Each stored value carries `HMAC-SHA256(k, table ‖ key ‖ value)` with `k` derived from Kp.
//!   The meta record holds the sum (mod 2²⁵⁶) of all tags: a changed, removed, added or
//!   individually rolled-back record changes the sum. Opening verifies both and refuses the file,
//!   naming what failed. A whole-file rollback to an older consistent copy is invisible here; the
//!   chain anchor ([`DurableLedger::check_anchor`]) and the workers' counts catch it.
//! * The MAC is symmetric on purpose: only the proxy that holds Kp reads its ledger, so a keyed
//!   hash detects tampering exactly as a signature would, at a twentieth of the cost.
//! * Reservations are stored too (without waiting for the fsync). After a crash the requests they
//!   held are gone with their connections; opening releases them and reports how many.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use protocol::Usage;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use ring::hmac;
use serde::Serialize;
use tokio::sync::watch;

use super::{Balance, Committed, Ledger, LedgerError, Reservation, UsageRecord};

const T_CLIENTS: &str = "clients";
const T_WORKERS: &str = "workers";
const T_RESERVATIONS: &str = "reservations";
const T_META: &str = "meta";
const T_RECEIPTS: &str = "receipts";
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new(T_CLIENTS);
const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new(T_WORKERS);
const RESERVATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new(T_RESERVATIONS);
const META: TableDefinition<&str, &[u8]> = TableDefinition::new(T_META);
/// Worker receipts of billed encrypted requests, by request hash: `VERSION ‖ u16 account
/// length ‖ account ‖ signed receipt` (`protocol::e2e::Receipt`), written in the same
/// transaction as the charge they justify.
const RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new(T_RECEIPTS);
const META_KEY: &str = "state";

/// Encoding version of every stored value (first byte).
const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Anchors sent but not yet seen on chain that the ledger remembers.
const SENT_ANCHORS: usize = 16;

/// Why the ledger file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("ledger {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("ledger {path}: {what} fails its authentication tag (modified, or written with another proxy key)")]
    BadTag { path: PathBuf, what: String },
    #[error("ledger {path}: {what} is malformed")]
    Malformed { path: PathBuf, what: String },
    #[error("ledger {path}: the records do not add up to the stored state digest (a record was changed, added, removed or restored from an older copy)")]
    DigestMismatch { path: PathBuf },
    #[error("ledger {path}: records exist but the state record is missing")]
    NoState { path: PathBuf },
    /// The storage engine panicked on damaged file structures (redb checks page contents
    /// with assertions and slice indexing); caught so that a damaged file is a named refusal.
    #[error("ledger {path}: damaged file structures: {detail}")]
    Damaged { path: PathBuf, detail: String },
}

/// A chain anchor that contradicts the ledger: a rolled-back or cloned proxy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("the chain holds anchor {chain_seqno} but this ledger sent at most {ledger_seqno}: the ledger was rolled back or another proxy runs with this key")]
    AnchorAhead { chain_seqno: u32, ledger_seqno: u32 },
    #[error("the chain's anchor {seqno} has digest {chain} but this ledger sent {ledger}: another proxy runs with this key")]
    AnchorDiffers {
        seqno: u32,
        chain: String,
        ledger: String,
    },
    #[error("client {account}: the chain charged {chain_tokens} tokens but this ledger billed only {ledger_tokens}: the ledger was rolled back")]
    ChargedAhead {
        account: String,
        chain_tokens: u64,
        ledger_tokens: u64,
    },
}

/// The MAC key of a ledger, derived from the proxy key Kp.
#[derive(Clone)]
pub struct LedgerKey(hmac::Key);

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerKey(..)")
    }
}

impl LedgerKey {
    /// The ledger key of the proxy key `kp_seed` (its 32-byte Ed25519 seed).
    pub fn derive(kp_seed: &[u8; 32]) -> Self {
        let outer = hmac::Key::new(hmac::HMAC_SHA256, b"cocoon proxy ledger v1");
        let k = hmac::sign(&outer, kp_seed);
        Self(hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()))
    }

    fn tag(&self, table: &str, key: &[u8], value: &[u8]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&(table.len() as u32).to_le_bytes());
        ctx.update(table.as_bytes());
        ctx.update(&(key.len() as u32).to_le_bytes());
        ctx.update(key);
        ctx.update(value);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// A client account as the ledger keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientAccount {
    /// Funds on the client contract as last seen on chain (or configured, without a chain).
    pub balance_nano: u64,
    /// The client's stake: the most it may owe the proxy (`u64::MAX`: no cap).
    pub stake_nano: u64,
    /// Tokens already charged on chain (the client contract's `tokens_used`).
    pub charged_tokens: u64,
    /// Tokens billed by this proxy, cumulative (the charge voucher counter).
    pub used_tokens: u64,
    /// Highest count a charge voucher was issued for.
    pub voucher_tokens: u64,
    /// Count covered by the last confirmed chain anchor.
    pub anchored_tokens: u64,
    pub usage: UsageRecord,
}

impl ClientAccount {
    /// A development account (no chain): `balance` and no stake cap.
    pub fn development(balance_nano: u64) -> Self {
        Self {
            balance_nano,
            stake_nano: u64::MAX,
            ..Self::default()
        }
    }
}

/// A worker's earnings as the ledger keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerAccount {
    /// Tokens served, cumulative (the payout voucher counter).
    pub tokens: u64,
    /// Highest count a payout voucher was issued for.
    pub voucher_tokens: u64,
    /// Count covered by the last confirmed chain anchor.
    pub anchored_tokens: u64,
    pub usage: UsageRecord,
}

/// The ledger's own state: the mutation count, the anchors it sent and the last one confirmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Meta {
    seq: u64,
    digest: [u8; 32],
    /// (seqno, digest) of anchors sent, oldest first, at most [`SENT_ANCHORS`].
    sent: Vec<(u32, [u8; 32])>,
    confirmed: u32,
}

/// Where a durable ledger lives and how it prices.
#[derive(Clone, Debug)]
pub struct DurableOptions {
    pub path: PathBuf,
    /// nano-TON per adjusted token: converts charges to the token counters vouchers carry.
    pub price_per_token: u64,
    /// Funds of accounts created on first use (`None`: unknown accounts are refused).
    pub default_balance_nano: Option<u64>,
}

/// What opening found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recovery {
    pub clients: usize,
    pub workers: usize,
    /// Reservations of requests that died with the previous process (released).
    pub stale_reservations: usize,
    pub stale_reserved_nano: u64,
}

/// How far the file has caught up.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// Everything up to `seq` is on disk; `sent` are the anchors the file records.
    Durable {
        seq: u64,
        sent: Vec<(u32, [u8; 32])>,
    },
    Failed(String),
}

/// A mutation's place in the sequence; [`Ticket::wait`] returns once it is on disk.
#[derive(Debug)]
#[must_use = "a charge is final only once its ticket reports it durable"]
pub struct Ticket {
    seq: u64,
    rx: watch::Receiver<Progress>,
}

impl Ticket {
    /// Waits until the mutation (and all before it) are on disk.
    pub async fn wait(mut self) -> Result<(), LedgerError> {
        let seq = self.seq;
        let state = self
            .rx
            .wait_for(|p| match p {
                Progress::Durable { seq: s, .. } => *s >= seq,
                Progress::Failed(_) => true,
            })
            .await
            .map_err(|_| LedgerError::Storage("ledger writer stopped".into()))?;
        match &*state {
            Progress::Durable { .. } => Ok(()),
            Progress::Failed(e) => Err(LedgerError::Storage(e.clone())),
        }
    }

    /// Whether the mutation is on disk already.
    pub fn is_durable(&self) -> bool {
        matches!(&*self.rx.borrow(), Progress::Durable { seq, .. } if *seq >= self.seq)
    }

    /// A ticket for mutation 1 of a writer that has written nothing, and the writer's side:
    /// [`TicketControl::written`] makes it durable, [`TicketControl::failed`] fails it.
    #[cfg(test)]
    pub(crate) fn pending() -> (Self, TicketControl) {
        let (tx, rx) = watch::channel(Progress::Durable {
            seq: 0,
            sent: Vec::new(),
        });
        (Self { seq: 1, rx }, TicketControl(tx))
    }
}

/// The writer's side of [`Ticket::pending`] (tests).
#[cfg(test)]
pub(crate) struct TicketControl(watch::Sender<Progress>);

#[cfg(test)]
impl TicketControl {
    pub fn written(&self) {
        let _ = self.0.send(Progress::Durable {
            seq: 1,
            sent: Vec::new(),
        });
    }

    pub fn failed(&self) {
        let _ = self.0.send(Progress::Failed("disk full".into()));
    }
}

enum Op {
    Client(String, ClientAccount),
    Worker(String, WorkerAccount),
    Reserve(u64, String, u64),
    Unreserve(u64),
    /// Anchor point: flush, record the digest under this seqno.
    Anchor(u32),
    Confirmed(u32),
    /// A receipt: request hash, account, signed receipt.
    Receipt([u8; 32], String, Vec<u8>),
    /// Several changes that must land in the same transaction (one charge, one confirmation).
    All(Vec<Op>),
    /// Stop after writing what came before.
    Stop,
}

/// Counters at an anchor: (clients' used tokens, workers' tokens).
type Snapshot = (HashMap<String, u64>, HashMap<String, u64>);

#[derive(Default)]
struct Inner {
    seq: u64,
    clients: HashMap<String, ClientAccount>,
    workers: HashMap<String, WorkerAccount>,
    reservations: HashMap<u64, (String, u64)>,
    reserved: HashMap<String, u64>,
    next_anchor: u32,
    confirmed_anchor: u32,
    /// Counts at each anchor not yet confirmed: seqno → (clients, workers).
    pending_anchors: BTreeMap<u32, Snapshot>,
    failed: Option<String>,
    /// Receipts stored, per account.
    receipts: HashMap<String, u64>,
}

/// A [`Ledger`] stored in a redb file (see the module docs).
pub struct DurableLedger {
    inner: Mutex<Inner>,
    ops: mpsc::Sender<(u64, Op)>,
    progress: watch::Receiver<Progress>,
    writer: Mutex<Option<JoinHandle<()>>>,
    price_per_token: u64,
    default_balance: Option<u64>,
    path: PathBuf,
    counters: Arc<WriteCounters>,
}

/// What the writer has done (for `/jsonstats` and the benchmark).
#[derive(Debug, Default)]
pub struct WriteCounters {
    /// Transactions committed (one fsync each).
    pub commits: AtomicU64,
    /// Mutations written.
    pub mutations: AtomicU64,
}

impl std::fmt::Debug for DurableLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLedger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DurableLedger {
    /// Opens (or creates) the ledger at `options.path`, verifying every record (see the module
    /// docs); releases reservations left by a previous process.
    pub fn open(
        options: DurableOptions,
        key: LedgerKey,
    ) -> Result<(Arc<Self>, Recovery), OpenError> {
        let path = options.path.clone();
        // redb panics on some damaged pages (e.g. while closing a database whose load failed):
        // a damaged file must be refused by name, never crash the proxy.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_unguarded(options, key)
        }))
        .unwrap_or_else(|panic| {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the storage engine panicked".into());
            Err(OpenError::Damaged { path, detail })
        })
    }

    fn open_unguarded(
        options: DurableOptions,
        key: LedgerKey,
    ) -> Result<(Arc<Self>, Recovery), OpenError> {
        let path = options.path.clone();
        let storage = |e: Box<dyn std::error::Error + Send + Sync>| OpenError::Storage {
            path: path.clone(),
            source: e,
        };
        let db = redb::Database::create(&path).map_err(|e| storage(e.into()))?;
        let loaded = load(&db, &key, &path)?;
        let mut recovery = Recovery {
            clients: loaded.clients.len(),
            workers: loaded.workers.len(),
            ..Recovery::default()
        };
        let mut inner = Inner {
            seq: loaded.meta.seq,
            clients: loaded.clients,
            workers: loaded.workers,
            next_anchor: loaded
                .meta
                .sent
                .last()
                .map_or(loaded.meta.confirmed, |s| s.0),
            confirmed_anchor: loaded.meta.confirmed,
            receipts: loaded.receipts,
            ..Inner::default()
        };
        let counters = Arc::new(WriteCounters::default());
        let mut writer = Writer {
            counters: counters.clone(),
            db,
            key,
            tags: loaded.tags,
            meta: loaded.meta,
            path: path.clone(),
        };
        let mut first = Vec::new();
        for (id, (_, amount)) in loaded.reservations {
            recovery.stale_reservations += 1;
            recovery.stale_reserved_nano = recovery.stale_reserved_nano.saturating_add(amount);
            first.push((0, Op::Unreserve(id)));
        }
        if !first.is_empty() {
            writer.write(&mut first).map_err(|e| storage(e.into()))?;
            inner.seq = writer.meta.seq;
        }
        let (progress_tx, progress) = watch::channel(Progress::Durable {
            seq: inner.seq,
            sent: writer.meta.sent.clone(),
        });
        let (ops, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx, progress_tx))
            .map_err(|e| storage(e.into()))?;
        let ledger = Arc::new(Self {
            inner: Mutex::new(inner),
            ops,
            progress,
            writer: Mutex::new(Some(handle)),
            price_per_token: options.price_per_token,
            default_balance: options.default_balance_nano,
            path,
            counters,
        });
        Ok((ledger, recovery))
    }

    /// Commits and mutations written so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.counters.commits.load(Ordering::Relaxed),
            self.counters.mutations.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` as the next mutation (call with the lock held, so order is memory's order).
    fn push(&self, inner: &mut Inner, op: Op) -> Ticket {
        inner.seq += 1;
        if self.ops.send((inner.seq, op)).is_err() && inner.failed.is_none() {
            inner.failed = Some("ledger writer stopped".into());
        }
        Ticket {
            seq: inner.seq,
            rx: self.progress.clone(),
        }
    }

    fn check_failed(&self, inner: &Inner) -> Result<(), LedgerError> {
        if let Some(e) = &inner.failed {
            return Err(LedgerError::Storage(e.clone()));
        }
        if let Progress::Failed(e) = &*self.progress.borrow() {
            return Err(LedgerError::Storage(e.clone()));
        }
        Ok(())
    }

    fn nano(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.price_per_token)
    }

    /// What `account` may still reserve: `min(balance, stake) − (used − charged) − reserved`.
    fn available(&self, inner: &Inner, account: &str, a: &ClientAccount) -> u64 {
        let cap = u128::from(a.balance_nano.min(a.stake_nano));
        let unpaid = self.nano(a.used_tokens.saturating_sub(a.charged_tokens));
        let reserved = u128::from(inner.reserved.get(account).copied().unwrap_or(0));
        u64::try_from(cap.saturating_sub(unpaid).saturating_sub(reserved)).unwrap_or(u64::MAX)
    }

    /// Adds `amount` to a development account (no chain), creating it.
    pub fn deposit(&self, account: &str, amount: u64) -> Ticket {
        let mut inner = self.lock();
        let a = inner
            .clients
            .entry(account.to_string())
            .or_insert(ClientAccount::development(0));
        a.balance_nano = a.balance_nano.saturating_add(amount);
        let a = *a;
        self.push(&mut inner, Op::Client(account.to_string(), a))
    }

    /// Creates a development account with `balance` unless it exists (opening balances from
    /// the config apply once, not at every start).
    pub fn open_account(&self, account: &str, balance: u64) -> Option<Ticket> {
        let mut inner = self.lock();
        if inner.clients.contains_key(account) {
            return None;
        }
        let a = ClientAccount::development(balance);
        inner.clients.insert(account.to_string(), a);
        Some(self.push(&mut inner, Op::Client(account.to_string(), a)))
    }

    /// Mirrors a client contract's state seen on chain. A chain that charged more tokens than
    /// this ledger ever billed means the ledger was rolled back: refused.
    pub fn observe_client(
        &self,
        account: &str,
        balance_nano: u64,
        stake_nano: u64,
        charged_tokens: u64,
    ) -> Result<Ticket, RollbackError> {
        let mut inner = self.lock();
        let a = inner.clients.entry(account.to_string()).or_default();
        if charged_tokens > a.used_tokens {
            return Err(RollbackError::ChargedAhead {
                account: account.to_string(),
                chain_tokens: charged_tokens,
                ledger_tokens: a.used_tokens,
            });
        }
        a.balance_nano = balance_nano;
        a.stake_nano = stake_nano;
        a.charged_tokens = a.charged_tokens.max(charged_tokens);
        let a = *a;
        Ok(self.push(&mut inner, Op::Client(account.to_string(), a)))
    }

    /// Charges a reservation: `cost` (capped at the reservation) to the client, the same
    /// adjusted tokens to `worker`. Returns the charge and the ticket to wait on before the
    /// client may see the result.
    pub fn charge(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
    ) -> Result<(u64, Ticket), LedgerError> {
        self.charge_receipted(reservation, cost, usage, worker, None)
    }

    /// [`Self::charge`], storing the worker's receipt (request hash, signed bytes) in the
    /// same transaction: the charge is durable only with the receipt that justifies it.
    pub fn charge_receipted(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
        receipt: Option<(&[u8; 32], &[u8])>,
    ) -> Result<(u64, Ticket), LedgerError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        let (account, amount) = inner
            .reservations
            .remove(&reservation.id)
            .ok_or(LedgerError::UnknownReservation(reservation.id))?;
        unreserve(&mut inner, &account, amount);
        let charge = cost.min(amount);
        let tokens = charge.checked_div(self.price_per_token).unwrap_or(0);
        let a = inner.clients.entry(account.clone()).or_default();
        a.used_tokens = a.used_tokens.saturating_add(tokens);
        a.usage.add(usage, charge);
        let a = *a;
        let mut ops = vec![Op::Unreserve(reservation.id)];
        if let Some((hash, signed)) = receipt {
            *inner.receipts.entry(account.clone()).or_default() += 1;
            ops.push(Op::Receipt(*hash, account.clone(), signed.to_vec()));
        }
        ops.push(Op::Client(account, a));
        if let Some(worker) = worker {
            let w = inner.workers.entry(worker.to_string()).or_default();
            w.tokens = w.tokens.saturating_add(tokens);
            w.usage.add(usage, charge);
            ops.push(Op::Worker(worker.to_string(), *w));
        }
        let ticket = self.push(&mut inner, Op::All(ops));
        Ok((charge, ticket))
    }

    /// Receipts stored for `account`.
    pub fn receipt_count(&self, account: &str) -> u64 {
        self.lock().receipts.get(account).copied().unwrap_or(0)
    }

    /// A client account.
    pub fn client(&self, account: &str) -> Option<ClientAccount> {
        self.lock().clients.get(account).copied()
    }

    /// A worker's account.
    pub fn worker(&self, worker: &str) -> Option<WorkerAccount> {
        self.lock().workers.get(worker).copied()
    }

    /// All client accounts.
    pub fn clients(&self) -> BTreeMap<String, ClientAccount> {
        self.lock()
            .clients
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// All worker accounts.
    pub fn workers(&self) -> BTreeMap<String, WorkerAccount> {
        self.lock()
            .workers
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Starts an anchor: snapshots every counter, and returns the anchor's seqno and a future
    /// digest (the state digest once everything before it is on disk). Send
    /// `save_state(seqno, digest)` to the proxy contract, then [`Self::anchor_confirmed`] once the
    /// chain shows it.
    pub async fn begin_anchor(&self) -> Result<(u32, [u8; 32]), LedgerError> {
        let (seqno, ticket) = {
            let mut inner = self.lock();
            self.check_failed(&inner)?;
            inner.next_anchor = inner.next_anchor.wrapping_add(1);
            let seqno = inner.next_anchor;
            let clients = inner
                .clients
                .iter()
                .map(|(k, v)| (k.clone(), v.used_tokens))
                .collect();
            let workers = inner
                .workers
                .iter()
                .map(|(k, v)| (k.clone(), v.tokens))
                .collect();
            inner.pending_anchors.insert(seqno, (clients, workers));
            let ticket = self.push(&mut inner, Op::Anchor(seqno));
            (seqno, ticket)
        };
        let mut rx = ticket.rx.clone();
        ticket.wait().await?;
        // The writer ends a batch at an anchor and records the digest of that exact state.
        let sent = match &*rx.borrow_and_update() {
            Progress::Durable { sent, .. } => sent.clone(),
            Progress::Failed(e) => return Err(LedgerError::Storage(e.clone())),
        };
        sent.iter()
            .find(|(s, _)| *s == seqno)
            .map(|(_, d)| (seqno, *d))
            .ok_or_else(|| LedgerError::Storage(format!("anchor {seqno} was not recorded")))
    }

    /// The chain shows anchor `seqno`: counters snapshotted for it become voucher-able.
    /// `None`: not an anchor this process started.
    pub fn anchor_confirmed(&self, seqno: u32) -> Option<Ticket> {
        let mut inner = self.lock();
        let (clients, workers) = inner.pending_anchors.remove(&seqno)?;
        inner.pending_anchors.retain(|s, _| *s > seqno);
        inner.confirmed_anchor = inner.confirmed_anchor.max(seqno);
        let mut ops = Vec::new();
        for (k, t) in clients {
            if let Some(a) = inner.clients.get_mut(&k) {
                if t > a.anchored_tokens {
                    a.anchored_tokens = t;
                    ops.push(Op::Client(k, *a));
                }
            }
        }
        for (k, t) in workers {
            if let Some(w) = inner.workers.get_mut(&k) {
                if t > w.anchored_tokens {
                    w.anchored_tokens = t;
                    ops.push(Op::Worker(k, *w));
                }
            }
        }
        ops.push(Op::Confirmed(seqno));
        Some(self.push(&mut inner, Op::All(ops)))
    }

    /// Checks the latest anchor the chain shows against what this ledger sent.
    pub fn check_anchor(
        &self,
        chain_seqno: u32,
        chain_digest: &[u8; 32],
    ) -> Result<(), RollbackError> {
        let sent = match &*self.progress.borrow() {
            Progress::Durable { sent, .. } => sent.clone(),
            Progress::Failed(_) => Vec::new(),
        };
        let confirmed = self.lock().confirmed_anchor;
        let ledger_seqno = sent.last().map_or(confirmed, |s| s.0);
        if chain_seqno > ledger_seqno {
            return Err(RollbackError::AnchorAhead {
                chain_seqno,
                ledger_seqno,
            });
        }
        if let Some((_, d)) = sent.iter().find(|(s, _)| *s == chain_seqno) {
            if d != chain_digest {
                return Err(RollbackError::AnchorDiffers {
                    seqno: chain_seqno,
                    chain: hex::encode(chain_digest),
                    ledger: hex::encode(d),
                });
            }
        }
        Ok(())
    }

    /// Claims the count for a charge voucher to `account`: the anchored count, if above the
    /// last voucher and what the chain already charged. Sign only after the ticket is durable.
    pub fn claim_charge_voucher(&self, account: &str) -> Option<(u64, Ticket)> {
        let mut inner = self.lock();
        let a = inner.clients.get_mut(account)?;
        let count = a.anchored_tokens;
        if count <= a.voucher_tokens || count <= a.charged_tokens {
            return None;
        }
        a.voucher_tokens = count;
        let a = *a;
        Some((
            count,
            self.push(&mut inner, Op::Client(account.to_string(), a)),
        ))
    }

    /// Claims the count for a payout voucher to `worker` (as [`Self::claim_charge_voucher`]).
    pub fn claim_payout_voucher(&self, worker: &str) -> Option<(u64, Ticket)> {
        let mut inner = self.lock();
        let w = inner.workers.get_mut(worker)?;
        let count = w.anchored_tokens;
        if count <= w.voucher_tokens {
            return None;
        }
        w.voucher_tokens = count;
        let w = *w;
        Some((
            count,
            self.push(&mut inner, Op::Worker(worker.to_string(), w)),
        ))
    }

    /// Waits until everything queued so far is on disk.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let ticket = {
            let inner = self.lock();
            Ticket {
                seq: inner.seq,
                rx: self.progress.clone(),
            }
        };
        ticket.wait().await
    }

    /// Writes what is queued and stops the writer (later mutations fail).
    pub fn close(&self) {
        {
            let mut inner = self.lock();
            let seq = inner.seq;
            let _ = self.ops.send((seq, Op::Stop));
            inner.failed.get_or_insert_with(|| "ledger closed".into());
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for DurableLedger {
    fn drop(&mut self) {
        self.close();
    }
}

fn unreserve(inner: &mut Inner, account: &str, amount: u64) {
    if let Some(r) = inner.reserved.get_mut(account) {
        *r = r.saturating_sub(amount);
        if *r == 0 {
            inner.reserved.remove(account);
        }
    }
}

impl Ledger for DurableLedger {
    fn reserve(&self, account: &str, amount: u64) -> Result<Reservation, LedgerError> {
        let mut inner = self.lock();
        self.check_failed(&inner)?;
        if !inner.clients.contains_key(account) {
            let Some(initial) = self.default_balance else {
                return Err(LedgerError::UnknownAccount {
                    account: account.to_string(),
                });
            };
            let a = ClientAccount::development(initial);
            inner.clients.insert(account.to_string(), a);
            let _ = self.push(&mut inner, Op::Client(account.to_string(), a));
        }
        let a = inner.clients[account];
        let available = self.available(&inner, account, &a);
        if available < amount {
            return Err(LedgerError::InsufficientFunds {
                account: account.to_string(),
                needed: amount,
                available,
            });
        }
        // The id is the Reserve mutation's own number: unique, also across restarts.
        let id = inner.seq + 1;
        *inner.reserved.entry(account.to_string()).or_default() += amount;
        inner.reservations.insert(id, (account.to_string(), amount));
        let _ = self.push(&mut inner, Op::Reserve(id, account.to_string(), amount));
        Ok(Reservation {
            id,
            account: account.to_string(),
            amount,
        })
    }

    fn commit(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
    ) -> Result<Committed, LedgerError> {
        let (charged, ticket) = self.charge(reservation, cost, usage, worker)?;
        Ok(Committed {
            charged,
            durable: Some(ticket),
        })
    }

    fn commit_receipted(
        &self,
        reservation: &Reservation,
        cost: u64,
        usage: &Usage,
        worker: Option<&str>,
        receipt: (&[u8; 32], &[u8]),
    ) -> Result<Committed, LedgerError> {
        let (charged, ticket) =
            self.charge_receipted(reservation, cost, usage, worker, Some(receipt))?;
        Ok(Committed {
            charged,
            durable: Some(ticket),
        })
    }

    fn receipts(&self, account: &str) -> Option<u64> {
        Some(self.receipt_count(account))
    }

    fn release(&self, reservation: &Reservation) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let (account, amount) = inner
            .reservations
            .remove(&reservation.id)
            .ok_or(LedgerError::UnknownReservation(reservation.id))?;
        unreserve(&mut inner, &account, amount);
        let _ = self.push(&mut inner, Op::Unreserve(reservation.id));
        Ok(())
    }

    fn balance(&self, account: &str) -> Option<Balance> {
        let inner = self.lock();
        let a = inner.clients.get(account)?;
        let reserved = inner.reserved.get(account).copied().unwrap_or(0);
        let available = self.available(&inner, account, a);
        Some(Balance {
            balance_nano: available.saturating_add(reserved),
            reserved_nano: reserved,
        })
    }

    fn records(&self) -> BTreeMap<String, UsageRecord> {
        self.lock()
            .clients
            .iter()
            .filter(|(_, a)| a.usage.requests > 0)
            .map(|(k, a)| (k.clone(), a.usage))
            .collect()
    }
}

// ---- the writer -------------------------------------------------------------------------

struct Writer {
    db: redb::Database,
    key: LedgerKey,
    /// Tag of every stored record, by (table, key): what the digest sums.
    tags: HashMap<(&'static str, Vec<u8>), [u8; TAG_LEN]>,
    meta: Meta,
    path: PathBuf,
    counters: Arc<WriteCounters>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<(u64, Op)>, progress: watch::Sender<Progress>) {
        let mut batch = Vec::new();
        let mut stop = false;
        while !stop {
            match rx.recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
            // Everything that queued up while the last fsync ran goes in this batch; an anchor
            // ends the batch so its digest is the state exactly at the anchor.
            loop {
                if matches!(batch.last(), Some((_, Op::Anchor(_)))) || batch.len() >= 65_536 {
                    break;
                }
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(pos) = batch.iter().position(|(_, op)| matches!(op, Op::Stop)) {
                batch.truncate(pos);
                stop = true;
            }
            if let Err(e) = self.write(&mut batch) {
                let msg = format!("ledger {}: write failed: {e}", self.path.display());
                tracing::error!(error = %msg, "ledger stopped");
                let _ = progress.send(Progress::Failed(msg));
                return;
            }
            let _ = progress.send(Progress::Durable {
                seq: self.meta.seq,
                sent: self.meta.sent.clone(),
            });
        }
    }

    /// Writes `batch` in one transaction (last value per record wins) and empties it.
    fn write(&mut self, batch: &mut Vec<(u64, Op)>) -> Result<(), redb::Error> {
        let mut clients: BTreeMap<String, ClientAccount> = BTreeMap::new();
        let mut workers: BTreeMap<String, WorkerAccount> = BTreeMap::new();
        let mut reservations: BTreeMap<u64, Option<(String, u64)>> = BTreeMap::new();
        let mut receipts: Vec<([u8; 32], String, Vec<u8>)> = Vec::new();
        let mut seq = self.meta.seq;
        let mut anchor = None;
        self.counters
            .mutations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut flat = Vec::with_capacity(batch.len());
        for (s, op) in batch.drain(..) {
            seq = seq.max(s);
            match op {
                Op::All(ops) => flat.extend(ops),
                op => flat.push(op),
            }
        }
        for op in flat {
            match op {
                Op::Client(k, a) => {
                    clients.insert(k, a);
                }
                Op::Worker(k, w) => {
                    workers.insert(k, w);
                }
                Op::Reserve(id, k, amount) => {
                    reservations.insert(id, Some((k, amount)));
                }
                Op::Unreserve(id) => {
                    // Reserved and freed in the same batch: nothing to store.
                    if let Some(Some(_)) = reservations.get(&id) {
                        reservations.remove(&id);
                    } else {
                        reservations.insert(id, None);
                    }
                }
                Op::Anchor(n) => anchor = Some(n),
                Op::Receipt(hash, account, signed) => receipts.push((hash, account, signed)),
                Op::Confirmed(n) => {
                    self.meta.confirmed = self.meta.confirmed.max(n);
                    self.meta.sent.retain(|(s, _)| *s >= n);
                }
                Op::Stop | Op::All(_) => {}
            }
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = tx.open_table(CLIENTS)?;
            for (k, a) in &clients {
                let v = encode_client(a);
                let value = self.seal(T_CLIENTS, k.as_bytes(), &v);
                t.insert(k.as_str(), value.as_slice())?;
            }
            let mut t = tx.open_table(WORKERS)?;
            for (k, w) in &workers {
                let v = encode_worker(w);
                let value = self.seal(T_WORKERS, k.as_bytes(), &v);
                t.insert(k.as_str(), value.as_slice())?;
            }
            let mut t = tx.open_table(RESERVATIONS)?;
            for (id, r) in &reservations {
                let key = id.to_be_bytes();
                match r {
                    Some((account, amount)) => {
                        let mut v = vec![VERSION];
                        v.extend_from_slice(&amount.to_le_bytes());
                        v.extend_from_slice(account.as_bytes());
                        let value = self.seal(T_RESERVATIONS, &key, &v);
                        t.insert(*id, value.as_slice())?;
                    }
                    None => {
                        if t.remove(*id)?.is_some() {
                            self.unseal_tag(T_RESERVATIONS, &key);
                        }
                    }
                }
            }
            let mut t = tx.open_table(RECEIPTS)?;
            for (hash, account, signed) in &receipts {
                let v = encode_receipt(account, signed);
                let value = self.seal(T_RECEIPTS, hash, &v);
                t.insert(hash.as_slice(), value.as_slice())?;
            }
            self.meta.seq = seq;
            if let Some(n) = anchor {
                self.meta.sent.push((n, self.meta.digest));
                let excess = self.meta.sent.len().saturating_sub(SENT_ANCHORS);
                self.meta.sent.drain(..excess);
            }
            let v = encode_meta(&self.meta);
            let tag = self.key.tag(T_META, META_KEY.as_bytes(), &v);
            let mut value = v;
            value.extend_from_slice(&tag);
            tx.open_table(META)?.insert(META_KEY, value.as_slice())?;
        }
        tx.commit()?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `value ‖ tag`, updating the digest (old tag out, new tag in).
    fn seal(&mut self, table: &'static str, key: &[u8], value: &[u8]) -> Vec<u8> {
        let tag = self.key.tag(table, key, value);
        if let Some(old) = self.tags.insert((table, key.to_vec()), tag) {
            sub256(&mut self.meta.digest, &old);
        }
        add256(&mut self.meta.digest, &tag);
        let mut out = Vec::with_capacity(value.len() + TAG_LEN);
        out.extend_from_slice(value);
        out.extend_from_slice(&tag);
        out
    }

    fn unseal_tag(&mut self, table: &'static str, key: &[u8]) {
        if let Some(old) = self.tags.remove(&(table, key.to_vec())) {
            sub256(&mut self.meta.digest, &old);
        }
    }
}

fn add256(acc: &mut [u8; 32], x: &[u8; 32]) {
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let s = u16::from(acc[i]) + u16::from(x[i]) + carry;
        acc[i] = s as u8;
        carry = s >> 8;
    }
}

fn sub256(acc: &mut [u8; 32], x: &[u8; 32]) {
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(acc[i]) - i16::from(x[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        acc[i] = d as u8;
    }
}

// ---- encoding ---------------------------------------------------------------------------

fn put_usage(v: &mut Vec<u8>, u: &UsageRecord) {
    for x in [
        u.requests,
        u.prompt_tokens,
        u.cached_tokens,
        u.completion_tokens,
        u.reasoning_tokens,
        u.cost_nano,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
}

fn encode_client(a: &ClientAccount) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 12 * 8);
    v.push(VERSION);
    for x in [
        a.balance_nano,
        a.stake_nano,
        a.charged_tokens,
        a.used_tokens,
        a.voucher_tokens,
        a.anchored_tokens,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    put_usage(&mut v, &a.usage);
    v
}

fn encode_receipt(account: &str, signed: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 + account.len() + signed.len());
    v.push(VERSION);
    v.extend_from_slice(&(account.len() as u16).to_le_bytes());
    v.extend_from_slice(account.as_bytes());
    v.extend_from_slice(signed);
    v
}

/// The account of a stored receipt (the receipt bytes follow it).
fn decode_receipt_account(v: &[u8]) -> Option<String> {
    let (&version, rest) = v.split_first()?;
    if version != VERSION || rest.len() < 2 {
        return None;
    }
    let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let account = rest.get(2..2 + n)?;
    if rest.len() == 2 + n {
        return None;
    }
    String::from_utf8(account.to_vec()).ok()
}

fn encode_worker(w: &WorkerAccount) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 9 * 8);
    v.push(VERSION);
    for x in [w.tokens, w.voucher_tokens, w.anchored_tokens] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    put_usage(&mut v, &w.usage);
    v
}

fn encode_meta(m: &Meta) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(&m.seq.to_le_bytes());
    v.extend_from_slice(&m.digest);
    v.extend_from_slice(&m.confirmed.to_le_bytes());
    v.push(m.sent.len() as u8);
    for (s, d) in &m.sent {
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(d);
    }
    v
}

/// Reads little-endian integers off a byte slice; `None` past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }
    fn u8(&mut self) -> Option<u8> {
        let (head, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*head)
    }
    fn bytes32(&mut self) -> Option<[u8; 32]> {
        let (head, rest) = self.0.split_first_chunk::<32>()?;
        self.0 = rest;
        Some(*head)
    }
    fn version(&mut self) -> Option<()> {
        (self.u8()? == VERSION).then_some(())
    }
    fn usage(&mut self) -> Option<UsageRecord> {
        Some(UsageRecord {
            requests: self.u64()?,
            prompt_tokens: self.u64()?,
            cached_tokens: self.u64()?,
            completion_tokens: self.u64()?,
            reasoning_tokens: self.u64()?,
            cost_nano: self.u64()?,
        })
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

fn decode_client(v: &[u8]) -> Option<ClientAccount> {
    let mut r = Reader(v);
    r.version()?;
    let a = ClientAccount {
        balance_nano: r.u64()?,
        stake_nano: r.u64()?,
        charged_tokens: r.u64()?,
        used_tokens: r.u64()?,
        voucher_tokens: r.u64()?,
        anchored_tokens: r.u64()?,
        usage: r.usage()?,
    };
    r.end()?;
    Some(a)
}

fn decode_worker(v: &[u8]) -> Option<WorkerAccount> {
    let mut r = Reader(v);
    r.version()?;
    let w = WorkerAccount {
        tokens: r.u64()?,
        voucher_tokens: r.u64()?,
        anchored_tokens: r.u64()?,
        usage: r.usage()?,
    };
    r.end()?;
    Some(w)
}

fn decode_reservation(v: &[u8]) -> Option<(String, u64)> {
    let mut r = Reader(v);
    r.version()?;
    let amount = r.u64()?;
    let account = std::str::from_utf8(r.0).ok()?.to_string();
    Some((account, amount))
}

fn decode_meta(v: &[u8]) -> Option<Meta> {
    let mut r = Reader(v);
    r.version()?;
    let seq = r.u64()?;
    let digest = r.bytes32()?;
    let confirmed = r.u32()?;
    let n = r.u8()?;
    let mut sent = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        sent.push((r.u32()?, r.bytes32()?));
    }
    r.end()?;
    Some(Meta {
        seq,
        digest,
        sent,
        confirmed,
    })
}

// ---- loading ----------------------------------------------------------------------------

struct Loaded {
    clients: HashMap<String, ClientAccount>,
    workers: HashMap<String, WorkerAccount>,
    reservations: BTreeMap<u64, (String, u64)>,
    tags: HashMap<(&'static str, Vec<u8>), [u8; TAG_LEN]>,
    /// Receipts stored, per account.
    receipts: HashMap<String, u64>,
    meta: Meta,
}

/// Splits `value ‖ tag` and checks the tag.
fn open_value<'a>(
    key: &LedgerKey,
    path: &Path,
    table: &str,
    k: &[u8],
    stored: &'a [u8],
    what: impl Fn() -> String,
) -> Result<(&'a [u8], [u8; TAG_LEN]), OpenError> {
    let Some(split) = stored.len().checked_sub(TAG_LEN) else {
        return Err(OpenError::Malformed {
            path: path.to_path_buf(),
            what: what(),
        });
    };
    let (value, tag) = stored.split_at(split);
    let expected = key.tag(table, k, value);
    // Compared without an early exit (there is no oracle here, but it costs nothing).
    if expected
        .iter()
        .zip(tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Err(OpenError::BadTag {
            path: path.to_path_buf(),
            what: what(),
        });
    }
    Ok((value, expected))
}

fn load(db: &redb::Database, key: &LedgerKey, path: &Path) -> Result<Loaded, OpenError> {
    let storage = |e: redb::Error| OpenError::Storage {
        path: path.to_path_buf(),
        source: e.into(),
    };
    let malformed = |what: String| OpenError::Malformed {
        path: path.to_path_buf(),
        what,
    };
    let tx = db.begin_read().map_err(|e| storage(e.into()))?;
    let mut out = Loaded {
        clients: HashMap::new(),
        workers: HashMap::new(),
        reservations: BTreeMap::new(),
        tags: HashMap::new(),
        receipts: HashMap::new(),
        meta: Meta::default(),
    };
    let mut sum = [0u8; 32];
    let missing = |e: &redb::TableError| matches!(e, redb::TableError::TableDoesNotExist(_));

    match tx.open_table(CLIENTS) {
        Ok(t) => {
            for row in t.iter().map_err(|e| storage(e.into()))? {
                let (k, v) = row.map_err(|e| storage(e.into()))?;
                let name = k.value().to_string();
                let what = || format!("client {name:?}");
                let (value, tag) =
                    open_value(key, path, T_CLIENTS, name.as_bytes(), v.value(), what)?;
                let a = decode_client(value).ok_or_else(|| malformed(what()))?;
                add256(&mut sum, &tag);
                out.tags.insert((T_CLIENTS, name.as_bytes().to_vec()), tag);
                out.clients.insert(name, a);
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(storage(e.into())),
    }
    match tx.open_table(WORKERS) {
        Ok(t) => {
            for row in t.iter().map_err(|e| storage(e.into()))? {
                let (k, v) = row.map_err(|e| storage(e.into()))?;
                let name = k.value().to_string();
                let what = || format!("worker {name:?}");
                let (value, tag) =
                    open_value(key, path, T_WORKERS, name.as_bytes(), v.value(), what)?;
                let w = decode_worker(value).ok_or_else(|| malformed(what()))?;
                add256(&mut sum, &tag);
                out.tags.insert((T_WORKERS, name.as_bytes().to_vec()), tag);
                out.workers.insert(name, w);
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(storage(e.into())),
    }
    match tx.open_table(RESERVATIONS) {
        Ok(t) => {
            for row in t.iter().map_err(|e| storage(e.into()))? {
                let (k, v) = row.map_err(|e| storage(e.into()))?;
                let id = k.value();
                let what = || format!("reservation {id}");
                let kb = id.to_be_bytes();
                let (value, tag) = open_value(key, path, T_RESERVATIONS, &kb, v.value(), what)?;
                let r = decode_reservation(value).ok_or_else(|| malformed(what()))?;
                add256(&mut sum, &tag);
                out.tags.insert((T_RESERVATIONS, kb.to_vec()), tag);
                out.reservations.insert(id, r);
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(storage(e.into())),
    }
    match tx.open_table(RECEIPTS) {
        Ok(t) => {
            for row in t.iter().map_err(|e| storage(e.into()))? {
                let (k, v) = row.map_err(|e| storage(e.into()))?;
                let hash = k.value().to_vec();
                let what = || format!("receipt {}", hex::encode(&hash));
                let (value, tag) = open_value(key, path, T_RECEIPTS, &hash, v.value(), what)?;
                let account = decode_receipt_account(value).ok_or_else(|| malformed(what()))?;
                add256(&mut sum, &tag);
                out.tags.insert((T_RECEIPTS, hash), tag);
                *out.receipts.entry(account).or_default() += 1;
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(storage(e.into())),
    }
    let meta = match tx.open_table(META) {
        Ok(t) => t
            .get(META_KEY)
            .map_err(|e| storage(e.into()))?
            .map(|v| v.value().to_vec()),
        Err(e) if missing(&e) => None,
        Err(e) => return Err(storage(e.into())),
    };
    match meta {
        Some(stored) => {
            let what = || "the state record".to_string();
            let (value, _) = open_value(key, path, T_META, META_KEY.as_bytes(), &stored, what)?;
            out.meta = decode_meta(value).ok_or_else(|| malformed(what()))?;
            if out.meta.digest != sum {
                return Err(OpenError::DigestMismatch {
                    path: path.to_path_buf(),
                });
            }
        }
        None if out.tags.is_empty() => {}
        None => {
            return Err(OpenError::NoState {
                path: path.to_path_buf(),
            })
        }
    }
    Ok(out)
}
