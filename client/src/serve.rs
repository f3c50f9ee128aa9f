//! The local OpenAI-compatible endpoint (`cocoon-client serve`): HTTP/1.1 for apps on this
//! machine, every request forwarded to the attested proxy through a [`Client`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/models` | the proxy's model list |
//! | `GET /v1/models/{id}` | the proxy's model object; the id may contain `/` and is percent-decoded, an id that fails the model-name check is answered 404 `model_not_found` here without asking the proxy ([`protocol::models`]) |
//! | `GET /healthz` | 200 `{"status":"ok"}` (liveness) |
//! | `GET /readyz` | 200, or 503 naming what is missing: an attested connection to the proxy, a model the proxy lists ([`Client::readiness`], cached) |
//! | `POST /v1/chat/completions`, `POST /v1/completions` | `stream: true`: SSE relayed by [`Relay`]; otherwise one JSON object from [`Aggregator`] |
//! | `POST /v1/responses` | OpenAI's Responses API, translated to chat completions ([`crate::openai::responses`]): `stream: true` gives Responses events, otherwise the response object |
//! | `GET`, `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`, … | 404 `not_found`: nothing is stored |
//!
//! # Who may call it
//! The probes pass [`Access::check_browser`] (no api key needed). Every other request first
//! passes [`Access::check`] (module [`guard`] explains the attacks): `Host`
//! must be a loopback name (`localhost`, `127.x.y.z`, `[::1]`, optional port) or one of the
//! configured `allowed_hosts` (403 otherwise, naming the Host); a browser `Origin` must pass
//! the same rule (403 otherwise; `Sec-Fetch-Site: cross-site` is refused too); with an
//! `api_key` configured, `Authorization: Bearer <api_key>` is required (401, compared in
//! constant time over digests). POST bodies must be `Content-Type: application/json` (415).
//! No `Access-Control-*` header is ever sent: a CORS preflight (`OPTIONS`) is answered 405, or
//! 403 when its Origin is refused. Apps that send no Origin (SDKs, curl) are unaffected.
//!
//! The body is read (up to [`crate::config::DEFAULT_MAX_BODY`]; more is refused with 413 as
//! soon as the declared length or the bytes read pass the limit) only to take `model`, `stream`,
//! `stream_options.include_usage` and `max_tokens` for the metadata headers; it is forwarded
//! unchanged (a Responses request: its chat translation is). Failures are OpenAI error objects with the status of their kind (400, 404, 413,
//! 429, 502, 504, …; 401, 403 and 415 for the refusals above). An error the proxy reports
//! before the first chunk gets its own status even for streaming requests; after the first
//! chunk it becomes an OpenAI error event. While the worker processes a long prompt it sends
//! SSE keepalive comments, which the proxy passes on ([`StreamItem::KeepAlive`]): a streamed
//! response starts with the first of them, `: keepalive` comments keep it alive until the
//! first chunk (SSE readers, the OpenAI SDKs' included, ignore them), and an error after the
//! first comment is an error event too. A non-streamed response cannot say anything before
//! its object.
//!
//! Logs name request ids, models, statuses and token counts, never prompt or completion text,
//! and never the api key. Refusals are logged at debug level only (any web page can cause them).
//!
//! # Shutdown
//! When `run`'s shutdown future completes, the listener closes and every connection stops
//! keep-alive; requests in progress may finish for [`ServeOptions::drain`]. Then each one
//! still running ends with an error an SDK raises: a stream gets an OpenAI error event
//! (`data: {"error": {…, "code": "service_unavailable"}}`) and ends, a request not answered
//! yet gets 503 — never a silent cut.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, EXPECT, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::health::{self, Probe};
use protocol::sse::Event;
use protocol::{response, ApiError, Endpoint, ErrorKind, RequestId, Usage};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{Client, EventStream, StreamItem};
use crate::openai::responses::{self, ResponseStream};
use crate::openai::{event_error, Aggregator, Relay, RequestFields, StreamOut};

pub mod guard;

pub use guard::{check_content_type, Access, AllowedHost, ApiKey, Refusal};

/// Response body type of the local endpoint.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Bytes of an oversized request body read and discarded after the 413 was sent (so that the
/// app reads the answer instead of a reset connection).
const DRAIN_LIMIT: usize = 64 << 20;
/// Time allowed for that.
const DRAIN_TIME: Duration = Duration::from_secs(30);
/// Time an app has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Characters of a request path shown in a 404 message.
const SHOWN_PATH_CHARS: usize = 100;
/// Default [`ServeOptions::drain`].
pub const DEFAULT_SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);
/// After the drain: how long the error events ending the remaining requests may take.
const END_FLUSH: Duration = Duration::from_secs(2);

