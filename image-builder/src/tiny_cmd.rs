//! `cocoon-image tiny-gguf`: writes a tiny random-weight llama GGUF ([`image::gguf::tiny`]).

use std::path::PathBuf;

use anyhow::Context;
use image::gguf::tiny::{tiny_llama, TinyLlamaParams};
use image::gguf::TensorType;

/// Arguments of `cocoon-image tiny-gguf`.
#[derive(clap::Args, Debug)]
pub struct TinyArgs {
    /// Output file (overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the weights: the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store the attention, feed-forward and output matrices as Q8_0 instead of F32.
    #[arg(long)]
    q8_0: bool,
}

pub fn run(args: &TinyArgs) -> anyhow::Result<()> {
    let params = TinyLlamaParams {
        weights: if args.q8_0 {
            TensorType::Q8_0
        } else {
            TensorType::F32
        },
        ..TinyLlamaParams::default()
    };
    let bytes = tiny_llama(args.seed, &params).context("tiny-gguf")?;
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("tiny-gguf: writing {}", args.out.display()))?;
    eprintln!(
        "tiny-gguf: wrote {} ({} bytes, seed {})",
        args.out.display(),
        bytes.len(),
        args.seed
    );
    Ok(())
}
