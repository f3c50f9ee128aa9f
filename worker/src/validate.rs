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
//! [`ApiError`] out. `docs/openai-compatibility.md` has the same rules as a table per field
//! (a test checks the table names every field listed here).
//!
//! # Rules
//!
//! * Endpoints: `/v1/chat/completions` and `/v1/completions` only.
//! * Body at most [`MAX_BODY_BYTES`] (413), JSON object (400), no duplicate keys (400 naming
//!   the key and where it is).
//! * Every top-level field is honoured ([`CHAT_FIELDS`], [`COMPLETION_FIELDS`]), accepted and
//!   ignored ([`CHAT_IGNORED`], [`COMPLETION_IGNORED`]), or refused with 400 naming it: the
//!   allowlist stays strict so that nothing unchecked reaches an engine. An optional field
//!   given as `null` counts as absent (at the top level and inside messages).
//! * Accepted and ignored, because they cannot change what is generated (their shapes are
//!   still checked): `user`, `safety_identifier`, `prompt_cache_key` (strings); `store`
//!   (bool: nothing is stored); `metadata` (at most 16 string pairs, keys ≤ 64 and values ≤ 512
//!   bytes); `service_tier` (auto, default, flex, scale, priority: one tier here);
//!   `reasoning_effort` (none, minimal, low, medium, high: the served models do not reason);
//!   `parallel_tool_calls` (bool: the model makes as many calls as it makes; `false` is not
//!   enforced); `prediction` (`{"type": "content", "content": …}`, a latency hint);
//!   `modalities` (`["text"]` only); `stream_options.include_obfuscation` (no padding is
//!   added); a message's `name`; a content part's `cache_control` (an object); a function's
//!   `strict` (tool-call arguments are as constrained as the engine makes them).
//! * `messages`: 1..=[`MAX_MESSAGES`] objects of `role`, `content`, and per role:
//!   * `system`, `developer` (stored as `system`), `user`: `content` a string or an array of
//!     text parts `{"type": "text", "text": …}` (plus an optional `cache_control`), joined with
//!     `\n`. Image, audio and file parts are refused (text-only models).
//!   * `assistant`: `content` as above, or `null`/absent when the message has `tool_calls`
//!     (1..=[`MAX_TOOL_CALLS`] of `{"id", "type": "function", "function": {"name",
//!     "arguments": <string>}}`) or a `refusal` (a string, used as the content).
//!   * `tool`: `content` as above and `tool_call_id` (a non-empty string). Whether it answers
//!     an earlier call is not checked.
//! * `tools` (chat): at most [`MAX_TOOLS`] `{"type": "function", "function": {"name",
//!   "description", "parameters", "strict"}}`, names `^[a-zA-Z0-9_-]{1,64}$` and distinct,
//!   `parameters` a JSON Schema object (absent: `{"type": "object", "properties": {}}`),
//!   definitions at most [`MAX_TOOLS_BYTES`] in all.
//! * `tool_choice` (chat): `none`, `auto`, `required` or `{"type": "function", "function":
//!   {"name"}}` naming a given tool; `required` and a named function need tools. Absent: `auto`
//!   with tools, `none` without (OpenAI's defaults).
//! * `response_format` (chat): `{"type": "text"}`, `{"type": "json_object"}` or
//!   `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`
//!   (`name` as a tool name, `schema` an object of at most [`MAX_SCHEMA_BYTES`], `description`
//!   ignored).
//! * Log probabilities: chat `logprobs` (bool) and `top_logprobs` (0..=20, only with
//!   `logprobs: true`, as OpenAI requires); completions `logprobs` (an integer 0..=5, the
//!   legacy API). Both set [`Sampling::top_logprobs`].
//! * `logit_bias`: at most [`MAX_LOGIT_BIAS`] entries, keys token ids in decimal (canonical
//!   form: `"7"`, not `"07"`), values in -100..=100.
//! * `prompt` (completions): a string, or a list of 1..=[`MAX_PROMPTS`] strings (a batch: the
//!   worker runs them one after another; choice `i` answers prompt `i`, usage is summed).
//!   Token-id prompts are refused. `echo`: `false` only.
//! * `n` (both endpoints): 1..=[`MAX_CHOICES`] choices per prompt, at most [`MAX_CHOICES`]
//!   in all (`n` × prompts). The worker runs them one after another: choice `p·n + j` is the
//!   `j`-th run of prompt `p` (OpenAI's order), with `seed + j` when a seed is given, so
//!   choice 0 is the answer `n: 1` gives. Each run processes its prompt (the usage counts it
//!   per choice). Completions `best_of`: absent, or equal to `n` (no server-side selection).
//! * `temperature` in 0..=2, absent = 1 (OpenAI's default: sampling, not greedy); `top_p` in
//!   (0, 1], penalties in -2..=2, `seed` a non-negative integer, `stop` a non-empty string or an
//!   array of at most 4 of them, `stream_options` `{"include_usage": bool}`.
//! * `model` must equal the `cocoon-model` header and be served here (404 `model_not_found`).
//! * Completion tokens: the request's budget is min(the proxy's `cocoon-max-tokens`, the
//!   model's `max_completion_tokens`), split evenly over the request's choices (prompts × `n`);
//!   each choice gets min(`max_tokens` / `max_completion_tokens` (the smaller if both are
//!   given), its share).
//!   Absent = the whole share, and the engine also stops where the context ends
//!   (`finish_reason: "length"`): up to the context left, as OpenAI does.

