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
//! `Retry-After`: the recent mean wait in that queue, 1 to 60 s. Whenever room appears (a
//! request ends, a worker registers) the queue is served in arrival order (`serve`), with
//! one rule for token budgets:
//!
//! * a waiter that does not fit (its tokens exceed what any worker has left) does not block
//!   the waiters behind it: a later request that fits is admitted ahead of it, so one huge
//!   prompt does not stall short ones while slots remain;
//! * a waiter overtaken [`MAX_OVERTAKES`] times becomes a barrier: nobody behind it is
//!   admitted until it is, so short requests cannot starve a long one either.
//!
//! A waiter whose client goes away (its request future is dropped) leaves the queue at once;
//! the funds held for it are released by the same drop. A grant that finds its waiter gone
//! is returned, which serves the next one. When no connected worker serves a model any more,
//! its waiters get 404 `model_not_found`; when the proxy shuts down, 503.
//!
//! Queue depth per model, waits and outcomes are in `/jsonstats` (`queues`,
//! `queue_outcomes`) and `/metrics` (`cocoon_proxy_queue_*`); docs/routing.md.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{ApiError, RequestMeta};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::ProxyConfig;
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
    pub meta: RequestMeta,
    /// Prompt tokens assumed for routing (see the module docs).
    pub prompt_tokens: u64,
    /// An encrypted request can go only to these workers (key hashes of its recipients).
    pub recipients: Option<Arc<[protocol::e2e::KeyHash]>>,
}

impl Demand {
    /// The demand of `meta` with a body of `body_len` bytes.
    pub fn new(cfg: &ProxyConfig, meta: &RequestMeta, body_len: usize) -> Self {
        let body = u64::try_from(body_len).unwrap_or(u64::MAX);
        Self {
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
    slot: Arc<std::sync::Mutex<Option<Slot>>>,
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
    pub fn new(slot: Slot, release: Arc<dyn Release>) -> Self {
        Self {
            freer: Freer {
                worker: slot.worker().clone(),
                slot: Arc::new(std::sync::Mutex::new(Some(slot))),
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
            .map_or(0, Slot::tokens)
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
    pub(crate) tx: oneshot::Sender<Result<Grant, ApiError>>,
    pub(crate) overtaken: u32,
    pub(crate) since: Instant,
}

/// The queue of one model.
#[derive(Default)]
pub(crate) struct ModelQueue {
    pub(crate) waiters: VecDeque<Waiter>,
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

    /// Removes waiter `id`; whether it was there.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|w| w.id != id);
        self.waiters.len() != before
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
}

/// The per-model queues.
#[derive(Default)]
pub struct Queues {
    models: Mutex<HashMap<String, ModelQueue>>,
    next_id: AtomicU64,
    pub(crate) outcomes: Outcomes,
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
                        queued: q.waiters.len() as u64,
                        wait_ema_ms: q.wait_ema_ms,
                    },
                )
            })
            .collect()
    }

    /// Requests waiting for `model` now.
    pub fn depth(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, |q| q.waiters.len())
    }

    pub fn outcomes(&self) -> QueueOutcomes {
        let o = &self.outcomes;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueOutcomes {
            admitted: load(&o.admitted),
            full: load(&o.full),
            expired: load(&o.expired),
            abandoned: load(&o.abandoned),
        }
    }

    /// Fails every waiter with `err` (shutdown).
    pub(crate) fn fail_all(&self, err: &ApiError) {
        let waiters: Vec<Waiter> = self
            .lock()
            .values_mut()
            .flat_map(|q| q.waiters.drain(..))
            .collect();
        for w in waiters {
            let _ = w.tx.send(Err(err.clone()));
        }
    }
}

/// Admits waiters of `q` in order while `place` finds room (see the module docs); `any_free`
/// says whether any worker of the model has a free request slot. Grants that could not be
/// delivered (the waiter left) go to `dropped`, to be freed once the caller has released
/// the queue lock.
pub(crate) fn serve(
    q: &mut ModelQueue,
    outcomes: &Outcomes,
    mut place: impl FnMut(&Demand) -> Result<Placed, ApiError>,
    any_free: impl Fn(&Demand) -> bool,
    dropped: &mut Vec<Grant>,
) {
    let mut i = 0;
    while i < q.waiters.len() {
        if q.waiters[i].tx.is_closed() {
            q.waiters.remove(i);
            Outcomes::bump(&outcomes.abandoned);
            continue;
        }
        match place(&q.waiters[i].demand) {
            Err(e) => {
                if let Some(w) = q.waiters.remove(i) {
                    let _ = w.tx.send(Err(e));
                }
            }
            Ok(Placed::Granted(grant)) => {
                let Some(w) = q.waiters.remove(i) else {
                    dropped.push(grant);
                    break;
                };
                for earlier in q.waiters.iter_mut().take(i) {
                    earlier.overtaken += 1;
                }
                q.record_wait(w.since.elapsed());
                if let Err(Ok(grant)) = w.tx.send(Ok(grant)) {
                    Outcomes::bump(&outcomes.abandoned);
                    dropped.push(grant);
                }
            }
            Ok(Placed::NoSlot) if !any_free(&q.waiters[i].demand) => break,
            Ok(Placed::NoSlot | Placed::NoRoom) => {
                if q.waiters[i].overtaken >= MAX_OVERTAKES {
                    break;
                }
                i += 1;
            }
        }
    }
}
