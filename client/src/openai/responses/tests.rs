use protocol::sse::Decoder;

use super::*;

fn chat(body: Value) -> Map<String, Value> {
    let t = translate(body.to_string().as_bytes()).unwrap();
    match serde_json::from_slice(&t.chat).unwrap() {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn refused(body: Value) -> ApiError {
    let e = translate(body.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest, "{e}");
    e
}

#[test]
fn a_string_input_is_one_user_message() {
    let c = chat(
        json!({"model": "m", "input": "Hi", "instructions": "Be brief.",
                        "max_output_tokens": 20, "temperature": 0.5, "stream": true,
                        "user": "u1", "metadata": {"k": "v"}, "store": true}),
    );
    assert_eq!(
        Value::Object(c),
        json!({
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"}],
            "max_completion_tokens": 20, "temperature": 0.5, "stream": true,
            "user": "u1", "metadata": {"k": "v"},
        })
    );
}

#[test]
fn a_conversation_with_tool_calls_becomes_chat_messages() {
    let c = chat(json!({"model": "m", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        // What the SDK sends back from a previous response's output.
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": [],
                      "logprobs": null}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "18 C"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "noon"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        {"role": "user", "content": "Why?"},
    ]}));
    assert_eq!(
        c["messages"],
        json!([
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
             "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_b",
             "content": [{"type": "text", "text": "noon"}]},
            {"role": "assistant", "content": null, "refusal": "No."},
            {"role": "user", "content": "Why?"},
        ])
    );
    // A call with no assistant message before it gets one of its own.
    let c = chat(json!({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]}));
    assert_eq!(
        c["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    );
}

#[test]
fn tools_formats_and_logprobs_translate() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let c = chat(json!({
        "model": "m", "input": "x",
        "tools": [{"type": "function", "name": "f", "description": "d",
                   "parameters": schema, "strict": true},
                  {"type": "function", "name": "g", "description": null}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "s", "schema": schema,
                            "strict": true}, "verbosity": "medium"},
        "include": ["reasoning.encrypted_content", INCLUDE_LOGPROBS],
        "top_logprobs": 3,
        "reasoning": {"effort": "low", "summary": "auto"},
    }));
    assert_eq!(
        c["tools"],
        json!([
            {"type": "function", "function": {"name": "f", "description": "d",
                                              "parameters": schema, "strict": true}},
            {"type": "function", "function": {"name": "g"}},
        ])
    );
    assert_eq!(
        c["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(c["parallel_tool_calls"], json!(false));
    assert_eq!(
        c["response_format"],
        json!({"type": "json_schema",
               "json_schema": {"name": "s", "schema": schema, "strict": true}})
    );
    assert_eq!(
        (&c["logprobs"], &c["top_logprobs"]),
        (&json!(true), &json!(3))
    );
    assert_eq!(c["reasoning_effort"], "low");
    assert!(!c.contains_key("include") && !c.contains_key("text"));

    let c = chat(
        json!({"model": "m", "input": "x", "tool_choice": "required",
                        "text": {"format": {"type": "json_object"}}}),
    );
    assert_eq!(c["tool_choice"], "required");
    assert_eq!(c["response_format"], json!({"type": "json_object"}));
    assert!(!c.contains_key("logprobs"));
    // Logprobs asked through `include` alone.
    let c = chat(json!({"model": "m", "input": "x", "include": [INCLUDE_LOGPROBS]}));
    assert_eq!(c["logprobs"], json!(true));
    assert!(!c.contains_key("top_logprobs"));
}

#[test]
fn what_cannot_be_served_is_refused_naming_the_field() {
    for (body, param, needle) in [
        (
            json!({"model": "m", "input": "x", "seed": 1}),
            "seed",
            "unknown field",
        ),
        (
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
            "stores no responses",
        ),
        (
            json!({"model": "m", "input": "x", "conversation": "conv_1"}),
            "conversation",
            "stores no",
        ),
        (
            json!({"model": "m", "input": "x", "max_tool_calls": 2}),
            "max_tool_calls",
            "not supported",
        ),
        (
            json!({"model": "m", "input": "x", "truncation": "auto"}),
            "truncation",
            "never cut",
        ),
        (
            json!({"model": "m", "input": "x", "background": true}),
            "background",
            "not supported",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
            "only function tools",
        ),
        (
            json!({"model": "m", "input": "x", "tool_choice": {"type": "mcp"}}),
            "tool_choice.type",
            "not supported",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": "http://x"}]}]}),
            "input[0].content[0].type",
            "text only",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "input[0].type",
            "stores no items",
        ),
        (
            json!({"model": "m", "input": [{"type": "web_search_call"}]}),
            "input[0].type",
            "not supported",
        ),
        (
            json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
            "input[0].role",
            "not one of",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": "x", "name": "n"}]}),
            "input[0].name",
            "unknown field",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "refusal", "refusal": "x"}]}]}),
            "input[0].content[0].type",
            "not supported",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f",
                                            "arguments": "{}"}]}),
            "input[0].call_id",
            "required",
        ),
        (json!({"model": "m"}), "input", "required"),
        (json!({"model": "m", "input": []}), "input", "no message"),
        (
            json!({"model": "m", "input": [], "instructions": "x"}),
            "input",
            "no message",
        ),
        (json!({"model": "m", "input": 3}), "input", "expected"),
        (json!({"input": "x"}), "model", "required"),
        (
            json!({"model": "m", "input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
            "1..=",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "grammar"}}}),
            "text.format.type",
            "not one of",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"verbosity": "low"}}),
            "text.verbosity",
            "medium",
        ),
        (
            json!({"model": "m", "input": "x", "stream": "yes"}),
            "stream",
            "boolean",
        ),
        (
            json!({"model": "m", "input": "x", "include": [1]}),
            "include[0]",
            "string",
        ),
        (
            json!({"model": "m", "input": "x", "reasoning": {"effort": "low", "x": 1}}),
            "reasoning.x",
            "unknown field",
        ),
    ] {
        let e = refused(body.clone());
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        assert!(e.message.contains(needle), "{body}: {e}");
    }
    // Duplicate keys anywhere, as the worker refuses them.
    let e = translate(br#"{"model":"m","input":[{"role":"user","role":"system","content":"x"}]}"#)
        .unwrap_err();
    assert!(
        e.message.contains("duplicate key `role` in input[0]"),
        "{e}"
    );
    assert!(translate(b"[1]").is_err());
    assert!(translate(b"{").is_err());
}

