//! Just enough ELF for the image builder: refuse a dynamically linked binary where the guest
//! has no shared libraries (the initramfs), and read what a dynamically linked one needs at
//! run time (its interpreter, `DT_NEEDED` libraries, search paths) where a root disk is to hold
//! them. Inputs are files from the build machine and from pinned packages; malformed ones give
//! an [`ElfError`], never a panic (fuzz target `elf_parse`).

/// Errors from [`check_static`] and [`dynamic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("ELF program headers out of bounds")]
    Truncated,
    #[error("dynamically linked (has an interpreter); build with crt-static")]
    Dynamic,
    #[error("malformed {0}")]
    Malformed(&'static str),
}

use measurements::le::{u16_at, u32_at, u64_at};

/// `p_type` values read here.
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
/// `d_tag` values read here.
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// One program header (the fields used here).
#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// True if `bytes` starts like a 64-bit little-endian ELF file (what [`dynamic`] reads).
pub fn is_elf64(bytes: &[u8]) -> bool {
    bytes.len() >= 64 && &bytes[..4] == b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1
}

fn segments(bytes: &[u8]) -> Result<Vec<Segment>, ElfError> {
    if !is_elf64(bytes) {
        return Err(ElfError::NotElf64);
    }
    let phoff = u64_at(bytes, 32).ok_or(ElfError::Truncated)?;
    let phentsize = usize::from(u16_at(bytes, 54).ok_or(ElfError::Truncated)?);
    let phnum = usize::from(u16_at(bytes, 56).ok_or(ElfError::Truncated)?);
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::Truncated)?;
    if phnum > 0 && phentsize < 56 {
        // An ELF64 program header is 56 bytes.
        return Err(ElfError::Truncated);
    }
    (0..phnum)
        .map(|i| {
            let at = i
                .checked_mul(phentsize)
                .and_then(|o| o.checked_add(phoff))
                .ok_or(ElfError::Truncated)?;
            let field = |o: usize| u64_at(bytes, at.checked_add(o)?);
            Ok(Segment {
                kind: u32_at(bytes, at).ok_or(ElfError::Truncated)?,
                offset: field(8).ok_or(ElfError::Truncated)?,
                vaddr: field(16).ok_or(ElfError::Truncated)?,
                filesz: field(32).ok_or(ElfError::Truncated)?,
            })
        })
        .collect()
}

/// Ok if `bytes` is an x86-64 ELF without a `PT_INTERP` program header.
pub fn check_static(bytes: &[u8]) -> Result<(), ElfError> {
    if segments(bytes)?.iter().any(|s| s.kind == PT_INTERP) {
        return Err(ElfError::Dynamic);
    }
    Ok(())
}

