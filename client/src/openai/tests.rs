use super::*;

fn chunk(content: &str) -> Event {
    Event::data(
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
        })
        .to_string(),
    )
}

fn usage_event() -> Event {
    Event::usage(&Usage {
        prompt_tokens: 5,
        cached_tokens: 0,
        completion_tokens: 2,
        reasoning_tokens: 0,
    })
}

#[test]
fn request_fields() {
    let f = RequestFields::parse(
        br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":9,"messages":[]}"#,
    )
    .unwrap();
    assert_eq!(
        f,
        RequestFields {
            model: "m".into(),
            stream: true,
            include_usage: true,
            max_tokens: Some(9)
        }
    );
    let f =
        RequestFields::parse(br#"{"model":"m","max_tokens":9,"max_completion_tokens":4}"#).unwrap();
    assert_eq!(f.max_tokens, Some(4));
    assert!(!f.stream);
    let f = RequestFields::parse(br#" {"model":"m","stream":null,"max_tokens":null}"#).unwrap();
    assert_eq!(f.max_tokens, None);
    for bad in [
        &br#"{"model":"m""#[..],
        br#"[1]"#,
        br#"{"messages":[]}"#,
        br#"{"model":"a b"}"#,
        br#"{"model":"m","max_tokens":0}"#,
        br#"{"model":"m","max_tokens":-1}"#,
        br#"{"model":"m","max_completion_tokens":5000000000}"#,
        br#"{"model":"m","stream":"yes"}"#,
        br#"{"model":"m","model":"n"}"#,
        br#"{"model":"m"} x"#,
    ] {
        let e = RequestFields::parse(bad).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::InvalidRequest,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let e = RequestFields::parse(br#"{"model":"m","max_tokens":0}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
}

#[test]
fn aggregates_chat_with_usage() {
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    let role = Event::data(
        json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",
               "choices":[{"index":0,"delta":{"role":"assistant"}}]})
        .to_string(),
    );
    let fin = Event::data(
        json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",
               "choices":[{"index":0,"delta":{},"finish_reason":"length"}]})
        .to_string(),
    );
    for ev in [
        role,
        chunk("Hel"),
        chunk("lo"),
        fin,
        Event::named("other", "x"),
        usage_event(),
    ] {
        assert!(!a.push(&ev).unwrap());
    }
    assert!(a.push(&Event::done()).unwrap());
    let v = a.finish().unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["id"], "chatcmpl-1");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], 7);
}

#[test]
fn aggregates_text_completion_and_tool_calls() {
    let mut a = Aggregator::new(Endpoint::Completions);
    for t in ["a", "b"] {
        a.push(&Event::data(
            json!({"id":"cmpl-1","object":"text_completion","created":1,"model":"m",
                   "choices":[{"index":0,"text":t,"finish_reason":null}]})
            .to_string(),
        ))
        .unwrap();
    }
    a.push(&usage_event()).unwrap();
    a.push(&Event::done()).unwrap();
    let v = a.finish().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "ab");

    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    for (id, args) in [(json!("call_1"), "{\"a\""), (Value::Null, ":1}")] {
        a.push(&Event::data(
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"id":id,"type":"function","function":{"name":"","arguments":args}}]}}]})
            .to_string(),
        ))
        .unwrap();
    }
    a.push(&usage_event()).unwrap();
    a.push(&Event::done()).unwrap();
    let v = a.finish().unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    assert_eq!(call["function"]["arguments"], "{\"a\":1}");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
}

