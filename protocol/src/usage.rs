//! Token usage and prices.

use serde::{Deserialize, Serialize};

/// Tokens used by one request, counted by the engine (never by re-tokenizing text).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    /// Prompt tokens served from a prefix cache (a subset of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// Completion tokens spent on reasoning (a subset of `completion_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// The OpenAI `usage` object for this usage.
    pub fn to_openai(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": { "cached_tokens": self.cached_tokens },
            "completion_tokens_details": { "reasoning_tokens": self.reasoning_tokens },
        })
    }

    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
    }
}

/// Prices in nano-TON per token. A worker's price coefficient (in thousandths) multiplies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub prompt_nano_per_token: u64,
    pub cached_nano_per_token: u64,
    pub completion_nano_per_token: u64,
    pub reasoning_nano_per_token: u64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            prompt_nano_per_token: 10,
            cached_nano_per_token: 1,
            completion_nano_per_token: 40,
            reasoning_nano_per_token: 40,
        }
    }
}

impl Prices {
    /// Cost of `usage` at `coefficient_milli / 1000` times these prices, in nano-TON
    /// (saturating). Cached prompt tokens are billed at the cached price instead of the prompt
    /// price; reasoning tokens at the reasoning price instead of the completion price.
    pub fn cost(&self, usage: &Usage, coefficient_milli: u32) -> u64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let base = (usage.prompt_tokens - cached) as u128 * self.prompt_nano_per_token as u128
            + cached as u128 * self.cached_nano_per_token as u128
            + (usage.completion_tokens - reasoning) as u128
                * self.completion_nano_per_token as u128
            + reasoning as u128 * self.reasoning_nano_per_token as u128;
        let scaled = base * coefficient_milli as u128 / 1000;
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    /// The most a request may cost: `max_prompt` prompt tokens and `max_completion`
    /// completion tokens at the highest per-token prices.
    pub fn reservation(&self, max_prompt: u64, max_completion: u64, coefficient_milli: u32) -> u64 {
        let worst = Usage {
            prompt_tokens: max_prompt,
            cached_tokens: 0,
            completion_tokens: max_completion,
            reasoning_tokens: 0,
        };
        let p = Prices {
            completion_nano_per_token: self
                .completion_nano_per_token
                .max(self.reasoning_nano_per_token),
            ..*self
        };
        p.cost(&worst, coefficient_milli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_bills_each_class() {
        let p = Prices::default();
        let u = Usage {
            prompt_tokens: 100,
            cached_tokens: 40,
            completion_tokens: 10,
            reasoning_tokens: 4,
        };
        // 60*10 + 40*1 + 6*40 + 4*40 = 600 + 40 + 240 + 160
        assert_eq!(p.cost(&u, 1000), 1040);
        assert_eq!(p.cost(&u, 1500), 1560);
        assert_eq!(p.cost(&Usage::default(), 1000), 0);
        let huge = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(p.cost(&huge, u32::MAX), u64::MAX);
        assert!(p.reservation(100, 10, 1000) >= p.cost(&u, 1000));
    }

    #[test]
    fn openai_usage_shape() {
        let u = Usage {
            prompt_tokens: 3,
            cached_tokens: 1,
            completion_tokens: 5,
            reasoning_tokens: 0,
        };
        let j = u.to_openai();
        assert_eq!(j["total_tokens"], 8);
        assert_eq!(j["prompt_tokens_details"]["cached_tokens"], 1);
    }
}
