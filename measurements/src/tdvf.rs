//! Expected MRTD of a TD booted from a TDVF firmware image (OVMF built with Intel TDX support).
//!
//! Pure: [`parse_metadata`] and [`compute_mrtd`] take the firmware bytes and return typed results;
//! they never panic, whatever the bytes. The firmware file is untrusted input (a host or an image
//! publisher supplies it); the value computed here is only ever compared with the MRTD of a
//! verified quote, so a wrong firmware gives a mismatch, never a pass.
//!
//! # Where the metadata is
//!
//! * OVMF GUIDed table at the end of the image (edk2 `OvmfPkg/ResetVector`, QEMU
//!   `hw/i386/pc_sysfw_ovmf.c`): the footer GUID [`OVMF_TABLE_FOOTER_GUID`] occupies the 16 bytes
//!   that end 32 bytes before the end of the image, preceded by a `u16` total table length that
//!   includes the footer's own 18 bytes. Entries before it are `data || u16 length || GUID`,
//!   walked backwards from the footer; `length` covers the whole entry.
//! * The entry [`TDX_METADATA_OFFSET_GUID`] holds a `u32`: the distance from the end of the image
//!   to the TDVF metadata descriptor.
//! * Descriptor (Intel TDX Virtual Firmware Design Guide, "TDVF Metadata"): signature `"TDVF"`,
//!   `u32` length (16 + 32 × sections), `u32` version (1), `u32` number of sections, followed by
//!   32-byte sections: `DataOffset u32, RawDataSize u32, MemoryAddress u64, MemoryDataSize u64,
//!   Type u32, Attributes u32` (bit 0 MR.EXTEND, bit 1 PAGE.AUG).
//!
//! # What the TDX module hashes (Intel TDX Module Base Architecture spec, "MRTD")
//!
//! MRTD is one SHA-384 over, in call order:
//! * each TDH.MEM.PAGE.ADD of a 4 KiB page at GPA `g`: 128 bytes
//!   `"MEM.PAGE.ADD"` zero-padded to 16 || `g` as u64 LE || 104 zero bytes;
//! * each TDH.MR.EXTEND of a 256-byte chunk at GPA `g`: 128 bytes `"MR.EXTEND"` zero-padded to 16
//!   || `g` as u64 LE || 104 zero bytes, then the 256 bytes of the chunk.
//!
//! Every section except PAGE.AUG ones (PermMem) is page-added, TD_HOB and TempMem included;
//! MR.EXTEND sections are also extended, page by page, 16 chunks per page, from the image bytes
//! at `DataOffset`. The order of the calls depends on the VMM ([`PageAddOrder`]). The rules per
//! section type, and which QEMU/KVM does which order, are in `docs/mrtd.md`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha384 as Sha384Hasher};

use crate::le::{u16_at, u32_at, u64_at};
use crate::registers::Sha384;

/// The footer GUID of the OVMF GUIDed table, `96b582de-1fb2-45f7-baea-a366c55a082d`, as stored
/// (mixed-endian UEFI encoding).
pub const OVMF_TABLE_FOOTER_GUID: [u8; 16] = [
    0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d,
];

