//! Publishing a release with `cocoon-measure manifest`: build records → `from-images` → `sign`
//! → `verify` → `diff` against a modified release. Exit codes: 0 ok / identical, 1 rejected /
//! different, 2 unusable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use measurements::manifest_diff::{BuildArtifact, BuildKernel, BuildRecord, BUILD_RECORD_FORMAT};
use measurements::TdRegisters;
use serde_json::Value;

const ISSUED_AT: &str = "1700000000";
const CONFIG_SHA256: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn measure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cocoon-manifest-publish-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small build record as `cocoon-image build` writes it; `initramfs` and `td_attributes`
/// vary between releases, and the registers follow them as they would in a real build.
fn write_record(
    dir: &Path,
    role: &str,
    initramfs: u8,
    td_attributes: u64,
    commit: &str,
) -> BuildRecord {
    let mut registers = TdRegisters::ZERO;
    registers.mrtd = [0x11; 48];
    registers.rtmr[0] = [0x22; 48];
    registers.rtmr[1] = [0x33; 48];
    registers.rtmr[2] = [initramfs; 48];
    registers.td_attributes = td_attributes.to_le_bytes();
    registers.xfam = 0xe7u64.to_le_bytes();
    if role == "proxy" {
        registers.rtmr[1][0] = 0x44;
    }
    let art = |b: u8| BuildArtifact {
        sha256: hex::encode([b; 32]),
        size: 100,
    };
    let record = BuildRecord {
        format: BUILD_RECORD_FORMAT.into(),
        role: role.into(),
        artifacts: BTreeMap::from([
            ("vmlinuz".to_string(), art(0xaa)),
            ("initramfs.cpio.gz".to_string(), art(initramfs)),
            ("cmdline".to_string(), art(0xcc)),
        ]),
        kernel: BuildKernel {
            package: "linux-image-6.12-cloud-amd64".into(),
            version: "6.12.1".into(),
            deb_sha256: hex::encode([0xdd; 32]),
            packages: Vec::new(),
        },
        cmdline: format!("console=ttyS0 cocoon.role={role}"),
        platform: "sim".into(),
        memory: 2 << 30,
        image_hash: registers.image_hash(),
        registers,
        register_sources: BTreeMap::from([("rtmr2".into(), "computed".into())]),
        source_commit: Some(commit.into()),
    };
    let out = dir.join(role);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
    record
}

fn write_model(dir: &Path) -> PathBuf {
    let p = dir.join("model.json");
    let model = serde_json::json!({
        "format": "cocoon-model/v1", "name": "tiny", "source_sha256": hex::encode([0x76; 32]),
        "image_sha256": hex::encode([0x77; 32]),
        "source_size": 5, "root_hash": hex::encode([0x78; 32]),
    });
    std::fs::write(&p, model.to_string()).unwrap();
    p
}

