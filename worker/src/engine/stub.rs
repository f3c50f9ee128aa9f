//! The stub engine: a real [`Engine`] that emits a fixed number of tokens at a fixed rate.
//! Used by tests, load tests and benchmarks, where a real model would measure the model.

use std::time::Duration;

use protocol::{ModelAdvert, Usage};
use tokio::sync::mpsc;

use super::{Chunk, Engine, EngineError, FinishReason, GenerationRequest, Input};

/// Emits `tokens` tokens ("tok0 ", "tok1 ", …) with `interval` between them.
#[derive(Clone, Debug)]
pub struct StubEngine {
    pub model: String,
    pub tokens: u32,
    pub interval: Duration,
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
        }
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

#[async_trait::async_trait]
impl Engine for StubEngine {
    fn models(&self) -> Vec<ModelAdvert> {
        vec![ModelAdvert {
            name: self.model.clone(),
            model_hash: "00".repeat(32),
            max_context: 4096,
            max_completion_tokens: 4096,
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
        let n = self.tokens.min(req.sampling.max_tokens);
        let mut ticker = (!self.interval.is_zero()).then(|| tokio::time::interval(self.interval));
        for i in 0..n {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            if tx.send(Ok(Chunk::Text(format!("tok{i} ")))).await.is_err() {
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
    async fn stops_when_the_receiver_is_gone() {
        let e = StubEngine::new("stub", 1_000_000, 0.0);
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        e.generate(req(1_000_000), tx).await.unwrap();
    }
}
