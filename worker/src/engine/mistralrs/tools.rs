//! Tool calling and structured output for the mistral.rs engine (pure functions).
//!
//! mistral.rs 0.8.1 has a text-based tool-call parser, but `ToolChoice::Tool(_)` can panic its
//! engine and its parser only recognises some model formats, so it is never asked to parse:
//!
//! * **Showing the tools.** When the GGUF's chat template refers to `tools` it renders them
//!   itself (they are passed to mistral.rs with `ToolChoice::None`, which switches its parser
//!   off); assistant tool calls and `tool` messages are then given to the template in OpenAI's
//!   shape. Otherwise (SmolLM2) a system message composed here lists the tools as JSON and
//!   says how to call one; earlier calls are shown as that same JSON in the assistant's
//!   content, and `tool` messages keep their role.
//! * **Forced calls** (`tool_choice` `required` or a function): the output is constrained with
//!   a JSON schema, `{"name": <const>, "arguments": <the tool's parameters>}` (an `anyOf` over
//!   the tools for `required`), and parsed into a tool call when generation ends.
//! * **`auto`**: the output is not constrained. Text whose first non-blank character could
//!   start a call (`{`, `[`, `<tool_call>`) is held back until the end; if it then parses as
//!   one or more calls of known tools (a JSON object or array of `{"name", "arguments" |
//!   "parameters"}`, optionally inside `<tool_call>…</tool_call>` or after `[TOOL_CALLS]`,
//!   the formats models are trained on) it becomes tool calls, otherwise it is sent as text.
//! * **Cut short** by `max_tokens` inside the call form (forced, or `auto` once the name of a
//!   tool is complete): the call with its arguments so far and `finish_reason: "length"`, as
//!   OpenAI returns it ([`cut_call`]) — never the form's JSON as text.
//! * **`none`**: the tools are shown, nothing is parsed.
//!
//! Every JSON schema given to llguidance carries `x-guidance` options: no free whitespace
//! (`, ` and `: ` as separators), so that a small model cannot spend its tokens on blanks.

use indexmap::IndexMap;
use mistralrs::{MessageContent, Tool};
use serde_json::{json, Map, Value};

use crate::engine::{EngineError, Message, ResponseFormat, ToolCall, ToolChoice, ToolSpec};

/// The chat messages of a request, as mistral.rs takes them.
pub(crate) type ChatMessages = Vec<IndexMap<String, MessageContent>>;

fn text(s: impl Into<String>) -> MessageContent {
    // `Either` is not re-exported by mistralrs: `Left(s)` is built from `Err(s)`.
    Err::<Vec<IndexMap<String, Value>>, String>(s.into()).into()
}

fn list(items: Vec<IndexMap<String, Value>>) -> MessageContent {
    Ok::<_, String>(items).into()
}

/// A tool call's arguments as JSON (the text itself when it is not JSON).
fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

/// A tool call as the model is told to write it.
fn call_json(c: &ToolCall) -> Value {
    json!({"name": c.name, "arguments": arguments_value(&c.arguments)})
}

/// The system text describing `tools` (plain templates only).
pub(crate) fn tools_prompt(tools: &[ToolSpec], choice: &ToolChoice) -> String {
    let mut s = String::from("You can use these functions:\n");
    for t in tools {
        let mut f = Map::new();
        f.insert("name".into(), Value::String(t.name.clone()));
        if let Some(d) = &t.description {
            f.insert("description".into(), Value::String(d.clone()));
        }
        f.insert("parameters".into(), t.parameters.clone());
        s.push_str(&Value::Object(f).to_string());
        s.push('\n');
    }
    let form = "reply with only a JSON object {\"name\": <function name>, \"arguments\": \
                <arguments object>} and nothing else";
    match choice {
        ToolChoice::None => s.push_str("Do not call a function now; answer in text."),
        ToolChoice::Auto => {
            s.push_str(&format!(
                "To call a function, {form}. Otherwise answer normally."
            ));
        }
        ToolChoice::Required => s.push_str(&format!("Call one of them now: {form}.")),
        ToolChoice::Function(name) => {
            s.push_str(&format!("Call the function {name} now: {form}."));
        }
    }
    s
}

