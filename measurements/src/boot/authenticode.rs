//! PE/COFF Authenticode image digest, computed the way TDVF measures an EFI application.
//!
//! The algorithm is the one of the Microsoft PE/COFF specification ("Calculating the PE Image
//! Hash") as implemented by edk2 `MeasurePeImageAndExtend` (OvmfPkg/Tcg/TdTcg2Dxe/
//! MeasureBootPeCoff.c), which produces the digest of the `EV_EFI_BOOT_SERVICES_APPLICATION`
//! event in RTMR1:
//!
//! 1. the headers from offset 0 to `SizeOfHeaders`, leaving out the 4-byte `CheckSum` field and,
//!    when the optional header has a certificate-table entry (`NumberOfRvaAndSizes > 4`), that
//!    8-byte data-directory entry;
//! 2. the raw data of every section with `SizeOfRawData > 0`, in ascending `PointerToRawData`
//!    order;
//! 3. when the file is longer than the bytes hashed so far (`SizeOfHeaders` plus the section
//!    sizes), the data from that offset up to `file length - certificate table size`.
//!
//! Nothing is padded: unlike some signing tools, the firmware hashes exactly the bytes it has.
//! Inputs are untrusted bytes; every offset is bounds-checked and an image the firmware would
//! not measure the same way is an error, never a guess.

use std::ops::Range;

use sha2::{Digest, Sha384};

use crate::registers::Sha384 as Sha384Value;

/// `IMAGE_DIRECTORY_ENTRY_SECURITY`: index of the certificate-table data directory.
const SECURITY_DIRECTORY: u32 = 4;
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;
const SECTION_HEADER_LEN: usize = 40;

/// A PE/COFF image that cannot be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("pe image truncated at {field} (offset {offset}): need {need} bytes, have {have}")]
    Truncated {
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("no pe signature at offset {offset:#x}")]
    NoPeSignature { offset: usize },
    #[error("unknown optional header magic {0:#06x} (expected 0x10b or 0x20b)")]
    OptionalHeaderMagic(u16),
    #[error("pe field {field} is {value:#x}, outside the image (file length {file_len:#x})")]
    OutOfBounds {
        field: &'static str,
        value: u64,
        file_len: usize,
    },
    #[error(
        "section {index} raw data {offset:#x}+{size:#x} runs past the end of the image ({file_len:#x})"
    )]
    SectionOutOfBounds {
        index: usize,
        offset: u32,
        size: u32,
        file_len: usize,
    },
    #[error(
        "certificate table of {cert_size:#x} bytes does not fit after the {hashed:#x} hashed bytes of a {file_len:#x}-byte image"
    )]
    CertificateTable {
        cert_size: u32,
        hashed: u64,
        file_len: usize,
    },
}

/// The byte ranges of a PE image that its Authenticode digest covers, in hashing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedRanges {
    /// Ranges of the file, hashed in this order (sections may overlap headers or each other: the
    /// firmware hashes them as they are).
    pub ranges: Vec<Range<usize>>,
    /// Offset of the 4-byte `CheckSum` field (excluded).
    pub checksum_offset: usize,
    /// Offset of the 8-byte certificate-table directory entry, when present (excluded).
    pub cert_dir_offset: Option<usize>,
}

impl HashedRanges {
    /// Whether byte `offset` of the file is covered by the digest.
    pub fn covers(&self, offset: usize) -> bool {
        self.ranges.iter().any(|r| r.contains(&offset))
    }
}

fn read<const N: usize>(b: &[u8], offset: usize, field: &'static str) -> Result<[u8; N], PeError> {
    offset
        .checked_add(N)
        .and_then(|end| b.get(offset..end))
        .map(|s| s.try_into().expect("slice of length N"))
        .ok_or(PeError::Truncated {
            field,
            offset,
            need: N,
            have: b.len().saturating_sub(offset),
        })
}

fn u16_at(b: &[u8], offset: usize, field: &'static str) -> Result<u16, PeError> {
    read::<2>(b, offset, field).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], offset: usize, field: &'static str) -> Result<u32, PeError> {
    read::<4>(b, offset, field).map(u32::from_le_bytes)
}

