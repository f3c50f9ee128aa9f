//! The HTTP/2 service a worker runs on each attested connection it dialed to a proxy. Roles are
//! reversed: the worker is the TCP/TLS client but the HTTP/2 *server*; the proxy opens request
//! streams.
//!
//! | route | does |
//! |---|---|
//! | `POST /cocoon/v1/hello` | [`protocol::Hello`] → version negotiation → [`protocol::Registration`] |
//! | `GET /cocoon/v1/ping` | liveness: `{"active": n, "capacity": c}` |
//! | `POST /cocoon/v1/cancel` | header `cocoon-request-id`: the running generations of that id on this connection stop and end their streams with the usage so far ("Stopping" below) → `{"stopped": n}`; 404 if none |
//! | `POST /cocoon/v1/payout` | a payout voucher ([`protocol::payout`], [`crate::payout`]) → [`protocol::payout::PayoutAck`]; a proxy that went backwards gets 401 and the connection answers nothing else afterwards |
//! | `POST /v1/chat/completions`, `POST /v1/completions` | inference, always streamed as SSE |
//!
//! # Trust boundary
//!
//! Requests come from a proxy whose attestation passed the worker's policy, but bodies are the
//! client's bytes passed through: headers are checked by [`protocol::RequestMeta::from_headers`],
//! bodies by [`crate::validate`], both here inside the TEE. The number of concurrent
//! generations is bounded by `capacity`: a request beyond it waits up to [`CAPACITY_WAIT`] for a
//! slot, then gets 429 `no_capacity`. A slot given back goes to the waiting proxy connection
//! that holds the fewest (`slots`), so one proxy's burst waits behind its own generations.
//! Prompts and completions are never logged: only request id, model, token counts, durations.
//!
//! # Responses
//!
//! An error before the first byte is an HTTP status with an OpenAI-style error body (a prompt
//! over the model's context: 400 `context_length_exceeded`). Otherwise `text/event-stream`:
//! OpenAI chunks (text, log probabilities, tool-call deltas: see `chunks`), the OpenAI usage
//! chunk if the request asked for it (`stream_options.include_usage`), then always
//! `event: cocoon-usage` and `data: [DONE]`. An engine failure after the first byte ends the
//! stream with `event: cocoon-error`. The choices of a request (`n` per prompt; a completions
//! batch, `prompt` as a list, has several prompts) run one after another on one capacity slot,
//! choice `p·n + j` being run `j` of prompt `p` (with `seed + j`), each within what is left of
//! the request's prompt-token budget (shared evenly by the runs of a prompt still to come, so
//! a prompt that does not fit `n` times is refused before anything runs); the usage is their
//! sum.
//!
//! # Keepalive
//!
//! While the engine produces nothing (prompt processing of a long prompt takes minutes on a
//! CPU) the stream carries an SSE comment, [`protocol::sse::KEEPALIVE`], every
//! [`ServiceOptions::stream_keepalive`] (default [`DEFAULT_STREAM_KEEPALIVE`]) since the
//! last bytes sent, so that the proxy and the client see a healthy request progress instead
//! of timing it out. The first keepalive also starts the response (status 200): an error
//! after it is an `event: cocoon-error` in the stream, not an HTTP status.
//!
//! # Cancellation and shutdown
//!
//! When the proxy resets the stream (its client went away) hyper drops the response body; the
//! task feeding it notices at once, drops the engine's future and its channel, and releases
//! the capacity permit. [`Stats::active_generations`] observes this. The work such a stream
//! cost (the engine's [`Meter`]: prompt tokens counted, completion tokens sampled) is added to
//! [`StatsSnapshot::unbilled_prompt_tokens`] / [`StatsSnapshot::unbilled_completion_tokens`],
//! as for every stream that ends without its usage report: nobody was billed for it. [`Service::end_streams`]
//! (the worker's drain deadline passed) stops every running generation: a stream that has
//! started reports the work done so far (`event: cocoon-usage`, and for an encrypted request a
//! receipt with finish reason `shutdown`), which its proxy bills, then ends with an
//! `event: cocoon-error` of kind `service_unavailable` and no `[DONE]`, so that nobody sees a
//! silent cut; one that has not started gets that error as the HTTP answer (the proxy retries
//! it elsewhere) and its prompt processing stays unbilled.
//!
//! # Stopping
//!
//! A reset leaves the work done so far unbilled (docs/threat-model.md, the abort free-ride).
//! A proxy that wants it billed asks instead: `POST /cocoon/v1/cancel` with the request's id
//! stops the generation as a reset would (the engine's future is dropped), and the stream
//! then ends like a completed one, with the usage the engine's [`Meter`] counted — prompt
//! tokens, and the completion tokens sampled — in `event: cocoon-usage` (and, for an
//! encrypted request, a receipt over it) and `data: [DONE]`; the finish reason in the
//! summary is `cancelled`. Counted in [`StatsSnapshot::stopped`], not as unbilled work. Only
//! the connection that sent a request can stop it.
//!
//! # Stalled consumers
//!
//! A client that stops reading its stream (or opens its HTTP/2 window and never moves it)
//! stalls the proxy's relay, which stops taking data from the worker; the response channel
//! fills and the generation would wait on it, holding its capacity slot, for as long as the
//! client keeps the connection. A send that waits longer than
//! [`ServiceOptions::stream_stall`] (default [`DEFAULT_STREAM_STALL`]) ends the generation
//! instead: the engine is dropped, the slot is free, the stream is abandoned (counted in
//! [`StatsSnapshot::stalled`]). Only a full channel starts that clock, and the worker sees
//! progress in steps: one gathered frame (at most [`protocol::sse::FRAME_TARGET`], 16 KiB)
//! leaves its HTTP/2 stream when the proxy opens its window, and the proxy buffers up to its
//! 256 KiB receive window per stream before that (so, through a proxy, its client must take
//! about half of that, the window-update step, within the limit: ~440 B/s at the default).
//! The stream then ends without usage or `[DONE]`; its consumer was not reading it.

mod chunks;
mod slots;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use protocol::sse::{Event, KEEPALIVE};
use protocol::{
    response, ApiError, Endpoint, ErrorKind, Hello, ModelAdvert, Registration, RequestMeta, Usage,
};
use ratls::Clock;
use tokio::sync::{broadcast, mpsc, watch};

use crate::engine::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Meter, Sampling,
};
use crate::validate::{validate, ValidatedRequest, MAX_BODY_BYTES};
use chunks::ChunkEncoder;