/// The GUID of the table entry that locates the TDVF metadata,
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`, as stored.
pub const TDX_METADATA_OFFSET_GUID: [u8; 16] = [
    0x35, 0x65, 0x7a, 0xe4, 0x4a, 0x98, 0x98, 0x47, 0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2,
];

/// Bytes after the table footer GUID at the end of the image.
pub const BYTES_AFTER_TABLE_FOOTER: usize = 32;
/// Length field plus GUID of one table entry.
const ENTRY_HEADER: usize = 18;
/// Size of the TDVF descriptor without its sections.
const DESCRIPTOR_LEN: usize = 16;
/// Size of one TDVF section entry.
const SECTION_LEN: usize = 32;
/// `"TDVF"`.
const TDVF_SIGNATURE: [u8; 4] = *b"TDVF";

/// TDX page size: MemoryAddress, MemoryDataSize and (for sections with raw data) DataOffset are
/// multiples of it.
pub const PAGE_SIZE: u64 = 4096;
/// TDH.MR.EXTEND measures 256 bytes per call.
pub const MR_EXTEND_CHUNK: usize = 256;
/// Section attribute bit 0: the VMM measures the section's pages with TDH.MR.EXTEND.
pub const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute bit 1: the VMM adds the pages with TDH.MEM.PAGE.AUG after the TD starts, so
/// they are not part of MRTD.
pub const ATTR_PAGE_AUG: u32 = 1 << 1;

/// Most sections accepted (real OVMF has 6; td-shim fewer than 10).
pub const MAX_SECTIONS: u32 = 64;
/// Most 4 KiB pages the sections may page-add in total (256 MiB; a 2 MiB OVMF adds 538 pages,
/// a 4 MiB one about 1050). Bounds the work one untrusted image can cause: extended pages are a
/// subset of the added ones.
pub const MAX_PAGES: u64 = 1 << 16;
/// Guest physical addresses must stay below 2^52 (the largest TDX GPA width).
pub const MAX_GPA: u64 = 1 << 52;

/// The order in which the VMM issues TDH.MEM.PAGE.ADD and TDH.MR.EXTEND; it changes MRTD.
///
/// Both walk the sections in metadata order and the pages of a section in ascending GPA order.
/// Which QEMU/KVM uses which is documented in `docs/mrtd.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageAddOrder {
    /// Per page: PAGE.ADD, then (MR.EXTEND sections) the page's 16 MR.EXTENDs. KVM's
    /// `KVM_TDX_INIT_MEM_REGION` with `KVM_TDX_MEASURE_MEMORY_REGION`, as used by upstream QEMU
    /// (and by QEMU 9.x builds with TDX patches, per dstack-mr's defaults).
    SinglePass,
    /// Per section: PAGE.ADD of all its pages, then MR.EXTEND of all its pages, then the next
    /// section. The 2024 KVM/QEMU TDX patch sets that used `KVM_MEMORY_MAPPING` followed by
    /// `KVM_TDX_EXTEND_MEMORY` (e.g. the QEMU 8.2 TDX builds dstack measures as "two-pass").
    TwoPass,
}

impl PageAddOrder {
    /// The name used in configuration files: `single-pass` or `two-pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            PageAddOrder::SinglePass => "single-pass",
            PageAddOrder::TwoPass => "two-pass",
        }
    }
}

impl fmt::Display for PageAddOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PageAddOrder {
    type Err = TdvfError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-pass" => Ok(PageAddOrder::SinglePass),
            "two-pass" => Ok(PageAddOrder::TwoPass),
            other => Err(TdvfError::UnknownPageAddOrder(
                other.chars().take(40).collect(),
            )),
        }
    }
}

/// TDVF section types (TDVF Design Guide; types 4-6 as used by td-shim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectionType {
    /// 0: boot firmware volume (code), copied from the image.
    Bfv,
    /// 1: configuration firmware volume (UEFI variables), copied from the image.
    Cfv,
    /// 2: TD hand-off block the VMM writes; page-added, not measured.
    TdHob,
    /// 3: temporary memory (stack, heap, mailbox, page tables); page-added, not measured.
    TempMem,
    /// 4: permanent memory the VMM adds later with PAGE.AUG; not in MRTD.
    PermMem,
    /// 5: payload (kernel image).
    Payload,
    /// 6: payload parameters (kernel command line).
    PayloadParam,
}

impl SectionType {
    /// Decodes the metadata value.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            0 => SectionType::Bfv,
            1 => SectionType::Cfv,
            2 => SectionType::TdHob,
            3 => SectionType::TempMem,
            4 => SectionType::PermMem,
            5 => SectionType::Payload,
            6 => SectionType::PayloadParam,
            _ => return None,
        })
    }

    /// The metadata value.
    pub fn as_u32(self) -> u32 {
        match self {
            SectionType::Bfv => 0,
            SectionType::Cfv => 1,
            SectionType::TdHob => 2,
            SectionType::TempMem => 3,
            SectionType::PermMem => 4,
            SectionType::Payload => 5,
            SectionType::PayloadParam => 6,
        }
    }

    /// The name used in the TDVF Design Guide.
    pub fn name(self) -> &'static str {
        match self {
            SectionType::Bfv => "BFV",
            SectionType::Cfv => "CFV",
            SectionType::TdHob => "TD_HOB",
            SectionType::TempMem => "TempMem",
            SectionType::PermMem => "PermMem",
            SectionType::Payload => "Payload",
            SectionType::PayloadParam => "PayloadParam",
        }
    }

    /// Whether a section of this type must carry raw data (`Some(true)`), must not
    /// (`Some(false)`), or may (`None`).
    fn raw_data_rule(self) -> Option<bool> {
        match self {
            SectionType::Bfv | SectionType::Cfv => Some(true),
            SectionType::TdHob | SectionType::TempMem | SectionType::PermMem => Some(false),
            SectionType::Payload | SectionType::PayloadParam => None,
        }
    }
}

