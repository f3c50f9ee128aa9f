//! Admission of requests to workers: a worker slot at once when one is free, otherwise a
//! bounded per-model queue with a deadline. This module holds the queue and its order;
//! `admission::acquire` places requests and `admission::dispatch` serves
//! the queues (they need the shared state, which holds the queues).
//!
//! # What a request needs
//!
//! A request needs one request slot of a worker serving its model (the worker's registered
//! `capacity`) and room for its tokens in that worker's token budget
//! ([`crate::registry::token_budget`]). Its tokens ([`crate::admission::tokens_at`]) are the
//! prompt estimate plus the completion tokens reserved at that worker, capped at the model's
//! `max_context` (no request can use more). The proxy does not parse bodies, so the prompt
//! estimate ([`Demand::new`]) is the smaller of `max_prompt_tokens` and the body's length in
//! bytes: tokenizers of the byte-level BPE family produce at most one token per byte of text,
//! and the JSON around the text outweighs the chat template's few tokens per message. The
//! estimate is for routing only; billing reserves `max_prompt_tokens` as before
//! ([`crate::funds`]).
//!
//! # The queue
//!
//! A request that finds no worker with room waits in its model's queue for at most
//! `queue_timeout_secs` (then 503 `service_unavailable`); at most `queue_max_per_model`
//! requests wait per model (one more gets 429 `no_capacity`). Both answers carry
//! `Retry-After`: the recent mean wait in that queue, 1 to 60 s.
//!
//! # Order: fair between accounts
//!
//! Whenever room appears (a request ends, a worker registers) the queue is served (`serve`)
//! account by account: the next waiter tried is the oldest one of the account with the fewest
//! requests in flight now (granted worker slots, all models), so an account that fills every
//! slot and the queue cannot keep another account waiting behind all of its requests; with
//! one account, or accounts equally loaded, this is arrival order. One rule for token budgets:
//!
//! * a waiter that does not fit (its tokens exceed what any worker has left) does not block
//!   the waiters tried after it: one that fits is admitted ahead of it, so one huge prompt
//!   does not stall short ones while slots remain;
//! * a waiter overtaken [`MAX_OVERTAKES`] times that way becomes a barrier: nobody tried after
//!   it is admitted until it is, so short requests cannot starve a long one either.
//!
//! An encrypted request can go only to its recipients: while none of them has a free slot it
//! is passed over (not overtaken), and the waiters after it may take slots at other workers.
//!
//! A full queue refuses a newcomer only if its account is the most loaded one (requests in
//! flight plus queued). Otherwise the newest waiter of the most loaded account gives up its
//! place: it gets the 429 (with `Retry-After`) and the newcomer waits. One account alone can
//! still use the whole queue; against others it keeps only a fair share of it. (Counted as
//! `displaced` in the queue outcomes.)
//!
//! A waiter whose client goes away (its request future is dropped) leaves the queue at once;
//! the funds held for it are released by the same drop. A grant that finds its waiter gone
//! is returned, which serves the next one. When no connected worker serves a model any more,
//! its waiters get 404 `model_not_found`; when the proxy shuts down, 503.
//!
//! Queue depth per model, waits and outcomes are in `/jsonstats` (`queues`,
//! `queue_outcomes`) and `/metrics` (`cocoon_proxy_queue_*`); docs/routing.md.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{ApiError, RequestMeta};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::ProxyConfig;
use crate::limits::Rejection;
use crate::registry::{Slot, Worker};

/// Overtakes after which a waiter blocks everyone behind it (see the module docs).
pub const MAX_OVERTAKES: u32 = 16;
/// Bounds of the `Retry-After` the queue sends, seconds.
const RETRY_AFTER_SECS: (u64, u64) = (1, 60);
/// Weight of a new sample in the mean-wait EMA.
const WAIT_ALPHA: f64 = 0.2;

/// What a request asks of a worker (from its metadata and body length).
#[derive(Clone, Debug)]
pub struct Demand {
    /// The paying account (queue order is fair between accounts).
    pub account: Arc<str>,
    /// Shared with the request's other parts (the attempt, its billing).
    pub meta: Arc<RequestMeta>,
    /// Prompt tokens assumed for routing (see the module docs).
    pub prompt_tokens: u64,
    /// An encrypted request can go only to these workers (key hashes of its recipients).
    pub recipients: Option<Arc<[protocol::e2e::KeyHash]>>,
}