/// Largest accepted hello body.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Chunks buffered between the engine and the response body.
const CHANNEL_DEPTH: usize = 16;
/// Default [`ServiceOptions::stream_keepalive`].
pub const DEFAULT_STREAM_KEEPALIVE: Duration = Duration::from_secs(5);
/// Default [`ServiceOptions::stream_stall`].
pub const DEFAULT_STREAM_STALL: Duration = Duration::from_secs(300);
/// How long a request that finds every capacity slot taken waits for one before 429.
///
/// A proxy frees its own record of a slot the moment it resets a stream (its client left) and
/// may send the next queued request at once, in the same read as the reset; the cancelled
/// generation frees the worker's slot only when its task next runs. Without the wait that
/// request got 429 — which the proxy turned into a 502 for a client that had waited its turn.
/// A worker shared by several proxies is really full when the wait runs out.
pub const CAPACITY_WAIT: Duration = Duration::from_secs(1);

/// How the service streams (from the worker config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// A keepalive comment goes out after this long without other bytes (`None`: never).
    pub stream_keepalive: Option<Duration>,
    /// A generation whose consumer takes nothing for this long is ended and its capacity
    /// slot freed (module docs, "Stalled consumers"; `None`: wait forever).
    pub stream_stall: Option<Duration>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            stream_keepalive: Some(DEFAULT_STREAM_KEEPALIVE),
            stream_stall: Some(DEFAULT_STREAM_STALL),
        }
    }
}

/// The body of every response.
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// A model and the engine serving it.
#[derive(Clone, Debug)]
pub struct ServedModel {
    pub engine: Arc<dyn Engine>,
    /// What registration advertises; `max_completion_tokens` also bounds every request.
    pub advert: ModelAdvert,
}

impl ServedModel {
    /// Every model `engine` reports, as it reports it.
    pub fn all_of(engine: Arc<dyn Engine>) -> Vec<Self> {
        engine
            .models()
            .into_iter()
            .map(|advert| Self {
                engine: engine.clone(),
                advert,
            })
            .collect()
    }
}

/// What registration says about this worker besides its models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    /// Concurrent generations accepted.
    pub capacity: u32,
    /// Price multiplier in thousandths.
    pub price_coefficient_milli: u32,
}

/// Why a service cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no models to serve")]
    NoModels,
    #[error("model {0} is served twice")]
    DuplicateModel(String),
    #[error("invalid registration: {0}")]
    Registration(ApiError),
}

/// A completed registration with a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The connection's label (the proxy address the worker dialed).
    pub proxy: String,
    /// The name the proxy gave in its hello (untrusted, informational).
    pub proxy_name: String,
    /// The negotiated protocol version.
    pub version: u32,
}

/// Counters, readable while the service runs.
#[derive(Debug, Default)]
pub struct Stats {
    active_generations: AtomicU64,
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    stopped: AtomicU64,
    stalled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    no_capacity: AtomicU64,
    registrations: AtomicU64,
    unbilled_prompt_tokens: AtomicU64,
    unbilled_completion_tokens: AtomicU64,
}

