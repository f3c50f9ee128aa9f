//! CCEL event logs: the real logs in ../shared/testdata/tdx/eventlogs replay to the RTMRs its
//! README lists; truncated, corrupted and malformed logs give typed errors (or a shorter valid
//! log), never a panic.

use measurements::eventlog::*;
use measurements::Sha384;
use sha2::Digest;

const EVENTLOGS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tdx/eventlogs"
);

/// (file, RTMR0..3) from ../shared/testdata/README.md; "0" means 48 zero bytes.
const README: &[(&str, [&str; 4])] = &[
    ("CCEL_data", [
        "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
        "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
        "0", "0",
    ]),
    ("CCEL_data_ovmf", [
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
        "0",
    ]),
    ("CCEL_data_grub", [
        "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
        "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
        "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
        "0",
    ]),
    ("CCEL_data_gcp", [
        "3300980705adf09d28b707b79699d9874892164280832be2c386a715b6e204e0897fb564a064f810659207ba862b304f",
        "204d49f78d29918fe7b2f694e76653861a0c2a018987d2c3a54266eff737232524cf0af68c4d180e2f8c2c0937f21967",
        "0", "0",
    ]),
    ("CCEL_data_grub_gke", [
        "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
        "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
        "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
        "0",
    ]),
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{EVENTLOGS}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn expected(hexes: &[&str; 4]) -> [Sha384; 4] {
    hexes.map(|h| {
        if h == "0" {
            [0; 48]
        } else {
            measurements::parse_hex_array(h, "rtmr").unwrap()
        }
    })
}

fn all_logs() -> Vec<(&'static str, Vec<u8>, EventLog)> {
    README
        .iter()
        .map(|(name, _)| {
            let area = read(name);
            let log = parse(&area).unwrap_or_else(|e| panic!("{name}: {e}"));
            (*name, area, log)
        })
        .collect()
}

#[test]
fn real_logs_replay_to_the_readme_rtmrs() {
    for (name, rtmrs) in README {
        let log = parse(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            log.replay().map(hex::encode),
            expected(rtmrs).map(hex::encode),
            "{name}"
        );
    }
}

#[test]
fn real_logs_structure() {
    for (name, area, log) in all_logs() {
        let s = &log.spec_id;
        assert_eq!(
            s.algorithms,
            vec![AlgorithmSize {
                alg_id: TPM_ALG_SHA384,
                digest_size: 48
            }],
            "{name}"
        );
        assert_eq!((s.spec_version_major, s.spec_version_minor), (2, 0));
        assert!(log.events.len() >= 5, "{name}");
        // The tail after the log is padding.
        let end = log.end.offset();
        assert!(area[end..].iter().all(|&b| b == 0xFF) || area[end..].iter().all(|&b| b == 0));
        for ev in &log.events {
            assert_eq!(ev.digests.len(), 1);
            assert!(ev.rtmr_index().is_some() || ev.event_type == EV_NO_ACTION);
        }
    }
    let td_shim = parse(&read("CCEL_data")).unwrap();
    assert_eq!(td_shim.spec_id.vendor_info, b"td-shim");
    assert_eq!(td_shim.end, LogEnd::ZeroRecord { offset: 0x265e });
    assert_eq!(td_shim.events.len(), 5);
    let ovmf = parse(&read("CCEL_data_ovmf")).unwrap();
    assert_eq!(ovmf.end, LogEnd::Padding { offset: 0x848 });
}

#[test]
fn encode_reproduces_the_area_prefix() {
    for (name, area, log) in all_logs() {
        let bytes = log.encode();
        assert_eq!(bytes, area[..log.end.offset()], "{name}");
        let again = parse(&bytes).unwrap();
        assert_eq!(again.events, log.events);
        assert_eq!(again.spec_id, log.spec_id);
        assert_eq!(
            again.end,
            LogEnd::AreaEnd {
                offset: bytes.len()
            }
        );
    }
}

#[test]
fn digest_checks_on_real_logs() {
    let mut verified = 0;
    for (name, _, log) in all_logs() {
        for (i, ev) in log.events.iter().enumerate() {
            let check = ev.check_digest();
            assert!(
                !matches!(check, DigestCheck::Mismatch { .. }),
                "{name} event {i} {}: {check}",
                ev.type_name()
            );
            match ev.event_type {
                EV_SEPARATOR
                | EV_EFI_ACTION
                | EV_EFI_VARIABLE_DRIVER_CONFIG
                | EV_EFI_VARIABLE_BOOT
                | EV_EFI_GPT_EVENT
                | EV_EFI_VARIABLE_AUTHORITY => {
                    assert_eq!(check, DigestCheck::Verified, "{name} event {i}")
                }
                EV_NO_ACTION => assert_eq!(check, DigestCheck::NotExtended),
                _ => {}
            }
            if check == DigestCheck::Verified {
                verified += 1;
            }
        }
    }
    assert!(verified > 40, "{verified}");
}

#[test]
fn descriptions_decode_payloads() {
    let ovmf = parse(&read("CCEL_data_ovmf")).unwrap();
    let d: Vec<String> = ovmf.events.iter().map(Event::describe).collect();
    let has = |s: &str| d.iter().any(|x| x.contains(s));
    assert!(has("EFI_GLOBAL_VARIABLE:SecureBoot = "), "{d:#?}");
    assert!(has("EFI_IMAGE_SECURITY_DATABASE:db"));
    assert!(has("EFI_GLOBAL_VARIABLE:BootOrder = 0000"));
    assert!(has("\"Calling EFI Application from Boot Option\""));
    assert!(has("handoff tables \"TdxTable\" 1: "));
    assert!(has(
        "firmware blob \"Fv(XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)\" at 0xffc00000"
    ));
    assert!(has("tag 0x8f3b22ed: \"LOADED_IMAGE::LoadOptions\""));
    assert!(has("separator"));
    assert!(has("\"ACPI DATA\""));
    let grub = parse(&read("CCEL_data_grub")).unwrap();
    let d: Vec<String> = grub.events.iter().map(Event::describe).collect();
    assert!(
        d.iter().any(|x| x.contains("\\EFI\\BOOT\\fbx64.efi")),
        "{d:#?}"
    );
    assert!(d.iter().any(|x| x.contains("gpt disk ")));
    assert!(d.iter().any(|x| x == "\"MokList\""));
    let gke = parse(&read("CCEL_data_grub_gke")).unwrap();
    let d: Vec<String> = gke.events.iter().map(Event::describe).collect();
    assert!(d.iter().any(|x| x == "\".cmdline\""), "{d:#?}");
    assert_eq!(
        d[0],
        "SP800-155 Event3 (reference manifest information), 160 bytes"
    );
    let td_shim = parse(&read("CCEL_data")).unwrap();
    let d: Vec<String> = td_shim.events.iter().map(Event::describe).collect();
    assert!(d[0].starts_with("\"td_hob\" + "), "{d:#?}");
    assert!(d
        .iter()
        .any(|x| x.contains("firmware blob \"td_payload\" at ")));
    assert_eq!(ovmf.events[0].type_name(), "EV_EFI_HANDOFF_TABLES2");
}

/// Every prefix of a real log parses to a prefix of its events or to a truncation error.
#[test]
fn truncated_logs_give_typed_errors_or_shorter_logs() {
    for (name, area, log) in all_logs() {
        let end = log.end.offset();
        let step = if end < 10_000 { 1 } else { 3 };
        for cut in (0..=end + 8).step_by(step) {
            match parse(&area[..cut]) {
                Ok(short) => {
                    assert!(short.events.len() <= log.events.len(), "{name} cut {cut}");
                    assert_eq!(short.events[..], log.events[..short.events.len()]);
                    if cut >= end {
                        assert_eq!(short.events.len(), log.events.len());
                    }
                }
                Err(
                    EventLogError::Truncated { offset, .. }
                    | EventLogError::OversizedEvent { offset, .. },
                ) => assert!(offset <= cut, "{name} cut {cut}"),
                Err(e) => panic!("{name} cut {cut}: unexpected {e:?}"),
            }
        }
    }
}

/// Byte flips in every structural byte of each log (record headers, digests, the first bytes
/// of each payload, the tail) and in a sample of payload bytes: no panic; a parse that succeeds
/// still describes and checks the event that was hit.
#[test]
fn corrupted_logs_never_panic() {
    for (name, area, log) in all_logs() {
        let end = log.end.offset();
        let mut positions: Vec<usize> = (0..log.events[0].offset).collect();
        for ev in &log.events {
            let data_at = ev.offset + 14 + 48 + 4;
            positions.extend(ev.offset..data_at + ev.data.len().min(64));
            positions.extend((data_at..data_at + ev.data.len()).step_by(97));
        }
        positions.extend(end..end + 16);
        let mut buf = area[..end + 64].to_vec();
        for &pos in &positions {
            for x in [0x01u8, 0x80, 0xFF] {
                buf[pos] ^= x;
                if let Ok(l) = parse(&buf) {
                    if let Some(ev) = l.events.iter().rev().find(|e| e.offset <= pos) {
                        let _ = (ev.describe(), ev.type_name(), ev.check_digest());
                    }
                }
                buf[pos] ^= x;
            }
        }
        assert_eq!(parse(&buf).unwrap().events, log.events, "{name}");
    }
}

/// A flip in the SHA-384 digest of a measured event changes the replay; a flip in the data of
/// an event whose digest is the hash of its data shows up as a mismatch.
#[test]
fn byte_flip_negatives() {
    for (name, area, log) in all_logs() {
        let want = log.replay();
        for ev in log.events.iter().filter(|e| e.rtmr_index().is_some()) {
            // Digest starts after mr index, type, count and alg id.
            let at = ev.offset + 14 + 47;
            let mut bad = area.clone();
            bad[at] ^= 1;
            assert_ne!(parse(&bad).unwrap().replay(), want, "{name} @{at}");
            if matches!(ev.event_type, EV_SEPARATOR | EV_EFI_ACTION) {
                let data_at = ev.offset + 14 + 48 + 4;
                let mut bad = area.clone();
                bad[data_at] ^= 0x20;
                let l = parse(&bad).unwrap();
                let flipped = l.events.iter().find(|e| e.offset == ev.offset).unwrap();
                assert!(matches!(
                    flipped.check_digest(),
                    DigestCheck::Mismatch { .. }
                ));
                assert_eq!(l.replay(), want, "data is not replayed");
            }
        }
    }
}

/// Deterministic pseudo-random inputs, with and without a valid header in front.
#[test]
fn sweep_random_inputs() {
    let header = &read("CCEL_data_ovmf")[..0x41];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..4000 {
        let len = (next() % 600) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            buf.splice(0..0, header.iter().copied());
        }
        if round % 4 == 0 && buf.len() > 0x50 {
            // A plausible record header: small mr index and type, one SHA-384 digest.
            buf[0x41..0x4d].copy_from_slice(&[1, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0]);
        }
        if let Ok(l) = parse(&buf) {
            for ev in &l.events {
                let _ = (ev.describe(), ev.check_digest());
            }
        }
    }
}