/// Local server settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Largest request body accepted.
    pub max_body: usize,
    /// Who may use the endpoint.
    pub access: Access,
    /// At shutdown, how long requests in progress may finish before they end with an error.
    pub drain: Duration,
}

impl Default for ServeOptions {
    /// [`crate::config::DEFAULT_MAX_BODY`], loopback hosts only, no api key,
    /// [`DEFAULT_SHUTDOWN_DRAIN`].
    fn default() -> Self {
        Self {
            max_body: crate::config::DEFAULT_MAX_BODY,
            access: Access::default(),
            drain: DEFAULT_SHUTDOWN_DRAIN,
        }
    }
}

#[derive(Debug)]
struct State {
    client: Arc<Client>,
    opts: ServeOptions,
    /// Becomes `true` when the requests still in progress must end.
    end: watch::Receiver<bool>,
}

/// Resolves `true` once requests must end (`false`: never, the server is gone).
async fn ended(end: &mut watch::Receiver<bool>) -> bool {
    end.wait_for(|e| *e).await.is_ok()
}

/// The error that ends requests at shutdown.
fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "cocoon-client is shutting down: the request was ended at its drain deadline",
    )
}

/// Serves apps on `listener` until `shutdown` completes, then drains (see the module docs).
pub async fn run(
    listener: TcpListener,
    client: Arc<Client>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (end_tx, end) = watch::channel(false);
    let (close_tx, close) = watch::channel(false);
    let drain = opts.drain;
    let state = Arc::new(State { client, opts, end });
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let mut close = close.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(tcp), service));
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %peer, error = %e, "app connection ended");
                        }
                        return;
                    }
                    // No keep-alive from now on; the request in progress continues.
                    _ = close.wait_for(|c| *c), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    let open = conns.len();
    let all_done = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all_done).await.is_err() {
        tracing::info!(
            connections = open,
            "drain deadline passed; ending the requests in progress with an error"
        );
        end_tx.send_replace(true);
        let flushed = async { while conns.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(END_FLUSH, flushed).await;
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    if let Some(p) = Probe::from_path(req.uri().path()) {
        if let Err(r) = state.opts.access.check_browser(req.uri(), req.headers()) {
            return Ok(refuse(req, &r));
        }
        return Ok(probe(&state, req.method(), p).await);
    }
    if let Err(r) = state.opts.access.check(req.uri(), req.headers()) {
        return Ok(refuse(req, &r));
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let Some(id) = protocol::models::id_from_path(&path) {
        return Ok(if method == Method::GET {
            match id {
                Ok(id) => model(&state, &id).await,
                Err(e) => error_response(&e),
            }
        } else {
            method_not_allowed(&method, "GET")
        });
    }
    let resp = match (&method, path.as_str()) {
        (&Method::GET, protocol::paths::MODELS) => models(&state).await,
        (&Method::POST, protocol::paths::CHAT_COMPLETIONS) => infer(req, &state, Api::Chat).await,
        (&Method::POST, protocol::paths::COMPLETIONS) => infer(req, &state, Api::Completions).await,
        (&Method::POST, RESPONSES) => infer(req, &state, Api::Responses).await,
        (
            m,
            p @ (protocol::paths::MODELS
            | protocol::paths::CHAT_COMPLETIONS
            | protocol::paths::COMPLETIONS
            | RESPONSES),
        ) => {
            let allow = if p == protocol::paths::MODELS {
                "GET"
            } else {
                "POST"
            };
            method_not_allowed(m, allow)
        }
        (_, p) if p.starts_with(RESPONSES) && p.as_bytes().get(RESPONSES.len()) == Some(&b'/') => {
            error_response(&ApiError::new(
                ErrorKind::NotFound,
                "cocoon-client stores no responses: there is nothing to retrieve, list, cancel \
                 or delete",
            ))
        }
        (_, p) => error_response(&no_route(p)),
    };
    Ok(resp)
}

/// The 405 for `method`, with `Allow: allow`.
fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Body> {
    let e = ApiError::new(
        ErrorKind::InvalidRequest,
        format!("method {method} not allowed"),
    );
    let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, e.to_json());
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Answers `/healthz` or `/readyz`.
async fn probe(state: &State, method: &Method, p: Probe) -> Response<Body> {
    let resp = if !Probe::allows(method) {
        health::method_not_allowed()
    } else {
        match p {
            Probe::Liveness => health::liveness(),
            Probe::Readiness => state.client.readiness().await.response(),
        }
    };
    resp.map(full)
}

/// The 404 for path `p`, showing at most [`SHOWN_PATH_CHARS`] characters of it.
fn no_route(p: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no route for {:?}", guard::shown(p, SHOWN_PATH_CHARS)),
    )
}

/// Answers a request refused by [`guard`]; a body the app is still sending is drained so that
/// it reads the answer.
fn refuse(req: Request<Incoming>, r: &Refusal) -> Response<Body> {
    tracing::debug!(method = %req.method(), refusal = %r, "request refused");
    let expects_continue = expects_continue(&req);
    let body = req.into_body();
    if !hyper::body::Body::is_end_stream(&body) && !expects_continue {
        drain(body);
    }
    let mut resp = json_response(r.status(), r.api_error().to_json());
    if r.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn expects_continue(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    response::json(status, full(body))
}

/// The OpenAI error object with the status of its kind.
pub fn error_response(e: &ApiError) -> Response<Body> {
    response::error(e).map(full)
}

async fn model(state: &State, id: &str) -> Response<Body> {
    match state.client.model(id).await {
        Ok(v) => json_response(StatusCode::OK, v.to_string().into_bytes()),
        Err(e) => {
            if e.kind != ErrorKind::ModelNotFound {
                tracing::warn!(error = %e, "model lookup failed");
            }
            error_response(&e)
        }
    }
}

async fn models(state: &State) -> Response<Body> {
    match state.client.models().await {
        Ok(v) => json_response(StatusCode::OK, v.to_string().into_bytes()),
        Err(e) => {
            tracing::warn!(error = %e, "model list failed");
            error_response(&e)
        }
    }
}

enum BodyError {
    TooLarge { body: Incoming, drain: bool },
    Read(String),
}

/// Reads the body up to `max` bytes.
async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // With `Expect: 100-continue` an oversized body is never requested, so nothing to drain.
    let expects_continue = expects_continue(&req);
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge {
            body,
            drain: !expects_continue,
        });
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge { body, drain: true });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards the rest of an oversized body in the background.
fn drain(mut body: Incoming) {
    tokio::spawn(async move {
        let deadline = Instant::now() + DRAIN_TIME;
        let mut n = 0usize;
        while n < DRAIN_LIMIT {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, body.frame()).await {
                Ok(Some(Ok(f))) => n += f.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    });
}

/// OpenAI's Responses API (translated to chat completions).
const RESPONSES: &str = "/v1/responses";

/// The inference APIs served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Responses,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Responses => "responses",
        }
    }

    /// The endpoint the request goes to at the proxy.
    fn endpoint(self) -> Endpoint {
        match self {
            Api::Chat | Api::Responses => Endpoint::ChatCompletions,
            Api::Completions => Endpoint::Completions,
        }
    }
}