/// A copy of [`Stats`] at one moment (the status port's `GET /stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Generations running now (each holds a capacity permit).
    pub active_generations: u64,
    /// Completion requests received.
    pub requests: u64,
    /// Streams that ended with usage and `[DONE]`.
    pub completed: u64,
    /// Streams the proxy dropped before the end.
    pub cancelled: u64,
    /// Streams the proxy stopped ([`protocol::paths::CANCEL`]): ended with their usage so
    /// far (billed).
    pub stopped: u64,
    /// Streams ended because their consumer took nothing for the stall limit.
    pub stalled: u64,
    /// Streams that ended with an engine error.
    pub failed: u64,
    /// Requests refused by validation (before any generation).
    pub rejected: u64,
    /// Requests refused with 429.
    pub no_capacity: u64,
    /// Successful hello exchanges.
    pub registrations: u64,
    /// Prompt tokens processed for streams that ended without a usage report (cancelled,
    /// stalled, failed, ended by shutdown): work no proxy was told of, so nobody paid for it.
    pub unbilled_prompt_tokens: u64,
    /// Completion tokens sampled for such streams.
    pub unbilled_completion_tokens: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StatsSnapshot {
            active_generations: r(&self.active_generations),
            requests: r(&self.requests),
            completed: r(&self.completed),
            cancelled: r(&self.cancelled),
            stopped: r(&self.stopped),
            stalled: r(&self.stalled),
            failed: r(&self.failed),
            rejected: r(&self.rejected),
            no_capacity: r(&self.no_capacity),
            registrations: r(&self.registrations),
            unbilled_prompt_tokens: r(&self.unbilled_prompt_tokens),
            unbilled_completion_tokens: r(&self.unbilled_completion_tokens),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn unbilled(&self, work: &Usage) {
        self.unbilled_prompt_tokens
            .fetch_add(work.prompt_tokens, Ordering::SeqCst);
        self.unbilled_completion_tokens
            .fetch_add(work.completion_tokens, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Inner {
    info: WorkerInfo,
    models: Vec<ServedModel>,
    adverts: Vec<ModelAdvert>,
    /// Generation slots, fair between proxy connections ([`slots`]).
    slots: slots::Slots,
    /// The number the next proxy connection's slots are counted under.
    next_conn: AtomicU64,
    stats: Arc<Stats>,
    clock: Arc<dyn Clock>,
    registered: broadcast::Sender<Registered>,
    /// Proxy connections whose hello was answered and that are still open.
    open_registrations: Arc<AtomicU64>,
    options: ServiceOptions,
    /// Set by [`Service::end_streams`].
    end: watch::Sender<bool>,
    /// Earnings, when `[payout]` is configured ([`Service::attach_payouts`]).
    payouts: std::sync::OnceLock<Arc<crate::payout::Payouts>>,
    /// End-to-end keys ([`Service::attach_e2e`]); without them encrypted requests are refused.
    e2e: std::sync::OnceLock<Arc<crate::e2e::E2eKeys>>,
}

/// The worker's request handler, shared by all proxy connections (capacity is global).
#[derive(Clone, Debug)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// A service for `models` with the default [`ServiceOptions`]; `clock` gives the
    /// `created` time of chunks.
    pub fn new(
        info: WorkerInfo,
        models: Vec<ServedModel>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        Self::with_options(info, models, clock, ServiceOptions::default())
    }

    /// [`Service::new`] with `options`.
    pub fn with_options(
        info: WorkerInfo,
        models: Vec<ServedModel>,
        clock: Arc<dyn Clock>,
        options: ServiceOptions,
    ) -> Result<Self, ServiceError> {
        if models.is_empty() {
            return Err(ServiceError::NoModels);
        }
        for (i, m) in models.iter().enumerate() {
            if models[..i].iter().any(|o| o.advert.name == m.advert.name) {
                return Err(ServiceError::DuplicateModel(m.advert.name.clone()));
            }
        }
        let adverts: Vec<ModelAdvert> = models.iter().map(|m| m.advert.clone()).collect();
        let registration = Registration {
            version: protocol::PROTOCOL_VERSION,
            worker: info.name.clone(),
            models: adverts.clone(),
            capacity: info.capacity,
            price_coefficient_milli: info.price_coefficient_milli,
            payout: None,
        };
        registration
            .validate()
            .map_err(ServiceError::Registration)?;
        let (registered, _) = broadcast::channel(16);
        Ok(Self {
            inner: Arc::new(Inner {
                slots: slots::Slots::new(info.capacity as usize),
                next_conn: AtomicU64::new(1),
                info,
                models,
                adverts,
                stats: Arc::new(Stats::default()),
                clock,
                registered,
                open_registrations: Arc::new(AtomicU64::new(0)),
                options,
                end: watch::channel(false).0,
                payouts: std::sync::OnceLock::new(),
                e2e: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Ends every running stream with a `service_unavailable` error event (the drain
    /// deadline of a shutdown passed); streams started later end the same way at once.
    pub fn end_streams(&self) {
        self.inner.end.send_replace(true);
    }

    /// Turns payouts on: registrations name the payout owner and proxies' vouchers are
    /// accepted. Call before the first connection; a second call is ignored.
    pub fn attach_payouts(&self, payouts: Arc<crate::payout::Payouts>) {
        let _ = self.inner.payouts.set(payouts);
    }

    /// Turns end-to-end encryption on with `keys` (published in this worker's claims). Call
    /// before the first connection; a second call is ignored.
    pub fn attach_e2e(&self, keys: Arc<crate::e2e::E2eKeys>) {
        let _ = self.inner.e2e.set(keys);
    }

    /// The payout state, when payouts are on.
    pub fn payouts(&self) -> Option<&Arc<crate::payout::Payouts>> {
        self.inner.payouts.get()
    }

    /// The models served, as registration advertises them.
    pub fn adverts(&self) -> &[ModelAdvert] {
        &self.inner.adverts
    }

    pub fn info(&self) -> &WorkerInfo {
        &self.inner.info
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.inner.stats.clone()
    }

    /// Completed registrations, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Registered> {
        self.inner.registered.subscribe()
    }

    /// The registration answer for protocol `version`.
    pub fn registration(&self, version: u32) -> Registration {
        Registration {
            version,
            worker: self.inner.info.name.clone(),
            models: self.inner.adverts.clone(),
            capacity: self.inner.info.capacity,
            price_coefficient_milli: self.inner.info.price_coefficient_milli,
            payout: self.inner.payouts.get().map(|p| p.advert()),
        }
    }

    /// Proxy connections (made with [`Service::for_connection`]) on which a hello was
    /// answered and that are still open: the proxies this worker is registered with now. A
    /// proxy that refuses the registration (a model it does not pin) closes the connection,
    /// which takes it out of this count.
    pub fn open_registrations(&self) -> u64 {
        self.inner.open_registrations.load(Ordering::SeqCst)
    }

    /// The hyper service for one proxy connection; `proxy` labels it in logs and
    /// [`Registered`] events. The connection counts in [`Service::open_registrations`] from
    /// its first answered hello until the service (which the connection owns) is dropped.
    pub fn for_connection(&self, proxy: impl Into<String>) -> ConnService {
        ConnService {
            service: self.clone(),
            proxy: Arc::from(proxy.into()),
            stoppers: Arc::new(Stoppers {
                conn: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
                ..Stoppers::default()
            }),
            registration: Arc::new(ConnRegistration {
                open: self.inner.open_registrations.clone(),
                registered: AtomicBool::new(false),
            }),
            refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A payout voucher from the proxy; `refused` is set when the proxy went backwards.
    async fn payout<B>(
        &self,
        req: Request<B>,
        refused: &AtomicBool,
    ) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(payouts) = self.inner.payouts.get() else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "this worker takes no payouts (no [payout] in its config)",
            ));
        };
        let body = read_body(req.into_body(), MAX_HELLO_BYTES).await?;
        let voucher: protocol::payout::PayoutVoucher = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("payout: {e}")))?;
        match payouts.receive(&voucher).await {
            Ok(ack) => {
                let bytes = serde_json::to_vec(&ack)
                    .map_err(|e| ApiError::new(ErrorKind::Internal, format!("payout: {e}")))?;
                Ok(json_response(StatusCode::OK, bytes))
            }
            Err(e) => {
                if matches!(e, crate::payout::PayoutError::Backwards { .. }) {
                    refused.store(true, Ordering::SeqCst);
                    tracing::error!(error = %e, "refusing this proxy connection");
                } else {
                    tracing::warn!(error = %e, "payout voucher refused");
                }
                Err(e.api())
            }
        }
    }

    /// Handles one request from the proxy labelled `proxy` (outside a connection: its
    /// generations cannot be stopped with [`protocol::paths::CANCEL`]).
    pub async fn handle<B>(&self, proxy: &str, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.handle_on(proxy, req, None).await
    }

    /// [`Self::handle`] on a connection whose generations register in `stoppers`.
    async fn handle_on<B>(
        &self,
        proxy: &str,
        req: Request<B>,
        stoppers: Option<&Arc<Stoppers>>,
    ) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let endpoint = Endpoint::from_path(&path);
        let result = match (req.method().clone(), path.as_str(), endpoint) {
            (Method::POST, protocol::paths::HELLO, _) => self.hello(proxy, req).await,
            (Method::GET, protocol::paths::PING, _) => Ok(self.ping()),
            (Method::POST, _, Some(endpoint)) => self.completion(endpoint, req, stoppers).await,
            (m, p, endpoint) => {
                let known = [protocol::paths::HELLO, protocol::paths::PING].contains(&p)
                    || endpoint.is_some();
                let message = if known {
                    format!("method {m} not allowed on {p}")
                } else {
                    "no such path on a worker".to_string()
                };
                Err(ApiError::new(ErrorKind::NotFound, message))
            }
        };
        result.unwrap_or_else(|e| error_response(&e))
    }

    fn ping(&self) -> Response<ResponseBody> {
        let s = self.inner.stats.snapshot();
        let body = serde_json::json!({
            "active": s.active_generations,
            "capacity": self.inner.info.capacity,
        });
        json_response(StatusCode::OK, body.to_string().into_bytes())
    }

    async fn hello<B>(
        &self,
        proxy: &str,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = read_body(req.into_body(), MAX_HELLO_BYTES).await?;
        let hello: Hello = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("hello: {e}")))?;
        let version = protocol::register::negotiate(protocol::SUPPORTED_VERSIONS, &hello.versions)?;
        let registration = self.registration(version);
        let bytes = serde_json::to_vec(&registration)
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("registration: {e}")))?;
        let proxy_name: String = hello.proxy.chars().take(64).collect();
        tracing::info!(proxy, proxy_name = ?proxy_name, version, "registered with proxy");
        Stats::bump(&self.inner.stats.registrations);
        // Nobody listening is fine.
        let _ = self.inner.registered.send(Registered {
            proxy: proxy.to_string(),
            proxy_name,
            version,
        });
        Ok(json_response(StatusCode::OK, bytes))
    }

    async fn completion<B>(
        &self,
        endpoint: Endpoint,
        req: Request<B>,
        stoppers: Option<&Arc<Stoppers>>,
    ) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stats = &self.inner.stats;
        Stats::bump(&stats.requests);
        let started = Instant::now();
        if protocol::e2e::is_encrypted(req.headers()) {
            return self.encrypted(endpoint, req, started, stoppers).await;
        }
        let checked = async {
            let meta = RequestMeta::from_headers(req.headers())?;
            let prompt_budget = protocol::meta::max_prompt_tokens(req.headers())?;
            let tag = protocol::meta::stream_tag(req.headers())?;
            let body = read_body(req.into_body(), MAX_BODY_BYTES).await?;
            let mut validated = validate(endpoint, &meta, &body, &self.inner.adverts)?;
            validated.request.max_prompt_tokens = prompt_budget.map(u64::from);
            Ok::<_, ApiError>((meta, tag, validated))
        }
        .await;
        let (meta, tag, validated) = checked.inspect_err(|e| {
            Stats::bump(&stats.rejected);
            tracing::debug!(code = e.kind.code(), param = ?e.param, "request rejected");
        })?;
        let (mut first, mut rx) = self
            .start(&meta, validated, started, stoppers.map(|s| (s, tag)))
            .await?;
        // A generation stopped before its first byte starts with its summary (used only by
        // encrypted responses).
        while let Out::Summary(..) = first {
            first = rx.recv().await.unwrap_or_else(|| {
                Out::Fail(ApiError::new(
                    ErrorKind::Internal,
                    "generation ended without output",
                ))
            });
        }
        match first {
            Out::Data(first) => {
                let body = SseBody::new(first, rx);
                let mut resp = Response::new(BodyExt::boxed(body));
                response::event_stream_headers(resp.headers_mut(), Some(&meta.request_id));
                Ok(resp)
            }
            Out::Fail(e) => Err(e),
            Out::Summary(..) => Err(ApiError::new(
                ErrorKind::Internal,
                "generation ended without output",
            )),
        }
    }

    /// An encrypted request ([`crate::e2e`]): refusals before the envelope opens are plain
    /// HTTP errors naming nothing of the body; everything after goes inside the sealed stream.
    async fn encrypted<B>(
        &self,
        endpoint: Endpoint,
        req: Request<B>,
        started: Instant,
        stoppers: Option<&Arc<Stoppers>>,
    ) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stats = &self.inner.stats;
        let opened = async {
            let keys = self.inner.e2e.get().cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    "this worker does not accept encrypted requests",
                )
            })?;
            let mut meta = RequestMeta::from_headers(req.headers())?;
            let prompt_budget = protocol::meta::max_prompt_tokens(req.headers())?;
            let budget = protocol::e2e::budget_tokens(req.headers())?;
            let tag = protocol::meta::stream_tag(req.headers())?;
            let binding = protocol::e2e::binding_from_headers(endpoint, &meta, req.headers())?;
            let advert = self
                .inner
                .adverts
                .iter()
                .find(|a| a.name == meta.model)
                .cloned()
                .ok_or_else(|| ApiError::new(ErrorKind::ModelNotFound, "model not served"))?;
            let envelope = read_body(req.into_body(), protocol::e2e::MAX_ENVELOPE).await?;
            let (opened, keys) = keys.open(&binding, &envelope, self.inner.clock.now())?;
            // The proxy's budget narrows the client's bound limit; validation clamps further
            // to the model's limit.
            if let Some(b) = budget {
                meta.max_tokens = meta.max_tokens.min(b.max(1));
            }
            Ok::<_, ApiError>((keys, meta, prompt_budget, tag, advert, opened))
        }
        .await;
        let (keys, meta, prompt_budget, tag, advert, opened) = opened.inspect_err(|e| {
            Stats::bump(&stats.rejected);
            tracing::debug!(code = e.kind.code(), "encrypted request refused");
        })?;
        let sealing = crate::e2e::Sealing {
            keys,
            sealer: opened.response.sealer(),
            request_id: meta.request_id.to_string(),
            request_hash: opened.request_hash,
            model: advert.name.clone(),
            model_digest: advert.model_hash.clone(),
            price_coefficient_milli: self.inner.info.price_coefficient_milli,
            clock: self.inner.clock.clone(),
        };
        let started = match validate(endpoint, &meta, &opened.body, &self.inner.adverts) {
            Ok(mut validated) => {
                validated.request.max_prompt_tokens = prompt_budget.map(u64::from);
                match self
                    .start(&meta, validated, started, stoppers.map(|s| (s, tag)))
                    .await
                {
                    Ok((first, rx)) => (first, Some(rx)),
                    // Capacity says nothing about the body: a plain 429 the proxy may retry.
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                Stats::bump(&stats.rejected);
                tracing::debug!(code = e.kind.code(), "encrypted request rejected");
                (Out::Fail(e), None)
            }
        };
        let body = crate::e2e::E2eBody::new(started.0, started.1, sealing);
        let mut resp = Response::new(BodyExt::boxed(body));
        response::event_stream_headers(resp.headers_mut(), Some(&meta.request_id));
        Ok(resp)
    }

    /// Takes a capacity permit and starts the generation; returns its first output (which
    /// decides the response status) and the channel of the rest.
    async fn start(
        &self,
        meta: &RequestMeta,
        validated: ValidatedRequest,
        started: Instant,
        stoppers: Option<(&Arc<Stoppers>, Option<u64>)>,
    ) -> Result<(Out, mpsc::Receiver<Out>), ApiError> {
        let stats = &self.inner.stats;
        let model = self
            .inner
            .models
            .iter()
            .find(|m| m.advert.name == validated.request.model)
            .ok_or_else(|| ApiError::new(ErrorKind::ModelNotFound, "model not served"))?;
        // A free slot is taken at once (no timer on the common path); a slot given back goes
        // to the connection holding the fewest.
        let owner = stoppers.map_or(0, |(s, _)| s.conn);
        let Some(permit) = self.inner.slots.take(owner, CAPACITY_WAIT).await else {
            Stats::bump(&stats.no_capacity);
            tracing::info!(request_id = %meta.request_id, model = %meta.model, "no capacity");
            return Err(ApiError::new(
                ErrorKind::NoCapacity,
                format!(
                    "worker at capacity ({} concurrent requests, none freed within {} ms)",
                    self.inner.info.capacity,
                    CAPACITY_WAIT.as_millis()
                ),
            ));
        };
        let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
        let tx = Sink {
            tx,
            stall: self.inner.options.stream_stall,
        };
        let generation = Generation {
            engine: model.engine.clone(),
            stats: stats.clone(),
            created: self.inner.clock.now(),
            started,
            request_id: meta.request_id.to_string(),
            validated,
            keepalive: self.inner.options.stream_keepalive,
            end: self.inner.end.subscribe(),
            stop: stoppers.map(|(s, tag)| s.register(meta.request_id.as_str(), tag)),
            _permit: permit,
        };
        tokio::spawn(generation.run(tx));
        // Wait for the first output so that a failure before any byte gets its own status.
        let first = rx.recv().await.unwrap_or_else(|| {
            Out::Fail(ApiError::new(
                ErrorKind::Internal,
                "generation ended without output",
            ))
        });
        Ok((first, rx))
    }
}