// ---- Synthetic logs for each error ----

fn header(algs: &[(u16, u16)]) -> Vec<u8> {
    let mut spec = SPEC_ID_SIGNATURE.to_vec();
    spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
    spec.extend_from_slice(&(algs.len() as u32).to_le_bytes());
    for (a, s) in algs {
        spec.extend_from_slice(&a.to_le_bytes());
        spec.extend_from_slice(&s.to_le_bytes());
    }
    spec.push(0);
    let mut out = vec![0, 0, 0, 0, 3, 0, 0, 0];
    out.extend_from_slice(&[0; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    out
}

fn record(mr: u32, ty: u32, digests: &[(u16, &[u8])], data: &[u8]) -> Vec<u8> {
    let mut out = mr.to_le_bytes().to_vec();
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
    for (a, d) in digests {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(d);
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

const SHA384_ONLY: &[(u16, u16)] = &[(TPM_ALG_SHA384, 48)];

fn action(mr: u32, text: &[u8]) -> Vec<u8> {
    let d: [u8; 48] = sha2::Sha384::digest(text).into();
    record(mr, EV_EFI_ACTION, &[(TPM_ALG_SHA384, &d)], text)
}

#[test]
fn synthetic_log_replays_every_rtmr() {
    let mut area = header(SHA384_ONLY);
    for mr in 1..=4 {
        area.extend(action(mr, format!("event for mr {mr}").as_bytes()));
    }
    area.extend(record(
        0,
        EV_NO_ACTION,
        &[(TPM_ALG_SHA384, &[0; 48])],
        b"info\0",
    ));
    area.extend([0xFF; 100]);
    let log = parse(&area).unwrap();
    assert_eq!(log.events.len(), 5);
    let rtmr = log.replay();
    for mr in 1..=4u32 {
        let d: [u8; 48] = sha2::Sha384::digest(format!("event for mr {mr}")).into();
        let want = measurements::registers::extend_sha384(&[0; 48], &d);
        assert_eq!(rtmr[mr as usize - 1], want);
    }
    assert!(matches!(log.end, LogEnd::Padding { .. }));
    assert_eq!(log.events[0].check_digest(), DigestCheck::Verified);
}

#[test]
fn multi_bank_logs_use_the_sha384_digest() {
    let algs = [(TPM_ALG_SHA256, 32), (TPM_ALG_SHA384, 48), (0x00AA, 5)];
    let mut area = header(&algs);
    let d384: [u8; 48] = sha2::Sha384::digest(b"x").into();
    area.extend(record(
        2,
        EV_EFI_ACTION,
        &[
            (TPM_ALG_SHA256, &[1; 32]),
            (0x00AA, &[2; 5]),
            (TPM_ALG_SHA384, &d384),
        ],
        b"x",
    ));
    let log = parse(&area).unwrap();
    assert_eq!(log.events[0].sha384, d384);
    assert_eq!(log.events[0].digests.len(), 3);
    assert_eq!(
        log.replay()[1],
        measurements::registers::extend_sha384(&[0; 48], &d384)
    );
    assert_eq!(log.encode(), area);
}

#[test]
fn malformed_logs_give_typed_errors() {
    use EventLogError as E;
    let ok = header(SHA384_ONLY);
    let with = |rec: Vec<u8>| [ok.clone(), rec].concat();
    let d = [7u8; 48];

    let mut not_agile = ok.clone();
    not_agile[4] = 4;
    assert!(matches!(parse(&not_agile), Err(E::Header { .. })));
    let mut bad_sig = ok.clone();
    bad_sig[32] = b'X';
    assert!(matches!(parse(&bad_sig), Err(E::Header { .. })));
    assert!(matches!(
        parse(&header(&[(TPM_ALG_SHA256, 32)])),
        Err(E::NoSha384Algorithm)
    ));
    assert_eq!(
        parse(&header(&[(TPM_ALG_SHA384, 32)])),
        Err(E::DigestSize {
            alg_id: TPM_ALG_SHA384,
            expected: 48,
            got: 32
        })
    );
    assert_eq!(
        parse(&header(&[(TPM_ALG_SHA384, 48), (TPM_ALG_SHA384, 48)])),
        Err(E::DuplicateAlgorithm {
            alg_id: TPM_ALG_SHA384
        })
    );
    assert!(matches!(parse(&header(&[])), Err(E::Header { .. })));
    let mut huge_n = ok.clone();
    huge_n[0x38..0x3c].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse(&huge_n),
        Err(E::Truncated {
            what: "algorithm list",
            ..
        })
    ));
    let mut trailing = ok.clone();
    trailing[28] += 1;
    trailing.push(0);
    assert!(matches!(parse(&trailing), Err(E::Header { .. })));
    assert!(matches!(
        parse(&ok[..10]),
        Err(E::Truncated { offset: 8, .. })
    ));

    let at = ok.len();
    assert_eq!(
        parse(&with(record(
            1,
            EV_EFI_ACTION,
            &[(TPM_ALG_SHA256, &[0; 32])],
            b"a"
        ))),
        Err(E::UnknownAlgorithm {
            index: 0,
            offset: at,
            alg_id: TPM_ALG_SHA256
        })
    );
    assert_eq!(
        parse(&with(record(
            1,
            EV_EFI_ACTION,
            &[(TPM_ALG_SHA384, &d), (TPM_ALG_SHA384, &d)],
            b"a"
        ))),
        Err(E::DigestCount {
            index: 0,
            offset: at,
            count: 2,
            declared: 1
        })
    );
    assert_eq!(
        parse(&with(record(1, EV_EFI_ACTION, &[], b"a"))),
        Err(E::MissingSha384 {
            index: 0,
            offset: at
        })
    );
    let two = header(&[(TPM_ALG_SHA384, 48), (TPM_ALG_SHA256, 32)]);
    let dup = record(
        1,
        EV_EFI_ACTION,
        &[(TPM_ALG_SHA384, &d), (TPM_ALG_SHA384, &d)],
        b"a",
    );
    assert!(matches!(
        parse(&[two.clone(), dup].concat()),
        Err(E::DuplicateDigest { .. })
    ));
    let only256 = record(1, EV_EFI_ACTION, &[(TPM_ALG_SHA256, &[0; 32])], b"a");
    assert!(matches!(
        parse(&[two, only256].concat()),
        Err(E::MissingSha384 { .. })
    ));

    let mut oversized = with(record(1, EV_EFI_ACTION, &[(TPM_ALG_SHA384, &d)], b"abc"));
    let size_at = at + 14 + 48;
    oversized[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        parse(&oversized),
        Err(E::OversizedEvent {
            index: 0,
            offset: at,
            size: u32::MAX,
            remaining: 3
        })
    );
    for mr in [0, 5, u32::MAX - 1] {
        assert!(matches!(
            parse(&with(record(mr, EV_SEPARATOR, &[(TPM_ALG_SHA384, &d)], &[0; 4]))),
            Err(E::MrIndex { mr_index, .. }) if mr_index == mr
        ));
    }
    assert!(matches!(
        parse(&with(record(1, EV_SEPARATOR, &[(TPM_ALG_SHA384, &d)], &[0; 4]))[..at + 30]),
        Err(E::Truncated { what: "digest", .. })
    ));
    assert!(matches!(
        parse(&with(vec![1, 2, 3])),
        Err(E::Truncated {
            what: "event header",
            ..
        })
    ));
}

#[test]
fn log_end_markers() {
    let ok = header(SHA384_ONLY);
    let ev = action(1, b"a");
    let log = |tail: &[u8]| parse(&[ok.clone(), ev.clone(), tail.to_vec()].concat()).unwrap();
    let at = ok.len() + ev.len();
    assert_eq!(log(&[]).end, LogEnd::AreaEnd { offset: at });
    assert_eq!(log(&[0; 7]).end, LogEnd::AreaEnd { offset: at });
    assert_eq!(log(&[0xFF; 300]).end, LogEnd::Padding { offset: at });
    assert_eq!(log(&[0; 300]).end, LogEnd::ZeroRecord { offset: at });
    // A record with event size zero ends the log, and so does event type zero.
    let zero_size = record(1, EV_EFI_ACTION, &[(TPM_ALG_SHA384, &[0; 48])], b"");
    let l = log(&[zero_size, action(2, b"after")].concat());
    assert_eq!(
        (l.events.len(), l.end),
        (1, LogEnd::ZeroRecord { offset: at })
    );
    let zero_type = record(1, 0, &[(TPM_ALG_SHA384, &[0; 48])], b"x");
    assert_eq!(log(&zero_type).end, LogEnd::ZeroRecord { offset: at });
}

fn ccel_table(laml: u64) -> Vec<u8> {
    let mut t = b"CCEL".to_vec();
    t.extend_from_slice(&56u32.to_le_bytes());
    t.push(1); // revision
    t.push(0); // checksum, fixed below
    t.extend_from_slice(b"COCOON");
    t.extend_from_slice(b"TESTTABL");
    t.extend_from_slice(&[1, 0, 0, 0, b'T', b'E', b'S', b'T', 1, 0, 0, 0]);
    t.extend_from_slice(&[CC_TYPE_TDX, 0, 0, 0]);
    t.extend_from_slice(&laml.to_le_bytes());
    t.extend_from_slice(&0x7f00_0000u64.to_le_bytes());
    let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

#[test]
fn ccel_table_parses_and_bounds_the_area() {
    let t = CcelTable::parse(&ccel_table(0x10000)).unwrap();
    assert_eq!(
        (t.cc_type, t.laml, t.lasa, t.revision),
        (CC_TYPE_TDX, 0x10000, 0x7f00_0000, 1)
    );
    assert_eq!(&t.oem_id, b"COCOON");
    let area = read("CCEL_data_ovmf");
    assert_eq!(parse_with_table(&area, &t), parse(&area));
    assert_eq!(t.bound(&area).len(), 0x10000);
    let small = CcelTable::parse(&ccel_table(0x100)).unwrap();
    assert!(matches!(
        parse_with_table(&area, &small),
        Err(EventLogError::Truncated { .. } | EventLogError::OversizedEvent { .. })
    ));

    let good = ccel_table(0x10000);
    assert!(matches!(
        CcelTable::parse(&good[..55]),
        Err(CcelTableError::Truncated { .. })
    ));
    let mut sig = good.clone();
    sig[0] = b'D';
    assert!(matches!(
        CcelTable::parse(&sig),
        Err(CcelTableError::Signature { .. })
    ));
    let mut sum = good.clone();
    sum[50] ^= 1;
    assert!(matches!(
        CcelTable::parse(&sum),
        Err(CcelTableError::Checksum { .. })
    ));
    let mut len = good.clone();
    len[4] = 200;
    assert!(matches!(
        CcelTable::parse(&len),
        Err(CcelTableError::Length { length: 200, .. })
    ));
}
