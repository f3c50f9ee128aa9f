//! The boot steps, in order. Each is a small function that either succeeds or returns a
//! [`Failure`] naming the exit code and the reason (house style rule 14: the config is measured
//! before it is parsed).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attestation::config::{OpenedTee, TeeConfig};
use measurements::runtime_log::{RuntimeEvent, RuntimeLog};
use nix::mount::{mount, MsFlags};
use protocol::guest::RootDisk;
use sha2::{Digest, Sha256};

use crate::config::{InitConfig, ModelDisk, Network, Role};
use crate::disks::{self, BlockDevice};
use crate::exit::{Failure, InitExit, StepExt};
use crate::status::Status;
use crate::{dm, sys};

/// Where cocoon-init puts its runtime state (a tmpfs).
pub const RUN: &str = protocol::guest::GUEST_RUN_DIR;
/// The RTMR3 event log (JSON, `measurements::runtime_log`).
pub const RTMR3_LOG: &str = protocol::guest::GUEST_RTMR3_LOG;
/// Files of the config archive are written here.
pub const CONFIG_DIR: &str = protocol::guest::GUEST_CONFIG_DIR;
/// The simulated platform from the launcher (fw_cfg), copied here for the service.
pub const SIM_DIR: &str = protocol::guest::GUEST_SIM_DIR;
/// Models are exposed here as `<file_name>` → the dm-verity device.
pub const MODELS_DIR: &str = protocol::guest::GUEST_MODELS_DIR;
/// Kernel modules to load, one path per line relative to /lib/modules, in dependency order.
pub const MODULE_LIST: &str = "/etc/cocoon/modules";
/// Largest accepted config disk.
pub const MAX_CONFIG_DISK: u64 = protocol::guest::CONFIG_MAX_DISK;

/// Where the kernel's qemu_fw_cfg module exposes fw_cfg entries by name.
const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";

/// Step 1: the pseudo filesystems, then a console on fds 0-2.
pub fn mount_filesystems() -> Result<(), Failure> {
    let none: Option<&str> = None;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 5] = [
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "configfs",
            "/sys/kernel/config",
            "configfs",
            MsFlags::empty(),
            None,
        ),
    ];
    for (source, target, fstype, flags, data) in table {
        if fstype == "configfs" && !Path::new(target).is_dir() {
            // configfs is a module on some kernels: mounted again after modules load.
            continue;
        }
        fs::create_dir_all(target).step(InitExit::Mount, &format!("mkdir {target}"))?;
        match mount(Some(source), target, Some(fstype), flags, data.or(none)) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                return Err(Failure::new(
                    InitExit::Mount,
                    format!("mount {target}: {e}"),
                ))
            }
        }
    }
    reopen_console();
    fs::create_dir_all(RUN).step(InitExit::Mount, RUN)?;
    Ok(())
}

/// Makes fds 0, 1 and 2 the console if the kernel did not (no /dev/console in the initramfs).
fn reopen_console() {
    if nix::fcntl::fcntl(std::io::stdout().as_fd(), nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        sys::console_to_stdio(&console);
    }
}

/// Step 2: the kernel modules listed in the image, in order.
pub fn load_modules() -> Result<usize, Failure> {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(Failure::new(
                InitExit::Modules,
                format!("{MODULE_LIST}: {e}"),
            ))
        }
    };
    let mut loaded = 0;
    for rel in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = Path::new("/lib/modules").join(rel);
        let file = File::open(&path).step(InitExit::Modules, &path.display().to_string())?;
        let compressed = rel.ends_with(".xz") || rel.ends_with(".zst") || rel.ends_with(".gz");
        // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses the module itself.
        let flags = if compressed {
            nix::kmod::ModuleInitFlags::from_bits_retain(4)
        } else {
            nix::kmod::ModuleInitFlags::empty()
        };
        match nix::kmod::finit_module(&file, c"", flags) {
            Ok(()) => loaded += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            // The hardware is not there (e.g. tdx-guest outside a TD, under TCG).
            Err(nix::errno::Errno::ENODEV) => {
                Status::new("module-skipped")
                    .with("module", rel)
                    .with("reason", "no such device")
                    .emit();
            }
            Err(e) => {
                return Err(Failure::new(InitExit::Modules, format!("load {rel}: {e}")));
            }
        }
    }
    // configfs may only exist now.
    let cfs = "/sys/kernel/config";
    if Path::new(cfs).is_dir() && !Path::new(cfs).join("tsm").exists() {
        let _ = mount(
            Some("configfs"),
            cfs,
            Some("configfs"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
    Ok(loaded)
}

/// Step 3: the measured kernel command line.
pub fn read_cmdline() -> Result<String, Failure> {
    fs::read_to_string("/proc/cmdline").step(InitExit::Cmdline, "/proc/cmdline")
}

/// Step 3a: the role, from the command line.
pub fn read_role(cmdline: &str) -> Result<Role, Failure> {
    crate::config::role_from_cmdline(cmdline).step(InitExit::Cmdline, "role")
}

/// Which TEE the guest runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeKind {
    Tdx,
    Sim,
}

impl TeeKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::Sim => "sim",
        }
    }
}

