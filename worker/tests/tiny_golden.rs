//! Exact output of the mistral.rs engine, against a committed golden sequence.
//!
//! The model is the tiny random-weight llama from `cocoon-image` (`image::gguf::tiny`, seed
//! [`SEED`], default parameters: F32 weights), written to a temporary directory and loaded
//! with [`MistralRsEngine::load`] exactly as the worker loads a model. A greedy chat
//! completion of [`PROMPT`] must reproduce `tests/golden/tiny_llama.json` token for token:
//! the GGUF's SHA-256 (a change in the generator), the prompt token ids (tokenizer and chat
//! template), the completion token ids, the text and the usage the engine reports.
//!
//! Completion token ids are not part of the engine's interface (it streams text), so they
//! come from the same model through the bare mistral.rs API with top-1 logprobs; they must
//! decode to the engine's text (less the leading whitespace mistral.rs trims off a completion).
//!
//! Also checked: a second identical request gives the same output (greedy, F32 on the CPU is
//! deterministic: the same with `RAYON_NUM_THREADS=1` and on one core), a prompt that differs
//! only at its start changes the output (attention matters), and the Q8_0 variant of the model
//! loads and agrees with F32 on a prefix.
//!
//! A changed golden file is a reviewed change. To regenerate it (after checking why the
//! output changed):
//!
//! ```text
//! COCOON_UPDATE_GOLDEN=1 cargo test --release -p cocoon-worker --test tiny_golden
//! ```
//!
//! Run with `-- --nocapture` for load time and generation speed.
#![cfg(feature = "mistralrs")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::gguf::tiny::{tiny_llama, TinyLlamaParams};
use image::gguf::TensorType;
use mistralrs::{Response, SamplingParams, TextMessageRole, TextMessages};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use worker::engine::mistralrs::{MistralRsEngine, MistralRsOptions};
use worker::engine::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Message, Sampling,
};

const SEED: u64 = 1;
const MODEL: &str = "tiny";
const PROMPT: &str = "Hello, cocoon! Tell me a story about the world.";
/// Ends like [`PROMPT`].
const OTHER_PROMPT: &str = "Goodbye, cocoon! Tell me a story about the world.";
const MAX_TOKENS: u32 = 24;
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/tiny_llama.json");

/// The committed record of one greedy generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    seed: u64,
    /// `TinyLlamaParams` as debug text (informative; the digest is what is compared).
    params: String,
    gguf_sha256: String,
    prompt: String,
    max_tokens: u32,
    prompt_token_ids: Vec<u32>,
    completion_token_ids: Vec<u32>,
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: String,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// A directory for one test (tests run in parallel in one process).
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cocoon-tiny-golden-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chat(text: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        model: MODEL.into(),
        input: Input::Chat(vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }]),
        sampling: Sampling {
            max_tokens,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: vec![],
            top_logprobs: None,
        },
        max_prompt_tokens: None,
        meter: Default::default(),
        tools: vec![],
        tool_choice: Default::default(),
        response_format: Default::default(),
    }
}

/// What the engine streamed for one request.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish: FinishReason,
    elapsed: Duration,
}

async fn run(engine: &MistralRsEngine, req: GenerationRequest) -> Run {
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, EngineError>>(8);
    let start = Instant::now();
    let read = async {
        let (mut text, mut done) = (String::new(), None);
        while let Some(c) = rx.recv().await {
            match c.expect("engine error") {
                Chunk::Text(t) => text.push_str(&t),
                Chunk::Done {
                    usage,
                    finish_reason,
                } => done = Some((usage, finish_reason)),
                other => panic!("unexpected chunk {other:?}"),
            }
        }
        (text, done)
    };
    let meter = req.meter.clone();
    let (result, (text, done)) = tokio::join!(engine.generate(req, tx), read);
    result.expect("generate");
    let (usage, finish) = done.expect("no done chunk");
    // The meter counted the same work as the final report, as it went.
    let counted = meter.usage();
    assert_eq!(
        (counted.prompt_tokens, counted.completion_tokens),
        (usage.prompt_tokens, usage.completion_tokens),
        "meter vs usage"
    );
    Run {
        text,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        finish,
        elapsed: start.elapsed(),
    }
}

