//! [`Client`]: requests to an attested proxy, responses as event streams.
//!
//! ```no_run
//! # async fn demo(config: client::ClientConfig) -> Result<(), client::ApiError> {
//! use client::{Client, RequestFields};
//! let client = Client::connect(config).await?; // dials and verifies the proxy
//! let body = br#"{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"hi"}]}"#;
//! let fields = RequestFields::parse(body)?;
//! let meta = client.request_meta(&fields)?;
//! let mut events = client.chat_stream(&body[..], &meta).await?;
//! while let Some(event) = events.next_event().await {
//!     let _event = event?; // OpenAI chunks, then cocoon-usage, then [DONE]
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use protocol::health::Readiness;
use protocol::meta::{RequestId, RequestMeta, MAX_TOKENS_LIMIT};
use protocol::sse::{Decoder, Event};
use protocol::{ApiError, Endpoint, ErrorKind, PROTOCOL_VERSION};
use tokio::sync::watch;

use crate::config::ClientConfig;
pub use crate::conn::ProxyInfo;
use crate::conn::{Pool, Sender};
use crate::openai::{Aggregator, RequestFields};

/// Largest error or model-list body read from the proxy.
const MAX_JSON_RESPONSE: usize = 1 << 20;

/// How long a "ready" verdict is reused while a pooled connection is still open.
pub const READY_TTL: Duration = Duration::from_secs(5);
/// How long a "not ready" verdict is reused before the proxy is asked again.
pub const NOT_READY_TTL: Duration = Duration::from_secs(1);
/// How long a probe waits for a readiness check in progress before answering without it.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// A client of one proxy. Cheap to share (`Arc`); requests run concurrently over a small pool of
/// attested HTTP/2 connections.
#[derive(Debug)]
pub struct Client {
    pool: Pool,
    default_max_tokens: Option<u32>,
    price_cap_nano: Option<u64>,
    idle_timeout: Duration,
    /// The last readiness verdict and when it was reached ([`Client::readiness`]).
    ready: watch::Sender<Option<(Instant, Readiness)>>,
    /// Whether a readiness check is running.
    checking: AtomicBool,
    /// End-to-end encryption: the verified workers per model (`None`: plaintext requests).
    e2e: Option<crate::e2e::Recipients>,
    /// Verified receipts are logged here ([`crate::receipts`]).
    receipts: Option<Arc<crate::receipts::ReceiptLog>>,
    clock: Arc<dyn ratls::Clock>,
}

