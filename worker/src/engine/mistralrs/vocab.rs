//! Token bytes and tokenizer facts read from the GGUF's metadata.
//!
//! mistral.rs does not expose its tokenizer, and log probabilities need the text and bytes of
//! tokens the engine did not emit as text (the `top_logprobs` alternatives, tokens that end
//! inside a UTF-8 sequence). This module rebuilds each token's bytes from
//! `tokenizer.ggml.tokens`, the way the two GGUF tokenizer models encode them:
//!
//! * `gpt2` (byte-level BPE, SmolLM2): every byte is one printable character of GPT-2's
//!   byte-to-unicode table; the table is inverted here.
//! * `llama` (SentencePiece): `▁` is a space and byte-fallback tokens are spelled `<0xNN>`.
//!
//! Tokens that are not of type "normal" (control, user-defined: `<|im_end|>`) are their text.
//!
//! It also finds the token llguidance treats as end-of-sequence (the last special token named
//! `</s>`, `<|endoftext|>`, `<|end_of_text|>`, `<｜end▁of▁sentence｜>` or `<eos>`, else id 0;
//! `toktrie_hf_tokenizers` 1.9.1 `ByteTokenizer::from_tokenizer`), which a completed grammar
//! forces and which may differ from the model's end-of-turn token (SmolLM2: the grammar ends
//! with `<|endoftext|>`, the model's EOS is `<|im_end|>`). mistral.rs would not stop there, so
//! the engine makes it a stop token for constrained requests.
//!
//! The file is read after it was measured ([`super::sha256_file`]), with candle's GGUF reader
//! (the one mistral.rs itself uses on the same file).

use std::path::Path;

use candle_core::quantized::gguf_file as gguf;

use crate::engine::EngineError;

/// `tokenizer.ggml.token_type` of an ordinary token (llama.cpp's enum).
const TYPE_NORMAL: i32 = 1;
/// `tokenizer.ggml.token_type` of a byte-fallback token (`<0x0A>`).
const TYPE_BYTE: i32 = 6;

/// Names that `toktrie_hf_tokenizers` takes as its end-of-sequence token.
const TRIE_EOS_NAMES: [&str; 5] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<eos>",
];

/// The tokenizer facts this engine needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Vocab {
    /// Bytes of each token id.
    bytes: Vec<Vec<u8>>,
    /// The end-of-sequence token of llguidance's token trie, when it is a special token
    /// (`None`: the trie falls back to id 0 and that is an ordinary token).
    pub trie_eos: Option<u32>,
    /// The chat template refers to `tools` (renders tool definitions itself).
    pub template_has_tools: bool,
}

/// The tokenizer section of a GGUF's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TokenizerMetadata {
    /// `tokenizer.ggml.model`: `gpt2`, `llama`, ….
    pub model: String,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty when absent).
    pub token_types: Vec<i32>,
    /// BOS, EOS and UNK ids (mistral.rs adds them as special tokens).
    pub specials: Vec<u32>,
    pub chat_template: Option<String>,
}

impl Vocab {
    /// Reads the tokenizer metadata of the GGUF at `path`.
    pub(crate) fn read(path: &Path) -> Result<Self, EngineError> {
        let shown = path.display().to_string();
        let fail = |e: String| EngineError::Failed(format!("reading tokenizer of {shown}: {e}"));
        let mut file =
            std::io::BufReader::new(std::fs::File::open(path).map_err(|e| fail(e.to_string()))?);
        let content = gguf::Content::read(&mut file).map_err(|e| fail(e.to_string()))?;
        let md = &content.metadata;
        let string = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
        let model =
            string("tokenizer.ggml.model").ok_or_else(|| fail("no tokenizer.ggml.model".into()))?;
        let tokens = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| fail("no tokenizer.ggml.tokens".into()))?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("tokenizer.ggml.tokens: {e}")))?;
        let token_types = match md.get("tokenizer.ggml.token_type").map(|v| v.to_vec()) {
            None => Vec::new(),
            Some(list) => list
                .map_err(|e| fail(format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|v| v.to_i32())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(format!("tokenizer.ggml.token_type: {e}")))?,
        };
        let specials = ["bos", "eos", "unknown"]
            .iter()
            .filter_map(|k| md.get(&format!("tokenizer.ggml.{k}_token_id")))
            .filter_map(|v| v.to_u32().ok())
            .collect();
        Ok(Self::new(&TokenizerMetadata {
            model,
            tokens,
            token_types,
            specials,
            chat_template: string("tokenizer.chat_template"),
        }))
    }

    /// The vocabulary described by `md` (pure).
    pub(crate) fn new(md: &TokenizerMetadata) -> Self {
        let typed = md.token_types.len() == md.tokens.len();
        let kind = |id: usize| {
            if typed {
                md.token_types[id]
            } else {
                TYPE_NORMAL
            }
        };
        let byte_of = gpt2_char_to_byte();
        let bytes = md
            .tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| match (md.model.as_str(), kind(id)) {
                ("gpt2", TYPE_NORMAL) => gpt2_bytes(tok, &byte_of),
                ("llama" | "replit", TYPE_NORMAL | TYPE_BYTE) => sentencepiece_bytes(tok),
                _ => tok.as_bytes().to_vec(),
            })
            .collect();
        let special = |id: usize| {
            (typed && kind(id) != TYPE_NORMAL) || md.specials.iter().any(|s| *s as usize == id)
        };
        let trie_eos = md
            .tokens
            .iter()
            .enumerate()
            .filter(|(id, tok)| special(*id) && TRIE_EOS_NAMES.contains(&tok.as_str()))
            .map(|(id, _)| id)
            .next_back()
            .or_else(|| (!md.tokens.is_empty() && special(0)).then_some(0))
            .and_then(|id| u32::try_from(id).ok());
        Self {
            bytes,
            trie_eos,
            template_has_tools: md
                .chat_template
                .as_deref()
                .is_some_and(|t| t.contains("tools")),
        }
    }

    /// The bytes of token `id` (`None` for an id outside the vocabulary).
    pub(crate) fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// The text of token `id` (U+FFFD for bytes that are not complete UTF-8 on their own).
    pub(crate) fn text(&self, id: u32) -> String {
        self.bytes(id)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }
}

