//! Unit tests of the diff and its explanation.

use super::*;
use crate::manifest::RoleMeasurement;

fn record(role: &str, initramfs: &str, rtmr2: u8) -> BuildRecord {
    let mut registers = TdRegisters::ZERO;
    registers.mrtd = [1; 48];
    registers.rtmr[1] = [2; 48];
    registers.rtmr[2] = [rtmr2; 48];
    registers.td_attributes = (1u64 << 28).to_le_bytes();
    let art = |sha: &str| BuildArtifact {
        sha256: sha.repeat(32),
        size: 1,
    };
    BuildRecord {
        format: BUILD_RECORD_FORMAT.into(),
        role: role.into(),
        artifacts: BTreeMap::from([
            ("vmlinuz".to_string(), art("aa")),
            ("initramfs.cpio.gz".to_string(), art(initramfs)),
            ("cmdline".to_string(), art("cc")),
        ]),
        kernel: BuildKernel {
            package: "linux-image".into(),
            version: "6.12".into(),
            deb_sha256: "dd".repeat(32),
            packages: vec![
                BuildPackage {
                    name: "linux-image".into(),
                    version: "6.12".into(),
                    deb_sha256: "dd".repeat(32),
                },
                BuildPackage {
                    name: "linux-modules".into(),
                    version: "6.12".into(),
                    deb_sha256: "ee".repeat(32),
                },
            ],
        },
        cmdline: "console=ttyS0".into(),
        platform: "sim".into(),
        memory: 2 << 30,
        image_hash: registers.image_hash(),
        registers,
        register_sources: BTreeMap::new(),
        source_commit: Some("c1".into()),
    }
}

fn manifest_of(records: &[&BuildRecord]) -> Manifest {
    let mut m = Manifest::new("pub", 100);
    m.source_commit = Some("c1".into());
    for r in records {
        m.roles.insert(
            r.role.clone(),
            RoleMeasurement {
                image_hash: r.image_hash,
                registers: r.registers,
                rtmr3: vec![[7; 48]],
                models: BTreeMap::from([("m".to_string(), Hex32([9; 32]))]),
                gpu: None,
            },
        );
    }
    m
}

#[test]
fn identical_documents() {
    let r = record("worker", "11", 3);
    let d = diff(&Document::from_build(r.clone()), &Document::from_build(r));
    assert!(d.is_identical());
    assert_eq!(d.roles[0].status, RoleStatus::Unchanged);
    assert!(explain(&d).ends_with("identical\n"));
}

#[test]
fn initramfs_change_is_named_as_the_rtmr2_cause() {
    let old = Document::from_build(record("worker", "11", 3));
    let new = Document::from_build(record("worker", "22", 4));
    let d = diff(&old, &new);
    assert!(!d.is_identical());
    let role = &d.roles[0];
    assert_eq!(role.status, RoleStatus::Changed);
    assert_eq!(role.registers.len(), 1);
    let r = &role.registers[0];
    assert_eq!(r.register, "rtmr2");
    assert!(r.in_image_hash);
    assert_eq!(r.causes.len(), 1);
    assert_eq!(r.causes[0].input, "initramfs.cpio.gz");
    assert_eq!(r.causes[0].new.as_deref(), Some(&*"22".repeat(32)));
    assert!(r.unchanged.contains(&"cmdline".to_string()));
    let text = explain(&d);
    assert!(
        text.contains("rtmr2 differs")
            && text.contains("initramfs.cpio.gz changed 1111111111111111… → 2222222222222222…")
            && text.contains("cmdline, "),
        "{text}"
    );
}

/// A changed modules package (the initramfs carries its modules) is named among rtmr2's
/// causes; the boot package alone would not show it.
#[test]
fn a_modules_package_change_is_named_as_an_rtmr2_cause() {
    let old = record("proxy", "11", 3);
    let mut new = record("proxy", "22", 4);
    new.kernel.packages[1].deb_sha256 = "ff".repeat(32);
    let d = diff(&Document::from_build(old), &Document::from_build(new));
    let r = &d.roles[0].registers[0];
    assert_eq!(r.register, "rtmr2");
    let inputs: Vec<&str> = r.causes.iter().map(|c| c.input.as_str()).collect();
    assert_eq!(inputs, ["initramfs.cpio.gz", "kernel.packages"]);
    let new_value = r.causes[1].new.as_deref().unwrap();
    assert!(
        new_value.contains(&format!("linux-modules 6.12 {}", "ff".repeat(32))),
        "{new_value}"
    );
    // The boot package is unchanged, so rtmr1 has no cause to name.
    assert!(d.roles[0].registers.iter().all(|r| r.register != "rtmr1"));
}

/// A record written before `kernel.packages` existed still parses (the list is empty).
#[test]
fn records_without_a_package_list_still_parse() {
    let mut v = serde_json::to_value(record("worker", "11", 3)).unwrap();
    v["kernel"].as_object_mut().unwrap().remove("packages");
    let r: BuildRecord = serde_json::from_value(v).unwrap();
    assert!(r.kernel.packages.is_empty());
}