impl fmt::Display for SectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One validated TDVF section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the raw data in the image (0 when there is none).
    pub data_offset: u32,
    /// Bytes of raw data in the image.
    pub raw_data_size: u32,
    /// Guest physical address of the first page.
    pub memory_address: u64,
    /// Bytes of guest memory (a non-zero multiple of 4 KiB).
    pub memory_data_size: u64,
    pub section_type: SectionType,
    /// Raw attribute bits (only [`ATTR_MR_EXTEND`] and [`ATTR_PAGE_AUG`] are accepted).
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether the VMM measures the pages with TDH.MR.EXTEND.
    pub fn mr_extend(&self) -> bool {
        self.attributes & ATTR_MR_EXTEND != 0
    }

    /// Whether the pages are added after launch (TDH.MEM.PAGE.AUG) and so not part of MRTD.
    pub fn page_aug(&self) -> bool {
        self.attributes & ATTR_PAGE_AUG != 0
    }

    /// Whether the VMM adds the pages with TDH.MEM.PAGE.ADD before launch.
    pub fn page_added(&self) -> bool {
        !self.page_aug()
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.memory_data_size / PAGE_SIZE
    }
}

/// The TDVF metadata of a firmware image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdvfMetadata {
    /// Offset of the `"TDVF"` descriptor in the image.
    pub descriptor_offset: usize,
    /// Sections in metadata order (the order the VMM processes them).
    pub sections: Vec<TdvfSection>,
}

impl TdvfMetadata {
    /// Pages added with TDH.MEM.PAGE.ADD.
    pub fn added_pages(&self) -> u64 {
        self.sections
            .iter()
            .filter(|s| s.page_added())
            .map(TdvfSection::pages)
            .sum()
    }

    /// Pages measured with TDH.MR.EXTEND.
    pub fn extended_pages(&self) -> u64 {
        self.sections
            .iter()
            .filter(|s| s.mr_extend())
            .map(TdvfSection::pages)
            .sum()
    }
}