/// `msgs` as mistral.rs chat messages. `native`: the chat template renders `tools` and tool
/// calls itself; otherwise tools are described in a system message (see the module docs).
pub(crate) fn chat_messages(
    msgs: &[Message],
    tools: &[ToolSpec],
    choice: &ToolChoice,
    native: bool,
) -> ChatMessages {
    let mut out: ChatMessages = Vec::with_capacity(msgs.len() + 1);
    for m in msgs {
        let mut entry = IndexMap::new();
        entry.insert("role".to_string(), text(m.role.clone()));
        if m.tool_calls.is_empty() {
            entry.insert("content".to_string(), text(m.content.clone()));
        } else if native {
            entry.insert("content".to_string(), text(m.content.clone()));
            let calls = m
                .tool_calls
                .iter()
                .map(|c| {
                    IndexMap::from([
                        ("id".to_string(), Value::String(c.id.clone())),
                        ("type".to_string(), Value::String("function".into())),
                        (
                            "function".to_string(),
                            json!({"name": c.name, "arguments": arguments_value(&c.arguments)}),
                        ),
                    ])
                })
                .collect();
            entry.insert("tool_calls".to_string(), list(calls));
        } else {
            let calls = match m.tool_calls.as_slice() {
                [one] => call_json(one),
                many => Value::Array(many.iter().map(call_json).collect()),
            };
            let content = if m.content.is_empty() {
                calls.to_string()
            } else {
                format!("{}\n{calls}", m.content)
            };
            entry.insert("content".to_string(), text(content));
        }
        if let (true, Some(id)) = (native, &m.tool_call_id) {
            entry.insert("tool_call_id".to_string(), text(id.clone()));
        }
        out.push(entry);
    }
    if !native && !tools.is_empty() {
        let prompt = tools_prompt(tools, choice);
        match out.first_mut() {
            Some(first) if msgs.first().is_some_and(|m| m.role == "system") => {
                let content = format!("{}\n\n{prompt}", msgs[0].content);
                first.insert("content".to_string(), text(content));
            }
            _ => out.insert(
                0,
                IndexMap::from([
                    ("role".to_string(), text("system")),
                    ("content".to_string(), text(prompt)),
                ]),
            ),
        }
    }
    out
}

/// `tools` as mistral.rs tool definitions (for templates that render them).
pub(crate) fn mistral_tools(tools: &[ToolSpec]) -> Result<Vec<Tool>, EngineError> {
    tools
        .iter()
        .map(|t| {
            let mut f = Map::new();
            f.insert("name".into(), Value::String(t.name.clone()));
            if let Some(d) = &t.description {
                f.insert("description".into(), Value::String(d.clone()));
            }
            if t.parameters.is_object() {
                f.insert("parameters".into(), t.parameters.clone());
            }
            serde_json::from_value(json!({"type": "function", "function": f}))
                .map_err(|e| EngineError::Unsupported(format!("tool {}: {e}", t.name)))
        })
        .collect()
}

/// Adds this engine's llguidance options to a JSON schema (an object schema; others are left
/// as they are). A request's own `x-guidance` is replaced.
pub(crate) fn with_grammar_options(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// The schema `response_format` asks for (`None` for text).
pub(crate) fn format_schema(format: &ResponseFormat) -> Option<Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "object"})),
        ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
    }
}

/// Moves `$defs` / `definitions` of a tool's parameters to the root of the call schema, so
/// that the usual `#/$defs/…` references still resolve there.
fn hoist_definitions(tool: &ToolSpec, root: &mut Map<String, Value>) -> Result<Value, EngineError> {
    let mut params = tool.parameters.clone();
    if let Some(obj) = params.as_object_mut() {
        for key in ["$defs", "definitions"] {
            let Some(Value::Object(defs)) = obj.remove(key) else {
                continue;
            };
            let Value::Object(merged) = root.entry(key).or_insert_with(|| json!({})) else {
                continue;
            };
            for (name, def) in defs {
                match merged.get(&name) {
                    Some(existing) if *existing != def => {
                        return Err(EngineError::Unsupported(format!(
                            "tool {}: {key}/{name} is defined differently by another tool",
                            tool.name
                        )))
                    }
                    _ => {
                        merged.insert(name, def);
                    }
                }
            }
        }
    }
    Ok(params)
}

