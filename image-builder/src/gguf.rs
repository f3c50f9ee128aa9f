//! A GGUF v3 writer, and tiny random-weight llama models built with it ([`tiny`]).
//!
//! Pure: [`GgufWriter::to_bytes`] returns the file as bytes; callers write it. The writer
//! exists for tests and boot checks that need an exact, reproducible model: it is not a
//! converter for real weights.
//!
//! # Format (GGUF version 3, little-endian)
//!
//! Spec: `docs/gguf.md` in the ggml repository (github.com/ggml-org/ggml).
//!
//! ```text
//! magic "GGUF" | version u32 = 3 | tensor_count u64 | kv_count u64
//! kv_count × (key: string | value_type u32 | value)
//! tensor_count × (name: string | n_dims u32 | dims u64 × n_dims | ggml_type u32 | offset u64)
//! zero padding to `general.alignment`
//! tensor data, each tensor starting at a multiple of the alignment from here
//! ```
//!
//! Strings are a u64 byte length followed by UTF-8 without a terminator. Arrays are an
//! element type u32, a u64 count and the elements. `dims` lists the fastest-varying dimension
//! first (ggml's `ne[0]`), the reverse of the row-major shapes this module's API takes.
//!
//! The writer always emits `general.alignment` itself (as u32), first among the metadata.
//! Metadata and tensors are written in insertion order, so equal inputs give equal bytes.
//! Nested arrays (allowed by the spec, used by no model we need) are not supported.

pub mod tiny;

/// Alignment of the tensor data section and of each tensor in it (the GGUF default).
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// The metadata key that records the alignment; reserved for the writer.
pub const ALIGNMENT_KEY: &str = "general.alignment";

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// Elements per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 signed bytes.
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// Errors building a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    #[error("metadata key {0:?} given twice")]
    DuplicateKey(String),
    #[error("metadata key {0:?} is written by the writer itself")]
    ReservedKey(String),
    #[error("tensor {0:?} given twice")]
    DuplicateTensor(String),
    #[error("tensor {name:?}: shape {shape:?} holds {expected} elements, got {got}")]
    ElementCount {
        name: String,
        shape: Vec<u64>,
        expected: u64,
        got: u64,
    },
    #[error("tensor {name:?}: q8_0 needs a last dimension that is a multiple of 32, got {dim}")]
    Q8Dim { name: String, dim: u64 },
    #[error("tensor {0:?}: no dimensions")]
    NoDims(String),
    #[error("alignment {0}: must be a non-zero multiple of 8")]
    Alignment(u32),
    #[error("invalid model parameters: {0}")]
    Params(String),
}

/// A metadata value ([`Value::type_code`] is its GGUF type code).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    /// GGUF's code for this value's type.
    pub fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

impl Array {
    /// GGUF's code for the element type.
    pub fn elem_type_code(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}

/// Storage type of a tensor (ggml type codes: F32 = 0, Q8_0 = 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    /// Blocks of 32 values along the last dimension: an f16 scale and 32 signed bytes.
    Q8_0,
}

impl TensorType {
    /// The ggml type code.
    pub fn code(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::Q8_0 => 8,
        }
    }
}

#[derive(Debug, Clone)]
struct TensorEntry {
    name: String,
    /// Row-major (outermost first).
    shape: Vec<u64>,
    ty: TensorType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then serializes them as one GGUF v3 file.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorEntry>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    /// A writer with the default alignment (32).
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer with another alignment (a non-zero multiple of 8, as the spec requires).
    pub fn with_alignment(alignment: u32) -> Result<Self, GgufError> {
        if alignment == 0 || !alignment.is_multiple_of(8) {
            return Err(GgufError::Alignment(alignment));
        }
        Ok(Self {
            alignment,
            ..Self::default()
        })
    }

