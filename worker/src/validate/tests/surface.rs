//! The OpenAI surface apps send: tools, tool_choice, response_format, logprobs, logit_bias,
//! roles, content parts, batches, accepted-and-ignored fields, defaults.

use super::*;

fn param(e: &ApiError) -> &str {
    e.param.as_deref().unwrap_or("")
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
        "strict": true
    }})
}

#[test]
fn tools_are_parsed() {
    let body = with(
        base_chat(),
        "tools",
        json!([weather_tool(), {"type": "function", "function": {"name": "now-2"}}]),
    );
    let v = chat(&body).unwrap();
    assert_eq!(
        v.request.tools,
        vec![
            ToolSpec {
                name: "get_weather".into(),
                description: Some("Weather in a city".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}),
            },
            ToolSpec {
                name: "now-2".into(),
                description: None,
                parameters: json!({"type": "object", "properties": {}}),
            },
        ]
    );
    // With tools and no tool_choice: auto.
    assert_eq!(v.request.tool_choice, ToolChoice::Auto);
    // An empty list is no tools.
    let v = chat(&with(base_chat(), "tools", json!([]))).unwrap();
    assert!(v.request.tools.is_empty());
    assert_eq!(v.request.tool_choice, ToolChoice::None);
}

#[test]
fn bad_tools_are_refused_naming_the_tool() {
    let f = |function: Value| json!([{"type": "function", "function": function}]);
    let cases = [
        (json!({}), "tools"),
        (json!([1]), "tools[0]"),
        (
            json!([{"type": "code_interpreter", "function": {"name": "x"}}]),
            "tools[0]",
        ),
        (json!([{"function": {"name": "x"}}]), "tools[0]"),
        (json!([{"type": "function"}]), "tools[0]"),
        (
            json!([{"type": "function", "function": {"name": "x"}, "extra": 1}]),
            "tools[0]",
        ),
        (f(json!({"name": ""})), "tools[0]"),
        (f(json!({"name": "has space"})), "tools[0]"),
        (f(json!({"name": "x".repeat(65)})), "tools[0]"),
        (f(json!({"name": "é"})), "tools[0]"),
        (f(json!({"description": "no name"})), "tools[0]"),
        (f(json!({"name": "x", "parameters": "object"})), "tools[0]"),
        (f(json!({"name": "x", "parameters": []})), "tools[0]"),
        (f(json!({"name": "x", "description": 5})), "tools[0]"),
        (f(json!({"name": "x", "strict": "yes"})), "tools[0]"),
        (f(json!({"name": "x", "examples": []})), "tools[0]"),
        (json!([weather_tool(), weather_tool()]), "tools[1]"),
    ];
    for (tools, want) in cases {
        let e = bad(chat(&with(base_chat(), "tools", tools.clone())));
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{tools}");
        assert_eq!(param(&e), want, "{tools}: {}", e.message);
    }
    let e = bad(chat(&with(
        base_chat(),
        "tools",
        json!([weather_tool(), weather_tool()]),
    )));
    assert!(e.message.contains("defined twice"), "{}", e.message);
    // Count and size bounds.
    let many: Vec<Value> = (0..=MAX_TOOLS)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    let e = bad(chat(&with(base_chat(), "tools", json!(many))));
    assert_eq!(param(&e), "tools");
    assert!(e.message.contains("at most 128"), "{}", e.message);
    let ok: Vec<Value> = many[..MAX_TOOLS].to_vec();
    assert_eq!(
        chat(&with(base_chat(), "tools", json!(ok)))
            .unwrap()
            .request
            .tools
            .len(),
        MAX_TOOLS
    );
    let big = "d".repeat(MAX_TOOLS_BYTES / 2);
    let tools = json!([
        {"type": "function", "function": {"name": "a", "description": big}},
        {"type": "function", "function": {"name": "b", "description": big}},
    ]);
    let e = bad(chat(&with(base_chat(), "tools", tools)));
    assert_eq!(param(&e), "tools");
    assert!(e.message.contains("exceed"), "{}", e.message);
}