#[test]
fn accepted_and_ignored_fields_do_not_reach_the_chat_request() {
    let c = chat(
        json!({"model": "m", "input": "x", "store": false, "truncation": "disabled",
                        "background": false, "stream_options": {"include_obfuscation": false},
                        "previous_response_id": null, "service_tier": "auto",
                        "prompt_cache_key": "k", "safety_identifier": "s"}),
    );
    for k in ["store", "truncation", "background", "stream_options"] {
        assert!(!c.contains_key(k), "{k}");
    }
    assert_eq!(c["service_tier"], "auto");
    assert_eq!(c["prompt_cache_key"], "k");
}

// --- the response stream -------------------------------------------------------------------

fn chunk(delta: Value, finish: Option<&str>) -> Event {
    chunk_with(delta, finish, Value::Null)
}

fn chunk_with(delta: Value, finish: Option<&str>, logprobs: Value) -> Event {
    Event::data(
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
               "model": "served-m",
               "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                            "finish_reason": finish}]})
        .to_string(),
    )
}

const USAGE: Usage = Usage {
    prompt_tokens: 11,
    cached_tokens: 2,
    completion_tokens: 5,
    reasoning_tokens: 0,
};

fn echo(body: Value) -> Echo {
    translate(body.to_string().as_bytes()).unwrap().echo
}