/// Step 4: the TEE device. TDX when the TDX guest device exists (the `tdx-guest` module only
/// binds inside a TD; configfs-tsm's report directory alone exists whenever `tsm` is loaded);
/// otherwise the simulated platform the launcher passed through fw_cfg; otherwise fail.
pub fn open_tee() -> Result<(TeeKind, OpenedTee), Failure> {
    if Path::new("/sys/class/misc/tdx_guest").exists() || Path::new("/dev/tdx_guest").exists() {
        let tee = TeeConfig::Tdx {
            report_root: None,
            measurements_root: None,
            pccs: None,
        };
        let opened = tee.open(Path::new("/")).step(InitExit::Tee, "tdx")?;
        return Ok((TeeKind::Tdx, opened));
    }
    let fw_cfg = |name: &str| Path::new(FW_CFG_BY_NAME).join(name).join("raw");
    let platform = fw_cfg(protocol::guest::FW_CFG_SIM_PLATFORM);
    let registers = fw_cfg(protocol::guest::FW_CFG_SIM_REGISTERS);
    if platform.exists() && registers.exists() {
        fs::create_dir_all(SIM_DIR).step(InitExit::Tee, SIM_DIR)?;
        let p = Path::new(protocol::guest::GUEST_SIM_PLATFORM_FILE);
        let r = Path::new(protocol::guest::GUEST_SIM_REGISTERS_FILE);
        fs::copy(&platform, p).step(InitExit::Tee, &platform.display().to_string())?;
        fs::copy(&registers, r).step(InitExit::Tee, &registers.display().to_string())?;
        let tee = TeeConfig::Sim {
            platform_file: p.to_path_buf(),
            registers_file: r.to_path_buf(),
            runtime_log_file: None,
        };
        let opened = tee
            .open(Path::new("/"))
            .step(InitExit::Tee, "simulated platform")?;
        return Ok((TeeKind::Sim, opened));
    }
    Err(Failure::new(
        InitExit::Tee,
        "no TEE: /sys/kernel/config/tsm/report is absent and the launcher provided no simulated platform",
    ))
}

fn find_disk(serial: &str, exit: InitExit) -> Result<BlockDevice, Failure> {
    // virtio-blk probing is asynchronous: give the disks a moment to appear.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match disks::find_by_serial(Path::new("/sys"), serial) {
            Ok(Some(d)) if d.node(Path::new("/dev")).exists() => return Ok(d),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) => {
                return Err(Failure::new(
                    exit,
                    format!("no disk with serial {serial:?}"),
                ))
            }
            Err(e) => return Err(Failure::new(exit, format!("disk {serial:?}: {e}"))),
        }
    }
}

