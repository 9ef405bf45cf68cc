//! `keygate serve`: runs the proxy until SIGTERM or SIGINT; SIGHUP reloads the policy.

use std::path::Path;

use super::CliError;
use crate::app::{self, Options, StartError};
use crate::settings::Settings;

/// `keygate serve`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Let a policy reload drop a plan that tenants are on (their requests then get 403
    /// "plan not available"). Without it such a reload is refused and the old policy
    /// keeps serving.
    #[arg(long)]
    pub allow_orphaned_plans: bool,
}

pub fn run(config: &Path, args: &ServeArgs) -> Result<(), CliError> {
    let settings = match Settings::load(config) {
        Ok((settings, warnings)) => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            settings
        }
        Err(errors) => return Err(config_error(&errors)),
    };
    // The main thread's runtime: the admin listeners, watchers and shared Redis
    // connections. Requests are served by the proxy's worker threads, each with a
    // runtime of its own (`server::Workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let options = Options { allow_orphaned_plans: args.allow_orphaned_plans, ..Options::default() };
        let running = match app::start(settings, options).await {
            Ok(running) => running,
            Err(StartError::Config(errors)) => return Err(config_error(&errors)),
            Err(StartError::Other(message)) => return Err(CliError::input(message)),
        };
        wait_for_shutdown_signal(&running).await;
        running.shutdown().await;
        Ok(())
    })
}

fn config_error(errors: &[crate::diag::Diagnostic]) -> CliError {
    for error in errors {
        eprintln!("{error}");
    }
    CliError::config("invalid configuration; nothing started (run `keygate check` for details)")
}

#[cfg(unix)]
async fn wait_for_shutdown_signal(running: &app::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); return; }
            _ = int.recv() => { tracing::info!("SIGINT"); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy");
                let app = running.app.clone();
                let _ = tokio::task::spawn_blocking(move || app.reload_policy()).await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_shutdown_signal(_running: &app::Running) {
    let _ = tokio::signal::ctrl_c().await;
}
