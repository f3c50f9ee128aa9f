//! In-process GGUF inference with [mistral.rs](https://github.com/EricLBuehler/mistral.rs) 0.8.1.
//!
//! [`MistralRsEngine::load`] hashes the model file (SHA-256, streamed) *before* mistral.rs
//! parses it, then loads it fully offline from the local path (tokenizer and chat template
//! come from the GGUF). The hash is the `model_hash` the worker advertises.
//!
//! # Trust boundary
//!
//! The GGUF file is untrusted input from the host until it is measured; the digest is what
//! clients see in the worker's registration. mistral.rs re-opens the path after hashing (and
//! so does [`vocab`], for token texts), so the file must live on storage the host cannot
//! change underneath the TD (a measured, read-only image); this module cannot close that
//! window itself.
//!
//! # How a request runs
//!
//! 1. The prompt is tokenized once by the engine itself (`Request::Tokenize`: the chat template
//!    for [`Input::Chat`], the plain tokenizer with special tokens for [`Input::Prompt`]), which
//!    gives an exact prompt length to check against the context (→
//!    [`EngineError::PromptTooLong`]) and to clamp `max_tokens` so that prompt plus completion
//!    fit.
//! 2. Chat requests are sent as chat messages (mistral.rs renders the template again and
//!    reports usage in its final chunk); raw prompts are sent as the token ids from step 1
//!    (mistral.rs does not report usage for streamed completions). Tools are shown to the
//!    model and calls recognised as [`tools`] describes.
//! 3. Every token is chosen by this engine's [`sampler`] (a mistral.rs logits processor):
//!    seeded, reproducible sampling, penalties, `logit_bias`, natural-log logprobs. It also
//!    counts the generated tokens: the completion count for raw prompts and for requests that
//!    end early (stop strings). Token counts always come from the engine, never from
//!    re-tokenizing text.
//! 4. `response_format` json_object / json_schema and forced tool calls are constrained
//!    decoding: a JSON schema compiled by mistral.rs's llguidance. A schema it cannot compile is
//!    refused before any output with [`EngineError::Unsupported`].
//! 5. [`output`] turns the streamed responses into [`Chunk`]s: stop strings, logprobs, tool
//!    calls.
//!
//! Greedy decoding when the temperature is `None` or 0 (validation fills in OpenAI's default
//! of 1). Without `seed` a random one is drawn per request. Prefix-cache hits are not reported
//! by mistral.rs, so `cached_tokens` is 0, and so is `reasoning_tokens`.
//!
//! The prefix cache is off by default on the CPU: mistral.rs 0.8.1 evicts only caches that live
//! on a GPU (`prefix_cacher.rs`, `evict_caches` counts non-CPU caches), so on the CPU every
//! finished sequence's KV cache would stay in memory for good.
//!
//! # Cancellation
//!
//! mistral.rs cancels a streaming sequence when sending to its response channel fails
//! (`pipeline/sampling.rs`: failed send → `StopReason::Canceled`). So dropping our receiver
//! stops generation at the next token. A prompt being processed stops between two chunks of
//! chunked prefill (cocoon's patch of mistral.rs-core, `third_party/`: chunks of about
//! [`MistralRsOptions::prefill_chunk`], and sequences nobody listens to are dropped before
//! they are scheduled), so a client that gives up mid-prefill frees the engine within about
//! one chunk. The response channel is sized so that mistral.rs never waits on a slow
//! client: its engine loop serves all sequences and would otherwise stall every request.
//!
//! Exercised on CPU only (`tests/engine_mistralrs.rs`, `tests/engine_mistralrs_openai.rs` with
//! SmolLM2-135M Q4_1, `tests/tiny_golden.rs`). The `cuda` feature builds the same code with
//! GPU kernels and is untested here (no GPU).

mod output;
mod sampler;
mod tools;
mod vocab;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mistralrs::core::TokenizationRequest;
use mistralrs::{
    Constraint, CustomLogitsProcessor, GgufModelBuilder, Model, NormalRequest, Request,
    RequestBuilder, RequestMessage, Response, SamplingParams, StopTokens, TextMessageRole,
    TokenSource, Tool,
};
use protocol::{ModelAdvert, Usage};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use self::output::{Calls, Forward, Outcome};
use self::sampler::{Sampler, SamplerSpec, Steps};
use self::vocab::Vocab;
use super::{Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, ToolChoice};