impl Client {
    /// A client that dials lazily: the first request dials (and verifies) the proxy.
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        Ok(Self {
            pool: Pool::new(&config)?,
            default_max_tokens: config.default_max_tokens,
            price_cap_nano: config.price_cap_nano,
            idle_timeout: config.idle_timeout,
            ready: watch::Sender::new(None),
            checking: AtomicBool::new(false),
            e2e: config.worker_policy.clone().map(|p| {
                crate::e2e::Recipients::new(
                    p,
                    config.clock.clone(),
                    config.collateral_source.clone(),
                )
            }),
            receipts: config.receipts.clone(),
            clock: config.clock.clone(),
        })
    }

    /// Whether requests are encrypted end to end to the workers.
    pub fn encrypts(&self) -> bool {
        self.e2e.is_some()
    }

    /// A client with one connection dialed and the proxy's evidence verified.
    pub async fn connect(config: ClientConfig) -> Result<Self, ApiError> {
        let client = Self::new(config)?;
        client.warm().await?;
        Ok(client)
    }

    /// Dials a connection now and returns what the proxy proved.
    pub async fn warm(&self) -> Result<ProxyInfo, ApiError> {
        self.pool.warm().await
    }

    /// The proxy address.
    pub fn proxy(&self) -> &str {
        self.pool.addr()
    }

    /// Metadata headers for a request with `fields`: a request id from 16 random bytes, the
    /// body's model, its max tokens (or the configured default; with neither,
    /// [`MAX_TOKENS_LIMIT`], which the proxy clamps to the model's advertised
    /// `max_completion_tokens`), the configured price cap.
    pub fn request_meta(&self, fields: &RequestFields) -> Result<RequestMeta, ApiError> {
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random)
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("system randomness: {e}")))?;
        Ok(RequestMeta {
            version: PROTOCOL_VERSION,
            request_id: RequestId::from_random(random),
            model: fields.model.clone(),
            max_tokens: fields
                .max_tokens
                .or(self.default_max_tokens)
                .unwrap_or(MAX_TOKENS_LIMIT),
            price_cap: self.price_cap_nano,
        })
    }

    /// `GET /v1/models` on the proxy: the OpenAI model list, as the proxy sent it.
    pub async fn models(&self) -> Result<serde_json::Value, ApiError> {
        self.get_json(protocol::paths::MODELS, "model list").await
    }

    /// `GET /v1/models/{id}` on the proxy (the id percent-encoded,
    /// [`protocol::models::path_of`]): the OpenAI model object, as the proxy sent it, or its
    /// error (404 `model_not_found` for a model no worker serves).
    pub async fn model(&self, id: &str) -> Result<serde_json::Value, ApiError> {
        self.get_json(&protocol::models::path_of(id), "model").await
    }

    /// The charge voucher the proxy offers for this account's client contract
    /// ([`protocol::paths::CHARGE`]; checked by [`crate::account::charge::decide`]).
    pub async fn charge_voucher(&self) -> Result<protocol::payout::ChargeVoucher, ApiError> {
        let v = self
            .get_json(protocol::paths::CHARGE, "charge voucher")
            .await?;
        let v: protocol::payout::ChargeVoucher = serde_json::from_value(v).map_err(|e| {
            ApiError::new(ErrorKind::Upstream, format!("proxy charge voucher: {e}"))
        })?;
        v.validate()?;
        Ok(v)
    }

    /// Asks the proxy to stop this account's request `request_id` ([`protocol::paths::CANCEL`]):
    /// its stream then ends with the usage of the work done — and, encrypted, the worker's
    /// receipt over it, which the [`EventStream`] verifies and logs as usual — so a request
    /// given up on is still accounted for. `Ok(n)`: the workers that stopped it.
    pub async fn cancel(&self, request_id: &str) -> Result<u64, ApiError> {
        let uri = self.uri(protocol::paths::CANCEL);
        let body = self
            .call(|| bare_request(Method::POST, &uri, Some(request_id)))
            .await?;
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["stopped"].as_u64())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Upstream,
                    "proxy cancel answer is not {\"stopped\": n}",
                )
            })
    }

    /// Sends a request built by `build` and reads its (small) answer: the body of a 200, any
    /// other status as its [`ApiError`].
    async fn call(
        &self,
        build: impl Fn() -> Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Vec<u8>, ApiError> {
        let resp = self.send(build).await?;
        let status = resp.status().as_u16();
        let body = read_limited(resp.into_body(), MAX_JSON_RESPONSE, self.idle_timeout).await?;
        if status != 200 {
            return Err(ApiError::from_json(status, &body));
        }
        Ok(body)
    }

    /// GETs `path` on the proxy; a 200 answer must be a JSON object (`what` names it in
    /// errors), any other status becomes its [`ApiError`].
    async fn get_json(&self, path: &str, what: &str) -> Result<serde_json::Value, ApiError> {
        let uri = self.uri(path);
        let body = self.call(|| bare_request(Method::GET, &uri, None)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorKind::Upstream,
                format!("proxy {what} is not json: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(ApiError::new(
                ErrorKind::Upstream,
                format!("proxy {what} is not a json object"),
            ));
        }
        Ok(v)
    }

    /// Whether this client can serve now: it holds (or can establish) an attested connection
    /// to the proxy, and the proxy lists at least one model. Cheap enough for a probe: a
    /// verdict is reused for [`READY_TTL`] while a pooled connection stays open (a closed
    /// connection makes it stale at once), a "not ready" one for [`NOT_READY_TTL`]; a stale
    /// verdict starts one check in the background (the model list over the pool, which dials
    /// and verifies the proxy only when no connection is open), shared by concurrent probes
    /// and awaited for at most [`READY_WAIT`].
    pub async fn readiness(self: &Arc<Self>) -> Readiness {
        let mut rx = self.ready.subscribe();
        let current = rx.borrow_and_update().clone();
        if let Some((at, verdict)) = &current {
            let ttl = if verdict.is_ready() {
                READY_TTL
            } else {
                NOT_READY_TTL
            };
            let connected = !verdict.is_ready() || self.pool.has_open_connection();
            if at.elapsed() < ttl && connected {
                return verdict.clone();
            }
        }
        if !self.checking.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                let verdict = me.check_ready().await;
                me.ready.send_replace(Some((Instant::now(), verdict)));
                me.checking.store(false, Ordering::Release);
            });
        }
        match tokio::time::timeout(READY_WAIT, rx.changed()).await {
            Ok(Ok(())) => {
                if let Some((_, verdict)) = rx.borrow().as_ref() {
                    return verdict.clone();
                }
                not_ready("proxy: readiness check gave no verdict")
            }
            _ => not_ready(format!(
                "proxy {}: readiness check did not finish within {READY_WAIT:?}",
                self.proxy()
            )),
        }
    }

    /// Asks the proxy for its model list (over the pool) and judges the answer.
    async fn check_ready(&self) -> Readiness {
        match self.models().await {
            Ok(list) => {
                let served = list["data"].as_array().map_or(0, Vec::len);
                if served == 0 {
                    not_ready(format!("proxy {} reports no model", self.proxy()))
                } else {
                    Readiness::ready()
                }
            }
            Err(e) => {
                tracing::debug!(proxy = %self.proxy(), error = %e, "readiness check failed");
                not_ready(e.message)
            }
        }
    }

    /// `POST /v1/chat/completions` with `body` passed through unchanged.
    pub async fn chat_stream(
        &self,
        body: impl Into<Bytes>,
        meta: &RequestMeta,
    ) -> Result<EventStream, ApiError> {
        self.stream(Endpoint::ChatCompletions, body.into(), meta)
            .await
    }

    /// `POST /v1/completions` with `body` passed through unchanged.
    pub async fn completions_stream(
        &self,
        body: impl Into<Bytes>,
        meta: &RequestMeta,
    ) -> Result<EventStream, ApiError> {
        self.stream(Endpoint::Completions, body.into(), meta).await
    }

    /// Sends `body` to `endpoint` with `meta` in headers. A non-200 answer becomes its
    /// [`ApiError`]; a 200 answer is the proxy's event stream.
    pub async fn stream(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        meta: &RequestMeta,
    ) -> Result<EventStream, ApiError> {
        if let Some(e2e) = &self.e2e {
            return self.stream_encrypted(e2e, endpoint, body, meta).await;
        }
        let uri = self.uri(endpoint.path());
        let (resp, sender) = self
            .send_keeping(|| {
                let mut req = Request::builder()
                    .method(Method::POST)
                    .uri(&uri)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::ACCEPT, "text/event-stream")
                    .body(Full::new(body.clone()))?;
                meta.write_headers(req.headers_mut());
                Ok(req)
            })
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = read_limited(resp.into_body(), MAX_JSON_RESPONSE, self.idle_timeout).await?;
            return Err(ApiError::from_json(status, &body));
        }
        Ok(EventStream::new(resp.into_body(), self.idle_timeout)
            .cancelled_on_drop(self.give_up(sender, meta)))
    }

    /// The verified workers of `model` (from the cache, or the proxy's directory).
    async fn recipients(
        &self,
        e2e: &crate::e2e::Recipients,
        model: &str,
    ) -> Result<Vec<crate::e2e::Recipient>, ApiError> {
        if let Some(r) = e2e.cached(model) {
            return Ok(r);
        }
        let path = format!(
            "{}?model={}",
            protocol::paths::WORKERS,
            crate::e2e::query_escape(model)
        );
        let json = self.get_json(&path, "worker directory").await?;
        let dir: protocol::e2e::Directory = serde_json::from_value(json).map_err(|e| {
            ApiError::new(
                ErrorKind::Upstream,
                format!("worker directory from the proxy: {e}"),
            )
        })?;
        e2e.accept(model, dir)
    }

    /// [`Client::stream`] sealed to verified workers of the model: refreshes the keys and
    /// seals again once when the proxy says none of the recipients is connected.
    async fn stream_encrypted(
        &self,
        e2e: &crate::e2e::Recipients,
        endpoint: Endpoint,
        body: Bytes,
        meta: &RequestMeta,
    ) -> Result<EventStream, ApiError> {
        let uri = self.uri(endpoint.path());
        for attempt in 0..2 {
            let mut workers = self.recipients(e2e, &meta.model).await?;
            shuffle(&mut workers)?;
            workers.truncate(protocol::e2e::MAX_RECIPIENTS);
            let binding = protocol::e2e::Binding {
                path: endpoint.path().to_string(),
                request_id: meta.request_id.to_string(),
                model: meta.model.clone(),
                max_tokens: meta.max_tokens,
                price_cap: meta.price_cap,
                time: self.clock.now(),
                recipients: workers
                    .iter()
                    .map(|w| w.keys.key_config.key_hash())
                    .collect(),
            };
            let configs: Vec<protocol::e2e::KeyConfig> =
                workers.iter().map(|w| w.keys.key_config.clone()).collect();
            let mut sealed = protocol::e2e::seal_request(
                &binding,
                &configs,
                &body,
                &mut rand_core::UnwrapErr(rand_core::OsRng),
            )
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("sealing: {e}")))?;
            let envelope = Bytes::from(std::mem::take(&mut sealed.envelope));
            let (resp, sender) = self
                .send_keeping(|| {
                    let mut req = Request::builder()
                        .method(Method::POST)
                        .uri(&uri)
                        .header(http::header::ACCEPT, "text/event-stream")
                        .body(Full::new(envelope.clone()))?;
                    meta.write_headers(req.headers_mut());
                    protocol::e2e::write_headers(&binding, req.headers_mut());
                    Ok(req)
                })
                .await?;
            let status = resp.status().as_u16();
            if status != 200 {
                let body =
                    read_limited(resp.into_body(), MAX_JSON_RESPONSE, self.idle_timeout).await?;
                let err = ApiError::from_json(status, &body);
                if err.kind == ErrorKind::RecipientUnavailable && attempt == 0 {
                    tracing::info!(model = %meta.model, "recipients gone; fetching worker keys again");
                    e2e.forget(&meta.model);
                    continue;
                }
                return Err(err);
            }
            let decryption = crate::e2e::Decryption::new(
                &sealed,
                meta.request_id.as_str(),
                &meta.model,
                workers,
                self.receipts.clone(),
            );
            return Ok(EventStream::new(resp.into_body(), self.idle_timeout)
                .encrypted(decryption)
                .cancelled_on_drop(self.give_up(sender, meta)));
        }
        Err(ApiError::new(
            ErrorKind::RecipientUnavailable,
            "no recipient of the request was connected to the proxy, even after fetching the worker keys again",
        ))
    }

    /// Sends the request and aggregates the stream into one OpenAI response object
    /// (`chat.completion` or `text_completion`) with `usage` from the proxy's usage event.
    pub async fn complete(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        meta: &RequestMeta,
    ) -> Result<serde_json::Value, ApiError> {
        let mut events = self.stream(endpoint, body, meta).await?;
        let mut agg = Aggregator::new(endpoint);
        while let Some(ev) = events.next_event().await {
            if agg.push(&ev?)? {
                break;
            }
        }
        agg.finish()
    }

    /// How a stream of request `meta` sent on `sender` is given up when dropped early.
    fn give_up(&self, sender: Sender, meta: &RequestMeta) -> GiveUp {
        GiveUp {
            sender,
            uri: self.uri(protocol::paths::CANCEL),
            request_id: meta.request_id.clone(),
        }
    }

    fn uri(&self, path: &str) -> String {
        format!("https://{}{path}", self.pool.addr())
    }

    /// Sends a request built by `build` (called again for the one retry) on a pooled
    /// connection. A request that was never dispatched because its connection had closed is
    /// retried once on a fresh connection.
    async fn send(
        &self,
        build: impl Fn() -> Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Response<Incoming>, ApiError> {
        self.send_keeping(build).await.map(|(resp, _)| resp)
    }

    /// [`Client::send`], also returning the connection the answer came on.
    async fn send_keeping(
        &self,
        build: impl Fn() -> Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<(Response<Incoming>, Sender), ApiError> {
        let mut last = None;
        for _attempt in 0..2 {
            let req = build().map_err(|e| {
                ApiError::new(ErrorKind::Internal, format!("building request: {e}"))
            })?;
            let mut sender = self.pool.sender().await?;
            match self.send_on(&mut sender, req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(SendError::Retryable(e)) => {
                    tracing::debug!(proxy = %self.pool.addr(), error = %e, "proxy connection closed; redialing");
                    last = Some(e);
                    self.pool.reset().await;
                }
                Err(SendError::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::new(ErrorKind::Upstream, "proxy unreachable")))
    }

    async fn send_on(
        &self,
        sender: &mut Sender,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let addr = self.pool.addr();
        let err =
            |e: hyper::Error| ApiError::new(ErrorKind::Upstream, format!("proxy {addr}: {e}"));
        // Nothing was sent when the connection is not ready or the request was canceled before
        // dispatch (connection closing): only then is a retry safe for a paid request.
        sender
            .ready()
            .await
            .map_err(|e| SendError::Retryable(err(e)))?;
        let upstream = |e: hyper::Error| {
            if e.is_canceled() {
                SendError::Retryable(err(e))
            } else {
                SendError::Fatal(err(e))
            }
        };
        match tokio::time::timeout(self.idle_timeout, sender.send_request(req)).await {
            Ok(r) => r.map_err(upstream),
            Err(_) => Err(SendError::Fatal(ApiError::new(
                ErrorKind::Timeout,
                format!(
                    "proxy {addr}: no response headers in {:?}",
                    self.idle_timeout
                ),
            ))),
        }
    }
}

fn not_ready(reason: impl Into<String>) -> Readiness {
    let mut r = Readiness::ready();
    r.missing(reason);
    r
}

enum SendError {
    Retryable(ApiError),
    Fatal(ApiError),
}

async fn read_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::Timeout,
                    "proxy response body timed out",
                ))
            }
            Ok(None) => return Ok(out),
            Ok(Some(f)) => f.map_err(|e| {
                ApiError::new(ErrorKind::Upstream, format!("proxy response body: {e}"))
            })?,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy response body larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// A request without a body to one of the proxy's own routes; `request_id` names a request
