//! `cocoon-host launch CONFIG.toml`: boot a cocoon guest image in QEMU, as an Intel TDX trust
//! domain (`--tee tdx`) or under TCG with the launcher playing a simulated TDX platform
//! (`--tee sim`).
//!
//! Sequence: validate the config ([`config`]) and the instance numbers; check the image
//! against its manifest ([`image`]); build the config disk ([`configdisk`]) and print its
//! SHA-256 (the guest extends it into RTMR3); compose the QEMU command line ([`qemu`]);
//! with `--print` show it and stop. Otherwise write the state directory ([`state`]): config
//! disk, and under `--tee sim` the kept simulated platform, its root CA and the registers;
//! check that GPUs are on vfio-pci and host ports are free; then run QEMU ([`run`]) and follow
//! the guest's status lines ([`protocol::guest::status`]) until it powers off.
//!
//! # Trust boundary
//!
//! The host is untrusted: everything written here (config disk, registers, platform seed) is
//! either measured by the guest before use or, in the simulation, explicitly untrusted by
//! production policy. The image check against `manifest.json` protects the operator from
//! booting the wrong files; verifiers rely only on the quote.

pub mod config;
pub mod configdisk;
pub mod image;
pub mod qemu;
pub mod qmp;
pub mod run;
pub mod state;

/// Writes to stdout, ignoring errors: a reader that went away (closed pipe) must not turn a
/// clean VM stop into a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

use std::net::{SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use measurements::TdRegisters;

use crate::gpu::{self, HostSysfs};
use crate::launch::Failure;
use crate::Exit;
use config::{Instance, Tee, VmConfig};
use configdisk::ConfigDisk;
use image::BootImage;
use qemu::{Boot, QemuCommand};
use run::Ended;

/// Options of `launch CONFIG.toml`.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub config: PathBuf,
    pub tee: Option<Tee>,
    pub print: bool,
    pub instance: u32,
    pub ready_timeout: Duration,
    /// Parent of default state directories (`<cache>/vm`).
    pub state_root: PathBuf,
    /// Root of the sysfs tree checked for GPU binding (`/`).
    pub sysfs_root: PathBuf,
}

fn fail(exit: Exit, message: impl Into<String>) -> Failure {
    Failure {
        exit,
        message: message.into(),
    }
}

/// Everything needed to start one instance.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub config: VmConfig,
    pub instance: Instance,
    pub image: BootImage,
    pub disk: ConfigDisk,
    /// Registers the guest is expected to report (with the configured TD ids); under
    /// `--tee sim` the ones the simulated platform is given.
    pub registers: TdRegisters,
    pub command: QemuCommand,
}

/// Validates the config, checks the image and the disk files, builds the config disk and the
/// command line. Writes nothing.
pub fn prepare(opts: &VmOptions) -> Result<Prepared, Failure> {
    let config = VmConfig::load(&opts.config, opts.tee, &opts.state_root)
        .map_err(|e| fail(Exit::Usage, e.to_string()))?;
    let instance = config
        .instance(opts.instance)
        .map_err(|e| fail(Exit::Usage, e.to_string()))?;
    let image = image::load(&config.image, config.role)
        .map_err(|e| fail(Exit::ImageCheck, format!("image check failed: {e}")))?;
    // QEMU writes the memory size into the kernel's setup header before TDVF measures it.
    let measured = image.manifest.memory;
    if measured != 0 && measured != config.memory_mib << 20 {
        return Err(fail(
            Exit::Usage,
            format!(
                "memory: {} MiB, but the image's registers (manifest.json memory) are for {} MiB; \
                 a TD with other memory measures differently",
                config.memory_mib,
                measured >> 20
            ),
        ));
    }
    let qmp = state::qmp_socket_path(&instance.dir);
    if qmp.as_os_str().len() > state::MAX_SOCKET_PATH {
        return Err(fail(
            Exit::Usage,
            format!(
                "state_dir: {} is too long for a unix socket path (at most {} bytes)",
                qmp.display(),
                state::MAX_SOCKET_PATH
            ),
        ));
    }
    let disk = configdisk::from_files(&config.guest_files)
        .map_err(|e| fail(Exit::Usage, e.to_string()))?;
    if let Some(m) = &config.model {
        for (field, p) in [("disks.model", &m.model), ("disks.model_verity", &m.verity)] {
            if !p.is_file() {
                return Err(fail(
                    Exit::Usage,
                    format!("{field}: {} is not a file", p.display()),
                ));
            }
        }
    }
    if let Some(tdx) = &config.tdx {
        if !tdx.firmware.is_file() {
            return Err(fail(
                Exit::Usage,
                format!(
                    "tdx.firmware: {} is not a file (install a TDX build of OVMF)",
                    tdx.firmware.display()
                ),
            ));
        }
    }
    let registers = image::expected_registers(&image, &config.td_ids)
        .map_err(|e| fail(Exit::ImageCheck, e.to_string()))?;
    let command = qemu::command(&config, &instance, &Boot::from(&image));
    Ok(Prepared {
        config,
        instance,
        image,
        disk,
        registers,
        command,
    })
}