/// from-images over `release`'s worker and proxy, then sign: returns (unsigned, signed).
fn publish(dir: &Path, release: &str, key: &Path, model: &Path) -> (PathBuf, PathBuf) {
    let unsigned = dir.join(format!("{release}.manifest.json"));
    let signed = dir.join(format!("{release}.signed.json"));
    let worker = dir.join(release).join("worker");
    let proxy = dir.join(release).join("proxy");
    let cfg = format!("worker={CONFIG_SHA256}");
    let model = format!("worker={}", s(model));
    let o = measure(&[
        "manifest",
        "from-images",
        "--image",
        s(&worker),
        "--image",
        s(&proxy),
        "--publisher",
        "cocoon test publisher",
        "--issued-at",
        ISSUED_AT,
        "--config-sha256",
        &cfg,
        "--model",
        &model,
        "--out",
        s(&unsigned),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = measure(&[
        "manifest",
        "sign",
        "--manifest",
        s(&unsigned),
        "--key",
        s(key),
        "--out",
        s(&signed),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    (unsigned, signed)
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("publisher.key");
    let o = measure(&["manifest", "keygen", "--out", s(&key)]);
    assert_eq!(o.status.code(), Some(0));
    (key, stdout(&o).trim().to_string())
}

#[test]
fn from_images_sign_verify_diff() {
    let dir = tempdir();
    let a = dir.join("a");
    let worker_a = write_record(&a, "worker", 0x01, 1 << 28, "c0ffee");
    write_record(&a, "proxy", 0x01, 1 << 28, "c0ffee");
    let b = dir.join("b");
    let worker_b = write_record(&b, "worker", 0x02, 1 << 28, "c0ffee");
    write_record(&b, "proxy", 0x01, 1 << 28, "c0ffee");
    let model = write_model(&dir);
    let (key, public) = keygen(&dir);

    let (unsigned_a, signed_a) = publish(&dir, "a", &key, &model);
    let (_, signed_b) = publish(&dir, "b", &key, &model);

    // The manifest carries the records' registers, the config's RTMR3 and the model digest.
    let m: Value = serde_json::from_slice(&std::fs::read(&unsigned_a).unwrap()).unwrap();
    assert_eq!(m["source_commit"], "c0ffee");
    assert_eq!(m["issued_at"], 1700000000);
    let w = &m["roles"]["worker"];
    assert_eq!(w["image_hash"], worker_a.image_hash.to_string());
    assert_eq!(w["models"]["tiny"], hex::encode([0x77; 32]));
    let expect = measure(&[
        "eventlog",
        "expect-config",
        "--config-sha256",
        CONFIG_SHA256,
        "--json",
    ]);
    let expect: Value = serde_json::from_slice(&expect.stdout).unwrap();
    assert_eq!(w["rtmr3"], serde_json::json!([expect["rtmr3"]]));
    assert!(m["roles"]["proxy"].get("rtmr3").is_none());

    let o = measure(&[
        "manifest",
        "verify",
        "--signed",
        s(&signed_a),
        "--publisher-key",
        &public,
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // Identical: the same release signed or not.
    for other in [&signed_a, &unsigned_a] {
        let o = measure(&["manifest", "diff", s(&signed_a), s(other)]);
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
        assert!(stdout(&o).ends_with("identical\n"));
    }

    // Different, without build records: the register and what it measures.
    let o = measure(&["manifest", "diff", s(&signed_a), s(&signed_b)]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("role worker: image"), "{text}");
    assert!(text.contains("rtmr2 differs"), "{text}");
    assert!(
        text.contains("measures: the kernel command line (with a root disk's dm-verity root hash) and the initrd"),
        "{text}"
    );
    assert!(text.contains("role proxy: unchanged"), "{text}");
    assert!(text.ends_with("different\n"), "{text}");

    // With build records the changed artifact is named.
    let o = measure(&[
        "manifest",
        "diff",
        s(&signed_a),
        s(&signed_b),
        "--old-image",
        s(&a.join("worker")),
        "--new-image",
        s(&b.join("worker")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "initramfs.cpio.gz changed {}… → {}…",
            &hex::encode([0x01; 8]),
            &hex::encode([0x02; 8])
        )),
        "{text}"
    );
    assert!(text.contains("cmdline, "), "{text}");

    // The same as JSON, and with the build records themselves as inputs.
    let o = measure(&[
        "manifest",
        "diff",
        s(&a.join("worker")),
        s(&b.join("worker/manifest.json")),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["identical"], false);
    assert_eq!(j["old_kind"], "build_record");
    let role = &j["roles"][0];
    assert_eq!(role["role"], "worker");
    assert_eq!(role["status"], "changed");
    assert_eq!(role["old_image_hash"], worker_a.image_hash.to_string());
    assert_eq!(role["new_image_hash"], worker_b.image_hash.to_string());
    let regs = role["registers"].as_array().unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0]["register"], "rtmr2");
    assert_eq!(regs[0]["causes"][0]["input"], "initramfs.cpio.gz");
    assert_eq!(regs[0]["causes"][0]["new"], hex::encode([0x02; 32]));
}

#[test]
fn td_attributes_and_source_commit() {
    let dir = tempdir();
    let a = dir.join("a");
    write_record(&a, "worker", 0x01, 1 << 28, "c0ffee");
    let b = dir.join("b");
    write_record(&b, "worker", 0x01, (1 << 28) | 1, "beef");
    let o = measure(&[
        "manifest",
        "diff",
        s(&a.join("worker")),
        s(&b.join("worker")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains("source commit differs: c0ffee → beef"),
        "{text}"
    );
    assert!(text.contains("td_attributes differs"), "{text}");
    assert!(text.contains("bit 0 (debug): 0 → 1"), "{text}");
}

#[test]
fn unusable_inputs_exit_2() {
    let dir = tempdir();
    let a = dir.join("a");
    write_record(&a, "worker", 0x01, 1 << 28, "c0ffee");
    write_record(&a, "proxy", 0x01, 1 << 28, "other");
    let b = dir.join("b");
    write_record(&b, "worker", 0x02, 1 << 28, "c0ffee");
    let out = dir.join("m.json");
    let from = |extra: &[&str]| {
        let mut args = vec![
            "manifest",
            "from-images",
            "--publisher",
            "p",
            "--issued-at",
            "1",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        measure(&args).status.code()
    };
    let (aw, ap, bw) = (a.join("worker"), a.join("proxy"), b.join("worker"));
    // Source commits disagree; two images for one role; a flag for a role with no image.
    assert_eq!(from(&["--image", s(&aw), "--image", s(&ap)]), Some(2));
    assert_eq!(from(&["--image", s(&aw), "--image", s(&bw)]), Some(2));
    let rtmr3 = format!("proxy={}", "00".repeat(48));
    assert_eq!(from(&["--image", s(&aw), "--rtmr3", &rtmr3]), Some(2));
    assert_eq!(from(&["--image", s(&aw), "--rtmr3", "worker=zz"]), Some(2));
    assert_eq!(from(&["--image", s(&dir.join("missing"))]), Some(2));
    assert_eq!(from(&["--image", s(&aw)]), Some(0));

    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, r#"{"format":"something-else"}"#).unwrap();
    let diff = |args: &[&str]| {
        let mut all = vec!["manifest", "diff"];
        all.extend_from_slice(args);
        measure(&all).status.code()
    };
    assert_eq!(diff(&[s(&out), s(&garbage)]), Some(2));
    assert_eq!(diff(&[s(&out), s(&dir.join("missing.json"))]), Some(2));
    // A build record that does not match the document's role.
    assert_eq!(diff(&[s(&out), s(&out), "--old-image", s(&bw)]), Some(2));
    assert_eq!(diff(&[s(&out), s(&out), "--old-image", s(&aw)]), Some(0));
}