impl Demand {
    /// The demand of `account`'s request `meta` with a body of `body_len` bytes.
    pub fn new(
        cfg: &ProxyConfig,
        account: &Arc<str>,
        meta: &Arc<RequestMeta>,
        body_len: usize,
    ) -> Self {
        let body = u64::try_from(body_len).unwrap_or(u64::MAX);
        Self {
            account: account.clone(),
            meta: meta.clone(),
            prompt_tokens: body.min(u64::from(cfg.max_prompt_tokens)).max(1),
            recipients: None,
        }
    }

    /// Whether worker `w` may take this request (any worker, unless it is encrypted to
    /// named recipients).
    pub fn accepts(&self, w: &Worker) -> bool {
        match &self.recipients {
            None => true,
            Some(r) => w.info.e2e.as_ref().is_some_and(|k| r.contains(&k.key_hash)),
        }
    }
}

/// Worker slots granted per account, over all models: the key of the queue's fair order.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<Arc<str>, u32>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more slot for `account` until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, account: &Arc<str>) -> AccountSlot {
        *self.lock().entry(account.clone()).or_default() += 1;
        AccountSlot {
            counts: self.clone(),
            account: account.clone(),
        }
    }

    /// Slots `account` holds now.
    pub fn of(&self, account: &str) -> u32 {
        self.lock().get(account).copied().unwrap_or(0)
    }

    /// Runs `f` on the counts (one lock for many reads).
    fn with<R>(&self, f: impl FnOnce(&HashMap<Arc<str>, u32>) -> R) -> R {
        f(&self.lock())
    }
}

/// One granted slot counted for its account ([`InFlight::hold`]).
#[derive(Debug)]
pub struct AccountSlot {
    counts: Arc<InFlight>,
    account: Arc<str>,
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.account);
            }
        }
    }
}

/// What a [`Grant`] calls when it is dropped: frees nothing itself (the slot is already
/// freed) but lets the queues of the worker's models use the room.
pub trait Release: Send + Sync {
    fn released(self: Arc<Self>, worker: &Arc<Worker>);
}

/// A worker slot granted to a request. Dropping it frees the slot and serves the queues of
/// the worker's models.
pub struct Grant {
    freer: Freer,
}

/// A handle that frees a [`Grant`]'s slot early (once; the grant's drop then does nothing):
/// the relay's stall sweeper frees the slot of a stream whose client stopped reading while
/// the stream itself lives on until the client reads or leaves.
#[derive(Clone)]
pub struct Freer {
    worker: Arc<Worker>,
    slot: Arc<std::sync::Mutex<Option<(Slot, AccountSlot)>>>,
    release: Arc<dyn Release>,
}

impl std::fmt::Debug for Freer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freer")
            .field("worker", &self.worker.info.id)
            .finish_non_exhaustive()
    }
}

impl Freer {
    /// Frees the slot and serves the queues of the worker's models (the first call only).
    pub fn free(&self) {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if slot.is_some() {
            // Free the slot first, then let the queues use it.
            drop(slot);
            self.release.clone().released(&self.worker);
        }
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("worker", &self.freer.worker.info.id)
            .field("tokens", &self.tokens())
            .finish()
    }
}

impl Grant {
    /// `slot`, counted for its account by `account`.
    pub fn new(slot: Slot, account: AccountSlot, release: Arc<dyn Release>) -> Self {
        Self {
            freer: Freer {
                worker: slot.worker().clone(),
                slot: Arc::new(std::sync::Mutex::new(Some((slot, account)))),
                release,
            },
        }
    }

    pub fn worker(&self) -> &Arc<Worker> {
        &self.freer.worker
    }

    /// Tokens of the worker's budget this grant holds (0 once freed).
    pub fn tokens(&self) -> u64 {
        self.freer
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |(slot, _)| slot.tokens())
    }

    /// A handle that frees the slot before the grant is dropped.
    pub fn freer(&self) -> Freer {
        self.freer.clone()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.freer.free();
    }
}

/// One queued request.
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) demand: Arc<Demand>,
    pub(crate) tx: oneshot::Sender<Result<Grant, Rejection>>,
    pub(crate) overtaken: u32,
    pub(crate) since: Instant,
}

/// The queue of one model.
#[derive(Default)]
pub(crate) struct ModelQueue {
    /// In arrival order.
    waiters: VecDeque<Waiter>,
    /// Waiters per account.
    queued: HashMap<Arc<str>, u32>,
    /// Mean wait of the requests admitted from the queue, milliseconds.
    wait_ema_ms: Option<f64>,
}

