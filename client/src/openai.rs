//! The OpenAI side of the client: the few request fields the client reads, and the two ways a
//! proxy event stream reaches an app.
//!
//! * [`Relay`] (the app asked for `stream: true`): OpenAI chunks pass through unchanged; cocoon
//!   events are dropped, except that `cocoon-usage` becomes the OpenAI usage chunk when the app
//!   asked for `stream_options.include_usage` and `cocoon-error` becomes an OpenAI error event
//!   (`data: {"error": {...}}`) that ends the stream. Usage-only chunks from upstream are
//!   dropped: the usage an app sees is exactly the one the proxy bills.
//! * [`Aggregator`] (`stream: false`): the chunks are merged into one `chat.completion` or
//!   `text_completion` object with `usage` from the `cocoon-usage` event: chat `message.content`
//!   (`null` when the model only called tools), `message.tool_calls` (deltas merged by
//!   `index`), `logprobs.content`; completions `text` and the legacy `logprobs` (`tokens`,
//!   `token_logprobs`, `top_logprobs`, `text_offset` concatenated); one choice per `index`
//!   (a completions batch has several); `finish_reason` as the last chunk of each choice
//!   said (`tool_calls` included).
//!
//! * [`responses::ResponseStream`] (OpenAI's Responses API, `POST /v1/responses`): the chat
//!   stream of a translated request becomes Responses events, or the one response object
//!   they end with.
//!
//! Upstream events are untrusted: malformed ones become [`ApiError`]s of kind `upstream`.

use std::collections::BTreeMap;

use protocol::meta::{check_model, MAX_TOKENS_LIMIT};
use protocol::sse::{Event, EVENT_ERROR, EVENT_USAGE};
use protocol::{ApiError, Endpoint, ErrorKind, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub mod responses;

/// Largest aggregated response (text plus tool-call arguments), in bytes.
pub const MAX_AGGREGATE: usize = 64 << 20;

/// What the client reads from a request body: the rest passes through unread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFields {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// The completion tokens the whole request may use, if the body says: the smaller of
    /// `max_completion_tokens` and `max_tokens`, times the number of choices: `n` (a positive
    /// integer, else 1) for each prompt of a completions batch (`prompt` as a list), at most
    /// [`MAX_TOKENS_LIMIT`]. `None` when neither is given.
    pub max_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    prompt: Option<Shape>,
    #[serde(default)]
    n: Option<Shape>,
}

/// The shape of a field the client counts with but does not check (its shape is the worker's
/// to check; nothing of it is kept here): a list's length, a non-negative integer, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    List(u64),
    Integer(u64),
    Other,
}

impl Shape {
    /// How many prompts a completions `prompt` of this shape holds: a list's length, else 1.
    fn prompts(self) -> u64 {
        match self {
            Self::List(n) => n.max(1),
            _ => 1,
        }
    }

    /// The choices per prompt an `n` of this shape asks for: a positive integer, else 1.
    fn choices(self) -> u64 {
        match self {
            Self::Integer(n) => n.max(1),
            _ => 1,
        }
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any json value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Shape, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Shape::List(n))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Shape, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Shape::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
            fn visit_i64<E>(self, n: i64) -> Result<Shape, E> {
                Ok(u64::try_from(n).map_or(Shape::Other, Shape::Integer))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Shape, E> {
                Ok(Shape::Integer(n))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Other)
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, msg)
}

impl RequestFields {
    /// Reads the fields from a JSON body (any other fields are skipped; the body must be one
    /// JSON object). Errors are `invalid_request` (HTTP 400).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(invalid("request body: expected a json object"));
        }
        let peek: Peek =
            serde_json::from_slice(body).map_err(|e| invalid(format!("request body: {e}")))?;
        let model = peek
            .model
            .ok_or_else(|| invalid("model: required").with_param("model"))?;
        check_model(&model)?;
        let mut max_tokens: Option<u32> = None;
        for (value, param) in [
            (peek.max_completion_tokens, "max_completion_tokens"),
            (peek.max_tokens, "max_tokens"),
        ] {
            let Some(n) = value else { continue };
            let n = u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_TOKENS_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid(format!("{param}: {n} outside 1..={MAX_TOKENS_LIMIT}"))
                        .with_param(param)
                })?;
            max_tokens = Some(max_tokens.map_or(n, |m| m.min(n)));
        }
        // Each choice (`n` per prompt of a batch) generates up to max_tokens: reserve for all.
        let choices = peek
            .prompt
            .map_or(1, Shape::prompts)
            .saturating_mul(peek.n.map_or(1, Shape::choices));
        let max_tokens = max_tokens.map(|n| {
            u32::try_from(u64::from(n).saturating_mul(choices))
                .unwrap_or(u32::MAX)
                .min(MAX_TOKENS_LIMIT)
        });
        Ok(Self {
            model,
            stream: peek.stream.unwrap_or(false),
            include_usage: peek
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            max_tokens,
        })
    }
}

