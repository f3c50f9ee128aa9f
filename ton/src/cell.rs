//! Ordinary TVM cells: up to 1023 data bits and 4 references, with the representation hash and
//! depth of the TVM spec (tvm.pdf §3.1; TON whitepaper §2.5.14: `d1 d2 data' depth(refs)
//! hash(refs)`, SHA-256).
//!
//! Only ordinary cells of level 0 exist here. Exotic cells (pruned branches, library cells, Merkle
//! proofs) never occur in Cocoon's messages, data or code, and the BOC decoder rejects them.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::address::{Addr, Coins};

/// Most data bits in a cell.
pub const MAX_BITS: usize = 1023;
/// Most references in a cell.
pub const MAX_REFS: usize = 4;
/// Largest cell depth accepted (TVM's limit).
pub const MAX_DEPTH: u16 = 1024;

/// An error while building or reading a cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    /// Storing would exceed 1023 bits.
    #[error("cell overflow: {have} bits + {add} bits exceeds 1023")]
    BitOverflow { have: usize, add: usize },
    /// Storing would exceed 4 references.
    #[error("cell overflow: more than 4 references")]
    RefOverflow,
    /// Reading more bits than remain.
    #[error("cell underflow: need {need} bits, {have} remain")]
    BitUnderflow { need: usize, have: usize },
    /// Reading a reference that does not exist.
    #[error("cell underflow: no reference left")]
    RefUnderflow,
    /// A cell whose depth exceeds 1024.
    #[error("cell depth {depth} exceeds 1024")]
    DepthOverflow { depth: u16 },
    /// A uint wider than the helper supports or a value that does not fit its width.
    #[error("value {value} does not fit in {bits} bits")]
    ValueTooWide { value: u128, bits: usize },
    /// Bits or references left after a complete parse.
    #[error("trailing data: {bits} bits and {refs} references left")]
    Trailing { bits: usize, refs: usize },
    /// A prefix tag that is not allowed.
    #[error("unexpected tag {got:#b} ({what})")]
    BadTag { what: &'static str, got: u64 },
}

struct Inner {
    data: Vec<u8>,
    bits: usize,
    refs: Vec<Cell>,
    hash: [u8; 32],
    depth: u16,
}

/// An immutable ordinary cell. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Cell(Arc<Inner>);

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cell{{bits: {}, refs: {}, hash: {}}}",
            self.0.bits,
            self.0.refs.len(),
            hex::encode(self.0.hash)
        )
    }
}

impl PartialEq for Cell {
    fn eq(&self, other: &Self) -> bool {
        self.0.hash == other.0.hash
    }
}
impl Eq for Cell {}

impl Cell {
    /// Builds a cell from raw data bits (`data` holds at least `bits` bits, MSB first; bits past
    /// `bits` are ignored) and references.
    pub fn new(data: &[u8], bits: usize, refs: Vec<Cell>) -> Result<Cell, CellError> {
        if bits > MAX_BITS || data.len() * 8 < bits {
            return Err(CellError::BitOverflow { have: 0, add: bits });
        }
        if refs.len() > MAX_REFS {
            return Err(CellError::RefOverflow);
        }
        let mut d = data[..bits.div_ceil(8)].to_vec();
        if bits % 8 != 0 {
            let last = d.len() - 1;
            d[last] &= 0xffu8 << (8 - bits % 8);
        }
        let depth = match refs.iter().map(Cell::depth).max() {
            None => 0,
            Some(m) => m + 1,
        };
        if depth > MAX_DEPTH {
            return Err(CellError::DepthOverflow { depth });
        }
        let mut h = Sha256::new();
        let (d1, d2) = descriptors(bits, refs.len());
        h.update([d1, d2]);
        h.update(padded(&d, bits));
        for r in &refs {
            h.update(r.depth().to_be_bytes());
        }
        for r in &refs {
            h.update(r.hash());
        }
        let hash: [u8; 32] = h.finalize().into();
        Ok(Cell(Arc::new(Inner {
            data: d,
            bits,
            refs,
            hash,
            depth,
        })))
    }

    /// The empty cell.
    pub fn empty() -> Cell {
        // An empty cell always fits.
        Cell::new(&[], 0, Vec::new()).unwrap_or_else(|_| unreachable!())
    }