/// The running generations of one proxy connection by request id ([`protocol::paths::CANCEL`]).
#[derive(Debug, Default)]
struct Stoppers {
    /// The connection's number, under which its generations hold slots.
    conn: slots::Owner,
    next: AtomicU64,
    running: std::sync::Mutex<Running>,
}

/// Stop signals by request id (several generations may share an id), each with its own id
/// and the proxy's stream tag, if it sent one ([`protocol::meta::H_STREAM_TAG`]).
type Running = std::collections::HashMap<String, Vec<(u64, Option<u64>, watch::Sender<bool>)>>;

impl Stoppers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a generation of `request_id` (sent with `tag`) until the returned handle is
    /// dropped.
    fn register(self: &Arc<Self>, request_id: &str, tag: Option<u64>) -> Stopper {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        self.lock()
            .entry(request_id.to_string())
            .or_default()
            .push((id, tag, tx));
        Stopper {
            stoppers: self.clone(),
            id,
            request_id: request_id.to_string(),
            rx,
        }
    }

    /// Tells the generations of `request_id` to stop — with `tag`, only the one sent with
    /// that tag; how many there were.
    fn stop(&self, request_id: &str, tag: Option<u64>) -> usize {
        self.lock().get(request_id).map_or(0, |gens| {
            let mut n = 0;
            for (_, t, tx) in gens {
                if tag.is_none() || *t == tag {
                    tx.send_replace(true);
                    n += 1;
                }
            }
            n
        })
    }
}

