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
        Err(CliError::input(format!("{}: {errors} error(s), {warnings} warning(s)", config.display())))
    }
}

/// Every diagnostic of the settings, and (when they parse) of the policy and peppers.
pub fn collect(config: &Path) -> Vec<Diagnostic> {
    let (settings, mut diagnostics) = match Settings::load(config) {
        Ok(loaded) => loaded,
        Err(errors) => return errors,
    };
    match crate::policy::Policy::load(&settings.policy_file) {
        Ok((_, warnings)) => diagnostics.extend(warnings),
        Err(errors) => diagnostics.extend(errors),
    }
    match crate::app::load_peppers(&settings) {
        Ok((_, warnings)) => diagnostics.extend(warnings),
        Err(errors) => diagnostics.extend(errors),
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