/// Step 5: read the config disk, measure it (RTMR3 + event log) and only then parse it.
pub fn measure_and_read_config(tee: &OpenedTee, role: Role) -> Result<InitConfig, Failure> {
    let disk = find_disk(disks::CONFIG_SERIAL, InitExit::ConfigDisk)?;
    let node = disk.node(Path::new("/dev"));
    let mut bytes = Vec::new();
    File::open(&node)
        .and_then(|f| f.take(MAX_CONFIG_DISK + 1).read_to_end(&mut bytes))
        .step(InitExit::ConfigDisk, &node.display().to_string())?;
    if bytes.len() as u64 > MAX_CONFIG_DISK {
        return Err(Failure::new(
            InitExit::ConfigDisk,
            format!("config disk larger than {MAX_CONFIG_DISK} bytes"),
        ));
    }
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();

    // Measure before parsing.
    let mut log = RuntimeLog::default();
    let event = RuntimeEvent::config(sha256);
    let digest = log.append(event.clone());
    tee.device
        .extend_rtmr(3, &digest, event.name.as_bytes())
        .step(InitExit::Measure, "extend rtmr3")?;
    let json = log.to_json();
    fs::write(RTMR3_LOG, json).step(InitExit::Measure, RTMR3_LOG)?;
    let rtmr3 = tee
        .device
        .registers()
        .map(|r| hex::encode(r.rtmr[3]))
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    Status::new("config")
        .with("sha256", hex::encode(sha256))
        .with("rtmr3", rtmr3)
        .emit();

    let files = crate::archive::parse(&bytes).step(InitExit::Config, "config archive")?;
    fs::create_dir_all(CONFIG_DIR).step(InitExit::Config, CONFIG_DIR)?;
    for (name, data) in &files {
        let path = Path::new(CONFIG_DIR).join(name);
        fs::write(&path, data).step(InitExit::Config, &path.display().to_string())?;
    }
    let init = files
        .get("init.toml")
        .ok_or_else(|| Failure::new(InitExit::Config, "config archive has no init.toml"))?;
    let text = std::str::from_utf8(init).step(InitExit::Config, "init.toml")?;
    InitConfig::parse(text, role).step(InitExit::Config, "config")
}

/// Step 6: loopback and the configured interface.
pub fn configure_network(net: Option<&Network>) -> Result<(), Failure> {
    sys::link_up("lo").step(InitExit::Network, "lo up")?;
    let Some(net) = net else { return Ok(()) };
    let mask = if net.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.prefix_len))
    };
    // The NIC driver may still be probing.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Path::new("/sys/class/net").join(&net.interface).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let what = format!("interface {}", net.interface);
    sys::set_ipv4(&net.interface, net.address, mask.into()).step(InitExit::Network, &what)?;
    sys::link_up(&net.interface).step(InitExit::Network, &what)?;
    if let Some(gw) = net.gateway {
        sys::add_default_route(gw).step(InitExit::Network, &format!("default route via {gw}"))?;
    }
    Status::new("network")
        .with("interface", net.interface.as_str())
        .with("address", format!("{}/{}", net.address, net.prefix_len))
        .emit();
    Ok(())
}

/// Step 7 (worker): map the model disk through dm-verity with the measured root hash, read it
/// all once if asked (a tampered block fails the read), and expose it under [`MODELS_DIR`].
pub fn setup_model(model: &ModelDisk) -> Result<PathBuf, Failure> {
    let data = find_disk(disks::MODEL_SERIAL, InitExit::ModelDisk)?;
    let hash = find_disk(disks::VERITY_SERIAL, InitExit::ModelDisk)?;
    let params = model.verity_params(&data.dev, &hash.dev);
    let node = map_verity(
        "cocoon-model",
        model.sectors(),
        &params,
        InitExit::ModelDisk,
    )?;
    if model.verify_on_boot {
        let (bytes, ms) = check_whole(
            &node,
            InitExit::ModelTampered,
            "model disk does not match its measured root hash",
            &model.root_hash,
        )?;
        Status::new("verity")
            .with("bytes", bytes)
            .with("ms", ms)
            .emit();
    }
    fs::create_dir_all(MODELS_DIR).step(InitExit::ModelDisk, MODELS_DIR)?;
    let link = Path::new(MODELS_DIR).join(&model.file_name);
    std::os::unix::fs::symlink(&node, &link)
        .step(InitExit::ModelDisk, &link.display().to_string())?;
    Ok(link)
}

