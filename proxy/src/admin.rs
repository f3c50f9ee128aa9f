//! The admin port (loopback only, plain HTTP/1.1): `/stats` (text), `/jsonstats` (JSON),
//! `/metrics` (Prometheus text format), and the `/healthz` and `/readyz` probes
//! ([`crate::health`]). Reports counts and identities, never payloads.
//!
//! `/jsonstats` shape:
//! ```json
//! {
//!   "proxy": "proxy-1", "uptime_secs": 12,
//!   "workers": [{"id": 1, "name": "w", "addr": "127.0.0.1:5000", "image_hash": "…",
//!                "models": ["m"], "capacity": 64, "in_flight": 0,
//!                "token_budget": 524288, "tokens_in_flight": 0,
//!                "price_coefficient_milli": 1000, "version": 1,
//!                "latency_ema_ms": 1.5, "success_rate": 1.0, "requests": 3, "failures": 0,
//!                "gpus": [{"driver": "550.127.05", "vbios": "96.00.9F.00.01", "serial": "…",
//!                          "root": "…", "measurements_checked": 64, "ocsp_checked": 3,
//!                          "ocsp_valid_until": 1796462183}]}],   // gpus: when required
//!   "clients": {"<account>": {"requests": 1, "prompt_tokens": 3, "cached_tokens": 0,
//!               "completion_tokens": 32, "reasoning_tokens": 0, "cost_nano": 1310}},
//!   "receipts_stored": {"<account>": 1},
//!   "worker_usage": {"1": {"name": "w", "image_hash": "…", "requests": 1, …, "cost_nano": 1310}},
//!   "requests": {"active": 0, "by_status": {"200": 1}, "retries": 0, "stream_errors": 0,
//!                "client_stalls": 0, "worker_busy": 0, "abandoned": 0, "stopped": 0, "over_reservation": 0, "receipts_valid": 0,
//!                "receipts_invalid": 0},
//!   "tokens": {"prompt": 3, "cached": 0, "completion": 32, "reasoning": 0},
//!   "cost_nano": 1310,
//!   "worker_rejections": {"debug_td": 1},
//!   "workers_registered": 2,
//!   "client_connections": 3, "request_body_bytes": 0,
//!   "client_refusals": {"connections_per_ip": 2, "insufficient_funds": 1},
//!   "queues": {"m": {"queued": 0, "wait_ema_ms": 12.5}},
//!   "queue_outcomes": {"admitted": 3, "full": 0, "expired": 0, "abandoned": 1, "displaced": 0},
//!   "shutting_down": false,
//!   "payments": {"health": "healthy", "proxy_contract": "0:…", "wallet": "0:…",
//!                "chain_lag_s": 0, "last_anchor_seqno": 3, "last_anchor_age_s": 12, …,
//!                "clients": {"0:<client contract>": {"billed_tokens": 90, "charged_tokens": 90,
//!                            "pending_tokens": 0, "pending_nano": 0, …}},
//!                "workers": {"0:<worker contract>": {"billed_tokens": 90, "paid_tokens": 90,
//!                            "paid_nano": 36000, "pending_tokens": 0, …}}}
//! }
//! ```
//!
//! `payments` is present with payments on ([`crate::payments::PaymentsStats`]): money per
//! client contract and per worker contract (billed, anchored, charged or paid, pending),
//! chain lag and anchor age. Each worker's `account` is the ledger account its tokens are
//! billed to: its worker contract with payments on and a payout owner registered, else its
//! name.
//!
//! `queues` has every served model (and any that had a queue): requests waiting for a worker
//! slot now and the mean wait of those admitted from the queue ([`crate::queue`]);
//! `queue_outcomes` counts requests admitted after waiting, refused because the queue was
//! full (429), expired in the queue (503), abandoned by their client while queued, and
//! displaced from a full queue by a less loaded account's request (429). Per
//! worker, `in_flight`/`capacity` are requests and `tokens_in_flight`/`token_budget` tokens
//! ([`crate::registry`]).
//!
//! `client_refusals` counts client connections and requests refused by a limit, by
//! [`crate::limits::ClientRefusal::code`]; `request_body_bytes` is what the body budget
//! currently holds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ledger::UsageRecord;
use crate::queue::{QueueOutcomes, QueueStats};
use crate::response::ResponseBody;
use crate::state::State;
use crate::stats::WorkerUsage;