/// The summary printed before the command line (`--print`) or before starting.
pub fn summary(p: &Prepared) -> String {
    let c = &p.config;
    let mut s = format!(
        "# {} instance {} (role {}, tee {}, {} vCPUs, {} MiB)\n",
        c.name,
        p.instance.index,
        c.role.as_str(),
        c.tee.as_str(),
        c.cpus,
        c.memory_mib
    );
    s.push_str(&format!("# image        {}\n", p.image.dir.display()));
    s.push_str(&format!(
        "# image hash   {} (expected registers with the configured TD ids)\n",
        p.registers.image_hash()
    ));
    s.push_str(&format!(
        "# config disk  sha256 {} ({} bytes; the guest extends it into RTMR3)\n",
        p.disk.sha256_hex(),
        p.disk.bytes.len()
    ));
    for f in &p.instance.forwards {
        s.push_str(&format!(
            "# forward      {} {}:{} -> guest port {}\n",
            f.name, c.host_address, f.host, f.guest
        ));
    }
    if c.tee == Tee::Tdx {
        s.push_str(&format!("# vsock cid    {}\n", p.instance.guest_cid));
    }
    s.push_str(&format!("# state        {}\n", p.instance.dir.display()));
    s
}

/// Host ports must be free before QEMU starts (it would fail with a less helpful message).
fn check_ports(p: &Prepared) -> Result<(), Failure> {
    for (i, f) in p.instance.forwards.iter().enumerate() {
        let addr = SocketAddrV4::new(p.config.host_address, f.host);
        if let Err(e) = TcpListener::bind(addr) {
            return Err(fail(
                Exit::Usage,
                format!(
                    "network.forwards[{i}] ({}): host port {addr} is not free ({e}); another instance? try --instance",
                    f.name
                ),
            ));
        }
    }
    Ok(())
}

/// Writes the instance's files (config disk; simulated platform and registers).
fn write_state(p: &Prepared) -> Result<(), Failure> {
    let st = |e: state::StateError| fail(Exit::Usage, e.to_string());
    state::mkdir(&p.instance.dir).map_err(st)?;
    let _ = std::fs::remove_file(state::instance_file_path(&p.instance.dir));
    state::write_atomic(&state::config_disk_path(&p.instance.dir), &p.disk.bytes).map_err(st)?;
    if p.config.tee == Tee::Sim {
        let (_, created) = state::sim_platform(&p.config.state_dir).map_err(st)?;
        outln!(
            "cocoon-host: simulated platform {} ({}); clients trust its root {}",
            state::sim_platform_path(&p.config.state_dir).display(),
            if created { "created" } else { "kept" },
            state::sim_root_path(&p.config.state_dir).display()
        );
        state::write_sim_registers(&p.instance.dir, &p.registers).map_err(st)?;
    }
    Ok(())
}