/// 413 for a body over `max` bytes (`what` says more, or is empty).
fn too_large(api: Api, max: usize, what: &str) -> Response<Body> {
    tracing::info!(api = api.name(), limit = max, "request body too large");
    error_response(&ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body larger than {max} bytes{what}"),
    ))
}

async fn infer(req: Request<Incoming>, state: &State, api: Api) -> Response<Body> {
    let started = Instant::now();
    let endpoint = api.endpoint();
    if let Err(r) = check_content_type(req.headers()) {
        return refuse(req, &r);
    }
    let max = state.opts.max_body;
    let body = match read_body(req, max).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { body, drain: d }) => {
            if d {
                drain(body);
            }
            return too_large(api, max, "");
        }
        Err(BodyError::Read(e)) => {
            return error_response(&ApiError::new(
                ErrorKind::InvalidRequest,
                format!("request body: {e}"),
            ))
        }
    };
    let (body, echo) = if api == Api::Responses {
        match responses::translate(&body) {
            // The translation is what the proxy and the worker read, under the same limit; it
            // can be a few bytes longer than the app's body (a string `input` becomes a
            // message), so refuse it here rather than let a hop refuse it in chat terms.
            Ok(t) if t.chat.len() > max => {
                let what = format!(" once translated to chat messages ({} bytes)", t.chat.len());
                return too_large(api, max, &what);
            }
            Ok(t) => (Bytes::from(t.chat), Some(t.echo)),
            Err(e) => {
                tracing::info!(api = api.name(), error = %e, "request refused");
                return error_response(&e);
            }
        }
    } else {
        (body, None)
    };
    let fields = match RequestFields::parse(&body) {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(api = api.name(), error = %e, "request refused");
            return error_response(&e);
        }
    };
    let meta = match state.client.request_meta(&fields) {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    let log = LogCtx {
        request_id: meta.request_id.clone(),
        model: meta.model.clone(),
        api,
        stream: fields.stream,
        started,
    };
    tracing::info!(
        request_id = %log.request_id,
        model = %log.model,
        api = api.name(),
        stream = fields.stream,
        max_tokens = meta.max_tokens,
        body_bytes = body.len(),
        "request"
    );
    let mut end = state.end.clone();
    let started = tokio::select! {
        r = state.client.stream(endpoint, body, &meta) => r,
        true = ended(&mut end) => Err(shutting_down()),
    };
    let events = match started {
        Ok(s) => s,
        Err(e) => {
            let e = match &echo {
                Some(echo) => echo.rename(e),
                None => e,
            };
            log.done(None, Some(&e));
            return error_response(&e);
        }
    };
    let mut resp = match (echo, fields.stream) {
        (None, true) => {
            stream_response(events, Relay::new(endpoint, fields.include_usage), log, end).await
        }
        (None, false) => aggregate_response(events, log, end).await,
        (Some(echo), true) => {
            let out = ResponseStream::new(echo, meta.request_id.as_str(), true);
            stream_response(events, out, log, end).await
        }
        (Some(echo), false) => {
            let out = ResponseStream::new(echo, meta.request_id.as_str(), false);
            response_object(events, out, log, end).await
        }
    };
    if let Ok(v) = HeaderValue::from_str(meta.request_id.as_str()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// What a finished request logs.
#[derive(Debug)]
struct LogCtx {
    request_id: RequestId,
    model: String,
    api: Api,
    stream: bool,
    started: Instant,
}

impl LogCtx {
    fn done(&self, usage: Option<Usage>, error: Option<&ApiError>) {
        let ms = self.started.elapsed().as_millis() as u64;
        let u = usage.unwrap_or_default();
        match error {
            None => tracing::info!(
                request_id = %self.request_id,
                model = %self.model,
                api = self.api.name(),
                stream = self.stream,
                prompt_tokens = u.prompt_tokens,
                completion_tokens = u.completion_tokens,
                cached_tokens = u.cached_tokens,
                ms,
                "request done"
            ),
            Some(e) => tracing::warn!(
                request_id = %self.request_id,
                model = %self.model,
                api = self.api.name(),
                stream = self.stream,
                status = e.status(),
                code = e.kind.code(),
                error = %e.message,
                ms,
                "request failed"
            ),
        }
    }
}

/// The next event of `events` (keepalives skipped: a JSON body has no way to show them), or
/// the shutdown error once `end` fires.
async fn next_or_end(
    events: &mut EventStream,
    end: &mut watch::Receiver<bool>,
) -> Option<Result<Event, ApiError>> {
    loop {
        match next_item_or_end(events, end).await? {
            Ok(StreamItem::Event(ev)) => return Some(Ok(ev)),
            Ok(StreamItem::KeepAlive) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The next event or keepalive of `events`, or the shutdown error once `end` fires.
async fn next_item_or_end(
    events: &mut EventStream,
    end: &mut watch::Receiver<bool>,
) -> Option<Result<StreamItem, ApiError>> {
    tokio::select! {
        biased;
        true = ended(end) => Some(Err(shutting_down())),
        item = events.next_item() => item,
    }
}

async fn aggregate_response(
    mut events: EventStream,
    log: LogCtx,
    mut end: watch::Receiver<bool>,
) -> Response<Body> {
    let mut agg = Aggregator::new(log.api.endpoint());
    let result = async {
        while let Some(ev) = next_or_end(&mut events, &mut end).await {
            if agg.push(&ev?)? {
                break;
            }
        }
        let usage = agg.usage();
        agg.finish().map(|v| (v, usage))
    }
    .await;
    match result {
        Ok((v, usage)) => {
            log.done(usage, None);
            json_response(StatusCode::OK, v.to_string().into_bytes())
        }
        Err(e) => {
            log.done(None, Some(&e));
            error_response(&e)
        }
    }
}

/// A Responses request with `stream: false`: the response object its stream ends with.
async fn response_object(
    mut events: EventStream,
    mut out: ResponseStream,
    log: LogCtx,
    mut end: watch::Receiver<bool>,
) -> Response<Body> {
    while !out.is_finished() {
        match next_or_end(&mut events, &mut end).await {
            Some(Ok(ev)) => out.on_event(&ev),
            Some(Err(e)) => out.on_error(e),
            None => out.on_end(),
        };
    }
    match (out.error(), out.response()) {
        (None, Some(v)) => {
            log.done(out.usage(), None);
            json_response(StatusCode::OK, v.to_string().into_bytes())
        }
        (e, _) => {
            let e = e.cloned().unwrap_or_else(|| {
                ApiError::new(
                    ErrorKind::Internal,
                    "response stream ended without a result",
                )
            });
            log.done(None, Some(&e));
            error_response(&e)
        }
    }
}

/// Relays a stream. Events are pulled until the first one the app sees: an error before that
/// point is answered with its own HTTP status.
async fn stream_response<S: StreamOut + Send + 'static>(
    mut events: EventStream,
    mut relay: S,
    log: LogCtx,
    mut end: watch::Receiver<bool>,
) -> Response<Body> {
    let prefix = loop {
        let ev = match next_item_or_end(&mut events, &mut end).await {
            Some(Ok(StreamItem::Event(ev))) => ev,
            // The worker is processing the prompt (it sends a keepalive after
            // `stream_keepalive_secs` of silence): start the response with the comment, so
            // that the app and anything between it and us see a live stream. An error after
            // this is an error event in the stream, as from the proxy and the worker.
            Some(Ok(StreamItem::KeepAlive)) => break protocol::sse::KEEPALIVE.to_vec(),
            Some(Err(e)) => {
                log.done(None, Some(&e));
                return error_response(&e);
            }
            None => {
                let e = ApiError::new(ErrorKind::Upstream, "proxy stream ended before any event");
                log.done(None, Some(&e));
                return error_response(&e);
            }
        };
        if let Some(e) = event_error(&ev) {
            let e = relay.api_error(e);
            log.done(None, Some(&e));
            return error_response(&e);
        }
        let out = relay.on_event(&ev);
        if let Some(e) = relay.error() {
            log.done(None, Some(e));
            return error_response(e);
        }
        if !out.is_empty() || relay.is_finished() {
            break out;
        }
    };
    let pump = Pump {
        events,
        relay,
        prefix: Some(prefix),
        log,
        logged: false,
        end,
    };
    let stream = futures::stream::unfold(pump, |mut p| async move {
        p.next_bytes()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(Bytes::from(b))), p))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    response::event_stream_headers(resp.headers_mut(), None);
    resp
}

/// State of a relayed stream; logs once when it ends or the app goes away.
struct Pump<S: StreamOut> {
    events: EventStream,
    relay: S,
    prefix: Option<Vec<u8>>,
    log: LogCtx,
    logged: bool,
    /// Shutdown: the stream must end (with an error event).
    end: watch::Receiver<bool>,
}

impl<S: StreamOut> Pump<S> {
    async fn next_bytes(&mut self) -> Option<Vec<u8>> {
        if let Some(b) = self.prefix.take() {
            return Some(b);
        }
        loop {
            if self.relay.is_finished() {
                self.finish();
                return None;
            }
            let out = match next_item_or_end(&mut self.events, &mut self.end).await {
                Some(Ok(StreamItem::Event(ev))) => self.relay.on_event(&ev),
                Some(Ok(StreamItem::KeepAlive)) => protocol::sse::KEEPALIVE.to_vec(),
                Some(Err(e)) => self.relay.on_error(e),
                None => self.relay.on_end(),
            };
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    fn finish(&mut self) {
        if !self.logged {
            self.logged = true;
            self.log.done(self.relay.usage(), self.relay.error());
        }
    }
}

impl<S: StreamOut> Drop for Pump<S> {
    fn drop(&mut self) {
        if !self.logged && !self.relay.is_finished() {
            self.logged = true;
            tracing::info!(
                request_id = %self.log.request_id,
                model = %self.log.model,
                "app went away before the stream ended"
            );
        } else {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_shows_the_path_by_characters() {
        // 99 ASCII bytes, then a two-byte character across byte offset 100.
        let p = format!("/{}é/more", "a".repeat(98));
        assert!(!p.is_char_boundary(100));
        let e = no_route(&p);
        assert_eq!(e.kind, ErrorKind::NotFound);
        let shown: String = p.chars().take(SHOWN_PATH_CHARS).collect();
        assert_eq!(e.message, format!("no route for {shown:?}"));
        assert!(e.message.contains('é'), "{}", e.message);
    }
}