/// One worker in `/jsonstats`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStats {
    pub id: u64,
    pub name: String,
    /// The ledger account its tokens are billed to (see the module docs).
    pub account: String,
    pub addr: String,
    pub image_hash: String,
    pub models: Vec<String>,
    pub capacity: u32,
    pub in_flight: u32,
    pub token_budget: u64,
    pub tokens_in_flight: u64,
    pub price_coefficient_milli: u32,
    pub version: u32,
    pub latency_ema_ms: Option<f64>,
    pub success_rate: f64,
    pub requests: u64,
    pub failures: u64,
    /// Its verified GPUs (absent when the worker policy requires none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::registry::GpuSummary>,
}

/// Request counters in `/jsonstats`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestStats {
    pub active: u64,
    pub by_status: BTreeMap<String, u64>,
    pub retries: u64,
    pub stream_errors: u64,
    /// Streams ended because their client took nothing for `client_stall_secs`.
    pub client_stalls: u64,
    /// Requests a worker answered with 429 (not counted against the worker).
    pub worker_busy: u64,
    /// Streams abandoned by their client before they were billed.
    pub abandoned: u64,
    /// Streams stopped at the worker and billed for the work done: their client left, stopped
    /// reading, or was still streaming at the drain deadline.
    pub stopped: u64,
    /// Generations stopped at a worker on their own client's cancel (billed as usual).
    pub cancelled: u64,
    pub over_reservation: u64,
    /// Encrypted requests billed on a verified receipt.
    pub receipts_valid: u64,
    /// Receipts refused (not billed).
    pub receipts_invalid: u64,
}

/// Token totals in `/jsonstats`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStats {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    pub reasoning: u64,
}

/// The `/jsonstats` document (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub struct JsonStats {
    pub proxy: String,
    pub uptime_secs: u64,
    pub workers: Vec<WorkerStats>,
    pub clients: BTreeMap<String, UsageRecord>,
    /// Worker receipts stored in the durable ledger, per client (absent in memory).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub receipts_stored: BTreeMap<String, u64>,
    pub worker_usage: BTreeMap<String, WorkerUsage>,
    pub requests: RequestStats,
    pub tokens: TokenStats,
    pub cost_nano: u64,
    pub worker_rejections: BTreeMap<String, u64>,
    pub workers_registered: u64,
    /// Open client connections.
    pub client_connections: u64,
    /// Request-body bytes charged to the body budget.
    pub request_body_bytes: u64,
    /// Client refusals by reason.
    pub client_refusals: BTreeMap<String, u64>,
    /// The admission queue of each model.
    pub queues: BTreeMap<String, QueueStats>,
    /// What the queues did.
    pub queue_outcomes: QueueOutcomes,
    /// The proxy is draining (new requests get 503).
    pub shutting_down: bool,
    /// Money, with payments on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments: Option<crate::payments::PaymentsStats>,
}