/// Maps a dm-verity target named `name` over `sectors` with the `verity` table `params` and
/// returns its node (`/dev/dm-N`).
fn map_verity(name: &str, sectors: u64, params: &str, exit: InitExit) -> Result<PathBuf, Failure> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .step(exit, "/dev/mapper/control")?;
    let mut buf = dm::dev_create(name).step(exit, "dm create")?;
    sys::dm_ioctl(&control, dm::DM_DEV_CREATE, &mut buf).step(exit, "dm create")?;
    let (_, minor) =
        dm::reply_dev(&buf).ok_or_else(|| Failure::new(exit, "dm create: no device number"))?;
    let mut buf = dm::table_load(name, sectors, "verity", params).step(exit, "dm table")?;
    if let Err(e) = sys::dm_ioctl(&control, dm::DM_TABLE_LOAD, &mut buf) {
        // dm-verity's constructor answers E2BIG when the hash device cannot hold the tree the
        // parameters imply: a disk cut short.
        let why = if e.raw_os_error() == Some(nix::libc::E2BIG) {
            ": the disk is shorter than the data and hash tree its measured parameters name"
        } else {
            ""
        };
        return Err(Failure::new(exit, format!("dm table load: {e}{why}")));
    }
    let mut buf = dm::dev_resume(name).step(exit, "dm resume")?;
    sys::dm_ioctl(&control, dm::DM_DEV_SUSPEND, &mut buf).step(exit, "dm resume")?;
    let node = PathBuf::from(format!("/dev/dm-{minor}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(node)
}

/// Where the root disk is mounted before cocoon-init switches to it.
pub const SYSROOT: &str = "/sysroot";

/// Step 3b: the root disk the measured command line names (`cocoon.root=`), if any.
pub fn root_disk(cmdline: &str) -> Result<Option<RootDisk>, Failure> {
    RootDisk::from_cmdline(cmdline).step(InitExit::RootDisk, "command line")
}

/// What [`switch_root`] did, for the status line.
#[derive(Debug, Clone, Copy)]
pub struct SwitchedRoot {
    /// Bytes of filesystem read (and so checked against the root hash) before mounting it.
    pub verified_bytes: u64,
    pub verify_ms: u64,
}

/// Step 3c: map the root disk through dm-verity under the command line's root hash, read all
/// of it once (a block that does not match fails here, with its offset, rather than as an I/O
/// error in a running service), mount it read-only, move /dev, /proc, /sys and /run onto it,
/// give it a fresh /tmp and make it `/`. cocoon-init keeps running from memory; the service
/// binary, and the modules listed on the root disk, then come from it.
pub fn switch_root(root: &RootDisk) -> Result<SwitchedRoot, Failure> {
    let exit = InitExit::RootDisk;
    let disk = find_disk(protocol::guest::ROOT_DISK_SERIAL, exit)?;
    let node = map_verity(
        "cocoon-root",
        root.sectors(),
        &root.verity_params(&disk.dev),
        exit,
    )?;
    let (verified_bytes, verify_ms) = check_whole(
        &node,
        InitExit::RootTampered,
        "root disk does not match the command line's root hash",
        &root.root_hash,
    )?;
    fs::create_dir_all(SYSROOT).step(exit, SYSROOT)?;
    mount(
        Some(&node),
        SYSROOT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .step(
        exit,
        &format!("mount {} (erofs) on {SYSROOT}", node.display()),
    )?;
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{SYSROOT}{dir}");
        mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .step(exit, &format!("move {dir} to {target}"))?;
    }
    let tmp = format!("{SYSROOT}/tmp");
    mount(
        Some("tmpfs"),
        tmp.as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .step(exit, &format!("mount tmpfs on {tmp}"))?;
    nix::unistd::chdir(SYSROOT).step(exit, &format!("chdir {SYSROOT}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .step(exit, &format!("move {SYSROOT} to /"))?;
    nix::unistd::chroot(".").step(exit, "chroot")?;
    nix::unistd::chdir("/").step(exit, "chdir /")?;
    Ok(SwitchedRoot {
        verified_bytes,
        verify_ms,
    })
}

/// Reads the whole dm-verity device `node` once (every block checked against `root_hash` by
/// the kernel): the bytes read and the milliseconds it took, or `exit` naming `mismatch`, the
/// root hash and the offset of the first block that failed.
fn check_whole(
    node: &Path,
    exit: InitExit,
    mismatch: &str,
    root_hash: &[u8; 32],
) -> Result<(u64, u64), Failure> {
    let started = Instant::now();
    let bytes = read_all(node).map_err(|(offset, e)| {
        Failure::new(
            exit,
            format!(
                "{mismatch} {}: read error at offset {offset}: {e}",
                hex::encode(root_hash)
            ),
        )
    })?;
    Ok((bytes, started.elapsed().as_millis() as u64))
}

fn read_all(path: &Path) -> Result<u64, (u64, std::io::Error)> {
    let mut f = File::open(path).map_err(|e| (0, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((total, e)),
        }
    }
}

/// Last step: stop everything and power off. Never returns.
pub fn power_off(exit: InitExit, reason: &str) -> ! {
    Status::new("exit")
        .with("code", exit.code())
        .with("reason", reason)
        .emit();
    let _ = std::io::stdout().flush();
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on error (e.g. not PID 1 in a test run).
    std::process::exit(i32::from(exit.code()))
}
