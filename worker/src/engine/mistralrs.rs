//! In-process GGUF inference with [mistral.rs](https://github.com/EricLBuehler/mistral.rs) 0.8.1.
//!
//! [`MistralRsEngine::load`] hashes the model file (SHA-256, streamed) *before* mistral.rs
//! parses it, then loads it fully offline from the local path (tokenizer and chat template
//! come from the GGUF). The hash is the `model_hash` the worker advertises.
//!
//! # Trust boundary
//!
//! The GGUF file is untrusted input from the host until it is measured; the digest is what
//! clients see in the worker's registration. mistral.rs re-opens the path after hashing, so
//! the file must live on storage the host cannot change underneath the TD (a measured,
//! read-only image); this module cannot close that window itself.
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
//!    (mistral.rs does not report usage for streamed completions).
//! 3. A counting logits processor records how many tokens the engine sampled: the completion
//!    count for raw prompts and for requests that end early (stop strings). Token counts
//!    always come from the engine, never from re-tokenizing text.
//!
//! Greedy decoding when the temperature is `None` or 0 (mistral.rs's own default would be
//! temperature 1). `seed` is ignored: mistral.rs 0.8.1 has one engine-wide RNG and no
//! per-request seed. Stop strings are applied here as well as in mistral.rs, because its
//! streaming path detects a stop string one token late and would stream the stop string
//! itself. Prefix-cache hits are not reported by mistral.rs, so `cached_tokens` is 0, and so
//! is `reasoning_tokens`.
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
//! Exercised on CPU only (`tests/engine_mistralrs.rs` with SmolLM2-135M Q4_1). The `cuda`
//! feature builds the same code with GPU kernels and is untested here (no GPU).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mistralrs::core::TokenizationRequest;
use mistralrs::{
    Constraint, CustomLogitsProcessor, GgufModelBuilder, Model, NormalRequest, Request,
    RequestBuilder, RequestLike, RequestMessage, Response, SamplingParams, StopTokens, Tensor,
    TextMessageRole, TextMessages, TokenSource,
};
use protocol::{ModelAdvert, Usage};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Message};

