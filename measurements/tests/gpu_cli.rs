//! The `cocoon-measure gpu` contract: JSON fields and exit codes (0 accepted, 1 rejected,
//! 2 unusable), on the real H100 vector in ../shared/testdata/nvidia and on simulated evidence.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const AT: &str = "1755760000";
/// 2025-09-21: the RIM signer certificates are valid.
const RIM_AT: &str = "1758412800";

fn nvidia(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/nvidia")
        .join(rel)
        .to_str()
        .unwrap()
        .to_string()
}

fn measure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-gpu-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn refs_file(dir: &Path) -> String {
    let out = dir.join("refs.json");
    let o = measure(&[
        "gpu",
        "refs",
        "--rim",
        &nvidia("rim/NV_GPU_DRIVER_GH100_550.90.07.xml"),
        "--rim",
        &nvidia("rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"),
        "--at",
        RIM_AT,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_str().unwrap().to_string()
}

fn verify(extra: &[&str]) -> (i32, Value, String) {
    let report = nvidia("hopperAttestationReport.txt");
    let chain = nvidia("hopperCertChain.txt");
    let mut args = vec![
        "gpu", "verify", "--report", &report, "--chain", &chain, "--at", AT, "--json",
    ];
    if !extra.contains(&"--nonce") {
        args.extend_from_slice(&["--nonce", NONCE]);
    }
    args.extend_from_slice(extra);
    let o = measure(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    let json = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap(), json, stderr)
}

fn ocsp_args() -> Vec<String> {
    ["l2", "l3", "l4"]
        .iter()
        .flat_map(|l| {
            [
                "--ocsp".to_string(),
                nvidia(&format!(
                    "ocsp/test_gpu_certificate_{l}_base64encoded_ocsp_response.dat"
                )),
            ]
        })
        .collect()
}

#[test]
fn real_vector_accepted_with_ocsp() {
    let dir = tmp("accept");
    let refs = refs_file(&dir);
    let ocsp = ocsp_args();
    let mut extra: Vec<&str> = vec!["--refs", &refs, "--require-ocsp"];
    extra.extend(ocsp.iter().map(String::as_str));
    let (code, j, err) = verify(&extra);
    assert_eq!(code, 0, "{j} {err}");
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["reason"], Value::Null);
    assert_eq!(j["driver"], "550.90.07");
    assert_eq!(j["vbios"], "96.00.9F.00.01");
    assert_eq!(j["measurements_checked"], 32);
    assert_eq!(j["mismatches"], serde_json::json!([]));
    assert_eq!(j["skipped"][0]["index"], 35);
    assert_eq!(j["ocsp_checked"], 3);

    // The same OCSP responses judged a week later are stale.
    let week = (AT.parse::<u64>().unwrap() + 7 * 86_400).to_string();
    extra.extend(["--ocsp-at", &week]);
    let (code, j, _) = verify(&extra);
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["reason_code"], "ocsp_stale");
}

#[test]
fn rejections_exit_1_with_named_reasons() {
    let dir = tmp("reject");
    let refs = refs_file(&dir);
    let (code, j, _) = verify(&["--refs", &refs, "--min-driver", "550.127.05"]);
    assert_eq!(
        (code, j["reason_code"].as_str()),
        (1, Some("driver_too_old"))
    );
    assert_eq!(j["verdict"], "rejected");

    let mut bad = NONCE.to_string();
    bad.replace_range(0..2, "00");
    let (code, j, _) = verify(&["--refs", &refs, "--nonce", &bad]);
    assert_eq!(
        (code, j["reason_code"].as_str()),
        (1, Some("nonce_mismatch"))
    );

    // One reference value changed: the mismatch names the index.
    let text = std::fs::read_to_string(&refs).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["sets"][0]["measurements"]["21"] = serde_json::json!(["11".repeat(48)]);
    let edited = dir.join("edited.json");
    std::fs::write(&edited, doc.to_string()).unwrap();
    let (code, j, _) = verify(&["--refs", edited.to_str().unwrap()]);
    assert_eq!(
        (code, j["reason_code"].as_str()),
        (1, Some("measurement_mismatch"))
    );
    assert_eq!(j["mismatches"][0]["index"], 21);
    assert_eq!(j["measurements_checked"], 32);
    assert!(j["reason"].as_str().unwrap().contains("index 21"), "{j}");

    // Wrong root pinned.
    let (code, j, _) = verify(&["--root", &nvidia("roots/nvidia_corim_signing_root_ca.pem")]);
    assert_eq!(
        (code, j["reason_code"].as_str()),
        (1, Some("untrusted_root"))
    );
}

