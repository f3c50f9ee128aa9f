//! Pinning a signed manifest through `[policy] manifest = {…}` with the append-only record of
//! accepted manifests: first accept, idempotent reload, newer release, swap, rollback, corrupt
//! record, explicit record path.

use std::path::{Path, PathBuf};

use measurements::manifest::{Manifest, SigningKey};
use measurements::TdRegisters;
use ratls::config::{ConfigError, PolicyConfig, Required};
use ratls::manifest_record::{RecordEntry, RecordError, RecordFileError};
use ratls::Role;

const NOW: u64 = 1_750_000_000;

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cocoon-ratls-record-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Writes a signed manifest for role "proxy" into `dir/manifest.json`.
fn publish(dir: &Path, issued_at: u64, mrtd: u8) -> measurements::ImageHash {
    let mut regs = TdRegisters::ZERO;
    regs.mrtd = [mrtd; 48];
    let m = Manifest::new("test publisher", issued_at).with_role("proxy", regs);
    let signed = m.sign(&key()).unwrap();
    std::fs::write(dir.join("manifest.json"), signed.to_json_pretty()).unwrap();
    regs.image_hash()
}

fn policy(extra: &str) -> PolicyConfig {
    toml::from_str(&format!(
        "manifest = {{ file = \"manifest.json\", publisher_keys = [\"{}\"], role = \"proxy\"{extra} }}",
        hex::encode(key().verifying_key().as_bytes())
    ))
    .unwrap()
}

fn record(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("manifest.json.accepted.jsonl")).unwrap_or_default()
}

fn refusal(err: ConfigError) -> RecordError {
    match err {
        ConfigError::ManifestRecord(RecordFileError::Refused { source, .. }) => source,
        other => panic!("expected a record refusal, got {other}"),
    }
}

#[test]
fn accept_reload_newer_swap_rollback() {
    let dir = tempdir();
    let v1 = publish(&dir, 100, 1);
    let p = policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW)
        .unwrap();
    assert!(p.allowed_images.as_ref().unwrap().contains(&v1));
    let text = record(&dir);
    assert_eq!(text.lines().count(), 1);
    let line: RecordEntry = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line.issued_at, 100);
    assert_eq!(line.publisher, "test publisher");
    assert_eq!(line.recorded_at, NOW);
    assert_eq!(line.images["proxy"], v1.to_string());
    assert_eq!(
        line.publisher_keys,
        vec![hex::encode(key().verifying_key().as_bytes())]
    );

    // Reloading the same manifest writes nothing.
    policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW + 10)
        .unwrap();
    assert_eq!(record(&dir), text);

    // A newer release is accepted and appended; the old line stays as it was.
    let v2 = publish(&dir, 200, 2);
    let p = policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW + 20)
        .unwrap();
    assert!(p.allowed_images.as_ref().unwrap().contains(&v2));
    let text2 = record(&dir);
    assert!(text2.starts_with(&text));
    assert_eq!(text2.lines().count(), 2);

    // Same issued_at, other content: swapped (allow_rollback does not help).
    publish(&dir, 200, 3);
    for extra in ["", ", allow_rollback = true"] {
        let err = policy(extra)
            .load_at(&dir, Required::by(Role::Worker), NOW + 30)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("manifest swapped: "), "{msg}");
        assert!(matches!(refusal(err), RecordError::Swapped { line: 2, .. }));
    }

    // An older release: rollback, unless explicitly allowed.
    publish(&dir, 100, 1);
    let err = policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW + 40)
        .unwrap_err();
    assert!(err.to_string().contains("manifest rollback: "), "{err}");
    assert!(matches!(
        refusal(err),
        RecordError::Rollback {
            issued_at: 100,
            newest: 200,
            ..
        }
    ));
    policy(", allow_rollback = true")
        .load_at(&dir, Required::by(Role::Worker), NOW + 50)
        .unwrap();
    assert_eq!(
        record(&dir),
        text2,
        "refusals and known manifests write nothing"
    );
}

#[test]
fn corrupt_record_is_refused_naming_the_line() {
    let dir = tempdir();
    publish(&dir, 100, 1);
    policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW)
        .unwrap();
    let path = dir.join("manifest.json.accepted.jsonl");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{good}{{\"format\": \"cocoon-manifest-record/v1\"\n"),
    )
    .unwrap();
    let err = policy("")
        .load_at(&dir, Required::by(Role::Worker), NOW)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("line 2: malformed record line"), "{msg}");
    assert!(msg.contains("manifest.json.accepted.jsonl"), "{msg}");
    assert!(matches!(
        refusal(err),
        RecordError::Malformed { line: 2, .. }
    ));
}

#[test]
fn explicit_record_path() {
    let dir = tempdir();
    publish(&dir, 100, 1);
    let err = policy(", record = \"state/accepted.jsonl\"")
        .load_at(&dir, Required::by(Role::Worker), NOW)
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::ManifestRecord(RecordFileError::Io { .. })),
        "{err}"
    );
    std::fs::create_dir_all(dir.join("state")).unwrap();
    policy(", record = \"state/accepted.jsonl\"")
        .load_at(&dir, Required::by(Role::Worker), NOW)
        .unwrap();
    let text = std::fs::read_to_string(dir.join("state/accepted.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(record(&dir), "");
    assert!(toml::from_str::<PolicyConfig>(
        "manifest = { file = \"m\", publisher_keys = [], role = \"proxy\", surprise = 1 }"
    )
    .is_err());
}