/// Why a firmware image has no usable TDVF metadata.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TdvfError {
    #[error("firmware image too small: {len} bytes, need at least {need}")]
    TooSmall { len: usize, need: usize },
    #[error("no ovmf table footer guid at offset {offset:#x} (not an ovmf/tdvf image)")]
    FooterGuidMissing { offset: usize },
    #[error("ovmf table length {declared} invalid: must be 18..={max}")]
    TableLength { declared: u16, max: usize },
    #[error(
        "ovmf table entry ending at {offset:#x} has length {declared}, must be 18..={remaining}"
    )]
    EntryLength {
        offset: usize,
        declared: u16,
        remaining: usize,
    },
    #[error("ovmf table has {remaining} stray bytes before its first entry at {offset:#x}")]
    TableTrailingBytes { offset: usize, remaining: usize },
    #[error("ovmf table has no tdx metadata offset entry (e47a6535-984a-4798-865e-4685a7bf8ec2)")]
    MetadataOffsetEntryMissing,
    #[error("tdx metadata offset entry has {got} data bytes, expected 4")]
    MetadataOffsetEntrySize { got: usize },
    #[error("tdx metadata offset {offset_from_end:#x} from the end points outside the {image_len}-byte image")]
    MetadataOffsetOutOfRange {
        offset_from_end: u32,
        image_len: usize,
    },
    #[error("tdvf descriptor signature {got:02x?} is not \"TDVF\"")]
    Signature { got: [u8; 4] },
    #[error("tdvf descriptor version {got} unsupported (expected 1)")]
    Version { got: u32 },
    #[error("tdvf descriptor has no sections")]
    NoSections,
    #[error("tdvf descriptor declares {count} sections, at most {max} supported")]
    TooManySections { count: u32, max: u32 },
    #[error("tdvf descriptor length {declared} does not match {expected} (16 + 32 per section)")]
    DescriptorLength { declared: u32, expected: u64 },
    #[error(
        "tdvf descriptor at {offset:#x} with length {length} overruns the {image_len}-byte image"
    )]
    DescriptorOutOfBounds {
        offset: usize,
        length: u32,
        image_len: usize,
    },
    #[error("tdvf section {index}: unknown section type {value}")]
    UnknownSectionType { index: usize, value: u32 },
    #[error("tdvf section {index}: unknown attribute bits {value:#x}")]
    UnknownAttributes { index: usize, value: u32 },
    #[error("tdvf section {index}: {field} {value:#x} is not a multiple of 4 KiB")]
    Misaligned {
        index: usize,
        field: &'static str,
        value: u64,
    },
    #[error("tdvf section {index}: memory data size is zero")]
    EmptySection { index: usize },
    #[error("tdvf section {index}: guest range {memory_address:#x} + {memory_data_size:#x} exceeds 2^52")]
    GpaOutOfRange {
        index: usize,
        memory_address: u64,
        memory_data_size: u64,
    },
    #[error("tdvf section {index}: raw data size {raw_data_size:#x} exceeds memory data size {memory_data_size:#x}")]
    RawLargerThanMemory {
        index: usize,
        raw_data_size: u32,
        memory_data_size: u64,
    },
    #[error("tdvf section {index}: {section_type} section has no raw data")]
    MissingRawData {
        index: usize,
        section_type: SectionType,
    },
    #[error("tdvf section {index}: {section_type} section must not carry raw data (has {raw_data_size:#x} bytes)")]
    UnexpectedRawData {
        index: usize,
        section_type: SectionType,
        raw_data_size: u32,
    },
    #[error("tdvf section {index}: raw data {data_offset:#x} + {raw_data_size:#x} overruns the {image_len}-byte image")]
    SectionDataOutOfBounds {
        index: usize,
        data_offset: u32,
        raw_data_size: u32,
        image_len: usize,
    },
    #[error("tdvf section {index}: attribute {attribute} not allowed on a {section_type} section")]
    AttributeNotAllowed {
        index: usize,
        section_type: SectionType,
        attribute: &'static str,
    },
    #[error(
        "tdvf section {index}: {section_type} section lacks the required {attribute} attribute"
    )]
    AttributeRequired {
        index: usize,
        section_type: SectionType,
        attribute: &'static str,
    },
    #[error("tdvf section {index}: measured section has raw data {raw_data_size:#x} but memory {memory_data_size:#x} (VMMs disagree on the rest)")]
    PartiallyBackedMeasuredSection {
        index: usize,
        raw_data_size: u32,
        memory_data_size: u64,
    },
    #[error("tdvf sections {first} and {second} overlap in guest memory")]
    OverlappingSections { first: usize, second: usize },
    #[error("tdvf sections add {pages} pages, at most {max} supported")]
    TooManyPages { pages: u64, max: u64 },
    #[error("unknown page add order {0:?} (expected single-pass or two-pass)")]
    UnknownPageAddOrder(String),
}

/// Finds the data of the OVMF table entry with `guid`, walking backwards from the footer.
fn find_table_entry<'a>(
    firmware: &'a [u8],
    guid: &[u8; 16],
) -> Result<Option<&'a [u8]>, TdvfError> {
    let n = firmware.len();
    let need = BYTES_AFTER_TABLE_FOOTER + ENTRY_HEADER;
    if n < need {
        return Err(TdvfError::TooSmall { len: n, need });
    }
    let footer_end = n - BYTES_AFTER_TABLE_FOOTER;
    let footer_start = footer_end - ENTRY_HEADER;
    if firmware[footer_start + 2..footer_end] != OVMF_TABLE_FOOTER_GUID {
        return Err(TdvfError::FooterGuidMissing {
            offset: footer_start + 2,
        });
    }
    let declared = u16_at(firmware, footer_start).unwrap_or(0);
    let total = usize::from(declared);
    if total < ENTRY_HEADER || total > footer_end {
        return Err(TdvfError::TableLength {
            declared,
            max: footer_end.min(usize::from(u16::MAX)),
        });
    }
    let table_start = footer_end - total;
    let mut pos = footer_start;
    while pos > table_start {
        let remaining = pos - table_start;
        if remaining < ENTRY_HEADER {
            return Err(TdvfError::TableTrailingBytes {
                offset: pos,
                remaining,
            });
        }
        let len_at = pos - ENTRY_HEADER;
        let declared = u16_at(firmware, len_at).unwrap_or(0);
        let len = usize::from(declared);
        if len < ENTRY_HEADER || len > remaining {
            return Err(TdvfError::EntryLength {
                offset: pos,
                declared,
                remaining,
            });
        }
        if firmware[len_at + 2..pos] == *guid {
            return Ok(Some(&firmware[pos - len..len_at]));
        }
        pos -= len;
    }
    Ok(None)
}