#[test]
fn tool_choice_forms() {
    let with_tools = |choice: Value| {
        with(
            with(base_chat(), "tools", json!([weather_tool()])),
            "tool_choice",
            choice,
        )
    };
    for (choice, want) in [
        (json!("none"), ToolChoice::None),
        (json!("auto"), ToolChoice::Auto),
        (json!("required"), ToolChoice::Required),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            ToolChoice::Function("get_weather".into()),
        ),
    ] {
        let v = chat(&with_tools(choice.clone())).unwrap();
        assert_eq!(v.request.tool_choice, want, "{choice}");
    }
    for choice in [
        json!("sometimes"),
        json!(true),
        json!({"type": "function", "function": {"name": "other"}}),
        json!({"type": "function"}),
        json!({"type": "function", "function": {}}),
        json!({"type": "function", "function": {"name": "get_weather", "x": 1}}),
        json!({"type": "allowed_tools", "allowed_tools": {}}),
        json!({"type": "function", "function": {"name": "get_weather"}, "x": 1}),
    ] {
        let e = bad(chat(&with_tools(choice.clone())));
        assert_eq!(param(&e), "tool_choice", "{choice}");
    }
    let e = bad(chat(&with_tools(
        json!({"type": "function", "function": {"name": "other"}}),
    )));
    assert!(e.message.contains("not among"), "{}", e.message);
    // Without tools: none and auto are harmless; required and a function are refused.
    for (choice, want) in [
        (json!("none"), ToolChoice::None),
        (json!("auto"), ToolChoice::Auto),
    ] {
        let v = chat(&with(base_chat(), "tool_choice", choice)).unwrap();
        assert_eq!(v.request.tool_choice, want);
    }
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let e = bad(chat(&with(base_chat(), "tool_choice", choice.clone())));
        assert_eq!(param(&e), "tool_choice", "{choice}");
    }
}

#[test]
fn response_formats() {
    let rf = |v: Value| chat(&with(base_chat(), "response_format", v));
    assert_eq!(
        rf(json!({"type": "text"})).unwrap().request.response_format,
        ResponseFormat::Text
    );
    assert_eq!(
        rf(json!({"type": "json_object"}))
            .unwrap()
            .request
            .response_format,
        ResponseFormat::JsonObject
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
                        "required": ["a"], "additionalProperties": false});
    let v = rf(json!({"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema, "strict": true, "description": "an answer"}}))
    .unwrap();
    assert_eq!(
        v.request.response_format,
        ResponseFormat::JsonSchema {
            name: "answer".into(),
            schema: schema.clone(),
            strict: true
        }
    );
    let v = rf(json!({"type": "json_schema", "json_schema": {
        "name": "answer", "schema": schema, "strict": null}}))
    .unwrap();
    assert!(matches!(
        v.request.response_format,
        ResponseFormat::JsonSchema { strict: false, .. }
    ));
    for bad_format in [
        json!("json"),
        json!({}),
        json!({"type": "yaml"}),
        json!({"type": "text", "json_schema": {}}),
        json!({"type": "json_schema"}),
        json!({"type": "json_schema", "json_schema": {"schema": {}}}),
        json!({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
        json!({"type": "json_schema", "json_schema": {"name": "a"}}),
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": true}}),
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "strict": 1}}),
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "x": 1}}),
        json!({"type": "json_schema", "json_schema": {
            "name": "a", "schema": {"description": "x".repeat(MAX_SCHEMA_BYTES)}}}),
    ] {
        let e = bad(rf(bad_format.clone()));
        assert_eq!(param(&e), "response_format", "{bad_format}");
    }
}

