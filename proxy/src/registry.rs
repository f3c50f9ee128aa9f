//! The worker registry: attested, registered workers by id, with their HTTP/2 connection,
//! capacity, load and health (latency and success EMAs), and worker selection.
//!
//! A worker enters the registry after its RA-TLS handshake and registration succeed and leaves
//! it when its connection closes (including when HTTP/2 keepalive pings go unanswered).
//!
//! # Load
//!
//! A worker's load is counted twice: requests in flight (at most its registered `capacity`)
//! and tokens in flight (at most [`WorkerInfo::token_budget`]). A [`Slot`] holds one request
//! and a number of tokens ([`crate::queue`] computes how many) and gives both back on drop.
//! A worker is *saturated* when either count leaves no room for the next request; selection
//! ([`rank`]) prefers the least loaded by the larger of the two fractions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protocol::ModelAdvert;

/// The proxy's side of a worker connection (the proxy is the HTTP/2 client).
pub type WorkerSender = crate::link::Link;

/// Weight of a new latency sample in the latency EMA.
const LATENCY_ALPHA: f64 = 0.2;
/// Weight of a new outcome in the success-rate EMA.
const SUCCESS_ALPHA: f64 = 0.1;
/// Workers whose score is within this factor of the best are chosen between at random.
const TIE_FACTOR: f64 = 1.1;

/// What a worker registered with, and what its attestation says (immutable).
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub id: u64,
    /// The name from its registration (informational).
    pub name: String,
    /// The ledger account its tokens are billed to: with payments on and a payout owner
    /// registered, its worker contract (raw address); otherwise its name.
    pub account: String,
    pub addr: SocketAddr,
    /// The verified image hash from its RA-TLS evidence (hex).
    pub image_hash: String,
    pub models: Vec<ModelAdvert>,
    pub capacity: u32,
    /// Tokens (prompt + completion reserved) the worker may have in flight at once: see
    /// [`token_budget`].
    pub token_budget: u64,
    pub price_coefficient_milli: u32,
    /// The negotiated protocol version.
    pub version: u32,
    /// Unix seconds of registration.
    pub registered_at: u64,
    /// Its end-to-end keys, when its attested claims publish them.
    pub e2e: Option<WorkerE2e>,
    /// Its GPUs, verified from the evidence in its certificate (empty when the worker policy
    /// requires none).
    pub gpus: Vec<GpuSummary>,
}

/// A worker GPU whose evidence passed the worker policy (`/jsonstats`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GpuSummary {
    pub driver: String,
    pub vbios: String,
    /// Serial of the per-device identity certificate (hex).
    pub serial: String,
    /// The pinned root its chain ends at.
    pub root: String,
    pub measurements_checked: usize,
    /// OCSP answers checked for its chain (0 when its certificate carries none).
    pub ocsp_checked: usize,
    /// When the earliest of those answers stops being acceptable (Unix seconds; absent
    /// without OCSP): the worker must present a renewed certificate before then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_valid_until: Option<u64>,
}

impl GpuSummary {
    /// The summary of a verified GPU.
    pub fn of(g: &measurements::gpu::VerifiedGpu) -> Self {
        Self {
            driver: g.driver_version.clone(),
            vbios: g.vbios_version.clone(),
            serial: g.device_serial.clone(),
            root: g.root_name.clone(),
            measurements_checked: g.measurements_checked,
            ocsp_checked: g.ocsp.len(),
            ocsp_valid_until: (!g.ocsp.is_empty()).then_some(g.ocsp_valid.1),
        }
    }
}

/// A worker's end-to-end encryption keys, from its attested claims ([`protocol::e2e`]).
#[derive(Clone, Debug)]
pub struct WorkerE2e {
    /// The recipient name of its HPKE key.
    pub key_hash: protocol::e2e::KeyHash,
    /// Verifies its receipts.
    pub receipt_key: ed25519_dalek::VerifyingKey,
    /// SHA-256 of its canonical claims (its receipts name it).
    pub claims_hash: [u8; 32],
    /// Its RA-TLS certificate (DER), served to clients for discovery.
    pub cert_der: Arc<[u8]>,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    latency_ema_ms: Option<f64>,
    success_ema: f64,
    requests: u64,
    failures: u64,
}

