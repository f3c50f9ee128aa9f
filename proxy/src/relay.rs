//! The request path: route on metadata, reserve funds, get a worker slot (at once or through
//! the model's queue, [`crate::queue`]), forward the untouched body, retry once before the
//! first response byte, relay the SSE stream and bill the usage it ends with.
//!
//! Before the body is read, [`crate::admission::admit`] checks that the account can pay for the
//! request; the body is then read into memory (bounded by [`crate::config::MAX_BODY_BYTES`],
//! a deadline and a global byte budget, see [`crate::limits`]) only so it can be replayed on
//! a retry; it is never parsed or logged. The response stream is cut into whole events by
//! [`protocol::sse::Splitter`] — which recognises the `cocoon-usage` and `cocoon-error` events
//! without decoding the others — and relayed byte for byte as each event completes (comment
//! lines included); partial events are held back, so an error event the proxy appends always
//! starts on an event boundary.
//!
//! # Clients that leave
//!
//! A client that leaves after the worker started on its request is billed for the work done:
//! the attempt and, once the relay is dropped, the worker's stream outlive the client's
//! request; the proxy stops the generation with a cancel and bills the usage it ends with
//! ([`settle`]). A client may also cancel its own request ([`cancel`]) and read it to its end.
//!
//! # Time limits
//!
//! A worker may be silent for at most `worker_idle_timeout_secs` ([`ProxyConfig::worker_idle_timeout`]):
//! before its response headers (then the attempt counts as failed and is retried on another
//! worker) and between any two reads of its stream (then the stream ends with a `timeout`
//! error event and the worker's stream is reset, which stops its generation). There is no
//! limit on a stream's total length. While a worker processes a long prompt it sends SSE
//! comments (`: keepalive`, see `cocoon-worker`'s service), which count as progress; the
//! relay passes them on as received, so the client's own idle timer is reset too.
//!
//! # Shutdown
//!
//! While the proxy drains ([`crate::state::Shutdown`]) streams continue; at the end of
//! `shutdown_drain_secs` the proxy asks the worker of every stream still running to stop its
//! generation and relays the end of the stream for at most [`STOP_AT_CUT`] — the usage of the
//! work done, which is billed (sealed: the receipt) — then a `service_unavailable` error
//! event in place of `[DONE]`, then the end of the body: never a silent cut, and no work given
//! away. A stream whose worker does not stop in time ends with the error event unbilled. A
//! request still waiting for its worker's response head is stopped the same way (its stream
//! then starts with the usage of the prompt); if no head comes within [`STOP_AT_CUT`], its
//! client gets 503 ([`settle`]).
//!
//! [`ProxyConfig::worker_idle_timeout`]: crate::config::ProxyConfig::worker_idle_timeout

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use protocol::meta::{names, H_REQUEST_ID, H_STREAM_TAG};
use protocol::sse::split::Kind;
use protocol::sse::{Event, Splitter};
use protocol::{response, ApiError, Endpoint, ErrorKind, RequestMeta, Usage};
use tokio::time::Sleep;

use crate::admission;
use crate::funds::{ledger_refusal, reservation_at, Held};
use crate::ledger::LedgerError;
use crate::limits::Rejection;
use crate::link::UpBody;
use crate::queue::{Demand, Grant};
use crate::registry::Worker;
use crate::response::ResponseBody;
use crate::running::Registered;
use crate::state::State;
use crate::stats::{ActiveGuard, Stats};
use deadline::{AtDeadline, Deadline};

mod chunks;
mod deadline;
mod settle;
use chunks::Chunks;
pub use settle::{cancel, SETTLE_LIMIT};
use settle::{Detached, Leftover};

/// A relayed frame is at most about this large (events already received are coalesced).
const COALESCE_LIMIT: usize = 16 << 10;

/// Largest error body read from a worker.
const MAX_WORKER_ERROR_BODY: usize = 64 << 10;

/// Authority used in requests to workers (the connection is already attested; the worker
/// ignores the name).
pub const WORKER_AUTHORITY: &str = "cocoon-worker";

/// The URI of `endpoint` at a worker: `https://{WORKER_AUTHORITY}{path}`, parsed once (a
/// clone shares the static bytes; a test checks the spelling).
fn worker_uri(endpoint: Endpoint) -> http::Uri {
    static URIS: std::sync::LazyLock<[http::Uri; 2]> = std::sync::LazyLock::new(|| {
        [
            http::Uri::from_static("https://cocoon-worker/v1/chat/completions"),
            http::Uri::from_static("https://cocoon-worker/v1/completions"),
        ]
    });
    match endpoint {
        Endpoint::ChatCompletions => URIS[0].clone(),
        Endpoint::Completions => URIS[1].clone(),
    }
}