/// (a cancel).
fn bare_request(
    method: Method,
    uri: &str,
    request_id: Option<&str>,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(protocol::meta::H_VERSION, PROTOCOL_VERSION.to_string());
    if let Some(id) = request_id {
        b = b.header(protocol::meta::H_REQUEST_ID, id);
    }
    b.body(Full::new(Bytes::new()))
}

/// Shuffles `v` with system randomness.
fn shuffle<T>(v: &mut [T]) -> Result<(), ApiError> {
    for i in (1..v.len()).rev() {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r)
            .map_err(|e| ApiError::new(ErrorKind::Internal, format!("system randomness: {e}")))?;
        let j = (u64::from_le_bytes(r) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    Ok(())
}

/// The events of one response, decoded incrementally from the proxy's `text/event-stream`
/// body (event size bounded by [`protocol::sse::DEFAULT_MAX_EVENT`]).
///
/// Dropped before its end (the caller gave up on the request), it asks the proxy to stop the
/// request ([`Client::cancel`]) and reads the rest in the background for up to
/// [`GIVE_UP_DRAIN`]: the worker stops generating at once, the usage of the work done is
/// billed, and an encrypted stream's receipt for it is verified and logged like any other
/// ([`crate::receipts`]), so the receipt log keeps accounting for every charge. (Resetting the
/// stream instead would leave the proxy billing a receipt the client never saw.)
#[derive(Debug)]
pub struct EventStream {
    body: Option<Incoming>,
    decoder: Decoder,
    pending: VecDeque<Event>,
    finished: bool,
    /// `[DONE]` or an error event was handed out: the request is over.
    over: bool,
    idle_timeout: Duration,
    /// An encrypted response ([`crate::e2e`]).
    decryption: Option<crate::e2e::Decryption>,
    /// How to give the request up when dropped early.
    give_up: Option<GiveUp>,
}

/// What an [`EventStream`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Event(Event),
    /// The proxy sent only keepalive comments: the request is alive, nothing to show yet.
    KeepAlive,
}

