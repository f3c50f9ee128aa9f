//! Validation of OpenAI request bodies, inside the TEE.
//!
//! # Trust boundary
//!
//! The body arrives from the proxy, which passes the client's bytes through untouched (and may
//! later not even be able to read them: bodies can be end-to-end encrypted to the worker). It
//! is therefore untrusted input, checked here and nowhere else: a field allowlist per endpoint,
//! duplicate keys anywhere in the document rejected (serde_json's `Value` silently keeps the
//! last one, so two parsers could disagree about what a request says), value ranges, and the
//! `max_tokens` clamp. The routing metadata (headers) comes from the proxy and is validated by
//! [`protocol::RequestMeta::from_headers`]; the body's `model` must agree with it.
//!
//! Pure: bytes and metadata in, an [`engine::GenerationRequest`](crate::engine) or a typed
//! [`ApiError`] out.
//!
//! # Rules
//!
//! * Endpoints: `/v1/chat/completions` and `/v1/completions` only.
//! * Body at most [`MAX_BODY_BYTES`] (413), JSON object (400), no duplicate keys (400 naming
//!   the key and where it is).
//! * Chat fields: `model`, `messages`, `max_tokens`, `max_completion_tokens`, `temperature`,
//!   `top_p`, `n`, `stream`, `stream_options`, `stop`, `seed`, `presence_penalty`,
//!   `frequency_penalty`, `user`. Completions: `model`, `prompt`, `max_tokens`,
//!   `temperature`, `top_p`, `n`, `stream`, `stream_options`, `stop`, `seed`,
//!   `presence_penalty`, `frequency_penalty`, `user`, `echo`. Anything else: 400 naming it.
//!   An optional field given as `null` counts as absent.
//! * `messages`: 1..=[`MAX_MESSAGES`] objects of `role` (system, user, assistant), `content`
//!   (a string or an array of `{"type": "text", "text": …}` parts, joined with `\n`) and an
//!   optional `name` (ignored).
//! * `prompt`: a string. `echo`: `false` only. `n`: 1 only. `temperature` in 0..=2, `top_p`
//!   in (0, 1], penalties in -2..=2, `seed` a non-negative integer, `stop` a non-empty string
//!   or an array of at most 4 of them, `stream_options` `{"include_usage": bool}`,
//!   `user` a string (ignored).
//! * `model` must equal the `cocoon-model` header and be served here (404 `model_not_found`).
//! * Completion tokens: min(`max_tokens` / `max_completion_tokens` (the smaller if both are
//!   given; absent = unbounded), the proxy's `cocoon-max-tokens`, the model's
//!   `max_completion_tokens`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use protocol::{ApiError, Endpoint, ErrorKind, ModelAdvert, RequestMeta};
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::engine::{GenerationRequest, Input, Message, Sampling};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = protocol::MAX_REQUEST_BODY;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 1024;
/// Most stop sequences.
pub const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_LEN: usize = 256;

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
];

const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "echo",
];

const MESSAGE_FIELDS: &[&str] = &["role", "content", "name"];
const ROLES: &[&str] = &["system", "user", "assistant"];

/// A request that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRequest {
    pub endpoint: Endpoint,
    pub request: GenerationRequest,
    /// Whether the caller asked for a stream (the worker always streams; the client library
    /// assembles a single response when this is false).
    pub stream: bool,
    /// `stream_options.include_usage`: add an OpenAI usage chunk before the end.
    pub include_usage: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// Validates `body` for `endpoint`, with the request's header metadata and the models served
