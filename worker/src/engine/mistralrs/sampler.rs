//! This engine's own sampler, run inside mistral.rs as a custom logits processor.
//!
//! mistral.rs 0.8.1 cannot sample the way the OpenAI API promises: one engine-wide RNG
//! (Isaac64, seeded 0) is shared by all sequences and drawn from in rayon threads, so `seed`
//! cannot be honoured; `SamplingParams::logits_bias` is never applied; its log probabilities
//! are base 10 and, when greedy, computed from raw logits. So every decision is taken here:
//!
//! 1. frequency and presence penalties (OpenAI semantics: counts of *generated* tokens only),
//! 2. `logit_bias`,
//! 3. greedy: the argmax (the same comparison as mistral.rs's own argmax, so greedy output is
//!    token for token what it was before this sampler existed); otherwise the temperature,
//!    a softmax, `top_p` (the smallest set of most likely tokens whose mass reaches `top_p`),
//!    and one draw from a ChaCha20 stream keyed by the request's seed, the step and the
//!    attempt (see below), so equal requests give equal output whatever else the engine runs,
//! 4. natural-log probabilities, when asked for: of the distribution after penalties, bias
//!    and temperature (temperature 1 when greedy), before `top_p`; that is the distribution the
//!    token was drawn from, less the truncation.
//!
//! The processor then returns logits that are `-inf` everywhere except 0 at the chosen token;
//! mistral.rs is sent temperature 0 (its argmax, no RNG) and no penalties, so it takes that
//! token.
//!
//! With a grammar (llguidance), mistral.rs checks the token after sampling; if the grammar
//! rejects it, it adds the grammar's mask (`-inf` on forbidden tokens) to the raw logits and
//! samples again, calling this processor a second time for the same step with the same
//! context. The sampler recognises that retry by the context length and draws again with the
//! next attempt number from masked logits. Steps are counted once, retries or not: that count
//! is the number of generated tokens.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use mistralrs::{CustomLogitsProcessor, Tensor};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// How one request samples (already validated).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SamplerSpec {
    /// `None`: greedy.
    pub temperature: Option<f32>,
    /// `None` (or ≥ 1): no nucleus truncation.
    pub top_p: Option<f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// `Some(n)`: record log probabilities and the `n` most likely tokens.
    pub top_logprobs: Option<u8>,
    pub seed: u64,
}

/// Log probabilities at one step (natural log).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StepLogprobs {
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// What the sampler chose at one step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StepRecord {
    pub token: u32,
    pub logprobs: Option<StepLogprobs>,
}

/// The steps of one request, shared by the sampler (engine thread) and the forwarder.
#[derive(Debug, Default)]
pub(crate) struct Steps(Mutex<Vec<StepRecord>>);

impl Steps {
    fn lock(&self) -> MutexGuard<'_, Vec<StepRecord>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tokens generated so far.
    pub(crate) fn count(&self) -> u64 {
        self.lock().len() as u64
    }

    /// The records from index `from` on.
    pub(crate) fn since(&self, from: usize) -> Vec<StepRecord> {
        self.lock()
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// Records the choice at `step` (replacing it on a retry).
    pub(crate) fn record(&self, step: usize, record: StepRecord) {
        let mut records = self.lock();
        match records.get_mut(step) {
            Some(r) => *r = record,
            None => records.push(record),
        }
    }
}

/// Step bookkeeping of one sequence.
#[derive(Debug, Default)]
struct State {
    /// Context length at the last call (a retry sees the same length).
    last_len: Option<usize>,
    step: usize,
    attempt: u32,
    /// The token chosen at the current step (committed when the next step starts).
    chosen: Option<u32>,
    /// How often each token was generated (for the penalties).
    counts: HashMap<u32, u32>,
}

impl State {
    /// Starts a call with a context of `len` tokens: returns `(step, attempt)`.
    fn enter(&mut self, len: usize) -> (usize, u32) {
        if self.last_len == Some(len) {
            self.attempt = self.attempt.saturating_add(1);
        } else {
            if let Some(token) = self.chosen.take() {
                *self.counts.entry(token).or_default() += 1;
                self.step += 1;
            }
            self.attempt = 0;
            self.last_len = Some(len);
        }
        (self.step, self.attempt)
    }
}

/// The sampler of one request (a mistral.rs logits processor).
#[derive(Debug)]
pub(crate) struct Sampler {
    spec: SamplerSpec,
    state: Mutex<State>,
    steps: std::sync::Arc<Steps>,
}

impl Sampler {
    pub(crate) fn new(spec: SamplerSpec, steps: std::sync::Arc<Steps>) -> Self {
        Self {
            spec,
            state: Mutex::default(),
            steps,
        }
    }
}

impl CustomLogitsProcessor for Sampler {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let mut values: Vec<f32> = logits.to_vec1()?;
        if values.is_empty() {
            return Ok(logits.clone());
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (step, attempt) = state.enter(context.len());
        adjust(&self.spec, &mut values, &state.counts);
        let record = choose(&self.spec, &values, step as u64, attempt);
        state.chosen = Some(record.token);
        drop(state);
        let n = values.len();
        values.fill(f32::NEG_INFINITY);
        values[record.token as usize] = 0.0;
        self.steps.record(step, record);
        Tensor::from_vec(values, n, logits.device())
    }
}

/// Applies the penalties (to tokens generated `counts` times) and the bias.
fn adjust(spec: &SamplerSpec, logits: &mut [f32], counts: &HashMap<u32, u32>) {
    if spec.frequency_penalty != 0.0 || spec.presence_penalty != 0.0 {
        for (&token, &n) in counts {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= spec.frequency_penalty * n as f32 + spec.presence_penalty;
            }
        }
    }
    for &(token, bias) in &spec.logit_bias {
        if let Some(l) = logits.get_mut(token as usize) {
            *l += bias;
        }
    }
}

