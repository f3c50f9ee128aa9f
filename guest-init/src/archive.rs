//! The host-provided config archive: a flat ustar archive on the `cocoon-config` disk.
//!
//! The bytes are untrusted (the host writes them) but measured: cocoon-init hashes the whole
//! disk and extends RTMR3 *before* calling [`parse`]. The parser is deliberately strict and
//! small: regular files only, flat names (`[A-Za-z0-9._-]`, no `/`, not `.`/`..`), at most
//! [`MAX_FILES`] files of at most [`MAX_FILE_SIZE`] bytes, no duplicate names; the archive ends
//! at the first all-zero header block (anything after it, such as disk padding, is ignored but
//! still covered by the measurement).

use std::collections::BTreeMap;

/// Most files a config archive may hold (the host–guest contract).
pub const MAX_FILES: usize = protocol::guest::CONFIG_MAX_FILES;
/// Largest file in a config archive (the host–guest contract).
pub const MAX_FILE_SIZE: u64 = protocol::guest::CONFIG_MAX_FILE_SIZE;

const BLOCK: usize = 512;

/// Errors from [`parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("config archive truncated at offset {offset}")]
    Truncated { offset: usize },
    #[error("config archive header at offset {offset}: bad checksum")]
    Checksum { offset: usize },
    #[error("config archive header at offset {offset}: bad {field} field")]
    Field { offset: usize, field: &'static str },
    #[error("config archive entry {name:?}: only regular files are allowed (type {kind:?})")]
    NotAFile { name: String, kind: char },
    #[error("config archive entry name {0:?} is not a flat file name")]
    BadName(String),
    #[error("config archive entry {name:?} is {size} bytes (limit {MAX_FILE_SIZE})")]
    TooLarge { name: String, size: u64 },
    #[error("config archive has more than {MAX_FILES} files")]
    TooManyFiles,
    #[error("config archive has {0:?} twice")]
    Duplicate(String),
    #[error("config archive has no end-of-archive block")]
    NoEnd,
}

/// Parses a config archive into file name → contents.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    let mut files = BTreeMap::new();
    let mut off = 0usize;
    loop {
        let header = bytes
            .get(off..off + BLOCK)
            .ok_or(ArchiveError::Truncated { offset: off })?;
        if header.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        check_sum(header, off)?;
        let name = c_str(&header[0..100]).ok_or(ArchiveError::Field {
            offset: off,
            field: "name",
        })?;
        let name = name.strip_prefix("./").unwrap_or(name).to_string();
        let prefix = c_str(&header[345..500]).unwrap_or("");
        if !prefix.is_empty() || !flat_name(&name) {
            return Err(ArchiveError::BadName(format!("{prefix}{name}")));
        }
        let size = octal(&header[124..136]).ok_or(ArchiveError::Field {
            offset: off,
            field: "size",
        })?;
        let kind = header[156];
        if kind != b'0' && kind != 0 {
            return Err(ArchiveError::NotAFile {
                name,
                kind: kind as char,
            });
        }
        if size > MAX_FILE_SIZE {
            return Err(ArchiveError::TooLarge { name, size });
        }
        let start = off + BLOCK;
        let len = size as usize;
        let data = bytes
            .get(start..start + len)
            .ok_or(ArchiveError::Truncated { offset: start })?;
        if files.len() == MAX_FILES {
            return Err(ArchiveError::TooManyFiles);
        }
        if files.insert(name.clone(), data.to_vec()).is_some() {
            return Err(ArchiveError::Duplicate(name));
        }
        off = start + len.div_ceil(BLOCK) * BLOCK;
        if off >= bytes.len() {
            return Err(ArchiveError::NoEnd);
        }
    }
}

fn flat_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 99
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn c_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok()
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = c_str(field)?.trim_matches(|c| c == ' ');
    if s.is_empty() || s.len() > 11 {
        return None;
    }
    u64::from_str_radix(s, 8).ok()
}

fn check_sum(header: &[u8], offset: usize) -> Result<(), ArchiveError> {
    let stated = octal(&header[148..156]).ok_or(ArchiveError::Field {
        offset,
        field: "checksum",
    })?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    if sum == stated {
        Ok(())
    } else {
        Err(ArchiveError::Checksum { offset })
    }
}

/// Writes an archive [`parse`] accepts (tests, and the format's executable definition).
pub fn write(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("init.toml".to_string(), b"role = \"worker\"\n".to_vec()),
            ("service.toml".to_string(), vec![b'x'; 1000]),
        ])
    }

    #[test]
    fn round_trip() {
        let bytes = write(&sample());
        assert_eq!(parse(&bytes).unwrap(), sample());
        let mut padded = bytes.clone();
        padded.resize(64 * 1024, 0);
        assert_eq!(parse(&padded).unwrap(), sample());
    }

    #[test]
    fn rejects_paths_and_links() {
        for bad in ["../etc", "a/b", ".", ".."] {
            let h = write(&BTreeMap::from([(bad.to_string(), vec![])]));
            assert!(matches!(parse(&h), Err(ArchiveError::BadName(_))), "{bad}");
        }
        let mut link = write(&BTreeMap::from([("a".to_string(), vec![])]));
        link[156] = b'2';
        link[148..156].fill(b' ');
        let sum: u64 = link[..512].iter().map(|&b| b as u64).sum();
        link[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        assert_eq!(
            parse(&link),
            Err(ArchiveError::NotAFile {
                name: "a".into(),
                kind: '2'
            })
        );
    }

    #[test]
    fn never_panics_on_flips_and_truncation() {
        let bytes = write(&sample());
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut]);
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let _ = parse(&b);
        }
    }
}
