//! `tdvf::parse_metadata` / `compute_mrtd` against synthetic TDVF images whose expected MRTDs
//! were computed independently (tests/fixtures/tdvf/reference.py, see docs/mrtd.md), plus typed
//! rejections and never-panic sweeps.

use std::path::{Path, PathBuf};

use measurements::tdvf::{
    compute_mrtd, parse_metadata, PageAddOrder, SectionType, TdvfError, MAX_PAGES, MAX_SECTIONS,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ORDERS: [(PageAddOrder, &str); 2] = [
    (PageAddOrder::SinglePass, "single-pass"),
    (PageAddOrder::TwoPass, "two-pass"),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tdvf")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Fixture {
    image: Vec<u8>,
    meta: Value,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let meta = expected()["fixtures"][name].clone();
        assert!(meta.is_object(), "{name} missing from expected.json");
        let image = std::fs::read(dir().join(name)).unwrap();
        Fixture { image, meta }
    }

    fn layout(&self, key: &str) -> usize {
        self.meta["layout"][key].as_u64().unwrap() as usize
    }

    /// Offset of field `at` (bytes into the 32-byte entry) of section `index`.
    fn section_field(&self, index: usize, at: usize) -> usize {
        self.layout("section_table_offset") + 32 * index + at
    }

    fn with(&self, edits: &[(usize, &[u8])]) -> Vec<u8> {
        let mut img = self.image.clone();
        for (at, bytes) in edits {
            img[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        img
    }
}

// Section entry field offsets.
const DATA_OFFSET: usize = 0;
const RAW_SIZE: usize = 4;
const ADDRESS: usize = 8;
const MEM_SIZE: usize = 16;
const TYPE: usize = 24;
const ATTRS: usize = 28;

fn err(image: &[u8]) -> TdvfError {
    let e = parse_metadata(image).expect_err("image must be rejected");
    // compute_mrtd rejects exactly what parse_metadata rejects.
    for (order, _) in ORDERS {
        assert_eq!(compute_mrtd(image, order), Err(e.clone()));
    }
    assert!(!e.to_string().is_empty());
    e
}

#[test]
fn fixtures_match_the_independent_reference() {
    let all = expected();
    let fixtures = all["fixtures"].as_object().unwrap();
    assert_eq!(fixtures.len(), 2);
    for (name, meta) in fixtures {
        let image = std::fs::read(dir().join(name)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&image)),
            meta["sha256"].as_str().unwrap(),
            "{name}: fixture differs from the one expected.json was computed for"
        );
        let md = parse_metadata(&image).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            md.descriptor_offset as u64,
            meta["layout"]["descriptor_offset"].as_u64().unwrap()
        );
        let want = meta["sections"].as_array().unwrap();
        assert_eq!(md.sections.len(), want.len(), "{name}");
        for (s, w) in md.sections.iter().zip(want) {
            assert_eq!(u64::from(s.data_offset), w["data_offset"].as_u64().unwrap());
            assert_eq!(
                u64::from(s.raw_data_size),
                w["raw_data_size"].as_u64().unwrap()
            );
            assert_eq!(s.memory_address, w["memory_address"].as_u64().unwrap());
            assert_eq!(s.memory_data_size, w["memory_data_size"].as_u64().unwrap());
            assert_eq!(
                u64::from(s.section_type.as_u32()),
                w["type"].as_u64().unwrap()
            );
            assert_eq!(u64::from(s.attributes), w["attributes"].as_u64().unwrap());
        }
        for (order, key) in ORDERS {
            assert_eq!(
                hex::encode(compute_mrtd(&image, order).unwrap()),
                meta["mrtd"][key].as_str().unwrap(),
                "{name} {key}"
            );
        }
    }
}

#[test]
fn fixture_metadata_reads_as_described() {
    let f = Fixture::load("ovmf_like.fd");
    let md = parse_metadata(&f.image).unwrap();
    let types: Vec<_> = md.sections.iter().map(|s| s.section_type).collect();
    use SectionType::*;
    assert_eq!(types, [Bfv, Cfv, TempMem, TempMem, TdHob, TempMem]);
    assert!(md.sections[0].mr_extend() && !md.sections[1].mr_extend());
    assert_eq!(md.added_pages(), 12 + 2 + 4 + 2 + 2 + 6);
    assert_eq!(md.extended_pages(), 12);

    let p = Fixture::load("payload_like.fd");
    let md = parse_metadata(&p.image).unwrap();
    let perm = &md.sections[1];
    assert_eq!(perm.section_type, PermMem);
    assert!(perm.page_aug() && !perm.page_added());
    // PermMem's 256 pages are not added.
    assert_eq!(md.added_pages(), 4 + 4 + 1 + 1 + 1 + 3);
    assert_eq!(md.extended_pages(), 4 + 4 + 1);
}

