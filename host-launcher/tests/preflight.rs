//! Preflight on fake roots: a ready TDX host, a host missing everything, and this machine
//! (which must report, not crash, that TDX is missing).

mod common;

use std::path::Path;

use host::preflight::{self, Inputs, Outcome, QemuInfo};

fn qemu(version: &str, tdx: bool) -> QemuInfo {
    QemuInfo {
        binary: "qemu-system-x86_64".into(),
        version: Ok(format!(
            "QEMU emulator version {version}\nCopyright (c) 2003-2025\n"
        )),
        objects: Ok(format!(
            "List of user creatable objects:\n  iommufd\n  memory-backend-ram\n{}",
            if tdx {
                "  tdx-guest\n"
            } else {
                "  sev-guest\n"
            }
        )),
    }
}

fn ready_root(root: &Path) {
    common::write(&root.join("sys/module/kvm_intel/parameters/tdx"), "Y\n");
    std::fs::create_dir_all(root.join("sys/kernel/iommu_groups/0")).unwrap();
    common::write(&root.join("dev/kvm"), "");
    common::write(&root.join("dev/vhost-vsock"), "");
    for m in ["vfio", "vfio_pci", "iommufd"] {
        std::fs::create_dir_all(root.join("sys/module").join(m)).unwrap();
    }
    common::write(&root.join("usr/share/ovmf/OVMF.inteltdx.fd"), "tdvf");
}

fn names_missing(checks: &[preflight::Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn a_ready_host_passes_every_check() {
    let root = common::temp("pf-ok");
    ready_root(&root);
    let checks = preflight::run(&Inputs {
        root: root.clone(),
        qemu: qemu("10.1.0", true),
        firmware: None,
        gpus: vec![],
    });
    assert!(names_missing(&checks).is_empty(), "{checks:#?}");
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tdx",
            "iommu",
            "kvm",
            "vhost-vsock",
            "qemu",
            "qemu-tdx",
            "vfio",
            "tdvf"
        ]
    );
    assert!(checks[7].line().contains("usr/share/ovmf/OVMF.inteltdx.fd"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_empty_host_reports_every_missing_piece_with_a_fix() {
    let root = common::temp("pf-empty");
    let gpu: host::gpu::Bdf = "0000:17:00.0".parse().unwrap();
    let checks = preflight::run(&Inputs {
        root: root.clone(),
        qemu: qemu("10.0.2", false),
        firmware: Some(root.join("nope.fd")),
        gpus: vec![gpu],
    });
    assert_eq!(
        names_missing(&checks),
        [
            "tdx",
            "iommu",
            "kvm",
            "vhost-vsock",
            "qemu",
            "qemu-tdx",
            "vfio",
            "tdvf",
            "gpu 0000:17:00.0"
        ]
    );
    for c in &checks {
        let line = c.line();
        assert!(line.starts_with("missing  "), "{line}");
        let Outcome::Missing { fix, .. } = &c.outcome else {
            unreachable!()
        };
        assert!(!fix.is_empty());
    }
    let line = |n: &str| checks.iter().find(|c| c.name == n).unwrap().line();
    assert!(
        line("tdx").contains("kvm_intel is not loaded"),
        "{}",
        line("tdx")
    );
    assert!(
        line("qemu").contains("QEMU 10.1 for TDX (qemu-system-x86_64 is 10.0.2)"),
        "{}",
        line("qemu")
    );
    assert!(
        line("vfio").contains("vfio, vfio_pci, iommufd"),
        "{}",
        line("vfio")
    );
    assert!(line("gpu 0000:17:00.0").contains("cocoon-host gpu bind 0000:17:00.0"));

    // TDX switched off in kvm_intel is reported as such.
    common::write(&root.join("sys/module/kvm_intel/parameters/tdx"), "N\n");
    let checks = preflight::run(&Inputs {
        root: root.clone(),
        qemu: QemuInfo {
            binary: "q".into(),
            version: Err("No such file or directory".into()),
            objects: Err("No such file or directory".into()),
        },
        firmware: None,
        gpus: vec![],
    });
    assert!(
        checks[0].line().contains("is \"N\""),
        "{}",
        checks[0].line()
    );
    assert!(
        checks[4].line().contains("q: No such file"),
        "{}",
        checks[4].line()
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn this_machine_reports_tdx_missing_without_crashing() {
    let tdx = std::fs::read_to_string("/sys/module/kvm_intel/parameters/tdx").unwrap_or_default();
    if tdx.trim() == "Y" {
        eprintln!("this host has TDX: nothing to check");
        return;
    }
    let out = std::process::Command::new(common::HOST)
        .arg("preflight")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("missing  TDX"), "{stdout}");
    assert!(stdout.contains("checks missing"), "{stdout}");
}