/// A generation's registration in [`Stoppers`]: its stop signal; removed on drop.
#[derive(Debug)]
struct Stopper {
    stoppers: Arc<Stoppers>,
    id: u64,
    request_id: String,
    rx: watch::Receiver<bool>,
}

impl Stopper {
    /// Resolves once the generation was asked to stop.
    async fn requested(this: &mut Option<Self>) {
        match this {
            Some(s) => {
                if s.rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let mut running = self.stoppers.lock();
        if let Some(gens) = running.get_mut(&self.request_id) {
            gens.retain(|(id, _, _)| *id != self.id);
            if gens.is_empty() {
                running.remove(&self.request_id);
            }
        }
    }
}

/// The per-connection hyper service (see [`Service::for_connection`]).
#[derive(Clone, Debug)]
pub struct ConnService {
    service: Service,
    proxy: Arc<str>,
    /// This connection's running generations ([`protocol::paths::CANCEL`]).
    stoppers: Arc<Stoppers>,
    registration: Arc<ConnRegistration>,
    /// The proxy on this connection signed a lower payout count than seen before: every
    /// further request is refused.
    refused: Arc<AtomicBool>,
}

/// Whether one connection's hello was answered; counted in the service's open registrations
/// until dropped (with the connection's last [`ConnService`]).
#[derive(Debug)]
struct ConnRegistration {
    open: Arc<AtomicU64>,
    registered: AtomicBool,
}

impl ConnRegistration {
    fn registered(&self) {
        if !self.registered.swap(true, Ordering::SeqCst) {
            self.open.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ConnRegistration {
    fn drop(&mut self) {
        if *self.registered.get_mut() {
            self.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        let hello = req.method() == Method::POST && req.uri().path() == protocol::paths::HELLO;
        let payout = req.method() == Method::POST && req.uri().path() == protocol::paths::PAYOUT;
        Box::pin(async move {
            if this.refused.load(Ordering::SeqCst) {
                let e = ApiError::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "{}: this worker refuses the proxy on this connection",
                        protocol::payout::PROXY_WENT_BACKWARDS
                    ),
                );
                return Ok(error_response(&e));
            }
            if payout {
                let resp = this
                    .service
                    .payout(req, &this.refused)
                    .await
                    .unwrap_or_else(|e| error_response(&e));
                return Ok(resp);
            }
            if req.uri().path() == protocol::paths::CANCEL {
                return Ok(cancel(&this.stoppers, &req));
            }
            let resp = this
                .service
                .handle_on(&this.proxy, req, Some(&this.stoppers))
                .await;
            if hello && resp.status() == StatusCode::OK {
                this.registration.registered();
            }
            Ok(resp)
        })
    }
}

/// `POST /cocoon/v1/cancel` on a connection with `stoppers`.
fn cancel<B>(stoppers: &Stoppers, req: &Request<B>) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        return error_response(&ApiError::new(
            ErrorKind::NotFound,
            format!(
                "method {} not allowed on {}",
                req.method(),
                protocol::paths::CANCEL
            ),
        ));
    }
    let id = match protocol::meta::request_id(req.headers()) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    let tag = match protocol::meta::stream_tag(req.headers()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    match stoppers.stop(id.as_str(), tag) {
        0 => error_response(&ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no generation of request {} runs on this connection",
                id.as_str()
            ),
        )),
        n => json_response(
            StatusCode::OK,
            serde_json::json!({ "stopped": n }).to_string().into_bytes(),
        ),
    }
}

/// What the generation task hands to the response.
pub(crate) enum Out {
    /// Encoded SSE bytes.
    Data(Bytes),
    /// A failure before any byte (only ever the first message).
    Fail(ApiError),
    /// The request completed: total usage and the finish reason(s) (comma-separated for a
    /// batch), sent just before the final bytes; only an encrypted response uses it (for the
    /// receipt).
    Summary(Usage, String),
}

/// The response body of a stream: the first bytes, then whatever the generation task sends,
/// what is already queued gathered into one frame ([`protocol::sse::gather`]). Dropping it closes the
/// channel, which stops the generation.
struct SseBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Out>,
    /// The channel ended (closed or failed) while a frame was being gathered.
    done: bool,
}