/// How long the rest of a stream given up on is read after the proxy was asked to stop it
/// ([`EventStream`]): the worker stops at once; its usage and receipt follow.
pub const GIVE_UP_DRAIN: Duration = Duration::from_secs(10);

/// A request to stop at the proxy when its [`EventStream`] is dropped early.
#[derive(Debug)]
struct GiveUp {
    /// The connection the request went on.
    sender: Sender,
    uri: String,
    request_id: RequestId,
}

impl GiveUp {
    /// Asks the proxy to stop the request, then reads `rest` to its end.
    async fn run(mut self, mut rest: EventStream) {
        let id = self.request_id.clone();
        let asked = async {
            let req = bare_request(Method::POST, &self.uri, Some(id.as_str())).ok()?;
            self.sender.ready().await.ok()?;
            let resp = self.sender.send_request(req).await.ok()?;
            Some(resp.status() == http::StatusCode::OK)
        };
        match tokio::time::timeout(GIVE_UP_DRAIN, asked).await {
            Ok(Some(true)) => {
                let drained = tokio::time::timeout(GIVE_UP_DRAIN, async {
                    while let Some(Ok(_)) = rest.next_event().await {}
                })
                .await;
                tracing::info!(
                    request_id = %id,
                    receipt = rest.receipt().is_some(),
                    drained = drained.is_ok(),
                    "request given up: stopped at the proxy, its end read"
                );
            }
            _ => tracing::debug!(
                request_id = %id,
                "request given up: the proxy stopped nothing"
            ),
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.over {
            // An encrypted stream the proxy ended with its error event before the final
            // chunk (it stopped the generation at its drain deadline): the receipt it billed
            // follows; read it so the receipt log keeps accounting for every charge.
            if self
                .decryption
                .as_ref()
                .is_some_and(|d| d.receipt().is_none())
            {
                if let Some(rest) = self.rest() {
                    rt.spawn(rest.read_receipt());
                }
            }
            return;
        }
        let Some(give_up) = self.give_up.take() else {
            return;
        };
        if let Some(rest) = self.rest() {
            rt.spawn(give_up.run(rest));
        }
    }
}

impl EventStream {
    /// What is left of the stream, to read after it was dropped.
    fn rest(&mut self) -> Option<EventStream> {
        Some(EventStream {
            body: Some(self.body.take()?),
            decoder: std::mem::take(&mut self.decoder),
            pending: std::mem::take(&mut self.pending),
            finished: false,
            over: false,
            idle_timeout: self.idle_timeout,
            decryption: self.decryption.take(),
            give_up: None,
        })
    }

