use crate::engine::{Message, ResponseFormat, ToolCall, ToolSpec};
use protocol::RequestId;
use serde_json::json;

use super::*;

fn meta(model: &str, max_tokens: u32) -> RequestMeta {
    RequestMeta {
        version: 1,
        request_id: RequestId::parse("req-1").unwrap(),
        model: model.into(),
        max_tokens,
        price_cap: None,
    }
}

fn models() -> Vec<ModelAdvert> {
    vec![ModelAdvert {
        name: "m".into(),
        model_hash: "00".repeat(32),
        max_context: 2048,
        max_completion_tokens: 512,
    }]
}

fn chat(body: &Value) -> Result<ValidatedRequest, ApiError> {
    chat_raw(body.to_string().as_bytes())
}

fn chat_raw(body: &[u8]) -> Result<ValidatedRequest, ApiError> {
    validate(Endpoint::ChatCompletions, &meta("m", 1000), body, &models())
}

fn completion(body: &Value) -> Result<ValidatedRequest, ApiError> {
    validate(
        Endpoint::Completions,
        &meta("m", 1000),
        body.to_string().as_bytes(),
        &models(),
    )
}

fn base_chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn bad(r: Result<ValidatedRequest, ApiError>) -> ApiError {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn minimal_chat_is_accepted_with_defaults() {
    let v = chat(&base_chat()).unwrap();
    assert_eq!(v.endpoint, Endpoint::ChatCompletions);
    assert!(!v.stream);
    assert!(!v.include_usage);
    assert_eq!(v.request.model, "m");
    assert_eq!(
        v.request.input,
        Input::Chat(vec![Message::text("user", "hi")])
    );
    // Absent max_tokens: min(header 1000, model 512).
    assert_eq!(v.request.sampling.max_tokens, 512);
    // OpenAI's default temperature: sampling, not greedy.
    assert_eq!(v.request.sampling.temperature, Some(1.0));
    assert!(v.request.sampling.stop.is_empty());
    assert_eq!(v.request.sampling.top_logprobs, None);
    assert!(v.request.sampling.logit_bias.is_empty());
    assert!(v.request.tools.is_empty());
    assert_eq!(v.request.tool_choice, ToolChoice::None);
    assert_eq!(v.request.response_format, ResponseFormat::Text);
    assert!(v.more_prompts.is_empty());
}

#[test]
fn full_chat_is_accepted() {
    let body = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}
            ]},
            {"role": "assistant", "content": "ok"}
        ],
        "max_tokens": 100, "max_completion_tokens": 50,
        "temperature": 0.7, "top_p": 1, "n": 1, "stream": true,
        "stream_options": {"include_usage": true},
        "stop": ["x", "y"], "seed": 7, "presence_penalty": -2, "frequency_penalty": 1.5,
        "user": "someone"
    });
    let v = chat(&body).unwrap();
    assert!(v.stream && v.include_usage);
    let s = &v.request.sampling;
    assert_eq!(s.max_tokens, 50);
    assert_eq!(s.temperature, Some(0.7));
    assert_eq!(s.top_p, Some(1.0));
    assert_eq!(s.seed, Some(7));
    assert_eq!(s.stop, vec!["x".to_string(), "y".to_string()]);
    assert_eq!(s.presence_penalty, Some(-2.0));
    assert_eq!(s.frequency_penalty, Some(1.5));
    let Input::Chat(msgs) = &v.request.input else {
        panic!("not chat")
    };
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[1].content, "a\nb");
}

#[test]
fn nulls_count_as_absent() {
    let body = with(
        with(base_chat(), "stop", Value::Null),
        "temperature",
        Value::Null,
    );
    let v = chat(&body).unwrap();
    assert_eq!(v.request.sampling.temperature, Some(1.0));
    let body = with(
        base_chat(),
        "stream_options",
        json!({"include_usage": null}),
    );
    assert!(!chat(&body).unwrap().include_usage);
}

#[test]
fn unknown_fields_are_named() {
    let e = bad(chat(&with(base_chat(), "functions", json!([]))));
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert_eq!(e.param.as_deref(), Some("functions"));
    assert!(
        e.message.contains("unknown field `functions`"),
        "{}",
        e.message
    );
    // A chat-only field on the completions endpoint and vice versa.
    let e = bad(completion(
        &json!({"model": "m", "prompt": "p", "messages": []}),
    ));
    assert_eq!(e.param.as_deref(), Some("messages"));
    let e = bad(completion(
        &json!({"model": "m", "prompt": "p", "max_completion_tokens": 3}),
    ));
    assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
    let e = bad(chat(&with(base_chat(), "echo", json!(false))));
    assert_eq!(e.param.as_deref(), Some("echo"));
    // Inside messages and stream_options.
    let e = bad(chat(
        &json!({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}),
    ));
    assert!(e.message.contains("tool_calls"), "{}", e.message);
    let e = bad(chat(&with(
        base_chat(),
        "stream_options",
        json!({"include_usage": true, "x": 1}),
    )));
    assert!(e.message.contains("stream_options.x"), "{}", e.message);
}