fn print_ready(p: &Prepared, status: &protocol::guest::status::Status, pid: Option<u32>) {
    let c = &p.config;
    outln!(
        "{}: {} instance {} (tee {})",
        protocol::guest::HOST_READY,
        c.name,
        p.instance.index,
        c.tee.as_str()
    );
    let mut forwards = Vec::new();
    for f in &p.instance.forwards {
        let host = format!("{}:{}", c.host_address, f.host);
        outln!("  {:<12} {host} -> guest port {}", f.name, f.guest);
        forwards.push(state::ForwardRecord {
            name: f.name.clone(),
            host,
            guest: f.guest,
        });
    }
    let console = state::console_log_path(&p.instance.dir);
    outln!("  console      {}", console.display());
    outln!("Ctrl-C stops the VM.");
    let record = state::InstanceRecord {
        name: c.name.clone(),
        instance: p.instance.index,
        role: c.role.as_str().into(),
        tee: c.tee.as_str().into(),
        qemu_pid: pid,
        guest_cid: (c.tee == Tee::Tdx).then_some(p.instance.guest_cid),
        forwards,
        image_hash: p.registers.image_hash().to_string(),
        config_sha256: p.disk.sha256_hex(),
        console_log: console.display().to_string(),
        ready: serde_json::Value::Object(status.fields.clone()),
    };
    if let Err(e) = state::write_instance(&p.instance.dir, &record) {
        eprintln!("cocoon-host: {e}");
    }
}

/// `launch CONFIG.toml` (see the module docs).
pub async fn launch(opts: VmOptions) -> Result<(), Failure> {
    let p = prepare(&opts)?;
    if opts.print {
        out!("{}", summary(&p));
        out!("{}", qemu::render(&p.command));
        return Ok(());
    }
    if !p.config.gpus.is_empty() {
        gpu::check_bound(&HostSysfs::new(&opts.sysfs_root), &p.config.gpus).map_err(|e| {
            fail(
                Exit::Usage,
                format!("gpus: {e}; run `cocoon-host gpu bind <address>` first"),
            )
        })?;
    }
    check_ports(&p)?;
    write_state(&p)?;
    out!("{}", summary(&p));
    let spec = run::RunSpec {
        command: p.command.clone(),
        console_log: state::console_log_path(&p.instance.dir),
        ready_timeout: opts.ready_timeout,
        qmp: state::qmp_socket_path(&p.instance.dir),
    };
    let ended = run::run(&spec, |s, pid| print_ready(&p, s, pid)).await;
    let _ = std::fs::remove_file(state::instance_file_path(&p.instance.dir));
    let ended = ended.map_err(|e| match e {
        run::RunError::Spawn { .. } => fail(Exit::Usage, format!("qemu.binary: {e}")),
        other => fail(Exit::ChildFailed, other.to_string()),
    })?;
    outcome(ended, &spec.console_log)
}

/// Maps how the run ended to the launcher's result (see [`Exit`]).
pub fn outcome(ended: Ended, console_log: &std::path::Path) -> Result<(), Failure> {
    let log = console_log.display();
    match ended {
        Ended::PoweredOff => {
            outln!("cocoon-host: the guest powered off cleanly");
            Ok(())
        }
        Ended::Stopped { signal } => {
            outln!("cocoon-host: stopped (SIG{signal})");
            Ok(())
        }
        Ended::GuestFailed { code, reason } => Err(fail(
            Exit::ChildFailed,
            format!(
                "the guest reported failure: exit code {code}{} (console: {log})",
                reason.map(|r| format!(", {r}")).unwrap_or_default()
            ),
        )),
        Ended::Died {
            status,
            last_stage,
            tail,
        } => {
            let mut m = format!(
                "QEMU exited ({status}) without a COCOON-INIT exit line (last stage: {})",
                last_stage.as_deref().unwrap_or("none")
            );
            if !tail.is_empty() {
                m.push_str("; last QEMU stderr lines:");
                for l in tail {
                    m.push_str("\n    ");
                    m.push_str(&l);
                }
            }
            m.push_str(&format!("\n  (console: {log})"));
            Err(fail(Exit::ChildFailed, m))
        }
        Ended::NotReady { secs, last_stage } => Err(fail(
            Exit::ChildFailed,
            format!(
                "the guest was not ready after {secs} s (last stage: {}; console: {log}); raise --ready-timeout?",
                last_stage.as_deref().unwrap_or("none")
            ),
        )),
    }
}