#[test]
fn aggregation_errors() {
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    a.push(&chunk("x")).unwrap();
    let err = ApiError::new(ErrorKind::NoCapacity, "all workers busy");
    assert_eq!(a.push(&Event::error(&err)).unwrap_err(), err);
    // No [DONE], no usage, malformed chunks.
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    a.push(&usage_event()).unwrap();
    assert!(a.finish().unwrap_err().message.contains("[DONE]"));
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    a.push(&Event::done()).unwrap();
    assert!(a.finish().unwrap_err().message.contains("usage"));
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    assert_eq!(
        a.push(&Event::data("not json")).unwrap_err().kind,
        ErrorKind::Upstream
    );
    assert_eq!(
        a.push(&Event::named(EVENT_USAGE, "{\"x\":1}"))
            .unwrap_err()
            .kind,
        ErrorKind::Upstream
    );
    // An OpenAI-style error inside a data chunk keeps its code.
    let e = a
        .push(&Event::data(
            String::from_utf8(ApiError::new(ErrorKind::ModelNotFound, "no").to_json()).unwrap(),
        ))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ModelNotFound);
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn relay_passes_chunks_and_turns_usage_into_a_chunk() {
    let mut r = Relay::new(Endpoint::ChatCompletions, true);
    let c = chunk("Hi");
    assert_eq!(r.on_event(&c), c.encode());
    // Upstream usage-only chunks are dropped; cocoon-usage becomes the usage chunk.
    let upstream_usage = Event::data(
        json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m",
               "choices":[],"usage":{"prompt_tokens":99,"completion_tokens":99,"total_tokens":198}})
        .to_string(),
    );
    assert!(r.on_event(&upstream_usage).is_empty());
    assert!(r.on_event(&Event::named("cocoon-other", "x")).is_empty());
    let out = text(r.on_event(&usage_event()));
    let data = out.strip_prefix("data: ").unwrap().trim_end();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["object"], "chat.completion.chunk");
    assert_eq!(v["id"], "chatcmpl-1");
    assert_eq!(v["choices"], json!([]));
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(text(r.on_event(&Event::done())), "data: [DONE]\n\n");
    assert!(r.is_finished());
    assert!(r.on_end().is_empty());
    assert_eq!(r.usage().unwrap().prompt_tokens, 5);
}