/// Parses and validates the TDVF metadata of a firmware image.
pub fn parse_metadata(firmware: &[u8]) -> Result<TdvfMetadata, TdvfError> {
    let n = firmware.len();
    let entry = find_table_entry(firmware, &TDX_METADATA_OFFSET_GUID)?
        .ok_or(TdvfError::MetadataOffsetEntryMissing)?;
    let offset_from_end = match <[u8; 4]>::try_from(entry) {
        Ok(b) => u32::from_le_bytes(b),
        Err(_) => return Err(TdvfError::MetadataOffsetEntrySize { got: entry.len() }),
    };
    let from_end = offset_from_end as usize;
    if from_end < DESCRIPTOR_LEN || from_end > n {
        return Err(TdvfError::MetadataOffsetOutOfRange {
            offset_from_end,
            image_len: n,
        });
    }
    let desc = n - from_end;
    let header = &firmware[desc..desc + DESCRIPTOR_LEN];
    let signature: [u8; 4] = [header[0], header[1], header[2], header[3]];
    if signature != TDVF_SIGNATURE {
        return Err(TdvfError::Signature { got: signature });
    }
    let length = u32_at(header, 4).unwrap_or(0);
    let version = u32_at(header, 8).unwrap_or(0);
    let count = u32_at(header, 12).unwrap_or(0);
    if version != 1 {
        return Err(TdvfError::Version { got: version });
    }
    if count == 0 {
        return Err(TdvfError::NoSections);
    }
    if count > MAX_SECTIONS {
        return Err(TdvfError::TooManySections {
            count,
            max: MAX_SECTIONS,
        });
    }
    let expected = DESCRIPTOR_LEN as u64 + SECTION_LEN as u64 * u64::from(count);
    if u64::from(length) != expected {
        return Err(TdvfError::DescriptorLength {
            declared: length,
            expected,
        });
    }
    if length as usize > from_end {
        return Err(TdvfError::DescriptorOutOfBounds {
            offset: desc,
            length,
            image_len: n,
        });
    }
    let table = &firmware[desc + DESCRIPTOR_LEN..desc + length as usize];
    let mut sections = Vec::with_capacity(count as usize);
    for (index, raw) in table.chunks_exact(SECTION_LEN).enumerate() {
        sections.push(parse_section(index, raw, n)?);
    }
    check_overlaps(&sections)?;
    let pages = sections
        .iter()
        .filter(|s| s.page_added())
        .map(TdvfSection::pages)
        .fold(0u64, u64::saturating_add);
    if pages > MAX_PAGES {
        return Err(TdvfError::TooManyPages {
            pages,
            max: MAX_PAGES,
        });
    }
    Ok(TdvfMetadata {
        descriptor_offset: desc,
        sections,
    })
}

fn page_aligned(value: u64) -> bool {
    value & (PAGE_SIZE - 1) == 0
}

