//! The upstream engine: forwards requests to an OpenAI-compatible server (vLLM, SGLang,
//! llama.cpp server) over plain HTTP/1.1 and streams its answer back as [`Chunk`]s.
//!
//! # Trust boundary
//!
//! The TEE cannot measure an external server. Everything this engine returns (text, token
//! counts, finish reasons) is only as trustworthy as the upstream's host: a confidential
//! deployment runs the upstream inside the same TD (on loopback), and the model hash in the
//! [`ModelAdvert`] is the one the operator *states* in the configuration ([`UpstreamModel`]),
//! not one the worker measured. The worker does check what it can: the upstream's answer is
//! parsed with bounds (event size, total bytes, timeouts), and a usage report that exceeds the
//! request's `max_tokens` is rejected rather than billed.
//!
//! # Protocol
//!
//! `POST {base}/v1/chat/completions` ([`Input::Chat`]) or `POST {base}/v1/completions`
//! ([`Input::Prompt`]) with `"stream": true, "stream_options": {"include_usage": true}`.
//! Text comes from `choices[0].delta.content` (chat) or `choices[0].text` (completions);
//! usage (prompt, cached, completion, reasoning tokens) from the final usage chunk; the finish
//! reason from the choice. `reasoning_content` deltas are not forwarded.
//!
//! Passed through: sampling fields, `logit_bias`, `response_format`, tool history in messages
//! (`tool_calls`, `tool_call_id`), and tools with `tool_choice: "none"`. Since only text is read
//! back, a request that could make tool calls or asks for log probabilities is refused with
//! [`EngineError::Unsupported`] (400) rather than answered without them.
//!
//! The base URL must be `http://<ip literal>[:port][/prefix]`: guest binaries are static and
//! cannot resolve names, and the upstream is expected on loopback or a private link (TLS to
//! the upstream is not implemented).
//!
//! # Cancellation and errors
//!
//! When the receiver of `tx` is dropped the engine drops the upstream response, which closes
//! the HTTP/1.1 connection (it is not returned to the pool); vLLM and llama.cpp abort the
//! request when their client disconnects. Failures are sent on `tx` (best effort) and
//! returned, always as [`EngineError::Upstream`].
//!
//! Exercised: unit tests here and a fake hyper server in `tests/engine_upstream.rs`. Not
//! exercised against a real vLLM/SGLang server on this machine (no GPU).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use protocol::sse::{Decoder, Event};
use protocol::{ModelAdvert, Usage};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Message, Meter,
    ResponseFormat, ToolChoice,
};

/// Longest upstream error body quoted in an [`EngineError::Upstream`] (characters).
const ERROR_BODY_CHARS: usize = 512;
/// Most bytes of an upstream error body that are read.
const ERROR_BODY_READ: usize = 8 * 1024;

/// One model served by the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamModel {
    /// Name clients ask for (the cocoon name).
    pub name: String,
    /// Name the upstream knows the model by (`"model"` in the upstream request).
    pub upstream_name: String,
    /// SHA-256 (hex) of the weights the upstream serves, as stated by the operator.
    pub model_hash: String,
    pub max_context: u32,
    pub max_completion_tokens: u32,
}

/// Upstream engine configuration (already parsed; [`UpstreamEngine::new`] validates it).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `http://<ip>[:port][/prefix]`; the engine appends `/v1/chat/completions` or
    /// `/v1/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set (vLLM `--api-key`).
    pub api_key: Option<String>,
    pub models: Vec<UpstreamModel>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// From sending the request to the first body bytes of the answer (covers queueing and
    /// prompt processing upstream).
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks after the first.
    pub idle_timeout: Duration,
    /// Largest single SSE event accepted.
    pub max_event_bytes: usize,
    /// Largest total response body accepted for one request.
    pub max_stream_bytes: u64,
}