/// Computes which bytes of `pe` the Authenticode digest covers (see the module docs).
pub fn hashed_ranges(pe: &[u8]) -> Result<HashedRanges, PeError> {
    let len = pe.len();
    // edk2 accepts an image without a DOS stub: the PE header is then at offset 0.
    let pe_offset = if pe.starts_with(b"MZ") {
        u32_at(pe, 0x3c, "e_lfanew")? as usize
    } else {
        0
    };
    if read::<4>(pe, pe_offset, "pe signature")? != *b"PE\0\0" {
        return Err(PeError::NoPeSignature { offset: pe_offset });
    }
    let coff = pe_offset + 4;
    let sections = u16_at(pe, coff + 2, "NumberOfSections")? as usize;
    let opt_size = u16_at(pe, coff + 16, "SizeOfOptionalHeader")? as usize;
    let opt = coff + 20;
    let magic = u16_at(pe, opt, "optional header magic")?;
    let (rva_count_offset, data_dir) = match magic {
        PE32_MAGIC => (opt + 92, opt + 96),
        PE32_PLUS_MAGIC => (opt + 108, opt + 112),
        other => return Err(PeError::OptionalHeaderMagic(other)),
    };
    let checksum_offset = opt + 64;
    let size_of_headers = u32_at(pe, opt + 60, "SizeOfHeaders")? as usize;
    let rva_count = u32_at(pe, rva_count_offset, "NumberOfRvaAndSizes")?;
    let cert_dir_offset = (rva_count > SECURITY_DIRECTORY).then_some(data_dir + 8 * 4);
    let headers_end_min = cert_dir_offset.map_or(checksum_offset + 4, |c| c + 8);
    if size_of_headers > len || size_of_headers < headers_end_min {
        return Err(PeError::OutOfBounds {
            field: "SizeOfHeaders",
            value: size_of_headers as u64,
            file_len: len,
        });
    }

    let mut ranges = Vec::with_capacity(sections + 4);
    ranges.push(0..checksum_offset);
    match cert_dir_offset {
        Some(c) => {
            ranges.push(checksum_offset + 4..c);
            ranges.push(c + 8..size_of_headers);
        }
        None => ranges.push(checksum_offset + 4..size_of_headers),
    }
    let mut hashed = size_of_headers as u64;

    let table = opt + opt_size;
    let mut raw = Vec::with_capacity(sections);
    for index in 0..sections {
        let h = table + index * SECTION_HEADER_LEN;
        let size = u32_at(pe, h + 16, "SizeOfRawData")?;
        let offset = u32_at(pe, h + 20, "PointerToRawData")?;
        raw.push((index, offset, size));
    }
    // A stable sort keeps header order for equal offsets, as edk2's insertion sort does.
    raw.sort_by_key(|&(_, offset, _)| offset);
    for (index, offset, size) in raw {
        if size == 0 {
            continue;
        }
        let end = offset as u64 + size as u64;
        if end > len as u64 {
            return Err(PeError::SectionOutOfBounds {
                index,
                offset,
                size,
                file_len: len,
            });
        }
        ranges.push(offset as usize..end as usize);
        hashed += size as u64;
    }

    let cert_size = match cert_dir_offset {
        Some(c) => u32_at(pe, c + 4, "certificate table size")?,
        None => 0,
    };
    if (len as u64) > hashed {
        let tail_end = (len as u64).checked_sub(cert_size as u64);
        match tail_end {
            Some(end) if end > hashed => ranges.push(hashed as usize..end as usize),
            Some(end) if end == hashed => {}
            _ => {
                return Err(PeError::CertificateTable {
                    cert_size,
                    hashed,
                    file_len: len,
                })
            }
        }
    }
    ranges.retain(|r| !r.is_empty());
    Ok(HashedRanges {
        ranges,
        checksum_offset,
        cert_dir_offset,
    })
}

/// Authenticode digest of `pe` with any hash function (SHA-256 lets a test compare with the
/// digest inside a signed image).
pub fn authenticode_digest<D: Digest>(pe: &[u8]) -> Result<sha2::digest::Output<D>, PeError> {
    let layout = hashed_ranges(pe)?;
    let mut hasher = D::new();
    for r in layout.ranges {
        hasher.update(&pe[r]);
    }
    Ok(hasher.finalize())
}

/// Authenticode SHA-384 of a PE/COFF image: the digest TDVF records for an EFI application.
pub fn authenticode_sha384(pe: &[u8]) -> Result<Sha384Value, PeError> {
    Ok(authenticode_digest::<Sha384>(pe)?.into())
}
