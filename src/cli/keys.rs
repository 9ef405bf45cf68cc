//! `keygate keys create|list|show|revoke|rotate`.

use super::{CliError, Context};

/// The `keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {}

pub fn run(command: KeysCommand, context: &Context) -> Result<(), CliError> {
    let _ = context;
    match command {}
}