impl UpstreamConfig {
    /// A configuration with default limits: connect 5 s, first byte 120 s, idle 60 s, events
    /// up to 1 MiB, responses up to 64 MiB.
    pub fn new(base_url: impl Into<String>, models: Vec<UpstreamModel>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            models,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            max_event_bytes: protocol::sse::DEFAULT_MAX_EVENT,
            max_stream_bytes: 64 << 20,
        }
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .finish()
    }
}

/// Invalid upstream configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream base url {url}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("upstream model {model}: model hash must be 64 hex digits, got {hash:?}")]
    BadHash { model: String, hash: String },
    #[error("upstream model {model} is configured twice")]
    DuplicateModel { model: String },
    #[error("upstream model {model}: {field} must be positive")]
    Zero { model: String, field: &'static str },
    #[error("upstream: no models configured")]
    NoModels,
    #[error("upstream api key is not a valid header value")]
    BadApiKey,
}

/// Where requests go: `http://{authority}{prefix}/v1/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BaseUrl {
    authority: String,
    prefix: String,
}

/// Parses `http://<ip literal>[:port][/prefix]`.
fn parse_base_url(url: &str) -> Result<BaseUrl, UpstreamConfigError> {
    let bad = |reason| UpstreamConfigError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a url"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("scheme must be http"));
    }
    if uri.query().is_some() {
        return Err(bad("query not allowed"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info not allowed"));
    }
    let host = authority.host();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if literal.parse::<IpAddr>().is_err() {
        return Err(bad("host must be an ip literal (no dns in the guest)"));
    }
    Ok(BaseUrl {
        authority: authority.as_str().to_string(),
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

/// Which OpenAI endpoint a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completion => "/v1/completions",
        }
    }
}

/// What this engine cannot relay: it reads only text from the upstream's stream, so tool calls
/// and log probabilities would be lost. Tools shown with `tool_choice: "none"` are fine.
fn unsupported(req: &GenerationRequest) -> Option<EngineError> {
    if req.sampling.top_logprobs.is_some() {
        return Some(EngineError::Unsupported(
            "logprobs: not supported by this model's upstream engine".into(),
        ));
    }
    if !req.tools.is_empty() && req.tool_choice != ToolChoice::None {
        return Some(EngineError::Unsupported(
            "tools: tool calls are not supported by this model's upstream engine \
             (tool_choice \"none\" is)"
                .into(),
        ));
    }
    None
}

/// The upstream request body for `req`, with the model renamed to `upstream_model`.
fn request_body(req: &GenerationRequest, upstream_model: &str) -> Value {
    let s = &req.sampling;
    let mut body = json!({
        "model": upstream_model,
        "stream": true,
        "stream_options": { "include_usage": true },
        "max_tokens": s.max_tokens,
        // `None` (callers other than validation, which fills in OpenAI's 1) is greedy.
        "temperature": s.temperature.filter(|t| *t > 0.0).unwrap_or(0.0),
    });
    match &req.input {
        Input::Chat(msgs) => {
            let msgs: Vec<Value> = msgs.iter().map(message).collect();
            body["messages"] = Value::Array(msgs);
        }
        Input::Prompt(p) => body["prompt"] = Value::String(p.clone()),
    }
    if let Some(p) = s.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    if !s.stop.is_empty() {
        body["stop"] = json!(s.stop);
    }
    if let Some(p) = s.presence_penalty {
        body["presence_penalty"] = json!(p);
    }
    if let Some(p) = s.frequency_penalty {
        body["frequency_penalty"] = json!(p);
    }
    if !s.logit_bias.is_empty() {
        let bias: serde_json::Map<String, Value> = s
            .logit_bias
            .iter()
            .map(|(id, b)| (id.to_string(), json!(b)))
            .collect();
        body["logit_bias"] = Value::Object(bias);
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        body["tools"] = Value::Array(tools);
        body["tool_choice"] = json!("none");
    }
    match &req.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => body["response_format"] = json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => {
            body["response_format"] = json!({"type": "json_schema", "json_schema": {
                "name": name, "schema": schema, "strict": strict}});
        }
    }
    body
}

