//! The OpenAI streaming objects the worker emits, as SSE events: `chat.completion.chunk` for
//! `/v1/chat/completions`, `text_completion` for `/v1/completions`, the optional usage chunk
//! (`stream_options.include_usage`), then cocoon's usage event and `data: [DONE]`.

use bytes::Bytes;
use protocol::sse::Event;
use protocol::{Endpoint, Usage};
use serde_json::{json, Value};

use crate::engine::FinishReason;

/// Encodes one response's chunks.
#[derive(Debug)]
pub(crate) struct ChunkEncoder {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    /// Whether the first chat chunk (which carries the role) was sent.
    role_sent: bool,
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
            role_sent: false,
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

    fn choice(&mut self, text: Option<&str>, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self.endpoint {
            Endpoint::ChatCompletions => {
                let mut delta = serde_json::Map::new();
                if !self.role_sent {
                    delta.insert("role".into(), "assistant".into());
                    self.role_sent = true;
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
            Endpoint::Completions => json!([{
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }]),
        }
    }

    /// A chunk carrying generated text.
    pub(crate) fn text(&mut self, text: &str) -> Bytes {
        let choices = self.choice(Some(text), None);
        self.chunk(choices, None)
    }

    /// The end of a successful stream: the chunk with the finish reason, the OpenAI usage
    /// chunk if asked for, cocoon's usage event and `[DONE]`.
    pub(crate) fn finish(
        &mut self,
        reason: FinishReason,
        usage: &Usage,
        include_usage: bool,
    ) -> Bytes {
        let choices = self.choice(None, Some(reason));
        let mut out = self.chunk(choices, None).to_vec();
        if include_usage {
            out.extend_from_slice(&self.chunk(json!([]), Some(usage.to_openai())));
        }
        out.extend_from_slice(&Event::usage(usage).encode());
        out.extend_from_slice(&Event::done().encode());
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use protocol::sse::Decoder;

    use super::*;

    fn events(bytes: &[u8]) -> Vec<Event> {
        Decoder::default().feed(bytes).unwrap()
    }

    #[test]
    fn chat_chunks() {
        let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r1", 7, "m");
        let first: Value = serde_json::from_str(&events(&e.text("a"))[0].data).unwrap();
        assert_eq!(first["id"], "chatcmpl-r1");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["created"], 7);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "a");
        assert!(first["choices"][0]["finish_reason"].is_null());
        let second: Value = serde_json::from_str(&events(&e.text("b"))[0].data).unwrap();
        assert!(second["choices"][0]["delta"].get("role").is_none());
        let usage = Usage {
            prompt_tokens: 2,
            completion_tokens: 2,
            ..Usage::default()
        };
        let tail = events(&e.finish(FinishReason::Length, &usage, true));
        assert_eq!(tail.len(), 4);
        let last: Value = serde_json::from_str(&tail[0].data).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let u: Value = serde_json::from_str(&tail[1].data).unwrap();
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 4);
        assert_eq!(tail[2], Event::usage(&usage));
        assert!(tail[3].is_done());
    }

    #[test]
    fn completion_chunks_without_usage_chunk() {
        let mut e = ChunkEncoder::new(Endpoint::Completions, "r2", 1, "m");
        let c: Value = serde_json::from_str(&events(&e.text("x"))[0].data).unwrap();
        assert_eq!(c["id"], "cmpl-r2");
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "x");
        let tail = events(&e.finish(FinishReason::Stop, &Usage::default(), false));
        assert_eq!(tail.len(), 3);
        let last: Value = serde_json::from_str(&tail[0].data).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(tail[1].name.as_deref(), Some(protocol::sse::EVENT_USAGE));
    }

    #[test]
    fn chat_without_text_still_sends_the_role() {
        let mut e = ChunkEncoder::new(Endpoint::ChatCompletions, "r", 1, "m");
        let tail = events(&e.finish(FinishReason::Stop, &Usage::default(), false));
        let last: Value = serde_json::from_str(&tail[0].data).unwrap();
        assert_eq!(last["choices"][0]["delta"]["role"], "assistant");
    }
}
