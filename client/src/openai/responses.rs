//! OpenAI's Responses API (`POST /v1/responses`) on the local endpoint, by translation.
//!
//! The request becomes a chat completions request ([`translate`]) and then goes the way every
//! chat request goes: metadata headers, end-to-end encryption when configured, the proxy, and
//! the worker's strict validation — still the one gate for what reaches an engine. The chat
//! stream that comes back becomes the Responses event stream or, for `stream: false`, the
//! response object that stream ends with ([`ResponseStream`]: one state machine for both, so
//! the two cannot disagree).
//!
//! # The request
//! | Responses | chat completions |
//! |---|---|
//! | `input` as a string | one `user` message |
//! | `input` message items (`role` user, system, developer or assistant; `content` a string or `input_text`/`output_text` parts, an assistant's `refusal` part) | messages, parts as text parts |
//! | `function_call` items (`call_id`, `name`, `arguments`) | `tool_calls` of the assistant message just before (one turn's text and calls), else of a new one |
//! | `function_call_output` items (`call_id`, `output`) | `tool` messages |
//! | `reasoning` items | dropped: the served models take no reasoning input |
//! | `instructions` | a `system` message before the input |
//! | `max_output_tokens` | `max_completion_tokens` |
//! | `tools` (function tools: `name`, `description`, `parameters`, `strict`) | `tools` |
//! | `tool_choice` (`{"type": "function", "name"}` or a string) | `tool_choice` |
//! | `text.format` (text, json_object, json_schema) | `response_format` |
//! | `include: ["message.output_text.logprobs"]` or `top_logprobs` | `logprobs: true`, `top_logprobs` |
//! | `reasoning.effort` | `reasoning_effort` (ignored there) |
//! | `temperature`, `top_p`, `parallel_tool_calls`, `metadata`, `user`, `safety_identifier`, `prompt_cache_key`, `service_tier` | the same fields |
//!
//! Accepted and ignored: `store` (nothing is stored; the response says `"store": false`),
//! `stream_options.include_obfuscation`, `reasoning.summary`, `truncation: "disabled"`,
//! `background: false`, `text.verbosity: "medium"`, and `include` values other than log
//! probabilities (they ask for hosted-tool results, images or encrypted reasoning, which no
//! response here has). Refused with 400 naming the field: what needs a stored response or
//! prompt (`previous_response_id`, `conversation`, `prompt`, `item_reference` items; apps send
//! the whole conversation in `input`, as with `store: false` at OpenAI), hosted tools
//! (`web_search`, `file_search`, …), image, file and audio inputs, `background: true`,
//! `truncation: "auto"`, `max_tool_calls`, other verbosities, and any field or key not named
//! here. Duplicate keys are refused as the worker refuses them ([`parse_strict`]).
//!
//! # The response
//! One `message` item (`output_text` parts with `logprobs` when asked, a `refusal` part),
//! one `function_call` item per tool call and a `reasoning` item for reasoning text, in the
//! order the model produced them; `status` `completed`, or `incomplete` with
//! `incomplete_details.reason` `max_output_tokens` (finish reason `length`) or
//! `content_filter`; `usage` in the Responses form, exactly the billed usage. Ids are derived
//! from the request id (`resp_<id>`, `msg_<id>_<n>`, `fc_<id>_<n>`, `rs_<id>_<n>`).
//!
//! The stream: `response.created` and `response.in_progress` (with the first chunk),
//! `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`
//! (or `refusal`/`reasoning_text`/`function_call_arguments` deltas), their `.done` events,
//! `response.output_item.done`, and `response.completed` or `response.incomplete` with the
//! whole response; each event named in its `event:` line and numbered by `sequence_number`.
//! An error after the stream started (a worker lost, the proxy's or this client's shutdown)
//! ends it with `response.failed`, whose `response.error` has the code and message; before it
//! started, the error is the HTTP answer itself, as for chat.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::json::{parse_strict, truncate};
use protocol::meta::MAX_TOKENS_LIMIT;
use protocol::sse::{Event, EVENT_USAGE};
use protocol::{ApiError, ErrorKind, Usage};
use serde_json::{json, Map, Value};

use super::{event_error, json_size, parse_chunk, parse_usage, StreamOut, MAX_AGGREGATE};

/// The `include` value that asks for log probabilities.
pub const INCLUDE_LOGPROBS: &str = "message.output_text.logprobs";

/// Fields copied into the chat request unchanged (the worker checks their values).
pub const PASSED: &[&str] = &[
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
];

/// Fields translated into other chat fields.
pub const TRANSLATED: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "text",
    "include",
    "top_logprobs",
    "reasoning",
    "stream",
];

/// Fields accepted and ignored (some values only, see the module docs).
pub const IGNORED: &[&str] = &["store", "stream_options", "truncation", "background"];

/// Fields refused whenever they are given (not `null`).
pub const REFUSED: &[&str] = &[
    "previous_response_id",
    "conversation",
    "prompt",
    "max_tool_calls",
];