    /// Adds a metadata entry.
    pub fn kv(&mut self, key: &str, value: impl Into<Value>) -> Result<(), GgufError> {
        if key == ALIGNMENT_KEY {
            return Err(GgufError::ReservedKey(key.to_string()));
        }
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(GgufError::DuplicateKey(key.to_string()));
        }
        self.metadata.push((key.to_string(), value.into()));
        Ok(())
    }

    /// Adds a tensor of row-major `shape` (outermost dimension first, as in candle or numpy)
    /// from f32 values, stored as `ty`.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        values: &[f32],
        ty: TensorType,
    ) -> Result<(), GgufError> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name.to_string()));
        }
        let Some(&last) = shape.last() else {
            return Err(GgufError::NoDims(name.to_string()));
        };
        let expected = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let got = values.len() as u64;
        if expected != Some(got) {
            return Err(GgufError::ElementCount {
                name: name.to_string(),
                shape: shape.to_vec(),
                expected: expected.unwrap_or(u64::MAX),
                got,
            });
        }
        let data = match ty {
            TensorType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorType::Q8_0 => {
                if !last.is_multiple_of(Q8_0_BLOCK as u64) {
                    return Err(GgufError::Q8Dim {
                        name: name.to_string(),
                        dim: last,
                    });
                }
                quantize_q8_0(values)
            }
        };
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = u64::from(self.alignment);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, VERSION);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64 + 1);
        put_str(&mut out, ALIGNMENT_KEY);
        put_value(&mut out, &Value::U32(self.alignment));
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.shape.len() as u32);
            for &d in t.shape.iter().rev() {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ty.code());
            put_u64(&mut out, offset);
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        for t in &self.tensors {
            // Pad before each tensor (after the header and between tensors), not at the end.
            pad_to(&mut out, align);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

fn pad_to(out: &mut Vec<u8>, align: u64) {
    let len = (out.len() as u64).next_multiple_of(align);
    out.resize(len as usize, 0);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    put_u32(out, v.type_code());
    put_payload(out, v);
}

/// A value without its type code (array elements carry none).
fn put_payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => put_u32(out, *x),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => put_u64(out, *x),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    fn each<T: Copy>(out: &mut Vec<u8>, xs: &[T], f: impl Fn(T) -> Value) {
        put_u64(out, xs.len() as u64);
        for &x in xs {
            put_payload(out, &f(x));
        }
    }
    put_u32(out, a.elem_type_code());
    match a {
        Array::U8(xs) => each(out, xs, Value::U8),
        Array::I8(xs) => each(out, xs, Value::I8),
        Array::U16(xs) => each(out, xs, Value::U16),
        Array::I16(xs) => each(out, xs, Value::I16),
        Array::U32(xs) => each(out, xs, Value::U32),
        Array::I32(xs) => each(out, xs, Value::I32),
        Array::F32(xs) => each(out, xs, Value::F32),
        Array::Bool(xs) => each(out, xs, Value::Bool),
        Array::U64(xs) => each(out, xs, Value::U64),
        Array::I64(xs) => each(out, xs, Value::I64),
        Array::F64(xs) => each(out, xs, Value::F64),
        Array::String(xs) => {
            put_u64(out, xs.len() as u64);
            for s in xs {
                put_str(out, s);
            }
        }
    }
}

/// Q8_0 blocks of `values` (whose length is a multiple of 32), as ggml's reference
/// quantizer makes them: scale `d = max|x| / 127` stored as f16, `q = round(x / d)`.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / Q8_0_BLOCK * Q8_0_BLOCK_BYTES);
    for block in values.chunks(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16_bits(d).to_le_bytes());
        for x in block {
            // In range by construction: |x * id| <= 127 up to rounding.
            out.push(((x * id).round() as i8) as u8);
        }
    }
    out
}

/// IEEE 754 binary16 bits of `x`, rounded to nearest (ties to even); overflow gives ±inf.
pub fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x007f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x0200 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal (or zero) in f16: value = q * 2^-24 with q = m * 2^(e - 14).
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        return sign | round_shift(m, shift) as u16;
    }
    // Normal: the carry of the rounding may move into the exponent (up to inf), as it should.
    let half = (u32::from(sign) | ((e as u32) << 10)) + round_shift(man, 13);
    half as u16
}