fn user_message(text: &str) -> TextMessages {
    TextMessages::new().add_message(TextMessageRole::Custom("user".into()), text)
}

/// Prompt token ids as the engine computes them (chat template, generation prompt).
async fn prompt_ids(engine: &MistralRsEngine, text: &str) -> Vec<u32> {
    // `Either` is not re-exported by mistralrs: build `Left(messages)` from `Err(messages)`.
    let messages = Err::<String, _>(user_message(text)).into();
    engine
        .model()
        .tokenize(messages, None, true, true, None)
        .await
        .expect("tokenize")
}

/// Greedy completion token ids through the bare mistral.rs API (top-1 logprobs).
async fn completion_ids(engine: &MistralRsEngine, text: &str, max_tokens: usize) -> Vec<u32> {
    let request = mistralrs::RequestBuilder::new()
        .add_message(TextMessageRole::Custom("user".into()), text)
        .set_sampling(SamplingParams {
            temperature: Some(0.0),
            max_len: Some(max_tokens),
            top_n_logprobs: 1,
            ..SamplingParams::neutral()
        })
        .return_logprobs(true);
    let mut stream = engine
        .model()
        .stream_chat_request(request)
        .await
        .expect("bare request");
    let mut ids = Vec::new();
    while let Some(response) = stream.next().await {
        let c = match response {
            Response::Chunk(c) => c,
            Response::InternalError(e) | Response::ValidationError(e) => panic!("mistral.rs: {e}"),
            Response::ModelError(m, _) => panic!("mistral.rs: {m}"),
            _ => panic!("unexpected response kind"),
        };
        let choice = c.choices.into_iter().next().expect("a choice");
        let logprobs = choice.logprobs.expect("logprobs");
        ids.push(logprobs.top_logprobs.first().expect("top-1").token);
        if choice.finish_reason.is_some() {
            break;
        }
    }
    ids
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write_model(dir: &Path, seed: u64, params: &TinyLlamaParams) -> (PathBuf, String) {
    let bytes = tiny_llama(seed, params).expect("tiny llama");
    let path = dir.join(format!("tiny-{seed}-{:?}.gguf", params.weights));
    std::fs::write(&path, &bytes).expect("write model");
    (path, sha256(&bytes))
}

fn compare(got: &Golden) {
    if std::env::var_os("COCOON_UPDATE_GOLDEN").is_some() {
        let json = serde_json::to_string_pretty(got).expect("json") + "\n";
        std::fs::create_dir_all(Path::new(GOLDEN).parent().expect("parent")).expect("mkdir");
        std::fs::write(GOLDEN, json).expect("write golden");
        println!("golden: rewrote {GOLDEN}");
        return;
    }
    let text = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| {
        panic!("{GOLDEN}: {e} (COCOON_UPDATE_GOLDEN=1 writes it)");
    });
    let want: Golden = serde_json::from_str(&text).expect("golden json");
    assert_eq!(
        got.gguf_sha256, want.gguf_sha256,
        "the tiny GGUF generator changed (seed {SEED}, {})",
        got.params
    );
    assert_eq!(got.prompt_token_ids, want.prompt_token_ids, "prompt tokens");
    assert_eq!(
        got.completion_token_ids, want.completion_token_ids,
        "completion tokens"
    );
    assert_eq!(got.text, want.text, "completion text");
    assert_eq!(got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_llama_greedy_output_matches_golden() {
    let dir = TempDir::new("greedy");
    let params = TinyLlamaParams::default();
    let (path, digest) = write_model(&dir.0, SEED, &params);

    let t = Instant::now();
    let engine = MistralRsEngine::load(MODEL, &path, MistralRsOptions::default())
        .await
        .expect("load");
    println!("load: {:?} (hash and warm-up included)", t.elapsed());
    let advert = engine.models().remove(0);
    assert_eq!(advert.model_hash, digest);
    assert_eq!(advert.max_context, params.context);

    // The worker's path: streamed text and engine-reported usage.
    let first = run(&engine, chat(PROMPT, MAX_TOKENS)).await;
    println!(
        "generate: {} tokens in {:?}: {:?}",
        first.completion_tokens, first.elapsed, first.text
    );
    assert_eq!(first.finish, FinishReason::Length);
    assert_eq!(first.completion_tokens, u64::from(MAX_TOKENS));

    // Greedy decoding is deterministic: again (now with a prefix-cache hit possible).
    let again = run(&engine, chat(PROMPT, MAX_TOKENS)).await;
    assert_eq!(
        (&again.text, again.prompt_tokens, again.completion_tokens),
        (&first.text, first.prompt_tokens, first.completion_tokens)
    );

    // Cancelled after 3 text chunks: the meter holds the prompt and at least the tokens sent
    // (what the worker records as unbilled work of a cancelled stream).
    let req = chat(PROMPT, MAX_TOKENS);
    let meter = req.meter.clone();
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, EngineError>>(8);
    let read = async move {
        let mut texts = 0u64;
        while texts < 3 {
            match rx.recv().await {
                Some(Ok(Chunk::Text(_))) => texts += 1,
                Some(Ok(Chunk::Done { .. })) | None => panic!("ended before 3 text chunks"),
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        texts
    };
    let (result, texts) = tokio::join!(engine.generate(req, tx), read);
    result.expect("a cancelled generation returns Ok");
    let counted = meter.usage();
    assert_eq!(counted.prompt_tokens, first.prompt_tokens);
    assert!(
        (texts..=u64::from(MAX_TOKENS)).contains(&counted.completion_tokens),
        "{} counted after {texts} chunks",
        counted.completion_tokens
    );

    // Token ids: the prompt as the engine tokenizes it, the completion from top-1 logprobs.
    let prompt_token_ids = prompt_ids(&engine, PROMPT).await;
    assert_eq!(prompt_token_ids.len() as u64, first.prompt_tokens);
    let completion_token_ids = completion_ids(&engine, PROMPT, MAX_TOKENS as usize).await;
    assert_eq!(completion_token_ids.len() as u64, first.completion_tokens);
    let decoded = engine
        .model()
        .detokenize(completion_token_ids.clone(), false)
        .await
        .expect("detokenize");
    // mistral.rs trims leading whitespace off a completion (`Sequence::peek_delta`, first delta).
    assert_eq!(
        decoded.trim_start(),
        first.text,
        "ids decode to the streamed text"
    );

    // Not degenerate: the model does not repeat one token (checked before the golden, so a
    // regenerated golden cannot silently become a constant sequence).
    let mut distinct = completion_token_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 8,
        "only {} distinct tokens: {completion_token_ids:?}",
        distinct.len()
    );

    // The prompt budget the proxy reserved (cocoon-max-prompt-tokens) is enforced with the
    // engine's own tokenizer before generating: one token fewer than the prompt is refused
    // with the exact count, exactly the prompt's count is served.
    let mut over = chat(PROMPT, MAX_TOKENS);
    over.max_prompt_tokens = Some(first.prompt_tokens - 1);
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, EngineError>>(8);
    assert_eq!(
        engine.generate(over, tx).await.unwrap_err(),
        EngineError::PromptOverBudget {
            tokens: first.prompt_tokens,
            budget: first.prompt_tokens - 1
        }
    );
    assert!(
        matches!(
            rx.recv().await,
            Some(Err(EngineError::PromptOverBudget { .. }))
        ),
        "the error, and no text"
    );
    assert!(rx.recv().await.is_none(), "nothing was generated");
    let mut exact = chat(PROMPT, MAX_TOKENS);
    exact.max_prompt_tokens = Some(first.prompt_tokens);
    assert_eq!(run(&engine, exact).await.text, first.text);

    // Attention matters: a prompt with the same ending but a different start gives another
    // completion (a model that only looked at the last token would repeat this one).
    let other = run(&engine, chat(OTHER_PROMPT, MAX_TOKENS)).await;
    println!("other prompt: {:?}", other.text);
    assert_ne!(other.text, first.text);

    compare(&Golden {
        seed: SEED,
        params: format!("{params:?}"),
        gguf_sha256: digest,
        prompt: PROMPT.into(),
        max_tokens: MAX_TOKENS,
        prompt_token_ids,
        completion_token_ids: completion_token_ids.clone(),
        text: first.text.clone(),
        prompt_tokens: first.prompt_tokens,
        completion_tokens: first.completion_tokens,
        finish_reason: first.finish.as_str().into(),
    });

    // Speed (printed, not asserted): a long greedy completion filling most of the context.
    let long = u32::try_from(params.context as u64 - first.prompt_tokens - 1).unwrap_or(0);
    let o = run(&engine, chat("Tell me a long story.", long)).await;
    println!(
        "speed: {} tokens in {:?} = {:.0} tok/s",
        o.completion_tokens,
        o.elapsed,
        o.completion_tokens as f64 / o.elapsed.as_secs_f64()
    );
    drop(engine);

    // The Q8_0 variant (`cocoon-image`'s Q8_0 writer) loads and starts like the F32 model:
    // a wrong block layout would derail it at once. Q8_0 rounding (of weights and, in
    // candle's quantized matmul, of activations) makes it drift later, so only a prefix is
    // compared; 10 of 24 tokens agree on the reference machine.
    let q8 = TinyLlamaParams {
        weights: TensorType::Q8_0,
        ..params
    };
    let (path, _) = write_model(&dir.0, SEED, &q8);
    let engine = MistralRsEngine::load(MODEL, &path, MistralRsOptions::default())
        .await
        .expect("load q8_0");
    let ids = completion_ids(&engine, PROMPT, MAX_TOKENS as usize).await;
    let same = ids
        .iter()
        .zip(&completion_token_ids)
        .take_while(|(a, b)| a == b)
        .count();
    println!("q8_0: {same} leading tokens as f32: {ids:?}");
    assert!(same >= 4, "q8_0 diverges at token {same}: {ids:?}");
}

const SAMPLED_GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/tiny_llama_sampled.json"
);

/// The committed record of the sampler's exact output on the tiny model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampledGolden {
    gguf_sha256: String,
    prompt: String,
    max_tokens: u32,
    /// Temperature 1, `seed` 1 and 2.
    seed_1_text: String,
    seed_2_text: String,
    /// Temperature 1, `top_p` 0.5, `seed` 1.
    top_p_text: String,
    /// Greedy under the JSON schema [`json_schema`].
    json_text: String,
}

fn json_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99}
        },
        "required": ["color", "count"],
        "additionalProperties": false
    })
}

