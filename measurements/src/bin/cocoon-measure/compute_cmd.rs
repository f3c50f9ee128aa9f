//! `cocoon-measure compute`: expected registers from boot artifacts.

use clap::Args;

use crate::Unusable;

#[derive(Args, Debug)]
pub struct ComputeArgs {}

pub fn run(_args: &ComputeArgs) -> Result<u8, Unusable> {
    Err(Unusable("compute: not implemented yet".into()))
}
