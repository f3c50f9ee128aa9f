//! GPU evidence verification against the real H100 vector in ../shared/testdata/nvidia (see its
//! README: the report, its 5-certificate chain, NVIDIA's RIMs and OCSP responses), plus the
//! simulated NVIDIA root.

use std::path::PathBuf;

use base64::Engine;
use measurements::gpu::report::{decode_report_input, GpuReport};
use measurements::gpu::rim::{self, Rim, RimKind};
use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::{
    self, verify_gpu, verify_gpus, DriverVersion, GpuEvidence, GpuPolicy, GpuReferenceValues,
    GpuRejection, OcspEvidence, SkipReason,
};
use sha2::{Digest, Sha256};

fn nvidia() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/nvidia")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(nvidia().join(rel)).unwrap()
}

/// A time inside every window of the GPU chain's OCSP responses (2025-08-21T07:06:40Z).
const AT: u64 = 1_755_760_000;
/// The request nonce of the real report.
const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn nonce() -> [u8; 32] {
    measurements::parse_hex_array::<32>(NONCE, "nonce").unwrap()
}

fn report_bytes() -> Vec<u8> {
    decode_report_input(&read("hopperAttestationReport.txt")).unwrap()
}

fn chain_pem() -> Vec<u8> {
    read("hopperCertChain.txt")
}

fn evidence() -> GpuEvidence {
    GpuEvidence {
        report: report_bytes(),
        chain_pem: chain_pem(),
        ocsp: None,
    }
}

fn rims() -> Vec<Rim> {
    [
        "rim/NV_GPU_DRIVER_GH100_550.90.07.xml",
        "rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml",
    ]
    .iter()
    .map(|p| Rim::parse(&String::from_utf8(read(p)).unwrap()).unwrap())
    .collect()
}

fn refs() -> GpuReferenceValues {
    GpuReferenceValues {
        format: gpu::refs::GPU_REFS_FORMAT_V1.into(),
        sets: vec![rim::reference_set(&rims()).unwrap()],
    }
}

fn policy() -> GpuPolicy {
    GpuPolicy::production(refs())
}

fn gpu_ocsp(at: u64) -> OcspEvidence {
    ocsp_files(&["certificate_l2", "certificate_l3", "certificate_l4"], at)
}

fn ocsp_files(names: &[&str], at: u64) -> OcspEvidence {
    let responses = names
        .iter()
        .map(|l| {
            let b64 = read(&format!(
                "ocsp/test_gpu_{l}_base64encoded_ocsp_response.dat"
            ));
            let text: String = String::from_utf8(b64).unwrap().split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
        })
        .collect();
    OcspEvidence { responses, at }
}

fn reject(ev: &GpuEvidence, nonce: &[u8; 32], at: u64, policy: &GpuPolicy) -> GpuRejection {
    verify_gpu(ev, nonce, at, policy).expect_err("must be rejected")
}

#[test]
fn embedded_nvidia_root_is_the_pinned_one() {
    let root = gpu::nvidia_root();
    assert_eq!(
        hex::encode(Sha256::digest(&root.der)),
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    );
    assert_eq!(
        gpu::pem_to_der(&read("roots/nvidia_device_identity_ca.pem")).unwrap(),
        root.der
    );
}

#[test]
fn parses_the_real_report() {
    let bytes = report_bytes();
    assert_eq!(bytes.len(), 4117);
    let r = GpuReport::parse(&bytes).unwrap();
    assert_eq!(r.signed_len, 4021);
    assert_eq!(hex::encode(r.request_nonce), NONCE);
    assert_eq!(r.blocks.len(), 64);
    assert_eq!(r.driver_version, "550.90.07");
    assert_eq!(r.vbios_version, "96.00.9F.00.01");
    assert_eq!(
        r.opaque_text(gpu::report::opaque_type::PROJECT).as_deref(),
        Some("1010")
    );
    assert_eq!(
        r.opaque_text(gpu::report::opaque_type::PROJECT_SKU)
            .as_deref(),
        Some("0200")
    );
    assert_eq!(
        r.opaque_text(gpu::report::opaque_type::CHIP_SKU).as_deref(),
        Some("882")
    );
    assert!(r.nvdec0_disabled());
}