    /// Reads the stream to its end (for at most [`GIVE_UP_DRAIN`]) for the receipt that may
    /// follow an error event.
    async fn read_receipt(mut self) {
        let _ = tokio::time::timeout(GIVE_UP_DRAIN, async {
            while let Some(Ok(_)) = self.next_event().await {}
        })
        .await;
        if self.receipt().is_some() {
            tracing::info!("receipt read after the proxy's error event");
        }
    }

    fn new(body: Incoming, idle_timeout: Duration) -> Self {
        Self {
            body: Some(body),
            decoder: Decoder::default(),
            pending: VecDeque::new(),
            finished: false,
            over: false,
            idle_timeout,
            decryption: None,
            give_up: None,
        }
    }

    fn cancelled_on_drop(mut self, give_up: GiveUp) -> Self {
        self.give_up = Some(give_up);
        self
    }

    fn encrypted(mut self, decryption: crate::e2e::Decryption) -> Self {
        self.decryption = Some(decryption);
        self
    }

    /// Whether the response is encrypted end to end.
    pub fn is_encrypted(&self) -> bool {
        self.decryption.is_some()
    }

    /// The worker's verified receipt of an encrypted response (after its final chunk).
    pub fn receipt(&self) -> Option<&protocol::e2e::Receipt> {
        self.decryption.as_ref().and_then(|d| d.receipt())
    }

