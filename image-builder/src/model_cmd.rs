//! `cocoon-image model` (being written).

/// Arguments of `cocoon-image model`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {}

pub fn run(_args: &ModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("model: not implemented yet")
}