impl ModelQueue {
    fn record_wait(&mut self, waited: Duration) {
        let ms = waited.as_secs_f64() * 1000.0;
        self.wait_ema_ms = Some(match self.wait_ema_ms {
            Some(ema) => ema + WAIT_ALPHA * (ms - ema),
            None => ms,
        });
    }

    /// The `Retry-After` for a refusal: the mean wait, rounded up, within 1..=60 s.
    pub(crate) fn retry_after_secs(&self) -> u32 {
        let secs = self.wait_ema_ms.map_or(0.0, |ms| (ms / 1000.0).ceil()) as u64;
        let (lo, hi) = RETRY_AFTER_SECS;
        u32::try_from(secs.clamp(lo, hi)).unwrap_or(1)
    }

    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Whether waiter `id` is still waiting.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.waiters.iter().any(|w| w.id == id)
    }

    pub(crate) fn push(&mut self, waiter: Waiter) {
        *self
            .queued
            .entry(waiter.demand.account.clone())
            .or_default() += 1;
        self.waiters.push_back(waiter);
    }

    /// Takes the waiter at `index` out of the queue.
    fn take(&mut self, index: usize) -> Option<Waiter> {
        let w = self.waiters.remove(index)?;
        if let Some(n) = self.queued.get_mut(&w.demand.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.queued.remove(&w.demand.account);
            }
        }
        Some(w)
    }

    /// Removes waiter `id`; whether it was there.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(i) => self.take(i).is_some(),
            None => false,
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.queued.clear();
        self.waiters.drain(..)
    }

    /// Drops the waiters whose client went away; how many.
    fn drop_abandoned(&mut self) -> u64 {
        let mut gone = 0;
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].tx.is_closed() {
                self.take(i);
                gone += 1;
            } else {
                i += 1;
            }
        }
        gone
    }

    /// The index of the next waiter to try: the oldest of the account with the fewest slots
    /// in flight, among the waiters `skip` does not name.
    fn next(&self, in_flight: &InFlight, skip: impl Fn(u64) -> bool) -> Option<usize> {
        let candidates = self.waiters.iter().enumerate().filter(|(_, w)| !skip(w.id));
        if self.queued.len() <= 1 {
            // One account: arrival order.
            return candidates.map(|(i, _)| i).next();
        }
        let loads: HashMap<&str, u32> = in_flight.with(|counts| {
            self.queued
                .keys()
                .map(|a| (&**a, counts.get(a).copied().unwrap_or(0)))
                .collect()
        });
        candidates
            .min_by_key(|(i, w)| (loads.get(&*w.demand.account).copied(), *i))
            .map(|(i, _)| i)
    }

    /// Room for waiter `newcomer` in a queue over its limit: the waiter that gives up its
    /// place — the newest of the most loaded account (slots in flight plus waiters), unless
    /// the newcomer's account is that loaded itself (then `None`: the newcomer is refused).
    pub(crate) fn displace_for(&mut self, newcomer: u64, in_flight: &InFlight) -> Option<Waiter> {
        let account = self
            .waiters
            .iter()
            .find(|w| w.id == newcomer)?
            .demand
            .account
            .clone();
        let loads: HashMap<Arc<str>, u64> = in_flight.with(|counts| {
            self.queued
                .iter()
                .map(|(a, q)| {
                    let flying = counts.get(a).copied().unwrap_or(0);
                    (a.clone(), u64::from(*q) + u64::from(flying))
                })
                .collect()
        });
        let heaviest = loads.values().copied().max()?;
        if loads.get(&account).copied().unwrap_or(0) >= heaviest {
            return None;
        }
        let victim = self
            .waiters
            .iter()
            .rposition(|w| loads.get(&w.demand.account) == Some(&heaviest))?;
        self.take(victim)
    }
}

/// The outcome of trying to place a demand right now.
pub(crate) enum Placed {
    Granted(Grant),
    /// Every candidate's request slots are taken.
    NoSlot,
    /// A slot is free somewhere but the tokens do not fit.
    NoRoom,
}

/// Counters of the queues.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    /// Admitted after waiting.
    pub(crate) admitted: AtomicU64,
    /// Refused because the queue was full (429).
    pub(crate) full: AtomicU64,
    /// Waited past the deadline (503).
    pub(crate) expired: AtomicU64,
    /// The client went away while waiting.
    pub(crate) abandoned: AtomicU64,
    /// Gave its place in a full queue to a less loaded account's request (429).
    pub(crate) displaced: AtomicU64,
}

