//! Expected RTMR1/RTMR2 from boot artifacts (`measurements::boot`), checked against a real TDX
//! quote and its event log, real CCEL logs, a constructed PE image and a constructed bzImage.

mod common;

use measurements::boot::authenticode::{authenticode_digest, hashed_ranges};
use measurements::boot::qemu::{QemuBootParams, QEMU_ACPI_DATA_SIZE};
use measurements::boot::*;
use measurements::quote::{decode_quote_input, ParsedQuote};
use measurements::Sha384;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn h48(s: &str) -> Sha384 {
    measurements::parse_hex_array(s, "sha384").unwrap()
}

// ---------------------------------------------------------------------------------------------
// The real vector: dstack 0.6.0 "tdx-lite" image, QEMU 8.2.2, TDVF "pre202505".

struct Vector {
    quote: ParsedQuote,
    /// (imr, event_type, digest hex, event_payload hex)
    log: Vec<(u64, u32, String, String)>,
    kernel_authenticode: Sha384,
    cmdline_sha384: Sha384,
    initrd_sha384: Sha384,
}

fn vector() -> Vector {
    let dir = common::testdata().join("measurements");
    let v: Value = serde_json::from_slice(
        &std::fs::read(dir.join("verifier_tdx-lite-getquote.json")).unwrap(),
    )
    .unwrap();
    let quote_bytes = decode_quote_input(v["quote"].as_str().unwrap().as_bytes(), true).unwrap();
    let quote = ParsedQuote::parse(&quote_bytes).unwrap();
    let log: Value = serde_json::from_str(v["event_log"].as_str().unwrap()).unwrap();
    let log = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["imr"].as_u64().unwrap(),
                e["event_type"].as_u64().unwrap() as u32,
                e["digest"].as_str().unwrap().to_string(),
                e["event_payload"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let d: Value = serde_json::from_slice(
        &std::fs::read(dir.join("tdx-lite_measurement.tdx.decoded.json")).unwrap(),
    )
    .unwrap();
    let img = &d["decoded"]["image"];
    Vector {
        quote,
        log,
        kernel_authenticode: h48(img["kernel_authenticode"].as_str().unwrap()),
        cmdline_sha384: h48(img["cmdline_sha384"].as_str().unwrap()),
        initrd_sha384: h48(img["initrd_sha384"].as_str().unwrap()),
    }
}

fn vector_boot(v: &Vector) -> ExpectedBoot {
    ExpectedBoot {
        kernel_authenticode: v.kernel_authenticode,
        cmdline: CmdlineInput::LoadOptionsSha384(Some(v.cmdline_sha384)),
        initrd_sha384: Some(v.initrd_sha384),
        tdvf: TdvfProfile::default(),
    }
}

#[test]
fn published_digests_plus_fixed_events_give_the_quotes_rtmr1_and_rtmr2() {
    let v = vector();
    let boot = vector_boot(&v);
    let rtmr = &v.quote.report.registers.rtmr;
    assert_eq!(hex::encode(boot.rtmr1()), hex::encode(rtmr[1]), "rtmr1");
    assert_eq!(hex::encode(boot.rtmr2()), hex::encode(rtmr[2]), "rtmr2");
    // The free functions agree with the struct.
    assert_eq!(
        rtmr1(&v.kernel_authenticode, &TdvfProfile::default()),
        rtmr[1]
    );
    assert_eq!(
        replay(&rtmr2_events(
            Some(&v.cmdline_sha384),
            Some(&v.initrd_sha384)
        )),
        rtmr[2]
    );
}

#[test]
fn expected_events_equal_the_logged_rtmr1_and_rtmr2_events_one_by_one() {
    let v = vector();
    let events = vector_boot(&v).events();
    for imr in [1u64, 2] {
        let logged: Vec<_> = v.log.iter().filter(|e| e.0 == imr).collect();
        let expected: Vec<_> = events.iter().filter(|e| e.rtmr as u64 == imr).collect();
        assert_eq!(logged.len(), expected.len(), "rtmr{imr} event count");
        for (l, e) in logged.iter().zip(&expected) {
            assert_eq!(l.1, e.event_type, "rtmr{imr} {}: type", e.description);
            assert_eq!(l.2, hex::encode(e.digest), "rtmr{imr} {}", e.description);
        }
    }
}

#[test]
fn fixed_firmware_event_digests_are_computed_from_their_data() {
    // The digests are SHA-384 of the event data, computed here; the logged values must match.
    let v = vector();
    let logged: Vec<&str> = v
        .log
        .iter()
        .filter(|e| e.0 == 1)
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(
        logged[1],
        hex::encode(sha384(CALLING_EFI_APPLICATION.as_bytes()))
    );
    assert_eq!(logged[2], hex::encode(sha384(&SEPARATOR_DATA)));
    assert_eq!(
        logged[3],
        hex::encode(sha384(EXIT_BOOT_SERVICES_INVOCATION.as_bytes()))
    );
    assert_eq!(
        logged[4],
        hex::encode(sha384(EXIT_BOOT_SERVICES_SUCCEEDED.as_bytes()))
    );
    // "Exit Boot Services Returned" alone is not what edk2 logs.
    assert_ne!(
        logged[4],
        hex::encode(sha384(b"Exit Boot Services Returned"))
    );
}

#[test]
fn any_flipped_input_bit_changes_the_registers() {
    let v = vector();
    let rtmr = v.quote.report.registers.rtmr;
    for byte in [0usize, 17, 47] {
        let mut b = vector_boot(&v);
        b.kernel_authenticode[byte] ^= 1;
        assert_ne!(b.rtmr1(), rtmr[1]);
        assert_eq!(b.rtmr2(), rtmr[2]);
        let mut b = vector_boot(&v);
        b.initrd_sha384.as_mut().unwrap()[byte] ^= 0x80;
        assert_ne!(b.rtmr2(), rtmr[2]);
        let mut b = vector_boot(&v);
        b.cmdline = CmdlineInput::LoadOptionsSha384(Some({
            let mut d = v.cmdline_sha384;
            d[byte] ^= 4;
            d
        }));
        assert_ne!(b.rtmr2(), rtmr[2]);
    }
    // Firmware differences are visible too.
    let mut b = vector_boot(&v);
    b.tdvf.separator_in_rtmr1 = false;
    assert_ne!(b.rtmr1(), rtmr[1]);
    // Event order matters.
    let mut e = rtmr2_events(Some(&v.cmdline_sha384), Some(&v.initrd_sha384));
    e.reverse();
    assert_ne!(replay(&e), rtmr[2]);
}

#[test]
fn cmdline_text_is_not_in_the_vectors_log_so_only_its_encoding_is_checked() {
    // The Linux stub's EV_EVENT_TAG data is the tag ("LOADED_IMAGE::LoadOptions"), never the
    // cmdline; in this vector the payloads are even stripped. So the cmdline text of the dstack
    // image cannot be recovered, and the encoding is checked against values computed
    // independently with Python:
    //   hashlib.sha384(s.encode('utf-16-le') + b'\0\0').hexdigest()
    let v = vector();
    for e in v.log.iter().filter(|e| e.0 == 2) {
        assert!(
            e.3.is_empty(),
            "rtmr2 payload present: compare it with the cmdline"
        );
    }
    let cases = [
        (
            InitrdArg::Append,
            true,
            "1d26f8aff8992fdfc37e88b4fdf4a1a0ebb815a2ce925ea3046b3ba1f24a933e75a163af2af579268c20ca5f476f5386",
        ),
        (
            InitrdArg::Prefix,
            true,
            "f9f8fb4b0e1dce36006d4f4a67381bc02cb5fb2fe7143f3091569254993fb8edfa15f5b55ebdbf24cb189af4c6dbb8ff",
        ),
        (
            InitrdArg::Append,
            false,
            "0c55ff8ce3ea9389db345e81fd8f0ef3cd0737c952cfc38197b2c6ac6af0fba4b56f7e027577357654dd00e43a82be63",
        ),
    ];
    for (arg, initrd, want) in cases {
        let opts = load_options("console=ttyS0", initrd, arg).unwrap();
        assert_eq!(hex::encode(sha384(&opts)), want, "{arg:?} initrd={initrd}");
    }
    // QEMU always passes a (possibly empty) C string; OVMF then sets LoadOptions only when
    // there is something to put in them.
    assert_eq!(load_options("", false, InitrdArg::Append), None);
    assert_eq!(
        hex::encode(sha384(&load_options("", true, InitrdArg::Append).unwrap())),
        "c319595b2bb091f3dd05269a56e1299fafcd721c98e7520fa80c9915df630d3cecbc2060607b91e486b6e646cfbc50dd"
    );
    // The string ends at a NUL, like QEMU's strlen.
    assert_eq!(
        load_options("console=ttyS0\0junk", false, InitrdArg::Append),
        load_options("console=ttyS0", false, InitrdArg::Append)
    );
    // rtmr2(cmdline, initrd) = LoadOptions event then initrd event.
    let initrd = sha384(b"initrd");
    assert_eq!(
        rtmr2("console=ttyS0", &initrd),
        extend(&extend(&[0; 48], &h48(cases[0].2)), &initrd)
    );
}

// ---------------------------------------------------------------------------------------------
// A second real log: trustee's CCEL_data_ovmf (an older TDVF whose ReadyToBoot separator went to
// RTMR0). Its RTMR1 (from the testdata README) is rebuilt from its kernel digest alone.

/// Minimal TCG2 crypto-agile walk: (mr_index, event_type, sha384 digest, event data).
fn ccel_events(b: &[u8]) -> Vec<(u32, u32, Sha384, Vec<u8>)> {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    // TCG_PCR_EVENT header: pcr, type, sha1[20], size, data.
    let mut o = 32 + u32_at(28) as usize;
    let mut out = Vec::new();
    while o + 8 <= b.len() {
        let (mr, ty) = (u32_at(o), u32_at(o + 4));
        if mr == 0xffff_ffff || (mr == 0 && ty == 0) {
            break;
        }
        let count = u32_at(o + 8);
        o += 12;
        let mut sha = None;
        for _ in 0..count {
            let alg = u16::from_le_bytes([b[o], b[o + 1]]);
            let len = match alg {
                0x4 => 20,
                0xb => 32,
                0xc => 48,
                0xd => 64,
                a => panic!("alg {a:#x}"),
            };
            if alg == 0xc {
                sha = Some(b[o + 2..o + 2 + 48].try_into().unwrap());
            }
            o += 2 + len;
        }
        let size = u32_at(o) as usize;
        out.push((mr, ty, sha.unwrap(), b[o + 4..o + 4 + size].to_vec()));
        o += 4 + size;
    }
    out
}

#[test]
fn older_tdvf_log_matches_with_the_separator_in_rtmr0() {
    let log =
        ccel_events(&std::fs::read(common::testdata().join("eventlogs/CCEL_data_ovmf")).unwrap());
    let kernel = log
        .iter()
        .find(|e| e.0 == 2 && e.1 == EV_EFI_BOOT_SERVICES_APPLICATION)
        .unwrap()
        .2;
    let old = TdvfProfile {
        separator_in_rtmr1: false,
        ..TdvfProfile::default()
    };
    let readme_rtmr1 = "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6";
    assert_eq!(hex::encode(rtmr1(&kernel, &old)), readme_rtmr1);
    assert_ne!(
        hex::encode(rtmr1(&kernel, &TdvfProfile::default())),
        readme_rtmr1
    );
    // Its RTMR2 events are the Linux stub's two tagged events, tags as documented.
    let tags: Vec<_> = log.iter().filter(|e| e.0 == 3).collect();
    assert_eq!(tags.len(), 2);
    assert!(tags.iter().all(|e| e.1 == EV_EVENT_TAG));
    assert_eq!(tags[0].3[..4], LOAD_OPTIONS_EVENT_TAG_ID.to_le_bytes());
    assert_eq!(&tags[0].3[8..], b"LOADED_IMAGE::LoadOptions\0");
    assert_eq!(tags[1].3[..4], INITRD_EVENT_TAG_ID.to_le_bytes());
    // Fixed actions in this log carry their data: digests are SHA-384 of it.
    for e in log.iter().filter(|e| e.0 == 2 && e.1 == EV_EFI_ACTION) {
        assert_eq!(e.2, sha384(&e.3));
    }
}

// ---------------------------------------------------------------------------------------------
// Authenticode on a constructed PE32+ image.

const OPT: usize = 0x80 + 24; // optional header offset
const CERT_DIR: usize = OPT + 112 + 4 * 8;

/// MZ stub, PE32+ headers (SizeOfHeaders 0x200), three sections listed out of file order (one
/// empty), 0x40 bytes of trailing data, a 0x40-byte certificate table. Length 0x580.
fn test_pe() -> Vec<u8> {
    let mut b: Vec<u8> = (0..0x580u32).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    let put16 = |b: &mut Vec<u8>, o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    b[0..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    put16(&mut b, 0x84, 0x8664);
    put16(&mut b, 0x86, 3); // NumberOfSections
    put16(&mut b, 0x94, 0xf0); // SizeOfOptionalHeader
    put16(&mut b, OPT, 0x20b);
    put32(&mut b, OPT + 60, 0x200); // SizeOfHeaders
    put32(&mut b, OPT + 64, 0xdead_beef); // CheckSum
    put32(&mut b, OPT + 108, 16); // NumberOfRvaAndSizes
    put32(&mut b, CERT_DIR, 0x540);
    put32(&mut b, CERT_DIR + 4, 0x40);
    let table = OPT + 0xf0;
    for (i, (ptr, size)) in [(0x400u32, 0x100u32), (0x200, 0x200), (0x900, 0)]
        .into_iter()
        .enumerate()
    {
        put32(&mut b, table + 40 * i + 16, size);
        put32(&mut b, table + 40 * i + 20, ptr);
    }
    b
}

#[test]
fn authenticode_of_a_constructed_pe_matches_independent_computations() {
    let pe = test_pe();
    // 1. Hand-listed ranges: headers minus CheckSum and the certificate directory entry, then
    //    the sections by file offset, then trailing data up to the certificate table.
    let mut h = sha2::Sha384::new();
    for r in [
        0..OPT + 64,
        OPT + 68..CERT_DIR,
        CERT_DIR + 8..0x200,
        0x200..0x400,
        0x400..0x500,
        0x500..0x540,
    ] {
        h.update(&pe[r]);
    }
    let by_hand: Sha384 = h.finalize().into();
    assert_eq!(authenticode_sha384(&pe).unwrap(), by_hand);
    // 2. A separate Python implementation of the PE/COFF spec algorithm, run on these bytes
    //    (the same construction in Python, bytes written to a file), printed this value.
    assert_eq!(
        hex::encode(by_hand),
        "871b3a63c4aa233d7be603f4d29d232a65997ba66ac1dd6eb75689809adc04208383dd29a5ac946b12b116d403fa1cb9"
    );
}

#[test]
fn excluded_bytes_do_not_count_and_hashed_bytes_do() {
    let pe = test_pe();
    let base = authenticode_sha384(&pe).unwrap();
    for o in [OPT + 64, OPT + 67, CERT_DIR, CERT_DIR + 3, 0x540, 0x57f] {
        let mut p = pe.clone();
        p[o] ^= 0xff;
        assert_eq!(
            authenticode_sha384(&p).unwrap(),
            base,
            "offset {o:#x} is excluded"
        );
    }
    for o in [0x2, 0x1f1, 0x210, 0x1ff, 0x200, 0x4ff, 0x500, 0x53f] {
        let mut p = pe.clone();
        p[o] ^= 0x01;
        assert_ne!(
            authenticode_sha384(&p).unwrap(),
            base,
            "offset {o:#x} is hashed"
        );
    }
    let layout = hashed_ranges(&pe).unwrap();
    assert!(layout.covers(0x210) && !layout.covers(OPT + 64) && !layout.covers(0x540));
}

#[test]
fn malformed_pe_images_are_errors() {
    let pe = test_pe();
    assert!(matches!(
        authenticode_sha384(&pe[..0x90]),
        Err(PeError::Truncated { .. })
    ));
    let mut p = pe.clone();
    p[0x81] = b'X';
    assert_eq!(
        authenticode_sha384(&p),
        Err(PeError::NoPeSignature { offset: 0x80 })
    );
    let mut p = pe.clone();
    p[OPT] = 0x0c;
    assert!(matches!(
        authenticode_sha384(&p),
        Err(PeError::OptionalHeaderMagic(0x20c))
    ));
    // A section past the end of the file.
    assert!(matches!(
        authenticode_sha384(&pe[..0x4f0]),
        Err(PeError::SectionOutOfBounds { .. })
    ));
    // A certificate table larger than what follows the sections.
    let mut p = pe.clone();
    p[CERT_DIR + 4..CERT_DIR + 8].copy_from_slice(&0x100u32.to_le_bytes());
    assert!(matches!(
        authenticode_sha384(&p),
        Err(PeError::CertificateTable { .. })
    ));
    // SizeOfHeaders beyond the file.
    let mut p = pe.clone();
    p[OPT + 60..OPT + 64].copy_from_slice(&0x10000u32.to_le_bytes());
    assert!(matches!(
        authenticode_sha384(&p),
        Err(PeError::OutOfBounds {
            field: "SizeOfHeaders",
            ..
        })
    ));
    // Without the certificate directory entry (NumberOfRvaAndSizes <= 4) everything after the
    // sections is hashed, certificate bytes included.
    let mut p = pe.clone();
    p[OPT + 108..OPT + 112].copy_from_slice(&4u32.to_le_bytes());
    let d = authenticode_sha384(&p).unwrap();
    p[0x57f] ^= 1;
    assert_ne!(authenticode_sha384(&p).unwrap(), d);
}

// ---------------------------------------------------------------------------------------------
// QEMU's setup-header edits on a constructed bzImage.

/// A 12 KiB bzImage-like file: setup_sects 3, "HdrS", given protocol/loadflags/xloadflags.
fn bzimage(protocol: u16, loadflags: u8, xloadflags: u16, initrd_addr_max: u32) -> Vec<u8> {
    let mut k = vec![0u8; 0x3000];
    k[0x1f1] = 3;
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    k[0x211] = loadflags;
    k[0x22c..0x230].copy_from_slice(&initrd_addr_max.to_le_bytes());
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k
}

fn rd32(k: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(k[o..o + 4].try_into().unwrap())
}

fn rd16(k: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(k[o..o + 2].try_into().unwrap())
}

const GIB: u64 = 1 << 30;

#[test]
fn modern_kernel_header_edits() {
    let orig = bzimage(0x20f, 0x01, 0x7f, 0x7fff_ffff);
    let mut k = orig.clone();
    let p = QemuBootParams::new(2 * GIB, Some(0x1000_0000), "console=ttyS0");
    let patch = qemu_patch_setup_header(&mut k, &p).unwrap();
    assert_eq!(patch.protocol, 0x20f);
    assert_eq!(rd32(&k, 0x228), 0x20000, "cmd_line_ptr");
    assert_eq!(k[0x210], 0xb0, "type_of_loader");
    assert_eq!(k[0x211], 0x81, "loadflags");
    assert_eq!(rd16(&k, 0x224), 0xfe00, "heap_end_ptr");
    // initrd_max = 2 GiB - 0x28000 - 1 (XLF_CAN_BE_LOADED_ABOVE_4G lifts the header limit).
    assert_eq!(rd32(&k, 0x218), 0x6ffd_7000, "ramdisk_image");
    assert_eq!(rd32(&k, 0x21c), 0x1000_0000, "ramdisk_size");
    assert_eq!(patch.initrd_addr, Some(0x6ffd_7000));
    // Nothing else changed.
    let changed: Vec<usize> = (0..k.len()).filter(|&i| k[i] != orig[i]).collect();
    let allowed = |i: usize| {
        patch
            .fields
            .iter()
            .any(|f| (f.offset..f.offset + f.bytes.len()).contains(&i))
    };
    assert!(changed.iter().all(|&i| allowed(i)), "{changed:x?}");
    assert_eq!(QEMU_ACPI_DATA_SIZE, 0x28000);
}

#[test]
fn initrd_address_depends_on_memory_below_the_q35_split() {
    let addr = |mem: u64, xlf: u16, max: u32| {
        let mut k = bzimage(0x20f, 0x01, xlf, max);
        qemu_patch_setup_header(&mut k, &QemuBootParams::new(mem, Some(0x1000_0000), ""))
            .unwrap()
            .initrd_addr
            .unwrap()
    };
    assert_eq!(addr(GIB, 0x2, 0), 0x2ffd_7000);
    assert_eq!(addr(2 * GIB, 0x2, 0), 0x6ffd_7000);
    // Between 2 GiB and 0xb0000000 all RAM is below 4 GiB.
    assert_eq!(addr(0xa000_0000, 0x2, 0), 0x8ffd_7000);
    // From 0xb0000000 on, q35 maps 2 GiB below 4 GiB: same as 2 GiB.
    for mem in [0xb000_0000, 3 * GIB, 64 * GIB] {
        assert_eq!(addr(mem, 0x2, 0), 0x6ffd_7000, "{mem:#x}");
    }
    // Without XLF_CAN_BE_LOADED_ABOVE_4G the header's initrd_addr_max applies.
    assert_eq!(addr(2 * GIB, 0x0, 0x37ff_ffff), 0x27ff_f000);
    assert_eq!(addr(2 * GIB, 0x40, 0x37ff_ffff), 0x27ff_f000);
    // ... unless memory is lower.
    assert_eq!(addr(GIB / 2, 0x0, 0x37ff_ffff), 0x0ffd_7000);
}

#[test]
fn vga_and_old_protocols() {
    let mode = |cmdline: &str| {
        let mut k = bzimage(0x20f, 0x01, 0x2, 0);
        qemu_patch_setup_header(&mut k, &QemuBootParams::new(2 * GIB, None, cmdline))
            .map(|_| rd16(&k, 0x1fa))
    };
    assert_eq!(mode("console=ttyS0 vga=0x317"), Ok(0x317));
    assert_eq!(mode("vga=791 quiet"), Ok(791));
    assert_eq!(mode("vga=0317"), Ok(0o317));
    assert_eq!(mode("vga=normal"), Ok(0xffff));
    assert_eq!(mode("vga=ext"), Ok(0xfffe));
    assert_eq!(mode("vga=ask"), Ok(0xfffd));
    assert_eq!(mode("console=ttyS0"), Ok(0));
    assert!(matches!(
        mode("vga=bogus"),
        Err(QemuPatchError::InvalidVga(_))
    ));
    assert!(matches!(mode("vga=0x"), Err(QemuPatchError::InvalidVga(_))));

    // A low kernel (protocol 2.01, not LOADED_HIGH): command line below 0x9a000.
    let mut k = bzimage(0x201, 0x00, 0, 0);
    qemu_patch_setup_header(&mut k, &QemuBootParams::new(GIB, Some(4096), "abc")).unwrap();
    assert_eq!(rd16(&k, 0x20), 0xa33f, "cl_magic");
    assert_eq!(rd16(&k, 0x22), 0x9ff0, "cl_offset");
    assert_eq!(rd16(&k, 0x224), 0x9df0, "heap_end_ptr");
    assert_eq!(rd32(&k, 0x228), 0, "no cmd_line_ptr before 2.02");
    // Protocol 2.01 has no initrd_addr_max: 0x37ffffff.
    assert_eq!(rd32(&k, 0x218), (0x37ff_ffff - 4096) & !4095);

    // No "HdrS": protocol 0, no initrd possible.
    let mut k = vec![0u8; 0x1000];
    let e = qemu_patch_setup_header(&mut k, &QemuBootParams::new(GIB, Some(1), ""));
    assert_eq!(
        e,
        Err(QemuPatchError::InitrdNeedsProtocol200 { protocol: 0 })
    );
}

#[test]
fn refusals_and_the_unpatched_mode() {
    let k = bzimage(0x20f, 0x01, 0x2, 0);
    let p = |initrd| QemuBootParams::new(2 * GIB, initrd, "");
    let run = |mut k: Vec<u8>, p: &QemuBootParams| qemu_patch_setup_header(&mut k, p);
    assert!(matches!(
        run(k.clone(), &p(Some(0x8000_0000))),
        Err(QemuPatchError::InitrdTooLarge { .. })
    ));
    assert!(matches!(
        run(k[..512].to_vec(), &p(None)),
        Err(QemuPatchError::TooShort { .. })
    ));
    assert!(matches!(
        run(k[..0x600].to_vec(), &p(None)),
        Err(QemuPatchError::SetupTooLarge {
            setup_size: 0x800,
            len: 0x600
        })
    ));
    let mut elf = k.clone();
    elf[..4].copy_from_slice(b"\x7fELF");
    assert!(matches!(
        run(elf, &p(None)),
        Err(QemuPatchError::NotBzImage(_))
    ));

    let mut unpatched = p(Some(4096));
    unpatched.header_patching = HeaderPatching::Unpatched;
    let mut k2 = k.clone();
    let patch = qemu_patch_setup_header(&mut k2, &unpatched).unwrap();
    assert!(patch.fields.is_empty());
    assert_eq!(k2, k);
}

// ---------------------------------------------------------------------------------------------
// A real kernel, when one is provided (no network in tests). Values produced on 2025-11 from
// Debian's linux-image-6.12.86+deb12-cloud-amd64 (bookworm-backports, `apt-get download` +
// `dpkg-deb -x`), file SHA-256 1537a713…e19a:
// * SHA-256 Authenticode 65c36c6f…8ffc is the digest inside Debian's Secure Boot signature
//   (`osslsigncode verify` prints it as both "Current" and "Calculated message digest");
// * SHA-384 values from a separate Python implementation of the PE/COFF algorithm and of QEMU's
//   header edits.
// Run with COCOON_REAL_KERNEL=/path/to/vmlinuz-6.12.86+deb12-cloud-amd64.

#[test]
fn real_debian_kernel_when_available() {
    let Ok(path) = std::env::var("COCOON_REAL_KERNEL") else {
        eprintln!("skipped: set COCOON_REAL_KERNEL to the Debian 6.12.86 cloud vmlinuz");
        return;
    };
    let k = std::fs::read(path).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&k)),
        "1537a7132b1c8eab796b3236570aa9651ec14900a721d4bc3ca54f2dcfade19a"
    );
    assert_eq!(
        hex::encode(authenticode_digest::<Sha256>(&k).unwrap()),
        "65c36c6fbbc8d8349ca84846b49082366c1c89172e550c10526bd2b2595f8ffc"
    );
    assert_eq!(
        hex::encode(authenticode_sha384(&k).unwrap()),
        "0288fb511e732b9195d7ac8fe922b59968e23a7cc40e6cfcd37630db5f4ac9c5c662bb9b49b4ac65828726c95070cbf3"
    );
    // The setup header (0x1f1..0x268) lies inside SizeOfHeaders (0x1000): QEMU's edits count.
    let layout = hashed_ranges(&k).unwrap();
    assert!((0x1f1..0x268).all(|o| layout.covers(o)));
    let m = |mem, initrd, cmdline: &str| {
        hex::encode(kernel_measurement(&k, &QemuBootParams::new(mem, initrd, cmdline)).unwrap())
    };
    let two_g = "13d3642eb42d8a7eca3e695ef7e79c56725dbfe0686a041771c6204b578b49b44cabe552df9e10cf50868197efdeb30b";
    assert_eq!(m(2 * GIB, Some(30_000_000), "console=ttyS0"), two_g);
    assert_eq!(m(8 * GIB, Some(30_000_000), "console=ttyS0"), two_g);
    assert_eq!(
        m(GIB, Some(30_000_000), "console=ttyS0"),
        "0ca4cdce081380875aa99d4d5d876d01efd3d75d323e169168c6601db3fa9b3f5a8f7f880bf389e443ee6e28eebb49db"
    );
    assert_eq!(
        m(2 * GIB, None, ""),
        "f4655265b70801d96c5c31c5ec14dbfc8ce42b0e3a16cee13966cc9fa914ef450c2cdc3e164ddc2205d1c41724bb80b2"
    );
    let mut unpatched = QemuBootParams::new(2 * GIB, Some(30_000_000), "");
    unpatched.header_patching = HeaderPatching::Unpatched;
    assert_eq!(
        kernel_measurement(&k, &unpatched).unwrap(),
        authenticode_sha384(&k).unwrap()
    );
}
