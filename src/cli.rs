//! The command line (docs/reference.md §1). `main.rs` parses it with clap and calls [`run`]; each
//! subcommand lives in its own module.

pub mod check;
pub mod demo;
pub mod explain;
pub mod keys;
pub mod limits;
pub mod serve;
pub mod tenants;
pub mod usage;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::keys::store::Store;
use crate::keys::Peppers;
use crate::policy::Policy;
use crate::settings::Settings;

/// keygate: API keys, scopes and plan rate limits in front of your service.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, long_about = None)]
pub struct Cli {
    /// The config file. Default: $KEYGATE_CONFIG, else config/keygate.toml.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output (keys, tenants, check, explain, usage).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the proxy.
    Serve(serve::ServeArgs),
    /// Validates the config and the policy it names; exits 0 if valid, 1 if not.
    Check(check::CheckArgs),
    /// Shows how a request would be routed and whether a key or scope set would pass.
    Explain(explain::ExplainArgs),
    /// Starts an echo upstream and the proxy with demo keys, and prints curl commands.
    Demo,
    /// Accounts and their plans.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Key lifecycle.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// A tenant's usage per UTC day (admitted requests and cost, refusals by reason) and
    /// its plan's calendar quotas now.
    Usage(usage::UsageArgs),
}

/// What the key and tenant commands work with: the settings, the current policy (plans
/// and scopes), the peppers and the store named in `[keys]` (the file, or Redis).
pub struct Context {
    pub settings: Settings,
    pub policy: Arc<Policy>,
    pub peppers: Peppers,
    pub store: Store,
    /// `--json`: machine-readable output.
    pub json: bool,
    runtime: tokio::runtime::Runtime,
}

impl Context {
    /// Runs one store operation to completion (the CLI is synchronous).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
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

    /// An invalid configuration (exit 78, EX_CONFIG).
    pub fn config(message: impl std::fmt::Display) -> Self {
        CliError { message: message.to_string(), exit_code: EX_CONFIG }
    }
}

/// sysexits.h EX_CONFIG: the exit code of `serve` with an invalid configuration.
pub const EX_CONFIG: i32 = 78;

/// The config path of docs/reference.md §1: `--config`, else `$KEYGATE_CONFIG`, else `config/keygate.toml`.
pub fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("KEYGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/keygate.toml"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let config = config_path(cli.config);
    match cli.command {
        Command::Serve(args) => serve::run(&config, &args),
        Command::Check(args) => check::run(&config, cli.json, &args),
        Command::Explain(args) => explain::run(&config, args, cli.json),
        Command::Demo => demo::run(),
        Command::Tenants(command) => tenants::run(command, &context(&config, cli.json)?),
        Command::Keys(command) => keys::run(command, &context(&config, cli.json)?),
        Command::Usage(args) => usage::run(args, &context(&config, cli.json)?),
    }
}

/// How long a key or tenant command waits for the store (docs/reference.md §1: the CLI has its own
/// timeout, in seconds, not the request path's).
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads what the key and tenant commands need; any config error is one line per problem.
fn context(config: &std::path::Path, json: bool) -> Result<Context, CliError> {
    let (settings, _) = Settings::load(config).map_err(diagnostics_error)?;
    let (policy, peppers, _) = crate::app::load_parts(&settings).map_err(diagnostics_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the runtime: {e}")))?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let store =
        runtime.block_on(crate::app::open_store(&settings, metrics, Some(STORE_TIMEOUT))).map_err(CliError::input)?;
    // A Redis that refused the first attempt: say exactly why (a refused password, a name
    // that does not resolve, …) rather than fail each call with "unavailable".
    if let Some(why) = store.redis().and_then(|redis| redis.client().never_reached()) {
        return Err(CliError::input(why));
    }
    Ok(Context { settings, policy: Arc::new(policy), peppers, store, json, runtime })
}

fn diagnostics_error(diagnostics: Vec<crate::diag::Diagnostic>) -> CliError {
    let lines: Vec<String> = diagnostics.iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
    CliError::input(format!("{} (run `keygate check` for details)", lines.join("\n")))
}