/// A chat message as OpenAI-compatible servers take it (tool history included).
fn message(m: &Message) -> Value {
    let mut v = json!({ "role": m.role, "content": m.content });
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        v["tool_calls"] = Value::Array(calls);
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

fn upstream(msg: impl Into<String>) -> EngineError {
    EngineError::Upstream(msg.into())
}

/// `bytes` as printable text of at most [`ERROR_BODY_CHARS`] characters.
fn quote_body(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(ERROR_BODY_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(ERROR_BODY_CHARS).is_some() {
        out.push('…');
    }
    out.trim().to_string()
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// What the upstream's events have told us so far.
#[derive(Debug)]
struct StreamState {
    kind: Kind,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
}

fn count(v: &Value, field: &str) -> Result<u64, EngineError> {
    v.get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| upstream(format!("usage without a valid {field}")))
}

fn parse_usage(u: &Value) -> Result<Usage, EngineError> {
    let prompt_tokens = count(u, "prompt_tokens")?;
    let completion_tokens = count(u, "completion_tokens")?;
    let detail = |outer: &str, inner: &str| {
        u.get(outer)
            .and_then(|d| d.get(inner))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Usage {
        prompt_tokens,
        cached_tokens: detail("prompt_tokens_details", "cached_tokens").min(prompt_tokens),
        completion_tokens,
        reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens")
            .min(completion_tokens),
    })
}

impl StreamState {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            usage: None,
            finish: None,
        }
    }

    /// Takes one event (not `[DONE]`); returns the text it carries, if any.
    fn on_event(&mut self, ev: &Event) -> Result<Option<String>, EngineError> {
        match ev.name.as_deref() {
            None | Some("message") => {}
            Some("error") => {
                return Err(upstream(format!(
                    "error event: {}",
                    quote_body(ev.data.as_bytes())
                )))
            }
            Some(_) => return Ok(None),
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| upstream(format!("malformed event: {e}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .map(|m| m.as_bytes().to_vec())
                .unwrap_or_else(|| err.to_string().into_bytes());
            return Err(upstream(format!("error in stream: {}", quote_body(&msg))));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(parse_usage(u)?);
        }
        let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return Ok(None);
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(match reason {
                "length" => FinishReason::Length,
                _ => FinishReason::Stop,
            });
        }
        let text = match self.kind {
            Kind::Chat => choice.get("delta").and_then(|d| d.get("content")),
            Kind::Completion => choice.get("text"),
        };
        Ok(text
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string))
    }

    /// The final chunk, once the stream has ended.
    fn finish(self, max_tokens: u32) -> Result<Chunk, EngineError> {
        let usage = self
            .usage
            .ok_or_else(|| upstream("upstream sent no usage"))?;
        if usage.completion_tokens > u64::from(max_tokens) {
            return Err(upstream(format!(
                "upstream reported {} completion tokens for max_tokens {max_tokens}",
                usage.completion_tokens
            )));
        }
        // Upstreams always send a finish reason; if one did not, infer it from the count.
        let finish_reason =
            self.finish
                .unwrap_or(if usage.completion_tokens >= u64::from(max_tokens) {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                });
        Ok(Chunk::Done {
            usage,
            finish_reason,
        })
    }
}

/// An [`Engine`] that forwards to an OpenAI-compatible server.
pub struct UpstreamEngine {
    base: BaseUrl,
    auth: Option<http::HeaderValue>,
    models: Vec<UpstreamModel>,
    client: Client<HttpConnector, Full<Bytes>>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_event_bytes: usize,
    max_stream_bytes: u64,
}

impl fmt::Debug for UpstreamEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamEngine")
            .field("base", &self.base)
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

/// How one upstream exchange ended.
enum Outcome {
    Done(Chunk),
    /// The receiver went away.
    Cancelled,
}