#[test]
fn manifests_without_records_explain_the_register_only() {
    let a = record("worker", "11", 3);
    let b = record("worker", "22", 4);
    let old = Document::from_manifest(&manifest_of(&[&a]), DocumentKind::Manifest).unwrap();
    let new = Document::from_manifest(&manifest_of(&[&b]), DocumentKind::Manifest).unwrap();
    let d = diff(&old, &new);
    let r = &d.roles[0].registers[0];
    assert!(!r.builds_compared && r.causes.is_empty());
    assert!(explain(&d).contains("initrd"));
    // With records attached the artifact is named.
    let (mut old, mut new) = (old, new);
    old.attach_build(a).unwrap();
    new.attach_build(b.clone()).unwrap();
    assert_eq!(
        diff(&old, &new).roles[0].registers[0].causes[0].input,
        "initramfs.cpio.gz"
    );
    // A record of another image is refused.
    let mut other = Document::from_manifest(&manifest_of(&[&b]), DocumentKind::Manifest).unwrap();
    assert!(matches!(
        other.attach_build(record("worker", "11", 3)),
        Err(DiffError::RecordMismatch { .. })
    ));
    assert!(matches!(
        other.attach_build(record("proxy", "22", 4)),
        Err(DiffError::NoSuchRole { .. })
    ));
}

#[test]
fn td_attribute_bits_are_decoded() {
    let a = record("worker", "11", 3);
    let mut b = a.clone();
    b.registers.td_attributes = (1u64 | 1 << 28).to_le_bytes();
    b.registers.xfam = 0b111u64.to_le_bytes();
    b.image_hash = b.registers.image_hash();
    let d = diff(&Document::from_build(a), &Document::from_build(b));
    let regs: Vec<_> = d.roles[0].registers.iter().map(|r| r.register).collect();
    assert_eq!(regs, ["td_attributes", "xfam"]);
    let bits = &d.roles[0].registers[0].bits;
    assert_eq!(bits.len(), 1);
    assert_eq!(
        (bits[0].bit, bits[0].name.as_str(), bits[0].old, bits[0].new),
        (0, "debug", false, true)
    );
    assert_eq!(d.roles[0].registers[1].bits.len(), 3);
    let text = explain(&d);
    assert!(
        text.contains("bit 0 (debug): 0 → 1") && text.contains("warning: debug set"),
        "{text}"
    );
    assert!(text.contains("bit 2 (avx)"), "{text}");
}

#[test]
fn roles_models_rtmr3_and_commit() {
    let w = record("worker", "11", 3);
    let p = record("proxy", "11", 3);
    let old_m = manifest_of(&[&w]);
    let mut new_m = manifest_of(&[&w, &p]);
    new_m.source_commit = Some("c2".into());
    new_m.issued_at = 200;
    let role = new_m.roles.get_mut("worker").unwrap();
    role.rtmr3 = vec![[8; 48]];
    role.models.insert("n".into(), Hex32([1; 32]));
    let old = Document::from_manifest(&old_m, DocumentKind::SignedManifest).unwrap();
    let new = Document::from_manifest(&new_m, DocumentKind::Manifest).unwrap();
    let d = diff(&old, &new);
    assert_eq!(
        d.source_commit,
        Some(Change {
            old: "c1".into(),
            new: "c2".into()
        })
    );
    assert_eq!(
        d.issued_at,
        Some(Change {
            old: Some(100),
            new: Some(200)
        })
    );
    assert_eq!(d.roles.len(), 2);
    assert_eq!(
        (d.roles[0].role.as_str(), d.roles[0].status),
        ("proxy", RoleStatus::Added)
    );
    let worker = &d.roles[1];
    assert_eq!(worker.status, RoleStatus::Changed);
    assert!(worker.registers.is_empty());
    let rtmr3 = worker.rtmr3.as_ref().unwrap();
    assert_eq!((rtmr3.added.len(), rtmr3.removed.len()), (1, 1));
    assert_eq!(worker.models.len(), 1);
    assert_eq!(worker.models[0].input, "n");
    // Removal is the mirror image.
    let back = diff(&new, &old);
    assert_eq!(back.roles[0].status, RoleStatus::Removed);
    // Only metadata differs: identical.
    let mut later = old_m.clone();
    later.issued_at = 300;
    let meta = diff(
        &old,
        &Document::from_manifest(&later, DocumentKind::Manifest).unwrap(),
    );
    assert!(meta.is_identical() && meta.issued_at.is_some());
}

#[test]
fn shapes_are_detected() {
    let r = record("worker", "11", 3);
    let text = serde_json::to_vec(&r).unwrap();
    assert_eq!(
        Document::from_json(&text).unwrap().kind,
        DocumentKind::BuildRecord
    );
    let m = manifest_of(&[&r]);
    let unsigned = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        Document::from_json(&unsigned).unwrap().kind,
        DocumentKind::Manifest
    );
    let signed = m
        .sign(&crate::manifest::SigningKey::from_bytes(&[1; 32]))
        .unwrap();
    let d = Document::from_json(signed.to_json_pretty().as_bytes()).unwrap();
    assert_eq!(d.kind, DocumentKind::SignedManifest);
    assert!(diff(&d, &Document::from_json(&unsigned).unwrap()).is_identical());
    for bad in [&b"[]"[..], b"{}", br#"{"format":"x"}"#, b"nope"] {
        assert!(Document::from_json(bad).is_err());
    }
    let mut wrong = r;
    wrong.image_hash = ImageHash([0; 32]);
    assert!(matches!(
        Document::from_json(&serde_json::to_vec(&wrong).unwrap()),
        Err(DiffError::BuildRecord { .. })
    ));
}