/// The token budget of a worker with `capacity` slots serving `models`: `percent` of
/// capacity × the largest advertised `max_context` (at least 1). At 100 a request never
/// waits for tokens while a slot is free (no request weighs more than one context); lower
/// values keep a few long requests from filling every slot of a worker.
pub fn token_budget(capacity: u32, models: &[ModelAdvert], percent: u32) -> u64 {
    let context = models.iter().map(|m| m.max_context).max().unwrap_or(0);
    (u64::from(capacity) * u64::from(context) * u64::from(percent) / 100).max(1)
}

/// Requests and tokens in flight at a worker.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    requests: u32,
    tokens: u64,
}

/// A point-in-time view of a worker's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSnapshot {
    pub in_flight: u32,
    /// Tokens held by the requests in flight.
    pub tokens_in_flight: u64,
    /// Time to first byte, EMA, milliseconds (`None` before the first response).
    pub latency_ema_ms: Option<f64>,
    /// Success rate EMA in 0..=1.
    pub success_rate: f64,
    pub requests: u64,
    pub failures: u64,
}

/// A registered worker.
#[derive(Debug)]
pub struct Worker {
    pub info: WorkerInfo,
    sender: WorkerSender,
    load: Mutex<Load>,
    health: Mutex<Health>,
}

impl Worker {
    pub fn new(info: WorkerInfo, sender: WorkerSender) -> Self {
        Self {
            info,
            sender,
            load: Mutex::new(Load::default()),
            health: Mutex::new(Health {
                latency_ema_ms: None,
                success_ema: 1.0,
                requests: 0,
                failures: 0,
            }),
        }
    }

    /// A handle to send requests on the worker's connection.
    pub fn sender(&self) -> WorkerSender {
        self.sender.clone()
    }

    /// Whether the worker's connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The advert of `model`, if the worker serves it.
    pub fn model(&self, model: &str) -> Option<&ModelAdvert> {
        self.info.models.iter().find(|m| m.name == model)
    }

    /// Takes one of the worker's request slots holding `tokens` of its token budget (capped
    /// at the whole budget, so that any request fits an idle worker), if both are free.
    pub fn try_acquire(self: &Arc<Self>, tokens: u64) -> Result<Slot, Saturated> {
        let tokens = tokens.min(self.info.token_budget);
        let mut load = self.load();
        if load.requests >= self.info.capacity {
            return Err(Saturated::Requests);
        }
        if load.tokens + tokens > self.info.token_budget {
            return Err(Saturated::Tokens);
        }
        load.requests += 1;
        load.tokens += tokens;
        Ok(Slot {
            worker: self.clone(),
            tokens,
        })
    }

    /// Whether a request slot is free (tokens aside).
    pub fn has_free_slot(&self) -> bool {
        self.load().requests < self.info.capacity
    }

    fn load(&self) -> std::sync::MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a time to first byte.
    pub fn record_latency(&self, ttfb: Duration) {
        let ms = ttfb.as_secs_f64() * 1000.0;
        let mut h = self.health();
        h.latency_ema_ms = Some(match h.latency_ema_ms {
            Some(ema) => ema + LATENCY_ALPHA * (ms - ema),
            None => ms,
        });
    }

    /// Records the outcome of a request.
    pub fn record_outcome(&self, ok: bool) {
        let mut h = self.health();
        h.requests += 1;
        if !ok {
            h.failures += 1;
        }
        let x = if ok { 1.0 } else { 0.0 };
        h.success_ema += SUCCESS_ALPHA * (x - h.success_ema);
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let h = *self.health();
        let load = *self.load();
        HealthSnapshot {
            in_flight: load.requests,
            tokens_in_flight: load.tokens,
            latency_ema_ms: h.latency_ema_ms,
            success_rate: h.success_ema,
            requests: h.requests,
            failures: h.failures,
        }
    }

    /// Lower is better: latency (unknown counts as 0, so new workers get tried), inflated by
    /// load (the larger of the request and token fractions) and divided by the success rate.
    fn score(&self) -> f64 {
        let s = self.snapshot();
        let requests = f64::from(s.in_flight) / f64::from(self.info.capacity.max(1));
        let tokens = s.tokens_in_flight as f64 / self.info.token_budget.max(1) as f64;
        let load = requests.max(tokens);
        (s.latency_ema_ms.unwrap_or(0.0) + 1.0) * (1.0 + 2.0 * load) / s.success_rate.max(0.05)
    }
}

