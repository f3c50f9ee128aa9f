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

/// Cocoon's pricing (the params v3 of its root contract): one price per token, the worker's fee
/// per token, and a multiplier per token class (10000 = 1.0). A request's tokens are adjusted per
/// class with the worker's price coefficient (thousandths) and the class multiplier —
/// `floor(n · coefficient_milli · multiplier / 10_000_000)`, one exact floor per class
/// ([`ton::pricing::adjust`], the one definition of the rounding; docs/payments.md compares it
/// with Cocoon's floating point) — and the client pays `adjusted total · price_per_token`, of
/// which the worker earns `adjusted total · worker_fee_per_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Nano-TON per adjusted token, paid by the client.
    pub price_per_token: u64,
    /// Nano-TON per adjusted token, earned by the worker (at most `price_per_token`).
    pub worker_fee_per_token: u64,
    /// Prompt tokens not served from a cache.
    pub prompt_multiplier: u32,
    /// Prompt tokens served from a prefix cache.
    pub cached_multiplier: u32,
    /// Completion tokens other than reasoning.
    pub completion_multiplier: u32,
    /// Reasoning tokens.
    pub reasoning_multiplier: u32,
}

impl Default for Prices {
    /// 10 nano per token; cached prompt tokens at 0.1, completion and reasoning at 4.0 (the
    /// same costs as cocoon's earlier per-class defaults of 10 / 1 / 40 / 40 nano, up to the
    /// per-class floor); the worker earns 8 of every 10.
    fn default() -> Self {
        Self {
            price_per_token: 10,
            worker_fee_per_token: 8,
            prompt_multiplier: 10_000,
            cached_multiplier: 1_000,
            completion_multiplier: 40_000,
            reasoning_multiplier: 40_000,
        }
    }
}

impl Prices {
    /// The prices a network's params set (Cocoon's params v3: the proxy contract's data),
    /// saturating at u64 (no real network comes near).
    pub fn of_params(p: &ton::params::ParamsV3) -> Self {
        let nano = |c: ton::address::Coins| u64::try_from(c.nano()).unwrap_or(u64::MAX);
        Self {
            price_per_token: nano(p.price_per_token),
            worker_fee_per_token: nano(p.worker_fee_per_token),
            prompt_multiplier: p.multipliers.prompt,
            cached_multiplier: p.multipliers.cached,
            completion_multiplier: p.multipliers.completion,
            reasoning_multiplier: p.multipliers.reasoning,
        }
    }

    /// The multipliers as the `ton` crate's params carry them.
    pub fn multipliers(&self) -> ton::params::Multipliers {
        ton::params::Multipliers {
            prompt: self.prompt_multiplier,
            cached: self.cached_multiplier,
            completion: self.completion_multiplier,
            reasoning: self.reasoning_multiplier,
        }
    }

    /// Adjusted tokens of `usage` at `coefficient_milli` (see the type docs).
    pub fn adjusted_tokens(&self, usage: &Usage, coefficient_milli: u32) -> u128 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let counts = ton::pricing::TokenCounts {
            prompt: usage.prompt_tokens - cached,
            cached,
            completion: usage.completion_tokens - reasoning,
            reasoning,
        };
        ton::pricing::adjust_all(&counts, coefficient_milli, &self.multipliers()).total()
    }

    /// Cost of `usage` in nano-TON (saturating): adjusted tokens × `price_per_token`.
    pub fn cost(&self, usage: &Usage, coefficient_milli: u32) -> u64 {
        let total = self
            .adjusted_tokens(usage, coefficient_milli)
            .saturating_mul(u128::from(self.price_per_token));
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// What the worker earns for `usage` (saturating): adjusted tokens × `worker_fee_per_token`.
    pub fn worker_earnings(&self, usage: &Usage, coefficient_milli: u32) -> u64 {
        let total = self
            .adjusted_tokens(usage, coefficient_milli)
            .saturating_mul(u128::from(self.worker_fee_per_token));
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// The most a request may cost: `max_prompt` prompt tokens and `max_completion`
    /// completion tokens, each class at the highest multiplier it could be billed at (a prompt
    /// token is prompt or cached, a completion token completion or reasoning).
    pub fn reservation(&self, max_prompt: u64, max_completion: u64, coefficient_milli: u32) -> u64 {
        let worst = Prices {
            prompt_multiplier: self.prompt_multiplier.max(self.cached_multiplier),
            completion_multiplier: self.completion_multiplier.max(self.reasoning_multiplier),
            ..*self
        };
        let usage = Usage {
            prompt_tokens: max_prompt,
            cached_tokens: 0,
            completion_tokens: max_completion,
            reasoning_tokens: 0,
        };
        worst.cost(&usage, coefficient_milli)
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
        // adjusted: 60 + floor(40·0.1) + 6·4 + 4·4 = 60 + 4 + 24 + 16 = 104 tokens × 10 nano
        assert_eq!(p.adjusted_tokens(&u, 1000), 104);
        assert_eq!(p.cost(&u, 1000), 1040);
        assert_eq!(p.worker_earnings(&u, 1000), 832);
        // ×1.5: 90 + 6 + 36 + 24 = 156
        assert_eq!(p.cost(&u, 1500), 1560);
        // one floor per class, at the end: 7 cached tokens at 0.1 → 0
        let cached_only = Usage {
            prompt_tokens: 7,
            cached_tokens: 7,
            ..Usage::default()
        };
        assert_eq!(p.cost(&cached_only, 1000), 0);
        assert_eq!(p.cost(&Usage::default(), 1000), 0);
        let huge = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(p.cost(&huge, u32::MAX), u64::MAX);
        assert!(p.reservation(100, 10, 1000) >= p.cost(&u, 1000));
        // the reservation covers the dearest class of each kind
        let dear_cache = Prices {
            cached_multiplier: 20_000,
            reasoning_multiplier: 80_000,
            ..p
        };
        let all_dear = Usage {
            prompt_tokens: 100,
            cached_tokens: 100,
            completion_tokens: 10,
            reasoning_tokens: 10,
        };
        assert_eq!(
            dear_cache.reservation(100, 10, 1000),
            dear_cache.cost(&all_dear, 1000)
        );
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