/// Everything a generation streamed, logprobs included.
async fn run_all(
    engine: &MistralRsEngine,
    req: GenerationRequest,
) -> (
    String,
    Vec<worker::engine::TokenLogprob>,
    protocol::Usage,
    FinishReason,
) {
    let (tx, mut rx) = mpsc::channel::<Result<Chunk, EngineError>>(8);
    let read = async {
        let (mut text, mut lps, mut done) = (String::new(), Vec::new(), None);
        while let Some(c) = rx.recv().await {
            match c.expect("engine error") {
                Chunk::Text(t) => text.push_str(&t),
                Chunk::Tokens { text: t, logprobs } => {
                    text.push_str(&t);
                    lps.extend(logprobs);
                }
                Chunk::Done {
                    usage,
                    finish_reason,
                } => done = Some((usage, finish_reason)),
                other => panic!("unexpected chunk {other:?}"),
            }
        }
        (text, lps, done)
    };
    let (result, (text, lps, done)) = tokio::join!(engine.generate(req, tx), read);
    result.expect("generate");
    let (usage, finish) = done.expect("no done chunk");
    (text, lps, usage, finish)
}

/// Seeded sampling, `top_p`, `logit_bias`, logprobs and a JSON schema on the tiny model,
/// exactly: `tests/golden/tiny_llama_sampled.json` (`COCOON_UPDATE_GOLDEN=1` rewrites it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_llama_sampling_matches_golden() {
    let dir = TempDir::new("sampled");
    let params = TinyLlamaParams::default();
    let (path, digest) = write_model(&dir.0, SEED, &params);
    let engine = MistralRsEngine::load(MODEL, &path, MistralRsOptions::default())
        .await
        .expect("load");
    let want_greedy: Golden =
        serde_json::from_str(&std::fs::read_to_string(GOLDEN).expect("golden")).expect("json");

    // Greedy with logprobs: the golden tokens, each the top of its own list.
    let mut req = chat(PROMPT, MAX_TOKENS);
    req.sampling.top_logprobs = Some(3);
    let (text, lps, usage, _) = run_all(&engine, req).await;
    assert_eq!(text, want_greedy.text);
    assert_eq!(lps.len() as u64, usage.completion_tokens);
    for (lp, id) in lps.iter().zip(&want_greedy.completion_token_ids) {
        let decoded = engine
            .model()
            .detokenize(vec![*id], false)
            .await
            .expect("detokenize");
        assert_eq!(lp.token, decoded, "token {id}");
        assert_eq!(lp.top.len(), 3);
        assert_eq!(
            (&lp.top[0].token, lp.top[0].logprob),
            (&lp.token, lp.logprob)
        );
        assert!(lp.logprob < 0.0);
    }

    // Seeded sampling: equal seeds, equal text; the texts are pinned.
    let sampled = |seed: u64, top_p: Option<f64>| {
        let mut r = chat(PROMPT, MAX_TOKENS);
        r.sampling.temperature = Some(1.0);
        r.sampling.seed = Some(seed);
        r.sampling.top_p = top_p;
        r
    };
    let s1 = run(&engine, sampled(1, None)).await;
    let s1b = run(&engine, sampled(1, None)).await;
    let s2 = run(&engine, sampled(2, None)).await;
    let tp = run(&engine, sampled(1, Some(0.5))).await;
    assert_eq!(s1.text, s1b.text);
    assert_ne!(s1.text, s2.text);
    assert_ne!(s1.text, want_greedy.text);
    println!(
        "seed 1: {:?}\nseed 2: {:?}\ntop_p 0.5: {:?}",
        s1.text, s2.text, tp.text
    );

    // logit_bias: -100 bans the greedy first token; +100 makes one token every token.
    let first = want_greedy.completion_token_ids[0];
    let mut req = chat(PROMPT, 4);
    req.sampling.logit_bias = vec![(first, -100.0)];
    req.sampling.top_logprobs = Some(0);
    let (_, lps, _, _) = run_all(&engine, req).await;
    let first_text = engine
        .model()
        .detokenize(vec![first], false)
        .await
        .expect("detokenize");
    assert_ne!(lps[0].token, first_text);
    let forced = 300;
    let forced_text = engine
        .model()
        .detokenize(vec![forced], false)
        .await
        .expect("detokenize");
    let mut req = chat(PROMPT, 4);
    req.sampling.logit_bias = vec![(forced, 100.0)];
    req.sampling.top_logprobs = Some(0);
    let (_, lps, _, _) = run_all(&engine, req).await;
    assert_eq!(lps.len(), 4);
    assert!(lps.iter().all(|l| l.token == forced_text), "{lps:?}");

    // A JSON schema: valid output, and the stream ends (the grammar's end token is
    // <|endoftext|>, the model's EOS is <|im_end|>: the engine stops on the former).
    let mut req = chat(PROMPT, 64);
    req.response_format = worker::engine::ResponseFormat::JsonSchema {
        name: "pick".into(),
        schema: json_schema(),
        strict: true,
    };
    let (json_text, _, usage, finish) = run_all(&engine, req).await;
    println!("json: {json_text:?} {usage:?}");
    assert_eq!(finish, FinishReason::Stop);
    let v: serde_json::Value = serde_json::from_str(&json_text).expect("json");
    assert!(["red", "green", "blue"].contains(&v["color"].as_str().expect("color")));
    assert!((0..=99).contains(&v["count"].as_i64().expect("count")));

    let got = SampledGolden {
        gguf_sha256: digest,
        prompt: PROMPT.into(),
        max_tokens: MAX_TOKENS,
        seed_1_text: s1.text,
        seed_2_text: s2.text,
        top_p_text: tp.text,
        json_text,
    };
    if std::env::var_os("COCOON_UPDATE_GOLDEN").is_some() {
        let json = serde_json::to_string_pretty(&got).expect("json") + "\n";
        std::fs::write(SAMPLED_GOLDEN, json).expect("write golden");
        println!("golden: rewrote {SAMPLED_GOLDEN}");
        return;
    }
    let text = std::fs::read_to_string(SAMPLED_GOLDEN).unwrap_or_else(|e| {
        panic!("{SAMPLED_GOLDEN}: {e} (COCOON_UPDATE_GOLDEN=1 writes it)");
    });
    let want: SampledGolden = serde_json::from_str(&text).expect("golden json");
    assert_eq!(got, want);
}