/// The schema of a forced tool call (`None` unless `choice` is `required` or a function).
pub(crate) fn forced_call_schema(
    tools: &[ToolSpec],
    choice: &ToolChoice,
) -> Result<Option<Value>, EngineError> {
    let chosen: Vec<&ToolSpec> = match choice {
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| t.name == *name).collect(),
    };
    if chosen.is_empty() {
        return Err(EngineError::Unsupported(match choice {
            ToolChoice::Function(name) => format!("tool_choice names {name}, which is not a tool"),
            _ => "tool_choice required without tools".into(),
        }));
    }
    let mut root = Map::new();
    let mut branches = Vec::with_capacity(chosen.len());
    for t in chosen {
        let params = hoist_definitions(t, &mut root)?;
        branches.push(json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        }));
    }
    let schema = match <[Value; 1]>::try_from(branches) {
        Ok([one]) => {
            if let Value::Object(one) = one {
                root.extend(one);
            }
            Value::Object(root)
        }
        Err(many) => {
            root.insert("anyOf".into(), Value::Array(many));
            Value::Object(root)
        }
    };
    Ok(Some(schema))
}

/// Whether text that starts with `prefix` (after blanks) may still turn out to be a tool call.
pub(crate) fn could_be_call(prefix: &str) -> bool {
    let p = prefix.trim_start();
    p.is_empty()
        || p.starts_with('{')
        || p.starts_with('[')
        || "<tool_call>".starts_with(p)
        || p.starts_with("<tool_call>")
}

/// A fresh call id: `call_` and 24 hex digits.
pub(crate) fn new_call_id() -> String {
    let mut b = [0u8; 12];
    if getrandom::getrandom(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    format!("call_{}", hex::encode(b))
}

/// One call object: `{"name": <a tool>, "arguments" | "parameters": <object or JSON text>}`.
fn parse_one(v: &Value, tools: &[ToolSpec]) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None => "{}".to_string(),
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).ok()?;
            s.clone()
        }
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall {
        id: new_call_id(),
        name: name.to_string(),
        arguments,
    })
}

/// Tool calls in a model's whole output, or `None` when it is not (only) tool calls.
pub(crate) fn parse_calls(output: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    let t = output.trim();
    let t = t.strip_prefix("[TOOL_CALLS]").map(str::trim).unwrap_or(t);
    let mut values = Vec::new();
    if t.starts_with("<tool_call>") {
        let mut rest = t;
        while let Some(after) = rest.strip_prefix("<tool_call>") {
            let (body, tail) = after.split_once("</tool_call>").unwrap_or((after, ""));
            values.push(serde_json::from_str::<Value>(body.trim()).ok()?);
            rest = tail.trim_start();
        }
        if !rest.is_empty() {
            return None;
        }
    } else {
        match serde_json::from_str::<Value>(t).ok()? {
            Value::Array(items) => values = items,
            v => values.push(v),
        }
    }
    let calls = values
        .iter()
        .map(|v| parse_one(v, tools))
        .collect::<Option<Vec<_>>>()?;
    (!calls.is_empty()).then_some(calls)
}

