//! The chat-only parts of a request: `messages`, `tools`, `tool_choice` and
//! `response_format` (rules in the [module docs](super)).

use protocol::ApiError;
use serde_json::{json, Map, Value};

use super::{
    invalid, truncate, MAX_MESSAGES, MAX_SCHEMA_BYTES, MAX_TOOLS, MAX_TOOLS_BYTES, MAX_TOOL_CALLS,
};
use crate::engine::{Message, ResponseFormat, ToolCall, ToolChoice, ToolSpec};

const MESSAGE_FIELDS: &[&str] = &[
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "refusal",
];
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
/// Longest tool-call id and called function name in a message, in bytes.
const MAX_ID_LEN: usize = 256;

/// A value's field, with `null` counting as absent.
fn get<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

/// The first non-null key of `o` outside `allowed`, as an error naming it in `at`.
fn unknown_key(
    o: &Map<String, Value>,
    allowed: &[&str],
    param: &str,
    at: &str,
) -> Result<(), ApiError> {
    match o
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(invalid(
            param,
            format!("unknown field `{}` in {at}", truncate(k, 64)),
        )),
        None => Ok(()),
    }
}

/// `^[a-zA-Z0-9_-]{1,64}$`: OpenAI's rule for function and schema names.
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
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
    unknown_key(o, MESSAGE_FIELDS, &param, &param)?;
    let role = match get(o, "role") {
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
        _ => {
            return Err(invalid(
                &param,
                format!("{param}.role: expected one of {}", ROLES.join(", ")),
            ))
        }
    };
    match get(o, "name") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(invalid(&param, format!("{param}.name: expected a string"))),
    }
    let only = |key: &str, for_role: &str| {
        if get(o, key).is_some() && role != for_role {
            Err(invalid(
                &param,
                format!("{param}.{key}: only {for_role} messages have it"),
            ))
        } else {
            Ok(())
        }
    };
    only("tool_calls", "assistant")?;
    only("refusal", "assistant")?;
    only("tool_call_id", "tool")?;
    let tool_calls = match get(o, "tool_calls") {
        Some(v) => message_tool_calls(&param, v)?,
        None => Vec::new(),
    };
    let refusal = match get(o, "refusal") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(invalid(
                &param,
                format!("{param}.refusal: expected a string"),
            ))
        }
    };
    let tool_call_id = match get(o, "tool_call_id") {
        None if role == "tool" => {
            return Err(invalid(
                &param,
                format!("{param}.tool_call_id: required in tool messages"),
            ))
        }
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                &param,
                format!("{param}.tool_call_id: expected a string of 1..={MAX_ID_LEN} bytes"),
            ))
        }
    };
    let content = match get(o, "content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| text_part(&param, j, p))
                .collect::<Result<Vec<_>, _>>()?;
            texts.join("\n")
        }
        None if role == "assistant" && (!tool_calls.is_empty() || refusal.is_some()) => {
            refusal.unwrap_or_default().to_string()
        }
        None if role == "assistant" => {
            return Err(invalid(
                &param,
                format!("{param}.content: required unless the message has tool_calls"),
            ))
        }
        _ => {
            return Err(invalid(
                &param,
                format!("{param}.content: expected a string or an array of text parts"),
            ))
        }
    };
    let role = if role == "developer" { "system" } else { role };
    Ok(Message {
        role: role.to_string(),
        content,
        tool_calls,
        tool_call_id,
    })
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
    match get(o, "type").and_then(Value::as_str) {
        Some("text") => {}
        Some(other) => {
            return Err(invalid(
                param,
                format!(
                    "{at}: {} parts are not supported (the models served here read text only)",
                    truncate(other, 32)
                ),
            ))
        }
        None => return Err(bad()),
    }
    unknown_key(o, &["type", "text", "cache_control"], param, &at)?;
    match get(o, "cache_control") {
        None | Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(invalid(
                param,
                format!("{at}.cache_control: expected an object"),
            ))
        }
    }
    get(o, "text").and_then(Value::as_str).ok_or_else(bad)
}