impl SseBody {
    fn new(first: Bytes, rx: mpsc::Receiver<Out>) -> Self {
        Self {
            first: Some(first),
            rx,
            done: false,
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let first = match this.first.take() {
            Some(b) => b,
            None if this.done => return Poll::Ready(None),
            None => loop {
                match this.rx.poll_recv(cx) {
                    Poll::Ready(Some(Out::Data(b))) => break b,
                    Poll::Ready(Some(Out::Summary(..))) => continue,
                    Poll::Ready(Some(Out::Fail(_)) | None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            },
        };
        let (rx, done) = (&mut this.rx, &mut this.done);
        let data = protocol::sse::gather(first, || loop {
            if *done {
                return None;
            }
            match rx.try_recv() {
                Ok(Out::Data(b)) => return Some(b),
                Ok(Out::Summary(..)) => continue,
                Ok(Out::Fail(_)) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    *done = true;
                    return None;
                }
                Err(mpsc::error::TryRecvError::Empty) => return None,
            }
        });
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

/// Counts a running generation for as long as it lives.
struct ActiveGuard(Arc<Stats>);

impl ActiveGuard {
    fn new(stats: Arc<Stats>) -> Self {
        stats.active_generations.fetch_add(1, Ordering::SeqCst);
        Self(stats)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_generations.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a generation ended.
enum Outcome {
    Completed(protocol::Usage),
    Cancelled,
    /// The consumer took nothing for the stall limit.
    Stalled,
    Failed(EngineError),
    /// [`Service::end_streams`].
    Ended,
}

/// One running generation: drives the engine and encodes its output.
struct Generation {
    engine: Arc<dyn Engine>,
    stats: Arc<Stats>,
    created: u64,
    started: Instant,
    request_id: String,
    validated: ValidatedRequest,
    /// See [`ServiceOptions::stream_keepalive`].
    keepalive: Option<Duration>,
    /// [`Service::end_streams`] was called.
    end: watch::Receiver<bool>,
    /// The proxy may stop it ([`protocol::paths::CANCEL`]).
    stop: Option<Stopper>,
    /// Held until the generation ends.
    _permit: slots::Slot,
}

/// The keepalive timer of a stream: it fires `interval` after the last bytes sent. Armed
/// once and moved on only when it fires early, so a fast stream costs one clock read per
/// chunk, not a timer update.
struct Keepalive {
    interval: Duration,
    last_sent: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Keepalive {
    /// `None` when `interval` is `None` (keepalives off).
    fn new(interval: Option<Duration>) -> Option<Self> {
        let interval = interval?;
        let now = Instant::now();
        Some(Self {
            interval,
            last_sent: now,
            timer: Box::pin(tokio::time::sleep_until((now + interval).into())),
        })
    }

    fn sent(&mut self) {
        self.last_sent = Instant::now();
    }

    /// Resolves when a keepalive is due (never when they are off).
    async fn due(this: &mut Option<Self>) {
        let Some(this) = this else {
            return std::future::pending().await;
        };
        this.wait().await;
    }

    async fn wait(&mut self) {
        loop {
            self.timer.as_mut().await;
            let deadline = self.last_sent + self.interval;
            if Instant::now() >= deadline {
                self.timer
                    .as_mut()
                    .reset((Instant::now() + self.interval).into());
                return;
            }
            self.timer.as_mut().reset(deadline.into());
        }
    }
}

impl Generation {
    async fn run(self, out: Sink) {
        let _active = ActiveGuard::new(self.stats.clone());
        let ValidatedRequest {
            endpoint,
            mut request,
            more_prompts,
            n,
            include_usage,
            ..
        } = self.validated;
        let model = request.model.clone();
        let mut encoder = ChunkEncoder::new(endpoint, &self.request_id, self.created, &model);
        // The choices run one after another: each prompt of a completions batch `n` times, as
        // choices 0, 1, …, within the prompt-token budget of the whole request.
        let prompt_budget = request.max_prompt_tokens;
        let first = std::mem::replace(&mut request.input, Input::Prompt(String::new()));
        let prompts: Vec<Input> = std::iter::once(first)
            .chain(more_prompts.into_iter().map(Input::Prompt))
            .collect();
        let n = u64::from(n.max(1));
        let choices = prompts.len() * n as usize;
        let mut progress = Progress {
            started: self.started,
            sent_any: false,
            first_token_ms: None,
            keepalive: Keepalive::new(self.keepalive),
            end: self.end,
            stop: self.stop,
        };
        let mut stopped = false;
        let mut total = Usage::default();
        let mut reasons: Vec<&'static str> = Vec::new();
        let mut outcome = Outcome::Completed(total);
        // The meter of the choice being generated (its work is not in `total` yet).
        let mut running: Option<Meter> = None;
        for index in 0..choices {
            // Run `j` of its prompt: the runs left, this one included, share what is left of
            // the budget, so a prompt that cannot be processed `n` times is refused up front.
            let j = index as u64 % n;
            let runs_left = n - j;
            let left = prompt_budget.map(|b| b.saturating_sub(total.prompt_tokens));
            let req = GenerationRequest {
                model: request.model.clone(),
                input: prompts[index / n as usize].clone(),
                sampling: Sampling {
                    seed: request.sampling.seed.map(|s| s.wrapping_add(j)),
                    ..request.sampling.clone()
                },
                tools: request.tools.clone(),
                tool_choice: request.tool_choice.clone(),
                response_format: request.response_format.clone(),
                max_prompt_tokens: left.map(|l| l / runs_left),
                meter: Default::default(),
            };
            running = Some(req.meter.clone());
            let mut step = drive(&self.engine, req, index, &mut encoder, &out, &mut progress).await;
            if let Step::Failed(EngineError::PromptOverBudget { tokens, .. }) = step {
                if runs_left > 1 {
                    step = Step::Failed(EngineError::ChoicesOverBudget {
                        choices: runs_left,
                        tokens,
                        budget: left.unwrap_or(0),
                    });
                }
            }
            match step {
                Step::Done(usage, reason) => {
                    running = None;
                    total.add(&usage);
                    reasons.push(reason.as_str());
                    let end = encoder.end_choice(index, reason);
                    if let Err(gone) = out.send(Out::Data(end)).await {
                        outcome = gone.outcome();
                        break;
                    }
                    progress.sent_any = true;
                }
                Step::Cancelled => {
                    outcome = Outcome::Cancelled;
                    break;
                }
                Step::Stopped => {
                    // Billed like a completion: the work done so far.
                    if let Some(m) = running.take() {
                        total.add(&m.usage());
                    }
                    reasons.push("cancelled");
                    stopped = true;
                    break;
                }
                Step::Stalled => {
                    outcome = Outcome::Stalled;
                    break;
                }
                Step::Failed(e) => {
                    outcome = Outcome::Failed(e);
                    break;
                }
                Step::Ended => {
                    outcome = Outcome::Ended;
                    break;
                }
            }
        }
        if let Outcome::Completed(_) = outcome {
            let tail = encoder.tail(&total, include_usage);
            outcome = match out.report(total, &reasons, tail).await {
                Ok(()) => Outcome::Completed(total),
                Err(gone) => gone.outcome(),
            };
        }
        // At the drain deadline a stream that has started reports the work done so far, which
        // its proxy bills, before the error event that ends it.
        let mut reported_at_end = false;
        if matches!(outcome, Outcome::Ended) && progress.sent_any {
            if let Some(m) = running.take() {
                total.add(&m.usage());
            }
            reasons.push("shutdown");
            let usage = Bytes::from(encoder.usage_report(&total, include_usage));
            reported_at_end = out.report(total, &reasons, usage).await.is_ok();
        }
        let Progress {
            sent_any,
            first_token_ms,
            ..
        } = progress;
        let duration_ms = self.started.elapsed().as_millis();
        let rid = &self.request_id;
        // The work of a generation that ends without its usage report (nobody is billed).
        let mut done = total;
        if let Some(m) = &running {
            done.add(&m.usage());
        }
        if !matches!(outcome, Outcome::Completed(_)) && !reported_at_end {
            self.stats.unbilled(&done);
        }
        match outcome {
            Outcome::Completed(usage) if stopped => {
                Stats::bump(&self.stats.stopped);
                tracing::info!(
                    request_id = %rid,
                    model = %model,
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    duration_ms,
                    "completion stopped by the proxy; its usage so far reported"
                );
            }
            Outcome::Completed(usage) => {
                Stats::bump(&self.stats.completed);
                tracing::info!(
                    request_id = %rid,
                    model = %model,
                    prompt_tokens = usage.prompt_tokens,
                    cached_tokens = usage.cached_tokens,
                    completion_tokens = usage.completion_tokens,
                    first_token_ms,
                    duration_ms,
                    "completion done"
                );
            }
            Outcome::Cancelled => {
                Stats::bump(&self.stats.cancelled);
                tracing::info!(
                    request_id = %rid,
                    model = %model,
                    duration_ms,
                    prompt_tokens = done.prompt_tokens,
                    completion_tokens = done.completion_tokens,
                    "completion cancelled by the proxy"
                );
            }
            Outcome::Stalled => {
                Stats::bump(&self.stats.stalled);
                tracing::warn!(
                    request_id = %rid,
                    model = %model,
                    duration_ms,
                    stall_ms = out.stall.map_or(0, |d| d.as_millis()),
                    "completion ended: its consumer took nothing for the stall limit (slot freed)"
                );
            }
            Outcome::Ended => {
                Stats::bump(&self.stats.failed);
                let what = if reported_at_end {
                    "completion ended by shutdown; its usage so far reported"
                } else {
                    "completion ended by shutdown"
                };
                tracing::info!(
                    request_id = %rid,
                    model = %model,
                    prompt_tokens = done.prompt_tokens,
                    completion_tokens = done.completion_tokens,
                    duration_ms,
                    "{what}"
                );
                let api = ApiError::new(
                    ErrorKind::Unavailable,
                    "the worker is shutting down: the stream was ended at its drain deadline",
                );
                let msg = if sent_any {
                    Out::Data(Bytes::from(Event::error(&api).encode()))
                } else {
                    Out::Fail(api)
                };
                let _ = out.send(msg).await;
            }
            Outcome::Failed(e) => {
                Stats::bump(&self.stats.failed);
                let api = engine_error(&e, endpoint);
                tracing::warn!(request_id = %rid, model = %model, duration_ms, error = %e, "completion failed");
                let msg = if sent_any {
                    Out::Data(Bytes::from(Event::error(&api).encode()))
                } else {
                    Out::Fail(api)
                };
                let _ = out.send(msg).await;
            }
        }
    }
}

/// What a response has sent so far (for the first-byte decision and the log).
struct Progress {
    started: Instant,
    sent_any: bool,
    first_token_ms: Option<u128>,
    /// The stream's keepalive timer.
    keepalive: Option<Keepalive>,
    /// [`Service::end_streams`] was called.
    end: watch::Receiver<bool>,
    /// The proxy may stop the generation ([`protocol::paths::CANCEL`]).
    stop: Option<Stopper>,
}

/// How one engine run (one choice) ended.
enum Step {
    Done(Usage, FinishReason),
    Cancelled,
    /// The proxy asked to stop it ([`protocol::paths::CANCEL`]).
    Stopped,
    Stalled,
    Failed(EngineError),
    /// [`Service::end_streams`].
    Ended,
}

/// The generation's end of its response channel: a send that waits longer than `stall` for
/// room (the consumer took nothing) fails as [`Gone::Stalled`] (module docs).
struct Sink {
    tx: mpsc::Sender<Out>,
    stall: Option<Duration>,
}

/// Why a [`Sink::send`] failed.
enum Gone {
    /// The response body was dropped (the proxy reset the stream).
    Closed,
    Stalled,
}

impl Gone {
    fn outcome(self) -> Outcome {
        match self {
            Self::Closed => Outcome::Cancelled,
            Self::Stalled => Outcome::Stalled,
        }
    }

    fn step(self) -> Step {
        match self {
            Self::Closed => Step::Cancelled,
            Self::Stalled => Step::Stalled,
        }
    }
}

impl Sink {
    /// Sends the stream's summary (`usage`, the finish `reasons`: an encrypted stream's
    /// receipt) and then `data`, the usage report of its end.
    async fn report(&self, usage: Usage, reasons: &[&str], data: Bytes) -> Result<(), Gone> {
        self.send(Out::Summary(usage, reasons.join(","))).await?;
        self.send(Out::Data(data)).await
    }

    /// Sends `out`; the stall clock runs only while the channel is full.
    async fn send(&self, out: Out) -> Result<(), Gone> {
        let out = match self.tx.try_send(out) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Gone::Closed),
            Err(mpsc::error::TrySendError::Full(out)) => out,
        };
        match self.stall {
            None => self.tx.send(out).await.map_err(|_| Gone::Closed),
            Some(limit) => match tokio::time::timeout(limit, self.tx.send(out)).await {
                Ok(r) => r.map_err(|_| Gone::Closed),
                Err(_) => Err(Gone::Stalled),
            },
        }
    }

    /// Resolves when the response body was dropped.
    async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Runs `req` on `engine` as choice `index`, sending its encoded chunks to `out`. The
/// engine's future and channel are dropped on return, which stops it.
async fn drive(
    engine: &Arc<dyn Engine>,
    req: GenerationRequest,
    index: usize,
    encoder: &mut ChunkEncoder,
    out: &Sink,
    progress: &mut Progress,
) -> Step {
    let chat = matches!(req.input, Input::Chat(_));
    let (etx, mut erx) = mpsc::channel(CHANNEL_DEPTH);
    // Already boxed by async_trait: movable, and dropped on return.
    let mut generate = engine.generate(req, etx);
    let mut engine_result: Option<Result<(), EngineError>> = None;
    loop {
        let item = tokio::select! {
            biased;
            _ = out.closed() => return Step::Cancelled,
            true = ended(&mut progress.end) => return Step::Ended,
            () = Stopper::requested(&mut progress.stop) => return Step::Stopped,
            r = &mut generate, if engine_result.is_none() => {
                engine_result = Some(r);
                continue;
            }
            item = erx.recv() => item,
            () = Keepalive::due(&mut progress.keepalive) => {
                if let Err(gone) = out.send(Out::Data(Bytes::from_static(KEEPALIVE))).await {
                    return gone.step();
                }
                progress.sent_any = true;
                continue;
            }
        };
        let started = progress.started;
        let mut first_token = || {
            progress
                .first_token_ms
                .get_or_insert_with(|| started.elapsed().as_millis());
        };
        let bytes =
            match item {
                Some(Ok(Chunk::Text(t))) if t.is_empty() => continue,
                Some(Ok(Chunk::Text(t))) => {
                    first_token();
                    encoder.text(index, &t)
                }
                Some(Ok(Chunk::Tokens { text, logprobs }))
                    if text.is_empty() && logprobs.is_empty() =>
                {
                    continue
                }
                Some(Ok(Chunk::Tokens { text, logprobs })) => {
                    first_token();
                    encoder.tokens(index, &text, &logprobs)
                }
                Some(Ok(Chunk::ToolCalls(_))) if !chat => {
                    return Step::Failed(EngineError::Failed(
                        "engine made tool calls for a completions request".into(),
                    ));
                }
                Some(Ok(Chunk::ToolCalls(calls))) if calls.is_empty() => continue,
                Some(Ok(Chunk::ToolCalls(calls))) => {
                    first_token();
                    encoder.tool_calls(index, &calls)
                }
                Some(Ok(Chunk::Done {
                    usage,
                    finish_reason,
                })) => return Step::Done(usage, finish_reason),
                Some(Err(e)) => return Step::Failed(e),
                None => {
                    // The engine dropped its sender: it has returned.
                    let r = match engine_result.take() {
                        Some(r) => r,
                        None => (&mut generate).await,
                    };
                    return Step::Failed(r.err().unwrap_or_else(|| {
                        EngineError::Failed("engine ended without usage".into())
                    }));
                }
            };
        if let Err(gone) = out.send(Out::Data(bytes)).await {
            return gone.step();
        }
        if let Some(k) = progress.keepalive.as_mut() {
            k.sent();
        }
        progress.sent_any = true;
    }
}

/// Resolves `true` once [`Service::end_streams`] was called (`false` if the service is gone).
async fn ended(end: &mut watch::Receiver<bool>) -> bool {
    end.wait_for(|e| *e).await.is_ok()
}

/// The error a caller sees for an engine failure.
fn engine_error(e: &EngineError, endpoint: Endpoint) -> ApiError {
    match e {
        EngineError::UnknownModel(_) => {
            ApiError::new(ErrorKind::ModelNotFound, e.to_string()).with_param("model")
        }
        EngineError::PromptOverBudget { .. } => {
            let param = match endpoint {
                Endpoint::ChatCompletions => "messages",
                Endpoint::Completions => "prompt",
            };
            ApiError::new(ErrorKind::PayloadTooLarge, e.to_string()).with_param(param)
        }
        EngineError::ChoicesOverBudget { .. } => {
            ApiError::new(ErrorKind::PayloadTooLarge, e.to_string()).with_param("n")
        }
        EngineError::PromptTooLong { .. } => {
            let param = match endpoint {
                Endpoint::ChatCompletions => "messages",
                Endpoint::Completions => "prompt",
            };
            ApiError::new(ErrorKind::ContextLengthExceeded, e.to_string()).with_param(param)
        }
        EngineError::Unsupported(_) => ApiError::new(ErrorKind::InvalidRequest, e.to_string()),
        EngineError::Failed(_) | EngineError::Upstream(_) => {
            ApiError::new(ErrorKind::Upstream, e.to_string())
        }
    }
}

/// Reads a body of at most `limit` bytes (413 beyond).
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("reading the request body: {e}"),
        )),
    }
}

fn full(body: Vec<u8>) -> ResponseBody {
    BodyExt::boxed(Full::new(Bytes::from(body)))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    response::json(status, full(body))
}

fn error_response(e: &ApiError) -> Response<ResponseBody> {
    response::error(e).map(full)
}
