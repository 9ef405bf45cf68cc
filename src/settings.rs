//! `keygate.toml`: the static settings read at start (docs/reference.md §2.1), parsed into `Raw*`
//! structs and validated into [`Settings`], whose invariants hold by construction.
//!
//! This file is the way in ([`Settings::load`], [`Settings::parse`]) and the module's
//! public names. The parts, one job each: `model` (the validated types and their
//! defaults), `raw` (the file as written), `compile` (tables into the model) and
//! `values` (one value each).

mod compile;
mod model;
mod raw;
mod values;

use std::path::{Path, PathBuf};

use crate::diag::Diagnostic;
use crate::toml_check::{deserialize, Checker};

pub(crate) use model::ON_STORE_ERROR;
pub use model::{
    default_workers, Admin, Authorizer, KeySource, Keys, LimitBackend, Limits, Listen, OnStoreError, Redis, Server,
    Settings, Tls,
};

/// What `keygate check` learns from a `keygate.toml` that may be invalid: every error (or,
/// when valid, every warning), the settings as far as they could be read, and the policy
/// file it names, so that the policy and the peppers are checked in the same run.
#[derive(Debug)]
pub struct Checked {
    /// The errors, or when there are none the warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// The settings with every invalid value replaced by its default; `None` when the
    /// file could not be read or parsed. Only for checking the files they name.
    pub settings: Option<Settings>,
    /// The policy file named (or the default `routes.toml` beside the config when none
    /// is), when it could be told: a syntax error may hide it.
    pub policy_file: Option<PathBuf>,
}

impl Checked {
    /// True when the settings are valid.
    pub fn valid(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

impl Settings {
    /// Reads and validates `path`. On success also returns warnings.
    pub fn load(path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as the content of `path` (used to resolve relative paths
    /// and to name the file in diagnostics).
    ///
    /// A syntax error stops the parse and is the one error returned; every unknown field,
    /// every value of the wrong type and every other finding is collected, sorted by
    /// position.
    pub fn parse(text: &str, path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let checked = Self::check_text(text, path);
        match checked.settings {
            Some(settings) if !checked.diagnostics.iter().any(Diagnostic::is_error) => {
                Ok((settings, checked.diagnostics))
            }
            _ => Err(checked.diagnostics),
        }
    }

    /// Reads and validates `path` as `keygate check` does: see [`Checked`].
    pub fn check(path: &Path) -> Checked {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::check_text(&text, path),
            Err(e) => Checked {
                diagnostics: vec![Diagnostic::file_error(path, format!("cannot read: {e}"))],
                settings: None,
                policy_file: None,
            },
        }
    }

    fn check_text(text: &str, path: &Path) -> Checked {
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        let read = match deserialize::<raw::RawSettings>(path, text) {
            Ok(read) => read,
            Err(errors) => {
                return Checked { diagnostics: errors, settings: None, policy_file: salvage_policy(text, dir) };
            }
        };
        let mut check = Checker::new(path, text);
        let raw = check.take(read);
        let settings = compile::compile(raw, path, dir, &mut check);
        let (errors, warnings) = check.finish();
        let policy_file = (!settings.policy_file.as_os_str().is_empty()).then(|| settings.policy_file.clone());
        let diagnostics = if errors.is_empty() { warnings } else { errors };
        Checked { diagnostics, settings: Some(settings), policy_file }
    }
}

/// The policy file a `keygate.toml` with a syntax error names, when it can be told: its
/// `policy` value if the parser could recover it, else `routes.toml` beside it when no
/// line sets `policy` (the default); else `None` rather than a guess.
fn salvage_policy(text: &str, dir: &Path) -> Option<PathBuf> {
    let (document, _) = toml::de::DeTable::parse_recoverable(text);
    if let Some(policy) = document.get_ref().get("policy").and_then(|v| v.get_ref().as_str()) {
        return (!policy.is_empty()).then(|| dir.join(policy));
    }
    let sets_policy = text.lines().any(|line| {
        let line = line.trim_start();
        line.strip_prefix("policy").is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    (!sets_policy).then(|| dir.join("routes.toml"))
}

#[cfg(test)]
mod tests;