/// Runs `events` through a stream; returns the decoded events and the stream.
fn run(events: &[Event], emit: bool) -> (Vec<Value>, ResponseStream) {
    let mut s = ResponseStream::new(echo(json!({"model": "m", "input": "x"})), "abc", emit);
    let mut bytes = Vec::new();
    for ev in events {
        bytes.extend(s.on_event(ev));
    }
    if !s.is_finished() {
        bytes.extend(s.on_end());
    }
    let mut d = Decoder::new(1 << 20);
    let decoded = d
        .feed(&bytes)
        .unwrap()
        .into_iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            // The `event:` line names the type.
            assert_eq!(e.name.as_deref(), v["type"].as_str(), "{v}");
            v
        })
        .collect();
    (decoded, s)
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[test]
fn a_text_stream_becomes_responses_events_and_the_final_object() {
    let input = [
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hello"}), None),
        chunk(json!({"content": " world"}), None),
        chunk(json!({}), Some("stop")),
        Event::named("cocoon-receipt", "{}"),
        Event::usage(&USAGE),
        Event::done(),
    ];
    let (events, s) = run(&input, true);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], json!(i));
    }
    let created = &events[0]["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["id"], "resp_abc");
    assert_eq!(events[2]["item"]["id"], "msg_abc_0");
    assert_eq!(events[4]["delta"], "Hello");
    assert_eq!(events[6]["text"], "Hello world");
    let r = &events[9]["response"];
    assert_eq!(Some(r), s.response());
    assert_eq!(r["status"], "completed");
    assert_eq!(r["object"], "response");
    assert_eq!(r["model"], "served-m");
    assert_eq!(r["store"], json!(false));
    assert_eq!(r["tools"], json!([]));
    assert_eq!(r["text"], json!({"format": {"type": "text"}}));
    assert_eq!(r["incomplete_details"], Value::Null);
    assert_eq!(
        r["output"],
        json!([{"type": "message", "id": "msg_abc_0", "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello world", "annotations": [],
                             "logprobs": []}]}])
    );
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 11, "input_tokens_details": {"cached_tokens": 2},
               "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 16})
    );
    assert_eq!(s.usage(), Some(USAGE));
    assert!(s.error().is_none());

    // Without events: the same object, no bytes.
    let (quiet, q) = run(&input, false);
    assert!(quiet.is_empty());
    let mut a = q.response().unwrap().clone();
    let mut b = r.clone();
    a["created_at"] = json!(0);
    b["created_at"] = json!(0);
    assert_eq!(a, b);
}

#[test]
fn tool_calls_become_function_call_items_after_the_text() {
    let input = [
        chunk(json!({"content": "Let me check."}), None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "weather", "arguments": "{\"ci"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"name": "time",
                                                             "arguments": "{}"}}]}),
            Some("tool_calls"),
        ),
        Event::usage(&USAGE),
        Event::done(),
    ];
    let (events, s) = run(&input, true);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(
        events[8]["item"],
        json!({"type": "function_call", "id": "fc_abc_1", "status": "in_progress",
               "call_id": "call_1", "name": "weather", "arguments": ""})
    );
    assert_eq!(events[9]["output_index"], json!(1));
    assert_eq!(events[11]["arguments"], "{\"city\":\"Paris\"}");
    let out = &s.response().unwrap()["output"];
    assert_eq!(out.as_array().unwrap().len(), 3);
    assert_eq!(
        out[2],
        json!({"type": "function_call", "id": "fc_abc_2", "status": "completed",
               "call_id": "call_abc_1", "name": "time", "arguments": "{}"})
    );
    assert_eq!(s.response().unwrap()["status"], "completed");

    // A call's deltas resumed after another call's: the upstream is broken.
    let (events, s) = run(
        &[
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"name": "a"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "function": {"name": "b"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                None,
            ),
        ],
        true,
    );
    assert_eq!(types(&events).last(), Some(&"response.failed"));
    assert!(s.error().unwrap().message.contains("resumed"));
}

