//! The stub engine: a real [`Engine`] that emits a fixed number of tokens at a fixed rate.
//! Used by tests, load tests and benchmarks, where a real model would measure the model.
//!
//! Test behaviour for the OpenAI surface, deterministic so that tests without a model can
//! exercise it end to end:
//! * `tool_choice` [`ToolChoice::Required`] (the first tool) or [`ToolChoice::Function`]: one
//!   [`Chunk::ToolCalls`] with a call `call_stub_0` to that function with arguments `{}`, then
//!   [`FinishReason::ToolCalls`] (1 completion token). `auto` and `none` generate text.
//! * [`Sampling::top_logprobs`](super::Sampling) `Some(n)`: each token comes as a
//!   [`Chunk::Tokens`] with made-up log probabilities: -1.0 for the token and for each of `n`
//!   alternatives (the token itself first, then `alt1 `, `alt2 `, …).
//! * A prompt (or last chat message) that starts with `echo:`: the tokens are the words after
//!   it, repeated in order (`"echo: a b"` → `a `, `b `, `a `, …) instead of `tok0 `, `tok1 `,
//!   …, so that a test can put a known string into a completion. The word `{seed}` stands for
//!   the request's [`Sampling::seed`](super::Sampling) (`none` without one), so a test can see
//!   which seed a generation ran with.

use std::time::Duration;

use protocol::{ModelAdvert, Usage};
use tokio::sync::mpsc;

use super::{
    Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input, TokenLogprob, ToolCall,
    ToolChoice, TopLogprob,
};

/// Emits `tokens` tokens ("tok0 ", "tok1 ", …) with `interval` between them, after
/// `prefill_delay` (a stand-in for prompt processing; zero by default).
#[derive(Clone, Debug)]
pub struct StubEngine {
    pub model: String,
    pub tokens: u32,
    pub interval: Duration,
    pub prefill_delay: Duration,
    /// The context (and completion ceiling) it advertises; 4096 by default.
    pub max_context: u32,
}

impl StubEngine {
    pub fn new(model: impl Into<String>, tokens: u32, tokens_per_second: f64) -> Self {
        let interval = if tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / tokens_per_second)
        } else {
            Duration::ZERO
        };
        Self {
            model: model.into(),
            tokens,
            interval,
            prefill_delay: Duration::ZERO,
            max_context: 4096,
        }
    }

    /// The same engine, advertising a context (and completion ceiling) of `tokens`.
    pub fn with_max_context(mut self, tokens: u32) -> Self {
        self.max_context = tokens;
        self
    }

    /// The same engine, waiting `delay` before the first token.
    pub fn with_prefill_delay(mut self, delay: Duration) -> Self {
        self.prefill_delay = delay;
        self
    }
}

/// Prompt tokens as the stub counts them: whitespace-separated words (the stub has no
/// tokenizer; real engines report their tokenizer's counts).
fn prompt_tokens(input: &Input) -> u64 {
    match input {
        Input::Chat(msgs) => msgs
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64 + 1)
            .sum(),
        Input::Prompt(p) => p.split_whitespace().count() as u64,
    }
}