mod chat;

use protocol::json::{parse_strict, truncate};
use protocol::{ApiError, Endpoint, ErrorKind, ModelAdvert, RequestMeta};
use serde_json::{Map, Value};

use crate::engine::{GenerationRequest, Input, Sampling, ToolChoice};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = protocol::MAX_REQUEST_BODY;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 1024;
/// Most stop sequences.
pub const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Most prompts in one completions batch.
pub const MAX_PROMPTS: usize = 16;
/// Most choices in one request: `n` × the prompts of a completions batch.
pub const MAX_CHOICES: usize = 16;
/// Most tools in one request.
pub const MAX_TOOLS: usize = 128;
/// Most bytes of tool definitions (names, descriptions and parameter schemas as JSON).
pub const MAX_TOOLS_BYTES: usize = 256 * 1024;
/// Largest `response_format` JSON schema, as JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Most tool calls in one assistant message.
pub const MAX_TOOL_CALLS: usize = 128;
/// Most `logit_bias` entries.
pub const MAX_LOGIT_BIAS: usize = 300;
/// Largest chat `top_logprobs`.
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// Largest completions `logprobs`.
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// Chat fields that shape the generation.
pub const CHAT_FIELDS: &[&str] = &[
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
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
];

/// Chat fields accepted (shape-checked) and ignored: they cannot change what is generated.
pub const CHAT_IGNORED: &[&str] = &[
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
    "parallel_tool_calls",
    "prediction",
    "modalities",
];

/// Completions fields that shape the generation.
pub const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "echo",
    "logprobs",
    "logit_bias",
];

/// Completions fields accepted (shape-checked) and ignored.
pub const COMPLETION_IGNORED: &[&str] = &["user"];

