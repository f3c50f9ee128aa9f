//! `cocoon-image tiny-gguf` (being written).

/// Arguments of `cocoon-image tiny-gguf`.
#[derive(clap::Args, Debug)]
pub struct TinyArgs {}

pub fn run(_args: &TinyArgs) -> anyhow::Result<()> {
    anyhow::bail!("tiny-gguf: not implemented yet")
}
