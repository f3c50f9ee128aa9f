//! The OpenAI surface of the mistral.rs engine against the real SmolLM2 model
//! (`COCOON_TEST_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf`; skipped when unset): seeded
//! sampling, `logit_bias`, logprobs, JSON mode, JSON schema, tool calls, refusals of schemas
//! the grammar engine cannot compile, and cancellation of constrained requests. Exact text is
//! never asserted (Q4 rounding; `tiny_golden.rs` pins exact output); properties are.
//!
//! One test loads the model once and runs the checks in order. It also prints decode speed
//! with this engine's sampler in its greedy, sampled and logprob modes next to bare mistral.rs
//! (`-- --nocapture`).
#![cfg(feature = "mistralrs")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::Usage;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use worker::engine::mistralrs::{bare_generate, MistralRsEngine, MistralRsOptions};
use worker::engine::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, Message, ResponseFormat,
    Sampling, TokenLogprob, ToolCall, ToolChoice, ToolSpec,
};

const MODEL: &str = "smollm2";

fn gguf() -> Option<PathBuf> {
    match std::env::var_os("COCOON_TEST_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("COCOON_TEST_GGUF is not set: skipping the mistral.rs OpenAI-surface tests");
            None
        }
    }
}

fn chat(text: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        model: MODEL.into(),
        input: Input::Chat(vec![Message::text("user", text)]),
        sampling: Sampling {
            max_tokens,
            ..Sampling::default()
        },
        max_prompt_tokens: None,
        meter: Default::default(),
        tools: vec![],
        tool_choice: ToolChoice::default(),
        response_format: ResponseFormat::default(),
    }
}

fn sampled(text: &str, max_tokens: u32, seed: u64) -> GenerationRequest {
    let mut r = chat(text, max_tokens);
    r.sampling.temperature = Some(1.0);
    r.sampling.seed = Some(seed);
    r
}

/// Everything a generation sent.
#[derive(Debug, Default)]
struct Out {
    text: String,
    logprobs: Vec<TokenLogprob>,
    calls: Vec<ToolCall>,
    done: Option<(Usage, FinishReason)>,
    result: Option<Result<(), EngineError>>,
    elapsed: Duration,
    first: Option<Duration>,
}

async fn run(engine: &MistralRsEngine, req: GenerationRequest) -> Out {
    let (tx, mut rx) = mpsc::channel(8);
    let start = Instant::now();
    let gen = engine.generate(req, tx);
    let read = async {
        let mut o = Out::default();
        while let Some(c) = rx.recv().await {
            assert!(o.done.is_none(), "a chunk after done: {c:?}");
            match c {
                Ok(Chunk::Text(t)) => {
                    o.first.get_or_insert(start.elapsed());
                    o.text.push_str(&t);
                }
                Ok(Chunk::Tokens { text, logprobs }) => {
                    o.first.get_or_insert(start.elapsed());
                    o.text.push_str(&text);
                    o.logprobs.extend(logprobs);
                }
                Ok(Chunk::ToolCalls(c)) => {
                    assert!(o.calls.is_empty(), "two tool-call chunks");
                    o.calls = c;
                }
                Ok(Chunk::Done {
                    usage,
                    finish_reason,
                }) => o.done = Some((usage, finish_reason)),
                Err(_) => {}
            }
        }
        o
    };
    let (result, mut o) = tokio::join!(gen, read);
    o.result = Some(result);
    o.elapsed = start.elapsed();
    o
}

fn done(o: &Out, what: &str) -> (Usage, FinishReason) {
    assert_eq!(o.result, Some(Ok(())), "{what}");
    o.done.unwrap_or_else(|| panic!("{what}: no done chunk"))
}