#[test]
fn duplicate_keys_are_rejected_at_any_depth() {
    let cases: [(&[u8], &str, &str); 4] = [
        (
            br#"{"model":"m","model":"m","messages":[{"role":"user","content":"x"}]}"#,
            "model",
            "the request body",
        ),
        (
            br#"{"model":"m","messages":[{"role":"user","content":"x","role":"system"}]}"#,
            "role",
            "messages[0]",
        ),
        (
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]}"#,
            "text",
            "messages[0].content[0]",
        ),
        (
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true,"include_usage":false}}"#,
            "include_usage",
            "stream_options",
        ),
    ];
    for (body, key, at) in cases {
        let e = bad(chat_raw(body));
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert_eq!(e.param.as_deref(), Some(key));
        assert_eq!(e.message, format!("duplicate key `{key}` in {at}"));
    }
}

#[test]
fn malformed_json_and_non_objects() {
    for body in [
        &b"{"[..],
        b"",
        b"[1,2]",
        b"\"model\"",
        b"{\"model\":\"m\"} trailing",
        b"{\"model\":\"m\",}",
        b"\xff",
    ] {
        let e = bad(chat_raw(body));
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{body:?}");
        assert_eq!(e.status(), 400);
    }
    let e = bad(chat_raw(b"{"));
    assert!(e.message.starts_with("malformed json"), "{}", e.message);
}