#[test]
fn report_parser_refuses_every_truncation_and_trailing_bytes() {
    let bytes = report_bytes();
    for len in 0..bytes.len() {
        assert!(GpuReport::parse(&bytes[..len]).is_err(), "prefix {len}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        GpuReport::parse(&long),
        Err(gpu::ReportError::Trailing(1))
    ));
}

#[test]
fn rims_become_reference_values() {
    let rims = rims();
    assert_eq!(rims[0].kind, RimKind::Driver);
    assert_eq!(rims[1].kind, RimKind::Vbios);
    let set = rim::reference_set(&rims).unwrap();
    assert_eq!(set.driver_version, "550.90.07");
    assert_eq!(set.vbios_version, "96.00.9F.00.01");
    // 21 active driver indices + 12 active VBIOS indices.
    assert_eq!(set.measurements.len(), 33);
    assert_eq!(set.measurements[&35].len(), 4);
    // The JSON form round-trips through the strict reader.
    let json = serde_json::to_vec(&refs()).unwrap();
    assert_eq!(GpuReferenceValues::from_json(&json).unwrap(), refs());
}

#[test]
fn real_h100_vector_passes_with_every_measurement_compared() {
    let v = verify_gpu(&evidence(), &nonce(), AT, &policy()).unwrap();
    assert_eq!(v.driver_version, "550.90.07");
    assert_eq!(v.vbios_version, "96.00.9F.00.01");
    assert_eq!(v.root_name, "nvidia-device-identity-ca");
    assert_eq!(v.measurements_checked, 32);
    assert_eq!(v.skipped, vec![(35, SkipReason::Nvdec0Disabled)]);
    // No non-zero measurement of the report is left without a reference.
    let r = GpuReport::parse(&report_bytes()).unwrap();
    let set = &refs().sets[0];
    for b in &r.blocks {
        if b.value.iter().any(|x| *x != 0) {
            assert!(
                set.measurements.contains_key(&b.rim_index()),
                "block {} unchecked",
                b.index
            );
        }
    }
}

#[test]
fn flipped_bits_are_rejected() {
    let good = evidence();
    // A bit in a measurement value, in the opaque driver version area and in the signature.
    for pos in [200, 3700, 4100] {
        let mut ev = good.clone();
        ev.report[pos] ^= 0x01;
        let e = reject(&ev, &nonce(), AT, &policy());
        assert_eq!(e.code(), "report_signature", "byte {pos}: {e}");
    }
    // A sample of every region: never accepted, never a panic.
    for pos in (0..good.report.len()).step_by(97) {
        let mut ev = good.clone();
        ev.report[pos] ^= 0x80;
        assert!(
            verify_gpu(&ev, &nonce(), AT, &policy()).is_err(),
            "byte {pos}"
        );
    }
}

#[test]
fn wrong_nonce_is_rejected() {
    let mut n = nonce();
    n[0] ^= 1;
    let e = reject(&evidence(), &n, AT, &policy());
    assert_eq!(e.code(), "nonce_mismatch");
    assert!(e.to_string().contains(NONCE), "{e}");
}

/// Replaces the PEM block at `index` of the chain by `der`.
fn replace_cert(chain: &[u8], index: usize, der: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(chain.to_vec()).unwrap();
    let mut blocks: Vec<String> = text
        .split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| format!("{}-----END CERTIFICATE-----\n", b.trim_start()))
        .collect();
    blocks[index] = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der).unwrap();
    blocks.concat().into_bytes()
}

fn chain_certs() -> Vec<x509_cert::Certificate> {
    gpu::chain::parse_pem_chain(&chain_pem()).unwrap()
}