    /// Representation hash (SHA-256 of the standard representation).
    pub fn hash(&self) -> [u8; 32] {
        self.0.hash
    }
    /// Depth: 0 without references, else 1 + the deepest reference.
    pub fn depth(&self) -> u16 {
        self.0.depth
    }
    /// Number of data bits.
    pub fn bit_len(&self) -> usize {
        self.0.bits
    }
    /// Data bytes (the last one zero-padded when `bit_len` is not a multiple of 8).
    pub fn data(&self) -> &[u8] {
        &self.0.data
    }
    /// References.
    pub fn refs(&self) -> &[Cell] {
        &self.0.refs
    }
    /// A reader positioned at the start.
    pub fn parse(&self) -> CellSlice<'_> {
        CellSlice {
            cell: self,
            bit: 0,
            r: 0,
        }
    }
    /// Data with the completion tag when `bit_len` is not a multiple of 8 (as in a BOC).
    pub fn padded_data(&self) -> Vec<u8> {
        padded(&self.0.data, self.0.bits)
    }
    /// The two descriptor bytes (d1, d2) of an ordinary level-0 cell.
    pub fn descriptors(&self) -> (u8, u8) {
        descriptors(self.0.bits, self.0.refs.len())
    }
}

fn descriptors(bits: usize, refs: usize) -> (u8, u8) {
    // refs <= 4 and bits <= 1023 are enforced by every constructor.
    let d1 = refs as u8;
    let d2 = (bits / 8 + bits.div_ceil(8)) as u8;
    (d1, d2)
}

fn padded(data: &[u8], bits: usize) -> Vec<u8> {
    let mut d = data[..bits.div_ceil(8)].to_vec();
    if bits % 8 != 0 {
        let last = d.len() - 1;
        d[last] |= 1 << (7 - bits % 8);
    }
    d
}

fn get_bit(data: &[u8], i: usize) -> bool {
    data[i / 8] & (0x80 >> (i % 8)) != 0
}

/// A cell under construction.
#[derive(Debug, Clone, Default)]
pub struct CellBuilder {
    data: Vec<u8>,
    bits: usize,
    refs: Vec<Cell>,
}