fn api(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// Logs a warning that a worker can trigger at will, at most once per `what` per window of
/// the limiter (the next line reports how many were suppressed). Never logs payloads.
fn warn_limited(
    stats: &Stats,
    what: &'static str,
    worker: Option<u64>,
    detail: &dyn std::fmt::Display,
) {
    if let Some(suppressed) = stats.log_limiter.allow(what, Instant::now()) {
        tracing::warn!(worker, %detail, suppressed_since_last = suppressed, "{what}");
    }
}

/// Handles `POST /v1/chat/completions` and `POST /v1/completions` for `account`.
pub async fn completions(
    state: &Arc<State>,
    account: &Arc<str>,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let active = state.stats.active();
    match forward(state, account, endpoint, req, active).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// A worker chosen for a request, with its slot and the funds reserved (both freed on drop).
struct Pick {
    // Declared first: the reservation is released before the slot serves the queue.
    held: Held,
    grant: Grant,
    /// Completion tokens reserved (the max_tokens sent to the worker).
    completion_budget: u32,
}

impl Pick {
    fn worker(&self) -> &Arc<Worker> {
        self.grant.worker()
    }
}

/// A worker slot for `demand` (excluding `exclude`; waiting in the queue with `wait`), and
/// the reservation of the request's worst case at that worker. `upload` (the funds held
/// while the body was read and the request waited) becomes that reservation when it is the
/// same amount (the usual case: the worker picked is the cheapest, whose price the upload
/// hold was taken at) — one ledger change fewer each way; otherwise it is released just
/// before the new reservation is taken.
async fn pick(
    state: &Arc<State>,
    account: &str,
    demand: &Arc<Demand>,
    exclude: &[u64],
    wait: bool,
    upload: Option<Held>,
) -> Result<Pick, Rejection> {
    let grant = admission::acquire(state, demand, exclude, wait).await?;
    let (completion_budget, amount) = reservation_at(&state.config, &demand.meta, grant.worker());
    if let Some(held) = upload.filter(|h| !h.is_committed() && h.amount() == amount) {
        return Ok(Pick {
            completion_budget,
            grant,
            held,
        });
    }
    match state.ledger.reserve(account, amount) {
        Ok(reservation) => Ok(Pick {
            completion_budget,
            grant,
            held: Held::new(state.clone(), reservation),
        }),
        Err(e) => Err(ledger_refusal(e).into()),
    }
}

/// How one attempt at a worker ended.
enum Attempt {
    /// 2xx: relay the stream.
    Stream(Response<UpBody>),
    /// A failure before the first response byte that another worker may not have.
    Retryable(ApiError),
    /// 429: the worker had no free slot (it serves other proxies too, or a slot this proxy
    /// freed was not free there yet after the worker's own wait). Not a fault of the worker;
    /// another worker may have room.
    Busy(ApiError),
    /// A final answer to pass to the client (a 4xx the worker decided).
    Final(ApiError),
}

async fn attempt(
    state: &State,
    pick: &Pick,
    meta: &RequestMeta,
    endpoint: Endpoint,
    e2e: Option<&protocol::e2e::Binding>,
    body: Bytes,
    tag: u64,
) -> Attempt {
    let worker = pick.worker();
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = worker_uri(endpoint);
    {
        let h = req.headers_mut();
        // Metadata, prompt budget, stream tag, content type and length (and the e2e binding):
        // room for all at once instead of growing the map.
        h.reserve(16);
        // The client's metadata at the worker's protocol version; a plaintext request's max
        // tokens are the budget reserved (replacing the values written, no copy of `meta`).
        meta.write_headers(h);
        h.insert(
            names::VERSION.clone(),
            HeaderValue::from(worker.info.version),
        );
        if e2e.is_none() {
            h.insert(
                names::MAX_TOKENS.clone(),
                HeaderValue::from(pick.completion_budget),
            );
        }
        h.insert(
            names::MAX_PROMPT_TOKENS.clone(),
            HeaderValue::from(state.config.max_prompt_tokens),
        );
        h.insert(
            names::STREAM_TAG.clone(),
            protocol::meta::unique_value(HeaderValue::from(tag)),
        );
        match e2e {
            // The client's bound max tokens stay; the proxy's budget goes beside it.
            Some(binding) => {
                protocol::e2e::write_headers(binding, h);
                h.insert(
                    protocol::e2e::H_BUDGET_TOKENS,
                    HeaderValue::from(pick.completion_budget),
                );
            }
            None => {
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(response::APPLICATION_JSON),
                );
            }
        }
    }
    if let Some(rec) = &state.recorder {
        rec.record_head(
            "to-worker head",
            &format!("POST {}", endpoint.path()),
            req.headers(),
        );
        rec.record("to-worker body", req.body());
    }
    let id = worker.info.id;
    let upstream = |what: String| api(ErrorKind::Upstream, format!("worker {id}: {what}"));
    let sender = worker.sender();
    let idle = state.config.worker_idle_timeout;
    let sent = tokio::time::timeout(idle, sender.send(req)).await;
    let resp = match sent {
        Err(_) => {
            return Attempt::Retryable(api(
                ErrorKind::Timeout,
                format!(
                    "worker {id}: no response within {}s (worker_idle_timeout_secs)",
                    idle.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) => return Attempt::Retryable(upstream(crate::link::describe(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if let Some(rec) = &state.recorder {
        rec.record_head("from-worker head", status.as_str(), resp.headers());
    }
    if status.is_success() {
        return Attempt::Stream(resp);
    }
    // Error bodies are small JSON; read them with a bound and a deadline.
    let read = tokio::time::timeout(
        idle,
        Limited::new(resp.into_body(), MAX_WORKER_ERROR_BODY).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    };
    if let Some(rec) = &state.recorder {
        rec.record("from-worker body", &bytes);
    }
    let err = ApiError::from_json(status.as_u16(), &bytes);
    if status == StatusCode::TOO_MANY_REQUESTS {
        Attempt::Busy(api(
            ErrorKind::NoCapacity,
            format!("worker {id} is at capacity: {}", err.message),
        ))
    } else if status.is_server_error() {
        Attempt::Retryable(upstream(format!(
            "status {}: {}",
            status.as_u16(),
            err.message
        )))
    } else {
        Attempt::Final(err)
    }
}

async fn forward(
    state: &Arc<State>,
    account: &Arc<str>,
    endpoint: Endpoint,
    req: Request<Incoming>,
    active: ActiveGuard,
) -> Result<Response<ResponseBody>, Rejection> {
    // Shared by the request's parts (its demand, the attempt, the billing): one copy.
    let meta = Arc::new(RequestMeta::from_headers(req.headers())?);
    // An encrypted request: the routing metadata is bound into the ciphertext (the worker
    // checks it); only the named recipients can take it.
    let e2e = if protocol::e2e::is_encrypted(req.headers()) {
        Some(protocol::e2e::binding_from_headers(
            endpoint,
            &meta,
            req.headers(),
        )?)
    } else {
        None
    };
    if state.shutdown.is_draining() {
        return Err(shutting_down(state));
    }
    if !state.registry.serves(&meta.model) {
        return Err(api(
            ErrorKind::ModelNotFound,
            format!("model {} is not served by any worker", meta.model),
        )
        .into());
    }
    // An account that abandoned too many streams before they were billed waits (the abort
    // free-ride, crate::limits::Abandons).
    if let Err(secs) = state.limits.abandons.check(account, Instant::now()) {
        return Err(abandon_limit(state, secs));
    }
    // Funds first: an account that cannot pay is refused before its body is read. The
    // amount stays reserved during the upload (no worker slot is held).
    let admission = admission::admit(state, account, &meta)?;
    // `_charge` keeps the body's bytes counted in the body budget while they are in memory.
    let limit = match &e2e {
        Some(_) => protocol::e2e::MAX_ENVELOPE.min(
            state
                .config
                .max_body_bytes
                .saturating_add(protocol::e2e::MAX_ENVELOPE - protocol::MAX_REQUEST_BODY),
        ),
        None => state.config.max_body_bytes,
    };
    let (body, _charge) = admission::read_body(state, req, limit).await?;
    let mut demand = Demand::new(&state.config, account, &meta, body.len());
    let receipt = match &e2e {
        Some(binding) => Some(encrypted_demand(state, &mut demand, binding, &body)?),
        None => None,
    };
    let demand = Arc::new(demand);
    let mut upload = Some(admission);
    let mut tried: Vec<u64> = Vec::with_capacity(2);
    let mut last: Option<Rejection> = None;
    for n in 0..2 {
        // The first attempt may wait in the queue; a retry takes another worker with room
        // at once or reports the first failure.
        let pick = match pick(state, account, &demand, &tried, n == 0, upload.take()).await {
            Ok(p) => p,
            Err(e) => {
                // A recipient that failed (not one that was busy) and no other to retry on.
                let failed = last
                    .as_ref()
                    .filter(|l| l.error.kind != ErrorKind::NoCapacity);
                if let (Some(failed), Some(binding)) = (failed, &e2e) {
                    if !recipient_connected(state, &demand, &tried) {
                        return Err(recipients_failed(binding, &failed.error));
                    }
                }
                return Err(last.unwrap_or(e));
            }
        };
        if n > 0 {
            state.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let worker = pick.worker().clone();
        tried.push(worker.info.id);
        let started = Instant::now();
        let detached = Detached::new(
            state,
            account,
            &meta,
            endpoint,
            e2e.as_ref(),
            receipt.as_ref(),
            &worker,
            started,
        );
        let (pick, attempted, detached) = detached.attempt(pick, body.clone()).await?;
        match attempted {
            Attempt::Stream(resp) => {
                let billing = detached.billing(pick);
                return Ok(stream_response(state, billing, &meta, resp, active));
            }
            Attempt::Retryable(e) => {
                drop(pick);
                worker.record_outcome(false);
                warn_limited(
                    &state.stats,
                    "worker failed before the first byte",
                    Some(worker.info.id),
                    &e.message,
                );
                last = Some(e.into());
            }
            Attempt::Busy(e) => {
                drop(pick);
                state.stats.worker_busy.fetch_add(1, Ordering::Relaxed);
                warn_limited(
                    &state.stats,
                    "worker at capacity",
                    Some(worker.info.id),
                    &e.message,
                );
                last = Some(Rejection {
                    error: e,
                    status: None,
                    retry_after_secs: Some(1),
                });
            }
            Attempt::Final(e) => {
                drop(pick);
                worker.record_outcome(true);
                return Err(e.into());
            }
        }
    }
    Err(last.unwrap_or_else(|| api(ErrorKind::Upstream, "no worker answered").into()))
}

/// Checks an encrypted request against its envelope and the connected workers: the envelope's
/// recipients must be the header's, and at least one of them must be connected here (else
/// 421 `e2e_recipient_unavailable`: the client refreshes its keys). Restricts `demand` to
/// them and returns what its receipt must name.
fn encrypted_demand(
    state: &State,
    demand: &mut Demand,
    binding: &protocol::e2e::Binding,
    envelope: &Bytes,
) -> Result<ReceiptCheck, Rejection> {
    let listed = protocol::e2e::envelope_recipients(envelope)
        .map_err(|e| api(ErrorKind::InvalidRequest, format!("encrypted body: {e}")))?;
    if listed != binding.recipients {
        return Err(api(
            ErrorKind::InvalidRequest,
            format!(
                "encrypted body: its recipients differ from the {} header",
                protocol::e2e::H_RECIPIENTS
            ),
        )
        .into());
    }
    demand.recipients = Some(listed.into());
    if !recipient_connected(state, demand, &[]) {
        return Err(api(
            ErrorKind::RecipientUnavailable,
            format!(
                "none of the request's {} recipients is connected to this proxy; fetch the worker keys again ({})",
                binding.recipients.len(),
                protocol::paths::WORKERS
            ),
        )
        .into());
    }
    let bound = binding
        .encode()
        .map_err(|e| api(ErrorKind::InvalidRequest, e.to_string()))?;
    Ok(ReceiptCheck {
        request_id: binding.request_id.clone(),
        model: binding.model.clone(),
        request_hash: protocol::e2e::request_hash(&bound, envelope),
    })
}

/// The 421 for an encrypted request whose recipient failed before answering when none of its
/// other recipients is connected: no retry here can serve it, but the client can seal it again
/// to the workers connected now (a worker that failed this way is often one moving to renewed
/// keys). Nothing was billed.
fn recipients_failed(binding: &protocol::e2e::Binding, failure: &ApiError) -> Rejection {
    api(
        ErrorKind::RecipientUnavailable,
        format!(
            "the worker this request was sealed to failed before answering ({}), and none of \
             its other {} recipients is connected to this proxy; fetch the worker keys again ({})",
            failure.message,
            binding.recipients.len().saturating_sub(1),
            protocol::paths::WORKERS
        ),
    )
    .into()
}

/// Whether a worker `demand` may go to (one of an encrypted request's recipients) is
/// connected, `exclude` aside.
fn recipient_connected(state: &State, demand: &Demand, exclude: &[u64]) -> bool {
    state
        .registry
        .candidates(&demand.meta.model, exclude)
        .iter()
        .any(|w| demand.accepts(w))
}

/// What the receipt of an encrypted request must say.
#[derive(Clone)]
struct ReceiptCheck {
    request_id: String,
    model: String,
    request_hash: [u8; 32],
}

/// The 503 for a request that arrives while the proxy shuts down.
fn shutting_down(state: &State) -> Rejection {
    let message = "the proxy is shutting down; retry on another proxy";
    crate::limits::count(
        &state.stats,
        crate::limits::ClientRefusal::ShuttingDown,
        None,
        message,
    );
    Rejection {
        error: api(ErrorKind::Unavailable, message),
        status: None,
        retry_after_secs: Some(1),
    }
}

/// The 429 for an account past its allowance of abandoned streams.
fn abandon_limit(state: &State, retry_after_secs: u64) -> Rejection {
    let c = &state.config.client;
    let message = format!(
        "this account abandoned more streams before they were billed than client_abandon_burst \
         ({}, one more every {}s) allows; retry in {retry_after_secs}s",
        c.abandon_burst,
        c.abandon_interval.as_secs()
    );
    crate::limits::count(
        &state.stats,
        crate::limits::ClientRefusal::AbandonLimit,
        None,
        &message,
    );
    Rejection {
        error: api(ErrorKind::RateLimited, message),
        status: None,
        retry_after_secs: Some(u32::try_from(retry_after_secs).unwrap_or(u32::MAX)),
    }
}

/// Counts a stream its client abandoned before it was billed ([`crate::limits::Abandons`]).
fn abandoned(state: &State, account: &str) {
    state.stats.abandoned.fetch_add(1, Ordering::Relaxed);
    state.limits.abandons.record(account, Instant::now());
}

fn stream_response(
    state: &Arc<State>,
    billing: Billing,
    meta: &RequestMeta,
    resp: Response<UpBody>,
    active: ActiveGuard,
) -> Response<ResponseBody> {
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    let mut upstream = resp.into_body();
    let watch = state
        .stalls
        .watch(upstream.canceller(), billing.pick.grant.freer());
    let stall_limit = state.stalls.limit();
    let body = RelayBody {
        upstream: Some(upstream),
        watch,
        splitter: Splitter::default(),
        out: Chunks::default(),
        held: Chunks::default(),
        gate: None,
        done: false,
        idle: Idle::new(state.config.worker_idle_timeout),
        deadline: Deadline::new(&state.shutdown),
        billing: Some(billing),
        active: Some(active),
        client_stalled: false,
        stopping: None,
        stall_limit,
    };
    let watch = body.watch.clone();
    let shared = Arc::new(std::sync::Mutex::new(body));
    let weak: std::sync::Weak<dyn crate::stall::Stalled> = Arc::downgrade(&shared) as _;
    watch.set_relay(weak);
    let mut out = Response::new(ResponseBody::Relay(Box::pin(SharedRelay(shared))));
    let h = out.headers_mut();
    response::event_stream_headers(h, Some(&meta.request_id));
    // The worker's own content type, if it named one.
    if let Some(content_type) = content_type {
        h.insert(CONTENT_TYPE, content_type);
    }
    out
}

/// Billing and health bookkeeping of one relayed stream. Dropping it without a usage report
/// (client gone, worker gone) releases the reservation and frees the capacity slot.
struct Billing {
    state: Arc<State>,
    /// The paying account.
    account: Arc<str>,
    pick: Pick,
    started: Instant,
    first_byte: bool,
    /// The worker itself reported an error event.
    worker_error: bool,
    /// An encrypted request: billed only on a valid receipt naming it (its plaintext usage
    /// events, if a worker sent any, are ignored).
    receipt: Option<ReceiptCheck>,
    /// The request's id and the tag it went to the worker with: they name it in a cancel.
    request_id: protocol::RequestId,
    tag: u64,
    /// Its entry among the account's running requests (a client's cancel finds it there).
    _registered: Registered,
}

impl Billing {
    /// Handles one whole event of the worker's stream (of `kind`, its bytes `raw`): bills a
    /// usage report or receipt, notes an error event. Returns the durability ticket of a
    /// charge.
    fn on_event(&mut self, kind: Kind, raw: &[u8]) -> Option<crate::ledger::durable::Ticket> {
        match kind {
            Kind::Usage => self.on_usage(&event_data(raw)),
            Kind::Receipt => self.on_receipt(&event_data(raw)),
            Kind::Error => {
                self.worker_error = true;
                None
            }
            _ => None,
        }
    }

    /// At the stream's end: whether it is billed, whether the worker reported an error, and
    /// whether it is encrypted.
    fn end_state(&self) -> (bool, bool, bool) {
        (
            self.pick.held.is_committed(),
            self.worker_error,
            self.receipt.is_some(),
        )
    }

    /// Whether the request is billed, or is not to be (the worker reported an error).
    fn is_settled(&self) -> bool {
        self.pick.held.is_committed() || self.worker_error
    }

    fn on_data(&mut self) {
        if !self.first_byte {
            self.first_byte = true;
            self.pick.worker().record_latency(self.started.elapsed());
        }
    }

    /// Bills the usage report; returns the durability ticket to wait on before the client may
    /// see it (durable ledger).
    fn on_usage(&mut self, data: &str) -> Option<crate::ledger::durable::Ticket> {
        if self.pick.held.is_committed() {
            return None;
        }
        let worker = self.pick.worker().clone();
        if self.receipt.is_some() {
            warn_limited(
                &self.state.stats,
                "plaintext usage event in an encrypted stream ignored",
                Some(worker.info.id),
                &"billing waits for the receipt",
            );
            return None;
        }
        let usage: Usage = match serde_json::from_str(data) {
            Ok(u) => u,
            Err(e) => {
                warn_limited(
                    &self.state.stats,
                    "unparseable usage event",
                    Some(worker.info.id),
                    &e,
                );
                return None;
            }
        };
        self.bill(&worker, usage, None)
    }

    /// Bills the receipt of an encrypted request when it verifies against the worker's
    /// attested receipt key and names this request; otherwise nothing is billed.
    fn on_receipt(&mut self, data: &str) -> Option<crate::ledger::durable::Ticket> {
        use base64::Engine as _;
        if self.pick.held.is_committed() {
            return None;
        }
        let worker = self.pick.worker().clone();
        let (Some(expected), Some(keys)) = (self.receipt.as_ref(), worker.info.e2e.as_ref()) else {
            return None;
        };
        let checked = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| "not base64".to_string())
            .and_then(|bytes| {
                protocol::e2e::Receipt::verify(&bytes, &keys.receipt_key)
                    .map(|r| (r, bytes))
                    .map_err(|e| e.to_string())
            })
            .and_then(|(r, bytes)| {
                let mismatch = if r.request_hash != expected.request_hash {
                    Some("request hash")
                } else if r.request_id != expected.request_id {
                    Some("request id")
                } else if r.model != expected.model {
                    Some("model")
                } else if r.claims_hash != keys.claims_hash {
                    Some("claims hash")
                } else if r.price_coefficient_milli != worker.info.price_coefficient_milli {
                    Some("price coefficient")
                } else {
                    None
                };
                match mismatch {
                    Some(what) => Err(format!("its {what} is not this request's")),
                    None => Ok((r, bytes)),
                }
            });
        match checked {
            Ok((r, bytes)) => {
                self.state
                    .stats
                    .receipts_valid
                    .fetch_add(1, Ordering::Relaxed);
                self.bill(&worker, r.usage, Some((&r.request_hash, &bytes)))
            }
            Err(e) => {
                self.state
                    .stats
                    .receipts_invalid
                    .fetch_add(1, Ordering::Relaxed);
                warn_limited(
                    &self.state.stats,
                    "invalid receipt: not billed",
                    Some(worker.info.id),
                    &e,
                );
                None
            }
        }
    }

    fn bill(
        &mut self,
        worker: &Arc<Worker>,
        usage: Usage,
        receipt: Option<(&[u8; 32], &[u8])>,
    ) -> Option<crate::ledger::durable::Ticket> {
        let state = &self.state;
        let cost = state
            .config
            .prices
            .cost(&usage, worker.info.price_coefficient_milli);
        if cost > self.pick.held.amount() {
            state.stats.over_reservation.fetch_add(1, Ordering::Relaxed);
            let detail = format!("cost {cost} nano, reserved {}", self.pick.held.amount());
            warn_limited(
                &state.stats,
                "usage exceeds the reservation; charging the reservation",
                Some(worker.info.id),
                &detail,
            );
        }
        match self
            .pick
            .held
            .commit(cost, &usage, &worker.info.account, receipt)
        {
            Ok(c) => {
                let w = &worker.info;
                state
                    .stats
                    .record_usage((w.id, &w.name, &w.image_hash), &usage, c.charged);
                c.durable
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger commit failed");
                None
            }
        }
    }

    fn finish(&mut self, ok: bool) {
        self.pick.worker().record_outcome(ok);
    }
}

/// The data of one whole event the splitter handed over (usage, receipt); empty if it has none.
fn event_data(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    protocol::sse::event_data(raw).unwrap_or_default()
}

/// A charge being written by the durable ledger.
type DurableWrite = Pin<Box<dyn Future<Output = Result<(), LedgerError>> + Send>>;

/// The idle limit of a relayed stream: how long the worker may send nothing while the relay
/// waits for it. The timer is armed lazily and re-armed only when it fires early, so a fast
/// stream costs one clock read per wait, not a timer update per event.
struct Idle {
    limit: Duration,
    /// Since when the relay has been waiting for the worker (`None`: not waiting).
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            since: None,
            timer: None,
        }
    }

    /// The worker delivered bytes.
    fn progress(&mut self) {
        self.since = None;
    }

    /// The relay waits for the worker: `true` once the worker has been silent for the limit
    /// (else the timer wakes the task when it could be).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let deadline = *self.since.get_or_insert(now) + self.limit;
        if now >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Fired for an earlier wait: the deadline moved on.
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline.into());
        }
    }
}

/// The relayed event stream (see the module docs). Dropped before the end (client gone), it
/// hands the worker's stream to [`Leftover::settle`], which stops the generation and bills it.
pub struct RelayBody {
    upstream: Option<UpBody>,
    /// Shared with the stall sweeper ([`crate::stall`]).
    watch: Arc<crate::stall::Watch>,
    splitter: Splitter,
    /// Complete events not yet handed to the client connection.
    out: Chunks,
    /// Events from the usage report on, held until the charge is on disk (`gate`).
    held: Chunks,
    /// The durable ledger's write of this request's charge.
    gate: Option<DurableWrite>,
    done: bool,
    /// The worker's idle limit.
    idle: Idle,
    /// The proxy's drain deadline.
    deadline: Deadline,
    billing: Option<Billing>,
    active: Option<ActiveGuard>,
    /// The client took nothing for [`CLIENT_STALL_MARK`] at least once: it stopped reading.
    client_stalled: bool,
    /// The drain deadline passed: the end of the worker's stream is relayed until
    /// [`STOP_AT_CUT`] has passed ([`Deadline`]). `true`: the generation was asked to stop (it
    /// was not billed yet), so its stream ends with the error event instead of `[DONE]`;
    /// `false`: it had ended already and only its last bytes are awaited.
    stopping: Option<bool>,
    /// `client_stall_secs`, for the error event of a stream its client stalled.
    stall_limit: Duration,
}

/// The relay as hyper polls it: shared with the stall sweeper, which takes its worker side
/// over when its client stops reading ([`crate::stall::Stalled`]). hyper holds the only
/// strong reference; the lock is uncontended but for that rare hand-over.
struct SharedRelay(Arc<std::sync::Mutex<RelayBody>>);

impl SharedRelay {
    fn lock(&self) -> std::sync::MutexGuard<'_, RelayBody> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Body for SharedRelay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut relay = self.lock();
        Pin::new(&mut *relay).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().is_end_stream()
    }
}

impl crate::stall::Stalled for std::sync::Mutex<RelayBody> {
    fn hand_over(&self, cause: crate::stall::Cause) -> crate::stall::HandOver {
        use crate::stall::HandOver;
        let mut relay = match self.try_lock() {
            Ok(relay) => relay,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Locked: the relay is being polled, so its client is reading after all.
            Err(std::sync::TryLockError::WouldBlock) => return HandOver::Busy,
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return HandOver::Nothing;
        };
        let Some((leftover, asked)) = relay.hand_over() else {
            return HandOver::Nothing;
        };
        // Still held: the relay's next poll sees why it lost its worker stream, and waits
        // for the settle's end to give its client.
        relay.watch.begin_settle();
        relay.watch.mark_cut(cause);
        rt.spawn(leftover.settle(asked));
        HandOver::Taken
    }
}

/// At the proxy's drain deadline: how long a stream whose generation is being stopped at its
/// worker may take to end with the usage of the work done (within [`crate::server::CUT_FLUSH`],
/// which also covers the delivery of what follows).
pub const STOP_AT_CUT: Duration = Duration::from_secs(1);

const CUT_MESSAGE: &str =
    "the proxy is shutting down: the stream was ended at the drain deadline (shutdown_drain_secs)";

/// A client that asks for no frame this long after the last one was handed over (its HTTP/2
/// window or TCP buffer stayed full) is marked stalled. A worker stream that then ends without
/// usage was ended by the worker's stall limit (`stream_stall_secs`), not by a worker fault:
/// the worker is not blamed for it.
pub const CLIENT_STALL_MARK: Duration = Duration::from_secs(5);

impl std::fmt::Debug for RelayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBody")
            .field("done", &self.done)
            .field(
                "billed",
                &self.billing.as_ref().map(|b| b.pick.held.is_committed()),
            )
            .finish_non_exhaustive()
    }
}

