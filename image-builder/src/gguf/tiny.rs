//! Tiny random-weight llama models for exact-output tests ([`tiny_llama`]).
//!
//! The model is a standard llama graph (RMSNorm, RoPE, grouped-query attention, SwiGLU) with
//! weights from a seeded splitmix64 stream, a byte-level BPE tokenizer ("gpt2" kind: 3 special
//! tokens, 256 byte tokens and merges for about a hundred common English words, 495 tokens in
//! all) and a ChatML chat template, all in the GGUF.
//! It loads in milliseconds, so a test can run real greedy inference and compare the output
//! with a committed golden sequence.
//!
//! Same seed and parameters give the same bytes on every platform: weights come from integer
//! arithmetic and exactly rounded f32 operations only.
//!
//! Greedy decoding never picks the special tokens nor bytes outside printable ASCII: their rows
//! of `output.weight` are zero (logit 0, far below the maximum over the other tokens), so a
//! greedy completion runs to its length limit and is valid UTF-8. Sampling with a temperature
//! can still pick them.

use super::{Array, GgufError, GgufWriter, TensorType, Value};

/// `<|endoftext|>`: padding.
pub const PAD_ID: u32 = 0;
/// `<|im_start|>`: beginning of sequence (as in SmolLM2).
pub const BOS_ID: u32 = 1;
/// `<|im_end|>`: end of a turn and of generation.
pub const EOS_ID: u32 = 2;

const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Token type codes of `tokenizer.ggml.token_type` (llama.cpp's enum).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

/// ChatML, without a default system prompt.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Words that get merges, each merged left to right after a leading space (" the").
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
    "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by",
    "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when",
    "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if",
    "will", "way", "about", "many", "then", "them", "would", "like", "so", "these", "her", "long",
    "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come",
    "did", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first", "who",
    "may", "down", "side", "been", "now", "find", "model", "token", "cocoon", "hello", "world",
    "tell", "me", "story",
];

/// Words merged without a leading space (they start a text).
const START_WORDS: &[&str] = &["Hello", "The", "Tell", "What", "A", "I"];

/// Architecture of a tiny model. The vocabulary is fixed ([`vocab`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TinyLlamaParams {
    /// Embedding width (`llama.embedding_length`).
    pub hidden: u32,
    /// Transformer blocks.
    pub layers: u32,
    /// Attention heads; `hidden / heads` is the head size (even, for RoPE).
    pub heads: u32,
    /// Key/value heads (grouped-query attention); divides `heads`.
    pub kv_heads: u32,
    /// SwiGLU inner width.
    pub ff: u32,
    /// Context length the model states.
    pub context: u32,
    /// Storage of the attention, feed-forward and output matrices (embeddings and norms are
    /// always F32). Q8_0 needs `hidden` and `ff` to be multiples of 32.
    pub weights: TensorType,
}

impl Default for TinyLlamaParams {
    fn default() -> Self {
        Self {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ff: 128,
            context: 256,
            weights: TensorType::F32,
        }
    }
}

impl TinyLlamaParams {
    fn validate(&self) -> Result<(), GgufError> {
        let bad = |m: String| Err(GgufError::Params(m));
        let TinyLlamaParams {
            hidden,
            layers,
            heads,
            kv_heads,
            ff,
            context,
            weights,
        } = *self;
        if [hidden, layers, heads, kv_heads, ff, context].contains(&0) {
            return bad(format!("zero dimension in {self:?}"));
        }
        if !hidden.is_multiple_of(heads) || !(hidden / heads).is_multiple_of(2) {
            return bad(format!(
                "hidden {hidden} is not heads {heads} × an even head size"
            ));
        }
        if !heads.is_multiple_of(kv_heads) {
            return bad(format!("kv_heads {kv_heads} does not divide heads {heads}"));
        }
        if weights == TensorType::Q8_0 && (!hidden.is_multiple_of(32) || !ff.is_multiple_of(32)) {
            return bad(format!(
                "q8_0 needs hidden {hidden} and ff {ff} multiples of 32"
            ));
        }
        Ok(())
    }
}

/// The tokenizer's vocabulary, as stored in the GGUF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// Token strings by id: the special tokens, the 256 bytes (GPT-2's byte-to-character
    /// mapping), then the merged tokens.
    pub tokens: Vec<String>,
    /// Merges by rank, `"left right"`.
    pub merges: Vec<String>,
}

impl Vocab {
    /// `tokenizer.ggml.token_type`: control for the special tokens, normal for the others.
    fn token_types(&self) -> Vec<i32> {
        (0..self.tokens.len())
            .map(|i| {
                if i < SPECIAL_TOKENS.len() {
                    TOKEN_CONTROL
                } else {
                    TOKEN_NORMAL
                }
            })
            .collect()
    }