impl CellBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }
    /// Bits stored so far.
    pub fn bit_len(&self) -> usize {
        self.bits
    }

    fn reserve(&self, add: usize) -> Result<(), CellError> {
        if self.bits + add > MAX_BITS {
            return Err(CellError::BitOverflow {
                have: self.bits,
                add,
            });
        }
        Ok(())
    }

    fn push_bit(&mut self, b: bool) {
        if self.bits % 8 == 0 {
            self.data.push(0);
        }
        if b {
            let i = self.bits;
            self.data[i / 8] |= 0x80 >> (i % 8);
        }
        self.bits += 1;
    }

    /// Stores one bit.
    pub fn store_bit(&mut self, b: bool) -> Result<&mut Self, CellError> {
        self.reserve(1)?;
        self.push_bit(b);
        Ok(self)
    }

    /// Stores `value` as an unsigned big-endian integer of `bits` bits (at most 128).
    pub fn store_uint(&mut self, value: u128, bits: usize) -> Result<&mut Self, CellError> {
        if bits > 128 || (bits < 128 && value >> bits != 0) {
            return Err(CellError::ValueTooWide { value, bits });
        }
        self.reserve(bits)?;
        for i in (0..bits).rev() {
            self.push_bit((value >> i) & 1 == 1);
        }
        Ok(self)
    }

    /// Stores a signed integer of `bits` bits (two's complement, at most 64).
    pub fn store_int(&mut self, value: i64, bits: usize) -> Result<&mut Self, CellError> {
        let lim = 1i128 << (bits.clamp(1, 64) - 1);
        if bits == 0 || bits > 64 || i128::from(value) < -lim || i128::from(value) >= lim {
            return Err(CellError::ValueTooWide {
                value: value as u128,
                bits,
            });
        }
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        self.store_uint(u128::from(value as u64 & mask), bits)
    }

    /// Stores whole bytes.
    pub fn store_bytes(&mut self, bytes: &[u8]) -> Result<&mut Self, CellError> {
        self.store_bits(bytes, bytes.len() * 8)
    }

    /// Stores the first `bits` bits of `data`.
    pub fn store_bits(&mut self, data: &[u8], bits: usize) -> Result<&mut Self, CellError> {
        if data.len() * 8 < bits {
            return Err(CellError::BitUnderflow {
                need: bits,
                have: data.len() * 8,
            });
        }
        self.reserve(bits)?;
        for i in 0..bits {
            self.push_bit(get_bit(data, i));
        }
        Ok(self)
    }

    /// Stores a reference.
    pub fn store_ref(&mut self, cell: Cell) -> Result<&mut Self, CellError> {
        if self.refs.len() >= MAX_REFS {
            return Err(CellError::RefOverflow);
        }
        self.refs.push(cell);
        Ok(self)
    }

    /// `Maybe ^Cell`: a 0 bit, or a 1 bit and a reference.
    pub fn store_maybe_ref(&mut self, cell: Option<Cell>) -> Result<&mut Self, CellError> {
        match cell {
            None => self.store_bit(false),
            Some(c) => {
                if self.refs.len() >= MAX_REFS {
                    return Err(CellError::RefOverflow);
                }
                self.store_bit(true)?.store_ref(c)
            }
        }
    }

    /// Appends the unread remainder of a slice (bits and references).
    pub fn store_slice(&mut self, s: &CellSlice<'_>) -> Result<&mut Self, CellError> {
        let bits = s.remaining_bits();
        self.reserve(bits)?;
        if self.refs.len() + s.remaining_refs() > MAX_REFS {
            return Err(CellError::RefOverflow);
        }
        for i in 0..bits {
            self.push_bit(get_bit(s.cell.data(), s.bit + i));
        }
        self.refs.extend(s.cell.refs()[s.r..].iter().cloned());
        Ok(self)
    }

    /// `Coins` (`VarUInteger 16`): `len:uint4` then `len` bytes.
    pub fn store_coins(&mut self, c: Coins) -> Result<&mut Self, CellError> {
        let v = c.nano();
        let len = (128 - v.leading_zeros() as usize).div_ceil(8);
        if len > 15 {
            return Err(CellError::ValueTooWide {
                value: v,
                bits: 120,
            });
        }
        self.store_uint(len as u128, 4)?.store_uint(v, len * 8)
    }

    /// `MsgAddressInt` `addr_std$10 anycast:0 workchain_id:int8 address:bits256`.
    pub fn store_addr(&mut self, a: &Addr) -> Result<&mut Self, CellError> {
        self.reserve(267)?;
        self.store_uint(0b100, 3)?
            .store_int(i64::from(a.workchain), 8)?
            .store_bytes(&a.hash)
    }

    /// Finishes the cell.
    pub fn build(&self) -> Result<Cell, CellError> {
        Cell::new(&self.data, self.bits, self.refs.clone())
    }
}

/// A read cursor over a cell.
#[derive(Debug, Clone)]
pub struct CellSlice<'a> {
    cell: &'a Cell,
    bit: usize,
    r: usize,
}

impl<'a> CellSlice<'a> {
    /// Unread bits.
    pub fn remaining_bits(&self) -> usize {
        self.cell.bit_len() - self.bit
    }
    /// Unread references.
    pub fn remaining_refs(&self) -> usize {
        self.cell.refs().len() - self.r
    }

    fn need(&self, n: usize) -> Result<(), CellError> {
        if self.remaining_bits() < n {
            return Err(CellError::BitUnderflow {
                need: n,
                have: self.remaining_bits(),
            });
        }
        Ok(())
    }

    /// Reads one bit.
    pub fn load_bit(&mut self) -> Result<bool, CellError> {
        self.need(1)?;
        let b = get_bit(self.cell.data(), self.bit);
        self.bit += 1;
        Ok(b)
    }

    /// Reads an unsigned integer of `bits` bits (at most 128).
    pub fn load_uint(&mut self, bits: usize) -> Result<u128, CellError> {
        if bits > 128 {
            return Err(CellError::ValueTooWide { value: 0, bits });
        }
        self.need(bits)?;
        let mut v = 0u128;
        for _ in 0..bits {
            v = (v << 1) | u128::from(get_bit(self.cell.data(), self.bit));
            self.bit += 1;
        }
        Ok(v)
    }

    /// Reads a `uint8`.
    pub fn load_u8(&mut self) -> Result<u8, CellError> {
        Ok(self.load_uint(8)? as u8)
    }
    /// Reads a `uint32`.
    pub fn load_u32(&mut self) -> Result<u32, CellError> {
        Ok(self.load_uint(32)? as u32)
    }
    /// Reads a `uint64`.
    pub fn load_u64(&mut self) -> Result<u64, CellError> {
        Ok(self.load_uint(64)? as u64)
    }
    /// Reads an `int32`.
    pub fn load_i32(&mut self) -> Result<i32, CellError> {
        Ok(self.load_u32()? as i32)
    }