impl UpstreamEngine {
    /// Validates `cfg` and builds the HTTP client (no connection is made yet).
    pub fn new(cfg: UpstreamConfig) -> Result<Self, UpstreamConfigError> {
        let base = parse_base_url(&cfg.base_url)?;
        if cfg.models.is_empty() {
            return Err(UpstreamConfigError::NoModels);
        }
        for (i, m) in cfg.models.iter().enumerate() {
            let hex_ok =
                m.model_hash.len() == 64 && m.model_hash.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(UpstreamConfigError::BadHash {
                    model: m.name.clone(),
                    hash: m.model_hash.clone(),
                });
            }
            for (field, v) in [
                ("max_context", m.max_context),
                ("max_completion_tokens", m.max_completion_tokens),
            ] {
                if v == 0 {
                    return Err(UpstreamConfigError::Zero {
                        model: m.name.clone(),
                        field,
                    });
                }
            }
            if cfg.models[..i].iter().any(|o| o.name == m.name) {
                return Err(UpstreamConfigError::DuplicateModel {
                    model: m.name.clone(),
                });
            }
        }
        let auth = cfg
            .api_key
            .as_ref()
            .map(|k| {
                let mut v = http::HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| UpstreamConfigError::BadApiKey)?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            auth,
            models: cfg.models,
            client,
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
            max_event_bytes: cfg.max_event_bytes,
            max_stream_bytes: cfg.max_stream_bytes,
        })
    }

    fn http_request(&self, kind: Kind, body: Vec<u8>) -> Result<Request<Full<Bytes>>, EngineError> {
        let uri = format!(
            "http://{}{}{}",
            self.base.authority,
            self.base.prefix,
            kind.path()
        );
        let mut builder = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream");
        if let Some(a) = &self.auth {
            builder = builder.header(AUTHORIZATION, a.clone());
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| upstream(format!("building request: {e}")))
    }

    /// Sends `request` and streams the answer into `tx`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        kind: Kind,
        max_tokens: u32,
        tx: &mpsc::Sender<Result<Chunk, EngineError>>,
        meter: &Meter,
    ) -> Result<Outcome, EngineError> {
        let mut deadline = Instant::now() + self.first_byte_timeout;
        let response = tokio::select! {
            biased;
            _ = tx.closed() => return Ok(Outcome::Cancelled),
            r = timeout_at(deadline, self.client.request(request)) => r,
        };
        let response = match response {
            Err(_) => {
                return Err(upstream(format!(
                    "no response within {:?}",
                    self.first_byte_timeout
                )))
            }
            Ok(Err(e)) => return Err(upstream(format!("request failed: {}", error_chain(&e)))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let body = self.read_error_body(response.into_body()).await;
            return Err(upstream(format!(
                "status {}: {}",
                status.as_u16(),
                quote_body(&body)
            )));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(upstream(format!(
                "expected text/event-stream, got content-type {:?}",
                quote_body(content_type.as_bytes())
            )));
        }
        let mut body = response.into_body();
        let mut decoder = Decoder::new(self.max_event_bytes);
        let mut state = StreamState::new(kind);
        let mut total: u64 = 0;
        loop {
            let frame = tokio::select! {
                biased;
                _ = tx.closed() => return Ok(Outcome::Cancelled),
                f = timeout_at(deadline, body.frame()) => f,
            };
            let frame = match frame {
                Err(_) => return Err(upstream("response stalled")),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(upstream(format!("reading response: {}", error_chain(&e))))
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            deadline = Instant::now() + self.idle_timeout;
            total = total.saturating_add(data.len() as u64);
            if total > self.max_stream_bytes {
                return Err(upstream(format!(
                    "response larger than {} bytes",
                    self.max_stream_bytes
                )));
            }
            let events = decoder.feed(&data).map_err(|e| upstream(e.to_string()))?;
            for ev in events {
                if ev.is_done() {
                    // Read the rest of the body in the background so that the connection can
                    // go back to the pool.
                    tokio::spawn(drain(body, self.idle_timeout));
                    return state.finish(max_tokens).map(Outcome::Done);
                }
                let text = state.on_event(&ev)?;
                // The upstream's own count when it reports usage as it goes (vLLM's
                // `continuous_usage_stats`), else one token per text event, a lower bound.
                match state.usage {
                    Some(u) => {
                        meter.prompt(u.prompt_tokens);
                        meter.completion(u.completion_tokens);
                    }
                    None if text.is_some() => meter.completion_token(),
                    None => {}
                }
                if let Some(text) = text {
                    if tx.send(Ok(Chunk::Text(text))).await.is_err() {
                        return Ok(Outcome::Cancelled);
                    }
                }
            }
        }
        state.finish(max_tokens).map(Outcome::Done)
    }

    /// Up to [`ERROR_BODY_READ`] bytes of an error response (whatever arrives in time).
    async fn read_error_body(&self, mut body: Incoming) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Instant::now() + self.idle_timeout;
        while out.len() < ERROR_BODY_READ {
            match timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let room = ERROR_BODY_READ - out.len();
                        out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                _ => break,
            }
        }
        out
    }
}