/// The error an event carries, if it is one: a `cocoon-error` event, or an OpenAI chunk with an
/// `error` member.
pub fn event_error(ev: &Event) -> Option<ApiError> {
    match ev.name.as_deref() {
        Some(EVENT_ERROR) => Some(ApiError::from_json(502, ev.data.as_bytes())),
        Some(_) => None,
        None if ev.is_done() => None,
        None => {
            let v: Value = serde_json::from_str(&ev.data).ok()?;
            v.get("error")?;
            Some(ApiError::from_json(502, ev.data.as_bytes()))
        }
    }
}

fn parse_usage(ev: &Event) -> Result<Usage, ApiError> {
    serde_json::from_str(&ev.data).map_err(|e| {
        ApiError::new(
            ErrorKind::Upstream,
            format!("proxy usage event is malformed: {e}"),
        )
    })
}

fn parse_chunk(data: &str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            ErrorKind::Upstream,
            "proxy stream: chunk is not a json object",
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::Upstream,
            format!("proxy stream: chunk is not json: {e}"),
        )),
    }
}

/// A chunk that only carries usage (empty `choices`, non-null `usage`).
fn is_usage_only(chunk: &Map<String, Value>) -> bool {
    chunk.get("usage").is_some_and(|u| !u.is_null())
        && chunk
            .get("choices")
            .is_none_or(|c| c.as_array().is_some_and(|a| a.is_empty()))
}

/// The OpenAI error event that ends a stream.
pub fn error_event(err: &ApiError) -> Vec<u8> {
    Event::data(String::from_utf8_lossy(&err.to_json())).encode()
}

fn object_name(endpoint: Endpoint, streaming: bool) -> &'static str {
    match (endpoint, streaming) {
        (Endpoint::ChatCompletions, true) => "chat.completion.chunk",
        (Endpoint::ChatCompletions, false) => "chat.completion",
        (Endpoint::Completions, _) => "text_completion",
    }
}

/// Identity fields of the last chunk, reused for the synthesized usage chunk.
#[derive(Clone, Debug, Default)]
struct Ident {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    system_fingerprint: Option<Value>,
}

impl Ident {
    fn update(&mut self, chunk: &Map<String, Value>) {
        let take = |slot: &mut Option<Value>, key: &str| {
            if let Some(v) = chunk.get(key).filter(|v| !v.is_null()) {
                *slot = Some(v.clone());
            }
        };
        take(&mut self.id, "id");
        take(&mut self.created, "created");
        take(&mut self.model, "model");
        take(&mut self.system_fingerprint, "system_fingerprint");
    }

    fn fill(&self, out: &mut Map<String, Value>, object: &str) {
        out.insert("id".into(), self.id.clone().unwrap_or(json!("")));
        out.insert("object".into(), json!(object));
        out.insert("created".into(), self.created.clone().unwrap_or(json!(0)));
        out.insert("model".into(), self.model.clone().unwrap_or(json!("")));
        if let Some(f) = &self.system_fingerprint {
            out.insert("system_fingerprint".into(), f.clone());
        }
    }
}

/// What turns the proxy's event stream into the bytes an app reads ([`Relay`],
/// [`responses::ResponseStream`]).
pub trait StreamOut {
    /// Bytes to send to the app for `ev` (often none).
    fn on_event(&mut self, ev: &Event) -> Vec<u8>;
    /// Ends the stream with the error event of the API.
    fn on_error(&mut self, err: ApiError) -> Vec<u8>;
    /// The proxy ended the body: an error event unless the stream was complete.
    fn on_end(&mut self) -> Vec<u8>;
    fn is_finished(&self) -> bool;
    /// The billed usage, once the usage event arrived.
    fn usage(&self) -> Option<Usage>;
    /// The error that ended the stream, if any.
    fn error(&self) -> Option<&ApiError>;
    /// An error of this request as the app's API names it (answered before the stream
    /// starts).
    fn api_error(&self, err: ApiError) -> ApiError {
        err
    }
}

/// Relays a proxy stream to an app that asked for `stream: true` (see the module docs).
#[derive(Debug)]
pub struct Relay {
    endpoint: Endpoint,
    include_usage: bool,
    ident: Ident,
    usage: Option<Usage>,
    finished: bool,
    error: Option<ApiError>,
}