/// A snapshot of the proxy's state.
pub fn json_stats(state: &State) -> JsonStats {
    let s = &state.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut queues = state.queues.snapshot();
    for model in state.registry.models().into_keys() {
        queues.entry(model).or_insert(QueueStats {
            queued: 0,
            wait_ema_ms: None,
        });
    }
    let workers = state
        .registry
        .list()
        .into_iter()
        .map(|w| {
            let h = w.snapshot();
            let i = &w.info;
            WorkerStats {
                id: i.id,
                name: i.name.clone(),
                account: i.account.clone(),
                addr: i.addr.to_string(),
                image_hash: i.image_hash.clone(),
                models: i.models.iter().map(|m| m.name.clone()).collect(),
                capacity: i.capacity,
                in_flight: h.in_flight,
                token_budget: i.token_budget,
                tokens_in_flight: h.tokens_in_flight,
                price_coefficient_milli: i.price_coefficient_milli,
                version: i.version,
                latency_ema_ms: h.latency_ema_ms,
                success_rate: h.success_rate,
                requests: h.requests,
                failures: h.failures,
                gpus: i.gpus.clone(),
            }
        })
        .collect();
    let clients = state.ledger.records();
    JsonStats {
        proxy: state.config.name.clone(),
        uptime_secs: s.started.elapsed().as_secs(),
        workers,
        receipts_stored: clients
            .keys()
            .filter_map(|k| state.ledger.receipts(k).map(|n| (k.clone(), n)))
            .collect(),
        clients,
        worker_usage: s
            .worker_usage()
            .into_iter()
            .map(|(id, u)| (id.to_string(), u))
            .collect(),
        requests: RequestStats {
            active: load(&s.active_requests),
            by_status: s
                .requests_by_status()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            retries: load(&s.retries),
            stream_errors: load(&s.stream_errors),
            client_stalls: load(&s.client_stalls),
            worker_busy: load(&s.worker_busy),
            abandoned: load(&s.abandoned),
            stopped: load(&s.stopped),
            cancelled: load(&s.cancelled),
            over_reservation: load(&s.over_reservation),
            receipts_valid: load(&s.receipts_valid),
            receipts_invalid: load(&s.receipts_invalid),
        },
        tokens: TokenStats {
            prompt: load(&s.tokens.prompt),
            cached: load(&s.tokens.cached),
            completion: load(&s.tokens.completion),
            reasoning: load(&s.tokens.reasoning),
        },
        cost_nano: load(&s.cost_nano),
        worker_rejections: s
            .refusals()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        workers_registered: load(&s.workers_registered),
        client_connections: u64::from(state.limits.connections.open()),
        request_body_bytes: state.limits.body_budget.used(),
        client_refusals: s
            .client_refusals()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        queues,
        queue_outcomes: state.queues.outcomes(),
        shutting_down: state.shutdown.is_draining(),
        payments: state.payments.as_ref().map(|p| p.stats()),
    }
}