/// Discards what is left of `body` (at most for `limit`).
async fn drain(mut body: Incoming, limit: Duration) {
    let rest = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(limit, rest).await;
}

#[async_trait::async_trait]
impl Engine for UpstreamEngine {
    fn models(&self) -> Vec<ModelAdvert> {
        self.models
            .iter()
            .map(|m| ModelAdvert {
                name: m.name.clone(),
                model_hash: m.model_hash.to_ascii_lowercase(),
                max_context: m.max_context,
                max_completion_tokens: m.max_completion_tokens,
            })
            .collect()
    }

    async fn generate(
        &self,
        req: GenerationRequest,
        tx: mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<(), EngineError> {
        let Some(model) = self.models.iter().find(|m| m.name == req.model) else {
            return Err(EngineError::UnknownModel(req.model));
        };
        if let Some(e) = unsupported(&req) {
            return Err(e);
        }
        let kind = match req.input {
            Input::Chat(_) => Kind::Chat,
            Input::Prompt(_) => Kind::Completion,
        };
        let max_tokens = req.sampling.max_tokens;
        let result = match serde_json::to_vec(&request_body(&req, &model.upstream_name)) {
            Ok(body) => match self.http_request(kind, body) {
                Ok(request) => {
                    self.exchange(request, kind, max_tokens, &tx, &req.meter)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(upstream(format!("encoding request: {e}"))),
        };
        match result {
            Ok(Outcome::Done(done)) => {
                let _ = tx.send(Ok(done)).await;
                Ok(())
            }
            Ok(Outcome::Cancelled) => Ok(()),
            Err(e) => {
                let _ = tx.send(Err(e.clone())).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sampling;

    fn sampling() -> Sampling {
        Sampling {
            max_tokens: 16,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: vec![],
            top_logprobs: None,
        }
    }

    #[test]
    fn prompt_body_is_greedy_by_default() {
        let req = GenerationRequest {
            model: "m".into(),
            input: Input::Prompt("once upon".into()),
            sampling: sampling(),
            max_prompt_tokens: None,
            meter: Default::default(),
            tools: vec![],
            tool_choice: Default::default(),
            response_format: Default::default(),
        };
        let b = request_body(&req, "m");
        assert_eq!(b["prompt"], "once upon");
        assert_eq!(b["temperature"], 0.0);
        for absent in ["messages", "top_p", "seed", "stop", "presence_penalty"] {
            assert!(b.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn chat_body_relays_tool_history_formats_and_bias() {
        let mut s = sampling();
        s.logit_bias = vec![(7, -100.0), (42, 2.5)];
        s.temperature = Some(1.0);
        let req = GenerationRequest {
            model: "m".into(),
            input: Input::Chat(vec![
                Message {
                    role: "assistant".into(),
                    content: String::new(),
                    tool_calls: vec![crate::engine::ToolCall {
                        id: "call_1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
                Message {
                    role: "tool".into(),
                    content: "42".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("call_1".into()),
                },
            ]),
            sampling: s,
            max_prompt_tokens: None,
            meter: Default::default(),
            tools: vec![crate::engine::ToolSpec {
                name: "f".into(),
                description: Some("d".into()),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: ToolChoice::None,
            response_format: ResponseFormat::JsonSchema {
                name: "n".into(),
                schema: json!({"type": "object"}),
                strict: true,
            },
        };
        assert!(unsupported(&req).is_none());
        let b = request_body(&req, "m");
        assert_eq!(b["temperature"], 1.0);
        assert_eq!(
            b["messages"],
            json!([
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"}
            ])
        );
        assert_eq!(b["logit_bias"], json!({"7": -100.0, "42": 2.5}));
        assert_eq!(
            b["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d",
                                                     "parameters": {"type": "object"}}}])
        );
        assert_eq!(b["tool_choice"], "none");
        assert_eq!(
            b["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "n",
                   "schema": {"type": "object"}, "strict": true}})
        );
        // What the engine cannot relay back is refused, not dropped.
        let mut r = req.clone();
        r.tool_choice = ToolChoice::Auto;
        assert!(
            matches!(unsupported(&r), Some(EngineError::Unsupported(m)) if m.contains("tools"))
        );
        let mut r = req;
        r.sampling.top_logprobs = Some(0);
        assert!(
            matches!(unsupported(&r), Some(EngineError::Unsupported(m)) if m.contains("logprobs"))
        );
    }

    #[test]
    fn events_give_text_reason_and_usage() {
        let mut s = StreamState::new(Kind::Chat);
        let ev = |d: &str| Event::data(d);
        assert_eq!(
            s.on_event(&ev(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#
            ))
            .unwrap(),
            None
        );
        assert_eq!(
            s.on_event(&ev(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#))
                .unwrap()
                .as_deref(),
            Some("Hel")
        );
        s.on_event(&ev(
            r#"{"choices":[{"delta":{"content":""},"finish_reason":"length"}]}"#,
        ))
        .unwrap();
        s.on_event(&ev(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":16,
            "prompt_tokens_details":{"cached_tokens":9},"completion_tokens_details":{"reasoning_tokens":3}}}"#))
            .unwrap();
        let Chunk::Done {
            usage,
            finish_reason,
        } = s.finish(16).unwrap()
        else {
            panic!("not done");
        };
        assert_eq!(finish_reason, FinishReason::Length);
        // cached is clamped to the prompt
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 5,
                cached_tokens: 5,
                completion_tokens: 16,
                reasoning_tokens: 3
            }
        );
    }

    #[test]
    fn completion_text_and_errors() {
        let mut s = StreamState::new(Kind::Completion);
        assert_eq!(
            s.on_event(&Event::data(
                r#"{"choices":[{"text":" there","finish_reason":null}]}"#
            ))
            .unwrap()
            .as_deref(),
            Some(" there")
        );
        assert!(s.on_event(&Event::data("{not json")).is_err());
        assert!(s
            .on_event(&Event::data(r#"{"error":{"message":"boom"}}"#))
            .unwrap_err()
            .to_string()
            .contains("boom"));
        assert!(s.on_event(&Event::named("error", "x")).is_err());
        assert_eq!(s.on_event(&Event::named("ping", "x")).unwrap(), None);
        assert_eq!(
            StreamState::new(Kind::Chat).finish(4).unwrap_err(),
            EngineError::Upstream("upstream sent no usage".into())
        );
        let mut over = StreamState::new(Kind::Chat);
        over.on_event(&Event::data(
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":5}}"#,
        ))
        .unwrap();
        assert!(over.finish(4).is_err());
        assert!(StreamState::new(Kind::Chat)
            .on_event(&Event::data(r#"{"usage":{"prompt_tokens":1}}"#))
            .is_err());
    }

    #[test]
    fn error_bodies_are_truncated_and_printable() {
        let long = "x".repeat(2000) + "\n";
        let q = quote_body(long.as_bytes());
        assert_eq!(q.chars().count(), ERROR_BODY_CHARS + 1);
        assert_eq!(quote_body(b"a\nb\x00c"), "a b c");
    }
}
