//! `cocoon-measure compute`: expected registers from boot artifacts or published digests.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use measurements::boot::{self, QemuBootParams, TdvfProfile};
use measurements::quote::{decode_quote_input, ParsedQuote};
use serde_json::Value;

fn measure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon-measure"))
        .args(args)
        .output()
        .unwrap()
}

fn compute_json(args: &[&str]) -> (i32, Value) {
    let mut a = vec!["compute", "--json"];
    a.extend_from_slice(args);
    let out = measure(&a);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), json)
}

/// The published digests of the dstack tdx-lite image and its real quote's RTMR1/RTMR2.
fn vector() -> ([String; 3], [String; 2]) {
    let dir = common::testdata().join("measurements");
    let d: Value = serde_json::from_slice(
        &std::fs::read(dir.join("tdx-lite_measurement.tdx.decoded.json")).unwrap(),
    )
    .unwrap();
    let img = &d["decoded"]["image"];
    let s = |k: &str| img[k].as_str().unwrap().to_string();
    let v: Value = serde_json::from_slice(
        &std::fs::read(dir.join("verifier_tdx-lite-getquote.json")).unwrap(),
    )
    .unwrap();
    let q = decode_quote_input(v["quote"].as_str().unwrap().as_bytes(), true).unwrap();
    let rtmr = ParsedQuote::parse(&q).unwrap().report.registers.rtmr;
    (
        [
            s("kernel_authenticode"),
            s("cmdline_sha384"),
            s("initrd_sha384"),
        ],
        [hex::encode(rtmr[1]), hex::encode(rtmr[2])],
    )
}

