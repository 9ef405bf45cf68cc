//! The subcommands of the `keygate` binary (SPEC 1). `main.rs` parses the command line
//! with clap and calls [`run`]; each subcommand lives in its own module.

pub mod keys;
pub mod tenants;

use std::path::PathBuf;
use std::sync::Arc;

use crate::keys::store::FileStore;
use crate::keys::Peppers;
use crate::policy::Policy;
use crate::settings::Settings;

/// What the key and tenant commands work with: the settings, the current policy (plans
/// and scopes), the peppers and the store named in `[keys]`.
pub struct Context {
    pub settings: Settings,
    pub policy: Arc<Policy>,
    pub peppers: Peppers,
    pub store: FileStore,
    /// `--json`: machine-readable output.
    pub json: bool,
}

/// A command's failure: one actionable line on stderr, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub exit_code: i32,
}

impl CliError {
    /// Bad input (exit 1).
    pub fn input(message: impl std::fmt::Display) -> Self {
        CliError { message: message.to_string(), exit_code: 1 }
    }
}

/// The config path of SPEC 1: `--config`, else `$KEYGATE_CONFIG`, else `config/keygate.toml`.
pub fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("KEYGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/keygate.toml"))
}
