//! Runs the `cocoon-ton` binary against the golden vectors.

use std::process::Command;

use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("fixtures/vectors.json")).unwrap()
}
fn inputs() -> Value {
    serde_json::from_str(include_str!("fixtures/flow_inputs.json")).unwrap()
}

/// The `cocoon-ton` binary: the path cargo baked in, or, when this test executable was built
/// for a checkout at another path and reused from a shared target directory (so the baked
/// path is gone), the binary of the same target directory.
fn bin() -> std::path::PathBuf {
    let baked = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cocoon-ton"));
    if baked.exists() {
        return baked;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("cocoon-ton")))
        .filter(|p| p.exists())
        .unwrap_or(baked)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn voucher_charge_and_payout_match_golden() {
    let v = vectors();
    let t = &inputs()["treasury"];
    let seed = v["proxy_seed_hex"].as_str().unwrap();
    let (code, out, err) = run(&[
        "voucher",
        "charge",
        "--seed",
        seed,
        "--to",
        v["client_addr"].as_str().unwrap(),
        "--tokens",
        "100000",
        "--qid",
        "42",
        "--excess",
        t["relay"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), v["charge_body_boc"].as_str().unwrap());
    let (code, out, err) = run(&[
        "voucher",
        "payout",
        "--seed",
        seed,
        "--to",
        v["worker_addr"].as_str().unwrap(),
        "--tokens",
        "50000",
        "--qid",
        "5",
        "--excess",
        t["workerOwner"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), v["payout_body_boc"].as_str().unwrap());
}

#[test]
fn address_commands_match_golden() {
    let v = vectors();
    let t = &inputs()["treasury"];
    let pk = v["proxy_pubkey"].as_str().unwrap();
    let (code, out, err) = run(&[
        "address",
        "proxy",
        "--owner",
        t["proxyOwner"].as_str().unwrap(),
        "--pubkey",
        pk,
        "--root",
        t["root"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["raw"], v["proxy_addr"]);
    let proxy = v["proxy_addr"].as_str().unwrap();
    let (_, out, _) = run(&[
        "address",
        "client",
        "--owner",
        t["clientOwner"].as_str().unwrap(),
        "--proxy",
        proxy,
        "--pubkey",
        pk,
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["raw"],
        v["client_addr"]
    );
    let (_, out, _) = run(&[
        "address",
        "worker",
        "--owner",
        t["workerOwner"].as_str().unwrap(),
        "--proxy",
        proxy,
        "--pubkey",
        pk,
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["raw"],
        v["worker_addr"]
    );
}

#[test]
fn decode_explains_golden_messages() {
    let v = vectors();
    let (code, out, err) = run(&["decode", v["charge_body_boc"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["layout"], "signed_charge");
    assert_eq!(j["fields"]["tokens"], 100000);
    assert_eq!(j["fields"]["expected_my_address"], v["client_addr"]);
    let (_, out, _) = run(&["decode", inputs()["top_up_boc"].as_str().unwrap()]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["layout"],
        "client_top_up"
    );
    let (_, out, _) = run(&[
        "decode",
        inputs()["wallet_external"]["body_boc"].as_str().unwrap(),
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["layout"], "wallet_external");
    assert_eq!(
        j["fields"]["messages"][0]["message"]["layout"],
        "internal_message"
    );
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let (code, _, err) = run(&["decode", "zz"]);
    assert_eq!(code, 2);
    assert!(err.contains("boc hex"), "{err}");
    let (code, _, err) = run(&["decode", "b5ee9c72410101010002000000ba8c4d4b"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&[
        "voucher", "charge", "--seed", "01", "--to", "0:00", "--tokens", "1", "--qid", "1",
        "--excess", "x",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("seed"), "{err}");
}