/// A real OVMF with TDX metadata, checked when it is on this machine (Debian's `ovmf` package;
/// docs/mrtd.md says how to fetch the exact file). Its expected values come from reference.py,
/// not from hardware: nobody has published a quote for this firmware.
#[test]
fn real_ovmf_when_present() {
    let all = expected();
    let real = &all["real"];
    let path = std::env::var("COCOON_TDVF_REAL_FIRMWARE")
        .unwrap_or_else(|_| real["path"].as_str().unwrap().to_string());
    let Ok(image) = std::fs::read(&path) else {
        eprintln!("skipped: {path} not present ({})", real["label"]);
        return;
    };
    if hex::encode(Sha256::digest(&image)) != real["sha256"].as_str().unwrap() {
        eprintln!(
            "skipped: {path} is not the recorded image ({})",
            real["label"]
        );
        return;
    }
    let md = parse_metadata(&image).unwrap();
    assert_eq!(
        md.sections.len(),
        real["sections"].as_array().unwrap().len()
    );
    for (order, key) in ORDERS {
        assert_eq!(
            hex::encode(compute_mrtd(&image, order).unwrap()),
            real["mrtd"][key].as_str().unwrap(),
            "{key}"
        );
    }
}

#[test]
fn orders_differ_only_when_a_section_is_extended() {
    for name in ["ovmf_like.fd", "payload_like.fd"] {
        let f = Fixture::load(name);
        let a = compute_mrtd(&f.image, PageAddOrder::SinglePass).unwrap();
        let b = compute_mrtd(&f.image, PageAddOrder::TwoPass).unwrap();
        assert_ne!(a, b, "{name}");
    }
    // ovmf_like without MR.EXTEND on its BFV: nothing is extended, both orders agree.
    let f = Fixture::load("ovmf_like.fd");
    let img = f.with(&[(f.section_field(0, ATTRS), &0u32.to_le_bytes())]);
    assert_eq!(
        compute_mrtd(&img, PageAddOrder::SinglePass).unwrap(),
        compute_mrtd(&img, PageAddOrder::TwoPass).unwrap()
    );
}

#[test]
fn only_measured_bytes_change_mrtd() {
    let f = Fixture::load("ovmf_like.fd");
    let base = compute_mrtd(&f.image, PageAddOrder::SinglePass).unwrap();
    let flip = |at: usize| {
        let mut img = f.image.clone();
        img[at] ^= 0x01;
        compute_mrtd(&img, PageAddOrder::SinglePass).unwrap()
    };
    assert_eq!(flip(0x0100), base, "CFV is not extended");
    assert_eq!(flip(0x1fff), base, "CFV is not extended");
    assert_ne!(flip(0x2000), base, "first BFV byte is extended");
    assert_ne!(flip(0x7abc), base, "BFV is extended");

    let p = Fixture::load("payload_like.fd");
    let base = compute_mrtd(&p.image, PageAddOrder::TwoPass).unwrap();
    let flip = |at: usize| {
        let mut img = p.image.clone();
        img[at] ^= 0x80;
        compute_mrtd(&img, PageAddOrder::TwoPass).unwrap()
    };
    assert_eq!(flip(0x5010), base, "PayloadParam is not extended");
    assert_ne!(flip(0x0010), base, "this CFV is extended");
    assert_ne!(flip(0x4fff), base, "Payload is extended");
}

#[test]
fn truncated_and_too_small_images() {
    let f = Fixture::load("ovmf_like.fd");
    let n = f.image.len();
    assert_eq!(err(&[]), TdvfError::TooSmall { len: 0, need: 50 });
    assert_eq!(
        err(&f.image[..49]),
        TdvfError::TooSmall { len: 49, need: 50 }
    );
    assert!(matches!(
        err(&f.image[..n - 1]),
        TdvfError::FooterGuidMissing { .. }
    ));
    // Every truncation is rejected with a typed error (the footer moves with the end).
    for len in 0..n {
        assert!(parse_metadata(&f.image[..len]).is_err(), "length {len}");
    }
    // So is growing the image.
    let mut longer = f.image.clone();
    longer.extend_from_slice(&[0; 16]);
    assert!(matches!(err(&longer), TdvfError::FooterGuidMissing { .. }));
}