/// Load-time options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MistralRsOptions {
    /// Context window used when the model does not state one.
    pub max_context: u32,
    /// Largest completion advertised and accepted.
    pub max_completion_tokens: u32,
    /// Sequences mistral.rs schedules at once (it batches their decode steps).
    pub max_num_seqs: usize,
    /// Finished sequences kept for prefix reuse; `None` disables the prefix cache (the default
    /// on the CPU, where mistral.rs 0.8.1 never evicts them: see the module docs).
    pub prefix_cache_n: Option<usize>,
    /// Run on the CPU even when built with `cuda`.
    pub force_cpu: bool,
    /// Long prompts are processed in chunks of about this duration, and a cancelled request
    /// stops between chunks (cocoon's patch of mistral.rs, third_party/README.md); `None`
    /// processes each prompt in one pass, which cannot be interrupted.
    pub prefill_chunk: Option<Duration>,
}

impl Default for MistralRsOptions {
    fn default() -> Self {
        let force_cpu = !cfg!(feature = "cuda");
        Self {
            max_context: 4096,
            max_completion_tokens: 2048,
            max_num_seqs: 16,
            prefix_cache_n: (!force_cpu).then_some(16),
            force_cpu,
            prefill_chunk: Some(DEFAULT_PREFILL_CHUNK),
        }
    }
}

/// Default time per prefill chunk: a cancelled request frees the engine within about this
/// long (plus one decode step).
pub const DEFAULT_PREFILL_CHUNK: Duration = Duration::from_millis(250);

/// A GGUF model served in-process by mistral.rs.
pub struct MistralRsEngine {
    advert: ModelAdvert,
    model: Arc<Model>,
    vocab: Arc<Vocab>,
}

impl fmt::Debug for MistralRsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MistralRsEngine")
            .field("advert", &self.advert)
            .finish_non_exhaustive()
    }
}

fn failed(msg: impl Into<String>) -> EngineError {
    EngineError::Failed(msg.into())
}

/// SHA-256 (lowercase hex) of the file at `path`, read in 1 MiB blocks off the async runtime.
pub async fn sha256_file(path: &Path) -> Result<String, EngineError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let shown = path.display().to_string();
        let mut file = std::fs::File::open(&path)
            .map_err(|e| failed(format!("opening model {shown}: {e}")))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| failed(format!("reading model {shown}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(|e| failed(format!("hashing model: {e}")))?
}

/// A random sampling seed (for requests without one).
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return nanos as u64;
    }
    u64::from_le_bytes(b)
}

/// Everything one generation request carries to mistral.rs.
struct Plan {
    messages: RequestMessage,
    tools: Option<Vec<Tool>>,
    constraint: Constraint,
    calls: Calls,
}