/// A Responses request, translated.
#[derive(Clone, Debug)]
pub struct Translated {
    /// The chat completions request body.
    pub chat: Vec<u8>,
    /// What the response object repeats of the request.
    pub echo: Echo,
}

/// The request parameters a response object repeats, as OpenAI's does, and where each chat
/// message came from (to name Responses fields in the worker's errors).
#[derive(Clone, Debug)]
pub struct Echo {
    model: String,
    fields: Map<String, Value>,
    origins: Vec<Origin>,
}

/// Where a chat message of the translation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Instructions,
    /// `input` as a string.
    Input,
    /// A message item, `input[i]`.
    Message(usize),
    /// A `function_call` item that began an assistant message.
    Call(usize),
    /// A `function_call_output` item.
    Output(usize),
}

impl Echo {
    /// `e` with its `param` (and the message's leading copy of it) named as the Responses
    /// request names it: the worker checks the chat translation and names chat fields
    /// (`messages[3].content`, `response_format.json_schema.schema`, …). A message the
    /// worker names is named by the item it came from.
    pub fn rename(&self, mut e: ApiError) -> ApiError {
        let Some(param) = e.param.take() else {
            return e;
        };
        let renamed = self.responses_param(&param);
        if let Some(rest) = e.message.strip_prefix(param.as_str()) {
            e.message = format!("{renamed}{rest}");
        }
        e.param = Some(renamed);
        e
    }

    fn responses_param(&self, p: &str) -> String {
        if let Some(rest) = p.strip_prefix("messages[") {
            let Some((k, tail)) = rest.split_once(']') else {
                return p.to_string();
            };
            let Some(origin) = k.parse::<usize>().ok().and_then(|k| self.origins.get(k)) else {
                return p.to_string();
            };
            return match *origin {
                Origin::Instructions => "instructions".into(),
                Origin::Input => "input".into(),
                Origin::Message(i) if tail.is_empty() || tail.starts_with(".content") => {
                    format!("input[{i}]{tail}")
                }
                Origin::Message(i) | Origin::Call(i) => format!("input[{i}]"),
                Origin::Output(i) => match tail.strip_prefix(".content") {
                    Some(rest) => format!("input[{i}].output{rest}"),
                    None if tail == ".tool_call_id" => format!("input[{i}].call_id"),
                    None => format!("input[{i}]"),
                },
            };
        }
        for (chat, responses) in [
            ("response_format.json_schema", "text.format"),
            ("response_format", "text.format"),
            ("tool_choice.function", "tool_choice"),
            ("max_completion_tokens", "max_output_tokens"),
            ("reasoning_effort", "reasoning.effort"),
            ("messages", "input"),
        ] {
            if let Some(rest) = p.strip_prefix(chat) {
                if rest.is_empty() || rest.starts_with('.') {
                    return format!("{responses}{rest}");
                }
            }
        }
        if let Some(rest) = p.strip_prefix("tools[") {
            if let Some((i, tail)) = rest.split_once("].function") {
                return format!("tools[{i}]{tail}");
            }
        }
        p.to_string()
    }
}

fn invalid(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, msg).with_param(param)
}

fn upstream(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Upstream, msg)
}

/// The value of `k`, unless it is absent or `null`.
fn given<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn required<'a>(o: &'a Map<String, Value>, k: &str, at: &str) -> Result<&'a Value, ApiError> {
    let param = format!("{at}{k}");
    given(o, k).ok_or_else(|| invalid(&param, format!("{param}: required")))
}

fn string<'a>(v: &'a Value, param: &str) -> Result<&'a str, ApiError> {
    v.as_str()
        .ok_or_else(|| invalid(param, format!("{param}: expected a string")))
}

fn object<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| invalid(param, format!("{param}: expected an object")))
}

fn array<'a>(v: &'a Value, param: &str) -> Result<&'a Vec<Value>, ApiError> {
    v.as_array()
        .ok_or_else(|| invalid(param, format!("{param}: expected an array")))
}

/// Refuses keys of `o` outside `allowed` (`at` is the object's path with a trailing dot).
fn only_keys(o: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            let param = format!("{at}{}", truncate(k, 64));
            Err(invalid(&param, format!("unknown field `{param}`")))
        }
    }
}