#[test]
fn chat_logprobs() {
    let lp = |extra: &[(&str, Value)]| {
        let mut b = base_chat();
        for (k, v) in extra {
            b[*k] = v.clone();
        }
        chat(&b)
    };
    let top = |r: Result<ValidatedRequest, ApiError>| r.unwrap().request.sampling.top_logprobs;
    assert_eq!(top(lp(&[("logprobs", json!(true))])), Some(0));
    assert_eq!(top(lp(&[("logprobs", json!(false))])), None);
    assert_eq!(
        top(lp(&[
            ("logprobs", json!(true)),
            ("top_logprobs", json!(20))
        ])),
        Some(20)
    );
    assert_eq!(
        top(lp(&[("logprobs", json!(true)), ("top_logprobs", json!(0))])),
        Some(0)
    );
    for (extra, want) in [
        (vec![("logprobs", json!(1))], "logprobs"),
        (vec![("top_logprobs", json!(3))], "top_logprobs"),
        (
            vec![("logprobs", json!(false)), ("top_logprobs", json!(3))],
            "top_logprobs",
        ),
        (
            vec![("logprobs", json!(true)), ("top_logprobs", json!(21))],
            "top_logprobs",
        ),
        (
            vec![("logprobs", json!(true)), ("top_logprobs", json!(-1))],
            "top_logprobs",
        ),
    ] {
        let e = bad(lp(&extra));
        assert_eq!(param(&e), want, "{extra:?}");
    }
    let e = bad(lp(&[("top_logprobs", json!(3))]));
    assert!(e.message.contains("requires logprobs"), "{}", e.message);
}

#[test]
fn completion_logprobs_are_the_legacy_integer() {
    for n in 0..=5u8 {
        let v = completion(&json!({"model": "m", "prompt": "p", "logprobs": n})).unwrap();
        assert_eq!(v.request.sampling.top_logprobs, Some(n));
    }
    let v = completion(&json!({"model": "m", "prompt": "p"})).unwrap();
    assert_eq!(v.request.sampling.top_logprobs, None);
    let e = bad(completion(
        &json!({"model": "m", "prompt": "p", "top_logprobs": 2}),
    ));
    assert_eq!(param(&e), "top_logprobs");
}

#[test]
fn logit_bias_entries() {
    let v = chat(&with(
        base_chat(),
        "logit_bias",
        json!({"50256": -100, "9": 100, "10": 2.5, "0": 0}),
    ))
    .unwrap();
    assert_eq!(
        v.request.sampling.logit_bias,
        vec![(0, 0.0), (9, 100.0), (10, 2.5), (50256, -100.0)]
    );
    let v = completion(&json!({"model": "m", "prompt": "p", "logit_bias": {"7": -1}})).unwrap();
    assert_eq!(v.request.sampling.logit_bias, vec![(7, -1.0)]);
    let too_many: Map<String, Value> = (0..=MAX_LOGIT_BIAS)
        .map(|i| (i.to_string(), json!(1)))
        .collect();
    for bias in [
        json!([1]),
        json!({"x": 1}),
        json!({"07": 1}),
        json!({"-1": 1}),
        json!({"4294967296": 1}),
        json!({" 7": 1}),
        json!({"7": 101}),
        json!({"7": -100.5}),
        json!({"7": "1"}),
        Value::Object(too_many),
    ] {
        let e = bad(chat(&with(base_chat(), "logit_bias", bias.clone())));
        assert_eq!(param(&e), "logit_bias", "{bias}");
    }
    let ok: Map<String, Value> = (0..MAX_LOGIT_BIAS)
        .map(|i| (i.to_string(), json!(1)))
        .collect();
    chat(&with(base_chat(), "logit_bias", Value::Object(ok))).unwrap();
}

#[test]
fn roles_developer_tool_and_assistant_tool_calls() {
    let body = json!({"model": "m", "messages": [
        {"role": "developer", "content": "be terse"},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "x", "arguments": ""}}
        ]},
        {"role": "assistant", "refusal": "I can't", "content": null},
        {"role": "assistant", "content": "It is sunny.", "tool_calls": [], "refusal": null,
         "audio": null, "function_call": null}
    ]});
    let v = chat(&body).unwrap();
    let Input::Chat(msgs) = v.request.input else {
        panic!("not chat")
    };
    assert_eq!(msgs[0], Message::text("system", "be terse"));
    assert_eq!(
        msgs[2],
        Message {
            role: "assistant".into(),
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }],
            tool_call_id: None,
        }
    );
    assert_eq!(
        msgs[3],
        Message {
            role: "tool".into(),
            content: "sunny".into(),
            tool_calls: vec![],
            tool_call_id: Some("call_1".into()),
        }
    );
    assert_eq!(msgs[4].tool_calls[0].arguments, "");
    assert_eq!(msgs[5], Message::text("assistant", "I can't"));
    assert_eq!(msgs[6], Message::text("assistant", "It is sunny."));
}