#[test]
fn bad_guid_table() {
    let f = Fixture::load("ovmf_like.fd");
    let n = f.image.len();
    let len_at = f.layout("table_length_offset");
    let total = u16::from_le_bytes([f.image[len_at], f.image[len_at + 1]]);
    let max = n - 32;
    for declared in [0u16, 17, u16::MAX] {
        assert_eq!(
            err(&f.with(&[(len_at, &declared.to_le_bytes())])),
            TdvfError::TableLength { declared, max }
        );
    }
    // One byte short: the farthest entry (the TDX one) no longer fits.
    assert!(matches!(
        err(&f.with(&[(len_at, &(total - 1).to_le_bytes())])),
        TdvfError::EntryLength {
            declared: 22,
            remaining: 21,
            ..
        }
    ));
    // A zero-length entry next to the footer would loop forever if accepted.
    assert!(matches!(
        err(&f.with(&[(len_at - 18, &0u16.to_le_bytes())])),
        TdvfError::EntryLength { declared: 0, .. }
    ));
    // The TDX entry's GUID altered: no entry left to find.
    let value_at = f.layout("metadata_offset_value_offset");
    let mut img = f.image.clone();
    img[value_at + 6] ^= 0xff;
    assert_eq!(err(&img), TdvfError::MetadataOffsetEntryMissing);
    // The TDX entry shrunk to its header: no offset in it.
    assert_eq!(
        err(&f.with(&[(value_at + 4, &18u16.to_le_bytes())])),
        TdvfError::MetadataOffsetEntrySize { got: 0 }
    );
}

#[test]
fn metadata_offset_outside_the_image() {
    let f = Fixture::load("ovmf_like.fd");
    let n = f.image.len();
    let at = f.layout("metadata_offset_value_offset");
    for offset_from_end in [0u32, 15, n as u32 + 1, u32::MAX] {
        assert_eq!(
            err(&f.with(&[(at, &offset_from_end.to_le_bytes())])),
            TdvfError::MetadataOffsetOutOfRange {
                offset_from_end,
                image_len: n
            }
        );
    }
    // Inside the image but not at a descriptor.
    assert!(matches!(
        err(&f.with(&[(at, &(n as u32).to_le_bytes())])),
        TdvfError::Signature { got } if &got == b"<CFV"
    ));
    // A descriptor 16 bytes before the end cannot hold its sections.
    assert!(matches!(
        err(&f.with(&[(at, &16u32.to_le_bytes())])),
        TdvfError::Signature { .. }
    ));
}

#[test]
fn bad_descriptor() {
    let f = Fixture::load("ovmf_like.fd");
    let d = f.layout("descriptor_offset");
    assert_eq!(
        err(&f.with(&[(d, b"TDVX")])),
        TdvfError::Signature { got: *b"TDVX" }
    );
    assert_eq!(
        err(&f.with(&[(d + 8, &2u32.to_le_bytes())])),
        TdvfError::Version { got: 2 }
    );
    assert_eq!(
        err(&f.with(&[(d + 12, &0u32.to_le_bytes())])),
        TdvfError::NoSections
    );
    for count in [MAX_SECTIONS + 1, u32::MAX] {
        assert_eq!(
            err(&f.with(&[(d + 12, &count.to_le_bytes())])),
            TdvfError::TooManySections {
                count,
                max: MAX_SECTIONS
            }
        );
    }
    assert_eq!(
        err(&f.with(&[(d + 12, &7u32.to_le_bytes())])),
        TdvfError::DescriptorLength {
            declared: 16 + 32 * 6,
            expected: 16 + 32 * 7
        }
    );
    // 64 sections claimed consistently, but the image ends first.
    let p = Fixture::load("payload_like.fd");
    let d = p.layout("descriptor_offset");
    let length = 16 + 32 * MAX_SECTIONS;
    assert_eq!(
        err(&p.with(&[
            (d + 4, &length.to_le_bytes()),
            (d + 12, &MAX_SECTIONS.to_le_bytes())
        ])),
        TdvfError::DescriptorOutOfBounds {
            offset: d,
            length,
            image_len: p.image.len()
        }
    );
}

