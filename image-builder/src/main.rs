//! cocoon-image: build guest images and model disks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod model_cmd;

/// Build cocoon guest images and model disks reproducibly.
#[derive(Parser, Debug)]
#[command(name = "cocoon-image", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.cmd {};
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cocoon-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