/// An assistant message's earlier tool calls.
fn message_tool_calls(param: &str, v: &Value) -> Result<Vec<ToolCall>, ApiError> {
    let at = format!("{param}.tool_calls");
    let items = v
        .as_array()
        .filter(|a| a.len() <= MAX_TOOL_CALLS)
        .ok_or_else(|| {
            invalid(
                param,
                format!("{at}: expected an array of at most {MAX_TOOL_CALLS} tool calls"),
            )
        })?;
    let mut out = Vec::with_capacity(items.len());
    for (k, call) in items.iter().enumerate() {
        let at = format!("{at}[{k}]");
        let bad = |what: &str| invalid(param, format!("{at}{what}"));
        let o = call
            .as_object()
            .ok_or_else(|| bad(": expected an object"))?;
        unknown_key(o, &["id", "type", "function"], param, &at)?;
        let id = get(o, "id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .ok_or_else(|| bad(&format!(".id: expected a string of 1..={MAX_ID_LEN} bytes")))?;
        if get(o, "type").and_then(Value::as_str) != Some("function") {
            return Err(bad(".type: expected \"function\""));
        }
        let f = get(o, "function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(".function: expected an object"))?;
        unknown_key(f, &["name", "arguments"], param, &format!("{at}.function"))?;
        let name = get(f, "name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
            .ok_or_else(|| {
                bad(&format!(
                    ".function.name: expected a string of 1..={MAX_ID_LEN} bytes"
                ))
            })?;
        let arguments = get(f, "arguments")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(".function.arguments: expected a string (JSON text)"))?;
        out.push(ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments: arguments.to_string(),
        });
    }
    Ok(out)
}

/// `tools`: function definitions.
pub(super) fn tools(v: Option<&Value>) -> Result<Vec<ToolSpec>, ApiError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let items = v
        .as_array()
        .ok_or_else(|| invalid("tools", "tools: expected an array"))?;
    if items.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("tools: {} tools, at most {MAX_TOOLS}", items.len()),
        ));
    }
    let mut out: Vec<ToolSpec> = Vec::with_capacity(items.len());
    let mut bytes = 0usize;
    for (i, t) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        let bad = |what: &str| invalid(&param, format!("{param}{what}"));
        let o = t.as_object().ok_or_else(|| bad(": expected an object"))?;
        unknown_key(o, &["type", "function"], &param, &param)?;
        match get(o, "type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(bad(&format!(
                    ".type: {:?} tools are not supported (only \"function\")",
                    truncate(other, 32)
                )))
            }
            None => return Err(bad(".type: expected \"function\"")),
        }
        let f = get(o, "function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(".function: expected an object"))?;
        let at = format!("{param}.function");
        unknown_key(
            f,
            &["name", "description", "parameters", "strict"],
            &param,
            &at,
        )?;
        let name = get(f, "name")
            .and_then(Value::as_str)
            .filter(|n| is_name(n))
            .ok_or_else(|| bad(".function.name: expected 1 to 64 of a-z, A-Z, 0-9, _ and -"))?;
        if out.iter().any(|t| t.name == name) {
            return Err(bad(&format!(".function.name: {name:?} is defined twice")));
        }
        let description = match get(f, "description") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(".function.description: expected a string")),
        };
        let parameters = match get(f, "parameters") {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(bad(".function.parameters: expected a JSON Schema object")),
        };
        match get(f, "strict") {
            None | Some(Value::Bool(_)) => {}
            Some(_) => return Err(bad(".function.strict: expected a boolean")),
        }
        bytes += name.len() + description.as_ref().map_or(0, String::len) + json_len(&parameters);
        if bytes > MAX_TOOLS_BYTES {
            return Err(invalid(
                "tools",
                format!("tools: definitions exceed {MAX_TOOLS_BYTES} bytes"),
            ));
        }
        out.push(ToolSpec {
            name: name.to_string(),
            description,
            parameters,
        });
    }
    Ok(out)
}

/// The length of `v` as compact JSON.
fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// `tool_choice`, checked against the request's `tools`.
pub(super) fn tool_choice(v: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let choice = match v {
        None if tools.is_empty() => return Ok(ToolChoice::None),
        None => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "tool_choice: expected \"none\", \"auto\", \"required\" or \
                     {\"type\": \"function\", \"function\": {\"name\": …}}",
                ))
            }
        },
        Some(Value::Object(o)) => {
            let bad = || {
                invalid(
                    "tool_choice",
                    "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": …}}",
                )
            };
            unknown_key(o, &["type", "function"], "tool_choice", "tool_choice")?;
            if get(o, "type").and_then(Value::as_str) != Some("function") {
                return Err(bad());
            }
            let f = get(o, "function")
                .and_then(Value::as_object)
                .ok_or_else(bad)?;
            unknown_key(f, &["name"], "tool_choice", "tool_choice.function")?;
            let name = get(f, "name").and_then(Value::as_str).ok_or_else(bad)?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(invalid(
                    "tool_choice",
                    format!(
                        "tool_choice: function {:?} is not among the request's tools",
                        truncate(name, 64)
                    ),
                ));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "tool_choice: expected a string or an object",
            ))
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required) {
        return Err(invalid(
            "tool_choice",
            "tool_choice: \"required\" needs tools",
        ));
    }
    Ok(choice)
}

/// `response_format`.
pub(super) fn response_format(v: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = v else {
        return Ok(ResponseFormat::Text);
    };
    let p = "response_format";
    let o = v
        .as_object()
        .ok_or_else(|| invalid(p, "response_format: expected an object"))?;
    let kind = get(o, "type").and_then(Value::as_str);
    match kind {
        Some("text") | Some("json_object") => {
            unknown_key(o, &["type"], p, p)?;
            Ok(if kind == Some("text") {
                ResponseFormat::Text
            } else {
                ResponseFormat::JsonObject
            })
        }
        Some("json_schema") => {
            unknown_key(o, &["type", "json_schema"], p, p)?;
            let s = get(o, "json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid(p, "response_format.json_schema: expected an object"))?;
            let at = "response_format.json_schema";
            unknown_key(s, &["name", "schema", "strict", "description"], p, at)?;
            let name = get(s, "name")
                .and_then(Value::as_str)
                .filter(|n| is_name(n))
                .ok_or_else(|| {
                    invalid(
                        p,
                        format!("{at}.name: expected 1 to 64 of a-z, A-Z, 0-9, _ and -"),
                    )
                })?;
            let schema = match get(s, "schema") {
                Some(v @ Value::Object(_)) => v.clone(),
                _ => {
                    return Err(invalid(
                        p,
                        format!("{at}.schema: expected a JSON Schema object"),
                    ))
                }
            };
            if json_len(&schema) > MAX_SCHEMA_BYTES {
                return Err(invalid(
                    p,
                    format!("{at}.schema: larger than {MAX_SCHEMA_BYTES} bytes"),
                ));
            }
            let strict = match get(s, "strict") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(invalid(p, format!("{at}.strict: expected a boolean"))),
            };
            match get(s, "description") {
                None | Some(Value::String(_)) => {}
                Some(_) => return Err(invalid(p, format!("{at}.description: expected a string"))),
            }
            Ok(ResponseFormat::JsonSchema {
                name: name.to_string(),
                schema,
                strict,
            })
        }
        _ => Err(invalid(
            p,
            "response_format.type: expected \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}
