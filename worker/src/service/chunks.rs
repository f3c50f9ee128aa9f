//! The OpenAI streaming objects the worker emits, as SSE events: `chat.completion.chunk` for
//! `/v1/chat/completions`, `text_completion` for `/v1/completions`, the optional usage chunk
//! (`stream_options.include_usage`), then cocoon's usage event and `data: [DONE]`.
//!
//! * Text: `delta.content` (chat, each choice's first chunk also carries `delta.role`) or `text`.
//! * Log probabilities ([`Chunk::Tokens`](crate::engine::Chunk)): chat
//!   `logprobs.content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`;
//!   completions (the legacy shape) `logprobs = {tokens, token_logprobs, top_logprobs: [{token:
//!   logprob}], text_offset}`, offsets in characters of the choice's generated text. A
//!   log probability that is not finite is sent as -9999.0 (JSON has no infinity).
//! * Tool calls (chat): one chunk with `delta.tool_calls = [{index, id, type: "function",
//!   function: {name, arguments}}]`, each call complete; the choice then ends with
//!   `finish_reason: "tool_calls"`.
//! * A request of several choices (`n`, a completions batch) sends them one after another,
//!   each ended before the next starts (`index` p·n + j); the usage at the end covers the
//!   whole request.

use bytes::Bytes;
use protocol::sse::Event;
use protocol::{Endpoint, Usage};
use serde_json::{json, Map, Value};

use crate::engine::{FinishReason, TokenLogprob, ToolCall};

/// Encodes one response's chunks.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    /// The choice whose first delta carried the role (each choice's first delta does).
    role_sent: Option<usize>,
    /// Completions: the choice whose text `offset` counts, and the characters it has so far.
    offset_choice: usize,
    offset: usize,
}

/// A log probability as JSON (shortest form of the `f32`; -9999.0 when not finite).
fn logprob(x: f32) -> Value {
    let x = if x.is_finite() {
        format!("{x}").parse::<f64>().unwrap_or(f64::from(x))
    } else {
        -9999.0
    };
    json!(x)
}

fn token_bytes(b: &Option<Vec<u8>>) -> Value {
    b.as_ref().map_or(Value::Null, |b| json!(b))
}

impl ChunkEncoder {
    pub(crate) fn new(endpoint: Endpoint, request_id: &str, created: u64, model: &str) -> Self {
        let id = match endpoint {
            Endpoint::ChatCompletions => format!("chatcmpl-{request_id}"),
            Endpoint::Completions => format!("cmpl-{request_id}"),
        };
        Self {
            endpoint,
            id,
            created,
            model: model.to_string(),
            role_sent: None,
            offset_choice: 0,
            offset: 0,
        }
    }

    fn object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::ChatCompletions => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut v = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Bytes::from(Event::data(v.to_string()).encode())
    }

    /// A chat delta of choice `index`: the role on its first one, then `fields`.
    fn delta(&mut self, index: usize, fields: Map<String, Value>) -> Map<String, Value> {
        let mut delta = Map::new();
        if self.role_sent != Some(index) {
            delta.insert("role".into(), "assistant".into());
            self.role_sent = Some(index);
        }
        delta.extend(fields);
        delta
    }

    /// The character offset of new completions text in choice `index`, then counts `text`.
    fn advance(&mut self, index: usize, text: &str) -> usize {
        if index != self.offset_choice {
            self.offset_choice = index;
            self.offset = 0;
        }
        let at = self.offset;
        self.offset += text.chars().count();
        at
    }

    fn choice(
        &mut self,
        index: usize,
        text: Option<&str>,
        logprobs: Value,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let mut fields = Map::new();
                if let Some(t) = text {
                    fields.insert("content".into(), t.into());
                }
                let delta = self.delta(index, fields);
                json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
            }
            Endpoint::Completions => json!([{
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": finish,
            }]),
        }
    }

    /// A chunk carrying generated text of choice `index`.
    pub(crate) fn text(&mut self, index: usize, text: &str) -> Bytes {
        if self.endpoint == Endpoint::Completions {
            self.advance(index, text);
        }
        let choices = self.choice(index, Some(text), Value::Null, None);
        self.chunk(choices, None)
    }

    /// A chunk carrying generated text of choice `index` with its tokens' log probabilities.
    pub(crate) fn tokens(&mut self, index: usize, text: &str, tokens: &[TokenLogprob]) -> Bytes {
        let logprobs = match self.endpoint {
            Endpoint::ChatCompletions => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .map(|a| {
                                json!({
                                    "token": a.token,
                                    "logprob": logprob(a.logprob),
                                    "bytes": token_bytes(&a.bytes),
                                })
                            })
                            .collect();
                        json!({
                            "token": t.token,
                            "logprob": logprob(t.logprob),
                            "bytes": token_bytes(&t.bytes),
                            "top_logprobs": top,
                        })
                    })
                    .collect();
                json!({ "content": content })
            }
            Endpoint::Completions => {
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut at = self.advance(index, "");
                for t in tokens {
                    offsets.push(at);
                    at += t.token.chars().count();
                }
                self.advance(index, text);
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let m: Map<String, Value> = t
                            .top
                            .iter()
                            .map(|a| (a.token.clone(), logprob(a.logprob)))
                            .collect();
                        Value::Object(m)
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| logprob(t.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        };
        let choices = self.choice(index, Some(text), logprobs, None);
        self.chunk(choices, None)
    }

    /// A chat chunk carrying complete tool calls (chat only: the caller refuses them for
    /// completions).
    pub(crate) fn tool_calls(&mut self, index: usize, calls: &[ToolCall]) -> Bytes {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments },
                })
            })
            .collect();
        let mut fields = Map::new();
        fields.insert("tool_calls".into(), Value::Array(calls));
        let delta = self.delta(index, fields);
        let choices =
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]);
        self.chunk(choices, None)
    }

    /// The chunk that ends choice `index` with its finish reason.
    pub(crate) fn end_choice(&mut self, index: usize, reason: FinishReason) -> Bytes {
        let choices = self.choice(index, None, Value::Null, Some(reason));
        self.chunk(choices, None)
    }

    /// The end of a successful stream, after every choice ended: the OpenAI usage chunk if
    /// asked for, cocoon's usage event and `[DONE]`.
    pub(crate) fn tail(&self, usage: &Usage, include_usage: bool) -> Bytes {
        let mut out = self.usage_report(usage, include_usage);
        out.extend_from_slice(&Event::done().encode());
        Bytes::from(out)
    }

    /// The usage of the stream: the OpenAI usage chunk if asked for and cocoon's usage event
    /// (the end of a successful stream without its `[DONE]`).
    pub(crate) fn usage_report(&self, usage: &Usage, include_usage: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if include_usage {
            out.extend_from_slice(&self.chunk(json!([]), Some(usage.to_openai())));
        }
        out.extend_from_slice(&Event::usage(usage).encode());
        out
    }
}

#[cfg(test)]
mod tests;