/// The index of the largest value: mistral.rs 0.8.1's `argmax_f32` exactly (the last of equal
/// maxima; NaN compares equal), so that greedy output does not change.
fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.partial_cmp(b).unwrap_or(Ordering::Equal))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Orders `(token, weight)` by weight, largest first, then by token id (a total order, so the
/// result does not depend on the sort algorithm).
fn by_weight_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The `k` largest of `items` by weight, sorted, largest first.
fn top_k(mut items: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let k = k.min(items.len());
    if k == 0 {
        return Vec::new();
    }
    if k < items.len() {
        items.select_nth_unstable_by(k - 1, by_weight_desc);
        items.truncate(k);
    }
    items.sort_unstable_by(by_weight_desc);
    items
}

/// A uniform number in [0, 1) for (`seed`, `step`, `attempt`): ChaCha20 keyed with the seed,
/// stream = step, one 64-byte block per attempt.
fn uniform(seed: u64, step: u64, attempt: u32) -> f64 {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(step);
    rng.set_word_pos(u128::from(attempt) * 16);
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Chooses the token at (`step`, `attempt`) from adjusted logits.
pub(crate) fn choose(spec: &SamplerSpec, logits: &[f32], step: u64, attempt: u32) -> StepRecord {
    let temperature = spec.temperature.filter(|t| *t > 0.0 && t.is_finite());
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let Some(t) = temperature.filter(|_| max.is_finite()) else {
        let token = argmax(logits);
        return StepRecord {
            token: token as u32,
            logprobs: spec
                .top_logprobs
                .map(|n| logprobs(logits, 1.0, max, token, n)),
        };
    };
    // Unnormalised probabilities, exp((l - max) / t): the largest is 1.
    let weights: Vec<f32> = logits.iter().map(|l| ((l - max) / t).exp()).collect();
    let u = uniform(spec.seed, step, attempt);
    let token = match spec.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
        Some(p) => draw(&nucleus(&weights, p), u),
        None => draw_all(&weights, u),
    };
    StepRecord {
        token: token as u32,
        logprobs: spec
            .top_logprobs
            .map(|n| logprobs(logits, t, max, token, n)),
    }
}

/// The nucleus: the most likely tokens, most likely first, until their mass reaches `p` of
/// the total. Grows a top-k selection instead of sorting the whole vocabulary.
fn nucleus(weights: &[f32], p: f32) -> Vec<(u32, f32)> {
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    // A relative tolerance, so that rounding in the sum does not add a token.
    let goal = total * (f64::from(p) - 1e-6);
    let items: Vec<(u32, f32)> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0.0)
        .map(|(i, w)| (i as u32, *w))
        .collect();
    let mut k = 64;
    loop {
        let top = top_k(items.clone(), k);
        let mut mass = 0.0;
        for (i, (_, w)) in top.iter().enumerate() {
            mass += f64::from(*w);
            if mass >= goal {
                return top[..=i].to_vec();
            }
        }
        if top.len() == items.len() {
            return top;
        }
        k = k.saturating_mul(4);
    }
}

/// Draws from `(token, weight)` pairs with `u` in [0, 1).
fn draw(items: &[(u32, f32)], u: f64) -> usize {
    let total: f64 = items.iter().map(|(_, w)| f64::from(*w)).sum();
    let target = u * total;
    let mut acc = 0.0;
    for (token, w) in items {
        acc += f64::from(*w);
        if acc > target {
            return *token as usize;
        }
    }
    items.last().map(|(t, _)| *t as usize).unwrap_or(0)
}