#[test]
fn role_rules_are_enforced() {
    let call = json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let cases = [
        // tool messages need a tool_call_id, and only they may have one
        json!({"role": "tool", "content": "x"}),
        json!({"role": "tool", "content": "x", "tool_call_id": ""}),
        json!({"role": "tool", "content": "x", "tool_call_id": 5}),
        json!({"role": "tool", "tool_call_id": "c"}),
        json!({"role": "user", "content": "x", "tool_call_id": "c"}),
        // only assistants make tool calls or refuse
        json!({"role": "user", "content": "x", "tool_calls": [call]}),
        json!({"role": "system", "content": "x", "refusal": "no"}),
        // an assistant needs content unless it called tools or refused
        json!({"role": "assistant", "content": null}),
        json!({"role": "assistant"}),
        json!({"role": "assistant", "tool_calls": []}),
        // malformed calls
        json!({"role": "assistant", "tool_calls": call}),
        json!({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
        json!({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}),
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}),
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "", "arguments": "{}"}}]}),
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
        json!({"role": "assistant", "refusal": 3}),
        // unknown non-null keys
        json!({"role": "user", "content": "x", "audio": {"id": "a"}}),
    ];
    for m in cases {
        let e = bad(chat(&json!({"model": "m", "messages": [m.clone()]})));
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{m}");
        assert_eq!(param(&e), "messages[0]", "{m}: {}", e.message);
    }
    let calls: Vec<Value> = (0..=MAX_TOOL_CALLS).map(|_| call.clone()).collect();
    let e = bad(chat(
        &json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": calls}]}),
    ));
    assert!(e.message.contains("at most 128"), "{}", e.message);
}

#[test]
fn content_parts_accept_cache_control_and_refuse_media() {
    let v = chat(
        &json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b", "cache_control": null}
        ]}]}),
    )
    .unwrap();
    assert_eq!(
        v.request.input,
        Input::Chat(vec![Message::text("user", "a\nb")])
    );
    for (part, needle) in [
        (
            json!({"type": "image_url", "image_url": {"url": "data:x"}}),
            "image_url parts are not supported",
        ),
        (
            json!({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}),
            "input_audio parts are not supported",
        ),
        (
            json!({"type": "file", "file": {}}),
            "file parts are not supported",
        ),
        (
            json!({"type": "text", "text": "a", "cache_control": "yes"}),
            "cache_control",
        ),
        (
            json!({"type": "text", "text": "a", "x": 1}),
            "unknown field `x`",
        ),
        (json!({"text": "a"}), "expected"),
    ] {
        let e = bad(chat(
            &json!({"model": "m", "messages": [{"role": "user", "content": [part.clone()]}]}),
        ));
        assert_eq!(param(&e), "messages[0]", "{part}");
        assert!(e.message.contains(needle), "{part}: {}", e.message);
    }
}