/// A request that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRequest {
    pub endpoint: Endpoint,
    /// The request; for a completions batch, the one for its first prompt.
    pub request: GenerationRequest,
    /// The prompts of a completions batch after the first (choices 1, 2, …), each run as
    /// `request` with this prompt. Empty unless `prompt` was a list of several strings.
    pub more_prompts: Vec<String>,
    /// Choices per prompt (`n`): each prompt runs this many times, as choices `p·n + j`.
    pub n: u32,
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
    let (allowed, ignored) = match endpoint {
        Endpoint::ChatCompletions => (CHAT_FIELDS, CHAT_IGNORED),
        Endpoint::Completions => (COMPLETION_FIELDS, COMPLETION_IGNORED),
    };
    for (k, v) in &obj {
        if ignored.contains(&k.as_str()) {
            check_ignored(k, v)?;
        } else if !allowed.contains(&k.as_str()) {
            return Err(invalid(
                k,
                format!(
                    "unknown field `{}` for {}",
                    truncate(k, 64),
                    endpoint.path()
                ),
            ));
        }
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

    let mut tools = Vec::new();
    let mut tool_choice = ToolChoice::None;
    let mut response_format = Default::default();
    let mut prompts = Vec::new();
    let input = match endpoint {
        Endpoint::ChatCompletions => {
            let messages = chat::messages(&obj)?;
            tools = chat::tools(obj.get("tools"))?;
            tool_choice = chat::tool_choice(obj.get("tool_choice"), &tools)?;
            response_format = chat::response_format(obj.get("response_format"))?;
            Input::Chat(messages)
        }
        Endpoint::Completions => {
            if let Some(v) = obj.get("echo") {
                if v.as_bool() != Some(false) {
                    return Err(invalid("echo", "echo: only false is supported"));
                }
            }
            prompts = prompt_list(obj.get("prompt"))?;
            let first = prompts.remove(0);
            Input::Prompt(first)
        }
    };
    let batch = prompts.len() as u64 + 1;

    let n = match obj.get("n") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_CHOICES as u64).contains(n))
            .ok_or_else(|| invalid("n", format!("n: expected an integer in 1..={MAX_CHOICES}")))?,
    };
    if batch * n > MAX_CHOICES as u64 {
        return Err(invalid(
            "n",
            format!(
                "n: {n} choices for each of {batch} prompts are {} choices, at most {MAX_CHOICES}",
                batch * n
            ),
        ));
    }
    if let Some(v) = obj.get("best_of") {
        if v.as_u64() != Some(n) {
            return Err(invalid(
                "best_of",
                format!("best_of: only equal to n ({n}) is supported: every choice is returned"),
            ));
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
    let budget = u64::from(meta.max_tokens).min(u64::from(advert.max_completion_tokens));
    let choices = batch * n;
    let share = budget / choices;
    if share == 0 {
        let (param, what) = if n > 1 {
            ("n", format!("{choices} choices need"))
        } else {
            ("prompt", format!("a batch of {batch} prompts needs"))
        };
        return Err(invalid(
            param,
            format!(
                "{what} at least {choices} completion tokens; \
                 {budget} are reserved for this request"
            ),
        ));
    }
    // `share` is at most a u32 bound, so the minimum fits.
    let max_tokens = u32::try_from(requested.unwrap_or(u64::MAX).min(share)).unwrap_or(u32::MAX);

    let top_logprobs = match endpoint {
        Endpoint::ChatCompletions => chat_logprobs(&obj)?,
        Endpoint::Completions => completion_logprobs(&obj)?,
    };
    let sampling = Sampling {
        max_tokens,
        temperature: Some(
            number(&obj, "temperature", |t| (0.0..=2.0).contains(&t), "0..=2")?.unwrap_or(1.0),
        ),
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
        logit_bias: logit_bias(obj.get("logit_bias"))?,
        top_logprobs,
    };
    let request = GenerationRequest {
        model: model.to_string(),
        input,
        sampling,
        max_prompt_tokens: None,
        meter: Default::default(),
        tools,
        tool_choice,
        response_format,
    };
    // The map is no longer needed; drop it before returning (it may be large).
    obj.clear();
    Ok(ValidatedRequest {
        endpoint,
        request,
        more_prompts: prompts,
        n: n as u32,
        stream,
        include_usage,
    })
}

/// Checks the shape of an accepted-and-ignored field (see the module docs).
fn check_ignored(field: &str, v: &Value) -> Result<(), ApiError> {
    let one_of = |allowed: &[&str]| {
        let ok = v.as_str().is_some_and(|s| allowed.contains(&s));
        if ok {
            Ok(())
        } else {
            Err(invalid(
                field,
                format!("{field}: expected one of {}", allowed.join(", ")),
            ))
        }
    };
    let expect = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(field, format!("{field}: expected {what}")))
        }
    };
    match field {
        "store" | "parallel_tool_calls" => expect(v.is_boolean(), "a boolean"),
        "service_tier" => one_of(&["auto", "default", "flex", "scale", "priority"]),
        "reasoning_effort" => one_of(&["none", "minimal", "low", "medium", "high"]),
        "metadata" => {
            let ok = v.as_object().is_some_and(|m| {
                m.len() <= 16
                    && m.iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512))
            });
            expect(
                ok,
                "an object of at most 16 strings (keys up to 64 bytes, values up to 512)",
            )
        }
        "modalities" => expect(
            v.as_array()
                .is_some_and(|a| a.len() == 1 && a[0].as_str() == Some("text")),
            "[\"text\"] (text output only)",
        ),
        "prediction" => {
            let ok = v.as_object().is_some_and(|o| {
                o.get("type").and_then(Value::as_str) == Some("content")
                    && o.get("content")
                        .is_some_and(|c| c.is_string() || c.is_array())
                    && o.keys().all(|k| k == "type" || k == "content")
            });
            expect(
                ok,
                "{\"type\": \"content\", \"content\": <string or parts>}",
            )
        }
        // user, safety_identifier, prompt_cache_key
        _ => expect(v.is_string(), "a string"),
    }
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
        if v.is_null() {
            continue;
        }
        let flag = v.as_bool().ok_or_else(|| {
            invalid(
                "stream_options",
                format!("stream_options.{}: expected a boolean", truncate(k, 64)),
            )
        })?;
        match k.as_str() {
            "include_usage" => include = flag,
            // Accepted and ignored: no obfuscation padding is added.
            "include_obfuscation" => {}
            _ => {
                return Err(invalid(
                    "stream_options",
                    format!("unknown field `stream_options.{}`", truncate(k, 64)),
                ))
            }
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

/// Completions `prompt`: one string or a batch of 1..=[`MAX_PROMPTS`] strings.
fn prompt_list(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            if items.is_empty() || items.len() > MAX_PROMPTS {
                return Err(invalid(
                    "prompt",
                    format!(
                        "prompt: a batch of {} prompts (1..={MAX_PROMPTS})",
                        items.len()
                    ),
                ));
            }
            Ok(items
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect())
        }
        Some(Value::Array(items)) if items.iter().any(|i| i.is_number() || i.is_array()) => {
            Err(invalid(
                "prompt",
                "prompt: token-id prompts are not supported; send text",
            ))
        }
        Some(_) => Err(invalid(
            "prompt",
            "prompt: expected a string or an array of strings",
        )),
        None => Err(invalid("prompt", "missing field `prompt`")),
    }
}