    /// The next event; `None` when the proxy ended the body. After an error the stream ends.
    /// Keepalives are skipped ([`EventStream::next_item`] hands them out).
    pub async fn next_event(&mut self) -> Option<Result<Event, ApiError>> {
        loop {
            match self.next_item().await? {
                Ok(StreamItem::Event(ev)) => return Some(Ok(ev)),
                Ok(StreamItem::KeepAlive) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next event, or [`StreamItem::KeepAlive`] for a read from the proxy that carried
    /// only SSE comments (the worker's keepalives while it processes the prompt, passed on
    /// by the proxy): a sign of life a relay passes on to its own reader.
    pub async fn next_item(&mut self) -> Option<Result<StreamItem, ApiError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                if ev.is_done() || ev.name.as_deref() == Some(protocol::sse::EVENT_ERROR) {
                    self.over = true;
                }
                return Some(Ok(StreamItem::Event(ev)));
            }
            if self.finished {
                return None;
            }
            let body = self.body.as_mut()?;
            let frame = match tokio::time::timeout(self.idle_timeout, body.frame()).await {
                Err(_) => {
                    return Some(Err(self.fail(ApiError::new(
                        ErrorKind::Timeout,
                        format!("proxy sent nothing for {:?}", self.idle_timeout),
                    ))))
                }
                Ok(None) => {
                    if let Some(d) = self.decryption.as_mut() {
                        d.end();
                    }
                    if let Some(Err(e)) = self.decryption.as_ref().map(|d| d.finish()) {
                        return Some(Err(self.fail(e)));
                    }
                    self.finished = true;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    return Some(Err(self.fail(ApiError::new(
                        ErrorKind::Upstream,
                        format!("proxy stream: {e}"),
                    ))))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match self.decoder.feed(&data) {
                Ok(events) => match self.decryption.as_mut() {
                    None => self.pending.extend(events),
                    Some(d) => {
                        for ev in events {
                            if let Err(e) = d.absorb(ev, &mut self.pending) {
                                return Some(Err(self.fail(e)));
                            }
                        }
                    }
                },
                Err(e) => {
                    return Some(Err(self.fail(ApiError::new(
                        ErrorKind::Upstream,
                        format!("proxy stream: {e}"),
                    ))))
                }
            }
            // Comments alongside events say nothing more than the events do.
            if self.decoder.take_comments() > 0 && self.pending.is_empty() {
                return Some(Ok(StreamItem::KeepAlive));
            }
        }
    }

    fn fail(&mut self, e: ApiError) -> ApiError {
        self.finished = true;
        self.pending.clear();
        e
    }

    /// The events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<Event, ApiError>> + Send {
        futures::stream::unfold(self, |mut s| async move {
            s.next_event().await.map(|ev| (ev, s))
        })
    }
}
