//! The QEMU command line of a guest (pure: config, instance and image in, argument vector out).
//!
//! `--tee tdx` (QEMU ≥ 10.1, `docs/system/i386/tdx.rst`): KVM with `-cpu host`, a `tdx-guest`
//! object as the machine's `confidential-guest-support` with split irqchip, TDVF as `-bios`,
//! direct kernel boot (TDVF measures kernel, command line and initrd into RTMR1/RTMR2), guest
//! memory from an explicit RAM backend (QEMU adds the private guest_memfd side itself), vsock,
//! GPUs through iommufd-backed `vfio-pci`, each behind its own PCIe root port.
//!
//! `--tee sim`: the same image under TCG (`-accel tcg -cpu max`, plain q35), plus two fw_cfg
//! files through which the launcher plays the TDX platform (`opt/cocoon/sim-platform`: the
//! simulated platform's seed; `opt/cocoon/sim-registers`: the registers it reports). No vsock.
//!
//! Both: `-nodefaults`, no display, serial console on stdio (the launcher reads it), a QMP
//! socket (for Ctrl-Alt-Del), no reboot (a guest reboot or panic ends QEMU), config / model /
//! verity disks as read-only
//! virtio-blk devices with fixed serials, user-mode networking with host port forwards.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::config::{Instance, QgsSocket, TdIds, Tee, VmConfig};
use super::image::BootImage;
use super::state;

/// Serial of the config disk (the guest looks it up in `/sys/block/*/serial`).
pub const SERIAL_CONFIG: &str = protocol::guest::CONFIG_DISK_SERIAL;
/// Serial of the model disk.
pub const SERIAL_MODEL: &str = protocol::guest::MODEL_DISK_SERIAL;
/// Serial of the model's dm-verity hash tree.
pub const SERIAL_VERITY: &str = protocol::guest::VERITY_DISK_SERIAL;
/// Serial of the image's root disk.
pub const SERIAL_ROOT: &str = protocol::guest::ROOT_DISK_SERIAL;
/// fw_cfg name of the simulated platform seed (`SimPlatformSeed` JSON).
pub const FW_CFG_SIM_PLATFORM: &str = protocol::guest::FW_CFG_SIM_PLATFORM;
/// fw_cfg name of the simulated registers (`TdRegisters` JSON).
pub const FW_CFG_SIM_REGISTERS: &str = protocol::guest::FW_CFG_SIM_REGISTERS;
/// fw_cfg knob of OVMF/TDVF sizing the 64-bit PCI MMIO window (GPU BARs).
pub const FW_CFG_MMIO64: &str = "opt/ovmf/X-PciMmio64Mb";
/// QOM id of the tdx-guest object.
pub const TDX_ID: &str = "tdx0";
/// QOM id of the RAM backend.
pub const RAM_ID: &str = "ram0";
/// QOM id of the iommufd object.
pub const IOMMUFD_ID: &str = "iommufd0";

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The image's root disk (`cocoon-image build --root-disk`), attached read-only.
    pub root_disk: Option<PathBuf>,
}

impl From<&BootImage> for Boot {
    fn from(i: &BootImage) -> Self {
        Self {
            kernel: i.kernel.clone(),
            initrd: i.initrd.clone(),
            root_disk: i.root_disk.clone(),
            cmdline: i.cmdline.clone(),
        }
    }
}