#[test]
fn deep_nesting_is_rejected_not_overflowed() {
    let mut body = String::from(r#"{"model":"m","user":"#);
    body.push_str(&"[".repeat(10_000));
    body.push_str(&"]".repeat(10_000));
    body.push('}');
    assert_eq!(
        bad(chat_raw(body.as_bytes())).kind,
        ErrorKind::InvalidRequest
    );
}

#[test]
fn body_size_limit() {
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let e = bad(chat_raw(&big));
    assert_eq!(e.kind, ErrorKind::PayloadTooLarge);
    assert_eq!(e.status(), 413);
}

#[test]
fn model_must_match_header_and_be_served() {
    let e = bad(chat(&with(base_chat(), "model", json!("other"))));
    assert_eq!(e.kind, ErrorKind::ModelNotFound);
    assert_eq!(e.status(), 404);
    let body = base_chat().to_string();
    let e = bad(validate(
        Endpoint::ChatCompletions,
        &meta("other", 10),
        body.replace("\"m\"", "\"other\"").as_bytes(),
        &models(),
    ));
    assert_eq!(e.kind, ErrorKind::ModelNotFound);
    assert!(e.message.contains("not served"), "{}", e.message);
    let e = bad(chat(
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    ));
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert_eq!(e.param.as_deref(), Some("model"));
    let e = bad(chat(&with(base_chat(), "model", json!(5))));
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
}

#[test]
fn max_tokens_is_clamped() {
    let body = with(base_chat(), "max_tokens", json!(5_000_000_000u64));
    let clamp = |header: u32| {
        validate(
            Endpoint::ChatCompletions,
            &meta("m", header),
            body.to_string().as_bytes(),
            &models(),
        )
        .unwrap()
        .request
        .sampling
        .max_tokens
    };
    assert_eq!(clamp(1000), 512, "model limit");
    assert_eq!(clamp(100), 100, "proxy header");
    let v = chat(&with(base_chat(), "max_tokens", json!(7))).unwrap();
    assert_eq!(v.request.sampling.max_tokens, 7, "request value");
    for bad_value in [json!(0), json!(-1), json!(1.5), json!("10")] {
        let e = bad(chat(&with(base_chat(), "max_tokens", bad_value)));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }
}

#[test]
fn sampling_ranges() {
    let cases = [
        ("temperature", json!(2.01)),
        ("temperature", json!(-0.1)),
        ("temperature", json!("hot")),
        ("top_p", json!(0)),
        ("top_p", json!(1.01)),
        ("n", json!(17)),
        ("n", json!(0)),
        ("n", json!(1.5)),
        ("n", json!("2")),
        ("presence_penalty", json!(2.5)),
        ("frequency_penalty", json!(-3)),
        ("seed", json!(-1)),
        ("seed", json!(1.5)),
        ("stream", json!("yes")),
        ("stream_options", json!(true)),
        ("stream_options", json!({"include_usage": 1})),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stop", json!("")),
        ("stop", json!([1])),
        ("stop", json!("s".repeat(MAX_STOP_LEN + 1))),
        ("user", json!(5)),
    ];
    for (field, value) in cases {
        let e = bad(chat(&with(base_chat(), field, value.clone())));
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{field}={value}");
        assert_eq!(e.param.as_deref(), Some(field), "{field}={value}");
    }
    for (field, value) in [
        ("temperature", json!(0)),
        ("temperature", json!(2)),
        ("top_p", json!(0.01)),
        ("stop", json!("end")),
        ("stop", json!(["a", "b", "c", "d"])),
        ("frequency_penalty", json!(2)),
    ] {
        chat(&with(base_chat(), field, value.clone()))
            .unwrap_or_else(|e| panic!("{field}={value}: {e}"));
    }
    let v = chat(&with(base_chat(), "stop", json!("end"))).unwrap();
    assert_eq!(v.request.sampling.stop, vec!["end".to_string()]);
}

#[test]
fn messages_rules() {
    let cases = [
        json!([]),
        json!("hi"),
        json!([{"role": "tool", "content": "x"}]),
        json!([{"role": "function", "content": "x", "name": "f"}]),
        json!([{"content": "x"}]),
        json!([{"role": "user"}]),
        json!([{"role": "user", "content": 5}]),
        json!([{"role": "assistant", "content": null}]),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        json!([{"role": "user", "content": [{"type": "text"}]}]),
        json!([{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]),
        json!([{"role": "user", "content": "x", "name": 3}]),
        json!(["not an object"]),
    ];
    for m in cases {
        let e = bad(chat(&json!({"model": "m", "messages": m.clone()})));
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{m}");
        assert!(
            e.param.as_deref().unwrap_or("").starts_with("messages"),
            "{m}: {e:?}"
        );
    }
    let too_many: Vec<Value> = (0..=MAX_MESSAGES)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    bad(chat(&json!({"model": "m", "messages": too_many})));
    let e = bad(chat(&json!({"model": "m"})));
    assert_eq!(e.param.as_deref(), Some("messages"));
}

#[test]
fn completions_rules() {
    let v =
        completion(&json!({"model": "m", "prompt": "once upon", "echo": false, "max_tokens": 3}))
            .unwrap();
    assert_eq!(v.endpoint, Endpoint::Completions);
    assert_eq!(v.request.input, Input::Prompt("once upon".into()));
    assert_eq!(v.request.sampling.max_tokens, 3);
    for (body, param) in [
        (json!({"model": "m", "prompt": "p", "echo": true}), "echo"),
        (json!({"model": "m", "prompt": [1, 2]}), "prompt"),
        (json!({"model": "m", "prompt": [[1, 2]]}), "prompt"),
        (json!({"model": "m", "prompt": []}), "prompt"),
        (json!({"model": "m", "prompt": ["a", 1]}), "prompt"),
        (json!({"model": "m", "prompt": 5}), "prompt"),
        (json!({"model": "m"}), "prompt"),
        (json!({"model": "m", "prompt": "p", "n": 17}), "n"),
        (
            json!({"model": "m", "prompt": "p", "n": 2, "best_of": 3}),
            "best_of",
        ),
        (
            json!({"model": "m", "prompt": "p", "logprobs": 6}),
            "logprobs",
        ),
        (
            json!({"model": "m", "prompt": "p", "logprobs": true}),
            "logprobs",
        ),
        (
            json!({"model": "m", "prompt": "p", "best_of": 2}),
            "best_of",
        ),
        (json!({"model": "m", "prompt": "p", "tools": []}), "tools"),
        (json!({"model": "m", "prompt": "p", "store": true}), "store"),
        (
            json!({"model": "m", "prompt": "p", "suffix": "s"}),
            "suffix",
        ),
    ] {
        let e = bad(completion(&body));
        assert_eq!(e.param.as_deref(), Some(param), "{body}");
    }
}

#[test]
fn parse_strict_matches_serde_json_without_duplicates() {
    let doc = json!({"a": [1, -2, 3.5, true, null, "s"], "b": {"c": {"d": []}}, "e": u64::MAX});
    let text = doc.to_string();
    assert_eq!(parse_strict(text.as_bytes()).unwrap(), doc);
}

mod surface;
