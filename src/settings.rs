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

use std::path::Path;

use crate::diag::Diagnostic;
use crate::toml_check::{toml_error, Checker};

pub(crate) use model::ON_STORE_ERROR;
pub use model::{
    default_workers, Admin, KeySource, Keys, LimitBackend, Limits, Listen, OnStoreError, Redis, Server, Settings, Tls,
};

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
    /// A syntax error, a value of the wrong type or an unknown field stops the parse and
    /// is the one error returned; every other finding is collected, sorted by position.
    pub fn parse(text: &str, path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let raw: raw::RawSettings = toml::from_str(text).map_err(|e| vec![toml_error(path, text, &e)])?;
        let mut check = Checker::new(path, text);
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        let settings = compile::compile(raw, path, dir, &mut check);
        let (errors, warnings) = check.finish();
        if errors.is_empty() {
            Ok((settings, warnings))
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests;
