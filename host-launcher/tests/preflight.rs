//! Preflight on fake roots: a ready TDX host, a host missing everything, and this machine
//! (which must report, not crash, that TDX is missing); the QGS, PCCS, memory and GPU CC mode
//! checks one by one, with garbage inputs; the CLI end to end against a fake root, QEMU and
//! gpu-admin-tools.
//!
//! The gpu-admin-tools outputs below follow the format of NVIDIA/gpu-admin-tools v2025.10.20
//! (`cli/main.py` prints the version lines to stdout, `cli/per_gpu.py` logs `{gpu} CC mode is
//! {mode}` through `logging` to stderr, `Gpu.__str__` is `GPU <bdf> <name> <devid> BAR0 <addr>`);
//! they were written from its source, not captured on a real H100.

mod common;

use std::path::{Path, PathBuf};

use host::gpu::Bdf;
use host::preflight::{self, CcMode, CcProbe, Inputs, MemInfo, Outcome, QemuInfo};
use host::vm::config::{QgsSocket, DEFAULT_QGS};

const BDF: &str = "0000:17:00.0";

/// `sudo ./nvidia_gpu_tools.py --gpu-bdf=0000:17:00.0 --query-cc-mode`, stdout then stderr.
fn tool_output(mode: &str) -> String {
    format!(
        "NVIDIA GPU Tools version v2025.10.20o\n\
         Command line arguments: ['./nvidia_gpu_tools.py', '--gpu-bdf={BDF}', '--query-cc-mode']\n\
         2025-10-21,09:14:02.311 INFO     Selected GPU {BDF} H100-PCIE 0x2331 BAR0 0x383ffa000000\n\
         2025-10-21,09:14:02.402 INFO     GPU {BDF} H100-PCIE 0x2331 BAR0 0x383ffa000000 CC mode is {mode}\n"
    )
}

fn ran(output: &str) -> CcProbe {
    CcProbe::Ran {
        tool: "nvidia_gpu_tools.py".into(),
        success: true,
        output: output.into(),
    }
}

fn bdf() -> Bdf {
    BDF.parse().unwrap()
}

/// Intel's shipped QCNL config (JSON with `//` comments and leading commas), pointed at a PCCS.
const QCNL: &str = r#"{
  // *** ATTENTION : This file is in JSON format so the keys are case sensitive. Don't change them.

  //PCCS server address
  "pccs_url": "https://pccs.example:8081/sgx/certification/v4/"

  // To accept insecure HTTPS certificate, set this option to false
  ,"use_secure_cert": true

  // You can use the Intel PCS or another PCCS to get quote verification collateral.
  //,"collateral_service": "https://api.trustedservices.intel.com/sgx/certification/v4/"
  ,"retry_times": 6
  ,"retry_delay": 10
}
"#;

fn meminfo(available_kib: u64, huge_total: u64) -> String {
    format!(
        "MemTotal:       263856640 kB\nMemFree:        200000000 kB\n\
         MemAvailable:   {available_kib} kB\nBuffers:          123456 kB\n\
         HugePages_Total:    {huge_total}\nHugePages_Free:     {huge_total}\n\
         HugePages_Rsvd:        0\nHugePages_Surp:        0\nHugepagesize:       2048 kB\n\
         Hugetlb:               0 kB\n"
    )
}

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
    // Intel's QGS on vsock port 4050 (the launcher's default), running.
    common::write(
        &root.join("etc/qgs.conf"),
        "#set port number\nport = 4050\nnumber_threads = 4\n",
    );
    common::write(&root.join("proc/1/comm"), "systemd\n");
    common::write(&root.join("proc/4242/comm"), "qgs\n");
    common::write(&root.join("etc/sgx_default_qcnl.conf"), QCNL);
    // 128 GiB available.
    common::write(&root.join("proc/meminfo"), meminfo(128 << 20, 0));
    // A GPU on vfio-pci.
    let d = root.join("sys/bus/pci/devices").join(BDF);
    common::write(&d.join("vendor"), "0x10de\n");
    common::write(&d.join("device"), "0x2331\n");
    common::write(&d.join("class"), "0x030200\n");
    common::write(&d.join("driver_override"), "vfio-pci\n");
    std::os::unix::fs::symlink("../../../../bus/pci/drivers/vfio-pci", d.join("driver")).unwrap();
    std::os::unix::fs::symlink("../../../../kernel/iommu_groups/0", d.join("iommu_group")).unwrap();
}