#[test]
fn published_digests_reproduce_the_real_quotes_rtmr1_and_rtmr2() {
    let ([kernel, cmdline, initrd], [rtmr1, rtmr2]) = vector();
    let (code, j) = compute_json(&[
        "--kernel-authenticode",
        &kernel,
        "--cmdline-sha384",
        &cmdline,
        "--initrd-sha384",
        &initrd,
        "--cpus",
        "2",
        "--memory",
        "2G",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["rtmr1"], rtmr1);
    assert_eq!(j["rtmr2"], rtmr2);
    assert_eq!(j["mrtd"], Value::Null);
    let nc = j["not_computed"].as_object().unwrap();
    assert!(nc["rtmr0"].as_str().unwrap().contains("ACPI tables"));
    assert!(nc["mrtd"].as_str().unwrap().contains("--firmware"));
    assert!(!nc.contains_key("rtmr1") && !nc.contains_key("rtmr2"));
    let events = j["events"].as_array().unwrap();
    assert_eq!(events.len(), 7);
    assert_eq!(events[0]["digest"], kernel);
    assert_eq!(
        events[0]["event_type_name"],
        "EV_EFI_BOOT_SERVICES_APPLICATION"
    );
    assert_eq!(events[5]["digest"], cmdline);
    assert_eq!(j["inputs"]["memory"], 2u64 << 30);
}

#[test]
fn human_output_names_what_is_not_computed() {
    let ([kernel, cmdline, initrd], [rtmr1, rtmr2]) = vector();
    let out = measure(&[
        "compute",
        "--kernel-authenticode",
        &kernel,
        "--cmdline-sha384",
        &cmdline,
        "--initrd-sha384",
        &initrd,
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("RTMR1: {rtmr1}")), "{text}");
    assert!(text.contains(&format!("RTMR2: {rtmr2}")), "{text}");
    assert!(text.contains("RTMR0: not computed: depends on QEMU's ACPI tables"));
    assert!(text.contains("RTMR3: not computed"));
    assert!(text.contains("EV_SEPARATOR"));
    assert!(text.contains("MRTD : not computed: no --firmware given"));
    assert_eq!(out.status.code(), Some(0));
    // A firmware file that cannot be read is unusable input.
    let out = measure(&["compute", "--firmware", "/nonexistent/OVMF.fd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// A minimal PE32+ that is also a bzImage header (protocol 2.15, LOADED_HIGH,
/// XLF_CAN_BE_LOADED_ABOVE_4G): 4 KiB, SizeOfHeaders 0x400, one section.
fn tiny_efi_bzimage() -> Vec<u8> {
    let mut b: Vec<u8> = (0..0x1000u32).map(|i| (i % 253) as u8).collect();
    let p16 = |b: &mut Vec<u8>, o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let p32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    b[..2].copy_from_slice(b"MZ");
    p32(&mut b, 0x3c, 0x40);
    b[0x40..0x44].copy_from_slice(b"PE\0\0");
    p16(&mut b, 0x46, 1); // sections
    p16(&mut b, 0x54, 0xf0); // SizeOfOptionalHeader
    let opt = 0x58;
    p16(&mut b, opt, 0x20b);
    p32(&mut b, opt + 60, 0x400); // SizeOfHeaders
    p32(&mut b, opt + 108, 6); // NumberOfRvaAndSizes
    p32(&mut b, opt + 112 + 32, 0); // no certificate table
    p32(&mut b, opt + 116 + 32, 0);
    let sec = opt + 0xf0;
    p32(&mut b, sec + 16, 0xc00);
    p32(&mut b, sec + 20, 0x400);
    b[0x1f1] = 1; // setup_sects
    b[0x202..0x206].copy_from_slice(b"HdrS");
    p16(&mut b, 0x206, 0x20f);
    b[0x211] = 0x01;
    p16(&mut b, 0x236, 0x2);
    b
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cocoon-compute-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn kernel_and_initrd_files_are_measured_as_qemu_patches_them() {
    let kernel = tiny_efi_bzimage();
    let initrd = vec![7u8; 100_000];
    let kp = scratch("bzImage", &kernel);
    let ip = scratch("initrd", &initrd);
    let args = [
        "--kernel",
        kp.to_str().unwrap(),
        "--initrd",
        ip.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
        "--memory",
        "1G",
    ];
    let (code, j) = compute_json(&args);
    assert_eq!(code, 0, "{j}");
    let params = QemuBootParams::new(1 << 30, Some(100_000), "console=ttyS0");
    let digest = boot::kernel_measurement(&kernel, &params).unwrap();
    assert_ne!(digest, boot::authenticode_sha384(&kernel).unwrap());
    assert_eq!(j["events"][0]["digest"], hex::encode(digest));
    assert_eq!(
        j["rtmr1"],
        hex::encode(boot::rtmr1(&digest, &TdvfProfile::default()))
    );
    assert_eq!(
        j["rtmr2"],
        hex::encode(boot::rtmr2("console=ttyS0", &boot::sha384(&initrd)))
    );
    let fields = j["qemu_header_fields"].as_array().unwrap();
    let image = fields
        .iter()
        .find(|f| f["name"] == "ramdisk_image")
        .unwrap();
    // initrd_max = 1 GiB - 0x28000 - 1; address = (max - 100000) & !0xfff = 0x3ffbf000.
    assert_eq!(image["bytes"], hex::encode(0x3ffb_f000u32.to_le_bytes()));

    // Memory changes RTMR1, not RTMR2.
    let mut a2 = args;
    a2[7] = "2G";
    let (_, j2) = compute_json(&a2);
    assert_ne!(j2["rtmr1"], j["rtmr1"]);
    assert_eq!(j2["rtmr2"], j["rtmr2"]);

    // Upstream QEMU ≥ 10.1: the file is measured as it is; memory is then not needed.
    let (code, j3) = compute_json(&[
        "--kernel",
        kp.to_str().unwrap(),
        "--qemu-header",
        "unpatched",
    ]);
    assert_eq!(code, 0, "{j3}");
    assert_eq!(
        j3["events"][0]["digest"],
        hex::encode(boot::authenticode_sha384(&kernel).unwrap())
    );
    assert!(j3["not_computed"]["rtmr2"]
        .as_str()
        .unwrap()
        .contains("--cmdline"));

    // Prefix-style OVMF and the older separator placement change the result.
    let mut a4 = args.to_vec();
    a4.extend(["--ovmf-initrd-arg", "prefix", "--separator-in-rtmr0"]);
    let (_, j4) = compute_json(&a4);
    assert_ne!(j4["rtmr1"], j["rtmr1"]);
    assert_ne!(j4["rtmr2"], j["rtmr2"]);
}

#[test]
fn missing_or_bad_inputs() {
    let kp = scratch("bzImage2", &tiny_efi_bzimage());
    let k = kp.to_str().unwrap();
    // The patched kernel depends on memory and initrd size.
    let out = measure(&["compute", "--kernel", k, "--no-initrd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory"));
    let out = measure(&["compute", "--kernel", k, "--memory", "2G"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--initrd"));
    // Without initrd information RTMR2 is not computed, and says why.
    let (code, j) = compute_json(&["--cmdline", "quiet"]);
    assert_eq!(code, 0);
    assert_eq!(j["rtmr2"], Value::Null);
    assert!(j["not_computed"]["rtmr2"]
        .as_str()
        .unwrap()
        .contains("--no-initrd"));
    assert!(j["not_computed"]["rtmr1"]
        .as_str()
        .unwrap()
        .contains("--kernel"));
    // A cmdline without initrd is measured as it is.
    let (_, j) = compute_json(&["--cmdline", "quiet", "--no-initrd"]);
    let opts = boot::load_options("quiet", false, boot::InitrdArg::Append).unwrap();
    assert_eq!(
        j["rtmr2"],
        hex::encode(boot::extend(&[0; 48], &boot::sha384(&opts)))
    );
    // Not a PE image.
    let np = scratch("notpe", &[0u8; 4096]);
    let out = measure(&[
        "compute",
        "--kernel",
        np.to_str().unwrap(),
        "--memory",
        "2G",
        "--no-initrd",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pe signature"));
    // Malformed values are usage errors (exit 2).
    for bad in [
        vec!["--kernel-authenticode", "abcd"],
        vec!["--memory", "2X"],
        vec!["--cmdline", "a", "--cmdline-sha384", &"00".repeat(48)],
        vec!["--initrd-sha384", &"00".repeat(48), "--no-initrd"],
    ] {
        let mut a = vec!["compute"];
        a.extend(bad.iter().copied());
        assert_eq!(measure(&a).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn firmware_gives_mrtd_in_the_chosen_page_add_order() {
    use measurements::tdvf::{compute_mrtd, PageAddOrder};
    let fw = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tdvf/ovmf_like.fd");
    let image = std::fs::read(&fw).unwrap();
    for (flag, order) in [
        ("two-pass", PageAddOrder::TwoPass),
        ("single-pass", PageAddOrder::SinglePass),
    ] {
        let (code, j) =
            compute_json(&["--firmware", fw.to_str().unwrap(), "--page-add-order", flag]);
        assert_eq!(code, 0, "{j}");
        assert_eq!(
            j["mrtd"],
            hex::encode(compute_mrtd(&image, order).unwrap()),
            "{flag}"
        );
        assert!(!j["not_computed"].as_object().unwrap().contains_key("mrtd"));
        assert_eq!(j["inputs"]["page_add_order"], flag);
    }
    // The default is two-pass (the QEMU 8.2 TDX builds of the real vector).
    let (_, j) = compute_json(&["--firmware", fw.to_str().unwrap()]);
    assert_eq!(
        j["mrtd"],
        hex::encode(compute_mrtd(&image, PageAddOrder::TwoPass).unwrap())
    );
    // Not a TDVF image, or an unknown order: unusable / usage error.
    let np = scratch("not-tdvf.fd", &[0u8; 8192]);
    let out = measure(&["compute", "--firmware", np.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = measure(&["compute", "--page-add-order", "three-pass"]);
    assert_eq!(out.status.code(), Some(2));
}
