//! The `keygate` binary: parses the command line and calls the library.

#![forbid(unsafe_code)]

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a proxied request makes dozens of small, short-lived
/// allocations (header maps, buffers, futures), often freed on another thread than the
/// one that made them; glibc's malloc and free were about 15% of the request path's
/// instructions (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = keygate::cli::Cli::parse();
    init_logging(&cli.command);
    if let Err(error) = keygate::cli::run(cli) {
        eprintln!("keygate: {}", error.message);
        std::process::exit(error.exit_code);
    }
}

/// `serve` logs JSON lines to stdout (docs/reference.md §6). The other commands keep stdout for their
/// output (`--json` must stay parseable), so their log and audit lines go to stderr; the
/// demo shows its access lines (one per request, the point of trying it) and warnings
/// only, unless `RUST_LOG` asks otherwise, so its curl lines stay readable.
fn init_logging(command: &keygate::cli::Command) {
    use keygate::cli::Command;
    let default = match command {
        Command::Demo => "warn,access=info",
        Command::Check(_) | Command::Explain(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().json().with_env_filter(filter).with_current_span(false);
    match command {
        Command::Serve(_) => builder.with_writer(std::io::stdout).init(),
        _ => builder.with_writer(std::io::stderr).init(),
    }
}
