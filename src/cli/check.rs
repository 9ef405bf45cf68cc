//! `keygate check`: validates the config and the policy it names, prints every error and
//! warning with file, line and column, exits 0 if valid and 1 if not (like `nginx -t`).

use std::path::Path;

use super::CliError;
use crate::diag::Diagnostic;
use crate::settings::Settings;

pub fn run(config: &Path, json: bool) -> Result<(), CliError> {
    let diagnostics = collect(config);
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
/// which policy it names: see [`crate::settings::Checked`]).
pub fn collect(config: &Path) -> Vec<Diagnostic> {
    let checked = Settings::check(config);
    let settings_valid = checked.valid();
    let mut diagnostics = checked.diagnostics;
    if let Some(policy_file) = &checked.policy_file {
        match crate::policy::Policy::load(policy_file) {
            Ok((_, warnings)) => diagnostics.extend(warnings),
            Err(errors) => diagnostics.extend(errors),
        }
    }
    let Some(settings) = checked.settings else { return diagnostics };
    // With errors in keygate.toml, the peppers are checked only when it names a pepper
    // file: an invalid `[keys]` may hide the one meant.
    if settings_valid || settings.keys.pepper_file.is_some() {
        match crate::app::load_peppers(&settings) {
            Ok((_, warnings)) => diagnostics.extend(warnings),
            Err(errors) => diagnostics.extend(errors),
        }
    }
    // The certificate and key as `serve` will load them: readable, parsed, matching.
    if let Some(tls) = &settings.listen.tls {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        if let Err(e) = crate::tls::Tls::load(tls, metrics) {
            diagnostics.push(crate::diag::Diagnostic::file_error(&settings.file, format!("listen.tls: {e}")));
        }
    }
    diagnostics
}