#[test]
fn ignored_fields_are_accepted_and_change_nothing() {
    let plain = chat(&base_chat()).unwrap();
    let fields = [
        ("user", json!("u-1")),
        ("safety_identifier", json!("hash")),
        ("prompt_cache_key", json!("k")),
        ("store", json!(false)),
        ("metadata", json!({"app": "demo", "run": "7"})),
        ("service_tier", json!("auto")),
        ("reasoning_effort", json!("low")),
        ("parallel_tool_calls", json!(false)),
        ("prediction", json!({"type": "content", "content": "draft"})),
        ("modalities", json!(["text"])),
        ("stream_options", json!({"include_obfuscation": true})),
    ];
    let mut all = base_chat();
    for (k, v) in &fields {
        let one = chat(&with(base_chat(), k, v.clone())).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(one, plain, "{k}");
        all[*k] = v.clone();
    }
    assert_eq!(chat(&all).unwrap(), plain);
    // Their shapes are still checked.
    for (k, v) in [
        ("store", json!("yes")),
        ("metadata", json!("x")),
        ("metadata", json!({"a": 1})),
        ("metadata", json!({"k": "v".repeat(513)})),
        (
            "metadata",
            Value::Object((0..17).map(|i| (i.to_string(), json!("v"))).collect()),
        ),
        ("service_tier", json!("gold")),
        ("reasoning_effort", json!("max")),
        ("parallel_tool_calls", json!(1)),
        ("prediction", json!({"type": "other", "content": "x"})),
        ("prediction", json!("x")),
        ("modalities", json!(["text", "audio"])),
        ("modalities", json!([])),
        ("safety_identifier", json!(1)),
        ("prompt_cache_key", json!([])),
    ] {
        let e = bad(chat(&with(base_chat(), k, v.clone())));
        assert_eq!(param(&e), k, "{k}={v}");
    }
    let e = bad(chat(&with(
        base_chat(),
        "stream_options",
        json!({"include_obfuscation": "no"}),
    )));
    assert_eq!(param(&e), "stream_options");
    // Refused outright: fields that would change the output and are not supported.
    for k in [
        "audio",
        "functions",
        "function_call",
        "web_search_options",
        "verbosity",
    ] {
        let e = bad(chat(&with(base_chat(), k, json!({}))));
        assert_eq!(param(&e), k);
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }
    // Completions ignore `user` only.
    let p = completion(&json!({"model": "m", "prompt": "p"})).unwrap();
    let u = completion(&json!({"model": "m", "prompt": "p", "user": "u"})).unwrap();
    assert_eq!(p, u);
}

#[test]
fn completions_batch_splits_the_budget() {
    let v =
        completion(&json!({"model": "m", "prompt": ["a", "b", "c"], "max_tokens": 100})).unwrap();
    assert_eq!(v.request.input, Input::Prompt("a".into()));
    assert_eq!(v.more_prompts, vec!["b".to_string(), "c".to_string()]);
    assert_eq!(v.request.sampling.max_tokens, 100);
    // Absent max_tokens: min(header 1000, model 512) / 3.
    let v = completion(&json!({"model": "m", "prompt": ["a", "b", "c"]})).unwrap();
    assert_eq!(v.request.sampling.max_tokens, 170);
    // A list of one string is the string.
    let v = completion(&json!({"model": "m", "prompt": ["only"]})).unwrap();
    assert_eq!(v.request.input, Input::Prompt("only".into()));
    assert!(v.more_prompts.is_empty());
    assert_eq!(v.request.sampling.max_tokens, 512);
    let max: Vec<String> = (0..MAX_PROMPTS).map(|i| format!("p{i}")).collect();
    let v = completion(&json!({"model": "m", "prompt": max})).unwrap();
    assert_eq!(v.more_prompts.len(), MAX_PROMPTS - 1);
    let over: Vec<String> = (0..=MAX_PROMPTS).map(|i| format!("p{i}")).collect();
    let e = bad(completion(&json!({"model": "m", "prompt": over})));
    assert_eq!(param(&e), "prompt");
    assert!(e.message.contains("1..=16"), "{}", e.message);
    // A budget smaller than the batch: refused, naming it.
    let e = bad(validate(
        Endpoint::Completions,
        &meta("m", 2),
        json!({"model": "m", "prompt": ["a", "b", "c"]})
            .to_string()
            .as_bytes(),
        &models(),
    ));
    assert_eq!(param(&e), "prompt");
    assert!(e.message.contains("2 are reserved"), "{}", e.message);
}