/// Load-time options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MistralRsOptions {
    /// Context window used when the model does not state one.
    pub max_context: u32,
    /// Largest completion advertised and accepted.
    pub max_completion_tokens: u32,
    /// Sequences mistral.rs schedules at once (it batches their decode steps).
    pub max_num_seqs: usize,
    /// Finished sequences kept for prefix reuse; `None` disables the prefix cache.
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
        Self {
            max_context: 4096,
            max_completion_tokens: 2048,
            max_num_seqs: 16,
            prefix_cache_n: Some(16),
            force_cpu: !cfg!(feature = "cuda"),
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
    async fn tokenize(&self, input: &RequestMessage) -> Result<Vec<u32>, EngineError> {
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
            tools: None,
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

    /// A streaming generation request and the channel its responses arrive on.
    fn normal_request(
        messages: RequestMessage,
        sampling: &super::Sampling,
        max_len: usize,
        counter: &Arc<AtomicU64>,
    ) -> (Request, mpsc::Receiver<Response>) {
        // One response per sampled token at most, plus an error: mistral.rs never waits on us.
        let (rtx, rrx) = mpsc::channel(max_len.saturating_add(4));
        let sampling_params = SamplingParams {
            temperature: Some(sampling.temperature.filter(|t| *t > 0.0).unwrap_or(0.0)),
            top_p: sampling.top_p,
            frequency_penalty: sampling.frequency_penalty,
            presence_penalty: sampling.presence_penalty,
            stop_toks: (!sampling.stop.is_empty()).then(|| StopTokens::Seqs(sampling.stop.clone())),
            max_len: Some(max_len),
            n_choices: 1,
            ..SamplingParams::neutral()
        };
        let counter: Arc<dyn CustomLogitsProcessor> = Arc::new(TokenCounter(counter.clone()));
        let request = Request::Normal(Box::new(NormalRequest {
            messages,
            sampling_params,
            response: rtx,
            return_logprobs: false,
            is_streaming: true,
            id: 0,
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![counter]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        (request, rrx)
    }
}

/// Counts sampling steps (one per generated token) without changing the logits.
struct TokenCounter(Arc<AtomicU64>);

impl CustomLogitsProcessor for TokenCounter {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(logits.clone())
    }
}

/// Chat messages as a mistral.rs request message.
fn chat_message(msgs: &[Message]) -> RequestMessage {
    let mut text = msgs.iter().fold(TextMessages::new(), |t, m| {
        t.add_message(TextMessageRole::Custom(m.role.clone()), &m.content)
    });
    text.take_messages()
}

/// Holds back text that may be the start of a stop string, and cuts at the first stop string.
#[derive(Debug)]
struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns the text that is safe to emit and whether a stop string was hit
    /// (the returned text then ends just before it).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > hold && self.pending.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of generation.
    fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// How one generation ended.
enum Outcome {
    Done(Chunk),
    Cancelled,
}

/// Forwards mistral.rs responses from `mrx` to `tx`.
async fn forward(
    mut mrx: mpsc::Receiver<Response>,
    tx: &mpsc::Sender<Result<Chunk, EngineError>>,
    prompt_tokens: u64,
    max_len: usize,
    counter: &AtomicU64,
    stops: &[String],
) -> Result<Outcome, EngineError> {
    let mut filter = StopFilter::new(stops);
    let counted = |u: Option<mistralrs::Usage>| match u {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens as u64,
            completion_tokens: u.completion_tokens as u64,
            ..Usage::default()
        },
        None => Usage {
            prompt_tokens,
            completion_tokens: counter.load(Ordering::Relaxed),
            ..Usage::default()
        },
    };
    loop {
        let response = tokio::select! {
            biased;
            _ = tx.closed() => return Ok(Outcome::Cancelled),
            r = mrx.recv() => r,
        };
        let (text, finish, usage) = match response {
            Some(Response::Chunk(c)) => {
                let choice = c.choices.into_iter().next();
                let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
                (choice.and_then(|c| c.delta.content), finish, c.usage)
            }
            Some(Response::CompletionChunk(c)) => {
                let choice = c.choices.into_iter().next();
                let finish = choice.as_ref().and_then(|c| c.finish_reason.clone());
                (choice.map(|c| c.text), finish, None)
            }
            Some(Response::InternalError(e) | Response::ValidationError(e)) => {
                return Err(failed(format!("mistral.rs: {e}")))
            }
            Some(Response::ModelError(m, _) | Response::CompletionModelError(m, _)) => {
                return Err(failed(format!("mistral.rs: {m}")))
            }
            Some(_) => return Err(failed("mistral.rs: unexpected response kind")),
            None => {
                // The last token was an incomplete UTF-8 sequence: mistral.rs sends no final
                // chunk. Legitimate only when the length limit was reached.
                let usage = counted(None);
                if usage.completion_tokens < max_len as u64 {
                    return Err(failed(
                        "mistral.rs ended the stream without a finish reason",
                    ));
                }
                let rest = filter.flush();
                if !rest.is_empty() && tx.send(Ok(Chunk::Text(rest))).await.is_err() {
                    return Ok(Outcome::Cancelled);
                }
                return Ok(Outcome::Done(Chunk::Done {
                    usage,
                    finish_reason: FinishReason::Length,
                }));
            }
        };
        if let Some(text) = text {
            let (out, stopped) = filter.push(&text);
            if !out.is_empty() && tx.send(Ok(Chunk::Text(out))).await.is_err() {
                return Ok(Outcome::Cancelled);
            }
            if stopped {
                // Dropping `mrx` makes mistral.rs cancel the sequence at its next token.
                drop(mrx);
                return Ok(Outcome::Done(Chunk::Done {
                    usage: counted(None),
                    finish_reason: FinishReason::Stop,
                }));
            }
        }
        if let Some(reason) = finish {
            let finish_reason = match reason.as_str() {
                "length" => FinishReason::Length,
                "canceled" => return Err(failed("mistral.rs cancelled the generation")),
                _ => FinishReason::Stop,
            };
            let rest = filter.flush();
            if !rest.is_empty() && tx.send(Ok(Chunk::Text(rest))).await.is_err() {
                return Ok(Outcome::Cancelled);
            }
            return Ok(Outcome::Done(Chunk::Done {
                usage: counted(usage),
                finish_reason,
            }));
        }
    }
}

impl MistralRsEngine {
    async fn run(
        &self,
        req: GenerationRequest,
        tx: &mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<Outcome, EngineError> {
        let limit = u64::from(self.advert.max_context);
        let budget = req.max_prompt_tokens;
        let input = match req.input {
            Input::Chat(msgs) => chat_message(&msgs),
            Input::Prompt(text) => RequestMessage::Completion {
                text,
                echo_prompt: false,
                best_of: None,
            },
        };
        let ids = tokio::select! {
            biased;
            _ = tx.closed() => return Ok(Outcome::Cancelled),
            ids = self.tokenize(&input) => ids?,
        };
        // Raw prompts go in as the ids just computed: the engine then reports exactly this
        // prompt length. Chat goes in as messages (mistral.rs reports usage for chat itself).
        let messages = match input {
            RequestMessage::Completion { .. } => RequestMessage::CompletionTokens(ids.clone()),
            chat => chat,
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
        let counter = Arc::new(AtomicU64::new(0));
        let (request, mrx) = Self::normal_request(messages, &req.sampling, max_len, &counter);
        self.sender()?
            .send(request)
            .await
            .map_err(|_| failed("mistral.rs engine is gone"))?;
        forward(
            mrx,
            tx,
            prompt_tokens,
            max_len,
            &counter,
            &req.sampling.stop,
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (t, stopped) = f.push(p);
            out.push_str(&t);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&f.flush());
        (out, false)
    }

    #[test]
    fn stop_filter_cuts_before_the_stop_string() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["hello EN", "x"]),
            ("hello ENx".into(), false)
        );
        assert_eq!(run(&["\n\n", "."], &["a\n", "b. c"]), ("a\nb".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["ab"], &["xa"]), ("xa".into(), false));
    }

    #[test]
    fn stop_filter_emits_what_cannot_start_a_stop() {
        let mut f = StopFilter::new(&["END".to_string()]);
        assert_eq!(f.push("hello E"), ("hello ".to_string(), false));
        assert_eq!(f.push("x"), ("Ex".to_string(), false));
        assert_eq!(f.flush(), "");
    }
}