impl Outcomes {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The queue of one model in `/jsonstats`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueStats {
    /// Requests waiting now.
    pub queued: u64,
    /// Mean wait of recently admitted requests, milliseconds (`None` before the first).
    pub wait_ema_ms: Option<f64>,
}

/// What the queues did, in `/jsonstats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueOutcomes {
    pub admitted: u64,
    pub full: u64,
    pub expired: u64,
    pub abandoned: u64,
    pub displaced: u64,
}

/// The per-model queues.
#[derive(Default)]
pub struct Queues {
    models: Mutex<HashMap<String, ModelQueue>>,
    next_id: AtomicU64,
    pub(crate) outcomes: Outcomes,
    /// Worker slots held per account (the fair order's key).
    pub in_flight: Arc<InFlight>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("queued", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Queues {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelQueue>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh waiter id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queue depth and mean wait by model (models that have had a queue).
    pub fn snapshot(&self) -> BTreeMap<String, QueueStats> {
        self.lock()
            .iter()
            .map(|(m, q)| {
                (
                    m.clone(),
                    QueueStats {
                        queued: q.len() as u64,
                        wait_ema_ms: q.wait_ema_ms,
                    },
                )
            })
            .collect()
    }

    /// Requests waiting for `model` now.
    pub fn depth(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, ModelQueue::len)
    }

    pub fn outcomes(&self) -> QueueOutcomes {
        let o = &self.outcomes;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueOutcomes {
            admitted: load(&o.admitted),
            full: load(&o.full),
            expired: load(&o.expired),
            abandoned: load(&o.abandoned),
            displaced: load(&o.displaced),
        }
    }

    /// Fails every waiter with `err` (shutdown).
    pub(crate) fn fail_all(&self, err: &ApiError) {
        let waiters: Vec<Waiter> = self
            .lock()
            .values_mut()
            .flat_map(ModelQueue::drain)
            .collect();
        for w in waiters {
            let _ = w.tx.send(Err(err.clone().into()));
        }
    }
}

/// Admits waiters of `q` in fair order while `place` finds room (see the module docs);
/// `any_free` says whether any worker of the model has a free request slot. Grants that
/// could not be delivered (the waiter left) go to `dropped`, to be freed once the caller has
/// released the queue lock.
pub(crate) fn serve(
    q: &mut ModelQueue,
    outcomes: &Outcomes,
    in_flight: &InFlight,
    mut place: impl FnMut(&Demand) -> Result<Placed, ApiError>,
    any_free: impl Fn(&Demand) -> bool,
    dropped: &mut Vec<Grant>,
) {
    // Waiters tried in this pass that found no room: each grant after them overtakes them.
    let mut no_room: HashSet<u64> = HashSet::new();
    // Waiters tried in this pass whose own workers (the recipients of an encrypted request)
    // have no free slot: skipped, not overtaken.
    let mut skipped: HashSet<u64> = HashSet::new();
    loop {
        let gone = q.drop_abandoned();
        if gone > 0 {
            outcomes.abandoned.fetch_add(gone, Ordering::Relaxed);
        }
        let Some(i) = q.next(in_flight, |id| {
            no_room.contains(&id) || skipped.contains(&id)
        }) else {
            return;
        };
        match place(&q.waiters[i].demand) {
            Err(e) => {
                if let Some(w) = q.take(i) {
                    let _ = w.tx.send(Err(e.into()));
                }
            }
            Ok(Placed::Granted(grant)) => {
                let Some(w) = q.take(i) else {
                    dropped.push(grant);
                    return;
                };
                for other in q.waiters.iter_mut() {
                    if no_room.contains(&other.id) {
                        other.overtaken += 1;
                    }
                }
                q.record_wait(w.since.elapsed());
                if let Err(Ok(grant)) = w.tx.send(Ok(grant)) {
                    Outcomes::bump(&outcomes.abandoned);
                    dropped.push(grant);
                }
            }
            Ok(Placed::NoSlot) if !any_free(&q.waiters[i].demand) => {
                if q.waiters[i].demand.recipients.is_none() {
                    // No worker of the model has a free slot: nobody else fits either.
                    return;
                }
                // Only its recipients are full; others may go to other workers.
                skipped.insert(q.waiters[i].id);
            }
            Ok(Placed::NoSlot | Placed::NoRoom) => {
                let w = &q.waiters[i];
                if w.overtaken >= MAX_OVERTAKES {
                    return;
                }
                no_room.insert(w.id);
            }
        }
    }
}
