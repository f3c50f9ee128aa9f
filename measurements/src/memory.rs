//! Guest memory sizes, the one syntax every cocoon tool accepts (`cocoon-image build --memory`,
//! `cocoon-measure compute --memory`, `memory = "…"` in a `cocoon-host` VM config). The size
//! feeds the measurements (TDVF's memory map, the simulated registers), so the same text must
//! mean the same number of bytes everywhere.
//!
//! Syntax: a decimal number followed by a unit, `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`
//! (letters case-insensitive; binary multiples). A bare number is refused — QEMU's `-m` reads it
//! as MiB, other tools as bytes, so it is ambiguous — and so is zero.

/// A memory size that does not follow the syntax above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory size {given:?}: {reason} (expected e.g. 2G, 512M or 4096MiB)")]
pub struct MemorySizeError {
    /// The text given (at most 32 characters of it).
    pub given: String,
    pub reason: &'static str,
}

/// Parses a memory size (see the module docs) into bytes.
pub fn parse_memory_size(s: &str) -> Result<u64, MemorySizeError> {
    let err = |reason| MemorySizeError {
        given: s.chars().take(32).collect(),
        reason,
    };
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = (&t[..digits], &t[digits..]);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" => return Err(err("no unit")),
        "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(err("unknown unit")),
    };
    let n: u64 = num.parse().map_err(|_| err("number out of range"))?;
    match n.checked_mul(1u64 << shift) {
        Some(0) => Err(err("zero")),
        Some(bytes) => Ok(bytes),
        None => Err(err("out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax_one_meaning() {
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory_size("2g"), Ok(2 << 30));
        assert_eq!(parse_memory_size(" 512M "), Ok(512 << 20));
        assert_eq!(parse_memory_size("4096MiB"), Ok(4 << 30));
        assert_eq!(parse_memory_size("4096b"), Ok(4096));
        assert_eq!(parse_memory_size("64k"), Ok(64 << 10));
        assert_eq!(parse_memory_size("1T"), Ok(1 << 40));
        for (bad, reason) in [
            ("2048", "no unit"),
            ("", "no number"),
            ("G", "no number"),
            ("-1G", "no number"),
            ("4 G", "unknown unit"),
            ("2X", "unknown unit"),
            ("0M", "zero"),
            ("99999999999999T", "out of range"),
            ("99999999999999999999999G", "number out of range"),
            ("2\u{e9}", "unknown unit"),
        ] {
            assert_eq!(parse_memory_size(bad).unwrap_err().reason, reason, "{bad}");
        }
    }
}
