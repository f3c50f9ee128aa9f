//! The `cocoon-measure eventlog` contract: JSON fields, text output and exit codes
//! (0 ok / match, 1 mismatch, 2 unusable).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use sha2::Digest;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/tdx");

/// RTMR0..2 of each log from ../shared/testdata/README.md (RTMR3 is zero in all of them).
const README: &[(&str, [&str; 3])] = &[
    ("CCEL_data", [
        "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
        "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
        "0",
    ]),
    ("CCEL_data_ovmf", [
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
    ]),
    ("CCEL_data_grub", [
        "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
        "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
        "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
    ]),
    ("CCEL_data_gcp", [
        "3300980705adf09d28b707b79699d9874892164280832be2c386a715b6e204e0897fb564a064f810659207ba862b304f",
        "204d49f78d29918fe7b2f694e76653861a0c2a018987d2c3a54266eff737232524cf0af68c4d180e2f8c2c0937f21967",
        "0",
    ]),
    ("CCEL_data_grub_gke", [
        "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
        "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
        "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
    ]),
];

const ZERO: &str = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

fn measure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
        .args(args)
        .output()
        .unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = measure(args);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn eventlog(name: &str) -> String {
    format!("{TESTDATA}/eventlogs/{name}")
}

/// A scratch file in this test binary's temporary directory.
fn scratch(name: &str, bytes: &[u8]) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("eventlog_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

fn full(h: &str) -> &str {
    if h == "0" {
        ZERO
    } else {
        h
    }
}

#[test]
fn replay_json_gives_the_readme_rtmrs() {
    for (name, rtmr) in README {
        let (code, out, err) = run(&["eventlog", "replay", "--log", &eventlog(name), "--json"]);
        assert_eq!(code, 0, "{name}: {err}");
        let j: Value = serde_json::from_str(&out).unwrap();
        let got: Vec<&str> = j["rtmr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            got,
            [full(rtmr[0]), full(rtmr[1]), full(rtmr[2]), ZERO],
            "{name}"
        );
        assert!(j["events"].as_u64().unwrap() >= 5);
    }
    let (_, out, _) = run(&[
        "eventlog",
        "replay",
        "--log",
        &eventlog("CCEL_data"),
        "--json",
    ]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["events"], 5);
}

#[test]
fn replay_text() {
    let (code, out, _) = run(&["eventlog", "replay", "--log", &eventlog("CCEL_data_ovmf")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("events: 20\n"), "{out}");
    assert!(out.contains(&format!("rtmr2: {}\n", README[1].1[2])));
    assert!(out.contains(&format!("rtmr3: {ZERO}\n")));
}

fn ccel_table(laml: u64) -> Vec<u8> {
    let mut t = b"CCEL".to_vec();
    t.extend_from_slice(&56u32.to_le_bytes());
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"COCOONTESTTABL\x01\x00\x00\x00TEST\x01\x00\x00\x00");
    t.extend_from_slice(&[2, 0, 0, 0]);
    t.extend_from_slice(&laml.to_le_bytes());
    t.extend_from_slice(&0x7f00_0000u64.to_le_bytes());
    let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

#[test]
fn acpi_table_bounds_the_area() {
    let table = scratch("ccel.table", &ccel_table(0x10000));
    let log = eventlog("CCEL_data_grub");
    let args = [
        "eventlog",
        "replay",
        "--log",
        &log,
        "--acpi-table",
        &table,
        "--json",
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["rtmr"][2], README[2].1[2]);
    let (code, out, _) = run(&["eventlog", "show", "--log", &log, "--acpi-table", &table]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "ccel table: cc type 2 (tdx), subtype 0, log area 0x10000 bytes at 0x7f000000\n"
        ),
        "{out}"
    );

    let short = scratch("ccel-short.table", &ccel_table(0x200));
    let (code, _, err) = run(&["eventlog", "replay", "--log", &log, "--acpi-table", &short]);
    assert_eq!(code, 2);
    assert!(err.contains("CCEL_data_grub"), "{err}");
    let mut bad = ccel_table(0x10000);
    bad[20] ^= 1;
    let bad = scratch("ccel-bad.table", &bad);
    let (code, _, err) = run(&["eventlog", "replay", "--log", &log, "--acpi-table", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn show_explains_every_event() {
    let (code, out, err) = run(&["eventlog", "show", "--log", &eventlog("CCEL_data_ovmf")]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("spec id event: version 2.0"), "{out}");
    let events: Vec<&&str> = lines.iter().filter(|l| l.contains(" mr")).collect();
    assert_eq!(events.len(), 20);
    assert!(
        events[0].starts_with("  0 mr1 rtmr0 EV_EFI_HANDOFF_TABLES2"),
        "{}",
        events[0]
    );
    assert!(out.contains("\"Calling EFI Application from Boot Option\" [digest verified]"));
    assert!(out.contains("mr3 rtmr2 EV_EVENT_TAG"));
    assert!(out.contains("[not checkable]"));
    assert!(!out.contains("MISMATCH"));
    assert!(out.ends_with(&format!("rtmr3: {ZERO}\n")));
    let (code, out, _) = run(&["eventlog", "show", "--log", &eventlog("CCEL_data_grub_gke")]);
    assert_eq!(code, 0);
    assert!(out.contains("  0 mr0 -     EV_NO_ACTION"), "{out}");
    assert!(out.contains("[not extended]"));
}

#[test]
fn show_flags_a_digest_that_contradicts_its_data() {
    let mut area = std::fs::read(eventlog("CCEL_data_ovmf")).unwrap();
    let at = find(&area, b"Exit Boot Services Invocation");
    area[at] = b'e';
    let tampered = scratch("ovmf-tampered", &area);
    let (code, out, _) = run(&["eventlog", "show", "--log", &tampered]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"exit Boot Services Invocation\" [MISMATCH (data hashes to "));
    assert!(out.contains("rejected: 1 event digest(s) contradict their data"));
    // Replay only looks at digests: still the README values.
    let (code, out, _) = run(&["eventlog", "replay", "--log", &tampered, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains(README[1].1[0]));
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn unusable_logs_exit_2() {
    let area = std::fs::read(eventlog("CCEL_data_ovmf")).unwrap();
    let cut = scratch("ovmf-cut", &area[..0x500]);
    let garbage = scratch("garbage", b"not an event log at all");
    for log in [cut.as_str(), garbage.as_str(), "/nonexistent/ccel"] {
        for sub in ["replay", "show"] {
            let (code, out, err) = run(&["eventlog", sub, "--log", log]);
            assert_eq!(code, 2, "{sub} {log}: {out}");
            assert!(err.starts_with("cocoon-measure: "), "{err}");
        }
    }
    let (_, _, err) = run(&["eventlog", "replay", "--log", &cut]);
    assert!(
        err.contains("truncated") || err.contains("exceeds"),
        "{err}"
    );
}

// ---- cocoon RTMR3 runtime logs ----

fn event_digest(name: &str, payload: &[u8]) -> [u8; 48] {
    let mut pre = b"cocoon/rtmr3-event/v1\0".to_vec();
    pre.extend_from_slice(&(name.len() as u32).to_le_bytes());
    pre.extend_from_slice(name.as_bytes());
    pre.extend_from_slice(payload);
    sha2::Sha384::digest(&pre).into()
}

fn config_log() -> (String, [u8; 48]) {
    let payload = [0xab; 32];
    let d = event_digest("config", &payload);
    let json = format!(
        r#"{{"format":"cocoon-rtmr3-log/v1","events":[{{"name":"config","payload":"{}","digest":"{}"}}]}}"#,
        hex::encode(payload),
        hex::encode(d)
    );
    let rtmr3: [u8; 48] = sha2::Sha384::digest([[0u8; 48], d].concat()).into();
    (json, rtmr3)
}

const QUOTE: &str = "quotes/dcapqvl_v4_uptodate.quote";
/// RTMR3 in a v4 quote: 48-byte header, then the TD report (RTMR0 at 328, RTMR3 at 472).
const RTMR3_AT: usize = 48 + 472;

#[test]
fn runtime_replays_and_matches_a_quote() {
    let (json, rtmr3) = config_log();
    let log = scratch("rtmr3-config.json", json.as_bytes());
    let (code, out, err) = run(&["eventlog", "runtime", "--log", &log]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("rtmr3: {}\n", hex::encode(rtmr3))),
        "{out}"
    );
    assert!(out.contains(&format!("config sha256: {}\n", "ab".repeat(32))));

    // A quote whose RTMR3 is the replayed log.
    let mut quote = std::fs::read(format!("{TESTDATA}/{QUOTE}")).unwrap();
    assert_eq!(quote[RTMR3_AT..RTMR3_AT + 48], [0; 48]);
    quote[RTMR3_AT..RTMR3_AT + 48].copy_from_slice(&rtmr3);
    let q = scratch("quote-with-rtmr3", &quote);
    let (code, out, _) = run(&[
        "eventlog", "runtime", "--log", &log, "--quote", &q, "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verdict"], "match");
    assert_eq!(j["reason"], Value::Null);
    assert_eq!(j["events"], 1);
    assert_eq!(j["config"], "ab".repeat(32));
    assert_eq!(j["rtmr3"], hex::encode(rtmr3));
    assert_eq!(j["quote_rtmr3"], hex::encode(rtmr3));
    let (code, out, _) = run(&["eventlog", "runtime", "--log", &log, "--quote", &q]);
    assert_eq!(code, 0);
    assert!(out.contains("match: the quote's rtmr3 equals the replayed log"));

    // The unmodified quote has RTMR3 = 0, which an empty log replays to.
    let empty = scratch(
        "rtmr3-empty.json",
        br#"{"format":"cocoon-rtmr3-log/v1","events":[]}"#,
    );
    let real = format!("{TESTDATA}/{QUOTE}");
    let (code, out, _) = run(&[
        "eventlog", "runtime", "--log", &empty, "--quote", &real, "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["config"],
        Value::Null
    );
}

#[test]
fn runtime_mismatch_exits_1_with_the_reason() {
    let (json, rtmr3) = config_log();
    let log = scratch("rtmr3-mismatch.json", json.as_bytes());
    let real = format!("{TESTDATA}/{QUOTE}");
    let (code, out, _) = run(&[
        "eventlog", "runtime", "--log", &log, "--quote", &real, "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["verdict"], "mismatch");
    assert_eq!(
        j["reason"],
        format!(
            "rtmr3 mismatch: log replays to {}, quote has {ZERO}",
            hex::encode(rtmr3)
        )
    );
    let (code, out, _) = run(&["eventlog", "runtime", "--log", &log, "--quote", &real]);
    assert_eq!(code, 1);
    assert!(out.contains("rejected: rtmr3 mismatch: log replays to "));
    // A hex quote with a non-zero RTMR3.
    let near = format!("{TESTDATA}/quotes/near_v4_uptodate.quote.hex");
    let (code, out, _) = run(&[
        "eventlog", "runtime", "--log", &log, "--quote", &near, "--hex",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("quote has 287a9242"), "{out}");
}

#[test]
fn runtime_unusable_inputs_exit_2() {
    let (json, _) = config_log();
    let tampered = json.replacen("\"payload\":\"ab", "\"payload\":\"ac", 1);
    let extra = json.replacen("{\"format\"", "{\"extra\":true,\"format\"", 1);
    let not_first = r#"{"format":"cocoon-rtmr3-log/v1","events":[{"name":"model","payload":"","digest":"00"}]}"#;
    for (i, bad) in [tampered.as_str(), extra.as_str(), not_first, "{"]
        .iter()
        .enumerate()
    {
        let log = scratch(&format!("rtmr3-bad-{i}.json"), bad.as_bytes());
        let (code, _, err) = run(&["eventlog", "runtime", "--log", &log]);
        assert_eq!(code, 2, "{bad}");
        assert!(err.contains("rtmr3 log"), "{err}");
    }
    let log = scratch("rtmr3-ok.json", json.as_bytes());
    let garbage = scratch("not-a-quote", b"xyz");
    let (code, _, _) = run(&["eventlog", "runtime", "--log", &log, "--quote", &garbage]);
    assert_eq!(code, 2);
    // --hex needs --quote (clap usage errors also exit 2).
    let (code, _, _) = run(&["eventlog", "runtime", "--log", &log, "--hex"]);
    assert_eq!(code, 2);
}

/// `eventlog expect-config` gives the RTMR3 of a runtime log holding just the config event, the
/// same from the disk file and from its digest.
#[test]
fn expect_config_matches_the_runtime_log_definition() {
    use measurements::runtime_log::{RuntimeEvent, RuntimeLog};
    use sha2::Digest as _;
    let dir = std::env::temp_dir().join(format!("cocoon-expect-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("config.tar");
    std::fs::write(&disk, b"not really a tar, but any bytes are a config disk").unwrap();
    let sha: [u8; 32] = sha2::Sha256::digest(std::fs::read(&disk).unwrap()).into();
    let mut log = RuntimeLog::default();
    log.append(RuntimeEvent::config(sha));
    let want = hex::encode(log.replay());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["rtmr3"].as_str().unwrap().to_string()
    };
    let from_disk = run(&[
        "eventlog",
        "expect-config",
        "--config-disk",
        disk.to_str().unwrap(),
        "--json",
    ]);
    let from_sha = run(&[
        "eventlog",
        "expect-config",
        "--config-sha256",
        &hex::encode(sha),
        "--json",
    ]);
    assert_eq!(from_disk, want);
    assert_eq!(from_sha, want);
    std::fs::remove_dir_all(&dir).unwrap();
}
