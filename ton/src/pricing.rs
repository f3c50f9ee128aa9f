//! Token pricing: adjusted token counts per class and the resulting charge and worker share.
//!
//! Per class `tokens_adj = floor(n · coef_milli/1000 · multiplier/10000)`, computed here in
//! integers as `floor(n · coef_milli · multiplier / 10_000_000)` with u128 intermediates: exactly
//! one floor per class, applied at the end, so the result is the exact mathematical floor.
//! Cocoon computes the same expression in `double`; for products that are not exactly
//! representable, its result can differ from the exact floor by one token per class (e.g. where
//! the exact value is an integer but the float product lands just below it). The adjusted total is
//! the sum of the four classes; the client is charged `total · price_per_token` and the worker
//! earns `total · worker_fee_per_token`.

use crate::address::Coins;
use crate::params::Multipliers;

/// Multiplier scale: 10000 = 1.0.
pub const MULTIPLIER_ONE: u32 = 10_000;
/// Coefficient scale: 1000 = 1.0.
pub const COEF_ONE: u32 = 1_000;

/// Raw token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Prompt tokens (not cached).
    pub prompt: u64,
    /// Cached prompt tokens.
    pub cached: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
}

/// Adjusted counts per class and their total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adjusted {
    /// Prompt.
    pub prompt: u128,
    /// Cached.
    pub cached: u128,
    /// Completion.
    pub completion: u128,
    /// Reasoning.
    pub reasoning: u128,
}

impl Adjusted {
    /// Sum of the four classes.
    pub fn total(&self) -> u128 {
        self.prompt + self.cached + self.completion + self.reasoning
    }
}

/// `floor(n · coef_milli · multiplier / 10_000_000)` exactly (no overflow: < 2^64·2^32·2^32).
pub fn adjust(n: u64, coef_milli: u32, multiplier: u32) -> u128 {
    u128::from(n) * u128::from(coef_milli) * u128::from(multiplier) / 10_000_000
}

/// Adjusts all four classes with one model coefficient (1000 = 1.0) and the params' multipliers.
pub fn adjust_all(n: &TokenCounts, coef_milli: u32, m: &Multipliers) -> Adjusted {
    Adjusted {
        prompt: adjust(n.prompt, coef_milli, m.prompt),
        cached: adjust(n.cached, coef_milli, m.cached),
        completion: adjust(n.completion, coef_milli, m.completion),
        reasoning: adjust(n.reasoning, coef_milli, m.reasoning),
    }
}

/// `tokens · per_token` in nanotons; None on overflow past the 2^120 `Coins` limit.
pub fn cost(tokens: u128, per_token: Coins) -> Option<Coins> {
    let v = tokens.checked_mul(per_token.nano())?;
    (v < 1 << 120).then_some(Coins::from_nano(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Multipliers = Multipliers {
        prompt: 10000,
        cached: 1000,
        completion: 10000,
        reasoning: 15000,
    };

    #[test]
    fn identity_and_scaled() {
        assert_eq!(adjust(100_000, 1000, 10000), 100_000);
        assert_eq!(adjust(100_000, 1000, 1000), 10_000);
        assert_eq!(adjust(7, 1500, 10000), 10); // 10.5 → 10
        assert_eq!(adjust(3, 1000, 3333), 0); // 0.9999 → 0
        assert_eq!(adjust(3, 1000, 3334), 1); // 1.0002 → 1
        assert_eq!(adjust(0, 1000, 10000), 0);
        assert_eq!(adjust(1, 0, 10000), 0);
    }

    #[test]
    fn one_floor_per_class_at_the_end() {
        // 1/3 × 3: flooring coef and multiplier separately would give 0, exact gives 1.
        assert_eq!(adjust(3, 333, 10010), 0); // 3·333·10010 = 9_999_990 < 10^7
        assert_eq!(adjust(3, 334, 10000), 1); // 10_020_000
        assert_eq!(adjust(10_000_000, 1, 1), 1);
        assert_eq!(adjust(9_999_999, 1, 1), 0);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let max = adjust(u64::MAX, u32::MAX, u32::MAX);
        assert_eq!(
            max,
            u128::from(u64::MAX) * u128::from(u32::MAX) * u128::from(u32::MAX) / 10_000_000
        );
    }

    #[test]
    fn all_classes_and_cost() {
        let n = TokenCounts {
            prompt: 1000,
            cached: 999,
            completion: 501,
            reasoning: 333,
        };
        let a = adjust_all(&n, 1000, &M);
        assert_eq!(
            a,
            Adjusted {
                prompt: 1000,
                cached: 99,
                completion: 501,
                reasoning: 499
            }
        );
        assert_eq!(a.total(), 2099);
        assert_eq!(
            cost(a.total(), Coins::from_nano(1000)),
            Some(Coins::from_nano(2_099_000))
        );
        assert_eq!(cost(1 << 100, Coins::from_nano(1 << 20)), None);
    }

    #[test]
    fn float_differs_by_one_where_documented() {
        // Cocoon's double form: n · (coef/1000) · (mult/10000). 90 · 0.7 = 62.99999… in binary
        // floating point, so double floors to 62; the exact value is 63.
        let f = (90f64 * (700.0 / 1000.0) * (10000.0 / 10000.0)).floor() as u128;
        assert_eq!(f, 62);
        assert_eq!(adjust(90, 700, 10000), 63);
        // 300 · 1.1 · 0.7 = 231 exactly; double gives 230.
        let f = (300f64 * (1100.0 / 1000.0) * (7000.0 / 10000.0)).floor() as u128;
        assert_eq!((f, adjust(300, 1100, 7000)), (230, 231));
        // Never more than one apart over a range.
        for n in 1..3000u64 {
            let f = (n as f64 * 0.7 * 0.7).floor() as u128;
            assert!(f.abs_diff(adjust(n, 700, 7000)) <= 1, "n = {n}");
        }
    }
}