/// GPT-2's byte-level alphabet, inverted: printable bytes stand for themselves, the others
/// (controls, space, DEL, NBSP, soft hyphen) for U+0100 onwards in byte order.
fn gpt2_char_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (c, b)
            }
        })
        .collect()
}

fn gpt2_bytes(tok: &str, byte_of: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    tok.chars()
        .map(|c| byte_of.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        // A character outside the alphabet: not a byte-level token, take its text.
        .unwrap_or_else(|| tok.as_bytes().to_vec())
}

fn sentencepiece_bytes(tok: &str) -> Vec<u8> {
    if let Some(hex) = tok.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if hex.len() == 2 {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
    }
    tok.replace('▁', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(model: &str, tokens: &[&str], types: &[i32]) -> TokenizerMetadata {
        TokenizerMetadata {
            model: model.into(),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: types.to_vec(),
            specials: vec![],
            chat_template: None,
        }
    }

    #[test]
    fn gpt2_tokens_decode_through_the_byte_alphabet() {
        // "Ġ" is the space, "Ċ" the newline, "âĤ¬" the three bytes of "€".
        let v = Vocab::new(&md(
            "gpt2",
            &["<|endoftext|>", "Ġthe", "Ċ", "âĤ¬", "â", "<|im_end|>"],
            &[3, 1, 1, 1, 1, 3],
        ));
        assert_eq!(v.bytes(1), Some(&b" the"[..]));
        assert_eq!(v.bytes(2), Some(&b"\n"[..]));
        assert_eq!(v.bytes(3), Some("€".as_bytes()));
        assert_eq!(v.bytes(4), Some(&[0xe2u8][..]));
        assert_eq!(v.text(4), "\u{fffd}");
        assert_eq!(v.text(5), "<|im_end|>");
        assert_eq!(v.bytes(6), None);
        assert_eq!(v.text(6), "");
        assert_eq!(v.trie_eos, Some(0));
        assert!(!v.template_has_tools);
    }

    #[test]
    fn the_byte_alphabet_is_a_bijection() {
        let m = gpt2_char_to_byte();
        assert_eq!(m.len(), 256);
        let mut bytes: Vec<u8> = m.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'A'], b'A');
        assert_eq!(m[&'\u{100}'], 0);
    }

    #[test]
    fn sentencepiece_tokens_decode_spaces_and_bytes() {
        let v = Vocab::new(&md(
            "llama",
            &["<unk>", "<s>", "</s>", "▁the", "<0x0A>", "<0xZZ>"],
            &[2, 3, 3, 1, 6, 1],
        ));
        assert_eq!(v.bytes(3), Some(&b" the"[..]));
        assert_eq!(v.bytes(4), Some(&b"\n"[..]));
        assert_eq!(v.bytes(5), Some(&b"<0xZZ>"[..]));
        assert_eq!(v.trie_eos, Some(2));
    }

    #[test]
    fn trie_eos_is_the_last_special_token_with_an_eos_name() {
        // A normal token spelled like an EOS name does not count; the last special one wins.
        let v = Vocab::new(&md("gpt2", &["a", "<eos>", "</s>", "<eos>"], &[1, 3, 3, 1]));
        assert_eq!(v.trie_eos, Some(2));
        // No such token: id 0, if that is a special token.
        let v = Vocab::new(&md("gpt2", &["<unk>", "<|im_end|>"], &[2, 3]));
        assert_eq!(v.trie_eos, Some(0));
        let v = Vocab::new(&md("gpt2", &["a", "<|im_end|>"], &[1, 3]));
        assert_eq!(v.trie_eos, None);
        // Without token types, BOS/EOS/UNK ids are the special ones.
        let mut m = md("gpt2", &["a", "</s>", "<eos>"], &[]);
        m.specials = vec![1];
        assert_eq!(Vocab::new(&m).trie_eos, Some(1));
    }

    #[test]
    fn template_with_tools_is_detected() {
        let mut m = md("gpt2", &["a"], &[1]);
        m.chat_template = Some("{% if tools %}{{ tools | tojson }}{% endif %}".into());
        assert!(Vocab::new(&m).template_has_tools);
    }
}