/// A call cut short by `max_tokens`: a prefix of the form the model is told (and, for forced
/// calls, constrained) to write, `{"name": "<tool>", "arguments": <JSON>}`, that ends before
/// the form does. The name must be complete and a tool's, or — for a `forced` call, whose
/// name the grammar restricts to the tools — a prefix of exactly one tool's name; the
/// arguments are their text as far as it got (`""` when it did not reach them), as OpenAI
/// returns a call cut short. `None` when `output` is not such a prefix.
pub(crate) fn cut_call(output: &str, tools: &[ToolSpec], forced: bool) -> Option<ToolCall> {
    let (name, complete, arguments) = cut_call_parts(output)?;
    let tool = if complete {
        tools.iter().find(|t| t.name == name)?
    } else if forced {
        let mut candidates = tools.iter().filter(|t| t.name.starts_with(name));
        match (candidates.next(), candidates.next()) {
            (Some(one), None) => one,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(ToolCall {
        id: new_call_id(),
        name: tool.name.clone(),
        arguments: arguments.trim_end().to_string(),
    })
}

/// The parts of a prefix of `{"name": "<name>", "arguments": <arguments>`: the name as far as
/// it got, whether it is complete, and the arguments' text.
fn cut_call_parts(s: &str) -> Option<(&str, bool, &str)> {
    /// Steps over blanks and `lit`; `Err(true)` when `rest` ends inside `lit` (or before it),
    /// `Err(false)` when it goes on with something else.
    fn eat<'a>(rest: &'a str, lit: &str) -> Result<&'a str, bool> {
        let rest = rest.trim_start();
        match rest.strip_prefix(lit) {
            Some(after) => Ok(after),
            None => Err(lit.starts_with(rest)),
        }
    }
    let mut rest = s;
    for lit in ["{", "\"name\"", ":", "\""] {
        match eat(rest, lit) {
            Ok(after) => rest = after,
            Err(true) => return Some(("", false, "")),
            Err(false) => return None,
        }
    }
    // Tool names have no escapes (validated: letters, digits, `_` and `-`).
    let Some((name, after)) = rest.split_once('"') else {
        return Some((rest, false, ""));
    };
    let mut rest = after;
    for lit in [",", "\"arguments\"", ":"] {
        match eat(rest, lit) {
            Ok(after) => rest = after,
            Err(true) => return Some((name, true, "")),
            Err(false) => return None,
        }
    }
    Some((name, true, rest.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, params: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: Some(format!("does {name}")),
            parameters: params,
        }
    }

    fn weather() -> ToolSpec {
        tool(
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        )
    }

    fn as_text(c: &MessageContent) -> &str {
        c.as_ref().left().map(String::as_str).unwrap_or("<list>")
    }

    #[test]
    fn plain_templates_get_a_system_message_and_json_calls() {
        let msgs = vec![
            Message::text("user", "weather in Paris?"),
            Message {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                ..Message::default()
            },
            Message {
                role: "tool".into(),
                content: "sunny".into(),
                tool_call_id: Some("call_1".into()),
                ..Message::default()
            },
        ];
        let out = chat_messages(&msgs, &[weather()], &ToolChoice::Auto, false);
        assert_eq!(out.len(), 4);
        assert_eq!(as_text(&out[0]["role"]), "system");
        let sys = as_text(&out[0]["content"]);
        assert!(sys.contains(r#""name":"get_weather""#), "{sys}");
        assert!(sys.contains("Otherwise answer normally"), "{sys}");
        assert_eq!(
            as_text(&out[2]["content"]),
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#
        );
        assert_eq!(as_text(&out[3]["role"]), "tool");
        assert!(!out[3].contains_key("tool_call_id"));
        // An existing system message is extended, not duplicated.
        let msgs = vec![
            Message::text("system", "Be brief."),
            Message::text("user", "hi"),
        ];
        let out = chat_messages(
            &msgs,
            &[weather()],
            &ToolChoice::Function("get_weather".into()),
            false,
        );
        assert_eq!(out.len(), 2);
        let sys = as_text(&out[0]["content"]);
        assert!(sys.starts_with("Be brief.\n\nYou can use"), "{sys}");
        assert!(sys.contains("Call the function get_weather now"), "{sys}");
        // No tools: the messages as they are.
        let out = chat_messages(&msgs, &[], &ToolChoice::Auto, false);
        assert_eq!(as_text(&out[0]["content"]), "Be brief.");
    }

    #[test]
    fn native_templates_get_openai_shaped_messages() {
        let msgs = vec![
            Message {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                }],
                ..Message::default()
            },
            Message {
                role: "tool".into(),
                content: "sunny".into(),
                tool_call_id: Some("call_1".into()),
                ..Message::default()
            },
        ];
        let out = chat_messages(&msgs, &[weather()], &ToolChoice::Auto, true);
        assert_eq!(out.len(), 2, "no system message");
        let calls = out[0]["tool_calls"].as_ref().right().expect("a list");
        assert_eq!(calls[0]["id"], json!("call_1"));
        assert_eq!(calls[0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(as_text(&out[1]["tool_call_id"]), "call_1");
        let tools = mistral_tools(&[weather()]).expect("tools");
        assert_eq!(tools[0].function.name, "get_weather");
        assert!(tools[0].function.parameters.is_some());
    }

    #[test]
    fn forced_schemas_name_first_with_hoisted_definitions() {
        let s = forced_call_schema(&[weather()], &ToolChoice::Function("get_weather".into()))
            .expect("schema")
            .expect("forced");
        let text = s.to_string();
        assert!(
            text.find("\"name\"") < text.find("\"arguments\""),
            "name is generated first: {text}"
        );
        assert_eq!(s["properties"]["name"]["const"], json!("get_weather"));
        assert_eq!(s["required"], json!(["name", "arguments"]));
        let with_defs = tool(
            "f",
            json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "$defs": {"X": {"type": "integer"}}}),
        );
        let s = forced_call_schema(&[weather(), with_defs.clone()], &ToolChoice::Required)
            .expect("schema")
            .expect("forced");
        assert_eq!(s["$defs"]["X"], json!({"type": "integer"}));
        assert_eq!(s["anyOf"].as_array().map(Vec::len), Some(2));
        assert!(s["anyOf"][1]["properties"]["arguments"]
            .get("$defs")
            .is_none());
        // Conflicting definitions are refused; so is a function that is not a tool.
        let other = tool("g", json!({"$defs": {"X": {"type": "string"}}}));
        assert!(matches!(
            forced_call_schema(&[with_defs, other], &ToolChoice::Required),
            Err(EngineError::Unsupported(_))
        ));
        assert!(matches!(
            forced_call_schema(&[weather()], &ToolChoice::Function("nope".into())),
            Err(EngineError::Unsupported(_))
        ));
        assert_eq!(
            forced_call_schema(&[weather()], &ToolChoice::Auto),
            Ok(None)
        );
    }

    #[test]
    fn grammar_options_are_set_on_object_schemas() {
        let s = with_grammar_options(json!({"type": "object", "x-guidance": {"lenient": true}}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], json!(false));
        assert!(s["x-guidance"].get("lenient").is_none());
        assert_eq!(with_grammar_options(json!(true)), json!(true));
        assert_eq!(format_schema(&ResponseFormat::Text), None);
        assert_eq!(
            format_schema(&ResponseFormat::JsonObject),
            Some(json!({"type": "object"}))
        );
    }

    #[test]
    fn calls_are_parsed_from_the_usual_formats() {
        let tools = [weather()];
        let one = parse_calls(
            r#" {"name": "get_weather", "arguments": {"city": "Paris"}} "#,
            &tools,
        )
        .expect("a call");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "get_weather");
        assert_eq!(one[0].arguments, r#"{"city":"Paris"}"#);
        assert!(one[0].id.starts_with("call_") && one[0].id.len() == 29);
        let tagged = "<tool_call>\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}</tool_call>";
        let two = parse_calls(tagged, &tools).expect("two calls");
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(two[1].arguments, r#"{"city": "Rome"}"#);
        assert_ne!(two[0].id, two[1].id);
        let arr = parse_calls(
            r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {}}]"#,
            &tools,
        );
        assert_eq!(arr.map(|c| c.len()), Some(1));
        // Not calls: unknown tool, text, trailing text, bad arguments.
        for s in [
            r#"{"name": "other", "arguments": {}}"#,
            "Hello there",
            r#"{"name": "get_weather", "arguments": {}} and more"#,
            r#"{"name": "get_weather", "arguments": 3}"#,
            r#"{"name": "get_weather", "arguments": "not json"}"#,
            "[]",
            "<tool_call>{\"name\": \"get_weather\"}</tool_call> x",
        ] {
            assert_eq!(parse_calls(s, &tools), None, "{s}");
        }
    }

    #[test]
    fn calls_cut_short_keep_their_name_and_arguments_so_far() {
        let tools = [weather(), tool("get_time", json!({"type": "object"}))];
        let cut =
            |s: &str, forced: bool| cut_call(s, &tools, forced).map(|c| (c.name, c.arguments));
        let call = |n: &str, a: &str| Some((n.to_string(), a.to_string()));
        assert_eq!(
            cut(
                "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
                false
            ),
            call("get_weather", "{\"city\": \"Par")
        );
        assert_eq!(
            cut(" {\"name\":\"get_time\",\"arguments\":", false),
            call("get_time", "")
        );
        assert_eq!(
            cut("{\"name\": \"get_weather\"", false),
            call("get_weather", "")
        );
        assert_eq!(
            cut("{\"name\": \"get_weather\", \"argu", false),
            call("get_weather", "")
        );
        // A name cut short: only a forced call, and only when one tool has it as a prefix.
        assert_eq!(cut("{\"name\": \"get_w", true), call("get_weather", ""));
        assert_eq!(cut("{\"name\": \"get_w", false), None);
        assert_eq!(cut("{\"name\": \"get_", true), None);
        assert_eq!(cut("{\"na", true), None);
        assert_eq!(
            cut_call("{\"na", &tools[..1], true).map(|c| c.name),
            Some("get_weather".to_string())
        );
        // Not the form, or not a tool.
        assert_eq!(cut("{\"city\": \"Paris", false), None);
        assert_eq!(cut("{\"name\": \"get_weather\"; \"x", false), None);
        assert_eq!(cut("{\"name\": \"nope\", \"arguments\": {", true), None);
        assert_eq!(cut("Sure! {\"name\"", false), None);
    }

    #[test]
    fn call_prefixes() {
        for p in ["", "  ", " {", "[", "<tool", "<tool_call>{"] {
            assert!(could_be_call(p), "{p:?}");
        }
        for p in ["Hello", " <b>", "1"] {
            assert!(!could_be_call(p), "{p:?}");
        }
    }
}
