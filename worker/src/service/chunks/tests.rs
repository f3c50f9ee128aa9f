use protocol::sse::Decoder;

use super::*;
use crate::engine::TopLogprob;

fn events(bytes: &[u8]) -> Vec<Event> {
    Decoder::default().feed(bytes).unwrap()
}

fn one(bytes: &[u8]) -> Value {
    let evs = events(bytes);
    assert_eq!(evs.len(), 1, "{evs:?}");
    serde_json::from_str(&evs[0].data).unwrap()
}

fn usage(p: u64, c: u64) -> Usage {
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        ..Usage::default()
    }
}

#[test]
fn chat_chunks() {
    let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r1", 7, "m");
    let first = one(&e.text(0, "a"));
    assert_eq!(first["id"], "chatcmpl-r1");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["created"], 7);
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["choices"][0]["delta"]["content"], "a");
    assert!(first["choices"][0]["finish_reason"].is_null());
    assert!(first["choices"][0]["logprobs"].is_null());
    let second = one(&e.text(0, "b"));
    assert!(second["choices"][0]["delta"].get("role").is_none());
    let last = one(&e.end_choice(0, FinishReason::Length));
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let u = usage(2, 2);
    let tail = events(&e.tail(&u, true));
    assert_eq!(tail.len(), 3);
    let uc: Value = serde_json::from_str(&tail[0].data).unwrap();
    assert_eq!(uc["choices"], json!([]));
    assert_eq!(uc["usage"]["total_tokens"], 4);
    assert_eq!(tail[1], Event::usage(&u));
    assert!(tail[2].is_done());
}

#[test]
fn completion_chunks_without_usage_chunk() {
    let mut e = ChunkEncoder::new(Endpoint::Completions, "r2", 1, "m");
    let c = one(&e.text(0, "x"));
    assert_eq!(c["id"], "cmpl-r2");
    assert_eq!(c["object"], "text_completion");
    assert_eq!(c["choices"][0]["text"], "x");
    let last = one(&e.end_choice(0, FinishReason::Stop));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["text"], "");
    let tail = events(&e.tail(&Usage::default(), false));
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].name.as_deref(), Some(protocol::sse::EVENT_USAGE));
    assert!(tail[1].is_done());
}

#[test]
fn chat_without_text_still_sends_the_role() {
    let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r", 1, "m");
    let last = one(&e.end_choice(0, FinishReason::Stop));
    assert_eq!(last["choices"][0]["delta"]["role"], "assistant");
}

fn lp(token: &str, logprob: f32, top: &[(&str, f32)]) -> TokenLogprob {
    TokenLogprob {
        token: token.into(),
        logprob,
        bytes: Some(token.as_bytes().to_vec()),
        top: top
            .iter()
            .map(|(t, l)| TopLogprob {
                token: (*t).into(),
                logprob: *l,
                bytes: None,
            })
            .collect(),
    }
}

#[test]
fn chat_logprobs_in_openais_shape() {
    let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r", 1, "m");
    let toks = [
        lp("Hi", -0.1, &[("Hi", -0.1), ("Hey", -2.5)]),
        lp("é", f32::NEG_INFINITY, &[]),
    ];
    let c = one(&e.tokens(0, "Hié", &toks));
    let choice = &c["choices"][0];
    assert_eq!(choice["delta"]["content"], "Hié");
    assert_eq!(choice["delta"]["role"], "assistant");
    assert_eq!(
        choice["logprobs"],
        json!({"content": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
                {"token": "Hi", "logprob": -0.1, "bytes": null},
                {"token": "Hey", "logprob": -2.5, "bytes": null}
            ]},
            {"token": "é", "logprob": -9999.0, "bytes": [195, 169], "top_logprobs": []}
        ]})
    );
}

#[test]
fn completion_logprobs_in_the_legacy_shape_with_offsets() {
    let mut e = ChunkEncoder::new(Endpoint::Completions, "r", 1, "m");
    // Plain text first: offsets count it (in characters, not bytes).
    one(&e.text(0, "né"));
    let c = one(&e.tokens(
        0,
        " a b",
        &[
            lp(" a", -1.0, &[(" a", -1.0), (" c", -1.5)]),
            lp(" b", -0.5, &[(" b", -0.5)]),
        ],
    ));
    assert_eq!(c["choices"][0]["text"], " a b");
    assert_eq!(
        c["choices"][0]["logprobs"],
        json!({
            "tokens": [" a", " b"],
            "token_logprobs": [-1.0, -0.5],
            "top_logprobs": [{" a": -1.0, " c": -1.5}, {" b": -0.5}],
            "text_offset": [2, 4],
        })
    );
    // A second choice of a batch starts at offset 0.
    let c = one(&e.tokens(1, "z", &[lp("z", -2.0, &[])]));
    assert_eq!(c["choices"][0]["index"], 1);
    assert_eq!(c["choices"][0]["logprobs"]["text_offset"], json!([0]));
    assert_eq!(c["choices"][0]["logprobs"]["top_logprobs"], json!([{}]));
}

#[test]
fn tool_calls_as_chat_deltas_then_finish_reason() {
    let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r", 1, "m");
    let calls = [
        ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Paris\"}".into(),
        },
        ToolCall {
            id: "call_2".into(),
            name: "now".into(),
            arguments: "{}".into(),
        },
    ];
    let c = one(&e.tool_calls(0, &calls));
    let choice = &c["choices"][0];
    assert_eq!(choice["index"], 0);
    assert!(choice["finish_reason"].is_null());
    assert_eq!(
        choice["delta"],
        json!({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"index": 1, "id": "call_2", "type": "function",
             "function": {"name": "now", "arguments": "{}"}}
        ]})
    );
    let last = one(&e.end_choice(0, FinishReason::ToolCalls));
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[test]
fn each_chat_choice_starts_with_the_role() {
    let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r1", 7, "m");
    let role = |b: &Bytes| one(b)["choices"][0]["delta"].get("role").cloned();
    assert_eq!(role(&e.text(0, "a")), Some(json!("assistant")));
    assert_eq!(role(&e.text(0, "b")), None);
    assert_eq!(role(&e.end_choice(0, FinishReason::Stop)), None);
    // The next choice's first delta carries the role again, whatever it holds.
    let calls = [ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: "{}".into(),
    }];
    let first = one(&e.tool_calls(1, &calls));
    assert_eq!(first["choices"][0]["index"], 1);
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role(&e.end_choice(1, FinishReason::ToolCalls)), None);
    assert_eq!(
        role(&e.end_choice(2, FinishReason::Length)),
        Some(json!("assistant"))
    );
}