#[test]
fn unusable_input_exits_2() {
    let dir = tmp("unusable");
    let junk = dir.join("junk.hex");
    std::fs::write(&junk, "11e0").unwrap();
    let o = measure(&[
        "gpu",
        "verify",
        "--report",
        junk.to_str().unwrap(),
        "--chain",
        &nvidia("hopperCertChain.txt"),
        "--nonce",
        NONCE,
        "--at",
        AT,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated"));
    let (code, _, err) = verify(&["--refs", junk.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn simulated_evidence_passes_only_with_its_root() {
    let dir = tmp("sim");
    let nonce = "ab".repeat(32);
    let o = measure(&[
        "gpu",
        "sim",
        "--seed",
        &"01".repeat(32),
        "--nonce",
        &nonce,
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let base = [
        "gpu",
        "verify",
        "--report",
        &p("report.hex"),
        "--chain",
        &p("chain.pem"),
        "--nonce",
        &nonce,
        "--at",
        AT,
        "--refs",
        &p("refs.json"),
        "--json",
    ];
    let o = measure(&base);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (o.status.code(), j["reason_code"].as_str()),
        (Some(1), Some("untrusted_root"))
    );
    let mut with_root = base.to_vec();
    let root = p("root.pem");
    with_root.extend(["--root", &root]);
    let o = measure(&with_root);
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{j}");
    assert_eq!(j["measurements_checked"], 64);
}

#[test]
fn refs_verify_rim_signatures_and_ocsp() {
    let dir = tmp("refs");
    let rim_args = |extra: &[&str]| {
        let d = nvidia("rim/NV_GPU_DRIVER_GH100_550.90.07.xml");
        let v = nvidia("rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml");
        let mut a: Vec<String> = ["gpu", "refs", "--rim", &d, "--rim", &v]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        measure(&refs)
    };
    let ocsp: Vec<String> = ["driver_rim_l4", "driver_rim_l3", "rim_l2", "vbios_l4"]
        .iter()
        .flat_map(|n| {
            [
                "--ocsp".to_string(),
                nvidia(&format!(
                    "ocsp/test_gpu_{n}_base64encoded_ocsp_response.dat"
                )),
            ]
        })
        .collect();
    let out = dir.join("r.json");
    let mut extra = vec![
        "--at",
        RIM_AT,
        "--ocsp-at",
        "1761307200",
        "--out",
        out.to_str().unwrap(),
    ];
    extra.extend(ocsp.iter().map(String::as_str));
    let o = rim_args(&extra);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sources = doc["sets"][0]["sources"].to_string();
    assert!(
        sources.contains("ocsp good") && sources.contains("RIM L4 Signer"),
        "{sources}"
    );
    // Expired signer certificates (2027) or stale OCSP (judged at the GPU chain's time): exit 1.
    assert_eq!(rim_args(&["--at", "1800000000"]).status.code(), Some(1));
    let mut stale = vec!["--at", RIM_AT];
    stale.extend(ocsp.iter().map(String::as_str));
    stale.extend(["--ocsp-at", AT]);
    assert_eq!(rim_args(&stale).status.code(), Some(1));
    // Neither a time nor --unverified: refused by the argument parser.
    assert_eq!(rim_args(&[]).status.code(), Some(2));
    let o = rim_args(&["--unverified"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("signature unverified"));
}
