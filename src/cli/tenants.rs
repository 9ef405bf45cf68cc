//! `keygate tenants create|set-plan|delete|list`.

use super::{CliError, Context};

/// The `tenants` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TenantsCommand {}

pub fn run(command: TenantsCommand, context: &Context) -> Result<(), CliError> {
    let _ = context;
    match command {}
}