/// Which of a worker's limits refused a [`Worker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saturated {
    /// Every request slot is taken.
    Requests,
    /// A slot is free but the request's tokens do not fit the remaining token budget.
    Tokens,
}

/// One request slot of a worker and the tokens it holds, freed on drop.
#[derive(Debug)]
pub struct Slot {
    worker: Arc<Worker>,
    tokens: u64,
}

impl Slot {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// Tokens of the worker's budget this slot holds.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut load = self.worker.load();
        load.requests = load.requests.saturating_sub(1);
        load.tokens = load.tokens.saturating_sub(self.tokens);
    }
}

/// The registered workers.
#[derive(Debug, Default)]
pub struct Registry {
    workers: RwLock<BTreeMap<u64, Arc<Worker>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// A fresh worker id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert(&self, worker: Arc<Worker>) {
        self.write().insert(worker.info.id, worker);
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Worker>> {
        self.write().remove(&id)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<Worker>>> {
        self.workers.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Worker>>> {
        self.workers.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// All workers, by id.
    pub fn list(&self) -> Vec<Arc<Worker>> {
        self.read().values().cloned().collect()
    }

    /// Whether any connected worker serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.read()
            .values()
            .any(|w| !w.is_closed() && w.model(model).is_some())
    }

    /// Served models with the earliest registration time of a worker serving each.
    pub fn models(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for w in self.read().values().filter(|w| !w.is_closed()) {
            for m in &w.info.models {
                let t = out.entry(m.name.clone()).or_insert(w.info.registered_at);
                *t = (*t).min(w.info.registered_at);
            }
        }
        out
    }

    /// Open workers serving `model`, except those in `exclude`.
    pub fn candidates(&self, model: &str, exclude: &[u64]) -> Vec<Arc<Worker>> {
        self.read()
            .values()
            .filter(|w| !exclude.contains(&w.info.id) && !w.is_closed() && w.model(model).is_some())
            .cloned()
            .collect()
    }
}

/// Orders `workers` best first by score; workers within [`TIE_FACTOR`] of the best are
/// shuffled with `random` bytes so that equal workers share the load.
pub fn rank(workers: Vec<Arc<Worker>>, random: &[u8]) -> Vec<Arc<Worker>> {
    if workers.len() < 2 {
        // Nothing to order (and no vectors to build, on every request to a lone worker).
        return workers;
    }
    let scores: Vec<f64> = workers.iter().map(|w| w.score()).collect();
    let mut slots: Vec<Option<Arc<Worker>>> = workers.into_iter().map(Some).collect();
    order(&scores, random)
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

/// Indices of `scores`, lowest first, with the group within [`TIE_FACTOR`] of the lowest
/// shuffled (Fisher-Yates, two bytes of `random` per step).
fn order(scores: &[f64], random: &[u8]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let Some(best) = idx.first().map(|i| scores[*i]) else {
        return idx;
    };
    let ties = idx
        .iter()
        .take_while(|i| scores[**i] <= best * TIE_FACTOR)
        .count();
    for i in (1..ties).rev() {
        let r = random
            .get(2 * i..2 * i + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .unwrap_or(0);
        idx.swap(i, r % (i + 1));
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_prefers_low_scores_and_shuffles_ties() {
        assert_eq!(order(&[5.0, 1.0, 3.0], &[0; 8]), vec![1, 2, 0]);
        assert!(order(&[], &[]).is_empty());
        // Two equal workers: each comes first for some random input.
        let firsts: std::collections::BTreeSet<usize> = (0u8..=255)
            .map(|b| order(&[2.0, 2.0, 9.0], &[b; 8])[0])
            .collect();
        assert_eq!(firsts.into_iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(order(&[2.0, 2.0, 9.0], &[7; 8])[2], 2);
    }

    fn advert(max_context: u32) -> ModelAdvert {
        ModelAdvert {
            name: "m".into(),
            model_hash: "ab".repeat(32),
            max_context,
            max_completion_tokens: 512,
        }
    }

    #[test]
    fn token_budget_is_a_share_of_capacity_times_context() {
        let models = [advert(2048), advert(8192)];
        assert_eq!(token_budget(4, &models, 100), 4 * 8192);
        assert_eq!(token_budget(4, &models, 25), 8192);
        assert_eq!(
            token_budget(3, &[advert(10)], 1),
            1,
            "rounded down, at least 1"
        );
        assert_eq!(token_budget(0, &models, 100), 1);
    }
}