/// A command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuCommand {
    pub program: PathBuf,
    /// Extra environment (`LD_LIBRARY_PATH`).
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// A path as a QEMU option value (`file=…`): commas doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The `tdx-guest` object as JSON (the only form that can carry the socket address), with a
/// fixed key order.
pub fn tdx_object(qgs: Option<&QgsSocket>, ids: &TdIds) -> String {
    let mut parts = vec![
        format!("\"qom-type\":{}", json_str("tdx-guest")),
        format!("\"id\":{}", json_str(TDX_ID)),
        "\"sept-ve-disable\":true".to_string(),
    ];
    match qgs {
        None => {}
        Some(QgsSocket::Vsock { cid, port }) => parts.push(format!(
            "\"quote-generation-socket\":{{\"type\":\"vsock\",\"cid\":{},\"port\":{}}}",
            json_str(&cid.to_string()),
            json_str(&port.to_string())
        )),
        Some(QgsSocket::Unix(path)) => parts.push(format!(
            "\"quote-generation-socket\":{{\"type\":\"unix\",\"path\":{}}}",
            json_str(&path.display().to_string())
        )),
    }
    let b64 = |v: &[u8; 48]| base64::engine::general_purpose::STANDARD.encode(v);
    for (key, v) in [
        ("mrconfigid", &ids.mrconfigid),
        ("mrowner", &ids.mrowner),
        ("mrownerconfig", &ids.mrownerconfig),
    ] {
        if let Some(v) = v {
            parts.push(format!("\"{key}\":{}", json_str(&b64(v))));
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// `-netdev user,…` with one `hostfwd` per forward.
fn netdev(config: &VmConfig, instance: &Instance) -> String {
    let mut s = "user,id=n0".to_string();
    for f in &instance.forwards {
        s.push_str(&format!(
            ",hostfwd=tcp:{}:{}-:{}",
            config.host_address, f.host, f.guest
        ));
    }
    s
}

fn disk(args: &mut Vec<String>, id: &str, path: &Path, serial: &str) {
    args.push("-drive".into());
    args.push(format!(
        "if=none,id={id},file={},format=raw,readonly=on",
        opt_path(path)
    ));
    args.push("-device".into());
    args.push(format!("virtio-blk-pci,drive={id},serial={serial}"));
}

/// The full command line of `instance` of `config` booting `boot`.
pub fn command(config: &VmConfig, instance: &Instance, boot: &Boot) -> QemuCommand {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    if let Some(dir) = &config.qemu.bios_dir {
        push(&["-L", &dir.display().to_string()]);
    }
    let mem = format!("{}M", config.memory_mib);
    push(&[
        "-name",
        &format!("cocoon-{}-{}", config.name, instance.index),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    match (&config.tee, &config.tdx) {
        (Tee::Tdx, Some(tdx)) => {
            push(&[
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-machine",
                &format!(
                    "q35,kernel-irqchip=split,confidential-guest-support={TDX_ID},hpet=off,memory-backend={RAM_ID}"
                ),
                "-object",
                &tdx_object(tdx.qgs.as_ref(), &config.td_ids),
                "-object",
                &format!("memory-backend-ram,id={RAM_ID},size={mem}"),
                "-bios",
                &tdx.firmware.display().to_string(),
            ]);
        }
        // Validation puts `tdx` next to Tee::Tdx; anything else runs as the simulation.
        _ => push(&["-accel", "tcg", "-cpu", "max", "-machine", "q35"]),
    }
    push(&[
        "-smp",
        &config.cpus.to_string(),
        "-m",
        &mem,
        "-kernel",
        &boot.kernel.display().to_string(),
        "-initrd",
        &boot.initrd.display().to_string(),
        "-append",
        &boot.cmdline,
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt_path(&state::qmp_socket_path(&instance.dir))
        ),
    ]);
    if config.tdx.is_none() {
        push(&[
            "-fw_cfg",
            &format!(
                "name={FW_CFG_SIM_PLATFORM},file={}",
                opt_path(&state::sim_platform_path(&config.state_dir))
            ),
            "-fw_cfg",
            &format!(
                "name={FW_CFG_SIM_REGISTERS},file={}",
                opt_path(&state::sim_registers_path(&instance.dir))
            ),
        ]);
    }
    disk(
        &mut a,
        "config",
        &state::config_disk_path(&instance.dir),
        SERIAL_CONFIG,
    );
    if let Some(root) = &boot.root_disk {
        disk(&mut a, "root", root, SERIAL_ROOT);
    }
    if let Some(m) = &config.model {
        disk(&mut a, "model", &m.model, SERIAL_MODEL);
        disk(&mut a, "verity", &m.verity, SERIAL_VERITY);
    }
    a.extend([
        "-netdev".to_string(),
        netdev(config, instance),
        "-device".to_string(),
        "virtio-net-pci,netdev=n0,romfile=".to_string(),
    ]);
    if config.tdx.is_some() {
        a.extend([
            "-device".to_string(),
            format!("vhost-vsock-pci,guest-cid={}", instance.guest_cid),
        ]);
        if !config.gpus.is_empty() {
            a.extend(["-object".to_string(), format!("iommufd,id={IOMMUFD_ID}")]);
            for (i, bdf) in config.gpus.iter().enumerate() {
                a.extend([
                    "-device".to_string(),
                    format!("pcie-root-port,id=gpu-port{i},bus=pcie.0,chassis={}", i + 1),
                    "-device".to_string(),
                    format!("vfio-pci,host={bdf},bus=gpu-port{i},iommufd={IOMMUFD_ID}"),
                ]);
            }
        }
        if let Some(mb) = config.pci_mmio64_mb {
            a.extend([
                "-fw_cfg".to_string(),
                format!("name={FW_CFG_MMIO64},string={mb}"),
            ]);
        }
    }
    QemuCommand {
        program: config.qemu.binary.clone(),
        env: config
            .qemu
            .ld_library_path
            .iter()
            .map(|p| ("LD_LIBRARY_PATH".to_string(), p.display().to_string()))
            .collect(),
        args: a,
    }
}

/// Quotes `s` for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
                )
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The command as a copy-pasteable shell command, one option (and its value) per line.
pub fn render(cmd: &QemuCommand) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut head = String::new();
    for (k, v) in &cmd.env {
        head.push_str(&format!("{k}={} ", shell_quote(v)));
    }
    head.push_str(&shell_quote(&cmd.program.display().to_string()));
    lines.push(head);
    let mut i = 0;
    while i < cmd.args.len() {
        let arg = &cmd.args[i];
        match cmd.args.get(i + 1) {
            Some(next) if arg.starts_with('-') && !next.starts_with('-') => {
                lines.push(format!("    {} {}", shell_quote(arg), shell_quote(next)));
                i += 2;
            }
            _ => {
                lines.push(format!("    {}", shell_quote(arg)));
                i += 1;
            }
        }
    }
    lines.join(" \\\n") + "\n"
}
