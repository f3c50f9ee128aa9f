//! `cocoon-image model`: two runs into different directories give identical bytes, the outputs
//! agree with `model.json` and verify (ours and `veritysetup verify`), options and bad inputs.
//!
//! `veritysetup` (package cryptsetup-bin) is required unless `COCOON_SKIP_VERITYSETUP=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::verity::{verify_image, ModelDisk, Salt, VerityUuid};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cocoon-image");
const FILES: [&str; 3] = ["model.img", "model.verity", "model.json"];

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("model-cli-tests")
        .join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn veritysetup() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/veritysetup",
        "/sbin/veritysetup",
        "/usr/bin/veritysetup",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("COCOON_SKIP_VERITYSETUP").as_deref() == Ok("1") {
            eprintln!("skipped veritysetup verify: not found and COCOON_SKIP_VERITYSETUP=1");
        } else {
            panic!(
                "veritysetup not found: install cryptsetup-bin (apt-get install -y \
                 cryptsetup-bin), or set COCOON_SKIP_VERITYSETUP=1 to skip"
            );
        }
    }
    found
}

/// A GGUF-looking file: the magic, then deterministic bytes; not a multiple of 4096 and large
/// enough for a two-level tree.
fn fake_gguf(path: &Path) -> Vec<u8> {
    let mut data = b"GGUF\x03\0\0\0".to_vec();
    let mut x = 0x1234_5678_9abc_def1u64;
    while data.len() < 129 * 4096 + 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push((x >> 24) as u8);
    }
    fs::write(path, &data).unwrap();
    data
}

fn model(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("model")
        .args(args)
        .output()
        .expect("run cocoon-image")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "cocoon-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_runs_give_identical_bytes_and_the_outputs_verify() {
    let dir = scratch("repro");
    let gguf = dir.join("My Model.Q4_0.gguf");
    let data = fake_gguf(&gguf);
    let (a, b) = (dir.join("a"), dir.join("nested/b"));
    ok(model(&["--gguf", s(&gguf), "--out", s(&a)]));
    ok(model(&["--gguf", s(&gguf), "--out", s(&b)]));
    for f in FILES {
        let (x, y) = (fs::read(a.join(f)).unwrap(), fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f} differs between the two runs");
    }
    assert!(!a.join("model.img.partial").exists());

    let disk = ModelDisk::from_json(&fs::read(a.join("model.json")).unwrap()).unwrap();
    let img = fs::read(a.join("model.img")).unwrap();
    let hash = fs::read(a.join("model.verity")).unwrap();
    let src: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(disk.name, "my-model.q4_0");
    assert_eq!(disk.source_sha256, src);
    assert_eq!(disk.source_size, data.len() as u64);
    assert_eq!(disk.data_blocks, 130);
    assert_eq!(disk.salt, Salt::derived(&src));
    assert_eq!(disk.uuid, VerityUuid::derived(&src));
    assert_eq!(img.len() as u64, disk.image_size());
    assert_eq!(&img[..data.len()], &data[..]);
    assert!(img[data.len()..].iter().all(|&x| x == 0));
    assert_eq!(disk.image_sha256, <[u8; 32]>::from(Sha256::digest(&img)));
    assert_eq!(disk.verity_sha256, <[u8; 32]>::from(Sha256::digest(&hash)));
    assert_eq!(
        hash.len() as u64,
        disk.geometry().unwrap().hash_device_size()
    );
    let sb = verify_image(&img[..], &hash, &disk.root_hash).expect("our verifier");
    assert_eq!((sb.uuid, sb.salt), (disk.uuid, disk.salt.clone()));

    if let Some(vs) = veritysetup() {
        let out = Command::new(&vs)
            .arg("verify")
            .arg(a.join("model.img"))
            .arg(a.join("model.verity"))
            .arg(hex::encode(disk.root_hash))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "veritysetup verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn name_and_salt_options() {
    let dir = scratch("options");
    let gguf = dir.join("m.gguf");
    fake_gguf(&gguf);
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(model(&["--gguf", s(&gguf), "--out", s(&a)]));
    let out = ok(model(&[
        "--gguf",
        s(&gguf),
        "--out",
        s(&b),
        "--name",
        "Tiny/Model:1",
        "--salt",
        "00112233AA",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let read = |d: &Path| ModelDisk::from_json(&fs::read(d.join("model.json")).unwrap()).unwrap();
    let (da, db) = (read(&a), read(&b));
    assert_eq!(da.name, "m");
    assert_eq!(db.name, "Tiny/Model:1");
    assert_eq!(db.salt.to_hex(), "00112233aa");
    assert_ne!(da.root_hash, db.root_hash);
    assert_eq!(da.uuid, db.uuid);
    assert_eq!(da.image_sha256, db.image_sha256);
    assert!(
        stdout.contains(&hex::encode(db.root_hash)),
        "root hash not printed: {stdout}"
    );

    let c = dir.join("c");
    ok(model(&["--gguf", s(&gguf), "--out", s(&c), "--salt", "-"]));
    let dc = read(&c);
    assert_eq!(dc.salt, Salt::default());
    let img = fs::read(c.join("model.img")).unwrap();
    let hash = fs::read(c.join("model.verity")).unwrap();
    verify_image(&img[..], &hash, &dc.root_hash).unwrap();
}

#[test]
fn bad_inputs_fail_and_leave_no_model_json() {
    let dir = scratch("bad");
    let out_dir = dir.join("out");
    let gguf = dir.join("m.gguf");
    fake_gguf(&gguf);
    ok(model(&["--gguf", s(&gguf), "--out", s(&out_dir)]));
    assert!(out_dir.join("model.json").exists());

    let not_gguf = dir.join("x.gguf");
    fs::write(&not_gguf, b"PK\x03\x04 a zip, not a model").unwrap();
    let out = model(&["--gguf", s(&not_gguf), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GGUF") && stderr.contains("x.gguf"),
        "{stderr}"
    );
    assert!(
        !out_dir.join("model.json").exists(),
        "a failed run left the old model.json"
    );
    assert!(!out_dir.join("model.img.partial").exists());

    let empty = dir.join("empty.gguf");
    fs::write(&empty, b"").unwrap();
    let out = model(&["--gguf", s(&empty), "--out", s(&out_dir)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    let missing = dir.join("missing.gguf");
    let out = model(&["--gguf", s(&missing), "--out", s(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.gguf"));

    // Rejected by the argument parser (clap exits with 2).
    let long_salt = "00".repeat(257);
    for bad in [
        ["--salt", "xyz"],
        ["--salt", long_salt.as_str()],
        ["--name", "two words"],
        ["--name", ""],
    ] {
        let out = model(&["--gguf", s(&gguf), "--out", s(&out_dir), bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