/// Translates a Responses request body (see the module docs). Errors are `invalid_request`
/// naming the field.
pub fn translate(body: &[u8]) -> Result<Translated, ApiError> {
    let Value::Object(req) = parse_strict(body)? else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body: expected a json object",
        ));
    };
    let known = [PASSED, TRANSLATED, IGNORED, REFUSED];
    if let Some(k) = req
        .keys()
        .find(|k| !known.iter().any(|l| l.contains(&k.as_str())))
    {
        let k = truncate(k, 64);
        return Err(invalid(k, format!("unknown field `{k}`")));
    }
    for k in REFUSED {
        if given(&req, k).is_some() {
            let why = if *k == "max_tool_calls" {
                "not supported: the model makes as many calls as it makes"
            } else {
                "not supported: cocoon-client stores no responses, conversations or prompts; \
                 send the whole conversation in `input`"
            };
            return Err(invalid(k, format!("{k}: {why}")));
        }
    }
    check_ignored(&req)?;

    let model = string(required(&req, "model", "")?, "model")?.to_string();
    let stream = match given(&req, "stream") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("stream", "stream: expected a boolean"))?,
    };
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    let (messages, origins) = messages(&req)?;
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(v) = given(&req, "max_output_tokens") {
        let n = v
            .as_u64()
            .filter(|n| (1..=u64::from(MAX_TOKENS_LIMIT)).contains(n))
            .ok_or_else(|| {
                invalid(
                    "max_output_tokens",
                    format!("max_output_tokens: expected an integer in 1..={MAX_TOKENS_LIMIT}"),
                )
            })?;
        chat.insert("max_completion_tokens".into(), json!(n));
    }
    for k in PASSED {
        if let Some(v) = given(&req, k) {
            chat.insert((*k).into(), v.clone());
        }
    }
    if let Some(v) = given(&req, "tools") {
        chat.insert("tools".into(), tools(v)?);
    }
    if let Some(v) = given(&req, "tool_choice") {
        chat.insert("tool_choice".into(), tool_choice(v)?);
    }
    if let Some(v) = given(&req, "text") {
        if let Some(format) = text_format(v)? {
            chat.insert("response_format".into(), format);
        }
    }
    if let Some(v) = given(&req, "reasoning") {
        let o = object(v, "reasoning")?;
        only_keys(o, &["effort", "summary", "generate_summary"], "reasoning.")?;
        for k in ["summary", "generate_summary"] {
            if let Some(s) = given(o, k) {
                string(s, &format!("reasoning.{k}"))?;
            }
        }
        if let Some(e) = given(o, "effort") {
            chat.insert("reasoning_effort".into(), e.clone());
        }
    }
    let mut logprobs = false;
    if let Some(v) = given(&req, "include") {
        for (i, s) in array(v, "include")?.iter().enumerate() {
            logprobs |= string(s, &format!("include[{i}]"))? == INCLUDE_LOGPROBS;
        }
    }
    if let Some(v) = given(&req, "top_logprobs") {
        chat.insert("top_logprobs".into(), v.clone());
        logprobs = true;
    }
    if logprobs {
        chat.insert("logprobs".into(), json!(true));
    }
    chat.insert("stream".into(), json!(stream));
    let echo = Echo {
        model,
        fields: echo_fields(&req),
        origins,
    };
    Ok(Translated {
        chat: Value::Object(chat).to_string().into_bytes(),
        echo,
    })
}

/// Checks the accepted-and-ignored fields' values.
fn check_ignored(req: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(v) = given(req, "store") {
        v.as_bool()
            .ok_or_else(|| invalid("store", "store: expected a boolean"))?;
    }
    if let Some(v) = given(req, "stream_options") {
        let o = object(v, "stream_options")?;
        only_keys(o, &["include_obfuscation"], "stream_options.")?;
        if let Some(b) = given(o, "include_obfuscation") {
            b.as_bool().ok_or_else(|| {
                invalid(
                    "stream_options.include_obfuscation",
                    "stream_options.include_obfuscation: expected a boolean",
                )
            })?;
        }
    }
    if let Some(v) = given(req, "truncation") {
        if string(v, "truncation")? != "disabled" {
            return Err(invalid(
                "truncation",
                "truncation: only \"disabled\" is supported: an input longer than the context \
                 is refused with context_length_exceeded, never cut",
            ));
        }
    }
    if let Some(v) = given(req, "background") {
        if v.as_bool()
            .ok_or_else(|| invalid("background", "background: expected a boolean"))?
        {
            return Err(invalid(
                "background",
                "background: not supported: a response is answered while its request is open",
            ));
        }
    }
    Ok(())
}

/// The chat messages for `instructions` and `input`, and where each came from.
fn messages(req: &Map<String, Value>) -> Result<(Vec<Value>, Vec<Origin>), ApiError> {
    let mut out = Vec::new();
    let mut origins = Vec::new();
    if let Some(i) = given(req, "instructions") {
        out.push(json!({"role": "system", "content": string(i, "instructions")?}));
        origins.push(Origin::Instructions);
    }
    match required(req, "input", "")? {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            origins.push(Origin::Input);
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                input_item(&mut out, item, &format!("input[{i}]"))?;
                let origin = match item.get("type").and_then(Value::as_str) {
                    Some("function_call") => Origin::Call(i),
                    Some("function_call_output") => Origin::Output(i),
                    _ => Origin::Message(i),
                };
                origins.resize(out.len(), origin);
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "input: expected a string or an array of items",
            ))
        }
    }
    if out.iter().all(|m| m["role"] == "system") {
        return Err(invalid("input", "input: no message to answer"));
    }
    Ok((out, origins))
}