#[test]
fn n_choices_split_the_budget() {
    let v = chat(&with(base_chat(), "n", json!(3))).unwrap();
    assert_eq!(v.n, 3);
    assert!(v.more_prompts.is_empty());
    // Absent max_tokens: min(header 1000, model 512) / 3 choices.
    assert_eq!(v.request.sampling.max_tokens, 170);
    let v = chat(&with(
        with(base_chat(), "n", json!(2)),
        "max_tokens",
        json!(9),
    ))
    .unwrap();
    assert_eq!(v.request.sampling.max_tokens, 9);
    assert_eq!(chat(&base_chat()).unwrap().n, 1);
    // Completions: n per prompt, n × prompts choices in all; best_of only as n.
    let v = completion(&json!({"model": "m", "prompt": ["a", "b"], "n": 4, "best_of": 4})).unwrap();
    assert_eq!((v.n, v.more_prompts.len()), (4, 1));
    assert_eq!(v.request.sampling.max_tokens, 64);
    let v = chat(&with(base_chat(), "n", json!(MAX_CHOICES))).unwrap();
    assert_eq!(v.n as usize, MAX_CHOICES);
    let e = bad(completion(
        &json!({"model": "m", "prompt": ["a", "b", "c"], "n": 6}),
    ));
    assert_eq!(param(&e), "n");
    assert!(
        e.message.contains("18 choices, at most 16"),
        "{}",
        e.message
    );
    let e = bad(completion(
        &json!({"model": "m", "prompt": "p", "n": 2, "best_of": 1}),
    ));
    assert_eq!(param(&e), "best_of");
    // A budget smaller than the choices: refused, naming `n`.
    let e = bad(validate(
        Endpoint::ChatCompletions,
        &meta("m", 3),
        with(base_chat(), "n", json!(4)).to_string().as_bytes(),
        &models(),
    ));
    assert_eq!(param(&e), "n");
    assert!(
        e.message.contains("4 choices need at least 4"),
        "{}",
        e.message
    );
}

#[test]
fn defaults_are_openais() {
    let v = chat(&base_chat()).unwrap();
    assert_eq!(v.request.sampling.temperature, Some(1.0));
    let v = chat(&with(base_chat(), "temperature", json!(0))).unwrap();
    assert_eq!(v.request.sampling.temperature, Some(0.0));
    let v = completion(&json!({"model": "m", "prompt": "p"})).unwrap();
    assert_eq!(v.request.sampling.temperature, Some(1.0));
    // max_tokens absent: everything the proxy reserved, within the model's limit.
    let body = base_chat().to_string();
    let v = validate(
        Endpoint::ChatCompletions,
        &meta("m", 300),
        body.as_bytes(),
        &models(),
    )
    .unwrap();
    assert_eq!(v.request.sampling.max_tokens, 300);
}

/// Every field the validator knows appears in docs/openai-compatibility.md, in a table row
/// whose verdict matches (honoured, ignored); and refused examples are listed as refused.
#[test]
fn the_compatibility_page_lists_every_field() {
    let doc = include_str!("../../../../docs/openai-compatibility.md");
    let row = |section: &str, field: &str| -> String {
        let start = doc
            .find(&format!("## {section}"))
            .unwrap_or_else(|| panic!("no section {section}"));
        let rest = &doc[start + 3..];
        let end = rest.find("\n## ").unwrap_or(rest.len());
        rest[..end]
            .lines()
            .find(|l| l.starts_with(&format!("| `{field}` ")))
            .unwrap_or_else(|| panic!("{section}: no row for `{field}`"))
            .to_string()
    };
    for (section, honoured, ignored) in [
        ("Chat completions", CHAT_FIELDS, CHAT_IGNORED),
        ("Completions", COMPLETION_FIELDS, COMPLETION_IGNORED),
    ] {
        for f in honoured {
            let r = row(section, f);
            assert!(r.contains("| honoured |"), "{section} `{f}`: {r}");
        }
        for f in ignored {
            let r = row(section, f);
            assert!(r.contains("| ignored |"), "{section} `{f}`: {r}");
        }
    }
    for f in ["audio", "functions", "function_call", "web_search_options"] {
        assert!(row("Chat completions", f).contains("| refused |"), "{f}");
    }
    assert!(row("Completions", "suffix").contains("| refused |"));
}
