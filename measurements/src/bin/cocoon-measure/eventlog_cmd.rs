//! `cocoon-measure eventlog …`: replay and explain event logs.

use clap::Subcommand;

use crate::Unusable;

#[derive(Subcommand, Debug)]
pub enum EventlogCmd {}

pub fn run(cmd: EventlogCmd) -> Result<u8, Unusable> {
    match cmd {}
}
