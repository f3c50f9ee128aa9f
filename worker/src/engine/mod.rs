//! Inference engines behind one trait.
//!
//! * [`stub`]: emits N tokens at a fixed rate (tests, benchmarks, load tests; never a product).
//! * `mistralrs` (feature `mistralrs`): in-process GGUF inference with mistral.rs on CPU
//!   (or CUDA with the `cuda` feature).
//! * `upstream`: an OpenAI-compatible server (vLLM, SGLang, llama.cpp server) on a URL.
//!
//! An engine receives a validated [`GenerationRequest`] and streams [`Chunk`]s into a channel.
//! When the receiver is dropped (client gone, proxy cancelled) the engine must stop generating
//! promptly: a failed `send` is the cancellation signal.
//!
//! As it works, an engine counts on the request's [`Meter`]: the prompt's tokens once it has
//! counted them (before prompt processing), the completion tokens as it samples them (also
//! those a stage holds back). When a generation ends without [`Chunk::Done`] (cancelled,
//! stalled, failed) the meter is the work it cost.

#[cfg(feature = "mistralrs")]
pub mod mistralrs;
pub mod stub;
pub mod upstream;

use protocol::{ModelAdvert, Usage};
use tokio::sync::mpsc;

/// One chat message.
///
/// `role` is `system`, `user`, `assistant` or `tool` (validation maps OpenAI's `developer` to
/// `system`). An assistant message may carry the tool calls it made (its `content` is then
/// often empty); a `tool` message answers the call named by `tool_call_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A plain text message.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// A function the model may call (OpenAI `tools[].function`).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object (`{"type": "object"}` when the request gave none).
    pub parameters: serde_json::Value,
}

/// Whether and which tool the model must call (OpenAI `tool_choice`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call a tool (the tools are still shown to the model).
    None,
    /// The model decides (OpenAI's default when tools are given).
    #[default]
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this function.
    Function(String),
}

/// A tool call made by the model (or, in a request, an earlier one it made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_…`, unique within the response.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// The shape of the output (OpenAI `response_format`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema {
        name: String,
        schema: serde_json::Value,
        strict: bool,
    },
}

/// The log probability of one sampled token and, if asked for, of the most likely ones.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// UTF-8 bytes of the token (`None` when the engine cannot tell).
    pub bytes: Option<Vec<u8>>,
    /// The `top_logprobs` most likely tokens at this position, most likely first.
    pub top: Vec<TopLogprob>,
}

/// One alternative in [`TokenLogprob::top`].
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// `/v1/chat/completions`: messages rendered with the model's chat template.
    Chat(Vec<Message>),
    /// `/v1/completions`: a raw prompt.
    Prompt(String),
}

/// Sampling parameters (already validated and clamped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: u32,
    /// `None` or 0.0 = greedy. (Validation fills in OpenAI's default of 1.0 when a request
    /// gives none.)
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Added to the logits of these token ids before sampling (-100..=100; OpenAI
    /// `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// `Some(n)`: report each sampled token's log probability and the `n` (0..=20) most
    /// likely alternatives (OpenAI `logprobs` + `top_logprobs`).
    pub top_logprobs: Option<u8>,
}

/// A validated request for one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub model: String,
    pub input: Input,
    pub sampling: Sampling,
    /// Functions the model may call (chat only; empty = none).
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    pub response_format: ResponseFormat,
    /// Most prompt tokens the request may use (the proxy's reservation,
    /// `cocoon-max-prompt-tokens`): an engine that counts prompt tokens before generating
    /// refuses more with [`EngineError::PromptOverBudget`]. `None`: only the context bounds it.
    pub max_prompt_tokens: Option<u64>,
    /// Where the engine counts the work done so far (see the module docs).
    pub meter: Meter,
}

/// The work done on one generation so far, counted by the engine while it runs and read by
/// the service at any time (shared: clones count on the same figures).
#[derive(Clone, Debug, Default)]
pub struct Meter(std::sync::Arc<MeterCounts>);

#[derive(Debug, Default)]
struct MeterCounts {
    prompt_tokens: std::sync::atomic::AtomicU64,
    completion_tokens: std::sync::atomic::AtomicU64,
}

impl Meter {
    /// The prompt was counted: `tokens`.
    pub fn prompt(&self, tokens: u64) {
        self.0
            .prompt_tokens
            .store(tokens, std::sync::atomic::Ordering::Relaxed);
    }

    /// `tokens` completion tokens were sampled so far (the count never goes down).
    pub fn completion(&self, tokens: u64) {
        self.0
            .completion_tokens
            .fetch_max(tokens, std::sync::atomic::Ordering::Relaxed);
    }

    /// One more completion token was sampled.
    pub fn completion_token(&self) {
        self.0
            .completion_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The work counted so far.
    pub fn usage(&self) -> Usage {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Usage {
            prompt_tokens: load(&self.0.prompt_tokens),
            completion_tokens: load(&self.0.completion_tokens),
            ..Usage::default()
        }
    }
}

/// Meters compare by their counts (a request's equality does not depend on which meter it
/// carries while nothing was counted).
impl PartialEq for Meter {
    fn eq(&self, other: &Self) -> bool {
        self.usage() == other.usage()
    }
}

/// Checks a prompt's token count against a request's budget
/// ([`GenerationRequest::max_prompt_tokens`]).
pub fn check_prompt_budget(budget: Option<u64>, prompt_tokens: u64) -> Result<(), EngineError> {
    match budget {
        Some(budget) if prompt_tokens > budget => Err(EngineError::PromptOverBudget {
            tokens: prompt_tokens,
            budget,
        }),
        _ => Ok(()),
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// The model called one or more tools.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// A piece of the engine's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// Generated text (one or more tokens).
    Text(String),
    /// Generated text with the log probabilities of its tokens (when
    /// [`Sampling::top_logprobs`] is set).
    Tokens {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// Tool calls the model made (sent once, complete, before [`Chunk::Done`] with
    /// [`FinishReason::ToolCalls`]).
    ToolCalls(Vec<ToolCall>),
    /// The end: usage counted by the engine itself, and why it stopped.
    Done {
        usage: Usage,
        finish_reason: FinishReason,
    },
}

/// Engine failures.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("model {0} is not served by this engine")]
    UnknownModel(String),
    #[error("prompt of {tokens} tokens exceeds the context of {limit}")]
    PromptTooLong { tokens: u64, limit: u64 },
    /// The request asks for something this engine cannot do (a schema its grammar engine
    /// rejects, logprobs from an upstream that has none); the message names it.
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "prompt of {tokens} tokens exceeds the {budget} prompt tokens reserved for this request"
    )]
    PromptOverBudget { tokens: u64, budget: u64 },
    /// The service's form of [`Self::PromptOverBudget`] for a request of several choices
    /// (`n`): each choice processes the prompt, so it must fit `choices` times.
    #[error(
        "{choices} choices each process the prompt of {tokens} tokens, more than the {budget} \
         prompt tokens reserved for this request"
    )]
    ChoicesOverBudget {
        choices: u64,
        tokens: u64,
        budget: u64,
    },
    #[error("engine failed: {0}")]
    Failed(String),
    #[error("upstream: {0}")]
    Upstream(String),
}

/// An inference engine.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The models this engine serves (advertised at registration).
    fn models(&self) -> Vec<ModelAdvert>;

    /// Generates for `req`, sending chunks to `tx` and ending with exactly one
    /// [`Chunk::Done`] on success. Returns early (with `Ok`) when `tx` is closed.
    async fn generate(
        &self,
        req: GenerationRequest,
        tx: mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<(), EngineError>;
}