#[test]
fn relay_without_include_usage_and_error_paths() {
    let mut r = Relay::new(Endpoint::Completions, false);
    assert!(r.on_event(&usage_event()).is_empty());
    let err = ApiError::new(ErrorKind::Timeout, "worker stalled");
    let out = text(r.on_event(&Event::error(&err)));
    let v: Value = serde_json::from_str(out.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    assert_eq!(v["error"]["message"], "worker stalled");
    assert!(r.is_finished());
    assert!(r.on_event(&chunk("late")).is_empty());
    assert_eq!(r.error().unwrap(), &err);

    let mut r = Relay::new(Endpoint::ChatCompletions, false);
    r.on_event(&chunk("x"));
    let out = text(r.on_end());
    assert!(
        out.contains("upstream_error") && out.contains("[DONE]"),
        "{out}"
    );
    let mut r = Relay::new(Endpoint::ChatCompletions, false);
    assert!(text(r.on_event(&Event::data("{oops"))).contains("upstream_error"));
}

#[test]
fn request_fields_reserve_for_every_prompt_of_a_batch() {
    let f =
        RequestFields::parse(br#"{"model":"m","prompt":["a","b","c"],"max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(15));
    let f = RequestFields::parse(br#"{"model":"m","prompt":"a","max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(5));
    let f = RequestFields::parse(br#"{"model":"m","prompt":["a"],"max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(5));
    // No max_tokens: nothing to multiply (the client's default applies).
    let f = RequestFields::parse(br#"{"model":"m","prompt":["a","b"]}"#).unwrap();
    assert_eq!(f.max_tokens, None);
    // Saturates at the protocol's limit.
    let f = RequestFields::parse(br#"{"model":"m","prompt":["a","b","c"],"max_tokens":900000}"#)
        .unwrap();
    assert_eq!(f.max_tokens, Some(MAX_TOKENS_LIMIT));
    // Other shapes are the worker's to refuse: counted as one prompt here.
    for body in [
        &br#"{"model":"m","prompt":7,"max_tokens":5}"#[..],
        br#"{"model":"m","prompt":{"x":[1]},"max_tokens":5}"#,
        br#"{"model":"m","prompt":[],"max_tokens":5}"#,
        br#"{"model":"m","prompt":null,"max_tokens":5}"#,
    ] {
        let f = RequestFields::parse(body).unwrap();
        assert_eq!(f.max_tokens, Some(5), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn request_fields_reserve_for_every_choice() {
    let f = RequestFields::parse(br#"{"model":"m","n":3,"max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(15));
    // n for each prompt of a batch.
    let f =
        RequestFields::parse(br#"{"model":"m","prompt":["a","b"],"n":4,"max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(40));
    let f = RequestFields::parse(br#"{"model":"m","n":3}"#).unwrap();
    assert_eq!(f.max_tokens, None);
    let f = RequestFields::parse(br#"{"model":"m","n":1000000,"max_tokens":5}"#).unwrap();
    assert_eq!(f.max_tokens, Some(MAX_TOKENS_LIMIT));
    // Other shapes are the worker's to refuse: one choice here.
    for n in ["0", "-2", "1.5", "\"2\"", "[2]", "{}", "true", "null"] {
        let body = format!(r#"{{"model":"m","n":{n},"max_tokens":5}}"#);
        let f = RequestFields::parse(body.as_bytes()).unwrap();
        assert_eq!(f.max_tokens, Some(5), "{body}");
    }
}

fn data(v: Value) -> Event {
    Event::data(v.to_string())
}

fn finish(agg: &mut Aggregator) -> Value {
    agg.push(&usage_event()).unwrap();
    assert!(agg.push(&Event::done()).unwrap());
    std::mem::replace(agg, Aggregator::new(Endpoint::ChatCompletions))
        .finish()
        .unwrap()
}

#[test]
fn aggregates_a_forced_tool_call_as_the_worker_streams_it() {
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    a.push(&data(
        json!({"id":"chatcmpl-r","object":"chat.completion.chunk","created":1,
        "model":"m","choices":[{"index":0,"logprobs":null,"finish_reason":null,"delta":{
        "role":"assistant","tool_calls":[
            {"index":0,"id":"call_1","type":"function",
             "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
            {"index":1,"id":"call_2","type":"function","function":{"name":"now","arguments":"{}"}}
        ]}}]}),
    ))
    .unwrap();
    a.push(&data(json!({"id":"chatcmpl-r","object":"chat.completion.chunk","created":1,
        "model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]})))
    .unwrap();
    let v = finish(&mut a);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0],
        json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "now", "arguments": "{}"}}
            ]},
            "logprobs": null,
            "finish_reason": "tool_calls",
        })
    );
}

#[test]
fn aggregates_chat_logprobs_and_empty_content() {
    let entry = |t: &str| json!({"token": t, "logprob": -1.0, "bytes": [104], "top_logprobs": []});
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    for t in ["h", "i"] {
        a.push(&data(json!({"choices":[{"index":0,"delta":{"content":t},
            "logprobs":{"content":[entry(t)]},"finish_reason":null}]})))
            .unwrap();
    }
    let v = finish(&mut a);
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert_eq!(
        v["choices"][0]["logprobs"],
        json!({"content": [entry("h"), entry("i")]})
    );
    // No text and no tool calls: an empty string, not null.
    let mut a = Aggregator::new(Endpoint::ChatCompletions);
    a.push(&data(
        json!({"choices":[{"index":0,"delta":{"role":"assistant"},
        "finish_reason":"length"}]}),
    ))
    .unwrap();
    let v = finish(&mut a);
    assert_eq!(v["choices"][0]["message"]["content"], "");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
}

#[test]
fn aggregates_legacy_logprobs_per_choice_of_a_batch() {
    let mut a = Aggregator::new(Endpoint::Completions);
    let chunk = |index: u64, text: &str, offset: u64, finish: Value| {
        data(
            json!({"id":"cmpl-r","object":"text_completion","created":1,"model":"m",
            "choices":[{"index":index,"text":text,"finish_reason":finish,"logprobs":{
                "tokens":[text],"token_logprobs":[-1.0],"top_logprobs":[{text: -1.0}],
                "text_offset":[offset]}}]}),
        )
    };
    a.push(&chunk(0, "a", 0, Value::Null)).unwrap();
    a.push(&chunk(1, "x", 0, Value::Null)).unwrap();
    a.push(&chunk(0, "b", 1, json!("length"))).unwrap();
    a.push(&chunk(1, "y", 1, json!("stop"))).unwrap();
    a.push(&usage_event()).unwrap();
    a.push(&Event::done()).unwrap();
    let v = a.finish().unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["choices"][0],
        json!({"index": 0, "text": "ab", "finish_reason": "length", "logprobs": {
            "tokens": ["a", "b"], "token_logprobs": [-1.0, -1.0],
            "top_logprobs": [{"a": -1.0}, {"b": -1.0}], "text_offset": [0, 1]}})
    );
    assert_eq!(v["choices"][1]["text"], "xy");
    assert_eq!(v["choices"][1]["finish_reason"], "stop");
    assert_eq!(v["choices"][1]["logprobs"]["tokens"], json!(["x", "y"]));
    // Without logprobs in the chunks: null.
    let mut a = Aggregator::new(Endpoint::Completions);
    a.push(&data(
        json!({"choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":"stop"}]}),
    ))
    .unwrap();
    a.push(&usage_event()).unwrap();
    a.push(&Event::done()).unwrap();
    assert_eq!(a.finish().unwrap()["choices"][0]["logprobs"], Value::Null);
}
