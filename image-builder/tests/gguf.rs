//! The GGUF writer and the tiny llama models, read back by an independent minimal GGUF v3
//! reader (below), and the `tiny-gguf` subcommand. That mistral.rs loads and runs the models
//! is checked by the worker's `tests/tiny_golden.rs`.

use std::collections::BTreeMap;

use image::gguf::tiny::{tiny_llama, vocab, TinyLlamaParams, EOS_ID};
use image::gguf::{f16_bits, Array, GgufWriter, TensorType, Value};

/// A parsed metadata value: scalars widened, arrays as lists.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Int(u32, i128),
    Float(u32, f64),
    Bool(bool),
    Str(String),
    List(u32, Vec<V>),
}

#[derive(Debug)]
struct Info {
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

#[derive(Debug)]
struct Parsed {
    kv: Vec<(String, V)>,
    tensors: BTreeMap<String, Info>,
    order: Vec<String>,
    data_start: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("utf-8")
    }
    fn value(&mut self, ty: u32) -> V {
        let int = |ty, x: i128| V::Int(ty, x);
        match ty {
            0 => int(ty, self.take(1)[0].into()),
            1 => int(ty, (self.take(1)[0] as i8).into()),
            2 => int(
                ty,
                u16::from_le_bytes(self.take(2).try_into().unwrap()).into(),
            ),
            3 => int(
                ty,
                i16::from_le_bytes(self.take(2).try_into().unwrap()).into(),
            ),
            4 => int(ty, self.u32().into()),
            5 => int(ty, (self.u32() as i32).into()),
            6 => V::Float(
                ty,
                f32::from_le_bytes(self.take(4).try_into().unwrap()).into(),
            ),
            7 => V::Bool(match self.take(1)[0] {
                0 => false,
                1 => true,
                b => panic!("bool byte {b}"),
            }),
            8 => V::Str(self.string()),
            9 => {
                let et = self.u32();
                let n = self.u64();
                V::List(et, (0..n).map(|_| self.value(et)).collect())
            }
            10 => int(ty, self.u64().into()),
            11 => int(ty, (self.u64() as i64).into()),
            12 => V::Float(ty, f64::from_bits(self.u64())),
            t => panic!("value type {t}"),
        }
    }
}

fn parse(b: &[u8]) -> Parsed {
    let mut r = Reader { b, pos: 0 };
    assert_eq!(r.take(4), b"GGUF");
    assert_eq!(r.u32(), 3, "version");
    let n_tensors = r.u64();
    let n_kv = r.u64();
    let mut kv = Vec::new();
    for _ in 0..n_kv {
        let k = r.string();
        let ty = r.u32();
        kv.push((k, r.value(ty)));
    }
    let mut tensors = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string();
        let n = r.u32();
        let dims = (0..n).map(|_| r.u64()).collect();
        let ty = r.u32();
        let offset = r.u64();
        order.push(name.clone());
        assert!(tensors.insert(name, Info { dims, ty, offset }).is_none());
    }
    // A file without tensors may end right after the header.
    let data_start = r.pos.next_multiple_of(32);
    assert!(
        b[r.pos..data_start.min(b.len())].iter().all(|&x| x == 0),
        "padding"
    );
    Parsed {
        kv,
        tensors,
        order,
        data_start,
    }
}