impl RelayBody {
    fn warn(&self, what: &'static str, detail: &dyn std::fmt::Display) {
        if let Some(b) = &self.billing {
            warn_limited(&b.state.stats, what, Some(b.pick.worker().info.id), detail);
        }
    }

    /// Ends the stream with an `upstream` error event after whatever is queued.
    fn fail(&mut self, message: String) {
        self.fail_with(ErrorKind::Upstream, message, false);
    }

    /// Ends the stream with an error event of `kind` after whatever is queued; `worker_ok`:
    /// the worker is not to blame (shutdown).
    fn fail_with(&mut self, kind: ErrorKind, message: String, worker_ok: bool) {
        self.drop_upstream();
        self.done = true;
        if let Some(b) = &self.billing {
            b.state.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        }
        let error = Event::error(&api(kind, message)).encode();
        self.sink().push(Bytes::from(error));
        self.finish(worker_ok);
    }

    /// Stops reading the worker's stream and resets it (the worker stops generating).
    fn drop_upstream(&mut self) {
        if self.upstream.take().is_some() {
            self.watch.cancel_upstream();
        }
    }

    /// Ends the stream because the stall sweeper found its client taking nothing for
    /// `client_stall_secs` (it freed the slot and took the worker's stream over to stop and
    /// bill it, or reset it).
    fn stalled_out(&mut self) {
        let what = match self.billing.as_ref().filter(|b| !b.is_settled()) {
            Some(b) => {
                // Reset unbilled (not handed over).
                abandoned(&b.state, &b.account);
                "the stream was ended and its worker freed"
            }
            None => "the generation was stopped at its worker and the work done billed",
        };
        let (kind, message) = match self.watch.cause() {
            Some(crate::stall::Cause::Shutdown) => (
                ErrorKind::Unavailable,
                format!(
                    "the proxy is shutting down and this client was taking nothing of the \
                     stream at the drain deadline (shutdown_drain_secs): {what}"
                ),
            ),
            _ => (
                ErrorKind::Timeout,
                format!(
                    "this client took nothing of the stream for {}s (client_stall_secs): {what}",
                    self.stall_limit.as_secs_f64()
                ),
            ),
        };
        self.fail_with(kind, message, true);
    }