impl Relay {
    pub fn new(endpoint: Endpoint, include_usage: bool) -> Self {
        Self {
            endpoint,
            include_usage,
            ident: Ident::default(),
            usage: None,
            finished: false,
            error: None,
        }
    }

    fn usage_chunk(&self, u: &Usage) -> Vec<u8> {
        let mut out = Map::new();
        self.ident.fill(&mut out, object_name(self.endpoint, true));
        out.insert("choices".into(), json!([]));
        out.insert("usage".into(), u.to_openai());
        Event::data(Value::Object(out).to_string()).encode()
    }
}

impl StreamOut for Relay {
    fn on_event(&mut self, ev: &Event) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        if let Some(err) = event_error(ev) {
            return self.on_error(err);
        }
        match ev.name.as_deref() {
            Some(EVENT_USAGE) => match parse_usage(ev) {
                Ok(u) => {
                    tracing::debug!(
                        prompt_tokens = u.prompt_tokens,
                        completion_tokens = u.completion_tokens,
                        "usage event"
                    );
                    self.usage = Some(u);
                    if self.include_usage {
                        self.usage_chunk(&u)
                    } else {
                        Vec::new()
                    }
                }
                Err(e) => self.on_error(e),
            },
            Some(_) => Vec::new(),
            None if ev.is_done() => {
                self.finished = true;
                ev.encode()
            }
            None => match parse_chunk(&ev.data) {
                Ok(chunk) => {
                    self.ident.update(&chunk);
                    if is_usage_only(&chunk) {
                        Vec::new()
                    } else {
                        ev.encode()
                    }
                }
                Err(e) => self.on_error(e),
            },
        }
    }

    /// Ends the stream with an OpenAI error event.
    fn on_error(&mut self, err: ApiError) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let out = error_event(&err);
        self.error = Some(err);
        out
    }

    fn on_end(&mut self) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        self.on_error(ApiError::new(
            ErrorKind::Upstream,
            "proxy stream ended before [DONE]",
        ))
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn error(&self) -> Option<&ApiError> {
        self.error.as_ref()
    }
}

#[derive(Debug, Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    reasoning_content: Option<String>,
    text: String,
    finish_reason: Option<Value>,
    /// Chat: `logprobs.content` entries.
    logprobs: Vec<Value>,
    /// Completions: the legacy `logprobs` arrays, concatenated.
    legacy: Option<LegacyLogprobs>,
    tool_calls: BTreeMap<u64, ToolCall>,
}

/// The legacy completions `logprobs` object.
#[derive(Debug, Default)]
struct LegacyLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
}

impl LegacyLogprobs {
    /// Appends a chunk's arrays; returns about how many bytes they hold.
    fn extend(&mut self, lp: &Map<String, Value>) -> usize {
        let mut added = 0;
        for (key, slot) in [
            ("tokens", &mut self.tokens),
            ("token_logprobs", &mut self.token_logprobs),
            ("top_logprobs", &mut self.top_logprobs),
            ("text_offset", &mut self.text_offset),
        ] {
            for v in lp.get(key).and_then(Value::as_array).into_iter().flatten() {
                added += json_size(v);
                slot.push(v.clone());
            }
        }
        added
    }