/// The id of a token given its text (which must be one token of the vocabulary).
async fn token_id(engine: &MistralRsEngine, text: &str) -> u32 {
    let ids = engine
        .model()
        .tokenize(
            Ok::<String, mistralrs::TextMessages>(text.into()).into(),
            None,
            false,
            false,
            None,
        )
        .await
        .expect("tokenize");
    assert_eq!(ids.len(), 1, "{text:?} is {ids:?}");
    ids[0]
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        }),
    }
}

fn time_tool() -> ToolSpec {
    ToolSpec {
        name: "get_time".into(),
        description: Some("Current time in a time zone".into()),
        parameters: json!({
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 40}},
            "required": ["zone"]
        }),
    }
}

/// This process's CPU time (user + system) from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn check_logprobs(o: &Out, n: usize, greedy: bool) {
    assert!(!o.logprobs.is_empty(), "no logprobs");
    for lp in &o.logprobs {
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite(), "{lp:?}");
        assert_eq!(lp.top.len(), n, "{lp:?}");
        assert!(
            lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "not sorted: {lp:?}"
        );
        // Natural log: the probabilities of distinct tokens sum to at most 1 (base-10
        // logprobs would exceed it).
        let mass: f32 = lp.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "mass {mass}: {lp:?}");
        let bytes = lp.bytes.as_deref().expect("bytes");
        if let Ok(s) = std::str::from_utf8(bytes) {
            assert_eq!(s, lp.token);
        }
        if let Some(t) = lp
            .top
            .iter()
            .find(|t| t.token == lp.token && t.bytes == lp.bytes)
        {
            assert_eq!(t.logprob, lp.logprob, "chosen token's entry: {lp:?}");
        }
        if greedy {
            assert_eq!(lp.top[0].token, lp.token, "greedy takes the top token");
            assert_eq!(lp.top[0].logprob, lp.logprob);
        }
    }
    // The tokens spell the text (mistral.rs trims the completion's leading blanks).
    let bytes: Vec<u8> = o
        .logprobs
        .iter()
        .flat_map(|l| l.bytes.clone().unwrap_or_default())
        .collect();
    let spelled = String::from_utf8_lossy(&bytes);
    assert_eq!(spelled.trim_start(), o.text.trim_start());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_surface_on_smollm2() {
    let Some(path) = gguf() else { return };
    let engine = MistralRsEngine::load(MODEL, &path, MistralRsOptions::default())
        .await
        .expect("load");

    // --- seed: reproducible at temperature 1, different seeds differ ---
    let poem = "Write a short poem about the sea.";
    let a = run(&engine, sampled(poem, 32, 42)).await;
    let (ua, _) = done(&a, "seed 42");
    let a2 = run(&engine, sampled(poem, 32, 42)).await;
    done(&a2, "seed 42 again");
    assert_eq!(a.text, a2.text, "same seed, same text");
    assert_eq!(a.done, a2.done);
    let b = run(&engine, sampled(poem, 32, 43)).await;
    done(&b, "seed 43");
    assert_ne!(a.text, b.text, "another seed, another text");
    println!("seed 42: {:?}\nseed 43: {:?}", a.text, b.text);
    // The same seed while another request is generating at the same time.
    let (c, other) = tokio::join!(
        run(&engine, sampled(poem, 32, 42)),
        run(&engine, sampled("Tell me about mountains.", 48, 7))
    );
    done(&other, "concurrent other");
    done(&c, "seed 42 concurrent");
    assert_eq!(c.text, a.text, "seed 42 beside another request");
    assert!(ua.completion_tokens > 0);

    // --- logprobs: greedy, top 5 ---
    let mut req = chat("Write a long story about a dragon.", 12);
    req.sampling.top_logprobs = Some(5);
    let g = run(&engine, req).await;
    let (u, reason) = done(&g, "greedy logprobs");
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(g.logprobs.len() as u64, u.completion_tokens);
    check_logprobs(&g, 5, true);
    println!("greedy logprobs: first {:?}", g.logprobs[0]);
    // The same text as without logprobs.
    let plain = run(&engine, chat("Write a long story about a dragon.", 12)).await;
    assert_eq!(plain.text, g.text);
    // Sampled, top 20, and the count includes no end-of-sequence token.
    let mut req = sampled(poem, 40, 5);
    req.sampling.top_logprobs = Some(20);
    let s = run(&engine, req).await;
    let (u, reason) = done(&s, "sampled logprobs");
    check_logprobs(&s, 20, false);
    match reason {
        FinishReason::Length => assert_eq!(s.logprobs.len() as u64, u.completion_tokens),
        _ => assert_eq!(s.logprobs.len() as u64 + 1, u.completion_tokens),
    }
    // top_logprobs 0: the chosen token's logprob only.
    let mut req = chat("Hello!", 4);
    req.sampling.top_logprobs = Some(0);
    let z = run(&engine, req).await;
    done(&z, "top 0");
    assert!(!z.logprobs.is_empty() && z.logprobs.iter().all(|l| l.top.is_empty()));

    // --- logit_bias ---
    let first = g.logprobs[0].token.clone();
    let first_id = token_id(&engine, &first).await;
    let mut req = chat("Write a long story about a dragon.", 3);
    req.sampling.top_logprobs = Some(0);
    req.sampling.logit_bias = vec![(first_id, -100.0)];
    let banned = run(&engine, req).await;
    done(&banned, "bias -100");
    assert_ne!(
        banned.logprobs[0].token, first,
        "-100 bans the greedy first token"
    );
    let forced_text = " banana";
    let forced_id = token_id(&engine, forced_text).await;
    let mut req = chat("Write a long story about a dragon.", 3);
    req.sampling.top_logprobs = Some(0);
    req.sampling.logit_bias = vec![(forced_id, 100.0)];
    let forced = run(&engine, req).await;
    done(&forced, "bias +100");
    assert_eq!(forced.logprobs[0].token, forced_text);
    assert!(
        forced.logprobs[0].logprob > -0.01,
        "{:?}",
        forced.logprobs[0]
    );
    println!(
        "logit_bias: banned {first:?} -> {:?}; forced {:?}",
        banned.text, forced.text
    );

    // --- JSON mode ---
    let mut req = chat(
        "Describe a cat as a JSON object with the keys name and age.",
        200,
    );
    req.response_format = ResponseFormat::JsonObject;
    let j = run(&engine, req).await;
    let (u, reason) = done(&j, "json_object");
    println!("json_object: {:?} {u:?}", j.text);
    assert_eq!(reason, FinishReason::Stop, "the grammar ends the output");
    let v: Value = serde_json::from_str(&j.text).expect("json_object output is JSON");
    assert!(v.is_object(), "{v}");
    assert!(u.completion_tokens < 200);
    // Sampled JSON mode too (temperature 1, seed).
    let mut req = sampled("Give me a JSON object about a dog.", 200, 3);
    req.response_format = ResponseFormat::JsonObject;
    let j = run(&engine, req).await;
    let (_, reason) = done(&j, "sampled json_object");
    println!("sampled json_object: {:?} {reason:?}", j.text);
    if reason == FinishReason::Stop {
        assert!(serde_json::from_str::<Value>(&j.text)
            .expect("json")
            .is_object());
    }

    // --- JSON schema ---
    let schema = json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 10}
        },
        "required": ["color", "count"],
        "additionalProperties": false
    });
    let mut req = chat("Pick a color and a small number.", 100);
    req.response_format = ResponseFormat::JsonSchema {
        name: "pick".into(),
        schema,
        strict: true,
    };
    let s = run(&engine, req).await;
    let (_, reason) = done(&s, "json_schema");
    println!("json_schema: {:?}", s.text);
    assert_eq!(reason, FinishReason::Stop);
    let v: Value = serde_json::from_str(&s.text).expect("json_schema output is JSON");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 2, "{v}");
    assert!(["red", "green", "blue"].contains(&obj["color"].as_str().expect("color")));
    let count = obj["count"].as_i64().expect("integer count");
    assert!((0..=10).contains(&count), "{count}");

    // --- schemas the grammar engine refuses: before any output ---
    let mut req = chat("hi", 10);
    req.response_format = ResponseFormat::JsonSchema {
        name: "bad".into(),
        schema: json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
        strict: true,
    };
    let bad = run(&engine, req).await;
    match &bad.result {
        Some(Err(EngineError::Unsupported(m))) => println!("refused: {m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(bad.text.is_empty() && bad.done.is_none());

    // --- tools: a forced call of a named function ---
    let mut req = chat("What is the weather in Paris?", 120);
    req.tools = vec![weather_tool(), time_tool()];
    req.tool_choice = ToolChoice::Function("get_weather".into());
    let t = run(&engine, req).await;
    let forced_call_took = t.elapsed;
    let (_, reason) = done(&t, "forced call");
    println!("forced call: {:?} text {:?}", t.calls, t.text);
    assert_eq!(reason, FinishReason::ToolCalls);
    assert!(t.text.is_empty());
    assert_eq!(t.calls.len(), 1);
    assert_eq!(t.calls[0].name, "get_weather");
    assert!(t.calls[0].id.starts_with("call_"));
    let args: Value = serde_json::from_str(&t.calls[0].arguments).expect("arguments are JSON");
    assert!(args["city"].is_string(), "{args}");
    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().expect("unit")));
    // Cut short by max_tokens: the call so far with finish_reason length, as OpenAI returns
    // it — not the call form's JSON as text.
    let mut req = chat("What is the weather in Paris?", 12);
    req.tools = vec![weather_tool(), time_tool()];
    req.tool_choice = ToolChoice::Function("get_weather".into());
    let t = run(&engine, req).await;
    let (usage, reason) = done(&t, "forced call cut short");
    println!("forced call cut short: {:?} text {:?}", t.calls, t.text);
    assert_eq!(
        (reason, usage.completion_tokens),
        (FinishReason::Length, 12)
    );
    assert!(t.text.is_empty(), "{:?}", t.text);
    assert_eq!(t.calls.len(), 1);
    assert_eq!(t.calls[0].name, "get_weather");
    assert!(
        t.calls[0].arguments.starts_with('{') || t.calls[0].arguments.is_empty(),
        "{:?}",
        t.calls[0].arguments
    );
    assert!(serde_json::from_str::<Value>(&t.calls[0].arguments).is_err());
    // Required: one of the tools.
    let mut req = chat("What time is it in Tokyo?", 120);
    req.tools = vec![weather_tool(), time_tool()];
    req.tool_choice = ToolChoice::Required;
    let t = run(&engine, req).await;
    let (_, reason) = done(&t, "required call");
    println!("required call: {:?}", t.calls);
    assert_eq!(reason, FinishReason::ToolCalls);
    assert_eq!(t.calls.len(), 1);
    assert!(["get_weather", "get_time"].contains(&t.calls[0].name.as_str()));
    assert!(serde_json::from_str::<Value>(&t.calls[0].arguments)
        .expect("json")
        .is_object());
    // The round trip: the call and its result in the conversation; the model answers in text
    // (tool_choice none) or decides itself (auto).
    let history = vec![
        Message::text("user", "What is the weather in Paris?"),
        Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris", "unit": "celsius"}"#.into(),
            }],
            ..Message::default()
        },
        Message {
            role: "tool".into(),
            content: r#"{"temperature": 21, "sky": "sunny"}"#.into(),
            tool_call_id: Some("call_1".into()),
            ..Message::default()
        },
    ];
    for choice in [ToolChoice::None, ToolChoice::Auto] {
        let mut req = chat("", 40);
        req.input = Input::Chat(history.clone());
        req.tools = vec![weather_tool()];
        req.tool_choice = choice.clone();
        let t = run(&engine, req).await;
        let (_, reason) = done(&t, "round trip");
        println!(
            "round trip ({choice:?}): {:?} {:?} {reason:?}",
            t.text, t.calls
        );
        if choice == ToolChoice::None {
            assert!(t.calls.is_empty());
            assert!(!t.text.is_empty());
            assert_ne!(reason, FinishReason::ToolCalls);
        } else {
            assert_eq!(t.calls.is_empty(), reason != FinishReason::ToolCalls);
        }
    }
    // A function that is not among the tools.
    let mut req = chat("hi", 10);
    req.tools = vec![weather_tool()];
    req.tool_choice = ToolChoice::Function("nope".into());
    assert!(matches!(
        run(&engine, req).await.result,
        Some(Err(EngineError::Unsupported(_)))
    ));

    // --- cancelling constrained requests: generate returns at once and the engine goes idle
    // (JSON mode after its first text; a forced call, which sends nothing until the end, once
    // it has run as long as the forced call above took in total, so prefill is over: a prompt
    // being processed is not interrupted) ---
    let mut json_req = sampled("Write a very long JSON document about the sea.", 2000, 1);
    json_req.response_format = ResponseFormat::JsonObject;
    let mut tool_req = chat("What is the weather in Paris?", 2000);
    tool_req.tools = vec![ToolSpec {
        parameters: json!({"type": "object", "properties": {"essay": {"type": "string"}}, "required": ["essay"]}),
        ..weather_tool()
    }];
    tool_req.tool_choice = ToolChoice::Required;
    tool_req.sampling.temperature = Some(1.0);
    tool_req.sampling.seed = Some(1);
    for (name, req, wait) in [
        ("json", json_req, None),
        ("forced call", tool_req, Some(forced_call_took)),
    ] {
        let (tx, mut rx) = mpsc::channel(1);
        let gen = engine.generate(req, tx);
        let cancel = async {
            match wait {
                None => {
                    let first = rx.recv().await;
                    assert!(matches!(first, Some(Ok(Chunk::Text(_)))), "{first:?}");
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
            drop(rx);
            Instant::now()
        };
        let (result, dropped_at) = tokio::join!(gen, cancel);
        assert_eq!(result, Ok(()), "{name}");
        let returned_after = dropped_at.elapsed();
        println!("cancel ({name}): generate returned {returned_after:?} after the drop");
        assert!(returned_after < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = cpu_time();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = cpu_time().saturating_sub(cpu);
        println!("cancel ({name}): cpu time in the second after: {busy:?}");
        assert!(
            busy < Duration::from_millis(500),
            "{name}: engine still busy: {busy:?}"
        );
    }

    // --- speed of the sampler's modes (printed, not asserted) ---
    let text = "Write a long story about a dragon who learns to sail.";
    let rounds: usize = std::env::var("COCOON_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    for round in 0..rounds {
        let bare = bare_generate(engine.model(), text, 64).await.expect("bare");
        let mut figures = vec![format!(
            "bare {:.1} tok/s decode ({} tok)",
            bare.decode_tokens_per_sec(),
            bare.completion_tokens
        )];
        let modes: [(&str, GenerationRequest); 3] = [
            ("greedy", chat(text, 64)),
            ("t=1 top_p=0.9", {
                let mut r = sampled(text, 64, 11);
                r.sampling.top_p = Some(0.9);
                r
            }),
            ("greedy+top_logprobs=5", {
                let mut r = chat(text, 64);
                r.sampling.top_logprobs = Some(5);
                r
            }),
        ];
        for (name, req) in modes {
            let o = run(&engine, req).await;
            let (u, _) = done(&o, name);
            let decode = o.elapsed.saturating_sub(o.first.unwrap_or_default());
            figures.push(format!(
                "{name} {:.1} tok/s decode ({} tok)",
                u.completion_tokens.saturating_sub(1) as f64 / decode.as_secs_f64().max(1e-9),
                u.completion_tokens
            ));
        }
        println!("bench round {round}: {}", figures.join("; "));
    }
}