    /// Reads `N` whole bytes.
    pub fn load_array<const N: usize>(&mut self) -> Result<[u8; N], CellError> {
        self.need(N * 8)?;
        let mut out = [0u8; N];
        for b in out.iter_mut() {
            *b = self.load_uint(8)? as u8;
        }
        Ok(out)
    }

    /// Reads a reference.
    pub fn load_ref(&mut self) -> Result<Cell, CellError> {
        let c = self
            .cell
            .refs()
            .get(self.r)
            .ok_or(CellError::RefUnderflow)?
            .clone();
        self.r += 1;
        Ok(c)
    }

    /// Reads `Maybe ^Cell`.
    pub fn load_maybe_ref(&mut self) -> Result<Option<Cell>, CellError> {
        if self.load_bit()? {
            Ok(Some(self.load_ref()?))
        } else {
            Ok(None)
        }
    }

    /// Reads `Coins`.
    pub fn load_coins(&mut self) -> Result<Coins, CellError> {
        let len = self.load_uint(4)? as usize;
        Ok(Coins::from_nano(self.load_uint(len * 8)?))
    }

    /// Reads an `addr_std` without anycast; any other address form is a [`CellError::BadTag`].
    pub fn load_addr(&mut self) -> Result<Addr, CellError> {
        let tag = self.load_uint(2)? as u64;
        if tag != 0b10 {
            return Err(CellError::BadTag {
                what: "address: expected addr_std (10)",
                got: tag,
            });
        }
        if self.load_bit()? {
            return Err(CellError::BadTag {
                what: "address: anycast is not supported",
                got: 1,
            });
        }
        let wc = self.load_u8()? as i8;
        Ok(Addr {
            workchain: wc,
            hash: self.load_array::<32>()?,
        })
    }

    /// Fails unless every bit and reference has been read.
    pub fn ensure_empty(&self) -> Result<(), CellError> {
        if self.remaining_bits() != 0 || self.remaining_refs() != 0 {
            return Err(CellError::Trailing {
                bits: self.remaining_bits(),
                refs: self.remaining_refs(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_cell_hash_is_the_known_constant() {
        // Hash of the empty ordinary cell: sha256(0x00 0x00).
        assert_eq!(
            hex::encode(Cell::empty().hash()),
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
        );
    }

    #[test]
    fn uint_roundtrip_and_padding() {
        let mut b = CellBuilder::new();
        b.store_uint(5, 3).unwrap().store_uint(1, 7).unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.bit_len(), 3 + 7);
        assert_eq!(c.padded_data(), vec![0b1010_0000, 0b0110_0000]);
        let mut s = c.parse();
        assert_eq!(s.load_uint(3).unwrap(), 5);
        assert_eq!(s.load_uint(7).unwrap(), 1);
        s.ensure_empty().unwrap();
        assert!(matches!(
            s.load_bit(),
            Err(CellError::BitUnderflow { need: 1, have: 0 })
        ));
    }

    #[test]
    fn overflow_is_an_error() {
        let mut b = CellBuilder::new();
        b.store_bits(&[0u8; 128], 1023).unwrap();
        assert!(matches!(
            b.store_bit(true),
            Err(CellError::BitOverflow { have: 1023, add: 1 })
        ));
        for _ in 0..4 {
            b.store_ref(Cell::empty()).unwrap();
        }
        assert_eq!(
            b.store_ref(Cell::empty()).unwrap_err(),
            CellError::RefOverflow
        );
        assert!(b.store_uint(4, 2).is_err());
        assert!(CellBuilder::new().store_int(-129, 8).is_err());
        assert!(CellBuilder::new().store_int(-128, 8).is_ok());
    }

    #[test]
    fn coins_encoding() {
        let mut b = CellBuilder::new();
        b.store_coins(Coins::from_nano(0)).unwrap();
        b.store_coins(Coins::from_nano(1000)).unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.bit_len(), 4 + 4 + 16);
        let mut s = c.parse();
        assert_eq!(s.load_coins().unwrap().nano(), 0);
        assert_eq!(s.load_coins().unwrap().nano(), 1000);
        assert!(CellBuilder::new()
            .store_coins(Coins::from_nano(1 << 120))
            .is_err());
    }
}