impl Parsed {
    fn get(&self, key: &str) -> &V {
        &self
            .kv
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
    }
    fn u32(&self, key: &str) -> u32 {
        match self.get(key) {
            V::Int(4, x) => *x as u32,
            v => panic!("{key}: not a u32: {v:?}"),
        }
    }
    fn bytes_of(&self, info: &Info) -> usize {
        let n: u64 = info.dims.iter().product();
        match info.ty {
            0 => n as usize * 4,
            8 => n as usize / 32 * 34,
            t => panic!("type {t}"),
        }
    }
    fn f32s(&self, b: &[u8], name: &str) -> Vec<f32> {
        let info = &self.tensors[name];
        assert_eq!(info.ty, 0, "{name}: not f32");
        let start = self.data_start + info.offset as usize;
        b[start..start + self.bytes_of(info)]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    /// Q8_0 dequantized, with this file's own f16 decoder.
    fn q8(&self, b: &[u8], name: &str) -> Vec<f32> {
        let info = &self.tensors[name];
        assert_eq!(info.ty, 8, "{name}: not q8_0");
        let start = self.data_start + info.offset as usize;
        let mut out = Vec::new();
        for block in b[start..start + self.bytes_of(info)].chunks(34) {
            let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
        }
        out
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f32::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f32.powi(-24),
        0x1f => sign * f32::INFINITY,
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}

#[test]
fn every_value_type_reads_back() {
    let mut w = GgufWriter::new();
    let values = [
        ("u8", Value::U8(200), V::Int(0, 200)),
        ("i8", Value::I8(-5), V::Int(1, -5)),
        ("u16", Value::U16(60_000), V::Int(2, 60_000)),
        ("i16", Value::I16(-30_000), V::Int(3, -30_000)),
        ("u32", Value::U32(4_000_000_000), V::Int(4, 4_000_000_000)),
        ("i32", Value::I32(-7), V::Int(5, -7)),
        ("f32", Value::F32(0.5), V::Float(6, 0.5)),
        ("bool", Value::Bool(true), V::Bool(true)),
        ("str", Value::from("héllo"), V::Str("héllo".into())),
        ("u64", Value::U64(u64::MAX), V::Int(10, u64::MAX.into())),
        ("i64", Value::I64(i64::MIN), V::Int(11, i64::MIN.into())),
        ("f64", Value::F64(-1.25), V::Float(12, -1.25)),
        (
            "a_str",
            Value::Array(Array::String(vec!["a b".into(), "".into()])),
            V::List(8, vec![V::Str("a b".into()), V::Str("".into())]),
        ),
        (
            "a_i32",
            Value::Array(Array::I32(vec![1, -1])),
            V::List(5, vec![V::Int(5, 1), V::Int(5, -1)]),
        ),
        (
            "a_bool",
            Value::Array(Array::Bool(vec![false])),
            V::List(7, vec![V::Bool(false)]),
        ),
        (
            "a_f64",
            Value::Array(Array::F64(vec![])),
            V::List(12, vec![]),
        ),
        (
            "a_u8",
            Value::Array(Array::U8(vec![1, 2])),
            V::List(0, vec![V::Int(0, 1), V::Int(0, 2)]),
        ),
    ];
    for (k, v, _) in &values {
        w.kv(k, v.clone()).unwrap();
    }
    let b = w.to_bytes();
    let p = parse(&b);
    assert_eq!(p.kv[0], ("general.alignment".into(), V::Int(4, 32)));
    assert_eq!(p.kv.len(), values.len() + 1);
    for ((k, _, want), (pk, got)) in values.iter().zip(&p.kv[1..]) {
        assert_eq!((k, want), (&pk.as_str(), got));
    }
    assert!(p.tensors.is_empty());
}

#[test]
fn tensors_are_aligned_and_reversed() {
    let mut w = GgufWriter::with_alignment(64).unwrap();
    let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
    w.tensor("a", &[2, 3], &a, TensorType::F32).unwrap();
    let q: Vec<f32> = (0..64).map(|i| i as f32 - 32.0).collect();
    w.tensor("q", &[2, 32], &q, TensorType::Q8_0).unwrap();
    let b = w.to_bytes();
    let mut r = Reader { b: &b, pos: 0 };
    r.take(24);
    assert_eq!(r.string(), "general.alignment");
    assert_eq!(r.u32(), 4);
    assert_eq!(r.u32(), 64);
    assert_eq!(r.string(), "a");
    assert_eq!(r.u32(), 2);
    assert_eq!(
        (r.u64(), r.u64()),
        (3, 2),
        "ggml order: fastest dimension first"
    );
    assert_eq!((r.u32(), r.u64()), (0, 0));
    assert_eq!(r.string(), "q");
    assert_eq!(r.u32(), 2);
    assert_eq!((r.u64(), r.u64()), (32, 2));
    assert_eq!((r.u32(), r.u64()), (8, 64));
    let data = r.pos.next_multiple_of(64);
    assert_eq!(
        b[data..data + 24]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>(),
        a
    );
    assert_eq!(b.len(), data + 64 + 2 * 34);
    // Block 0 spans -32..=-1: scale 32/127.
    assert_eq!(
        u16::from_le_bytes([b[data + 64], b[data + 65]]),
        f16_bits(32.0 / 127.0)
    );
    assert_eq!(b[data + 66] as i8, -127);
}

#[test]
fn tiny_llama_is_reproducible() {
    let p = TinyLlamaParams::default();
    let a = tiny_llama(7, &p).unwrap();
    assert_eq!(a, tiny_llama(7, &p).unwrap());
    assert_ne!(a, tiny_llama(8, &p).unwrap());
}

#[test]
fn tiny_llama_structure() {
    let params = TinyLlamaParams::default();
    let b = tiny_llama(3, &params).unwrap();
    let p = parse(&b);
    let v = vocab();
    let n_vocab = v.tokens.len() as u64;

    assert_eq!(p.get("general.architecture"), &V::Str("llama".into()));
    assert_eq!(p.u32("general.alignment"), 32);
    assert_eq!(p.get("cocoon.tiny.seed"), &V::Int(10, 3));
    assert_eq!(p.u32("llama.embedding_length"), 64);
    assert_eq!(p.u32("llama.block_count"), 2);
    assert_eq!(p.u32("llama.attention.head_count"), 4);
    assert_eq!(p.u32("llama.attention.head_count_kv"), 2);
    assert_eq!(p.u32("llama.feed_forward_length"), 128);
    assert_eq!(p.u32("llama.context_length"), 256);
    assert_eq!(p.u32("llama.rope.dimension_count"), 16);
    assert_eq!(p.u32("llama.vocab_size"), n_vocab as u32);
    assert!(matches!(
        p.get("llama.attention.layer_norm_rms_epsilon"),
        V::Float(6, _)
    ));
    assert_eq!(p.get("tokenizer.ggml.model"), &V::Str("gpt2".into()));
    assert_eq!(p.u32("tokenizer.ggml.eos_token_id"), EOS_ID);
    match p.get("tokenizer.ggml.tokens") {
        V::List(8, t) => assert_eq!(t.len() as u64, n_vocab),
        other => panic!("tokens: {other:?}"),
    }
    match p.get("tokenizer.ggml.token_type") {
        V::List(5, t) => {
            assert_eq!(t.len() as u64, n_vocab);
            assert_eq!(
                t[..4],
                [V::Int(5, 3), V::Int(5, 3), V::Int(5, 3), V::Int(5, 1)]
            );
        }
        other => panic!("token_type: {other:?}"),
    }
    match p.get("tokenizer.chat_template") {
        V::Str(t) => assert!(t.contains("<|im_start|>assistant")),
        other => panic!("chat_template: {other:?}"),
    }

    // 3 global tensors and 9 per layer, in order, 32-byte aligned, packed, ending the file.
    assert_eq!(p.order.len(), 3 + 9 * 2);
    assert_eq!(p.order[0], "token_embd.weight");
    assert_eq!(p.tensors["token_embd.weight"].dims, [64, n_vocab]);
    assert_eq!(p.tensors["blk.1.attn_k.weight"].dims, [64, 32]);
    assert_eq!(p.tensors["blk.0.ffn_down.weight"].dims, [128, 64]);
    assert_eq!(p.tensors["blk.0.ffn_up.weight"].dims, [64, 128]);
    assert_eq!(p.tensors["output_norm.weight"].dims, [64]);
    let mut end = 0u64;
    for name in &p.order {
        let info = &p.tensors[name];
        assert_eq!(info.ty, 0, "{name}");
        assert_eq!(info.offset, end.next_multiple_of(32), "{name}");
        end = info.offset + p.bytes_of(info) as u64;
    }
    assert_eq!(b.len() as u64, p.data_start as u64 + end);

    // Weights are spread (not degenerate); norms near 1; unreachable output rows are zero.
    let q = p.f32s(&b, "blk.0.attn_q.weight");
    let std = (q.iter().map(|x| x * x).sum::<f32>() / q.len() as f32).sqrt();
    assert!((0.2..0.3).contains(&std), "attn_q std {std}");
    let n = p.f32s(&b, "output_norm.weight");
    assert!(n.iter().all(|x| (0.8..=1.2).contains(x)));
    let out = p.f32s(&b, "output.weight");
    let row = |i: usize| &out[i * 64..(i + 1) * 64];
    assert!(row(EOS_ID as usize).iter().all(|&x| x == 0.0));
    assert!(row(3).iter().all(|&x| x == 0.0), "byte 0x00");
    assert!(row(3 + usize::from(b'a')).iter().any(|&x| x != 0.0));
    assert!(row(n_vocab as usize - 1).iter().any(|&x| x != 0.0));
}

#[test]
fn q8_0_variant_matches_f32_weights() {
    let f32p = TinyLlamaParams::default();
    let q8p = TinyLlamaParams {
        weights: TensorType::Q8_0,
        ..f32p
    };
    let (fb, qb) = (tiny_llama(5, &f32p).unwrap(), tiny_llama(5, &q8p).unwrap());
    let (fp, qp) = (parse(&fb), parse(&qb));
    assert_eq!(qp.tensors["token_embd.weight"].ty, 0);
    assert_eq!(qp.tensors["blk.0.attn_norm.weight"].ty, 0);
    for name in [
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "output.weight",
    ] {
        let exact = fp.f32s(&fb, name);
        let deq = qp.q8(&qb, name);
        assert_eq!(exact.len(), deq.len());
        for (blk_e, blk_q) in exact.chunks(32).zip(deq.chunks(32)) {
            let amax = blk_e.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (e, q) in blk_e.iter().zip(blk_q) {
                // Half a quantization step, plus the f16 rounding of the scale.
                let tolerance = amax / 127.0 * 0.5 + amax * 2f32.powi(-10);
                assert!((e - q).abs() <= tolerance, "{name}: {e} vs {q}");
            }
        }
    }
    assert!(qb.len() < fb.len());
}

#[test]
fn tiny_gguf_subcommand_writes_the_model() {
    let dir = std::env::temp_dir().join(format!("cocoon-tiny-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tiny.gguf");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cocoon-image"))
        .args(["tiny-gguf", "--seed", "11", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        written,
        tiny_llama(11, &TinyLlamaParams::default()).unwrap()
    );
}