    /// The stall sweeper takes the worker's stream over ([`crate::stall`]): what a task needs
    /// to stop the generation and bill it; `None` if the stream is over or already billed.
    /// A relay that saw the drain deadline and awaits the end of its stream (`stopping`) is
    /// taken over too: once its client takes nothing it is not polled, so it would never read
    /// that end. The `bool`: the generation was asked to stop already (the take-over only
    /// reads the end).
    fn hand_over(&mut self) -> Option<(Leftover, bool)> {
        if self.done || self.billing.as_ref().is_none_or(Billing::is_settled) {
            return None;
        }
        let upstream = self.upstream.take()?;
        let billing = self.billing.take()?;
        let asked = self.stopping.take() == Some(true);
        self.deadline.ended();
        let leftover = Leftover {
            upstream,
            watch: Some(self.watch.clone()),
            splitter: std::mem::take(&mut self.splitter),
            billing,
            // The task is the request's work now: shutdown waits for it, not for a client
            // that takes nothing.
            _active: self.active.take(),
        };
        Some((leftover, asked))
    }

    /// The proxy's drain deadline passed: asks the worker to stop the generation and relays
    /// the end of its stream (the usage of the work done, which is billed, and for an
    /// encrypted request the receipt) for at most [`STOP_AT_CUT`]; the stream then ends with
    /// the `service_unavailable` error event instead of `[DONE]` ([`Self::on_end`]).
    fn cut(&mut self) {
        let live = self.upstream.is_some() && !self.watch.is_cut();
        match self.billing.as_ref().filter(|_| live) {
            Some(b) => {
                let asked = !b.is_settled();
                if asked {
                    settle::stop_in_background(b, STOP_AT_CUT);
                }
                self.stopping = Some(asked);
            }
            None => self.end_at_cut(),
        }
    }