#[test]
fn look_alike_root_is_rejected() {
    use der::{Decode, Encode};
    // Same subject and extensions as NVIDIA's root, different key (self-signed by it).
    let sim = SimNvidiaRoot::from_seed([7; 32]).unwrap();
    let mut fake = x509_cert::Certificate::from_der(&gpu::nvidia_root().der).unwrap();
    let sim_root = x509_cert::Certificate::from_der(&sim.root_der().unwrap()).unwrap();
    fake.tbs_certificate.subject_public_key_info =
        sim_root.tbs_certificate.subject_public_key_info.clone();
    let chain = replace_cert(&chain_pem(), 4, &fake.to_der().unwrap());
    let ev = GpuEvidence {
        chain_pem: chain.clone(),
        ..evidence()
    };
    let e = reject(&ev, &nonce(), AT, &policy());
    assert_eq!(e.code(), "untrusted_root", "{e}");
    // Even a policy that pins the look-alike refuses the chain: the real intermediate was not
    // signed by the look-alike's key.
    let mut p = policy();
    p.roots = vec![measurements::TrustRoot::new(
        "look-alike",
        fake.to_der().unwrap(),
    )];
    let e = reject(&ev, &nonce(), AT, &p);
    assert_eq!(e.code(), "chain_signature", "{e}");
}

#[test]
fn four_certificate_chain_is_rejected() {
    let certs = chain_certs();
    let mut pem = String::new();
    for c in &certs[..4] {
        use der::Encode;
        pem.push_str(
            &der::pem::encode_string(
                "CERTIFICATE",
                der::pem::LineEnding::LF,
                &c.to_der().unwrap(),
            )
            .unwrap(),
        );
    }
    let ev = GpuEvidence {
        chain_pem: pem.into_bytes(),
        ..evidence()
    };
    let e = reject(&ev, &nonce(), AT, &policy());
    assert_eq!(e.code(), "chain_length");
    assert!(e.to_string().contains("4 certificates, expected 5"), "{e}");
}

#[test]
fn edited_fwid_is_rejected() {
    // The report's FWID changed (and the report re-signed would need the leaf key, so the
    // leaf/report binding is what fails first).
    let mut ev = evidence();
    let r = GpuReport::parse(&ev.report).unwrap();
    let pos = ev
        .report
        .windows(48)
        .position(|w| w == r.fwid.as_slice())
        .unwrap();
    ev.report[pos] ^= 0xff;
    let e = reject(&ev, &nonce(), AT, &policy());
    assert_eq!(e.code(), "fwid_mismatch", "{e}");
}

#[test]
fn chain_times_are_checked() {
    // Before the provisioner ICA's notBefore (2022-03-01).
    let e = reject(&evidence(), &nonce(), 1_640_995_200, &policy());
    assert_eq!(e.code(), "certificate_not_yet_valid", "{e}");
}

#[test]
fn driver_below_minimum_is_rejected() {
    let mut p = policy();
    p.min_driver = Some(DriverVersion::parse("550.127.05").unwrap());
    let e = reject(&evidence(), &nonce(), AT, &p);
    assert_eq!(e.code(), "driver_too_old");
    assert!(e.to_string().contains("550.90.07"), "{e}");
    p.min_driver = Some(DriverVersion::parse("550.90.07").unwrap());
    verify_gpu(&evidence(), &nonce(), AT, &p).unwrap();
}

#[test]
fn version_pair_without_references_is_rejected() {
    let mut refs = refs();
    refs.sets[0].vbios_version = "96.00.9F.00.02".into();
    let e = reject(&evidence(), &nonce(), AT, &GpuPolicy::production(refs));
    assert_eq!(e.code(), "no_references");
    assert!(e.to_string().contains("550.90.07") && e.to_string().contains("96.00.9F.00.01"));
}

