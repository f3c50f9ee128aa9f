//! Bag of cells (BOC) serialization, `serialized_boc#b5ee9c72` (TON whitepaper / tvm.pdf,
//! "crypto/tl/boc.tlb"), single root.
//!
//! The encoder writes what `@ton/core`'s `Cell.toBoc()` writes by default: no index, CRC32C
//! present, no cache bits, minimal `size`/`off_bytes`, cells deduplicated by hash and ordered by
//! the same topological sort (reverse post-order, references visited last to first), so golden
//! vectors compare byte for byte. The decoder accepts any single-root ordinary-cell BOC with the
//! generic magic, with or without index and CRC, and treats the input as hostile: every length is
//! checked against the input before allocating, references must point forward, no trailing bytes.

use std::collections::HashMap;

use crate::cell::{Cell, CellError, MAX_DEPTH};

const MAGIC: [u8; 4] = [0xb5, 0xee, 0x9c, 0x72];

/// An error while decoding a BOC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BocError {
    /// Input ended early.
    #[error("boc truncated: need {need} bytes at offset {at}, input has {len}")]
    Truncated { at: usize, need: usize, len: usize },
    /// Not the generic BOC magic.
    #[error("boc magic: expected b5ee9c72, got {got}")]
    Magic { got: String },
    /// A header field out of range.
    #[error("boc header: {field} = {value} is invalid")]
    Header { field: &'static str, value: u64 },
    /// CRC32C mismatch.
    #[error("boc crc32c mismatch: expected {expected:08x}, got {got:08x}")]
    Crc { expected: u32, got: u32 },
    /// A cell descriptor that is not an ordinary level-0 cell.
    #[error("boc cell {index}: {reason}")]
    BadCell { index: usize, reason: &'static str },
    /// A reference to itself or an earlier cell, or out of range.
    #[error("boc cell {index}: reference to cell {target} is not forward or out of range")]
    BadRef { index: usize, target: u64 },
    /// Bytes after the end of the BOC.
    #[error("boc has {extra} trailing bytes")]
    Trailing { extra: usize },
    /// Invalid hex text.
    #[error("boc hex: {0}")]
    Hex(String),
    /// A cell-level error (depth).
    #[error("boc cell: {0}")]
    Cell(#[from] CellError),
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

fn bytes_for(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits as usize).div_ceil(8).max(1)
}

fn push_be(out: &mut Vec<u8>, v: usize, n: usize) {
    for i in (0..n).rev() {
        out.push((v >> (8 * i)) as u8);
    }
}

/// Topological order as in `@ton/core`: reverse post-order of a depth-first walk from the root
/// that visits references last to first, each distinct cell once; the root comes first.
fn order(root: &Cell) -> Vec<Cell> {
    // Iterative post-order DFS from the root, references visited last to first.
    let mut done: HashMap<[u8; 32], ()> = HashMap::new();
    let mut sorted: Vec<Cell> = Vec::new();
    let mut stack: Vec<(Cell, usize)> = vec![(root.clone(), 0)];
    while let Some((cell, i)) = stack.pop() {
        let n = cell.refs().len();
        if i < n {
            let child = cell.refs()[n - 1 - i].clone();
            stack.push((cell, i + 1));
            if !done.contains_key(&child.hash()) {
                stack.push((child, 0));
            }
        } else if done.insert(cell.hash(), ()).is_none() {
            sorted.push(cell);
        }
    }
    sorted.reverse();
    sorted
}

/// Serializes one root: no index, with CRC32C (the `@ton/core` default).
pub fn encode(root: &Cell) -> Vec<u8> {
    let cells = order(root);
    let index: HashMap<[u8; 32], usize> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash(), i))
        .collect();
    let size = bytes_for(cells.len());
    let mut body = Vec::new();
    for c in &cells {
        let (d1, d2) = c.descriptors();
        body.push(d1);
        body.push(d2);
        body.extend_from_slice(&c.padded_data());
        for r in c.refs() {
            push_be(&mut body, index[&r.hash()], size);
        }
    }
    let off = bytes_for(body.len());
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(&MAGIC);
    out.push(0x40 | size as u8);
    out.push(off as u8);
    push_be(&mut out, cells.len(), size);
    push_be(&mut out, 1, size);
    push_be(&mut out, 0, size);
    push_be(&mut out, body.len(), off);
    push_be(&mut out, 0, size);
    out.extend_from_slice(&body);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Serializes to lowercase hex.
pub fn encode_hex(root: &Cell) -> String {
    hex::encode(encode(root))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BocError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(BocError::Truncated {
                at: self.at,
                need: n,
                len: self.b.len(),
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Result<u64, BocError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    }
}

/// Decodes a single-root BOC.
pub fn decode(bytes: &[u8]) -> Result<Cell, BocError> {
    let mut r = Reader { b: bytes, at: 0 };
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(BocError::Magic {
            got: hex::encode(magic),
        });
    }
    let flags = r.take(1)?[0];
    let has_idx = flags & 0x80 != 0;
    let has_crc = flags & 0x40 != 0;
    let has_cache = flags & 0x20 != 0;
    if flags & 0x18 != 0 {
        return Err(BocError::Header {
            field: "flags",
            value: u64::from(flags),
        });
    }
    if has_cache && !has_idx {
        return Err(BocError::Header {
            field: "has_cache_bits without index",
            value: 1,
        });
    }
    let size = usize::from(flags & 7);
    if !(1..=4).contains(&size) {
        return Err(BocError::Header {
            field: "size",
            value: size as u64,
        });
    }
    let off = usize::from(r.take(1)?[0]);
    if !(1..=8).contains(&off) {
        return Err(BocError::Header {
            field: "off_bytes",
            value: off as u64,
        });
    }
    let cells = r.uint(size)?;
    let roots = r.uint(size)?;
    let absent = r.uint(size)?;
    let total = r.uint(off)?;
    if roots != 1 {
        return Err(BocError::Header {
            field: "roots",
            value: roots,
        });
    }
    if absent != 0 {
        return Err(BocError::Header {
            field: "absent",
            value: absent,
        });
    }
    // Each cell takes at least 2 bytes: bounds the allocation by the input length.
    if cells == 0 || cells.saturating_mul(2) > total || total > bytes.len() as u64 {
        return Err(BocError::Header {
            field: "cells",
            value: cells,
        });
    }
    let cells = cells as usize;
    let root_index = r.uint(size)?;
    if root_index >= cells as u64 {
        return Err(BocError::Header {
            field: "root index",
            value: root_index,
        });
    }
    if has_idx {
        r.take(cells.saturating_mul(off))?;
    }
    let data = r.take(total as usize)?;
    if has_crc {
        let end = r.at;
        let got = u32::from_le_bytes(r.take(4)?.try_into().map_err(|_| BocError::Truncated {
            at: end,
            need: 4,
            len: bytes.len(),
        })?);
        let expected = crc32c(&bytes[..end]);
        if got != expected {
            return Err(BocError::Crc { expected, got });
        }
    }
    if r.at != bytes.len() {
        return Err(BocError::Trailing {
            extra: bytes.len() - r.at,
        });
    }
    // Parse raw cells.
    struct Raw<'a> {
        data: &'a [u8],
        bits: usize,
        refs: Vec<usize>,
    }
    let mut raws: Vec<Raw<'_>> = Vec::with_capacity(cells);
    let mut dr = Reader { b: data, at: 0 };
    for index in 0..cells {
        let d = dr.take(2)?;
        let (d1, d2) = (d[0], d[1]);
        let nrefs = usize::from(d1 & 7);
        if nrefs > 4 {
            return Err(BocError::BadCell {
                index,
                reason: "more than 4 references",
            });
        }
        if d1 & 8 != 0 {
            return Err(BocError::BadCell {
                index,
                reason: "exotic cells are not supported",
            });
        }
        if d1 & 16 != 0 {
            return Err(BocError::BadCell {
                index,
                reason: "stored hashes are not supported",
            });
        }
        if d1 >> 5 != 0 {
            return Err(BocError::BadCell {
                index,
                reason: "nonzero level",
            });
        }
        let len = usize::from(d2).div_ceil(2);
        if len > 128 {
            return Err(BocError::BadCell {
                index,
                reason: "more than 1023 bits",
            });
        }
        let cd = dr.take(len)?;
        let bits = if d2 & 1 == 1 {
            let last = cd[len - 1];
            if last == 0 {
                return Err(BocError::BadCell {
                    index,
                    reason: "missing completion tag",
                });
            }
            len * 8 - last.trailing_zeros() as usize - 1
        } else {
            len * 8
        };
        if bits > 1023 {
            return Err(BocError::BadCell {
                index,
                reason: "more than 1023 bits",
            });
        }
        let mut refs = Vec::with_capacity(nrefs);
        for _ in 0..nrefs {
            let t = dr.uint(size)?;
            if t <= index as u64 || t >= cells as u64 {
                return Err(BocError::BadRef { index, target: t });
            }
            refs.push(t as usize);
        }
        raws.push(Raw {
            data: cd,
            bits,
            refs,
        });
    }
    if dr.at != data.len() {
        return Err(BocError::Trailing {
            extra: data.len() - dr.at,
        });
    }
    // Build from the last cell backwards: references always point forward.
    let mut built: Vec<Option<Cell>> = vec![None; cells];
    for i in (0..cells).rev() {
        let raw = &raws[i];
        let mut refs = Vec::with_capacity(raw.refs.len());
        for &t in &raw.refs {
            // Forward references were built in earlier iterations.
            let c = built[t].clone().ok_or(BocError::BadRef {
                index: i,
                target: t as u64,
            })?;
            refs.push(c);
        }
        let c = Cell::new(raw.data, raw.bits, refs)?;
        if c.depth() > MAX_DEPTH {
            return Err(BocError::Cell(CellError::DepthOverflow {
                depth: c.depth(),
            }));
        }
        built[i] = Some(c);
    }
    built[root_index as usize].clone().ok_or(BocError::Header {
        field: "root index",
        value: root_index,
    })
}

/// Decodes a BOC given as hex (surrounding whitespace ignored).
pub fn decode_hex(text: &str) -> Result<Cell, BocError> {
    let bytes = hex::decode(text.trim()).map_err(|e| BocError::Hex(e.to_string()))?;
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::CellBuilder;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn roundtrip_shared_cells() {
        let leaf = {
            let mut b = CellBuilder::new();
            b.store_uint(0xabc, 12).unwrap();
            b.build().unwrap()
        };
        let mid = {
            let mut b = CellBuilder::new();
            b.store_bit(true).unwrap().store_ref(leaf.clone()).unwrap();
            b.build().unwrap()
        };
        let mut b = CellBuilder::new();
        b.store_ref(mid).unwrap().store_ref(leaf).unwrap();
        let root = b.build().unwrap();
        let bytes = encode(&root);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.hash(), root.hash());
        assert_eq!(encode(&back), bytes);
    }

    #[test]
    fn rejects_crc_and_trailing() {
        let bytes = encode(&Cell::empty());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(decode(&bad), Err(BocError::Crc { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(BocError::Trailing { extra: 1 })
        ));
        assert!(matches!(
            decode(&bytes[..3]),
            Err(BocError::Truncated { .. })
        ));
    }
}