    fn into_json(self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// About how many bytes `v` takes as JSON (bounds what an aggregate holds).
fn json_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => a.iter().map(json_size).sum::<usize>() + 2,
        Value::Object(o) => {
            o.iter()
                .map(|(k, v)| k.len() + 3 + json_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

fn append(slot: &mut Option<String>, v: Option<&Value>) -> usize {
    match v.and_then(Value::as_str) {
        Some(s) => {
            slot.get_or_insert_with(String::new).push_str(s);
            s.len()
        }
        None => 0,
    }
}

/// Merges a proxy stream into one OpenAI response object (see the module docs).
#[derive(Debug)]
pub struct Aggregator {
    endpoint: Endpoint,
    ident: Ident,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Usage>,
    done: bool,
    size: usize,
}

impl Aggregator {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            ident: Ident::default(),
            choices: BTreeMap::new(),
            usage: None,
            done: false,
            size: 0,
        }
    }

    /// Adds one event; `Ok(true)` once the stream is complete (`[DONE]`).
    pub fn push(&mut self, ev: &Event) -> Result<bool, ApiError> {
        if let Some(err) = event_error(ev) {
            return Err(err);
        }
        match ev.name.as_deref() {
            Some(EVENT_USAGE) => {
                self.usage = Some(parse_usage(ev)?);
                Ok(false)
            }
            Some(_) => Ok(false),
            None if ev.is_done() => {
                self.done = true;
                Ok(true)
            }
            None => {
                let chunk = parse_chunk(&ev.data)?;
                self.merge(&chunk)?;
                Ok(false)
            }
        }
    }

    fn merge(&mut self, chunk: &Map<String, Value>) -> Result<(), ApiError> {
        self.ident.update(chunk);
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        for c in choices {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            if index > 1024 {
                return Err(ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy stream: choice index {index}"),
                ));
            }
            let choice = self.choices.entry(index).or_default();
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                choice.finish_reason = Some(f.clone());
            }
            let mut added = 0;
            if let Some(text) = c.get("text").and_then(Value::as_str) {
                choice.text.push_str(text);
                added += text.len();
            }
            match self.endpoint {
                Endpoint::ChatCompletions => {
                    if let Some(lp) = c.pointer("/logprobs/content").and_then(Value::as_array) {
                        added += lp.iter().map(json_size).sum::<usize>();
                        choice.logprobs.extend(lp.iter().cloned());
                    }
                }
                Endpoint::Completions => {
                    if let Some(lp) = c.get("logprobs").and_then(Value::as_object) {
                        added += choice
                            .legacy
                            .get_or_insert_with(Default::default)
                            .extend(lp);
                    }
                }
            }
            if let Some(delta) = c.get("delta").and_then(Value::as_object) {
                if let Some(r) = delta.get("role").and_then(Value::as_str) {
                    choice.role = Some(r.to_string());
                }
                added += append(&mut choice.content, delta.get("content"));
                added += append(&mut choice.refusal, delta.get("refusal"));
                added += append(
                    &mut choice.reasoning_content,
                    delta.get("reasoning_content"),
                );
                for tc in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let i = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let call = choice.tool_calls.entry(i).or_default();
                    if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
                        call.id = Some(id.clone());
                    }
                    if let Some(t) = tc.get("type").filter(|v| !v.is_null()) {
                        call.kind = Some(t.clone());
                    }
                    if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                        call.name.push_str(n);
                        added += n.len();
                    }
                    if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                        call.arguments.push_str(a);
                        added += a.len();
                    }
                }
            }
            self.size += added;
            if self.size > MAX_AGGREGATE {
                return Err(ApiError::new(
                    ErrorKind::Upstream,
                    format!("proxy stream: response larger than {MAX_AGGREGATE} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The billed usage, once the usage event arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The response object. Fails if the stream did not end with `[DONE]` or carried no usage.
    pub fn finish(self) -> Result<Value, ApiError> {
        if !self.done {
            return Err(ApiError::new(
                ErrorKind::Upstream,
                "proxy stream ended before [DONE]",
            ));
        }
        let usage = self.usage.ok_or_else(|| {
            ApiError::new(ErrorKind::Upstream, "proxy stream carried no usage event")
        })?;
        let mut out = Map::new();
        self.ident.fill(&mut out, object_name(self.endpoint, false));
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| match self.endpoint {
                Endpoint::ChatCompletions => chat_choice(index, c),
                Endpoint::Completions => json!({
                    "index": index,
                    "text": c.text,
                    "logprobs": c.legacy.map_or(Value::Null, LegacyLogprobs::into_json),
                    "finish_reason": c.finish_reason,
                }),
            })
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        out.insert("usage".into(), usage.to_openai());
        Ok(Value::Object(out))
    }
}

fn chat_choice(index: u64, c: Choice) -> Value {
    let mut message = Map::new();
    message.insert(
        "role".into(),
        json!(c.role.unwrap_or_else(|| "assistant".into())),
    );
    // `null` when the model only called tools (or refused), as OpenAI sends it; otherwise the
    // text, possibly empty.
    let content = match c.content {
        Some(t) => json!(t),
        None if !c.tool_calls.is_empty() || c.refusal.is_some() => Value::Null,
        None => json!(""),
    };
    message.insert("content".into(), content);
    if let Some(r) = c.refusal {
        message.insert("refusal".into(), json!(r));
    }
    if let Some(r) = c.reasoning_content {
        message.insert("reasoning_content".into(), json!(r));
    }
    if !c.tool_calls.is_empty() {
        let calls: Vec<Value> = c
            .tool_calls
            .into_values()
            .map(|t| {
                json!({
                    "id": t.id,
                    "type": t.kind.unwrap_or(json!("function")),
                    "function": { "name": t.name, "arguments": t.arguments },
                })
            })
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let logprobs = if c.logprobs.is_empty() {
        Value::Null
    } else {
        json!({ "content": c.logprobs })
    };
    json!({
        "index": index,
        "message": Value::Object(message),
        "logprobs": logprobs,
        "finish_reason": c.finish_reason,
    })
}

#[cfg(test)]
mod tests;
