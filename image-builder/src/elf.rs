//! Just enough ELF to refuse a dynamically linked binary: the guest has no shared libraries.

/// Errors from [`check_static`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("ELF program headers out of bounds")]
    Truncated,
    #[error("dynamically linked (has an interpreter); build with crt-static")]
    Dynamic,
}

/// Ok if `bytes` is an x86-64 ELF without a `PT_INTERP` program header.
pub fn check_static(bytes: &[u8]) -> Result<(), ElfError> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().map_err(|_| ElfError::Truncated)?);
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::Truncated)?;
    if phentsize < 4 {
        return Err(ElfError::Truncated);
    }
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .filter(|&a| a + 4 <= bytes.len())
            .ok_or(ElfError::Truncated)?;
        let p_type = u32::from_le_bytes(
            bytes[at..at + 4]
                .try_into()
                .map_err(|_| ElfError::Truncated)?,
        );
        if p_type == 3 {
            return Err(ElfError::Dynamic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        elf[120..124].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(check_static(&elf), Err(ElfError::Dynamic));
        elf[120..124].copy_from_slice(&1u32.to_le_bytes());
        elf[56..58].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(check_static(&elf), Err(ElfError::Truncated));
    }
}
