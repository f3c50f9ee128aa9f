//! Counters the admin endpoints report, per-worker usage, and a rate limiter for log lines
//! that untrusted peers can trigger.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use protocol::Usage;
use serde::Serialize;

use crate::ledger::UsageRecord;

/// Usage served by one worker (kept after the worker disconnects).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerUsage {
    pub name: String,
    pub image_hash: String,
    #[serde(flatten)]
    pub usage: UsageRecord,
}

/// Token counters by class.
#[derive(Debug, Default)]
pub struct TokenCounters {
    pub prompt: AtomicU64,
    pub cached: AtomicU64,
    pub completion: AtomicU64,
    pub reasoning: AtomicU64,
}

/// Process-wide counters.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    requests_by_status: Mutex<BTreeMap<u16, u64>>,
    pub tokens: TokenCounters,
    pub cost_nano: AtomicU64,
    pub active_requests: AtomicU64,
    pub retries: AtomicU64,
    pub stream_errors: AtomicU64,
    /// Streams ended because their client took nothing for `client_stall_secs`.
    pub client_stalls: AtomicU64,
    /// Requests a worker answered with 429 (no free slot there; not counted against it).
    pub worker_busy: AtomicU64,
    /// Streams their client abandoned after the worker had started on them and before
    /// they were billed ([`crate::limits::Abandons`]).
    pub abandoned: AtomicU64,
    /// Streams the proxy had the worker stop ([`protocol::paths::CANCEL`]) and billed for the
    /// work done: their client left, stopped reading (`client_stall_secs`) or was still
    /// streaming at the drain deadline.
    pub stopped: AtomicU64,
    /// Generations a worker stopped on their own client's cancel (`POST /cocoon/v1/cancel` on
    /// the client port); their streams end with the usage of the work done, billed as usual.
    pub cancelled: AtomicU64,
    /// Usage reports whose cost exceeded the reservation (charged at the reservation).
    pub over_reservation: AtomicU64,
    /// Receipts of encrypted requests that verified and were billed.
    pub receipts_valid: AtomicU64,
    /// Receipts that did not verify or did not name their request (not billed).
    pub receipts_invalid: AtomicU64,
    pub workers_registered: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Client connections and requests refused by a limit, by reason
    /// ([`crate::limits::ClientRefusal::code`]).
    client_refusals: Mutex<BTreeMap<&'static str, u64>>,
    worker_usage: Mutex<BTreeMap<u64, WorkerUsage>>,
    /// Limits log lines that peers can trigger at will (refusals, worker misbehaviour).
    pub log_limiter: LogLimiter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests_by_status: Mutex::default(),
            tokens: TokenCounters::default(),
            cost_nano: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            client_stalls: AtomicU64::new(0),
            worker_busy: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            over_reservation: AtomicU64::new(0),
            receipts_valid: AtomicU64::new(0),
            receipts_invalid: AtomicU64::new(0),
            workers_registered: AtomicU64::new(0),
            refusals: Mutex::default(),
            client_refusals: Mutex::default(),
            worker_usage: Mutex::default(),
            log_limiter: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// Counts a response to a client by HTTP status.
    pub fn count_status(&self, status: u16) {
        *lock(&self.requests_by_status).entry(status).or_default() += 1;
    }

    pub fn requests_by_status(&self) -> BTreeMap<u16, u64> {
        lock(&self.requests_by_status).clone()
    }

    /// Counts a refused worker connection by reason code.
    pub fn count_refusal(&self, reason: &'static str) {
        *lock(&self.refusals).entry(reason).or_default() += 1;
    }

    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.refusals).clone()
    }

    /// Counts a client connection or request refused by a limit, by reason code.
    pub fn count_client_refusal(&self, reason: &'static str) {
        *lock(&self.client_refusals).entry(reason).or_default() += 1;
    }

    pub fn client_refusals(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.client_refusals).clone()
    }

    /// Records a billed request: token counters, and the serving worker's usage.
    pub fn record_usage(&self, worker: (u64, &str, &str), usage: &Usage, cost: u64) {
        let t = &self.tokens;
        t.prompt.fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        t.cached.fetch_add(usage.cached_tokens, Ordering::Relaxed);
        t.completion
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
        t.reasoning
            .fetch_add(usage.reasoning_tokens, Ordering::Relaxed);
        self.cost_nano.fetch_add(cost, Ordering::Relaxed);
        let (id, name, image) = worker;
        let mut map = lock(&self.worker_usage);
        let entry = map.entry(id).or_insert_with(|| WorkerUsage {
            name: name.to_string(),
            image_hash: image.to_string(),
            usage: UsageRecord::default(),
        });
        entry.usage.add(usage, cost);
    }

    /// Usage by worker id.
    pub fn worker_usage(&self) -> BTreeMap<u64, WorkerUsage> {
        lock(&self.worker_usage).clone()
    }

    /// An active-request guard (the gauge counts it until dropped).
    pub fn active(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            stats: self.clone(),
        }
    }
}

/// Decrements the active-requests gauge on drop.
#[derive(Debug)]
pub struct ActiveGuard {
    stats: std::sync::Arc<Stats>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.stats.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Allows one log line per key per window; the next allowed line reports how many were
/// suppressed in between.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::default(),
        }
    }

    /// `Some(suppressed since the last line)` if a line for `key` may be logged at `now`.
    pub fn allow(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        match state.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.window => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                if state.len() < 256 {
                    state.insert(key, (now, 0));
                }
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_summarizes() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn usage_by_worker() {
        let s = Stats::default();
        let u = Usage {
            prompt_tokens: 2,
            cached_tokens: 1,
            completion_tokens: 3,
            reasoning_tokens: 0,
        };
        s.record_usage((7, "w", "img"), &u, 10);
        s.record_usage((7, "w", "img"), &u, 10);
        let w = &s.worker_usage()[&7];
        assert_eq!(
            (
                w.usage.requests,
                w.usage.completion_tokens,
                w.usage.cost_nano
            ),
            (2, 6, 20)
        );
        assert_eq!(s.tokens.cached.load(Ordering::Relaxed), 2);
    }
}