/// `/metrics` in the Prometheus text exposition format.
pub fn prometheus(state: &State) -> String {
    let j = json_stats(state);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let labelled = |label: &str, m: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
        m.iter()
            .map(|(k, v)| (format!("{{{label}=\"{}\"}}", escape(k)), *v))
            .collect()
    };
    family(
        "cocoon_proxy_requests_total",
        "counter",
        "Client requests by HTTP status of the response.",
        &labelled("status", &j.requests.by_status),
    );
    let tokens: BTreeMap<String, u64> = [
        ("prompt", j.tokens.prompt),
        ("cached", j.tokens.cached),
        ("completion", j.tokens.completion),
        ("reasoning", j.tokens.reasoning),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    family(
        "cocoon_proxy_tokens_total",
        "counter",
        "Billed tokens by class.",
        &labelled("class", &tokens),
    );
    let one = |v: u64| vec![(String::new(), v)];
    family(
        "cocoon_proxy_cost_nano_total",
        "counter",
        "Charged to clients, nano-TON.",
        &one(j.cost_nano),
    );
    family(
        "cocoon_proxy_active_requests",
        "gauge",
        "Client requests in progress.",
        &one(j.requests.active),
    );
    family(
        "cocoon_proxy_workers_connected",
        "gauge",
        "Registered workers with an open connection.",
        &one(j.workers.len() as u64),
    );
    family(
        "cocoon_proxy_worker_capacity",
        "gauge",
        "Total request capacity of connected workers.",
        &one(j.workers.iter().map(|w| u64::from(w.capacity)).sum()),
    );
    family(
        "cocoon_proxy_worker_rejections_total",
        "counter",
        "Refused worker connections by reason (attestation rejection code or step).",
        &labelled("reason", &j.worker_rejections),
    );
    family(
        "cocoon_proxy_retries_total",
        "counter",
        "Requests retried on a second worker before the first byte.",
        &one(j.requests.retries),
    );
    family(
        "cocoon_proxy_receipts_total",
        "counter",
        "Receipts of encrypted requests: valid (billed) and invalid (not billed).",
        &labelled(
            "result",
            &BTreeMap::from([
                ("valid".to_string(), j.requests.receipts_valid),
                ("invalid".to_string(), j.requests.receipts_invalid),
            ]),
        ),
    );
    family(
        "cocoon_proxy_stream_errors_total",
        "counter",
        "Streams ended by the proxy with a cocoon-error event.",
        &one(j.requests.stream_errors),
    );
    family(
        "cocoon_proxy_client_stalls_total",
        "counter",
        "Streams ended because their client took nothing for client_stall_secs (worker freed).",
        &one(j.requests.client_stalls),
    );
    family(
        "cocoon_proxy_abandoned_streams_total",
        "counter",
        "Streams their client abandoned before they were billed (client_abandon_burst).",
        &one(j.requests.abandoned),
    );
    family(
        "cocoon_proxy_stopped_streams_total",
        "counter",
        "Streams the worker stopped on the proxy's cancel (client left, client stopped reading, drain deadline), billed for the work done.",
        &one(j.requests.stopped),
    );
    family(
        "cocoon_proxy_cancelled_requests_total",
        "counter",
        "Generations a worker stopped on their own client's cancel (POST /cocoon/v1/cancel), billed for the work done.",
        &one(j.requests.cancelled),
    );
    family(
        "cocoon_proxy_worker_busy_total",
        "counter",
        "Requests a worker answered with 429 no_capacity (not counted against the worker).",
        &one(j.requests.worker_busy),
    );
    family(
        "cocoon_proxy_client_connections",
        "gauge",
        "Open client connections.",
        &one(j.client_connections),
    );
    family(
        "cocoon_proxy_request_body_bytes",
        "gauge",
        "Request-body bytes held in memory (charged to client_body_budget_bytes).",
        &one(j.request_body_bytes),
    );
    family(
        "cocoon_proxy_client_refusals_total",
        "counter",
        "Client connections and requests refused by a limit, by reason.",
        &labelled("reason", &j.client_refusals),
    );
    let depth: BTreeMap<String, u64> = j
        .queues
        .iter()
        .map(|(m, q)| (m.clone(), q.queued))
        .collect();
    family(
        "cocoon_proxy_queue_depth",
        "gauge",
        "Requests waiting for a worker slot, by model.",
        &labelled("model", &depth),
    );
    let o = &j.queue_outcomes;
    let outcomes: BTreeMap<String, u64> = [
        ("admitted", o.admitted),
        ("full", o.full),
        ("expired", o.expired),
        ("abandoned", o.abandoned),
        ("displaced", o.displaced),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    family(
        "cocoon_proxy_queue_outcomes_total",
        "counter",
        "Queued requests by outcome (admitted, refused because full, expired, abandoned, displaced).",
        &labelled("outcome", &outcomes),
    );
    let per_worker = |f: fn(&WorkerStats) -> u64| -> Vec<(String, u64)> {
        j.workers
            .iter()
            .map(|w| {
                let labels = format!("{{worker=\"{}\",name=\"{}\"}}", w.id, escape(&w.name));
                (labels, f(w))
            })
            .collect()
    };
    family(
        "cocoon_proxy_worker_in_flight",
        "gauge",
        "Requests in flight per worker.",
        &per_worker(|w| u64::from(w.in_flight)),
    );
    family(
        "cocoon_proxy_worker_tokens_in_flight",
        "gauge",
        "Tokens (prompt estimate + completion reserved) in flight per worker.",
        &per_worker(|w| w.tokens_in_flight),
    );
    family(
        "cocoon_proxy_worker_token_budget",
        "gauge",
        "Token budget per worker (worker_token_budget_percent of capacity x max_context).",
        &per_worker(|w| w.token_budget),
    );
    if let Some(p) = &j.payments {
        payment_families(p, &mut family);
    }
    out
}

/// The money families of `/metrics` (payments on).
fn payment_families(
    p: &crate::payments::PaymentsStats,
    family: &mut impl FnMut(&str, &str, &str, &[(String, u64)]),
) {
    let one = |v: u64| vec![(String::new(), v)];
    let sat = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    family(
        "cocoon_proxy_payments_healthy",
        "gauge",
        "1 while the payments engine is healthy (synced, not stopped by a rollback).",
        &one(u64::from(p.health == "healthy")),
    );
    if let Some(lag) = p.chain_lag_s {
        family(
            "cocoon_proxy_chain_lag_seconds",
            "gauge",
            "Chain time minus the time of the last proxy-contract transaction seen.",
            &one(u64::from(lag)),
        );
    }
    if let Some(age) = p.last_anchor_age_s {
        family(
            "cocoon_proxy_anchor_age_seconds",
            "gauge",
            "Age of the last confirmed ledger anchor on chain.",
            &one(u64::from(age)),
        );
    }
    let clients = |f: fn(&crate::payments::ClientStats) -> u64| -> Vec<(String, u64)> {
        p.clients
            .iter()
            .map(|(c, s)| (format!("{{client=\"{}\"}}", escape(c)), f(s)))
            .collect()
    };
    family(
        "cocoon_proxy_client_billed_tokens",
        "counter",
        "Adjusted tokens billed per client contract.",
        &clients(|s| s.billed_tokens),
    );
    family(
        "cocoon_proxy_client_charged_tokens",
        "counter",
        "Tokens charged on chain per client contract.",
        &clients(|s| s.charged_tokens),
    );
    family(
        "cocoon_proxy_client_pending_nano",
        "gauge",
        "Billed, not yet charged on chain, per client contract (nano-TON).",
        &p.clients
            .iter()
            .map(|(c, s)| (format!("{{client=\"{}\"}}", escape(c)), sat(s.pending_nano)))
            .collect::<Vec<_>>(),
    );
    let workers = |f: fn(&crate::payments::WorkerStats) -> u64| -> Vec<(String, u64)> {
        p.workers
            .iter()
            .map(|(w, s)| (format!("{{worker_contract=\"{}\"}}", escape(w)), f(s)))
            .collect()
    };
    family(
        "cocoon_proxy_worker_billed_tokens",
        "counter",
        "Tokens served per worker contract.",
        &workers(|s| s.billed_tokens),
    );
    family(
        "cocoon_proxy_worker_paid_tokens",
        "counter",
        "Tokens paid out on chain per worker contract.",
        &workers(|s| s.paid_tokens),
    );
    family(
        "cocoon_proxy_worker_pending_tokens",
        "gauge",
        "Tokens served, not yet paid on chain, per worker contract.",
        &workers(|s| s.pending_tokens),
    );
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/stats`: a human-readable summary.
pub fn text_stats(state: &State) -> String {
    let j = json_stats(state);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "proxy {}  up {}s  workers {}  active requests {}",
        j.proxy,
        j.uptime_secs,
        j.workers.len(),
        j.requests.active
    );
    for w in &j.workers {
        let _ = writeln!(
            out,
            "  worker {} {:<16} {}  image {}  models {}  in-flight {}/{}  tokens {}/{}  ttfb {}  success {:.3}",
            w.id,
            w.name,
            w.addr,
            &w.image_hash[..w.image_hash.len().min(16)],
            w.models.join(","),
            w.in_flight,
            w.capacity,
            w.tokens_in_flight,
            w.token_budget,
            w.latency_ema_ms
                .map_or("-".to_string(), |ms| format!("{ms:.2}ms")),
            w.success_rate
        );
    }
    let _ = writeln!(
        out,
        "requests by status {:?}  retries {}  stream errors {}  client stalls {}",
        j.requests.by_status,
        j.requests.retries,
        j.requests.stream_errors,
        j.requests.client_stalls
    );
    let _ = writeln!(
        out,
        "tokens prompt {} cached {} completion {} reasoning {}  charged {} nano",
        j.tokens.prompt, j.tokens.cached, j.tokens.completion, j.tokens.reasoning, j.cost_nano
    );
    for (account, r) in &j.clients {
        let _ = writeln!(
            out,
            "  client {}…  requests {}  tokens {}+{}  cost {} nano",
            &account[..account.len().min(16)],
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.cost_nano
        );
    }
    let _ = writeln!(
        out,
        "client connections {}  request body bytes {}",
        j.client_connections, j.request_body_bytes
    );
    for (model, q) in &j.queues {
        let _ = writeln!(
            out,
            "  queue {model}: {} waiting  mean wait {}",
            q.queued,
            q.wait_ema_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1}ms"))
        );
    }
    if !j.client_refusals.is_empty() {
        let _ = writeln!(out, "client refusals {:?}", j.client_refusals);
    }
    if !j.worker_rejections.is_empty() {
        let _ = writeln!(out, "worker rejections {:?}", j.worker_rejections);
    }
    out
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<ResponseBody> {
    if let Some(resp) = crate::health::respond(state, req.method(), req.uri().path()) {
        return resp;
    }
    let (status, ctype, body) = match req.uri().path() {
        "/stats" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            text_stats(state),
        ),
        "/jsonstats" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&json_stats(state)).unwrap_or_default(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus(state),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found (try /stats, /jsonstats, /metrics, /healthz, /readyz)\n".to_string(),
        ),
    };
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

/// Serves the admin port until `shutdown` fires.
pub(crate) async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    crate::listen::accept_connections(listener, shutdown, "admin", false, move |tcp, _| {
        let state = state.clone();
        async move {
            let service = service_fn(move |req| {
                let resp = respond(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await;
}