/// here (see the module docs for every rule).
pub fn validate(
    endpoint: Endpoint,
    meta: &RequestMeta,
    body: &[u8],
    models: &[ModelAdvert],
) -> Result<ValidatedRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "request body of {} bytes exceeds the limit of {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let mut obj = match parse_strict(body)? {
        Value::Object(m) => m,
        _ => {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "request body must be a json object",
            ))
        }
    };
    // `null` means "not given" for every optional field.
    obj.retain(|_, v| !v.is_null());
    let allowed = match endpoint {
        Endpoint::ChatCompletions => CHAT_FIELDS,
        Endpoint::Completions => COMPLETION_FIELDS,
    };
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            unknown,
            format!(
                "unknown field `{}` for {}",
                truncate(unknown, 64),
                endpoint.path()
            ),
        ));
    }

    let model = match obj.get("model") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("model", "model: expected a string")),
        None => return Err(invalid("model", "missing field `model`")),
    };
    if model != meta.model {
        return Err(ApiError::new(
            ErrorKind::ModelNotFound,
            format!(
                "model {:?} in the body does not match the cocoon-model header {:?}",
                truncate(model, 128),
                meta.model
            ),
        )
        .with_param("model"));
    }
    let advert = models.iter().find(|m| m.name == model).ok_or_else(|| {
        ApiError::new(
            ErrorKind::ModelNotFound,
            format!("model {:?} is not served by this worker", meta.model),
        )
        .with_param("model")
    })?;

    let input = match endpoint {
        Endpoint::ChatCompletions => Input::Chat(messages(&obj)?),
        Endpoint::Completions => {
            if let Some(v) = obj.get("echo") {
                if v.as_bool() != Some(false) {
                    return Err(invalid("echo", "echo: only false is supported"));
                }
            }
            match obj.get("prompt") {
                Some(Value::String(s)) => Input::Prompt(s.clone()),
                Some(_) => return Err(invalid("prompt", "prompt: expected a string")),
                None => return Err(invalid("prompt", "missing field `prompt`")),
            }
        }
    };

    if let Some(v) = obj.get("n") {
        if v.as_u64() != Some(1) {
            return Err(invalid("n", "n: only 1 is supported"));
        }
    }
    if let Some(v) = obj.get("user") {
        if !v.is_string() {
            return Err(invalid("user", "user: expected a string"));
        }
    }
    let stream = match obj.get("stream") {
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("stream", "stream: expected a boolean"))?,
        None => false,
    };
    let include_usage = stream_options(obj.get("stream_options"))?;

    let mut requested: Option<u64> = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = obj.get(field) {
            let n = v
                .as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid(field, format!("{field}: expected an integer >= 1")))?;
            requested = Some(requested.map_or(n, |r| r.min(n)));
        }
    }
    let max_tokens = requested
        .unwrap_or(u64::MAX)
        .min(u64::from(meta.max_tokens))
        .min(u64::from(advert.max_completion_tokens));
    // Both bounds on the right are u32, so the minimum fits.
    let max_tokens = u32::try_from(max_tokens).unwrap_or(u32::MAX);

    let sampling = Sampling {
        max_tokens,
        temperature: number(&obj, "temperature", |t| (0.0..=2.0).contains(&t), "0..=2")?,
        top_p: number(&obj, "top_p", |p| p > 0.0 && p <= 1.0, "(0, 1]")?,
        seed: match obj.get("seed") {
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| invalid("seed", "seed: expected a non-negative integer"))?,
            ),
            None => None,
        },
        stop: stop(obj.get("stop"))?,
        presence_penalty: penalty(&obj, "presence_penalty")?,
        frequency_penalty: penalty(&obj, "frequency_penalty")?,
        logit_bias: vec![],
        top_logprobs: None,
    };
    let request = GenerationRequest {
        model: model.to_string(),
        input,
        sampling,
        max_prompt_tokens: None,
        tools: vec![],
        tool_choice: Default::default(),
        response_format: Default::default(),
    };
    // The map is no longer needed; drop it before returning (it may be large).
    obj.clear();
    Ok(ValidatedRequest {
        endpoint,
        request,
        stream,
        include_usage,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn number(
    obj: &Map<String, Value>,
    field: &str,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<Option<f64>, ApiError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if ok(x) => Ok(Some(x)),
            _ => Err(invalid(
                field,
                format!("{field}: expected a number in {range}"),
            )),
        },
    }
}

fn penalty(obj: &Map<String, Value>, field: &str) -> Result<Option<f32>, ApiError> {
    Ok(number(obj, field, |p| (-2.0..=2.0).contains(&p), "-2..=2")?.map(|p| p as f32))
}

fn stream_options(v: Option<&Value>) -> Result<bool, ApiError> {
    let Some(v) = v else {
        return Ok(false);
    };
    let o = v
        .as_object()
        .ok_or_else(|| invalid("stream_options", "stream_options: expected an object"))?;
    let mut include = false;
    for (k, v) in o {
        if k != "include_usage" {
            return Err(invalid(
                "stream_options",
                format!("unknown field `stream_options.{}`", truncate(k, 64)),
            ));
        }
        if !v.is_null() {
            include = v.as_bool().ok_or_else(|| {
                invalid(
                    "stream_options",
                    "stream_options.include_usage: expected a boolean",
                )
            })?;
        }
    }
    Ok(include)
}

