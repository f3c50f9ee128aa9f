//! What OpenAI's Responses API costs on top of chat in the local client, measured in the same
//! run: per token, `ResponseStream` (chat chunks → Responses events, and the object it ends
//! with) against `Relay` (chat chunks passed through); per request, `translate` (a Responses
//! body → a chat body) plus the metadata read, against the metadata read of the equivalent chat
//! body alone. Run: `cargo bench -p cocoon-client --bench responses`.
//!
//! CPU time on one thread, no I/O: the figures are the translation's own cost, to set against
//! the tens of milliseconds a token takes to generate and the ~0.1 ms a network hop adds.

use std::hint::black_box;
use std::time::Instant;

use client::openai::responses::{translate, ResponseStream};
use client::openai::{Relay, RequestFields, StreamOut};
use protocol::sse::Event;
use protocol::{Endpoint, Usage};
use serde_json::json;

const TOKENS: usize = 2000;
const BATCHES: usize = 7;

/// A worker-shaped stream of `n` one-word chunks, its usage and `[DONE]`.
fn stream(n: usize) -> Vec<Event> {
    let mut out: Vec<Event> = (0..n)
        .map(|i| {
            Event::data(
                json!({"id": "chatcmpl-9f2c", "object": "chat.completion.chunk",
                       "created": 1_796_529_657u64, "model": "smollm2-135m-instruct",
                       "choices": [{"index": 0, "delta": {"content": format!(" word{}", i % 10)},
                                    "logprobs": null, "finish_reason": null}]})
                .to_string(),
            )
        })
        .collect();
    out.push(Event::usage(&Usage {
        prompt_tokens: 40,
        cached_tokens: 0,
        completion_tokens: n as u64,
        reasoning_tokens: 0,
    }));
    out.push(Event::done());
    out
}

/// Nanoseconds per call of `f`, the best of [`BATCHES`] batches of `calls`.
fn best_ns(calls: usize, mut f: impl FnMut()) -> f64 {
    (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_nanos() as f64 / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let events = stream(TOKENS);
    let body = json!({
        "model": "smollm2-135m-instruct",
        "instructions": "You are a helpful assistant.",
        "input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\":18}"},
            {"role": "user", "content": [{"type": "input_text", "text": "And in Rome?"}]},
        ],
        "tools": [{"type": "function", "name": "get_weather",
                   "description": "The current weather in a city.",
                   "parameters": {"type": "object",
                                  "properties": {"city": {"type": "string"},
                                                 "unit": {"type": "string"}},
                                  "required": ["city", "unit"]}}],
        "max_output_tokens": 256, "stream": true, "store": false,
    })
    .to_string()
    .into_bytes();
    let translated = translate(&body).expect("translates");
    let echo = translated.echo.clone();

    let mut relay_bytes = 0;
    let relay = best_ns(20, || {
        let mut r = Relay::new(Endpoint::ChatCompletions, false);
        relay_bytes = events.iter().map(|e| r.on_event(e).len()).sum();
        black_box(r.usage());
    }) / TOKENS as f64;
    let mut stream_bytes = 0;
    let streamed = best_ns(20, || {
        let mut s = ResponseStream::new(echo.clone(), "9f2c", true);
        stream_bytes = events.iter().map(|e| s.on_event(e).len()).sum();
        black_box(s.response());
    }) / TOKENS as f64;
    let object = best_ns(20, || {
        let mut s = ResponseStream::new(echo.clone(), "9f2c", false);
        for e in &events {
            black_box(s.on_event(e));
        }
        black_box(s.response().map(|r| r.to_string().len()));
    }) / TOKENS as f64;

    let chat_only = best_ns(2000, || {
        black_box(RequestFields::parse(&translated.chat).expect("fields"));
    });
    let with_translation = best_ns(2000, || {
        let t = translate(&body).expect("translates");
        black_box(RequestFields::parse(&t.chat).expect("fields"));
    });

    println!("responses bench: {TOKENS}-token stream, best of {BATCHES} batches");
    println!(
        "  per token   chat relay (pass-through)        {relay:8.0} ns, {:5.0} bytes to the app",
        relay_bytes as f64 / TOKENS as f64
    );
    println!(
        "              Responses events                 {streamed:8.0} ns, {:5.0} bytes  ({:.2}x the relay)",
        stream_bytes as f64 / TOKENS as f64,
        streamed / relay
    );
    println!(
        "              Responses object (stream: false) {object:8.0} ns              ({:.2}x the relay)",
        object / relay
    );
    println!(
        "  per request chat metadata read               {:8.2} µs ({} bytes)",
        chat_only / 1000.0,
        translated.chat.len()
    );
    println!(
        "              translate + metadata read        {:8.2} µs ({} bytes)  ({:.2}x)",
        with_translation / 1000.0,
        body.len(),
        with_translation / chat_only
    );
}