    /// Whether greedy decoding may produce token `id` (see the module docs).
    fn greedy_reachable(&self, id: usize) -> bool {
        let first_byte = SPECIAL_TOKENS.len();
        match id.checked_sub(first_byte) {
            None => false,
            Some(b) if b < 256 => (0x20..0x7f).contains(&b),
            Some(_) => true,
        }
    }
}

/// GPT-2's reversible byte-to-character mapping: printable Latin-1 bytes map to themselves,
/// the others (controls, space, a few more) to U+0100 onwards in byte order.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        return char::from(b);
    }
    let index = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + index).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The fixed vocabulary of the tiny models.
pub fn vocab() -> Vocab {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    let mut merges = Vec::new();
    let space = byte_char(b' ');
    let spaced = WORDS.iter().map(|w| format!("{space}{w}"));
    for word in spaced.chain(START_WORDS.iter().map(|w| w.to_string())) {
        let mut chars = word.chars();
        let Some(first) = chars.next() else { continue };
        let mut prefix = first.to_string();
        for c in chars {
            let merged = format!("{prefix}{c}");
            if !tokens.contains(&merged) {
                merges.push(format!("{prefix} {c}"));
                tokens.push(merged.clone());
            }
            prefix = merged;
        }
    }
    Vocab { tokens, merges }
}

/// splitmix64: a tiny, well-mixed, reproducible stream (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), on a grid of 2^-23.
    fn uniform(&mut self) -> f32 {
        let x = (self.next_u64() >> 40) as f32; // exact: 24 bits
        x * (1.0 / 8_388_608.0) - 1.0
    }
}

/// FNV-1a of a tensor name: gives each tensor its own stream, independent of tensor order.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` values uniform in [-scale, scale) from the stream of (`seed`, `name`).
fn random(seed: u64, name: &str, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = SplitMix64(seed ^ fnv1a(name));
    (0..n).map(|_| rng.uniform() * scale).collect()
}

/// Weight scales, as standard deviations relative to 1/sqrt(fan_in). Chosen so that greedy
/// output depends on the context (attention matters) and does not settle on one token.
const EMBED_STD: f32 = 1.0;
const QK_GAIN: f32 = 2.0;
const VO_GAIN: f32 = 1.0;
const FFN_GAIN: f32 = 1.0;
const OUTPUT_GAIN: f32 = 4.0;
/// Norm weights are 1 ± this.
const NORM_JITTER: f32 = 0.2;

/// A uniform distribution with standard deviation `std` has half-width sqrt(3)·std.
fn half_width(std: f32) -> f32 {
    std * 3f32.sqrt()
}