#[test]
fn changed_measurement_is_named() {
    let mut refs = refs();
    let v = refs.sets[0].measurements.get_mut(&7).unwrap();
    v[0] = "00".repeat(48);
    let e = reject(&evidence(), &nonce(), AT, &GpuPolicy::production(refs));
    assert_eq!(e.code(), "measurement_mismatch");
    assert!(
        e.to_string().starts_with("measurement index 7 mismatch"),
        "{e}"
    );
    match e {
        GpuRejection::MeasurementMismatch {
            checked,
            mismatches,
        } => {
            assert_eq!(checked, 32);
            assert_eq!(mismatches.len(), 1);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn ocsp_passes_at_its_time_and_not_a_week_later() {
    let mut p = policy();
    p.require_ocsp = true;
    let e = reject(&evidence(), &nonce(), AT, &p);
    assert_eq!(e.code(), "ocsp_required");
    let ev = GpuEvidence {
        ocsp: Some(gpu_ocsp(AT)),
        ..evidence()
    };
    let v = verify_gpu(&ev, &nonce(), AT, &p).unwrap();
    assert_eq!(v.ocsp.len(), 3);
    // A week later the responses are stale.
    let stale = GpuEvidence {
        ocsp: Some(gpu_ocsp(AT + 7 * 86_400)),
        ..evidence()
    };
    assert_eq!(reject(&stale, &nonce(), AT, &p).code(), "ocsp_stale");
    // A maximum age tighter than the response's age refuses it too.
    p.ocsp_max_age_secs = Some(60);
    assert_eq!(reject(&ev, &nonce(), AT, &p).code(), "ocsp_stale");
}

#[test]
fn ocsp_with_bad_signature_or_missing_is_rejected() {
    let p = policy();
    let mut o = gpu_ocsp(AT);
    // The signature BIT STRING ends the tbsResponseData; flip a byte of the signature value
    // (just before the embedded responder certificates).
    let resp = &mut o.responses[2];
    let cert_start = resp
        .windows(4)
        .rposition(|w| w == [0xa0, 0x82, 0x02, 0x78])
        .unwrap();
    resp[cert_start - 5] ^= 0x01;
    let ev = GpuEvidence {
        ocsp: Some(o),
        ..evidence()
    };
    let e = reject(&ev, &nonce(), AT, &p);
    assert_eq!(e.code(), "ocsp_signature", "{e}");

    let mut o = gpu_ocsp(AT);
    o.responses.pop();
    let ev = GpuEvidence {
        ocsp: Some(o),
        ..evidence()
    };
    assert_eq!(reject(&ev, &nonce(), AT, &p).code(), "ocsp_missing");
}

/// A response may embed at most two certificates (NVIDIA's embed one responder): each
/// candidate costs a verifier two P-384 verifications, and the bytes are the worker's host's.
#[test]
fn ocsp_with_too_many_embedded_certificates_is_malformed() {
    use der::{Decode, Encode};
    use x509_ocsp::{BasicOcspResponse, OcspResponse};
    let with_copies = |der: &[u8], total: usize| {
        let mut resp = OcspResponse::from_der(der).unwrap();
        let bytes = resp.response_bytes.as_mut().unwrap();
        let mut basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
        let certs = basic.certs.as_mut().unwrap();
        assert_eq!(certs.len(), 1, "NVIDIA's answers embed one responder");
        let one = certs[0].clone();
        certs.resize(total, one);
        bytes.response = der::asn1::OctetString::new(basic.to_der().unwrap()).unwrap();
        resp.to_der().unwrap()
    };
    let p = policy();
    for (total, ok) in [(2, true), (3, false)] {
        let mut o = gpu_ocsp(AT);
        o.responses[0] = with_copies(&o.responses[0], total);
        let ev = GpuEvidence {
            ocsp: Some(o),
            ..evidence()
        };
        match verify_gpu(&ev, &nonce(), AT, &p) {
            Ok(v) => assert!(ok, "{total} embedded accepted: {v:?}"),
            Err(e) => {
                assert!(!ok, "{total} embedded refused: {e}");
                assert_eq!(e.code(), "malformed_ocsp");
                assert!(e.to_string().contains("3 embedded certificates"), "{e}");
            }
        }
    }
}

#[test]
fn simulated_root_passes_only_under_the_policy_that_names_it() {
    let sim = SimNvidiaRoot::from_seed([3; 32]).unwrap();
    let gpu = SimGpu::new("570.133.20", "96.00.CF.00.01", "sim gpu");
    let n = [0x5a; 32];
    let (report, pem) = sim.evidence(&gpu, &n).unwrap();
    let ev = GpuEvidence {
        report,
        chain_pem: pem.into_bytes(),
        ocsp: None,
    };
    // Production policy (NVIDIA's root only) refuses it.
    let prod = GpuPolicy::production(gpu.reference_values());
    assert_eq!(reject(&ev, &n, AT, &prod).code(), "untrusted_root");
    // The policy that names the simulated root accepts it, every measurement compared.
    let mut dev = prod.clone();
    dev.roots = vec![sim.trust_root().unwrap()];
    let v = verify_gpu(&ev, &n, AT, &dev).unwrap();
    assert_eq!(v.measurements_checked, 64);
    assert_eq!(v.root_name, "cocoon-simulated-nvidia-root");
    // Another simulated root does not.
    let other = SimNvidiaRoot::from_seed([4; 32]).unwrap();
    dev.roots = vec![other.trust_root().unwrap()];
    assert_eq!(reject(&ev, &n, AT, &dev).code(), "untrusted_root");
}

#[test]
fn gpu_count_and_duplicates() {
    let sim = SimNvidiaRoot::from_seed([3; 32]).unwrap();
    let n = [1; 32];
    let mut a = SimGpu::new("570.133.20", "96.00.CF.00.01", "sim gpu");
    let mut policy = GpuPolicy::production(a.reference_values());
    policy.roots = vec![sim.trust_root().unwrap()];
    policy.gpu_count = Some(2);
    let ev = |g: &SimGpu| {
        let (report, pem) = sim.evidence(g, &n).unwrap();
        GpuEvidence {
            report,
            chain_pem: pem.into_bytes(),
            ocsp: None,
        }
    };
    let one = ev(&a);
    assert_eq!(
        verify_gpus(std::slice::from_ref(&one), &n, AT, &policy)
            .unwrap_err()
            .code(),
        "gpu_count"
    );
    assert_eq!(
        verify_gpus(&[one.clone(), one.clone()], &n, AT, &policy)
            .unwrap_err()
            .code(),
        "duplicate_gpu"
    );
    a.device_id = 2;
    assert_eq!(
        verify_gpus(&[one, ev(&a)], &n, AT, &policy).unwrap().len(),
        2
    );
}

#[test]
fn signed_manifest_carries_the_reference_values() {
    use measurements::manifest::{Manifest, SignedManifest, SigningKey};
    use measurements::TdRegisters;
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut m =
        Manifest::new("gpu test publisher", 1_755_000_000).with_role("worker", TdRegisters::ZERO);
    m.roles.get_mut("worker").unwrap().gpu = Some(refs());
    let text = m.sign(&key).unwrap().to_json_pretty();
    let (verified, _) = SignedManifest::from_json(text.as_bytes())
        .unwrap()
        .verify(&[key.verifying_key()])
        .unwrap();
    let gpu_refs = verified.roles["worker"].gpu.clone().unwrap();
    verify_gpu(&evidence(), &nonce(), AT, &GpuPolicy::production(gpu_refs)).unwrap();

    // Malformed reference values cannot be signed.
    let mut bad = refs();
    bad.sets[0].measurements.insert(99, vec!["zz".into()]);
    m.roles.get_mut("worker").unwrap().gpu = Some(bad);
    assert!(m.sign(&key).is_err());
}

#[test]
fn pem_chain_parser_is_strict() {
    // Regression: the empty input once reached an integer underflow in a PEM helper.
    for bad in [
        &b""[..],
        b"\n",
        b"junk",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
    ] {
        assert_eq!(
            gpu::chain::parse_pem_chain(bad).unwrap_err().code(),
            "malformed_chain"
        );
    }
    let mut trailing = chain_pem();
    trailing.extend_from_slice(b"trailing");
    assert!(gpu::chain::parse_pem_chain(&trailing).is_err());
    assert_eq!(gpu::chain::parse_pem_chain(&chain_pem()).unwrap().len(), 5);
}

#[test]
fn ocsp_for_other_certificates_is_refused() {
    // The RIM signing chain's responses (valid around 2025-10-24) answer for no certificate of
    // the GPU chain.
    let mut o = gpu_ocsp(AT);
    let b64 = read("ocsp/test_gpu_rim_l2_base64encoded_ocsp_response.dat");
    let text: String = String::from_utf8(b64).unwrap().split_whitespace().collect();
    o.responses.push(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    );
    let ev = GpuEvidence {
        ocsp: Some(o),
        ..evidence()
    };
    let e = reject(&ev, &nonce(), AT, &policy());
    assert_eq!(e.code(), "ocsp_unmatched", "{e}");
    // Garbage in place of a response is unusable input.
    let ev = GpuEvidence {
        ocsp: Some(OcspEvidence {
            responses: vec![b"not der".to_vec()],
            at: AT,
        }),
        ..evidence()
    };
    let e = reject(&ev, &nonce(), AT, &policy());
    assert!(
        e.is_malformed_input() && e.code() == "malformed_ocsp",
        "{e}"
    );
}

/// 2025-09-21T00:00:00Z, when the RIMs' signatures and signer chains are valid.
const RIM_AT: u64 = 1_758_412_800;

#[test]
fn rim_signatures_verify_to_the_corim_root() {
    use measurements::gpu::xmldsig::{self, verify_rim_signature};
    let root = xmldsig::nvidia_corim_root();
    assert_eq!(
        gpu::pem_to_der(&read("roots/nvidia_corim_signing_root_ca.pem")).unwrap(),
        root.der
    );
    assert_eq!(
        hex::encode(Sha256::digest(&root.der)),
        "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
    );
    for p in [
        "rim/NV_GPU_DRIVER_GH100_550.90.07.xml",
        "rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml",
    ] {
        let text = String::from_utf8(read(p)).unwrap();
        let signer = verify_rim_signature(&text, RIM_AT, std::slice::from_ref(&root))
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(
            signer.subject.contains("RIM L4 Signer"),
            "{}",
            signer.subject
        );
        // One changed reference value breaks the digest.
        let active = text.find("active=\"True\"").unwrap();
        let at = active + text[active..].find("Hash0=\"").unwrap() + "Hash0=\"".len();
        let flipped = if &text[at..at + 1] == "0" { "1" } else { "0" };
        let edited = format!("{}{flipped}{}", &text[..at], &text[at + 1..]);
        let e = verify_rim_signature(&edited, RIM_AT, std::slice::from_ref(&root)).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{p}: {e}");
        // After the signer certificate expired (2026), or under another root: refused.
        assert!(verify_rim_signature(&text, 1_800_000_000, std::slice::from_ref(&root)).is_err());
        assert!(verify_rim_signature(&text, RIM_AT, &[gpu::nvidia_root()]).is_err());
    }
}

#[test]
fn rim_signer_chains_pass_ocsp_at_their_own_time() {
    use measurements::gpu::ocsp::check_rim_chain_ocsp;
    use measurements::gpu::xmldsig::{nvidia_corim_root, verify_rim_signature};
    // The RIM chains' responses are valid around 2025-10-24; the GPU chain's around
    // 2025-08-21: no single time fits both, so each item is judged at its own time.
    let rim_ocsp_at = 1_761_307_200; // 2025-10-24T12:00:00Z
    let all = ocsp_files(
        &["driver_rim_l4", "driver_rim_l3", "rim_l2", "vbios_l4"],
        rim_ocsp_at,
    );
    for p in [
        "rim/NV_GPU_DRIVER_GH100_550.90.07.xml",
        "rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml",
    ] {
        let text = String::from_utf8(read(p)).unwrap();
        let signer = verify_rim_signature(&text, RIM_AT, &[nvidia_corim_root()]).unwrap();
        let statuses = check_rim_chain_ocsp(&signer.chain, &all, None).unwrap();
        assert_eq!(statuses.len(), 3, "{p}");
        let e = check_rim_chain_ocsp(
            &signer.chain,
            &OcspEvidence {
                at: AT,
                ..all.clone()
            },
            None,
        )
        .unwrap_err();
        assert_eq!(e.code(), "ocsp_not_yet_valid", "{p}: {e}");
    }
    let e = check_rim_chain_ocsp(
        &verify_rim_signature(
            &String::from_utf8(read("rim/NV_GPU_DRIVER_GH100_550.90.07.xml")).unwrap(),
            RIM_AT,
            &[nvidia_corim_root()],
        )
        .unwrap()
        .chain,
        &gpu_ocsp(rim_ocsp_at),
        None,
    )
    .unwrap_err();
    assert_eq!(e.code(), "ocsp_missing");
}