/// What a dynamically linked object needs from the file system it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dynamic {
    /// `PT_INTERP`: the dynamic loader's absolute path (executables only).
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` and `DT_RUNPATH` entries (colon lists, as written).
    pub search_paths: Vec<String>,
}

/// The file bytes of segment-relative range `[offset, offset + len)`.
fn file_range<'a>(
    bytes: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], ElfError> {
    let start = usize::try_from(offset).map_err(|_| ElfError::Malformed(what))?;
    let len = usize::try_from(len).map_err(|_| ElfError::Malformed(what))?;
    start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or(ElfError::Malformed(what))
}

/// The interpreter, needed libraries and search paths of an ELF object; `None` for one without
/// `PT_INTERP` and `PT_DYNAMIC` (static executables, relocatable objects, firmware images).
pub fn dynamic(bytes: &[u8]) -> Result<Option<Dynamic>, ElfError> {
    let segs = segments(bytes)?;
    let mut out = Dynamic::default();
    if let Some(interp) = segs.iter().find(|s| s.kind == PT_INTERP) {
        let raw = file_range(bytes, interp.offset, interp.filesz, "PT_INTERP")?;
        let path = raw.split(|&b| b == 0).next().unwrap_or_default();
        let path = std::str::from_utf8(path).map_err(|_| ElfError::Malformed("PT_INTERP"))?;
        if !path.starts_with('/') {
            return Err(ElfError::Malformed("PT_INTERP (not an absolute path)"));
        }
        out.interpreter = Some(path.to_string());
    }
    let Some(dynseg) = segs.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(out.interpreter.is_some().then_some(out));
    };
    let table = file_range(bytes, dynseg.offset, dynseg.filesz, "PT_DYNAMIC")?;
    let mut entries = Vec::new();
    for entry in table.chunks_exact(16) {
        let tag = u64_at(entry, 0).ok_or(ElfError::Malformed("PT_DYNAMIC"))?;
        let val = u64_at(entry, 8).ok_or(ElfError::Malformed("PT_DYNAMIC"))?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
    }
    let value = |tag: u64| entries.iter().find(|(t, _)| *t == tag).map(|&(_, v)| v);
    let strings = match (value(DT_STRTAB), value(DT_STRSZ)) {
        (None, None) => &[][..],
        (Some(addr), Some(size)) => {
            // DT_STRTAB is an address: the loadable segment that maps it gives its file offset.
            let load = segs
                .iter()
                .find(|s| {
                    s.kind == PT_LOAD
                        && addr >= s.vaddr
                        && addr - s.vaddr < s.filesz
                        && size <= s.filesz - (addr - s.vaddr)
                })
                .ok_or(ElfError::Malformed(
                    "DT_STRTAB (not inside a loadable segment)",
                ))?;
            let offset = load
                .offset
                .checked_add(addr - load.vaddr)
                .ok_or(ElfError::Malformed("DT_STRTAB"))?;
            file_range(bytes, offset, size, "DT_STRTAB")?
        }
        _ => {
            return Err(ElfError::Malformed(
                "dynamic section (DT_STRTAB without DT_STRSZ)",
            ))
        }
    };
    let string = |offset: u64, what: &'static str| -> Result<String, ElfError> {
        let start = usize::try_from(offset).map_err(|_| ElfError::Malformed(what))?;
        let rest = strings.get(start..).ok_or(ElfError::Malformed(what))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ElfError::Malformed(what))?;
        std::str::from_utf8(&rest[..end])
            .map(str::to_string)
            .map_err(|_| ElfError::Malformed(what))
    };
    for &(tag, val) in &entries {
        match tag {
            DT_NEEDED => out.needed.push(string(val, "DT_NEEDED")?),
            DT_RPATH => out.search_paths.push(string(val, "DT_RPATH")?),
            DT_RUNPATH => out.search_paths.push(string(val, "DT_RUNPATH")?),
            _ => {}
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal dynamically linked ELF64 object: one loadable segment covering the file, an
    /// optional `PT_INTERP`, and a `PT_DYNAMIC` naming `needed` (and `runpath`) through a
    /// string table that segment maps.
    pub(crate) fn dyn_elf(interp: Option<&str>, needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
        const VADDR: u64 = 0x40_0000;
        let phnum = 2 + usize::from(interp.is_some());
        let mut tail = Vec::new();
        let base = 64 + 56 * phnum;
        let interp_at = base;
        if let Some(i) = interp {
            tail.extend_from_slice(i.as_bytes());
            tail.push(0);
        }
        let strtab_at = base + tail.len();
        let mut strtab = vec![0u8];
        let name = |s: &str, strtab: &mut Vec<u8>| {
            let at = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let mut dyns = Vec::new();
        for n in needed {
            dyns.push((DT_NEEDED, name(n, &mut strtab)));
        }
        if let Some(r) = runpath {
            dyns.push((DT_RUNPATH, name(r, &mut strtab)));
        }
        dyns.push((DT_STRTAB, VADDR + strtab_at as u64));
        dyns.push((DT_STRSZ, strtab.len() as u64));
        dyns.push((DT_NULL, 0));
        tail.extend_from_slice(&strtab);
        while (base + tail.len()) % 8 != 0 {
            tail.push(0);
        }
        let dyn_at = base + tail.len();
        for (t, v) in &dyns {
            tail.extend_from_slice(&t.to_le_bytes());
            tail.extend_from_slice(&v.to_le_bytes());
        }
        let total = (base + tail.len()) as u64;
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut ph = |kind: u32, offset: u64, filesz: u64| {
            let mut h = [0u8; 56];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[16..24].copy_from_slice(&(VADDR + offset).to_le_bytes());
            h[32..40].copy_from_slice(&filesz.to_le_bytes());
            h[40..48].copy_from_slice(&filesz.to_le_bytes());
            out.extend_from_slice(&h);
        };
        ph(PT_LOAD, 0, total);
        if let Some(i) = interp {
            ph(PT_INTERP, interp_at as u64, i.len() as u64 + 1);
        }
        ph(PT_DYNAMIC, dyn_at as u64, (dyns.len() * 16) as u64);
        out.extend_from_slice(&tail);
        out
    }

    #[test]
    fn rejects_garbage_and_dynamic() {
        assert_eq!(check_static(b"nope"), Err(ElfError::NotElf64));
        let mut elf = vec![0u8; 64 + 56 * 2];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(check_static(&elf), Ok(()));
        assert_eq!(dynamic(&elf), Ok(None));
        elf[120..124].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(check_static(&elf), Err(ElfError::Dynamic));
        elf[120..124].copy_from_slice(&1u32.to_le_bytes());
        elf[56..58].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(check_static(&elf), Err(ElfError::Truncated));
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        elf[54..56].copy_from_slice(&8u16.to_le_bytes());
        assert_eq!(check_static(&elf), Err(ElfError::Truncated));
    }

    #[test]
    fn reads_interpreter_needed_and_runpath() {
        let elf = dyn_elf(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libm.so.6", "libc.so.6"],
            Some("$ORIGIN/../lib"),
        );
        assert_eq!(check_static(&elf), Err(ElfError::Dynamic));
        let d = dynamic(&elf).unwrap().unwrap();
        assert_eq!(
            d.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(d.needed, ["libm.so.6", "libc.so.6"]);
        assert_eq!(d.search_paths, ["$ORIGIN/../lib"]);
        // A library: no interpreter, its own needs.
        let lib = dynamic(&dyn_elf(None, &["libc.so.6"], None))
            .unwrap()
            .unwrap();
        assert_eq!(
            (lib.interpreter, lib.needed),
            (None, vec!["libc.so.6".to_string()])
        );
        assert!(check_static(&dyn_elf(None, &[], None)).is_ok());
    }

    #[test]
    fn malformed_dynamic_sections_are_named() {
        let good = dyn_elf(Some("/lib64/ld.so"), &["libc.so.6"], None);
        // Its dynamic table ends the file: DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_NULL.
        let value_at = |k: usize| good.len() - 16 * (4 - k) + 8;
        let set = |k: usize, v: u64| {
            let mut e = good.clone();
            e[value_at(k)..value_at(k) + 8].copy_from_slice(&v.to_le_bytes());
            dynamic(&e)
        };
        // The string table's address outside every loadable segment.
        assert!(matches!(set(1, 0x10), Err(ElfError::Malformed(w)) if w.starts_with("DT_STRTAB")));
        // A DT_NEEDED offset past the table.
        assert_eq!(set(0, 1000), Err(ElfError::Malformed("DT_NEEDED")));
        // A table size that cuts the last name's NUL, and one past the segment.
        let size = u64_at(&good, value_at(2)).unwrap();
        assert_eq!(set(2, size - 1), Err(ElfError::Malformed("DT_NEEDED")));
        assert!(
            matches!(set(2, 1 << 20), Err(ElfError::Malformed(w)) if w.starts_with("DT_STRTAB"))
        );
        // A relative interpreter, and one running off the file.
        let e = dyn_elf(Some("ld.so"), &[], None);
        assert!(matches!(dynamic(&e), Err(ElfError::Malformed(w)) if w.starts_with("PT_INTERP")));
        let mut e = good.clone();
        let filesz = 64 + 56 + 32;
        e[filesz..filesz + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(dynamic(&e), Err(ElfError::Malformed("PT_INTERP")));
        // A loadable segment whose file offset is near 2^64 (found by the elf_parse fuzz
        // target: the string table's offset overflowed).
        let mut e = good.clone();
        e[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert_eq!(dynamic(&e), Err(ElfError::Malformed("DT_STRTAB")));
        // Every truncation of a good object is an error or a clean answer, never a panic.
        for n in 0..good.len() {
            let _ = dynamic(&good[..n]);
        }
    }

    /// Against binutils' reader on the build machine's own programs and libraries.
    #[test]
    fn agrees_with_readelf_on_system_files() {
        let files = [
            "/usr/bin/python3",
            "/usr/bin/strip",
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ];
        let mut compared = 0;
        for f in files {
            let Ok(bytes) = std::fs::read(f) else {
                continue;
            };
            let Ok(out) = std::process::Command::new("readelf")
                .args(["-d", "-l", "-W", f])
                .output()
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let needed: Vec<String> = text
                .lines()
                .filter(|l| l.contains("(NEEDED)"))
                .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
                .collect();
            let interp = text
                .lines()
                .find_map(|l| l.split("[Requesting program interpreter: ").nth(1))
                .map(|s| s.trim_end_matches(']').to_string());
            let d = dynamic(&bytes).unwrap().unwrap();
            assert_eq!(d.needed, needed, "{f}");
            assert_eq!(d.interpreter, interp, "{f}");
            compared += 1;
        }
        eprintln!("compared {compared} system files with readelf");
        // binutils is a build requirement (strip): the comparison must have happened.
        assert!(compared > 0, "none of {files:?} could be compared");
    }
}