    /// Ends the stream at the drain deadline without waiting for the worker (its stream is
    /// reset; what it did is not billed).
    fn end_at_cut(&mut self) {
        self.stopping = None;
        self.deadline.ended();
        self.fail_with(ErrorKind::Unavailable, CUT_MESSAGE.into(), true);
    }

    /// Ends the stream because the worker was silent for the idle limit.
    fn idle_timeout(&mut self) {
        let (worker, limit) = match &self.billing {
            Some(b) => (b.pick.worker().info.id, self.idle.limit),
            None => (0, self.idle.limit),
        };
        self.warn("worker stream idle", &format!("silent for {limit:?}"));
        self.fail_with(
            ErrorKind::Timeout,
            format!(
                "worker {worker}: nothing received for {}s (worker_idle_timeout_secs)",
                limit.as_secs_f64()
            ),
            false,
        );
    }

    /// Where the next event goes: held back while a charge is being written.
    fn sink(&mut self) -> &mut Chunks {
        if self.gate.is_some() {
            &mut self.held
        } else {
            &mut self.out
        }
    }

    /// Polls the charge's write: releases the held events once it is on disk, replaces them
    /// with an error if it failed. `Pending` while the write is in progress.
    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(gate) = self.gate.as_mut() else {
            return Poll::Ready(());
        };
        match gate.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.gate = None;
                match result {
                    Ok(()) => {
                        self.out.append(&mut self.held);
                    }
                    Err(e) => {
                        // The client must not get a result the ledger could forget.
                        self.held.clear();
                        tracing::error!(error = %e, "ledger write failed; response withheld");
                        self.drop_upstream();
                        self.done = true;
                        let error = Event::error(&api(
                            ErrorKind::Upstream,
                            "the proxy could not record this request's charge",
                        ))
                        .encode();
                        self.out.push(Bytes::from(error));
                    }
                }
                Poll::Ready(())
            }
        }
    }

    fn finish(&mut self, ok: bool) {
        if let Some(mut b) = self.billing.take() {
            b.finish(ok);
        }
        self.active = None;
    }

    /// Queues the whole events `data` completes, as received; bills the usage event and holds
    /// it (and everything after it) back while its charge is being written.
    fn on_chunk(&mut self, data: Bytes) {
        self.idle.progress();
        if let Some(b) = self.billing.as_mut() {
            b.on_data();
            if let Some(rec) = &b.state.recorder {
                rec.record("from-worker data", &data);
            }
        }
        let stopping = self.stopping == Some(true);
        let Self {
            splitter,
            billing,
            gate,
            out,
            held,
            ..
        } = self;
        let split = splitter.feed(&data, |kind, bytes| {
            if let Some(ticket) = billing.as_mut().and_then(|b| b.on_event(kind, bytes)) {
                if !ticket.is_durable() {
                    *gate = Some(Box::pin(ticket.wait()));
                }
            }
            let sink = if gate.is_some() {
                &mut *held
            } else {
                &mut *out
            };
            if !stopping {
                return sink.push_from(&data, bytes);
            }
            match kind {
                // Stopped at the drain deadline: the stream ends with the error event, not
                // `[DONE]` ([`Self::on_end`]).
                Kind::Plain => sink.push_from(&data, without_done(bytes)),
                // An encrypted stream's `[DONE]` is inside its final chunk, which follows the
                // receipt: the error event goes before it, so the client reads the error
                // first and still gets the receipt (both come in one frame).
                Kind::Receipt => {
                    sink.push_from(&data, bytes);
                    sink.push(Bytes::from(
                        Event::error(&api(ErrorKind::Unavailable, STOPPED_AT_CUT)).encode(),
                    ));
                }
                _ => sink.push_from(&data, bytes),
            }
        });
        if let Err(e) = split {
            self.warn("worker sent a malformed event stream", &e);
            self.fail(format!("worker sent a malformed event stream: {e}"));
        }
    }

    fn on_end(&mut self) {
        self.upstream = None;
        self.watch.finished();
        self.deadline.ended();
        if self.stopping.take() == Some(true) {
            return self.end_stopped();
        }
        let (billed, worker_error, encrypted) = self
            .billing
            .as_ref()
            .map_or((true, false, false), Billing::end_state);
        if billed {
            self.done = true;
            self.finish(true);
        } else if worker_error {
            self.done = true;
            self.finish(false);
        } else if encrypted {
            // An encrypted stream's errors are inside it: a stream that ended without a
            // valid receipt (a request that failed, or a receipt that did not verify) is not
            // billed; the client reads why from the stream.
            self.done = true;
            self.finish(true);
        } else if self.client_stalled {
            self.fail_with(
                ErrorKind::Upstream,
                "the worker ended the stream while this client was not reading it (the \
                 worker's stall limit)"
                    .into(),
                true,
            );
        } else {
            self.fail("worker ended the stream without usage".into());
        }
    }
}