fn parse_section(index: usize, raw: &[u8], image_len: usize) -> Result<TdvfSection, TdvfError> {
    let data_offset = u32_at(raw, 0).unwrap_or(0);
    let raw_data_size = u32_at(raw, 4).unwrap_or(0);
    let memory_address = u64_at(raw, 8).unwrap_or(0);
    let memory_data_size = u64_at(raw, 16).unwrap_or(0);
    let type_value = u32_at(raw, 24).unwrap_or(0);
    let attributes = u32_at(raw, 28).unwrap_or(0);

    let section_type = SectionType::from_u32(type_value).ok_or(TdvfError::UnknownSectionType {
        index,
        value: type_value,
    })?;
    if attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
        return Err(TdvfError::UnknownAttributes {
            index,
            value: attributes,
        });
    }
    let misaligned = |field, value: u64| TdvfError::Misaligned {
        index,
        field,
        value,
    };
    if !page_aligned(memory_address) {
        return Err(misaligned("memory address", memory_address));
    }
    if !page_aligned(memory_data_size) {
        return Err(misaligned("memory data size", memory_data_size));
    }
    if memory_data_size == 0 {
        return Err(TdvfError::EmptySection { index });
    }
    if memory_address
        .checked_add(memory_data_size)
        .is_none_or(|end| end > MAX_GPA)
    {
        return Err(TdvfError::GpaOutOfRange {
            index,
            memory_address,
            memory_data_size,
        });
    }
    if u64::from(raw_data_size) > memory_data_size {
        return Err(TdvfError::RawLargerThanMemory {
            index,
            raw_data_size,
            memory_data_size,
        });
    }
    match section_type.raw_data_rule() {
        Some(true) if raw_data_size == 0 => {
            return Err(TdvfError::MissingRawData {
                index,
                section_type,
            })
        }
        Some(false) if raw_data_size != 0 => {
            return Err(TdvfError::UnexpectedRawData {
                index,
                section_type,
                raw_data_size,
            })
        }
        _ => {}
    }
    if raw_data_size != 0 {
        // QEMU hands `image + DataOffset` to KVM, which requires a page-aligned source.
        if !page_aligned(u64::from(data_offset)) {
            return Err(misaligned("data offset", u64::from(data_offset)));
        }
        if u64::from(data_offset) + u64::from(raw_data_size) > image_len as u64 {
            return Err(TdvfError::SectionDataOutOfBounds {
                index,
                data_offset,
                raw_data_size,
                image_len,
            });
        }
    }
    let section = TdvfSection {
        data_offset,
        raw_data_size,
        memory_address,
        memory_data_size,
        section_type,
        attributes,
    };
    check_attributes(index, &section)?;
    Ok(section)
}

fn check_attributes(index: usize, s: &TdvfSection) -> Result<(), TdvfError> {
    let t = s.section_type;
    let not_allowed = |attribute| TdvfError::AttributeNotAllowed {
        index,
        section_type: t,
        attribute,
    };
    let extend_allowed = matches!(
        t,
        SectionType::Bfv | SectionType::Cfv | SectionType::Payload | SectionType::PayloadParam
    );
    if s.mr_extend() && !extend_allowed {
        return Err(not_allowed("MR.EXTEND"));
    }
    // PAGE.AUG is only defined for PermMem, where it is required. QEMU ignores the bit on the
    // types it supports (it page-adds them anyway), so accepting it there would predict a value
    // that QEMU does not produce.
    if t == SectionType::PermMem {
        if !s.page_aug() {
            return Err(TdvfError::AttributeRequired {
                index,
                section_type: t,
                attribute: "PAGE.AUG",
            });
        }
    } else if s.page_aug() {
        return Err(not_allowed("PAGE.AUG"));
    }
    // QEMU extends the bytes at DataOffset for the whole MemoryDataSize; other VMMs copy
    // RawDataSize bytes and zero the rest. Only a fully backed section has one answer.
    if s.mr_extend() && u64::from(s.raw_data_size) != s.memory_data_size {
        return Err(TdvfError::PartiallyBackedMeasuredSection {
            index,
            raw_data_size: s.raw_data_size,
            memory_data_size: s.memory_data_size,
        });
    }
    Ok(())
}

/// Two sections that share a guest page cannot both be added (the second TDH.MEM.PAGE.ADD or
/// PAGE.AUG of a page fails), so such metadata describes no bootable TD.
fn check_overlaps(sections: &[TdvfSection]) -> Result<(), TdvfError> {
    for (i, a) in sections.iter().enumerate() {
        for (j, b) in sections.iter().enumerate().skip(i + 1) {
            // Ends cannot overflow: parse_section bounded them by MAX_GPA.
            let a_end = a.memory_address + a.memory_data_size;
            let b_end = b.memory_address + b.memory_data_size;
            if a.memory_address < b_end && b.memory_address < a_end {
                return Err(TdvfError::OverlappingSections {
                    first: i,
                    second: j,
                });
            }
        }
    }
    Ok(())
}

/// The 128-byte block the TDX module hashes for one operation at `gpa`.
fn operation_block(name: &[u8], gpa: u64) -> [u8; 128] {
    let mut block = [0u8; 128];
    block[..name.len()].copy_from_slice(name);
    block[16..24].copy_from_slice(&gpa.to_le_bytes());
    block
}