#[test]
fn the_length_limit_makes_the_response_incomplete() {
    let (events, s) = run(
        &[
            chunk(json!({"content": "One two"}), Some("length")),
            Event::usage(&USAGE),
            Event::done(),
        ],
        true,
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    let r = s.response().unwrap();
    assert_eq!(r["status"], "incomplete");
    assert_eq!(
        r["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
}

#[test]
fn errors_after_the_start_end_with_response_failed() {
    // The proxy's error event mid-stream.
    let (events, s) = run(
        &[
            chunk(json!({"content": "Hel"}), None),
            Event::error(&ApiError::new(ErrorKind::Timeout, "worker stalled")),
        ],
        true,
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.failed");
    let r = &last["response"];
    assert_eq!(r["status"], "failed");
    assert_eq!(
        r["error"],
        json!({"code": "timeout", "message": "worker stalled"})
    );
    assert_eq!(r["output"][0]["status"], "incomplete");
    assert_eq!(r["output"][0]["content"][0]["text"], "Hel");
    assert!(s.response().is_none());
    assert_eq!(s.error().unwrap().kind, ErrorKind::Timeout);
    // Nothing after the end.
    let mut s = s;
    assert!(s.on_event(&Event::done()).is_empty());

    // The body ended without [DONE]; [DONE] without usage; a chunk that is not json.
    for input in [
        vec![chunk(json!({"content": "Hel"}), None)],
        vec![chunk(json!({"content": "Hel"}), None), Event::done()],
        vec![Event::data("{not json")],
    ] {
        let (events, s) = run(&input, true);
        assert_eq!(
            types(&events)[..2],
            ["response.created", "response.in_progress"]
        );
        assert_eq!(types(&events).last(), Some(&"response.failed"));
        assert_eq!(s.error().unwrap().kind, ErrorKind::Upstream);
    }
}

#[test]
fn logprobs_reasoning_and_refusals_have_their_parts() {
    let lp = |t: &str| {
        json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(),
                              "top_logprobs": []})
    };
    let (events, s) = run(
        &[
            chunk(json!({"reasoning_content": "Think."}), None),
            chunk_with(json!({"content": "A"}), None, json!({"content": [lp("A")]})),
            // A token ending inside a UTF-8 sequence: logprobs, no text yet.
            chunk_with(
                json!({"content": ""}),
                None,
                json!({"content": [lp("\u{fffd}")]}),
            ),
            chunk(json!({"refusal": "No."}), Some("stop")),
            Event::usage(&USAGE),
            Event::done(),
        ],
        true,
    );
    let t = types(&events);
    assert!(t.contains(&"response.reasoning_text.delta"), "{t:?}");
    assert!(t.contains(&"response.refusal.delta"), "{t:?}");
    let out = &s.response().unwrap()["output"];
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[0]["content"][0]["text"], "Think.");
    assert_eq!(out[1]["id"], "msg_abc_1");
    assert_eq!(out[1]["content"][0]["text"], "A");
    assert_eq!(
        out[1]["content"][0]["logprobs"],
        json!([lp("A"), lp("\u{fffd}")])
    );
    assert_eq!(
        out[1]["content"][1],
        json!({"type": "refusal", "refusal": "No."})
    );
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .collect();
    assert_eq!(deltas.len(), 2);
    assert_eq!(deltas[1]["delta"], "");
    assert_eq!(deltas[1]["logprobs"], json!([lp("\u{fffd}")]));
}

#[test]
fn the_response_repeats_the_request_parameters() {
    let tools = json!([{"type": "function", "name": "f", "parameters": {"type": "object"}}]);
    let e = echo(json!({"model": "m", "input": "x", "instructions": "I",
                        "max_output_tokens": 9, "temperature": 0.2, "top_p": 0.9,
                        "tools": tools, "tool_choice": "required", "metadata": {"a": "b"},
                        "text": {"format": {"type": "json_object"}},
                        "reasoning": {"effort": "low"}, "store": true, "user": "u"}));
    let mut s = ResponseStream::new(e, "r1", false);
    s.on_event(&Event::usage(&USAGE));
    s.on_event(&Event::done());
    let r = s.response().unwrap();
    assert_eq!(r["instructions"], "I");
    assert_eq!(r["max_output_tokens"], 9);
    assert_eq!(r["temperature"], 0.2);
    assert_eq!(r["top_p"], 0.9);
    assert_eq!(r["tools"], tools);
    assert_eq!(r["tool_choice"], "required");
    assert_eq!(r["metadata"], json!({"a": "b"}));
    assert_eq!(r["text"], json!({"format": {"type": "json_object"}}));
    assert_eq!(r["reasoning"], json!({"effort": "low", "summary": null}));
    assert_eq!(r["store"], json!(false));
    assert_eq!(r["user"], "u");
    // The request's model until a chunk names one; no output at all is still a response.
    assert_eq!(r["model"], "m");
    assert_eq!(r["output"], json!([]));
    assert_eq!(r["status"], "completed");
}

#[test]
fn the_held_output_is_bounded() {
    let mut s = ResponseStream::new(echo(json!({"model": "m", "input": "x"})), "r", false);
    let big = "x".repeat(1 << 20);
    let mut failed = false;
    for _ in 0..=MAX_AGGREGATE / big.len() {
        s.on_event(&chunk(json!({"content": big}), None));
        if s.is_finished() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert!(s.error().unwrap().message.contains("larger than"));
}

/// docs/openai-compatibility.md names every field the translation knows, with its verdict.
#[test]
fn the_compatibility_page_lists_every_field() {
    let doc = include_str!("../../../../docs/openai-compatibility.md");
    let start = doc.find("## Responses API").expect("section");
    let rest = &doc[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let verdict = |field: &str| -> &str {
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `{field}` ")))
            .unwrap_or_else(|| panic!("no row for `{field}`"));
        row.split('|').nth(2).unwrap().trim()
    };
    let ignored: Vec<&str> = IGNORED
        .iter()
        .chain(PASSED)
        .chain(&["reasoning"])
        .copied()
        .filter(|f| !["temperature", "top_p"].contains(f))
        .collect();
    for f in TRANSLATED.iter().chain(&["temperature", "top_p"]) {
        if !ignored.contains(f) {
            assert_eq!(verdict(f), "honoured", "`{f}`");
        }
    }
    for f in ignored {
        assert_eq!(verdict(f), "ignored", "`{f}`");
    }
    for f in REFUSED {
        assert_eq!(verdict(f), "refused", "`{f}`");
    }
}

/// What the worker refuses in the translation is named as the app's request names it.
#[test]
fn worker_errors_name_the_responses_fields() {
    let t = translate(
        json!({"model": "m", "instructions": "I", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "x"},
            {"type": "reasoning", "summary": []},
            {"role": "assistant", "content": "ok"},
            {"type": "function_call", "call_id": "d", "name": "g", "arguments": "{}"},
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let renamed = |param: &str| {
        let e = ApiError::new(ErrorKind::InvalidRequest, format!("{param}: bad")).with_param(param);
        let e = t.echo.rename(e);
        let p = e.param.unwrap();
        assert_eq!(e.message, format!("{p}: bad"));
        p
    };
    for (chat, responses) in [
        ("messages[0].content", "instructions"),
        ("messages[1].content[0].text", "input[0].content[0].text"),
        ("messages[1]", "input[0]"),
        ("messages[2].tool_calls[0].function.arguments", "input[1]"),
        ("messages[3].content", "input[2].output"),
        ("messages[3].tool_call_id", "input[2].call_id"),
        ("messages[4].content", "input[4].content"),
        // The call joined to that message: named by the message's item.
        ("messages[4].tool_calls[1].id", "input[4]"),
        ("messages[9]", "messages[9]"),
        ("messages", "input"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("response_format", "text.format"),
        ("tools[2].function.parameters", "tools[2].parameters"),
        ("tool_choice.function.name", "tool_choice.name"),
        ("max_completion_tokens", "max_output_tokens"),
        ("reasoning_effort", "reasoning.effort"),
        ("temperature", "temperature"),
        ("messages_x", "messages_x"),
    ] {
        assert_eq!(renamed(chat), responses, "{chat}");
    }
    let t = translate(br#"{"model":"m","input":"x"}"#).unwrap();
    let e = ApiError::new(ErrorKind::ContextLengthExceeded, "too long").with_param("messages");
    assert_eq!(t.echo.rename(e).param.as_deref(), Some("input"));
    let e = t.echo.rename(ApiError::new(ErrorKind::Timeout, "slow"));
    assert_eq!((e.param, e.message.as_str()), (None, "slow"));

    // Through the stream: an error event with a chat param fails the response with the
    // Responses name.
    let mut s = ResponseStream::new(t.echo.clone(), "r", false);
    s.on_event(&Event::error(
        &ApiError::new(ErrorKind::InvalidRequest, "messages[0].content: empty")
            .with_param("messages[0].content"),
    ));
    let e = s.error().unwrap();
    assert_eq!(e.param.as_deref(), Some("input"));
    assert_eq!(e.message, "input: empty");
}