/// A deterministic random-weight llama GGUF for `seed` and `params`.
pub fn tiny_llama(seed: u64, params: &TinyLlamaParams) -> Result<Vec<u8>, GgufError> {
    params.validate()?;
    let vocab = vocab();
    let n_vocab = vocab.tokens.len() as u64;
    let TinyLlamaParams {
        hidden,
        layers,
        heads,
        kv_heads,
        ff,
        context,
        weights,
    } = *params;
    let head_dim = hidden / heads;
    let (h, f) = (u64::from(hidden), u64::from(ff));
    let kv = u64::from(kv_heads * head_dim);

    let mut w = GgufWriter::new();
    w.kv("general.architecture", "llama")?;
    w.kv("general.name", "cocoon-tiny-llama")?;
    let file_type = match weights {
        TensorType::F32 => 0,  // LLAMA_FTYPE_ALL_F32
        TensorType::Q8_0 => 7, // LLAMA_FTYPE_MOSTLY_Q8_0
    };
    w.kv("general.file_type", Value::U32(file_type))?;
    w.kv("cocoon.tiny.seed", Value::U64(seed))?;
    for (key, v) in [
        ("context_length", context),
        ("embedding_length", hidden),
        ("block_count", layers),
        ("feed_forward_length", ff),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kv_heads),
        ("rope.dimension_count", head_dim),
        ("vocab_size", n_vocab as u32),
    ] {
        w.kv(&format!("llama.{key}"), Value::U32(v))?;
    }
    w.kv("llama.rope.freq_base", Value::F32(10_000.0))?;
    w.kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))?;

    w.kv("tokenizer.ggml.model", "gpt2")?;
    let token_types = vocab.token_types();
    w.kv(
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(vocab.tokens.clone())),
    )?;
    w.kv(
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(token_types)),
    )?;
    w.kv(
        "tokenizer.ggml.merges",
        Value::Array(Array::String(vocab.merges.clone())),
    )?;
    w.kv("tokenizer.ggml.bos_token_id", Value::U32(BOS_ID))?;
    w.kv("tokenizer.ggml.eos_token_id", Value::U32(EOS_ID))?;
    w.kv("tokenizer.ggml.padding_token_id", Value::U32(PAD_ID))?;
    w.kv("tokenizer.ggml.add_bos_token", Value::Bool(false))?;
    w.kv("tokenizer.chat_template", CHAT_TEMPLATE)?;

    // Shapes are row-major [out, in]: a linear layer computes x · Wᵀ.
    let linear = |name: &str, out: u64, inp: u64, gain: f32| {
        let scale = half_width(gain / (inp as f32).sqrt());
        (
            name.to_string(),
            vec![out, inp],
            random(seed, name, (out * inp) as usize, scale),
        )
    };
    let norm = |name: &str| {
        let v = random(seed, name, h as usize, NORM_JITTER);
        (
            name.to_string(),
            vec![h],
            v.iter().map(|x| 1.0 + x).collect::<Vec<_>>(),
        )
    };

    let embed = random(
        seed,
        "token_embd.weight",
        (n_vocab * h) as usize,
        half_width(EMBED_STD),
    );
    w.tensor("token_embd.weight", &[n_vocab, h], &embed, TensorType::F32)?;
    for l in 0..layers {
        let p = format!("blk.{l}");
        let (name, shape, v) = norm(&format!("{p}.attn_norm.weight"));
        w.tensor(&name, &shape, &v, TensorType::F32)?;
        for (name, shape, v) in [
            linear(&format!("{p}.attn_q.weight"), h, h, QK_GAIN),
            linear(&format!("{p}.attn_k.weight"), kv, h, QK_GAIN),
            linear(&format!("{p}.attn_v.weight"), kv, h, VO_GAIN),
            linear(&format!("{p}.attn_output.weight"), h, h, VO_GAIN),
        ] {
            w.tensor(&name, &shape, &v, weights)?;
        }
        let (name, shape, v) = norm(&format!("{p}.ffn_norm.weight"));
        w.tensor(&name, &shape, &v, TensorType::F32)?;
        for (name, shape, v) in [
            linear(&format!("{p}.ffn_gate.weight"), f, h, FFN_GAIN),
            linear(&format!("{p}.ffn_up.weight"), f, h, FFN_GAIN),
            linear(&format!("{p}.ffn_down.weight"), h, f, FFN_GAIN),
        ] {
            w.tensor(&name, &shape, &v, weights)?;
        }
    }
    let (name, shape, v) = norm("output_norm.weight");
    w.tensor(&name, &shape, &v, TensorType::F32)?;
    let (name, shape, mut v) = linear("output.weight", n_vocab, h, OUTPUT_GAIN);
    for (id, row) in v.chunks_mut(h as usize).enumerate() {
        if !vocab.greedy_reachable(id) {
            row.fill(0.0);
        }
    }
    w.tensor(&name, &shape, &v, weights)?;
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_are_gpt2s() {
        assert_eq!(byte_char(b'a'), 'a');
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(0), 'Ā');
        assert_eq!(byte_char(0x7f), 'ġ');
        assert_eq!(byte_char(0xad), 'Ń');
        assert_eq!(byte_char(0xff), 'ÿ');
        let mut all: Vec<char> = (0..=255u8).map(byte_char).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn vocab_is_consistent() {
        let v = vocab();
        let mut sorted = v.tokens.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), v.tokens.len(), "duplicate tokens");
        for m in &v.merges {
            let (a, b) = m.split_once(' ').expect("pair");
            for t in [a, b, &format!("{a}{b}")] {
                assert!(v.tokens.iter().any(|x| x == t), "{m}: {t} not in vocab");
            }
        }
        assert_eq!(v.tokens[EOS_ID as usize], "<|im_end|>");
        assert_eq!(v.tokens.len(), 3 + 256 + v.merges.len());
        assert_eq!(v.tokens.len(), 495);
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut r = SplitMix64(1);
        let xs: Vec<f32> = (0..10_000).map(|_| r.uniform()).collect();
        assert!(xs.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
    }

    #[test]
    fn params_are_validated() {
        let p = TinyLlamaParams::default();
        assert!(tiny_llama(0, &TinyLlamaParams { heads: 3, ..p }).is_err());
        assert!(tiny_llama(0, &TinyLlamaParams { kv_heads: 3, ..p }).is_err());
        assert!(tiny_llama(0, &TinyLlamaParams { layers: 0, ..p }).is_err());
        let q8 = TinyLlamaParams {
            weights: TensorType::Q8_0,
            ff: 48,
            ..p
        };
        assert!(tiny_llama(0, &q8).is_err());
    }
}