fn stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let one = |v: &Value| -> Result<String, ApiError> {
        match v {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_STOP_LEN => Ok(s.clone()),
            _ => Err(invalid(
                "stop",
                format!("stop: expected strings of 1..={MAX_STOP_LEN} bytes"),
            )),
        }
    };
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items.iter().map(one).collect(),
        Some(Value::Array(items)) => Err(invalid(
            "stop",
            format!("stop: {} sequences, at most {MAX_STOP}", items.len()),
        )),
        Some(s) => Ok(vec![one(s)?]),
    }
}

fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let items = match obj.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("messages", "messages: expected an array")),
        None => return Err(invalid("messages", "missing field `messages`")),
    };
    if items.is_empty() || items.len() > MAX_MESSAGES {
        return Err(invalid(
            "messages",
            format!("messages: {} messages (1..={MAX_MESSAGES})", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let param = format!("messages[{i}]");
    let o = m
        .as_object()
        .ok_or_else(|| invalid(&param, format!("{param}: expected an object")))?;
    if let Some(k) = o.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
        return Err(invalid(
            &param,
            format!("unknown field `{}` in {param}", truncate(k, 64)),
        ));
    }
    let role = match o.get("role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
        _ => {
            return Err(invalid(
                &param,
                format!("{param}.role: expected one of {}", ROLES.join(", ")),
            ))
        }
    };
    match o.get("name") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid(&param, format!("{param}.name: expected a string"))),
    }
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| text_part(&param, j, p))
                .collect::<Result<Vec<_>, _>>()?;
            texts.join("\n")
        }
        _ => {
            return Err(invalid(
                &param,
                format!("{param}.content: expected a string or an array of text parts"),
            ))
        }
    };
    Ok(Message::text(role, content))
}

fn text_part<'a>(param: &str, j: usize, p: &'a Value) -> Result<&'a str, ApiError> {
    let at = format!("{param}.content[{j}]");
    let bad = || {
        invalid(
            param,
            format!("{at}: expected {{\"type\": \"text\", \"text\": <string>}}"),
        )
    };
    let o = p.as_object().ok_or_else(bad)?;
    if o.len() != 2 || o.get("type").and_then(Value::as_str) != Some("text") {
        return Err(bad());
    }
    o.get("text").and_then(Value::as_str).ok_or_else(bad)
}

/// Parses JSON into a [`Value`], rejecting duplicate object keys at any depth.
pub fn parse_strict(body: &[u8]) -> Result<Value, ApiError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = StrictSeed {
        path: Path::Root,
        dup: &dup,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => Err(match dup.into_inner() {
            Some(Duplicate { key, at }) => ApiError::new(
                ErrorKind::InvalidRequest,
                format!("duplicate key `{}` in {at}", truncate(&key, 64)),
            )
            .with_param(key),
            None => ApiError::new(ErrorKind::InvalidRequest, format!("malformed json: {e}")),
        }),
    }
}

struct Duplicate {
    key: String,
    /// Where the object is ("the request body", "messages[0]").
    at: String,
}

/// Where a value sits, built lazily (only formatted when a duplicate is found).
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("the request body"),
            Path::Key(Path::Root, k) => f.write_str(truncate(k, 64)),
            Path::Index(Path::Root, i) => write!(f, "[{i}]"),
            Path::Key(p, k) => write!(f, "{p}.{}", truncate(k, 64)),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

struct StrictSeed<'a, 'p> {
    path: Path<'p>,
    dup: &'a RefCell<Option<Duplicate>>,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = Path::Index(&self.path, out.len());
            let seed = StrictSeed {
                path,
                dup: self.dup,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let at = self.path.to_string();
                let msg = format!("duplicate key `{}`", truncate(&key, 64));
                *self.dup.borrow_mut() = Some(Duplicate { key, at });
                return Err(A::Error::custom(msg));
            }
            let path = Path::Key(&self.path, &key);
            let v = map.next_value_seed(StrictSeed {
                path,
                dup: self.dup,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests;
