//! The shared vocabulary of config checking: turn a `toml` parse error into a positioned
//! [`Diagnostic`], collect every finding of one file in a `Checker`, and read the
//! value kinds both config files use (durations, a word out of a fixed set).
//!
//! It sits below `settings` and `policy` so that both can use it without importing
//! each other: `keygate.toml` and `routes.toml` report problems the same way.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;

use crate::diag::{line_column, Diagnostic};

/// Turns a `toml` error (syntax, type, unknown or missing field) into a diagnostic at the
/// position `toml` gives, or about the whole file when it gives none.
pub(crate) fn toml_error(file: &Path, text: &str, error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => Diagnostic::error_at(file, text, span.start, message),
        None => Diagnostic::file_error(file, message),
    }
}

/// Collects the diagnostics of one file, errors and warnings apart.
pub(crate) struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    /// A checker for `text`, the content of `file`.
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Checker { file, text, errors: Vec::new(), warnings: Vec::new() }
    }

    /// An error at the start of `span`.
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(Diagnostic::error_at(self.file, self.text, span.start, message));
    }

    /// A warning at the start of `span`.
    pub(crate) fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic::warning_at(self.file, self.text, span.start, message));
    }

    /// An error about the file as a whole.
    pub(crate) fn file_error(&mut self, message: impl Into<String>) {
        self.errors.push(Diagnostic::file_error(self.file, message));
    }

    /// The 1-based line of a byte offset, to name another place in a message.
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// The file being checked.
    pub(crate) fn file(&self) -> &'a Path {
        self.file
    }

    /// The content being checked (the policy hashes it).
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The errors and the warnings, each sorted by position (file-wide ones first).
    pub(crate) fn finish(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        self.errors.sort_by_key(|d| (d.line, d.column));
        self.warnings.sort_by_key(|d| (d.line, d.column));
        (self.errors, self.warnings)
    }
}

/// A duration value in the duration grammar of docs/reference.md, or an error at the value.
pub(crate) fn duration_value(check: &mut Checker<'_>, name: &str, value: &Spanned<String>) -> Option<Duration> {
    match crate::duration::parse(value.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            check.error(value.span(), format!("`{name}`: {e}"));
            None
        }
    }
}

/// One of a fixed set of string values, or an error at the value listing them.
pub(crate) fn choice<T: Copy>(
    check: &mut Checker<'_>,
    name: &str,
    value: &Spanned<String>,
    choices: &[(&str, T)],
) -> Option<T> {
    if let Some((_, v)) = choices.iter().find(|(text, _)| *text == value.get_ref()) {
        return Some(*v);
    }
    let names: Vec<String> = choices.iter().map(|(text, _)| format!("\"{text}\"")).collect();
    check.error(value.span(), format!("`{name}` is \"{}\"; it must be {}", value.get_ref(), names.join(" or ")));
    None
}
