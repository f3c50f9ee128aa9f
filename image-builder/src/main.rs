//! cocoon-image: build guest images and model disks.
//!
//! Exit codes: 0 success, 1 failure (the message names the step and the path).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build_cmd;
mod model_cmd;
mod tiny_cmd;
mod verify_root_cmd;

/// Build cocoon guest images and model disks reproducibly.
#[derive(Parser, Debug)]
#[command(name = "cocoon-image", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Kernel + initramfs + cmdline + manifest.json for a role, reproducibly.
    Build(Box<build_cmd::BuildArgs>),
    /// Model disk + dm-verity hash tree + model.json from a GGUF file.
    Model(model_cmd::ModelArgs),
    /// Write a tiny random-weight llama GGUF (for exact-output and boot tests).
    TinyGguf(tiny_cmd::TinyArgs),
    /// Check that an image's root.img is the disk its command line names, without booting.
    VerifyRoot(verify_root_cmd::VerifyRootArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.cmd {
        Cmd::Build(args) => build_cmd::run(&args),
        Cmd::Model(args) => model_cmd::run(&args),
        Cmd::TinyGguf(args) => tiny_cmd::run(&args),
        Cmd::VerifyRoot(args) => verify_root_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cocoon-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