fn page_add(h: &mut Sha384Hasher, gpa: u64) {
    h.update(operation_block(b"MEM.PAGE.ADD", gpa));
}

fn extend_page(h: &mut Sha384Hasher, gpa: u64, page: &[u8]) {
    for (i, chunk) in page.chunks_exact(MR_EXTEND_CHUNK).enumerate() {
        h.update(operation_block(
            b"MR.EXTEND",
            gpa + (i * MR_EXTEND_CHUNK) as u64,
        ));
        h.update(chunk);
    }
}

/// Computes the MRTD the TDX module reports for a TD built from `firmware` by a VMM that follows
/// the TDVF metadata in the given order.
pub fn compute_mrtd(firmware: &[u8], order: PageAddOrder) -> Result<Sha384, TdvfError> {
    let metadata = parse_metadata(firmware)?;
    let mut h = Sha384Hasher::new();
    for (index, s) in metadata.sections.iter().enumerate() {
        // PAGE.AUG sections are neither added nor extended (parse_metadata forbids MR.EXTEND on
        // them) and do not count toward MAX_PAGES: skip them without walking their pages.
        if !s.page_added() {
            continue;
        }
        let data: &[u8] = if s.mr_extend() {
            // Validated by parse_metadata: in bounds, and raw_data_size == memory_data_size.
            let start = s.data_offset as usize;
            start
                .checked_add(s.raw_data_size as usize)
                .and_then(|end| firmware.get(start..end))
                .ok_or(TdvfError::SectionDataOutOfBounds {
                    index,
                    data_offset: s.data_offset,
                    raw_data_size: s.raw_data_size,
                    image_len: firmware.len(),
                })?
        } else {
            &[]
        };
        let pages = data.chunks_exact(PAGE_SIZE as usize);
        let gpas = (0..s.pages()).map(|p| s.memory_address + p * PAGE_SIZE);
        match order {
            PageAddOrder::SinglePass => {
                let mut pages = pages;
                for gpa in gpas {
                    page_add(&mut h, gpa);
                    if let Some(page) = pages.next() {
                        extend_page(&mut h, gpa, page);
                    }
                }
            }
            PageAddOrder::TwoPass => {
                gpas.clone().for_each(|gpa| page_add(&mut h, gpa));
                for (gpa, page) in gpas.zip(pages) {
                    extend_page(&mut h, gpa, page);
                }
            }
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid_le(s: &str) -> [u8; 16] {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let b = hex::decode(hex).unwrap();
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        out[4..6].copy_from_slice(&[b[5], b[4]]);
        out[6..8].copy_from_slice(&[b[7], b[6]]);
        out[8..].copy_from_slice(&b[8..]);
        out
    }

    #[test]
    fn guid_constants_match_their_string_form() {
        assert_eq!(
            OVMF_TABLE_FOOTER_GUID,
            guid_le("96b582de-1fb2-45f7-baea-a366c55a082d")
        );
        assert_eq!(
            TDX_METADATA_OFFSET_GUID,
            guid_le("e47a6535-984a-4798-865e-4685a7bf8ec2")
        );
    }

    #[test]
    fn operation_blocks_follow_the_tdx_module_layout() {
        let b = operation_block(b"MEM.PAGE.ADD", 0x1122_3344_5566_7000);
        assert_eq!(&b[..12], b"MEM.PAGE.ADD");
        assert!(b[12..16].iter().all(|x| *x == 0));
        assert_eq!(
            &b[16..24],
            &[0x00, 0x70, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert!(b[24..].iter().all(|x| *x == 0));
        let e = operation_block(b"MR.EXTEND", 0x100);
        assert_eq!(&e[..9], b"MR.EXTEND");
        assert!(e[9..16].iter().all(|x| *x == 0));
    }

    #[test]
    fn page_add_order_names_round_trip() {
        for o in [PageAddOrder::SinglePass, PageAddOrder::TwoPass] {
            assert_eq!(o.as_str().parse::<PageAddOrder>(), Ok(o));
        }
        assert!(matches!(
            "both".parse::<PageAddOrder>(),
            Err(TdvfError::UnknownPageAddOrder(_))
        ));
    }

    #[test]
    fn section_types_round_trip() {
        for v in 0..=6 {
            assert_eq!(SectionType::from_u32(v).map(SectionType::as_u32), Some(v));
        }
        assert_eq!(SectionType::from_u32(7), None);
    }
}