#[test]
fn bad_sections() {
    let f = Fixture::load("ovmf_like.fd");
    let n = f.image.len();
    let field = |i, at, v: &[u8]| f.with(&[(f.section_field(i, at), v)]);
    let u32le = |v: u32| v.to_le_bytes().to_vec();
    let u64le = |v: u64| v.to_le_bytes().to_vec();

    assert_eq!(
        err(&field(2, TYPE, &u32le(9))),
        TdvfError::UnknownSectionType { index: 2, value: 9 }
    );
    assert_eq!(
        err(&field(0, ATTRS, &u32le(0x5))),
        TdvfError::UnknownAttributes {
            index: 0,
            value: 0x5
        }
    );
    assert_eq!(
        err(&field(3, ADDRESS, &u64le(0x80B800))),
        TdvfError::Misaligned {
            index: 3,
            field: "memory address",
            value: 0x80B800
        }
    );
    assert_eq!(
        err(&field(4, MEM_SIZE, &u64le(0x2001))),
        TdvfError::Misaligned {
            index: 4,
            field: "memory data size",
            value: 0x2001
        }
    );
    assert_eq!(
        err(&field(1, DATA_OFFSET, &u32le(0x10))),
        TdvfError::Misaligned {
            index: 1,
            field: "data offset",
            value: 0x10
        }
    );
    assert_eq!(
        err(&field(5, MEM_SIZE, &u64le(0))),
        TdvfError::EmptySection { index: 5 }
    );
    assert_eq!(
        err(&field(2, ADDRESS, &u64le((1 << 52) - 0x1000))),
        TdvfError::GpaOutOfRange {
            index: 2,
            memory_address: (1 << 52) - 0x1000,
            memory_data_size: 0x4000
        }
    );
    assert_eq!(
        err(&field(2, ADDRESS, &u64le(u64::MAX - 0xfff))),
        TdvfError::GpaOutOfRange {
            index: 2,
            memory_address: u64::MAX - 0xfff,
            memory_data_size: 0x4000
        }
    );
    // Section overlapping the end of the image.
    let tail = (n - 0x1000) as u32;
    assert_eq!(
        err(&field(1, DATA_OFFSET, &u32le(tail))),
        TdvfError::SectionDataOutOfBounds {
            index: 1,
            data_offset: tail,
            raw_data_size: 0x2000,
            image_len: n
        }
    );
    assert_eq!(
        err(&field(1, RAW_SIZE, &u32le(0x3000))),
        TdvfError::RawLargerThanMemory {
            index: 1,
            raw_data_size: 0x3000,
            memory_data_size: 0x2000
        }
    );
    assert_eq!(
        err(&field(0, RAW_SIZE, &u32le(0))),
        TdvfError::MissingRawData {
            index: 0,
            section_type: SectionType::Bfv
        }
    );
    assert_eq!(
        err(&field(4, RAW_SIZE, &u32le(0x1000))),
        TdvfError::UnexpectedRawData {
            index: 4,
            section_type: SectionType::TdHob,
            raw_data_size: 0x1000
        }
    );
    assert_eq!(
        err(&field(2, ATTRS, &u32le(1))),
        TdvfError::AttributeNotAllowed {
            index: 2,
            section_type: SectionType::TempMem,
            attribute: "MR.EXTEND"
        }
    );
    assert_eq!(
        err(&field(0, ATTRS, &u32le(3))),
        TdvfError::AttributeNotAllowed {
            index: 0,
            section_type: SectionType::Bfv,
            attribute: "PAGE.AUG"
        }
    );
    assert_eq!(
        err(&field(3, ADDRESS, &u64le(0x812000))),
        TdvfError::OverlappingSections {
            first: 2,
            second: 3
        }
    );
    let huge = (MAX_PAGES + 1) * 0x1000;
    assert_eq!(
        err(&f.with(&[
            (f.section_field(5, ADDRESS), &u64le(0x10_0000_0000)),
            (f.section_field(5, MEM_SIZE), &u64le(huge)),
        ])),
        TdvfError::TooManyPages {
            pages: MAX_PAGES + 1 + 12 + 2 + 4 + 2 + 2,
            max: MAX_PAGES
        }
    );

    let p = Fixture::load("payload_like.fd");
    let pfield = |i, at, v: &[u8]| p.with(&[(p.section_field(i, at), v)]);
    assert_eq!(
        err(&pfield(1, ATTRS, &u32le(0))),
        TdvfError::AttributeRequired {
            index: 1,
            section_type: SectionType::PermMem,
            attribute: "PAGE.AUG"
        }
    );
    // PayloadParam has 0x80 raw bytes in a 4 KiB page: extending it is ambiguous.
    assert_eq!(
        err(&pfield(3, ATTRS, &u32le(1))),
        TdvfError::PartiallyBackedMeasuredSection {
            index: 3,
            raw_data_size: 0x80,
            memory_data_size: 0x1000
        }
    );
    // A PAGE.AUG range still may not overlap an added one.
    assert_eq!(
        err(&pfield(1, ADDRESS, &u64le(0xFFFFF000))),
        TdvfError::OverlappingSections {
            first: 1,
            second: 2
        }
    );
}