/// The words to echo (see the module docs), if the prompt asks for it.
fn echo_words(input: &Input) -> Option<Vec<String>> {
    let last = match input {
        Input::Chat(msgs) => msgs.last().map(|m| m.content.as_str())?,
        Input::Prompt(p) => p.as_str(),
    };
    let words: Vec<String> = last
        .trim_start()
        .strip_prefix("echo:")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// Log probabilities for `token` and `top` alternatives, all -1.0 (see the module docs).
fn made_up_logprobs(token: &str, top: u8) -> TokenLogprob {
    let alt = |token: String| TopLogprob {
        bytes: Some(token.as_bytes().to_vec()),
        token,
        logprob: -1.0,
    };
    TokenLogprob {
        token: token.to_string(),
        logprob: -1.0,
        bytes: Some(token.as_bytes().to_vec()),
        top: (0..top)
            .map(|j| {
                alt(if j == 0 {
                    token.to_string()
                } else {
                    format!("alt{j} ")
                })
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl Engine for StubEngine {
    fn models(&self) -> Vec<ModelAdvert> {
        vec![ModelAdvert {
            name: self.model.clone(),
            model_hash: "00".repeat(32),
            max_context: self.max_context,
            max_completion_tokens: self.max_context,
        }]
    }

    async fn generate(
        &self,
        req: GenerationRequest,
        tx: mpsc::Sender<Result<Chunk, EngineError>>,
    ) -> Result<(), EngineError> {
        if req.model != self.model {
            return Err(EngineError::UnknownModel(req.model));
        }
        super::check_prompt_budget(req.max_prompt_tokens, prompt_tokens(&req.input))?;
        req.meter.prompt(prompt_tokens(&req.input));
        let forced = match &req.tool_choice {
            ToolChoice::Function(name) => Some(name.clone()),
            ToolChoice::Required => Some(
                req.tools
                    .first()
                    .ok_or_else(|| {
                        EngineError::Unsupported("tool_choice required without tools".into())
                    })?
                    .name
                    .clone(),
            ),
            ToolChoice::None | ToolChoice::Auto => None,
        };
        if let Some(name) = forced {
            let call = ToolCall {
                id: "call_stub_0".into(),
                name,
                arguments: "{}".into(),
            };
            req.meter.completion_token();
            if tx.send(Ok(Chunk::ToolCalls(vec![call]))).await.is_err() {
                return Ok(());
            }
            let usage = Usage {
                prompt_tokens: prompt_tokens(&req.input),
                completion_tokens: 1,
                ..Usage::default()
            };
            let _ = tx
                .send(Ok(Chunk::Done {
                    usage,
                    finish_reason: FinishReason::ToolCalls,
                }))
                .await;
            return Ok(());
        }
        let n = self.tokens.min(req.sampling.max_tokens);
        if !self.prefill_delay.is_zero() {
            // Dropped with the future when the request is cancelled.
            tokio::time::sleep(self.prefill_delay).await;
        }
        let mut ticker = (!self.interval.is_zero()).then(|| tokio::time::interval(self.interval));
        let seed = req
            .sampling
            .seed
            .map_or_else(|| "none".to_string(), |s| s.to_string());
        let echo = echo_words(&req.input).map(|words| {
            words
                .into_iter()
                .map(|w| if w == "{seed}" { seed.clone() } else { w })
                .collect::<Vec<_>>()
        });
        for i in 0..n {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let text = match &echo {
                Some(words) => format!("{} ", words[i as usize % words.len()]),
                None => format!("tok{i} "),
            };
            req.meter.completion_token();
            let chunk = match req.sampling.top_logprobs {
                None => Chunk::Text(text),
                Some(top) => Chunk::Tokens {
                    logprobs: vec![made_up_logprobs(&text, top)],
                    text,
                },
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
        let finish_reason = if n < self.tokens {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let usage = Usage {
            prompt_tokens: prompt_tokens(&req.input),
            cached_tokens: 0,
            completion_tokens: u64::from(n),
            reasoning_tokens: 0,
        };
        let _ = tx
            .send(Ok(Chunk::Done {
                usage,
                finish_reason,
            }))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Message, Sampling};

    fn req(max_tokens: u32) -> GenerationRequest {
        GenerationRequest {
            model: "stub".into(),
            input: Input::Chat(vec![Message {
                role: "user".into(),
                content: "hello there".into(),
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

    #[tokio::test]
    async fn emits_tokens_then_usage() {
        let e = StubEngine::new("stub", 5, 0.0);
        let (tx, mut rx) = mpsc::channel(16);
        e.generate(req(3), tx).await.unwrap();
        let mut texts = 0;
        let mut done = None;
        while let Some(c) = rx.recv().await {
            match c.unwrap() {
                Chunk::Text(_) => texts += 1,
                other @ (Chunk::Tokens { .. } | Chunk::ToolCalls(_)) => panic!("{other:?}"),
                Chunk::Done {
                    usage,
                    finish_reason,
                } => done = Some((usage, finish_reason)),
            }
        }
        assert_eq!(texts, 3);
        let (usage, reason) = done.unwrap();
        assert_eq!(usage.completion_tokens, 3);
        assert_eq!(usage.prompt_tokens, 3);
        assert_eq!(reason, FinishReason::Length);
    }

    #[tokio::test]
    async fn refuses_a_prompt_over_its_budget_before_generating() {
        let e = StubEngine::new("stub", 5, 0.0);
        let mut r = req(3);
        r.max_prompt_tokens = Some(2);
        let (tx, mut rx) = mpsc::channel(16);
        let err = e.generate(r.clone(), tx).await.unwrap_err();
        assert_eq!(
            err,
            EngineError::PromptOverBudget {
                tokens: 3,
                budget: 2
            }
        );
        assert!(rx.recv().await.is_none(), "nothing was generated");
        r.max_prompt_tokens = Some(3);
        let (tx, _rx) = mpsc::channel(16);
        e.generate(r, tx).await.unwrap();
    }

    #[tokio::test]
    async fn echo_repeats_the_words_after_the_marker() {
        let e = StubEngine::new("stub", 5, 0.0);
        let mut r = req(5);
        if let Input::Chat(m) = &mut r.input {
            m[0].content = "  echo: a b".into();
        }
        let texts: Vec<String> = collect(&e, r)
            .await
            .into_iter()
            .filter_map(|c| match c {
                Chunk::Text(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["a ", "b ", "a ", "b ", "a "]);
        // Without the marker (or with nothing after it), the usual tokens.
        for content in ["say echo: a", "echo:"] {
            let mut r = req(1);
            if let Input::Chat(m) = &mut r.input {
                m[0].content = content.into();
            }
            let first = collect(&e, r).await.remove(0);
            assert!(
                matches!(first, Chunk::Text(ref t) if t == "tok0 "),
                "{first:?}"
            );
        }
    }

    async fn collect(e: &StubEngine, r: GenerationRequest) -> Vec<Chunk> {
        let (tx, mut rx) = mpsc::channel(64);
        e.generate(r, tx).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.push(c.unwrap());
        }
        out
    }

    fn tool(name: &str) -> crate::engine::ToolSpec {
        crate::engine::ToolSpec {
            name: name.into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    #[tokio::test]
    async fn forced_tool_choice_makes_one_call() {
        let e = StubEngine::new("stub", 5, 0.0);
        for (choice, name) in [
            (ToolChoice::Required, "first"),
            (ToolChoice::Function("second".into()), "second"),
        ] {
            let mut r = req(3);
            r.tools = vec![tool("first"), tool("second")];
            r.tool_choice = choice;
            let chunks = collect(&e, r).await;
            assert_eq!(
                chunks,
                vec![
                    Chunk::ToolCalls(vec![ToolCall {
                        id: "call_stub_0".into(),
                        name: name.into(),
                        arguments: "{}".into(),
                    }]),
                    Chunk::Done {
                        usage: Usage {
                            prompt_tokens: 3,
                            completion_tokens: 1,
                            ..Usage::default()
                        },
                        finish_reason: FinishReason::ToolCalls,
                    }
                ]
            );
        }
        // auto: text as usual.
        let mut r = req(2);
        r.tools = vec![tool("first")];
        r.tool_choice = ToolChoice::Auto;
        let chunks = collect(&e, r).await;
        assert_eq!(chunks[0], Chunk::Text("tok0 ".into()));
        assert_eq!(chunks.len(), 3);
        // Required without tools is an engine refusal, not a panic.
        let mut r = req(2);
        r.tool_choice = ToolChoice::Required;
        let (tx, _rx) = mpsc::channel(4);
        assert!(matches!(
            e.generate(r, tx).await,
            Err(EngineError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn top_logprobs_give_tokens_with_made_up_logprobs() {
        let e = StubEngine::new("stub", 2, 0.0);
        let mut r = req(5);
        r.sampling.top_logprobs = Some(2);
        let chunks = collect(&e, r).await;
        assert_eq!(chunks.len(), 3);
        let Chunk::Tokens { text, logprobs } = &chunks[1] else {
            panic!("{:?}", chunks[1])
        };
        assert_eq!(text, "tok1 ");
        assert_eq!(
            logprobs,
            &vec![TokenLogprob {
                token: "tok1 ".into(),
                logprob: -1.0,
                bytes: Some(b"tok1 ".to_vec()),
                top: vec![
                    TopLogprob {
                        token: "tok1 ".into(),
                        logprob: -1.0,
                        bytes: Some(b"tok1 ".to_vec()),
                    },
                    TopLogprob {
                        token: "alt1 ".into(),
                        logprob: -1.0,
                        bytes: Some(b"alt1 ".to_vec()),
                    },
                ],
            }]
        );
        let mut r = req(1);
        r.sampling.top_logprobs = Some(0);
        let chunks = collect(&e, r).await;
        let Chunk::Tokens { logprobs, .. } = &chunks[0] else {
            panic!("{:?}", chunks[0])
        };
        assert!(logprobs[0].top.is_empty());
    }

    #[tokio::test]
    async fn prefill_delay_comes_before_the_first_token() {
        let delay = Duration::from_millis(300);
        let e = StubEngine::new("stub", 2, 0.0).with_prefill_delay(delay);
        let (tx, mut rx) = mpsc::channel(16);
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move { e.generate(req(2), tx).await });
        assert!(matches!(rx.recv().await, Some(Ok(Chunk::Text(_)))));
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn stops_when_the_receiver_is_gone() {
        let e = StubEngine::new("stub", 1_000_000, 0.0);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        e.generate(req(1_000_000), tx).await.unwrap();
    }
}