/// Chat `logprobs` (bool) and `top_logprobs` (0..=20, needs `logprobs: true`).
fn chat_logprobs(obj: &Map<String, Value>) -> Result<Option<u8>, ApiError> {
    let on = match obj.get("logprobs") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("logprobs", "logprobs: expected a boolean"))?,
    };
    let top = match obj.get("top_logprobs") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n <= MAX_TOP_LOGPROBS)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "top_logprobs",
                        format!("top_logprobs: expected an integer in 0..={MAX_TOP_LOGPROBS}"),
                    )
                })?,
        ),
    };
    match (on, top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(_)) => Err(invalid(
            "top_logprobs",
            "top_logprobs: requires logprobs to be true",
        )),
        (false, None) => Ok(None),
    }
}

/// Completions `logprobs`: an integer 0..=5 (the legacy API).
fn completion_logprobs(obj: &Map<String, Value>) -> Result<Option<u8>, ApiError> {
    match obj.get("logprobs") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= MAX_COMPLETION_LOGPROBS)
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    "logprobs",
                    format!("logprobs: expected an integer in 0..={MAX_COMPLETION_LOGPROBS}"),
                )
            }),
    }
}

/// `logit_bias`: token id (decimal string) → bias in -100..=100, sorted by token id.
fn logit_bias(v: Option<&Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let o = v
        .as_object()
        .ok_or_else(|| invalid("logit_bias", "logit_bias: expected an object"))?;
    if o.len() > MAX_LOGIT_BIAS {
        return Err(invalid(
            "logit_bias",
            format!("logit_bias: {} entries, at most {MAX_LOGIT_BIAS}", o.len()),
        ));
    }
    let mut out = Vec::with_capacity(o.len());
    for (k, v) in o {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|id| id.to_string() == *k)
            .ok_or_else(|| {
                invalid(
                    "logit_bias",
                    format!(
                        "logit_bias: key {:?} is not a token id (a decimal integer)",
                        truncate(k, 32)
                    ),
                )
            })?;
        let bias = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                invalid(
                    "logit_bias",
                    format!("logit_bias.{id}: expected a number in -100..=100"),
                )
            })?;
        out.push((id, bias as f32));
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

#[cfg(test)]
mod tests;