/// Appends the chat message(s) of one input item (`p` is its path, `input[i]`).
fn input_item(out: &mut Vec<Value>, v: &Value, p: &str) -> Result<(), ApiError> {
    let o = object(v, p)?;
    let at = format!("{p}.");
    let kind = match given(o, "type") {
        None => "message",
        Some(t) => string(t, &format!("{at}type"))?,
    };
    match kind {
        "message" => {
            only_keys(o, &["type", "role", "content", "id", "status"], &at)?;
            let role = string(required(o, "role", &at)?, &format!("{at}role"))?;
            if !matches!(role, "user" | "system" | "developer" | "assistant") {
                return Err(invalid(
                    &format!("{at}role"),
                    format!(
                        "{at}role: {:?} is not one of user, system, developer, assistant",
                        truncate(role, 32)
                    ),
                ));
            }
            let mut msg = Map::new();
            msg.insert("role".into(), json!(role));
            match required(o, "content", &at)? {
                Value::String(s) => {
                    msg.insert("content".into(), json!(s));
                }
                Value::Array(parts) => {
                    let (texts, refusal) = content_parts(parts, role, &format!("{at}content"))?;
                    match refusal {
                        Some(r) if texts.is_empty() => {
                            msg.insert("content".into(), Value::Null);
                            msg.insert("refusal".into(), json!(r));
                        }
                        Some(r) => {
                            msg.insert("content".into(), Value::Array(texts));
                            msg.insert("refusal".into(), json!(r));
                        }
                        None => {
                            msg.insert("content".into(), Value::Array(texts));
                        }
                    }
                }
                _ => {
                    return Err(invalid(
                        &format!("{at}content"),
                        format!("{at}content: expected a string or an array of parts"),
                    ))
                }
            }
            out.push(Value::Object(msg));
        }
        "function_call" => {
            only_keys(
                o,
                &["type", "call_id", "name", "arguments", "id", "status"],
                &at,
            )?;
            let field = |k: &str| -> Result<&str, ApiError> {
                string(required(o, k, &at)?, &format!("{at}{k}"))
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            // One turn's text and calls are one assistant message.
            match out.last_mut().and_then(Value::as_object_mut) {
                Some(m) if m.get("role").and_then(Value::as_str) == Some("assistant") => {
                    match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => {
                            m.insert("tool_calls".into(), json!([call]));
                        }
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            only_keys(o, &["type", "call_id", "output", "id", "status"], &at)?;
            let call_id = string(required(o, "call_id", &at)?, &format!("{at}call_id"))?;
            let content = match required(o, "output", &at)? {
                Value::String(s) => json!(s),
                Value::Array(parts) => {
                    let (texts, _) = content_parts(parts, "tool", &format!("{at}output"))?;
                    Value::Array(texts)
                }
                _ => {
                    return Err(invalid(
                        &format!("{at}output"),
                        format!("{at}output: expected a string or an array of parts"),
                    ))
                }
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
        }
        // The model's earlier reasoning (another provider's, often encrypted): the served
        // models take none.
        "reasoning" => {}
        "item_reference" => {
            return Err(invalid(
                &format!("{at}type"),
                format!(
                    "{at}type: item references are not supported: cocoon-client stores no \
                     items; send the item itself"
                ),
            ))
        }
        other => {
            return Err(invalid(
                &format!("{at}type"),
                format!(
                    "{at}type: {:?} items are not supported (message, function_call, \
                     function_call_output and reasoning are)",
                    truncate(other, 64)
                ),
            ))
        }
    }
    Ok(())
}

/// Chat text parts (and an assistant's refusal) of a content array at `p`.
fn content_parts(
    parts: &[Value],
    role: &str,
    p: &str,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let mut texts = Vec::new();
    let mut refusal: Option<String> = None;
    for (j, part) in parts.iter().enumerate() {
        let pp = format!("{p}[{j}]");
        let o = object(part, &pp)?;
        let at = format!("{pp}.");
        let kind = string(required(o, "type", &at)?, &format!("{at}type"))?;
        match kind {
            "input_text" | "output_text" => {
                only_keys(o, &["type", "text", "annotations", "logprobs"], &at)?;
                let text = string(required(o, "text", &at)?, &format!("{at}text"))?;
                texts.push(json!({"type": "text", "text": text}));
            }
            "refusal" if role == "assistant" => {
                only_keys(o, &["type", "refusal"], &at)?;
                let r = string(required(o, "refusal", &at)?, &format!("{at}refusal"))?;
                refusal.get_or_insert_with(String::new).push_str(r);
            }
            "input_image" | "input_file" | "input_audio" => {
                return Err(invalid(
                    &format!("{at}type"),
                    format!(
                        "{pp}: image, file and audio inputs are not supported: the served \
                         models read text only"
                    ),
                ))
            }
            other => {
                return Err(invalid(
                    &format!("{at}type"),
                    format!(
                        "{at}type: {:?} parts are not supported here",
                        truncate(other, 64)
                    ),
                ))
            }
        }
    }
    Ok((texts, refusal))
}

/// Chat tools for Responses function tools.
fn tools(v: &Value) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for (i, t) in array(v, "tools")?.iter().enumerate() {
        let p = format!("tools[{i}]");
        let o = object(t, &p)?;
        let at = format!("{p}.");
        let kind = string(required(o, "type", &at)?, &format!("{at}type"))?;
        if kind != "function" {
            return Err(invalid(
                &format!("{at}type"),
                format!(
                    "{at}type: {:?} tools are not supported: only function tools (hosted tools \
                     such as web_search run at OpenAI)",
                    truncate(kind, 64)
                ),
            ));
        }
        only_keys(
            o,
            &["type", "name", "description", "parameters", "strict"],
            &at,
        )?;
        required(o, "name", &at)?;
        let mut f = Map::new();
        for k in ["name", "description", "parameters", "strict"] {
            if let Some(v) = given(o, k) {
                f.insert(k.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

/// The chat `tool_choice` for a Responses one.
fn tool_choice(v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::String(_) => Ok(v.clone()),
        Value::Object(o) => {
            let kind = string(required(o, "type", "tool_choice.")?, "tool_choice.type")?;
            if kind != "function" {
                return Err(invalid(
                    "tool_choice.type",
                    format!(
                        "tool_choice.type: {:?} is not supported (function is)",
                        truncate(kind, 64)
                    ),
                ));
            }
            only_keys(o, &["type", "name"], "tool_choice.")?;
            let name = string(required(o, "name", "tool_choice.")?, "tool_choice.name")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "tool_choice",
            "tool_choice: expected a string or an object",
        )),
    }
}

/// The chat `response_format` for `text` (`None`: no format given).
fn text_format(v: &Value) -> Result<Option<Value>, ApiError> {
    let o = object(v, "text")?;
    only_keys(o, &["format", "verbosity"], "text.")?;
    if let Some(verbosity) = given(o, "verbosity") {
        if string(verbosity, "text.verbosity")? != "medium" {
            return Err(invalid(
                "text.verbosity",
                "text.verbosity: only \"medium\" is supported: the served models take no \
                 verbosity",
            ));
        }
    }
    let Some(f) = given(o, "format") else {
        return Ok(None);
    };
    let f = object(f, "text.format")?;
    let kind = string(required(f, "type", "text.format.")?, "text.format.type")?;
    match kind {
        "text" | "json_object" => {
            only_keys(f, &["type"], "text.format.")?;
            Ok(Some(json!({"type": kind})))
        }
        "json_schema" => {
            only_keys(
                f,
                &["type", "name", "schema", "description", "strict"],
                "text.format.",
            )?;
            let mut schema = Map::new();
            for k in ["name", "schema", "description", "strict"] {
                if let Some(v) = given(f, k) {
                    schema.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        other => Err(invalid(
            "text.format.type",
            format!(
                "text.format.type: {:?} is not one of text, json_object, json_schema",
                truncate(other, 64)
            ),
        )),
    }
}

/// The request parameters a response repeats, with OpenAI's defaults.
fn echo_fields(req: &Map<String, Value>) -> Map<String, Value> {
    let or = |k: &str, default: Value| given(req, k).cloned().unwrap_or(default);
    let mut text = Map::new();
    text.insert(
        "format".into(),
        req.get("text")
            .and_then(|t| given(t.as_object()?, "format"))
            .cloned()
            .unwrap_or(json!({"type": "text"})),
    );
    if let Some(v) = req
        .get("text")
        .and_then(|t| given(t.as_object()?, "verbosity"))
    {
        text.insert("verbosity".into(), v.clone());
    }
    let reasoning = given(req, "reasoning").and_then(Value::as_object);
    let part = |k: &str| {
        reasoning
            .and_then(|r| given(r, k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut out = Map::new();
    for (k, v) in [
        ("instructions", or("instructions", Value::Null)),
        ("max_output_tokens", or("max_output_tokens", Value::Null)),
        ("metadata", or("metadata", json!({}))),
        (
            "parallel_tool_calls",
            or("parallel_tool_calls", json!(true)),
        ),
        ("temperature", or("temperature", json!(1.0))),
        ("top_p", or("top_p", json!(1.0))),
        ("top_logprobs", or("top_logprobs", json!(0))),
        ("tool_choice", or("tool_choice", json!("auto"))),
        ("tools", or("tools", json!([]))),
        ("text", Value::Object(text)),
        (
            "reasoning",
            json!({"effort": part("effort"), "summary": part("summary")}),
        ),
        ("service_tier", or("service_tier", json!("default"))),
        ("user", or("user", Value::Null)),
        ("safety_identifier", or("safety_identifier", Value::Null)),
        ("prompt_cache_key", or("prompt_cache_key", Value::Null)),
        ("truncation", json!("disabled")),
        ("store", json!(false)),
        ("background", json!(false)),
        ("previous_response_id", Value::Null),
        ("max_tool_calls", Value::Null),
    ] {
        out.insert(k.into(), v);
    }
    out
}

/// The Responses `usage` object.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total(),
    })
}

/// A content part of the message being built.
#[derive(Debug)]
enum Part {
    Text { text: String, logprobs: Vec<Value> },
    Refusal(String),
}

impl Part {
    fn to_json(&self) -> Value {
        match self {
            Part::Text { text, logprobs } => {
                json!({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs})
            }
            Part::Refusal(r) => json!({"type": "refusal", "refusal": r}),
        }
    }

    /// The part as `content_part.added` shows it: nothing in it yet.
    fn empty(&self) -> Value {
        match self {
            Part::Text { .. } => {
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            }
            Part::Refusal(_) => json!({"type": "refusal", "refusal": ""}),
        }
    }
}

/// The output item being built.
#[derive(Debug)]
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        parts: Vec<Part>,
    },
    Call {
        id: String,
        index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Open {
    fn item(&self, status: &str) -> Value {
        match self {
            Open::Reasoning { id, text } => json!({
                "type": "reasoning", "id": id, "status": status, "summary": [],
                "content": [{"type": "reasoning_text", "text": text}],
            }),
            Open::Message { id, parts } => json!({
                "type": "message", "id": id, "status": status, "role": "assistant",
                "content": parts.iter().map(Part::to_json).collect::<Vec<_>>(),
            }),
            Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => json!({
                "type": "function_call", "id": id, "status": status, "call_id": call_id,
                "name": name, "arguments": arguments,
            }),
        }
    }

    /// The item as `output_item.added` shows it: nothing generated in it yet.
    fn added(&self) -> Value {
        match self {
            Open::Reasoning { id, .. } => json!({
                "type": "reasoning", "id": id, "status": "in_progress", "summary": [],
                "content": [],
            }),
            Open::Message { id, .. } => json!({
                "type": "message", "id": id, "status": "in_progress", "role": "assistant",
                "content": [],
            }),
            Open::Call {
                id, call_id, name, ..
            } => json!({
                "type": "function_call", "id": id, "status": "in_progress",
                "call_id": call_id, "name": name, "arguments": "",
            }),
        }
    }
}

/// Numbers and encodes the events of one stream.
#[derive(Debug)]
struct Events {
    /// Encode them (`false`: only the final response is wanted).
    emit: bool,
    seq: u64,
}

impl Events {
    fn push(&mut self, out: &mut Vec<u8>, kind: &str, data: Value) {
        let seq = self.seq;
        self.seq += 1;
        if !self.emit {
            return;
        }
        // `type` and `sequence_number` first, as OpenAI writes them.
        let mut event = Map::new();
        event.insert("type".into(), json!(kind));
        event.insert("sequence_number".into(), json!(seq));
        if let Value::Object(m) = data {
            event.extend(m);
        }
        out.extend(Event::named(kind, Value::Object(event).to_string()).encode());
    }
}

/// Turns the proxy's chat event stream into a Responses event stream and the response object
/// it ends with (see the module docs).
#[derive(Debug)]
pub struct ResponseStream {
    /// The request id the item ids derive from.
    rid: String,
    created_at: u64,
    echo: Echo,
    events: Events,
    /// `response.created` was sent.
    started: bool,
    /// The model the chunks named.
    model: Option<Value>,
    /// Items done.
    output: Vec<Value>,
    open: Option<Open>,
    /// Tool-call indexes seen (a call's deltas come together).
    calls: BTreeSet<u64>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// About how many bytes of output are held.
    size: usize,
    finished: bool,
    error: Option<ApiError>,
    response: Option<Value>,
}

impl ResponseStream {
    /// A stream for the request `request_id`; `emit: false` builds only the final object
    /// ([`Self::response`]).
    pub fn new(echo: Echo, request_id: &str, emit: bool) -> Self {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            rid: request_id.to_string(),
            created_at,
            echo,
            events: Events { emit, seq: 0 },
            started: false,
            model: None,
            output: Vec::new(),
            open: None,
            calls: BTreeSet::new(),
            finish_reason: None,
            usage: None,
            size: 0,
            finished: false,
            error: None,
            response: None,
        }
    }

    /// The response object, once the stream completed.
    pub fn response(&self) -> Option<&Value> {
        self.response.as_ref()
    }

    fn snapshot(&self, status: &str, output: Vec<Value>) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), json!(format!("resp_{}", self.rid)));
        r.insert("object".into(), json!("response"));
        r.insert("created_at".into(), json!(self.created_at));
        r.insert("status".into(), json!(status));
        r.insert(
            "model".into(),
            self.model.clone().unwrap_or_else(|| json!(self.echo.model)),
        );
        r.insert("output".into(), Value::Array(output));
        r.insert("error".into(), Value::Null);
        r.insert("incomplete_details".into(), Value::Null);
        r.insert("usage".into(), Value::Null);
        r.extend(self.echo.fields.clone());
        Value::Object(r)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let snap = self.snapshot("in_progress", Vec::new());
        self.events
            .push(out, "response.created", json!({"response": snap.clone()}));
        self.events
            .push(out, "response.in_progress", json!({"response": snap}));
    }

    fn grow(&mut self, n: usize) -> Result<(), ApiError> {
        self.size += n;
        if self.size > MAX_AGGREGATE {
            return Err(upstream(format!(
                "proxy stream: response larger than {MAX_AGGREGATE} bytes"
            )));
        }
        Ok(())
    }

    /// The id of the next item (after the open one is closed).
    fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.rid, self.output.len())
    }

    /// Opens `item` (after closing the one before).
    fn open(&mut self, out: &mut Vec<u8>, item: Open) {
        self.close(out, "completed");
        let added = item.added();
        self.events.push(
            out,
            "response.output_item.added",
            json!({"output_index": self.output.len(), "item": added}),
        );
        if let Open::Reasoning { id, .. } = &item {
            self.events.push(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": self.output.len(), "content_index": 0,
                       "part": {"type": "reasoning_text", "text": ""}}),
            );
        }
        self.open = Some(item);
    }

    /// Ends the open item's last part of a message.
    fn close_part(events: &mut Events, out: &mut Vec<u8>, id: &str, oi: usize, parts: &[Part]) {
        let Some(last) = parts.last() else { return };
        let ci = parts.len() - 1;
        match last {
            Part::Text { text, logprobs } => events.push(
                out,
                "response.output_text.done",
                json!({"item_id": id, "output_index": oi, "content_index": ci, "text": text,
                       "logprobs": logprobs}),
            ),
            Part::Refusal(r) => events.push(
                out,
                "response.refusal.done",
                json!({"item_id": id, "output_index": oi, "content_index": ci, "refusal": r}),
            ),
        }
        events.push(
            out,
            "response.content_part.done",
            json!({"item_id": id, "output_index": oi, "content_index": ci,
                   "part": last.to_json()}),
        );
    }

    /// Ends the open item, if any, with `status`.
    fn close(&mut self, out: &mut Vec<u8>, status: &str) {
        let Some(item) = self.open.take() else { return };
        let oi = self.output.len();
        match &item {
            Open::Reasoning { id, text } => {
                self.events.push(
                    out,
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0, "text": text}),
                );
                self.events.push(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0,
                           "part": {"type": "reasoning_text", "text": text}}),
                );
            }
            Open::Message { id, parts } => {
                Self::close_part(&mut self.events, out, id, oi, parts);
            }
            Open::Call {
                id,
                name,
                arguments,
                ..
            } => self.events.push(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": oi, "name": name,
                       "arguments": arguments}),
            ),
        }
        let done = item.item(status);
        self.events.push(
            out,
            "response.output_item.done",
            json!({"output_index": oi, "item": done.clone()}),
        );
        self.output.push(done);
    }

    fn reasoning(&mut self, out: &mut Vec<u8>, delta: &str) -> Result<(), ApiError> {
        self.grow(delta.len())?;
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out, "completed");
            let id = self.next_id("rs");
            self.open(
                out,
                Open::Reasoning {
                    id,
                    text: String::new(),
                },
            );
        }
        let oi = self.output.len();
        if let Some(Open::Reasoning { id, text }) = &mut self.open {
            text.push_str(delta);
            self.events.push(
                out,
                "response.reasoning_text.delta",
                json!({"item_id": id, "output_index": oi, "content_index": 0, "delta": delta}),
            );
        }
        Ok(())
    }

    /// Text (`refusal: false`) or refusal text for the message item.
    fn message(
        &mut self,
        out: &mut Vec<u8>,
        delta: &str,
        logprobs: Vec<Value>,
        refusal: bool,
    ) -> Result<(), ApiError> {
        self.grow(delta.len() + logprobs.iter().map(json_size).sum::<usize>())?;
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out, "completed");
            let id = self.next_id("msg");
            self.open(
                out,
                Open::Message {
                    id,
                    parts: Vec::new(),
                },
            );
        }
        let oi = self.output.len();
        let Some(Open::Message { id, parts }) = &mut self.open else {
            return Ok(());
        };
        let same = matches!(
            (parts.last(), refusal),
            (Some(Part::Text { .. }), false) | (Some(Part::Refusal(_)), true)
        );
        if !same {
            Self::close_part(&mut self.events, out, id, oi, parts);
            let part = if refusal {
                Part::Refusal(String::new())
            } else {
                Part::Text {
                    text: String::new(),
                    logprobs: Vec::new(),
                }
            };
            self.events.push(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": oi, "content_index": parts.len(),
                       "part": part.empty()}),
            );
            parts.push(part);
        }
        let ci = parts.len() - 1;
        match parts.last_mut() {
            Some(Part::Text {
                text,
                logprobs: all,
            }) => {
                text.push_str(delta);
                all.extend(logprobs.iter().cloned());
                self.events.push(
                    out,
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": oi, "content_index": ci,
                           "delta": delta, "logprobs": logprobs}),
                );
            }
            Some(Part::Refusal(r)) => {
                r.push_str(delta);
                self.events.push(
                    out,
                    "response.refusal.delta",
                    json!({"item_id": id, "output_index": oi, "content_index": ci,
                           "delta": delta}),
                );
            }
            None => {}
        }
        Ok(())
    }

    /// One `delta.tool_calls` entry.
    fn tool_call(&mut self, out: &mut Vec<u8>, tc: &Value) -> Result<(), ApiError> {
        let index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let name = tc
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let arguments = tc
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.grow(name.len() + arguments.len())?;
        let continues = matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index);
        if continues {
            if let Some(Open::Call { name: n, .. }) = &mut self.open {
                n.push_str(name);
            }
        } else {
            if !self.calls.insert(index) {
                return Err(upstream(format!(
                    "proxy stream: tool call {index} resumed after another call"
                )));
            }
            let call_id = match tc.get("id").and_then(Value::as_str) {
                Some(id) => id.to_string(),
                None => format!("call_{}_{index}", self.rid),
            };
            self.close(out, "completed");
            let id = self.next_id("fc");
            self.open(
                out,
                Open::Call {
                    id,
                    index,
                    call_id,
                    name: name.to_string(),
                    arguments: String::new(),
                },
            );
        }
        if arguments.is_empty() {
            return Ok(());
        }
        let oi = self.output.len();
        if let Some(Open::Call {
            id, arguments: a, ..
        }) = &mut self.open
        {
            a.push_str(arguments);
            self.events.push(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": oi, "delta": arguments}),
            );
        }
        Ok(())
    }

    fn on_chunk(&mut self, out: &mut Vec<u8>, chunk: &Map<String, Value>) -> Result<(), ApiError> {
        if let Some(m) = chunk.get("model").filter(|v| v.is_string()) {
            self.model = Some(m.clone());
        }
        self.start(out);
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        for c in choices {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            if index != 0 {
                return Err(upstream(format!(
                    "proxy stream: choice {index} in a response of one"
                )));
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(f.to_string());
            }
            let Some(delta) = c.get("delta").and_then(Value::as_object) else {
                continue;
            };
            let text = |k: &str| {
                delta
                    .get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            if let Some(r) = text("reasoning_content") {
                self.reasoning(out, r)?;
            }
            let logprobs: Vec<Value> = c
                .pointer("/logprobs/content")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // A token that ends inside a UTF-8 sequence has log probabilities and no text yet.
            if text("content").is_some() || !logprobs.is_empty() {
                self.message(out, text("content").unwrap_or(""), logprobs, false)?;
            }
            if let Some(r) = text("refusal") {
                self.message(out, r, Vec::new(), true)?;
            }
            for tc in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_call(out, tc)?;
            }
        }
        Ok(())
    }

    /// `[DONE]`: the final items and the completed (or incomplete) response.
    fn complete(&mut self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        let usage = self
            .usage
            .ok_or_else(|| upstream("proxy stream carried no usage event"))?;
        self.start(out);
        let reason = match self.finish_reason.as_deref() {
            Some("length") => Some("max_output_tokens"),
            Some("content_filter") => Some("content_filter"),
            _ => None,
        };
        self.close(
            out,
            if reason.is_some() {
                "incomplete"
            } else {
                "completed"
            },
        );
        let status = if reason.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let mut r = self.snapshot(status, self.output.clone());
        r["usage"] = usage_json(&usage);
        if let Some(reason) = reason {
            r["incomplete_details"] = json!({"reason": reason});
        }
        self.events.push(
            out,
            &format!("response.{status}"),
            json!({"response": r.clone()}),
        );
        self.response = Some(r);
        self.finished = true;
        Ok(())
    }

    fn handle(&mut self, out: &mut Vec<u8>, ev: &Event) -> Result<(), ApiError> {
        if let Some(err) = event_error(ev) {
            return Err(err);
        }
        match ev.name.as_deref() {
            Some(EVENT_USAGE) => {
                self.usage = Some(parse_usage(ev)?);
                Ok(())
            }
            Some(_) => Ok(()),
            None if ev.is_done() => self.complete(out),
            None => {
                let chunk = parse_chunk(&ev.data)?;
                self.on_chunk(out, &chunk)
            }
        }
    }
}

impl StreamOut for ResponseStream {
    fn on_event(&mut self, ev: &Event) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Err(e) = self.handle(&mut out, ev) {
            out.extend(self.on_error(e));
        }
        out
    }

    /// Ends the stream with `response.failed` (after `response.created`, which an SDK
    /// expects first).
    fn on_error(&mut self, err: ApiError) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        let err = self.echo.rename(err);
        let mut out = Vec::new();
        self.start(&mut out);
        let mut output = self.output.clone();
        if let Some(open) = &self.open {
            output.push(open.item("incomplete"));
        }
        let mut r = self.snapshot("failed", output);
        r["error"] = json!({"code": err.kind.code(), "message": err.message});
        if let Some(u) = &self.usage {
            r["usage"] = usage_json(u);
        }
        self.events
            .push(&mut out, "response.failed", json!({"response": r}));
        self.finished = true;
        self.error = Some(err);
        out
    }

    fn on_end(&mut self) -> Vec<u8> {
        self.on_error(upstream("proxy stream ended before [DONE]"))
    }

    fn api_error(&self, err: ApiError) -> ApiError {
        self.echo.rename(err)
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

#[cfg(test)]
mod tests;
