//! The `cocoon-measure` contract: JSON fields and exit codes (0 accepted, 1 rejected, 2 unusable).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn measure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
        .args(args)
        .output()
        .unwrap()
}

fn verify(v: &Vector, extra: &[&str]) -> (i32, Value) {
    let q = v.quote_path();
    let c = v.collateral_path();
    let at = v.at.to_string();
    let mut args = vec![
        "quote",
        "verify",
        "--quote",
        q.to_str().unwrap(),
        "--collateral",
        c.to_str().unwrap(),
        "--at",
        &at,
        "--json",
    ];
    if v.hex {
        args.push("--hex");
    }
    args.extend_from_slice(extra);
    let out = measure(&args);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), json)
}

#[test]
fn uptodate_vectors_accepted_with_all_fields() {
    for v in [UPTODATE, NEAR] {
        let (code, j) = verify(&v, &[]);
        assert_eq!(code, 0, "{}: {j}", v.name);
        assert_eq!(j["verdict"], "accepted");
        assert_eq!(j["reason"], Value::Null);
        assert_eq!(j["quote_version"], 4);
        assert_eq!(j["tcb_status"], "UpToDate");
        assert_eq!(j["advisory_ids"], serde_json::json!([]));
        assert_eq!(j["rtmr"].as_array().unwrap().len(), 4);
        for field in ["mrtd", "report_data", "td_attributes", "xfam", "image_hash"] {
            assert!(j[field].as_str().is_some_and(|s| !s.is_empty()), "{field}");
        }
        assert_eq!(j["mrtd"].as_str().unwrap().len(), 96);
        assert_eq!(j["report_data"].as_str().unwrap().len(), 128);
    }
    let (_, j) = verify(&NEAR, &[]);
    assert!(j["mrtd"].as_str().unwrap().starts_with("f06dfda6"));
    assert!(j["rtmr"][0].as_str().unwrap().starts_with("68102e7b"));
}

#[test]
fn outofdate_rejected_then_allowed() {
    let (code, j) = verify(&OUTOFDATE, &[]);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["verdict"], "rejected");
    assert_eq!(j["tcb_status"], "OutOfDate");
    assert!(j["reason"].as_str().unwrap().contains("OutOfDate"));
    let (code, j) = verify(&OUTOFDATE, &["--allow-tcb-status", "OutOfDate"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(
        j["advisory_ids"],
        serde_json::json!(["INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"])
    );
}

#[test]
fn no_tcb_level_and_expiry_rejected() {
    let (code, j) = verify(&NOTCBLEVEL, &[]);
    assert_eq!(code, 1);
    assert_eq!(j["reason_code"], "no_matching_tcb_level");
    let mut late = UPTODATE;
    late.at += 60 * 86400;
    let (code, j) = verify(&late, &[]);
    assert_eq!(code, 1);
    assert_eq!(j["reason_code"], "collateral_expired", "{j}");
}

#[test]
fn wrong_root_and_image_rejected() {
    let dir = tempdir();
    let root = dir.join("other_root.der");
    std::fs::write(&root, b"\x30\x03\x02\x01\x00").unwrap();
    let (code, j) = verify(&UPTODATE, &["--root", root.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(j["reason_code"], "untrusted_root");
    let (code, j) = verify(&UPTODATE, &["--image", &"00".repeat(32)]);
    assert_eq!(code, 1);
    assert_eq!(j["reason_code"], "image_not_allowed");
}

#[test]
fn flipped_quote_rejected_with_reason() {
    let dir = tempdir();
    let mut q = UPTODATE.quote_bytes();
    q[184] ^= 1;
    let path = dir.join("flipped.quote");
    std::fs::write(&path, &q).unwrap();
    let mut v = UPTODATE;
    let leaked: &'static str = Box::leak(path.to_str().unwrap().to_string().into_boxed_str());
    v.quote = leaked;
    let (code, j) = verify(&v, &[]);
    assert_eq!(code, 1);
    assert_eq!(j["reason_code"], "quote_signature");
}

#[test]
fn unusable_input_exits_2_with_message() {
    let dir = tempdir();
    let junk = dir.join("junk");
    std::fs::write(&junk, b"not a quote at all").unwrap();
    let c = UPTODATE.collateral_path();
    let q = UPTODATE.quote_path();
    for (quote, coll) in [
        (junk.as_path(), c.as_path()),
        (q.as_path(), junk.as_path()),
        (Path::new("/nonexistent/quote"), c.as_path()),
    ] {
        let out = measure(&[
            "quote",
            "verify",
            "--quote",
            quote.to_str().unwrap(),
            "--collateral",
            coll.to_str().unwrap(),
            "--at",
            "1752919234",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(2), "{quote:?} {coll:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("cocoon-measure: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn manifest_keygen_sign_verify() {
    let dir = tempdir();
    let key = dir.join("publisher.key");
    let out = measure(&["manifest", "keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 64);

    let regs = measurements::TdRegisters::ZERO;
    let content =
        measurements::manifest::Manifest::new("ci", 1_700_000_000).with_role("worker", regs);
    let content_path = dir.join("manifest.json");
    std::fs::write(&content_path, serde_json::to_vec(&content).unwrap()).unwrap();
    let signed = dir.join("signed.json");
    let out = measure(&[
        "manifest",
        "sign",
        "--manifest",
        content_path.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        signed.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = measure(&[
        "manifest",
        "verify",
        "--signed",
        signed.to_str().unwrap(),
        "--publisher-key",
        &public,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["roles"]["worker"], regs.image_hash().to_string());
    let out = measure(&[
        "manifest",
        "verify",
        "--signed",
        signed.to_str().unwrap(),
        "--publisher-key",
        &"11".repeat(32),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cocoon-measure-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