/// Inputs for a host whose config is the launcher's defaults, without GPUs.
fn inputs(root: &Path, qemu: QemuInfo) -> Inputs {
    Inputs {
        root: root.to_path_buf(),
        qemu,
        firmware: None,
        gpus: vec![],
        qgs: Some(DEFAULT_QGS),
        memory_mib: None,
        gpu_cc: vec![],
    }
}

fn check(checks: &[preflight::Check], name: &str) -> preflight::Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
        .clone()
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
        memory_mib: Some(65536),
        gpus: vec![bdf()],
        gpu_cc: vec![(bdf(), ran(&tool_output("on")))],
        ..inputs(&root, qemu("10.1.0", true))
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
            "tdvf",
            "qgs",
            "pccs",
            "memory",
            "gpu 0000:17:00.0",
            "gpu-cc 0000:17:00.0"
        ]
    );
    assert!(checks[7].line().contains("usr/share/ovmf/OVMF.inteltdx.fd"));
    let line = |n: &str| check(&checks, n).line();
    assert!(
        line("qgs").contains("QGS (pid 4242) on vsock port 4050"),
        "{}",
        line("qgs")
    );
    assert!(
        line("pccs").contains("pccs_url https://pccs.example:8081/sgx/certification/v4/"),
        "{}",
        line("pccs")
    );
    assert!(
        line("memory").contains("131072 MiB available for 65536 MiB guest memory + 512 MiB"),
        "{}",
        line("memory")
    );
    assert_eq!(
        line("gpu-cc 0000:17:00.0"),
        "ok       gpu-cc 0000:17:00.0: CC mode on"
    );

    // Without a config: the memory figure is only reported.
    let checks = preflight::run(&inputs(&root, qemu("10.1.0", true)));
    assert!(names_missing(&checks).is_empty(), "{checks:#?}");
    assert!(check(&checks, "memory")
        .line()
        .contains("131072 MiB available (no --config"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_empty_host_reports_every_missing_piece_with_a_fix() {
    let root = common::temp("pf-empty");
    let gpu: host::gpu::Bdf = "0000:17:00.0".parse().unwrap();
    let checks = preflight::run(&Inputs {
        firmware: Some(root.join("nope.fd")),
        gpus: vec![gpu.clone()],
        memory_mib: Some(4096),
        gpu_cc: vec![(
            gpu,
            CcProbe::NoTool("no nvidia_gpu_tools.py on PATH".into()),
        )],
        ..inputs(&root, qemu("10.0.2", false))
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
            "qgs",
            "pccs",
            "memory",
            "gpu 0000:17:00.0",
            "gpu-cc 0000:17:00.0"
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
    assert!(
        line("qgs").contains("etc/qgs.conf does not exist"),
        "{}",
        line("qgs")
    );
    assert!(
        line("qgs").contains("apt install tdx-qgs"),
        "{}",
        line("qgs")
    );
    assert!(
        line("qgs").contains("systemctl enable --now qgsd"),
        "{}",
        line("qgs")
    );
    assert!(line("pccs").contains("[tee.pccs]"), "{}", line("pccs"));
    assert!(
        line("memory").contains("no MemAvailable"),
        "{}",
        line("memory")
    );
    assert!(
        line("gpu-cc 0000:17:00.0").contains("git clone https://github.com/NVIDIA/gpu-admin-tools"),
        "{}",
        line("gpu-cc 0000:17:00.0")
    );

    // TDX switched off in kvm_intel is reported as such.
    common::write(&root.join("sys/module/kvm_intel/parameters/tdx"), "N\n");
    let checks = preflight::run(&inputs(
        &root,
        QemuInfo {
            binary: "q".into(),
            version: Err("No such file or directory".into()),
            objects: Err("No such file or directory".into()),
        },
    ));
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

#[test]
fn qgs_on_vsock_reads_qgs_conf_and_the_process_list() {
    let root = common::temp("pf-qgs-vsock");
    let qgs = |root: &Path, socket: Option<QgsSocket>| {
        check(
            &preflight::run(&Inputs {
                qgs: socket,
                ..inputs(root, qemu("10.1.0", true))
            }),
            "qgs",
        )
    };
    // No config file: QGS is not installed.
    assert!(!qgs(&root, Some(DEFAULT_QGS)).passed());
    // Port commented out (newer packages): QGS listens on its unix socket.
    common::write(
        &root.join("etc/qgs.conf"),
        "#port = 4050\nnumber_threads = 4\n",
    );
    let c = qgs(&root, Some(DEFAULT_QGS));
    assert!(
        c.line()
            .contains("sets no port: QGS listens on /var/run/tdx-qgs/qgs.socket"),
        "{}",
        c.line()
    );
    assert!(
        c.line().contains("set port = 4050 in /etc/qgs.conf"),
        "{}",
        c.line()
    );
    // Another port.
    common::write(&root.join("etc/qgs.conf"), "port=4051\n");
    let c = qgs(&root, Some(DEFAULT_QGS));
    assert!(c.line().contains("sets port = 4051"), "{}", c.line());
    assert!(c.line().contains("\"vsock:2:4051\""), "{}", c.line());
    // A value QGS refuses, and garbage: reported, never a panic.
    for bad in [
        "port = 70000\n",
        "port = 40x\n",
        "port =\n",
        "\u{0}\u{ff}port\n=\n==\n",
    ] {
        common::write(&root.join("etc/qgs.conf"), bad);
        assert!(!qgs(&root, Some(DEFAULT_QGS)).passed(), "{bad:?}");
    }
    // Right port, QGS not running.
    common::write(&root.join("etc/qgs.conf"), " port = 4050 \n");
    let c = qgs(&root, Some(DEFAULT_QGS));
    assert!(c.line().contains("no qgs process"), "{}", c.line());
    assert!(
        c.line().contains("systemctl enable --now qgsd"),
        "{}",
        c.line()
    );
    common::write(&root.join("proc/self/comm"), "qgs\n");
    common::write(&root.join("proc/77/comm"), "qgsd-helper\n");
    assert!(!qgs(&root, Some(DEFAULT_QGS)).passed());
    common::write(&root.join("proc/77/comm"), "qgs\n");
    assert!(qgs(&root, Some(DEFAULT_QGS))
        .line()
        .contains("QGS (pid 77)"));
    // A QGS at another CID is not this host's; `none` turns quotes off.
    assert!(qgs(&root, Some(QgsSocket::Vsock { cid: 7, port: 4050 })).passed());
    let c = qgs(&root, None);
    assert!(
        c.passed() && c.line().contains("cannot get quotes"),
        "{}",
        c.line()
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn qgs_on_a_unix_socket_must_accept_connections() {
    let root = common::temp("pf-qgs-unix");
    let socket = QgsSocket::Unix(preflight::QGS_UNIX_SOCKET.into());
    let qgs = |root: &Path| {
        check(
            &preflight::run(&Inputs {
                qgs: Some(socket.clone()),
                ..inputs(root, qemu("10.1.0", true))
            }),
            "qgs",
        )
    };
    let path = root.join("var/run/tdx-qgs/qgs.socket");
    let c = qgs(&root);
    assert!(
        c.line()
            .contains("/var/run/tdx-qgs/qgs.socket does not exist"),
        "{}",
        c.line()
    );
    assert!(c.line().contains("tdx-qgs"), "{}", c.line());
    // QGS configured for vsock: the fix says so.
    common::write(&root.join("etc/qgs.conf"), "port = 4050\n");
    assert!(qgs(&root)
        .line()
        .contains("sets port = 4050, so QGS listens on vsock"));
    // A regular file is not a socket.
    common::write(&path, "");
    assert!(qgs(&root).line().contains("is not a socket"));
    std::fs::remove_file(&path).unwrap();
    // A listening socket passes; once its listener is gone it is stale.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let c = qgs(&root);
    assert!(
        c.passed() && c.line().contains("accepts connections"),
        "{}",
        c.line()
    );
    drop(listener);
    let c = qgs(&root);
    assert!(
        c.line()
            .contains("a QGS listening on /var/run/tdx-qgs/qgs.socket"),
        "{}",
        c.line()
    );
    assert!(c.line().contains("systemctl restart qgsd"), "{}", c.line());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn pccs_url_is_read_tolerantly() {
    assert_eq!(
        preflight::qcnl_pccs_url(QCNL).as_deref(),
        Some("https://pccs.example:8081/sgx/certification/v4/")
    );
    // Plain JSON, escapes, block comments.
    assert_eq!(
        preflight::qcnl_pccs_url(
            r#"{"use_secure_cert":false,"pccs_url":"https:\/\/10.0.0.1:8081\/x"}"#
        )
        .as_deref(),
        Some("https://10.0.0.1:8081/x")
    );
    assert_eq!(
        preflight::qcnl_pccs_url("/* \"pccs_url\": \"a\" */ {\"pccs_url\" : \"b\"}").as_deref(),
        Some("b")
    );
    // Trailing commas do not matter.
    assert_eq!(
        preflight::qcnl_pccs_url("{\"pccs_url\": \"https://p/\",}").as_deref(),
        Some("https://p/")
    );
    for none in [
        "",
        "{}",
        "// \"pccs_url\": \"https://commented/\"\n{}",
        "PCCS_URL=https://old-format/\n",
        "{\"pccs_url\": 5}",
        "{\"pccs_url\": \"unterminated",
        "{\"pccs_url\" \"https://no-colon/\"}",
        "/* unterminated comment \"pccs_url\": \"x\"",
        "\"\\u12",
        "\"\\",
        "\u{0}\u{feff}{\"pccs_url\"",
    ] {
        assert_eq!(preflight::qcnl_pccs_url(none), None, "{none:?}");
    }

    let root = common::temp("pf-pccs");
    let pccs = |root: &Path| check(&preflight::run(&inputs(root, qemu("10.1.0", true))), "pccs");
    assert!(pccs(&root).line().contains("QCNL config"));
    let conf = root.join("etc/sgx_default_qcnl.conf");
    common::write(&conf, b"\xff\xfe not json at all {{{");
    let c = pccs(&root);
    assert!(c.line().contains("no \"pccs_url\""), "{}", c.line());
    assert!(
        c.line().contains("\"Collateral for a real TD: a PCCS\""),
        "{}",
        c.line()
    );
    common::write(&conf, "{\"pccs_url\": \"\"}");
    assert!(pccs(&root).line().contains("pccs_url is \"\""));
    common::write(&conf, QCNL);
    assert!(pccs(&root).passed());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn memory_covers_the_guest_and_qemu() {
    let m = preflight::parse_meminfo(&meminfo(1 << 20, 512));
    assert_eq!(
        m,
        MemInfo {
            mem_total_kib: Some(263_856_640),
            mem_available_kib: Some(1 << 20),
            hugepages_total: Some(512),
            hugepages_free: Some(512),
            hugepage_size_kib: Some(2048),
        }
    );
    // Truncated and garbage files give `None` fields, never a panic.
    for bad in [
        "",
        "MemAvailable:",
        "MemAvailable: 12",
        "MemAvailable: 99999999999999999999999 kB",
        "MemAvailable: -5 kB",
        "MemAvailable: 5 MB",
        "MemAvail",
        "\u{0}:\u{0}\n::::\nMemAvailable:: 3 kB",
    ] {
        let m = preflight::parse_meminfo(bad);
        assert!(
            m.mem_available_kib.is_none() || bad == "MemAvailable: 12",
            "{bad:?}"
        );
    }

    let root = common::temp("pf-mem");
    let memory = |root: &Path, mib: u64| {
        check(
            &preflight::run(&Inputs {
                memory_mib: Some(mib),
                ..inputs(root, qemu("10.1.0", true))
            }),
            "memory",
        )
    };
    common::write(&root.join("proc/meminfo"), "MemTotal:  1000 kB\nMemFr");
    assert!(memory(&root, 1024).line().contains("no MemAvailable"));
    // 1 GiB available, 1 GiB of it... plus 1 GiB of huge pages reserved.
    common::write(&root.join("proc/meminfo"), meminfo(1 << 20, 512));
    let c = memory(&root, 1024);
    assert_eq!(
        c.line(),
        "missing  memory for the guest (1024 MiB + 512 MiB for QEMU = 1536 MiB; 1024 MiB \
         available; 1024 MiB are reserved as huge pages, which the guest does not use): free 512 \
         MiB (stop other VMs or services) or lower memory in the config (and build the image with \
         the same --memory), or release the 1024 MiB of reserved huge pages (sysctl \
         vm.nr_hugepages=0): cocoon guests use ordinary memory"
    );
    assert!(memory(&root, 512).passed());
    // Absurd sizes do not overflow.
    assert!(!memory(&root, u64::MAX).passed());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn gpu_cc_mode_from_recorded_tool_outputs() {
    assert_eq!(
        preflight::parse_cc_mode(&tool_output("on")),
        Some(CcMode::On)
    );
    assert_eq!(
        preflight::parse_cc_mode(&tool_output("off")),
        Some(CcMode::Off)
    );
    assert_eq!(
        preflight::parse_cc_mode(&tool_output("devtools")),
        Some(CcMode::DevTools)
    );
    assert_eq!(
        preflight::parse_cc_mode(&tool_output("invalid-devtools-only-fix-by-setting-cc-mode")),
        Some(CcMode::Other(
            "invalid-devtools-only-fix-by-setting-cc-mode".into()
        ))
    );
    let unsupported = "2025-10-21,09:14:02.402 ERROR    Querying CC mode is not supported on GPU \
                       0000:17:00.0 A100-PCIE-40GB 0x20f1 BAR0 0x383ffa000000\n";
    assert_eq!(
        preflight::parse_cc_mode(unsupported),
        Some(CcMode::NotSupported)
    );
    for none in [
        "",
        "CC mode is",
        "CC mode set to on. It will be active after GPU reset.",
        "\u{0}\u{ffff}",
    ] {
        assert_eq!(preflight::parse_cc_mode(none), None, "{none:?}");
    }

    let cc = |probe: CcProbe| {
        let c = check(
            &preflight::run(&Inputs {
                gpu_cc: vec![(bdf(), probe)],
                ..inputs(Path::new("/nonexistent"), qemu("10.1.0", true))
            }),
            "gpu-cc 0000:17:00.0",
        );
        (c.passed(), c.line())
    };
    let set_on = "sudo nvidia_gpu_tools.py --gpu-bdf=0000:17:00.0 --set-cc-mode=on \
                  --reset-after-cc-mode-switch";
    assert!(cc(ran(&tool_output("on"))).0);
    let (ok, line) = cc(ran(&tool_output("off")));
    assert!(
        !ok && line.contains("(it is off)") && line.ends_with(set_on),
        "{line}"
    );
    let (ok, line) = cc(ran(&tool_output("devtools")));
    assert!(
        !ok && line.contains("it is devtools") && line.ends_with(set_on),
        "{line}"
    );
    let (ok, line) = cc(ran(unsupported));
    assert!(!ok && line.contains("has no CC mode"), "{line}");
    // Unexpected outputs: the error line is quoted, no panic.
    let driver = "NVIDIA GPU Tools version v2025.10.20o\n2025-10-21,09:14:02.100 ERROR    The nvidia \
                  driver appears to be using GPU 0000:17:00.0 H100-PCIE 0x2331 BAR0 0x0, aborting.\n\
                  trailing noise\n";
    let (ok, line) = cc(CcProbe::Ran {
        tool: "t".into(),
        success: false,
        output: driver.into(),
    });
    assert!(!ok, "{line}");
    assert!(
        line.contains(
            "unexpected answer from t, failed: 2025-10-21,09:14:02.100 ERROR    The nvidia driver"
        ),
        "{line}"
    );
    assert!(line.contains("cocoon-host gpu bind 0000:17:00.0"), "{line}");
    for garbage in [
        "",
        "\u{0}\u{1}\u{2}",
        &"é".repeat(10_000),
        "Traceback (most recent call last):\n  File",
    ] {
        let (ok, line) = cc(ran(garbage));
        assert!(!ok && line.contains("unexpected answer"), "{line}");
        assert!(line.chars().count() < 600, "{line}");
    }
    let (ok, line) = cc(CcProbe::Failed {
        tool: "/opt/gat/nvidia_gpu_tools.py".into(),
        error: "Permission denied (os error 13)".into(),
    });
    assert!(
        !ok && line.contains("Permission denied") && line.contains("as root"),
        "{line}"
    );
}

/// A fake gpu-admin-tools that answers like the real one (stdout and stderr).
fn fake_tool(dir: &Path, mode: &str) -> PathBuf {
    let tool = dir.join("bin/nvidia_gpu_tools.py");
    common::executable(
        &tool,
        &format!(
            "echo 'NVIDIA GPU Tools version v2025.10.20o'\n\
             echo \"Command line arguments: $*\"\n\
             bdf=\"${{1#--gpu-bdf=}}\"\n\
             [ \"$2\" = --query-cc-mode ] || exit 2\n\
             echo \"2025-10-21,09:14:02.402 INFO     GPU $bdf H100-PCIE 0x2331 BAR0 0x383ffa000000 CC mode is {mode}\" >&2"
        ),
    );
    tool
}

#[test]
fn the_tool_is_found_on_path_and_its_stderr_is_read() {
    let dir = common::temp("pf-tool");
    assert_eq!(preflight::find_gpu_admin_tools(None), None);
    let path = std::env::join_paths([dir.join("nothing"), dir.join("bin")]).unwrap();
    assert_eq!(preflight::find_gpu_admin_tools(Some(&path)), None);
    let tool = fake_tool(&dir, "devtools");
    assert_eq!(
        preflight::find_gpu_admin_tools(Some(&path)),
        Some(tool.clone())
    );

    let probe = preflight::probe_cc_mode(Some(&tool), &bdf());
    let CcProbe::Ran {
        success, output, ..
    } = &probe
    else {
        panic!("{probe:?}")
    };
    assert!(success);
    assert!(output.contains("GPU 0000:17:00.0 H100-PCIE"), "{output}");
    assert_eq!(preflight::parse_cc_mode(output), Some(CcMode::DevTools));
    assert!(matches!(
        preflight::probe_cc_mode(Some(&dir.join("missing")), &bdf()),
        CcProbe::Failed { .. }
    ));
    assert!(matches!(
        preflight::probe_cc_mode(None, &bdf()),
        CcProbe::NoTool(_)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cli_passes_on_a_ready_fake_host() {
    let root = common::temp("pf-cli");
    ready_root(&root);
    let tools = common::temp("pf-cli-tools");
    let qemu = tools.join("qemu-system-x86_64");
    common::executable(
        &qemu,
        "if [ \"$1\" = --version ]; then echo 'QEMU emulator version 10.1.0'; \
         else printf 'List of user creatable objects:\\n  tdx-guest\\n'; fi",
    );
    let run = |tool: &Path| {
        std::process::Command::new(common::HOST)
            .arg("preflight")
            .arg("--root")
            .arg(&root)
            .arg("--qemu")
            .arg(&qemu)
            .args(["--gpu", "0000:17:00.0", "--gpu", "0000:17:00.0"])
            .arg("--gpu-admin-tools")
            .arg(tool)
            .output()
            .unwrap()
    };
    let out = run(&fake_tool(&tools, "on"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ok       gpu-cc 0000:17:00.0: CC mode on"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("gpu-cc 0000:17:00.0").count(), 1, "{stdout}");
    assert!(
        stdout.contains("preflight: ready for TDX guests"),
        "{stdout}"
    );

    let out = run(&fake_tool(&tools, "off"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing  GPU 0000:17:00.0 in CC mode on (it is off)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("preflight: 1 of 13 checks missing"),
        "{stdout}"
    );

    // A tool path that does not exist is a usage error.
    let out = run(&tools.join("nope.py"));
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&tools).unwrap();
}

#[test]
fn the_cli_takes_the_qgs_socket_and_memory_from_the_config() {
    let root = common::temp("pf-cli-config");
    ready_root(&root);
    let config = root.join("vm.toml");
    common::write(
        &config,
        "name = \"w\"\nrole = \"worker\"\nimage = \"img\"\ntee = \"tdx\"\ncpus = 4\n\
         memory = \"256G\"\n[tdx]\nfirmware = \"/usr/share/ovmf/OVMF.inteltdx.fd\"\n\
         quote_generation_socket = \"unix:/var/run/tdx-qgs/qgs.socket\"\n\
         [guest.files]\n\"init.toml\" = \"init.toml\"\n",
    );
    let out = std::process::Command::new(common::HOST)
        .arg("preflight")
        .arg("--root")
        .arg(&root)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing  QGS socket (/var/run/tdx-qgs/qgs.socket does not exist): /etc/qgs.conf sets port = 4050"),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing  memory for the guest (262144 MiB + 512 MiB for QEMU = 262656 MiB; 131072 MiB available)"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