/// The error event that ends a stream stopped at the drain deadline.
const STOPPED_AT_CUT: &str = "the proxy is shutting down: the generation was stopped at the \
     drain deadline (shutdown_drain_secs); the work done so far is billed";

/// `run` (whole plain events) without a trailing `data: [DONE]` event.
fn without_done(run: &[u8]) -> &[u8] {
    const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
    run.strip_suffix(DONE_EVENT).unwrap_or(run)
}

impl RelayBody {
    /// The stream of a generation stopped at the drain deadline ended: a billed one ends with
    /// the error event (an encrypted one has it already, before its final chunk; one whose
    /// worker sent its own error needs none), an unbilled one like any stream cut then.
    fn end_stopped(&mut self) {
        let (billed, worker_error, encrypted) = self
            .billing
            .as_ref()
            .map_or((false, false, false), Billing::end_state);
        if !billed {
            return self.end_at_cut();
        }
        if let Some(b) = &self.billing {
            b.state.stats.stopped.fetch_add(1, Ordering::Relaxed);
        }
        if worker_error || encrypted {
            self.done = true;
            self.finish(true);
        } else {
            self.fail_with(ErrorKind::Unavailable, STOPPED_AT_CUT.into(), true);
        }
    }
}

impl Drop for RelayBody {
    /// The client went away before the end: a stream not billed yet is stopped at the worker
    /// and billed for the work done ([`Leftover::settle`]), in a task of its own.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cut by the stall sweeper (the worker's stream is already reset), or no runtime to
        // settle on: nothing to hand over, so an unbilled stream is abandoned.
        let rt = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| !self.watch.is_cut());
        if rt.is_none() {
            self.upstream = None;
        }
        if let (Some(rt), Some((leftover, asked))) = (rt, self.hand_over()) {
            // Gone after the drain deadline (`asked`): the generation was asked to stop already.
            rt.spawn(leftover.settle(asked));
        } else if let Some(b) = self.billing.take().filter(|b| !b.is_settled()) {
            abandoned(&b.state, &b.account);
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = Infallible;

    /// Takes everything the worker has already delivered (up to [`COALESCE_LIMIT`]) into one
    /// frame: a client that reads slowly gets fewer, larger frames; a client that keeps up
    /// gets each event as soon as it completes.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        // hyper asks for the next frame at once while the client's window is open.
        if this
            .watch
            .taken()
            .is_some_and(|waited| waited >= CLIENT_STALL_MARK)
        {
            this.client_stalled = true;
        }
        if !this.done && this.watch.is_cut() {
            // Taken over: the stream's billed end, once settled, goes before the error.
            match this.watch.poll_ending(cx) {
                Poll::Pending => {
                    // Woken when the settle ends; nothing is read here meanwhile.
                    return match this.out.take() {
                        Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(ending) => {
                    if let Some(end) = ending {
                        this.sink().push(end);
                    }
                    this.stalled_out();
                }
            }
        }
        loop {
            if this.poll_gate(cx).is_pending() {
                // Nothing more is read from the worker until the charge is on disk.
                if this.out.is_empty() {
                    return Poll::Pending;
                }
                break;
            }
            if this.done || this.out.len() >= COALESCE_LIMIT {
                break;
            }
            if this
                .billing
                .as_ref()
                .is_some_and(|b| this.deadline.passed_unreported(&b.state.shutdown))
            {
                this.deadline.pass();
                this.cut();
                continue;
            }
            let Some(up) = this.upstream.as_mut() else {
                this.on_end();
                continue;
            };
            match Pin::new(up).poll_frame(cx) {
                Poll::Pending if this.out.is_empty() => match this.deadline.poll(cx) {
                    AtDeadline::Passed => this.cut(),
                    AtDeadline::Expired => this.end_at_cut(),
                    AtDeadline::Running if this.idle.expired(cx) => this.idle_timeout(),
                    AtDeadline::Running => return Poll::Pending,
                },
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            this.on_chunk(data);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.warn("worker stream failed mid-response", &e);
                    this.fail("worker connection lost".into());
                }
                Poll::Ready(None) => this.on_end(),
            }
        }
        let frame = this.out.take();
        if frame.is_some() {
            this.watch.handed(Instant::now());
        }
        Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty() && self.gate.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_uris_are_the_authority_and_the_endpoint_paths() {
        for e in [Endpoint::ChatCompletions, Endpoint::Completions] {
            let want = format!("https://{WORKER_AUTHORITY}{}", e.path());
            assert_eq!(worker_uri(e).to_string(), want);
        }
    }
}
