//! `keygate check`: validates the config and the policy it names, prints every error and
//! warning with file, line and column, exits 0 if valid and 1 if not (like `nginx -t`).

use std::path::Path;

use super::CliError;
use crate::diag::Diagnostic;
use crate::policy::Policy;
use crate::settings::Settings;

pub fn run(config: &Path, json: bool, args: &CheckArgs) -> Result<(), CliError> {
    let (mut diagnostics, loaded) = collect(config);
    if let Some((settings, policy)) = loaded.filter(|_| !diagnostics.iter().any(Diagnostic::is_error)) {
        diagnostics.extend(store_checks(&settings, &policy, args));
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    if json {
        let items: Vec<_> = diagnostics
            .iter()
            .map(|d| {
                serde_json::json!({
                    "severity": if d.is_error() { "error" } else { "warning" },
                    "file": d.file.display().to_string(),
                    "line": d.line,
                    "column": d.column,
                    "message": d.message,
                })
            })
            .collect();
        println!("{}", serde_json::json!({"valid": errors == 0, "diagnostics": items}));
    } else {
        for d in &diagnostics {
            println!("{d}");
        }
        if errors == 0 {
            println!("{}: configuration is valid ({warnings} warning(s))", config.display());
        }
    }
    if errors == 0 {
        Ok(())
    } else {
        Err(CliError::input(summary(&diagnostics)))
    }
}

/// The last line of a failed check: how many errors, in which files (in the order they
/// were reported), and how many warnings.
fn summary(diagnostics: &[Diagnostic]) -> String {
    let mut files: Vec<(&Path, usize)> = Vec::new();
    for d in diagnostics.iter().filter(|d| d.is_error()) {
        match files.iter_mut().find(|(file, _)| *file == d.file.as_path()) {
            Some((_, count)) => *count += 1,
            None => files.push((&d.file, 1)),
        }
    }
    let total: usize = files.iter().map(|(_, n)| n).sum();
    let per_file: Vec<String> = files.iter().map(|(file, n)| format!("{n} in {}", file.display())).collect();
    let warnings = diagnostics.len() - total;
    format!("{total} error(s) ({}), {warnings} warning(s)", per_file.join(", "))
}

/// Every diagnostic of the settings, of the policy they name and of the peppers, each
/// file checked even when another has errors (a syntax error in `keygate.toml` may hide
/// which policy it names: see [`crate::settings::Checked`]); with them, the settings and
/// the policy as read, for the checks against the store.
pub fn collect(config: &Path) -> (Vec<Diagnostic>, Option<(Settings, Policy)>) {
    let checked = Settings::check(config);
    let settings_valid = checked.valid();
    let mut diagnostics = checked.diagnostics;
    let mut policy = None;
    if let Some(policy_file) = &checked.policy_file {
        match Policy::load(policy_file) {
            Ok((loaded, warnings)) => {
                diagnostics.extend(warnings);
                policy = Some(loaded);
            }
            Err(errors) => diagnostics.extend(errors),
        }
    }
    let Some(settings) = checked.settings else { return (diagnostics, None) };
    // With errors in keygate.toml, the peppers are checked only when it names a pepper
    // file: an invalid `[keys]` may hide the one meant.
    if settings_valid || settings.keys.pepper_file.is_some() {
        match crate::app::load_peppers(&settings) {
            Ok((_, warnings)) => diagnostics.extend(warnings),
            Err(errors) => diagnostics.extend(errors),
        }
    }
    // The certificate and key as `serve` will load them: readable, parsed, matching.
    let authorizer_tls = settings.authorizer.as_ref().and_then(|a| a.tls.as_ref());
    for (what, tls) in [("listen.tls", settings.listen.tls.as_ref()), ("authorizer.tls", authorizer_tls)] {
        let Some(tls) = tls else { continue };
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        if let Err(e) = crate::tls::Tls::load(tls, metrics) {
            diagnostics.push(crate::diag::Diagnostic::file_error(&settings.file, format!("{what}: {e}")));
        }
    }
    (diagnostics, policy.map(|policy| (settings, policy)))
}

/// `keygate check`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Also connect to the configured Redis, with the configured credentials and TLS, and
    /// report the exact failure (a refused password, a name that does not resolve, …);
    /// with Redis keys, also check the policy's plans against the store's tenants.
    #[arg(long)]
    pub connect: bool,
    /// Accept a policy that lacks a plan some tenants are on (their requests would get
    /// 403 "plan not available").
    #[arg(long)]
    pub allow_orphaned_plans: bool,
}

/// The checks that need the key store, once the files themselves are valid: `--connect`
/// (the configured Redis is reached, or exactly why not), and orphaned plans (tenants of
/// the store on a plan the policy lacks: `crate::reload::orphans`), against the key file,
/// or with `--connect` against Redis' tenants. Offline with Redis keys, the tenants are
/// not checked.
pub fn store_checks(settings: &Settings, policy: &Policy, args: &CheckArgs) -> Vec<Diagnostic> {
    use crate::settings::{KeySource, LimitBackend};
    let uses_redis = settings.keys.source == KeySource::Redis || settings.limits.backend == LimitBackend::Redis;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return vec![Diagnostic::file_error(&settings.file, format!("cannot start the runtime: {e}"))],
    };
    runtime.block_on(async {
        let mut out = Vec::new();
        let mut redis = None;
        if args.connect && uses_redis {
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
            match crate::app::redis_client(settings, metrics, Some(super::STORE_TIMEOUT)).await {
                Err(e) => out.push(Diagnostic::file_error(&settings.file, format!("redis: {e}"))),
                Ok(client) => match client.never_reached() {
                    Some(why) => out.push(Diagnostic::file_error(&settings.file, format!("redis: {why}"))),
                    None => redis = Some(client),
                },
            }
        }
        if args.allow_orphaned_plans {
            return out;
        }
        let per_plan = match (&settings.keys.source, redis) {
            (KeySource::File(path), _) => match crate::keys::file_store::FileStore::open(path) {
                Ok(store) => crate::keys::store::Store::File(std::sync::Arc::new(store)).tenants_per_plan().await,
                Err(e) => {
                    out.push(Diagnostic::file_error(&settings.file, format!("keys.file: {e}")));
                    return out;
                }
            },
            (KeySource::Redis, Some(client)) => {
                let store = crate::keys::redis_store::RedisStore::new(client);
                crate::keys::store::Store::Redis(store).tenants_per_plan().await
            }
            (KeySource::Redis, None) => return out,
        };
        match per_plan {
            Ok(per_plan) => out.extend(
                crate::reload::orphans::orphaned(&per_plan, policy, None)
                    .iter()
                    .map(|orphan| Diagnostic::file_error(&settings.policy_file, orphan.to_string())),
            ),
            Err(e) => out.push(Diagnostic::file_error(&settings.file, format!("cannot read the tenants: {e}"))),
        }
        out
    })
}