/// Found by fuzz/tdvf_parse: a PAGE.AUG section is not page-added, so it does not count toward
/// MAX_PAGES, and single-pass used to walk its pages anyway (2^39 empty iterations here).
#[test]
fn huge_page_aug_section_costs_nothing() {
    let p = Fixture::load("payload_like.fd");
    let size: u64 = 1 << 51;
    let img = p.with(&[(p.section_field(1, MEM_SIZE), &size.to_le_bytes())]);
    let md = parse_metadata(&img).unwrap();
    assert_eq!(md.sections[1].pages(), size / 4096);
    // Finishes at once (the metadata lives in the extended BFV, so the value itself moves).
    for (order, _) in ORDERS {
        compute_mrtd(&img, order).unwrap();
    }
}

/// Tiny deterministic generator for the sweeps (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Every byte of the descriptor, the GUID table and the image tail, flipped three ways, plus a
/// stride over the whole image: never a panic. ovmf_like's BFV spans everything from 0x2000 to
/// the end (metadata and table included), so a flip there gives an error or a different MRTD,
/// and a flip in the CFV (not extended) gives the same MRTD.
#[test]
fn byte_flip_sweep_never_panics() {
    let f = Fixture::load("ovmf_like.fd");
    let n = f.image.len();
    let base = compute_mrtd(&f.image, PageAddOrder::SinglePass).unwrap();
    let d = f.layout("descriptor_offset");
    let mut offsets: Vec<usize> = (d..d + 16 + 32 * 6).collect();
    offsets.extend(f.layout("table_start")..n);
    offsets.extend((0..n).step_by(257));
    let mut rejected = 0;
    for at in offsets {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut img = f.image.clone();
            img[at] ^= mask;
            match compute_mrtd(&img, PageAddOrder::SinglePass) {
                Ok(m) if at < 0x2000 => assert_eq!(m, base, "cfv byte {at:#x}"),
                Ok(m) => assert_ne!(m, base, "bfv byte {at:#x}"),
                Err(_) => rejected += 1,
            }
            let _ = compute_mrtd(&img, PageAddOrder::TwoPass);
        }
    }
    assert!(rejected > 100, "only {rejected} flips rejected");
}

/// Random multi-byte corruption of the metadata and table regions of both fixtures.
#[test]
fn random_corruption_never_panics() {
    let mut rng = Rng(0x5eed_7d5f_0000_0001);
    for name in ["ovmf_like.fd", "payload_like.fd"] {
        let f = Fixture::load(name);
        let n = f.image.len();
        let d = f.layout("descriptor_offset");
        let t = f.layout("table_start");
        let regions = [(d, 16 + 32 * 7), (t, n - 32 - t)];
        for i in 0..400 {
            let mut img = f.image.clone();
            for _ in 0..1 + rng.next() % 4 {
                let (start, len) = regions[(rng.next() % 2) as usize];
                let at = start + (rng.next() as usize) % len;
                img[at] = rng.next() as u8;
            }
            match parse_metadata(&img) {
                Ok(md) => {
                    assert!(md.added_pages() <= MAX_PAGES);
                    // Hashing is slow in debug builds: measure the small results only.
                    if md.added_pages() < 256 {
                        compute_mrtd(&img, ORDERS[i % 2].0).unwrap();
                    }
                }
                Err(e) => assert_eq!(compute_mrtd(&img, ORDERS[i % 2].0), Err(e)),
            }
        }
    }
}