impl MistralRsEngine {
    /// Measures and loads the GGUF at `gguf_path`, serving it as `name`.
    ///
    /// Takes seconds and blocks the calling runtime thread while mistral.rs loads; call it from
    /// a multi-threaded tokio runtime (mistral.rs then also runs a one-token warm-up).
    pub async fn load(
        name: &str,
        gguf_path: &Path,
        opts: MistralRsOptions,
    ) -> Result<Self, EngineError> {
        let model_hash = sha256_file(gguf_path).await?;
        // Process-wide in mistral.rs (one engine per worker process).
        mistralrs::core::prefill::set_chunk_target(opts.prefill_chunk);
        let shown = gguf_path.display().to_string();
        let file = gguf_path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| failed(format!("model path {shown}: no utf-8 file name")))?;
        let dir = match gguf_path.parent().and_then(Path::to_str) {
            Some("") => ".",
            Some(d) => d,
            None => return Err(failed(format!("model path {shown}: no utf-8 directory"))),
        };
        let vocab_path = gguf_path.to_path_buf();
        let vocab = tokio::task::spawn_blocking(move || Vocab::read(&vocab_path))
            .await
            .map_err(|e| failed(format!("reading tokenizer: {e}")))??;
        let mut builder = GgufModelBuilder::new(dir, vec![file])
            .with_token_source(TokenSource::None)
            .with_max_num_seqs(opts.max_num_seqs.max(1))
            .with_prefix_cache_n(opts.prefix_cache_n);
        if opts.force_cpu {
            builder = builder.with_force_cpu();
        }
        let model = builder
            .build()
            .await
            .map_err(|e| failed(format!("loading model {shown}: {e:#}")))?;
        let max_context = match model.max_sequence_length() {
            Ok(Some(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            _ => opts.max_context,
        };
        Ok(Self {
            advert: ModelAdvert {
                name: name.to_string(),
                model_hash,
                max_context,
                max_completion_tokens: opts.max_completion_tokens,
            },
            model: Arc::new(model),
            vocab: Arc::new(vocab),
        })
    }

    /// What this engine advertises.
    pub fn advert(&self) -> &ModelAdvert {
        &self.advert
    }

    /// The loaded mistral.rs model (for benchmarks against the bare API).
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, EngineError> {
        self.model
            .inner()
            .get_sender(None)
            .map_err(|e| failed(format!("mistral.rs: {e}")))
    }

    /// Token ids of `input` (chat messages with the generation prompt, or a raw prompt), as
    /// the engine's own tokenizer and chat template produce them for generation.
    async fn tokenize(
        &self,
        input: &RequestMessage,
        tools: Option<Vec<Tool>>,
    ) -> Result<Vec<u32>, EngineError> {
        // `TokenizationRequest::text` is an `Either` (messages | text); the `either` crate is
        // not re-exported, so it is built through `From<Result<R, L>> for Either<L, R>`.
        let text = match input {
            RequestMessage::Chat { messages, .. } => Err::<String, _>(messages.clone()).into(),
            RequestMessage::Completion { text, .. } => Ok(text.clone()).into(),
            _ => return Err(failed("tokenizing: unsupported input")),
        };
        let (rtx, mut rrx) = mpsc::channel(1);
        let request = Request::Tokenize(TokenizationRequest {
            text,
            tools,
            add_generation_prompt: true,
            add_special_tokens: true,
            enable_thinking: None,
            reasoning_effort: None,
            response: rtx,
        });
        self.sender()?
            .send(request)
            .await
            .map_err(|_| failed("mistral.rs engine is gone"))?;
        // mistral.rs panics its engine thread if this receiver is gone when it answers, so the
        // answer is awaited by a task that outlives a dropped `generate` future.
        tokio::spawn(async move { rrx.recv().await })
            .await
            .map_err(|e| failed(format!("tokenizing: {e}")))?
            .ok_or_else(|| failed("mistral.rs engine is gone"))?
            .map_err(|e| failed(format!("tokenizing: {e}")))
    }

    /// The messages, tools and constraint of `req` (see [`tools`]).
    fn plan(&self, req: &GenerationRequest) -> Result<Plan, EngineError> {
        let msgs = match &req.input {
            Input::Chat(msgs) => msgs,
            Input::Prompt(text) => {
                if !req.tools.is_empty() {
                    return Err(EngineError::Unsupported(
                        "tools need chat messages, not a raw prompt".into(),
                    ));
                }
                return Ok(Plan {
                    messages: RequestMessage::Completion {
                        text: text.clone(),
                        echo_prompt: false,
                        best_of: None,
                    },
                    tools: None,
                    constraint: constraint(tools::format_schema(&req.response_format)),
                    calls: Calls::Never,
                });
            }
        };
        let has_tools = !req.tools.is_empty();
        let native = has_tools && self.vocab.template_has_tools;
        let forced = if has_tools {
            tools::forced_call_schema(&req.tools, &req.tool_choice)?
        } else {
            None
        };
        let calls = match (&req.tool_choice, &forced) {
            _ if !has_tools => Calls::Never,
            (_, Some(_)) => Calls::Forced,
            (ToolChoice::Auto, None) => Calls::Auto,
            _ => Calls::Never,
        };
        // A forced call's schema wins over `response_format`.
        let schema = forced.or_else(|| tools::format_schema(&req.response_format));
        Ok(Plan {
            messages: RequestMessage::Chat {
                messages: tools::chat_messages(msgs, &req.tools, &req.tool_choice, native),
                enable_thinking: None,
                reasoning_effort: None,
            },
            tools: if native {
                Some(tools::mistral_tools(&req.tools)?)
            } else {
                None
            },
            constraint: constraint(schema),
            calls,
        })
    }

    /// A streaming generation request and the channel its responses arrive on.
    fn normal_request(
        &self,
        plan: Plan,
        messages: RequestMessage,
        sampling: &super::Sampling,
        max_len: usize,
        steps: &Arc<Steps>,
    ) -> (Request, mpsc::Receiver<Response>) {
        // One response per sampled token at most, plus an error: mistral.rs never waits on us.
        let (rtx, rrx) = mpsc::channel(max_len.saturating_add(4));
        let constrained = !matches!(plan.constraint, Constraint::None);
        let stop_toks = match self.vocab.trie_eos {
            // A finished grammar forces the token trie's EOS, which may not be the model's.
            // User stop strings are still cut by `output`, which then drops the sequence.
            Some(eos) if constrained => Some(StopTokens::Ids(vec![eos])),
            _ => (!sampling.stop.is_empty()).then(|| StopTokens::Seqs(sampling.stop.clone())),
        };
        let logprobs = sampling.top_logprobs.is_some();
        let sampling_params = SamplingParams {
            // mistral.rs's argmax takes the one token the sampler leaves.
            temperature: Some(0.0),
            top_n_logprobs: usize::from(logprobs),
            stop_toks,
            max_len: Some(max_len),
            n_choices: 1,
            ..SamplingParams::neutral()
        };
        let spec = SamplerSpec {
            temperature: sampling.temperature.filter(|t| *t > 0.0).map(|t| t as f32),
            top_p: sampling.top_p.map(|p| p as f32),
            presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
            frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
            logit_bias: sampling.logit_bias.clone(),
            top_logprobs: sampling.top_logprobs,
            seed: sampling.seed.unwrap_or_else(random_seed),
        };
        let sampler: Arc<dyn CustomLogitsProcessor> = Arc::new(Sampler::new(spec, steps.clone()));
        let tool_choice = plan.tools.as_ref().map(|_| mistralrs::ToolChoice::None);
        let request = Request::Normal(Box::new(NormalRequest {
            messages,
            sampling_params,
            response: rtx,
            // Only for each chunk's token id (see `output`); the values are the sampler's.
            return_logprobs: logprobs,
            is_streaming: true,
            id: 0,
            constraint: plan.constraint,
            suffix: None,
            tools: plan.tools,
            tool_choice,
            logits_processors: Some(vec![sampler]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        (request, rrx)
    }

    async fn run(
        &self,
        req: GenerationRequest,
        tx: &mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<Outcome, EngineError> {
        let limit = u64::from(self.advert.max_context);
        let budget = req.max_prompt_tokens;
        let plan = self.plan(&req)?;
        let ids = tokio::select! {
            biased;
            _ = tx.closed() => return Ok(Outcome::Cancelled),
            ids = self.tokenize(&plan.messages, plan.tools.clone()) => ids?,
        };
        // Raw prompts go in as the ids just computed: the engine then reports exactly this
        // prompt length. Chat goes in as messages (mistral.rs reports usage for chat itself).
        let messages = match &plan.messages {
            RequestMessage::Completion { .. } => RequestMessage::CompletionTokens(ids.clone()),
            chat => chat.clone(),
        };
        let prompt_tokens = ids.len() as u64;
        if prompt_tokens == 0 {
            return Err(failed("the prompt is empty"));
        }
        if prompt_tokens >= limit {
            return Err(EngineError::PromptTooLong {
                tokens: prompt_tokens,
                limit,
            });
        }
        super::check_prompt_budget(budget, prompt_tokens)?;
        req.meter.prompt(prompt_tokens);
        let room = limit - prompt_tokens;
        let max_len = u64::from(req.sampling.max_tokens).min(room);
        if max_len == 0 {
            return Ok(Outcome::Done(Chunk::Done {
                usage: Usage {
                    prompt_tokens,
                    ..Usage::default()
                },
                finish_reason: FinishReason::Length,
            }));
        }
        let max_len = usize::try_from(max_len).unwrap_or(usize::MAX);
        let steps = Arc::new(Steps::default());
        let calls = plan.calls;
        let (request, mrx) = self.normal_request(plan, messages, &req.sampling, max_len, &steps);
        self.sender()?
            .send(request)
            .await
            .map_err(|_| failed("mistral.rs engine is gone"))?;
        Forward {
            tx,
            prompt_tokens,
            max_len,
            steps: &steps,
            stops: &req.sampling.stop,
            calls,
            tools: &req.tools,
            logprobs: req.sampling.top_logprobs.map(|_| &*self.vocab),
            meter: &req.meter,
        }
        .run(mrx)
        .await
    }
}

/// The llguidance constraint for an optional JSON schema.
fn constraint(schema: Option<serde_json::Value>) -> Constraint {
    match schema {
        Some(s) => Constraint::JsonSchema(tools::with_grammar_options(s)),
        None => Constraint::None,
    }
}

#[async_trait::async_trait]
impl Engine for MistralRsEngine {
    fn models(&self) -> Vec<ModelAdvert> {
        vec![self.advert.clone()]
    }

    async fn generate(
        &self,
        req: GenerationRequest,
        tx: mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<(), EngineError> {
        if req.model != self.advert.name {
            return Err(EngineError::UnknownModel(req.model));
        }
        match self.run(req, &tx).await {
            Ok(Outcome::Done(done)) => {
                let _ = tx.send(Ok(done)).await;
                Ok(())
            }
            Ok(Outcome::Cancelled) => Ok(()),
            Err(e) => {
                let _ = tx.send(Err(e.clone())).await;
                Err(e)
            }
        }
    }
}

/// Figures from one generation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From submitting the request to the first text.
    pub first_token: Duration,
    /// From submitting the request to the end.
    pub total: Duration,
}

impl GenerationStats {
    /// Completion tokens per second over the whole request (prompt processing included).
    pub fn tokens_per_sec(&self) -> f64 {
        self.completion_tokens as f64 / self.total.as_secs_f64().max(1e-9)
    }

    /// Tokens per second after the first one (decode speed).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let decode = self.total.saturating_sub(self.first_token).as_secs_f64();
        self.completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9)
    }
}

/// The baseline: one greedy chat generation of up to `max_tokens` through the plain mistral.rs
/// API (`stream_chat_request`), without this engine's tokenization, stop handling or channels.
pub async fn bare_generate(
    model: &Model,
    prompt: &str,
    max_tokens: usize,
) -> Result<GenerationStats, EngineError> {
    let request = RequestBuilder::new()
        .add_message(TextMessageRole::User, prompt)
        .set_sampler_temperature(0.0)
        .set_sampler_max_len(max_tokens);
    let start = Instant::now();
    let mut stream = model
        .stream_chat_request(request)
        .await
        .map_err(|e| failed(format!("mistral.rs: {e}")))?;
    let mut first_token = None;
    while let Some(response) = stream.next().await {
        match response {
            Response::Chunk(c) => {
                if first_token.is_none() {
                    first_token = Some(start.elapsed());
                }
                if let Some(u) = c.usage {
                    return Ok(GenerationStats {
                        prompt_tokens: u.prompt_tokens as u64,
                        completion_tokens: u.completion_tokens as u64,
                        first_token: first_token.unwrap_or_default(),
                        total: start.elapsed(),
                    });
                }
            }
            Response::InternalError(e) | Response::ValidationError(e) => {
                return Err(failed(format!("mistral.rs: {e}")))
            }
            Response::ModelError(m, _) => return Err(failed(format!("mistral.rs: {m}"))),
            _ => return Err(failed("mistral.rs: unexpected response kind")),
        }
    }
    Err(failed("mistral.rs ended the stream without usage"))
}