/// Draws a token index from all `weights` (in index order) with `u` in [0, 1).
fn draw_all(weights: &[f32], u: f64) -> usize {
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, w) in weights.iter().enumerate() {
        if *w > 0.0 {
            acc += f64::from(*w);
            last = i;
            if acc > target {
                return i;
            }
        }
    }
    last
}

/// Natural-log probabilities of softmax(logits / t) for `token` and the `n` most likely.
fn logprobs(logits: &[f32], t: f32, max: f32, token: usize, n: u8) -> StepLogprobs {
    if !max.is_finite() {
        return StepLogprobs {
            logprob: f32::NEG_INFINITY,
            top: Vec::new(),
        };
    }
    let sum: f64 = logits
        .iter()
        .map(|l| f64::from(((l - max) / t).exp()))
        .sum();
    let log_sum = sum.ln();
    let lp = |l: f32| (f64::from((l - max) / t) - log_sum) as f32;
    let top = if n == 0 {
        Vec::new()
    } else {
        let items = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, *l))
            .collect();
        top_k(items, usize::from(n))
            .into_iter()
            .map(|(i, l)| (i, lp(l)))
            .collect()
    };
    StepLogprobs {
        logprob: logits
            .get(token)
            .map(|l| lp(*l))
            .unwrap_or(f32::NEG_INFINITY),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SamplerSpec {
        SamplerSpec {
            temperature: Some(1.0),
            seed: 7,
            ..SamplerSpec::default()
        }
    }

    #[test]
    fn greedy_is_mistralrs_argmax() {
        let s = SamplerSpec::default();
        assert_eq!(choose(&s, &[0.0, 3.0, 1.0], 0, 0).token, 1);
        // Ties: the last maximum, as `Iterator::max_by` gives.
        assert_eq!(choose(&s, &[3.0, 1.0, 3.0], 0, 0).token, 2);
        // A temperature of 0 is greedy too.
        let zero = SamplerSpec {
            temperature: Some(0.0),
            ..SamplerSpec::default()
        };
        assert_eq!(choose(&zero, &[0.0, 3.0, 1.0], 5, 0).token, 1);
        // Masked logits (a grammar's retry): never a -inf token.
        let masked = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        assert_eq!(choose(&spec(), &masked, 0, 1).token, 1);
    }

    #[test]
    fn same_key_same_draw_and_keys_differ() {
        let logits: Vec<f32> = (0..1000).map(|i| (i % 17) as f32 * 0.1).collect();
        let a: Vec<u32> = (0..50)
            .map(|s| choose(&spec(), &logits, s, 0).token)
            .collect();
        let b: Vec<u32> = (0..50)
            .map(|s| choose(&spec(), &logits, s, 0).token)
            .collect();
        assert_eq!(a, b);
        let other = SamplerSpec { seed: 8, ..spec() };
        let c: Vec<u32> = (0..50)
            .map(|s| choose(&other, &logits, s, 0).token)
            .collect();
        assert_ne!(a, c);
        let retry: Vec<u32> = (0..50)
            .map(|s| choose(&spec(), &logits, s, 1).token)
            .collect();
        assert_ne!(a, retry);
        // The RNG itself is pinned: a change of the stream layout fails here.
        assert_eq!(uniform(0, 0, 0).to_bits(), uniform(0, 0, 0).to_bits());
        assert_ne!(uniform(0, 0, 0), uniform(0, 1, 0));
        assert_ne!(uniform(0, 0, 0), uniform(0, 0, 1));
        assert_ne!(uniform(0, 0, 0), uniform(1, 0, 0));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // p = (0.1, 0.2, 0.7): 20 000 draws land within a few percent of it.
        let logits = [0.1f32.ln(), 0.2f32.ln(), 0.7f32.ln()];
        let mut hist = [0u32; 3];
        for s in 0..20_000 {
            hist[choose(&spec(), &logits, s, 0).token as usize] += 1;
        }
        let f: Vec<f64> = hist.iter().map(|h| f64::from(*h) / 20_000.0).collect();
        assert!((f[0] - 0.1).abs() < 0.015, "{f:?}");
        assert!((f[1] - 0.2).abs() < 0.015, "{f:?}");
        assert!((f[2] - 0.7).abs() < 0.015, "{f:?}");
        // A low temperature sharpens it.
        let cold = SamplerSpec {
            temperature: Some(0.1),
            ..spec()
        };
        let top = (0..1000)
            .filter(|s| choose(&cold, &logits, *s, 0).token == 2)
            .count();
        assert!(top > 990, "{top}");
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        let w = [0.05f32, 0.5, 0.3, 0.15];
        assert_eq!(nucleus(&w, 0.5), vec![(1, 0.5)]);
        assert_eq!(nucleus(&w, 0.6), vec![(1, 0.5), (2, 0.3)]);
        assert_eq!(nucleus(&w, 0.99).len(), 4);
        // Never a token outside the nucleus.
        let s = SamplerSpec {
            top_p: Some(0.6),
            ..spec()
        };
        let logits: Vec<f32> = w.iter().map(|p| p.ln()).collect();
        for step in 0..2000 {
            let t = choose(&s, &logits, step, 0).token;
            assert!(t == 1 || t == 2, "{t}");
        }
        // Larger than the first top-k window.
        let many = vec![1.0f32; 1000];
        assert_eq!(nucleus(&many, 0.5).len(), 500);
    }

    #[test]
    fn penalties_count_generated_tokens_and_bias_adds() {
        let s = SamplerSpec {
            frequency_penalty: 0.5,
            presence_penalty: 1.0,
            logit_bias: vec![(0, -100.0), (2, 2.0), (99, 5.0)],
            ..SamplerSpec::default()
        };
        let mut logits = [10.0f32, 10.0, 10.0];
        let counts = HashMap::from([(1, 3), (50, 1)]);
        adjust(&s, &mut logits, &counts);
        assert_eq!(logits, [-90.0, 10.0 - 1.5 - 1.0, 12.0]);
    }

    #[test]
    fn logprobs_are_natural_and_consistent() {
        let s = SamplerSpec {
            top_logprobs: Some(2),
            ..SamplerSpec::default()
        };
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY];
        let r = choose(&s, &logits, 0, 0);
        assert_eq!(r.token, 1);
        let lp = r.logprobs.expect("logprobs");
        let z: f64 = logits.iter().map(|l| f64::from(*l).exp()).sum();
        let want = (3.0 - z.ln()) as f32;
        assert!((lp.logprob - want).abs() < 1e-5, "{} vs {want}", lp.logprob);
        assert_eq!(lp.top.len(), 2);
        assert_eq!((lp.top[0].0, lp.top[1].0), (1, 2));
        assert_eq!(lp.top[0].1, lp.logprob);
        assert!(lp.top[1].1 < lp.top[0].1);
        // With a temperature the distribution is the tempered one.
        let hot = SamplerSpec {
            temperature: Some(2.0),
            top_logprobs: Some(0),
            ..spec()
        };
        let r = choose(&hot, &logits, 0, 0);
        let z: f64 = logits.iter().map(|l| (f64::from(*l) / 2.0).exp()).sum();
        let want = (f64::from(logits[r.token as usize]) / 2.0 - z.ln()) as f32;
        let lp = r.logprobs.expect("logprobs");
        assert!((lp.logprob - want).abs() < 1e-5);
        assert!(lp.top.is_empty());
    }

    #[test]
    fn retries_and_steps() {
        let mut st = State::default();
        assert_eq!(st.enter(10), (0, 0));
        st.chosen = Some(4);
        assert_eq!(st.enter(10), (0, 1), "same context: a retry");
        st.chosen = Some(5);
        assert_eq!(st.enter(11), (1, 0));
        assert_eq!(st.counts, HashMap::from([(5, 1)]));
        st.chosen = Some(5);
        assert_eq!(st.enter(12), (2, 0));
        assert_eq!(st.counts, HashMap::from([(5, 2)]));
    }

    #[test]
    fn the_processor_returns_a_one_hot_and_records_steps() {
        let steps = std::sync::Arc::new(Steps::default());
        let s = Sampler::new(
            SamplerSpec {
                logit_bias: vec![(0, 100.0)],
                ..SamplerSpec::default()
            },
            steps.clone(),
        );
        let logits = Tensor::new(&[1.0f32, 5.0, 2.0], &mistralrs::Device::Cpu).expect("tensor");
        let out: Vec<f32> = s
            .apply(&logits, &[1, 2])
            .expect("apply")
            .to_vec1()
            .expect("vec");
        assert_eq!(out, [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        // A retry replaces the step's record; a new step appends.
        let masked =
            Tensor::new(&[f32::NEG_INFINITY, 5.0, 2.0], &mistralrs::Device::Cpu).expect("tensor");
        s.apply(&masked, &[1, 2]).expect("retry");
        assert_eq!(steps.count(), 1);
        assert_eq!(steps.since(0)[0].token, 1);
        s.apply(&logits, &[1, 2, 1]).expect("next");
        assert_eq!(steps.count(), 2);
        assert_eq!(steps.since(1)[0].token, 0);
    }
}