/// `m >> shift`, rounded to nearest with ties to even.
fn round_shift(m: u32, shift: u32) -> u32 {
    let q = m >> shift;
    let rem = m & ((1 << shift) - 1);
    let halfway = 1 << (shift - 1);
    if rem > halfway || (rem == halfway && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        let cases: &[(f32, u16)] = &[
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (0.1, 0x2e66),
            (1.0 / 3.0, 0x3555),
            (65504.0, 0x7bff),
            (65519.0, 0x7bff),
            (65520.0, 0x7c00),
            (1e10, 0x7c00),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (6.103_515_6e-5, 0x0400),             // smallest normal
            (5.960_464_5e-8, 0x0001),             // smallest subnormal
            (2.980_232_2e-8, 0x0000),             // half of it: tie to even (0)
            (8.940_697e-8, 0x0002),               // 1.5 × smallest: tie to even (2)
            (1.0 + 2f32.powi(-11), 0x3c00),       // tie: to even (down)
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02), // tie: to even (up)
            (1.0 + 2f32.powi(-11) + 2f32.powi(-20), 0x3c01), // above the tie: up
            (6.097_555e-5, 0x03ff),               // largest subnormal
        ];
        for &(x, want) in cases {
            assert_eq!(f16_bits(x), want, "{x:e}");
        }
        assert_eq!(f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f16_bits(f32::NAN) & 0x03ff, 0);
    }

    #[test]
    fn q8_0_block_layout() {
        let mut xs = vec![0f32; 32];
        xs[0] = 127.0;
        xs[1] = -63.5;
        xs[2] = 0.4;
        let q = quantize_q8_0(&xs);
        assert_eq!(q.len(), Q8_0_BLOCK_BYTES);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x3c00); // d = 1.0
        assert_eq!(q[2] as i8, 127);
        assert_eq!(q[3] as i8, -64); // -63.5 rounds away from zero, as ggml's roundf does
        assert_eq!(q[4] as i8, 0);
        assert!(q[5..].iter().all(|&b| b == 0));
        assert_eq!(quantize_q8_0(&[0.0; 32])[..2], [0, 0]);
    }

    #[test]
    fn header_and_padding() {
        let mut w = GgufWriter::new();
        w.kv("a", Value::U8(7)).unwrap();
        w.tensor("t", &[1, 3], &[1.0, 2.0, 3.0], TensorType::F32)
            .unwrap();
        w.tensor("u", &[1], &[4.0], TensorType::F32).unwrap();
        let b = w.to_bytes();
        assert_eq!(&b[..4], b"GGUF");
        assert_eq!(b[4..8], 3u32.to_le_bytes());
        assert_eq!(b[8..16], 2u64.to_le_bytes());
        assert_eq!(b[16..24], 2u64.to_le_bytes());
        // Data: t at a 32-byte boundary, u 32 bytes later, no trailing padding.
        let data_start = b.len() - 32 - 4;
        assert!(data_start.is_multiple_of(32));
        assert_eq!(b[data_start..data_start + 4], 1f32.to_le_bytes());
        assert_eq!(b[b.len() - 4..], 4f32.to_le_bytes());
    }

    #[test]
    fn rejects_bad_input() {
        let mut w = GgufWriter::new();
        assert_eq!(
            w.kv(ALIGNMENT_KEY, Value::U32(64)),
            Err(GgufError::ReservedKey(ALIGNMENT_KEY.into()))
        );
        w.kv("k", "v").unwrap();
        assert_eq!(w.kv("k", "w"), Err(GgufError::DuplicateKey("k".into())));
        assert!(matches!(
            w.tensor("t", &[2, 2], &[0.0; 3], TensorType::F32),
            Err(GgufError::ElementCount {
                expected: 4,
                got: 3,
                ..
            })
        ));
        assert_eq!(
            w.tensor("t", &[2, 16], &[0.0; 32], TensorType::Q8_0),
            Err(GgufError::Q8Dim {
                name: "t".into(),
                dim: 16
            })
        );
        assert_eq!(
            w.tensor("t", &[], &[], TensorType::F32),
            Err(GgufError::NoDims("t".into()))
        );
        w.tensor("t", &[1], &[0.0], TensorType::F32).unwrap();
        assert_eq!(
            w.tensor("t", &[1], &[0.0], TensorType::F32),
            Err(GgufError::DuplicateTensor("t".into()))
        );
        assert_eq!(
            GgufWriter::with_alignment(12).unwrap_err(),
            GgufError::Alignment(12)
        );
        assert_eq!(
            GgufWriter::with_alignment(0).unwrap_err(),
            GgufError::Alignment(0)
        );
    }
}
