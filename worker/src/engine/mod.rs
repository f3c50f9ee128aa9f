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

#[cfg(feature = "mistralrs")]
pub mod mistralrs;
pub mod stub;
pub mod upstream;

use protocol::{ModelAdvert, Usage};
use tokio::sync::mpsc;

/// One chat message (role and text content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
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
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub max_tokens: u32,
    /// `None` or 0.0 = greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

/// A validated request for one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub model: String,
    pub input: Input,
    pub sampling: Sampling,
    /// Most prompt tokens the request may use (the proxy's reservation,
    /// `cocoon-max-prompt-tokens`): an engine that counts prompt tokens before generating
    /// refuses more with [`EngineError::PromptOverBudget`]. `None`: only the context bounds it.
    pub max_prompt_tokens: Option<u64>,
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
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A piece of the engine's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// Generated text (one or more tokens).
    Text(String),
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
    #[error(
        "prompt of {tokens} tokens exceeds the {budget} prompt tokens reserved for this request"
    )]
    PromptOverBudget { tokens: u64, budget: u64 },
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
