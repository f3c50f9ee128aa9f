//! The OpenAI surface apps send, end to end through the worker's real service (RA-TLS,
//! HTTP/2, validation, engine, encoder) with the stub engine, which honours tools and logprobs
//! deterministically: a forced tool call arrives as `delta.tool_calls` and `finish_reason:
//! "tool_calls"` in the stream, and as `message.tool_calls` once the client's aggregator
//! assembles it (`stream: false`); logprobs in both shapes; a completions batch; `n` choices.

mod service_support;

use client::openai::Aggregator;
use protocol::sse::{Event, EVENT_USAGE};
use protocol::{Endpoint, ErrorKind, Usage};
use serde_json::{json, Value};
use service_support::*;

fn data(e: &Event) -> Value {
    serde_json::from_str(&e.data).expect("json chunk")
}

fn aggregate(endpoint: Endpoint, evs: &[Event]) -> Value {
    let mut a = Aggregator::new(endpoint);
    let mut done = false;
    for e in evs {
        done = a.push(e).expect("event");
    }
    assert!(done, "stream ended with [DONE]");
    a.finish().expect("aggregate")
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "now"}}
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_calls_stream_as_deltas_and_aggregate_as_tool_calls() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    for (choice, name) in [
        (json!("required"), "get_weather"),
        (
            json!({"type": "function", "function": {"name": "now"}}),
            "now",
        ),
    ] {
        let body = chat_body(json!({"tools": tools(), "tool_choice": choice,
                                    "parallel_tool_calls": false}));
        let resp = send(
            &mut conn,
            completion_request("/v1/chat/completions", MODEL, 100, body),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let evs = events(resp).await;
        // The tool-call chunk, the finish chunk, cocoon-usage, [DONE].
        assert_eq!(evs.len(), 4, "{evs:?}");
        let call = data(&evs[0]);
        assert_eq!(
            call["choices"][0]["delta"],
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_stub_0",
                "type": "function", "function": {"name": name, "arguments": "{}"}}]})
        );
        assert!(call["choices"][0]["finish_reason"].is_null());
        assert_eq!(data(&evs[1])["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(evs[2].name.as_deref(), Some(EVENT_USAGE));
        let usage: Usage = serde_json::from_str(&evs[2].data).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 1));
        assert!(evs[3].is_done());

        // stream: false, as the client library assembles it for the app.
        let v = aggregate(Endpoint::ChatCompletions, &evs);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-req-42");
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "logprobs": null, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_stub_0", "type": "function",
                     "function": {"name": name, "arguments": "{}"}}]}})
        );
        assert_eq!(v["usage"]["total_tokens"], 4);
    }
    // tool_choice auto: the stub answers with text.
    let body = chat_body(json!({"tools": tools(), "max_tokens": 2}));
    let evs = events(
        send(
            &mut conn,
            completion_request("/v1/chat/completions", MODEL, 100, body),
        )
        .await,
    )
    .await;
    let v = aggregate(Endpoint::ChatCompletions, &evs);
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_conversation_is_accepted() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 1, "tools": tools(),
        "messages": [
            {"role": "developer", "content": "use tools"},
            {"role": "user", "content": [{"type": "text", "text": "weather?",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_stub_0",
                "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_stub_0", "content": "sunny"}
        ],
        "store": false, "metadata": {"app": "test"}, "service_tier": "auto",
        "reasoning_effort": "low", "user": "u", "response_format": {"type": "text"}});
    let resp = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 100, body.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v = aggregate(Endpoint::ChatCompletions, &events(resp).await);
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 ");
    // A tool message without its call id is refused before any byte, naming the message.
    let body = json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]});
    let (status, e) = error_of(
        send(
            &mut conn,
            completion_request("/v1/chat/completions", MODEL, 100, body.to_string()),
        )
        .await,
    )
    .await;
    assert_eq!((status, e.kind), (400, ErrorKind::InvalidRequest));
    assert_eq!(e.param.as_deref(), Some("messages[0]"));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_stream_and_aggregate() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let body = chat_body(json!({"logprobs": true, "top_logprobs": 2, "max_tokens": 2}));
    let evs = events(
        send(
            &mut conn,
            completion_request("/v1/chat/completions", MODEL, 100, body),
        )
        .await,
    )
    .await;
    assert_eq!(evs.len(), 5, "{evs:?}");
    let entry = |t: &str| {
        json!({"token": t, "logprob": -1.0, "bytes": t.as_bytes(), "top_logprobs": [
            {"token": t, "logprob": -1.0, "bytes": t.as_bytes()},
            {"token": "alt1 ", "logprob": -1.0, "bytes": b"alt1 "}
        ]})
    };
    assert_eq!(
        data(&evs[1])["choices"][0]["logprobs"],
        json!({"content": [entry("tok1 ")]})
    );
    let v = aggregate(Endpoint::ChatCompletions, &evs);
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 ");
    assert_eq!(
        v["choices"][0]["logprobs"],
        json!({"content": [entry("tok0 "), entry("tok1 ")]})
    );
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_batch_with_legacy_logprobs() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let body = json!({"model": MODEL, "prompt": ["one two", "three"], "max_tokens": 2,
                      "logprobs": 1, "stream": true, "stream_options": {"include_usage": true}});
    // The client reserves max_tokens per prompt: 4 for the batch.
    let resp = send(
        &mut conn,
        completion_request("/v1/completions", MODEL, 4, body.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let evs = events(resp).await;
    // Per choice 2 tokens + its finish chunk; the usage chunk, cocoon-usage, [DONE].
    assert_eq!(evs.len(), 9, "{evs:?}");
    let indexes: Vec<u64> = evs[..6]
        .iter()
        .map(|e| data(e)["choices"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 0, 0, 1, 1, 1]);
    assert_eq!(
        data(&evs[1])["choices"][0]["logprobs"],
        json!({"tokens": ["tok1 "], "token_logprobs": [-1.0],
               "top_logprobs": [{"tok1 ": -1.0}], "text_offset": [5]})
    );
    let usage: Usage = serde_json::from_str(&evs[7].data).unwrap();
    // Prompt tokens summed over the batch (2 + 1 words), completion 2 + 2.
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
    assert_eq!(data(&evs[6])["usage"]["total_tokens"], 7);
    let v = aggregate(Endpoint::Completions, &evs);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], "tok0 tok1 ");
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(
            c["logprobs"],
            json!({"tokens": ["tok0 ", "tok1 "], "token_logprobs": [-1.0, -1.0],
                   "top_logprobs": [{"tok0 ": -1.0}, {"tok1 ": -1.0}], "text_offset": [0, 5]})
        );
    }
    assert_eq!(v["usage"]["completion_tokens"], 4);

    // Absent max_tokens: the request's budget (the header, 6) is split over the prompts.
    let body = json!({"model": MODEL, "prompt": ["a", "b"], "stream": true});
    let evs = events(
        send(
            &mut conn,
            completion_request("/v1/completions", MODEL, 6, body.to_string()),
        )
        .await,
    )
    .await;
    let v = aggregate(Endpoint::Completions, &evs);
    assert_eq!(v["choices"][0]["text"], "tok0 tok1 tok2 ");
    assert_eq!(v["choices"][1]["text"], "tok0 tok1 tok2 ");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_run_one_after_another_with_their_own_seeds() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    // The stub echoes `{seed}` as the seed its run got: choice j runs with seed + j.
    let body = json!({"model": MODEL, "n": 3, "seed": 7, "max_tokens": 2, "stream": true,
                      "messages": [{"role": "user", "content": "echo: w {seed}"}],
                      "stream_options": {"include_usage": true}});
    let resp = send(
        &mut conn,
        completion_request("/v1/chat/completions", MODEL, 6, body.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let evs = events(resp).await;
    // Per choice 2 tokens + its finish chunk; the usage chunk, cocoon-usage, [DONE].
    assert_eq!(evs.len(), 12, "{evs:?}");
    let choice = |e: &Event| data(e)["choices"][0].clone();
    let indexes: Vec<u64> = evs[..9]
        .iter()
        .map(|e| choice(e)["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    // Each choice's first delta carries the role.
    for (i, e) in evs[..9].iter().enumerate() {
        let role = choice(e)["delta"].get("role").cloned();
        let want = (i % 3 == 0).then(|| json!("assistant"));
        assert_eq!(role, want, "chunk {i}");
    }
    let usage: Usage = serde_json::from_str(&evs[10].data).unwrap();
    // Each choice processed the prompt (4: 3 words + the message's 1), and generated 2.
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (12, 6));
    let v = aggregate(Endpoint::ChatCompletions, &evs);
    let got: Vec<(u64, &str, &str, &str)> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["message"]["role"].as_str().unwrap(),
                c["message"]["content"].as_str().unwrap(),
                c["finish_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "assistant", "w 7 ", "length"),
            (1, "assistant", "w 8 ", "length"),
            (2, "assistant", "w 9 ", "length"),
        ]
    );

    // Completions: choice p·n + j is run j of prompt p; without a seed none is made up.
    for (extra, want) in [
        (
            json!({"best_of": 2}),
            ["a none ", "a none ", "b none ", "b none "],
        ),
        (json!({"seed": 0}), ["a 0 ", "a 1 ", "b 0 ", "b 1 "]),
    ] {
        let mut body = json!({"model": MODEL, "prompt": ["echo: a {seed}", "echo: b {seed}"],
                              "n": 2, "max_tokens": 2, "stream": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let evs = events(
            send(
                &mut conn,
                completion_request("/v1/completions", MODEL, 8, body.to_string()),
            )
            .await,
        )
        .await;
        let v = aggregate(Endpoint::Completions, &evs);
        let texts: Vec<&str> = v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, want, "{extra}");
        assert_eq!(v["usage"]["prompt_tokens"], 12);
        assert_eq!(v["usage"]["completion_tokens"], 8);
    }
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_does_not_fit_n_times_is_refused_before_anything_runs() {
    let mut h = Harness::start(Options::default()).await;
    let mut conn = h.next_conn().await;
    let request = |n: u64, budget: u32| {
        let body = json!({"model": MODEL, "prompt": "one two three four", "n": n,
                          "max_tokens": 1, "stream": true});
        let mut req = completion_request("/v1/completions", MODEL, 4, body.to_string());
        req.headers_mut().insert(
            protocol::meta::H_MAX_PROMPT_TOKENS,
            budget.to_string().parse().unwrap(),
        );
        req
    };
    // 3 runs of a 4-token prompt need 12 of the 11 tokens reserved: refused up front, naming n.
    let (status, e) = error_of(send(&mut conn, request(3, 11)).await).await;
    assert_eq!((status, e.kind), (413, ErrorKind::PayloadTooLarge));
    assert_eq!(e.param.as_deref(), Some("n"));
    assert!(
        e.message
            .contains("3 choices each process the prompt of 4 tokens")
            && e.message.contains("11 prompt tokens reserved"),
        "{}",
        e.message
    );
    // One run fits alone; 12 tokens fit three.
    let (status, _) = error_of(send(&mut conn, request(1, 11)).await).await;
    assert_eq!(status, 200);
    let evs = events(send(&mut conn, request(3, 12)).await).await;
    let v = aggregate(Endpoint::Completions, &evs);
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    h.shutdown();
}
