//! The shared vocabulary of config checking: read a file into its `Raw*` structs reporting
//! every unknown field and wrongly typed value ([`deserialize`]), turn a `toml` error into
//! a positioned [`Diagnostic`], collect every finding of one file in a `Checker`, and read
//! the value kinds both config files use (durations, a word out of a fixed set).
//!
//! It sits below `settings` and `policy` so that both can use it without importing
//! each other: `keygate.toml` and `routes.toml` report problems the same way.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::diag::{line_column, Diagnostic};

/// The most structural errors (unknown fields, wrong types) reported for one file: each
/// costs one more deserialization of the file, and beyond this many the file is not worth
/// reading on.
const MAX_STRUCTURAL_ERRORS: usize = 100;

/// A file read into its `Raw*` structs, with the structural errors met on the way.
pub(crate) struct Deserialized<T> {
    /// The file without the entries that caused `errors`.
    pub value: T,
    /// Every unknown field and every value of the wrong type, in the order found.
    pub errors: Vec<Diagnostic>,
    /// Where the tables holding a wrongly typed value start (`None`: the document
    /// itself): such a value was left out, so "table X needs field Y" said there would
    /// only repeat the error already reported (see [`Checker::mute`]).
    muted: Vec<Option<usize>>,
}

/// Reads `text` (the content of `file`) into `T`, reporting every unknown field and every
/// value of the wrong type, not just the first: serde stops at the first error, so each
/// error found is reported, the entry it names is left out of the parsed document, and the
/// document is read again, until it reads. A syntax error stops the file (its one error
/// is returned), as does an error `toml` cannot place.
pub(crate) fn deserialize<T: DeserializeOwned>(file: &Path, text: &str) -> Result<Deserialized<T>, Vec<Diagnostic>> {
    let mut document = DeTable::parse(text).map_err(|e| vec![toml_error(file, text, &e)])?;
    let mut errors = Vec::new();
    let mut muted = Vec::new();
    loop {
        let error = match T::deserialize(toml::de::Deserializer::from(document.clone())) {
            Ok(value) => return Ok(Deserialized { value, errors, muted }),
            Err(error) => error,
        };
        let mut diagnostic = toml_error(file, text, &error);
        let removed = error.span().and_then(|span| remove_entry(document.get_mut(), None, &span));
        match removed {
            Some(Removed::Key) => errors.push(diagnostic),
            Some(Removed::Value { parent, name }) => {
                // `toml` says what type it wanted, not of which field.
                diagnostic.message = format!("`{name}`: {}", diagnostic.message);
                errors.push(diagnostic);
                muted.push(parent);
            }
            None => {
                errors.push(diagnostic);
                return Err(errors);
            }
        }
        if errors.len() >= MAX_STRUCTURAL_ERRORS {
            return Err(errors);
        }
    }
}

/// What [`remove_entry`] took out of the document.
enum Removed {
    /// An entry named by its key (an unknown field).
    Key,
    /// An entry or array element named by its value (a wrong type), in the table or
    /// array starting at `parent` (`None`: the document); `name` is the entry's key (the
    /// array's, for an element).
    Value { parent: Option<usize>, name: String },
}

/// Removes the entry whose key or value spans exactly `span`, searching `table` (which
/// starts at `at`) and everything nested in it.
fn remove_entry(table: &mut DeTable<'_>, at: Option<usize>, span: &Range<usize>) -> Option<Removed> {
    let hit = table.iter().find_map(|(key, value)| {
        if key.span() == *span {
            Some((key.clone(), Removed::Key))
        } else if value.span() == *span {
            Some((key.clone(), Removed::Value { parent: at, name: key.get_ref().to_string() }))
        } else {
            None
        }
    });
    if let Some((key, removed)) = hit {
        table.remove(&key);
        return Some(removed);
    }
    for (key, value) in table.iter_mut() {
        let start = value.span().start;
        if let Some(removed) = remove_nested(value.get_mut(), start, span, key.get_ref()) {
            return Some(removed);
        }
    }
    None
}

/// [`remove_entry`] inside a value: a table's entries, an array's elements.
fn remove_nested(value: &mut DeValue<'_>, start: usize, span: &Range<usize>, name: &str) -> Option<Removed> {
    match value {
        DeValue::Table(table) => remove_entry(table, Some(start), span),
        DeValue::Array(array) => {
            if let Some(index) = array.iter().position(|item| item.span() == *span) {
                let kept: DeArray<'_> = std::mem::replace(array, DeArray::new())
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .map(|(_, v)| v)
                    .collect();
                *array = kept;
                return Some(Removed::Value { parent: Some(start), name: name.to_string() });
            }
            array.iter_mut().find_map(|item| {
                let item_start = item.span().start;
                remove_nested(item.get_mut(), item_start, span, name)
            })
        }
        _ => None,
    }
}

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
    /// See [`Checker::mute`].
    muted: Vec<Option<usize>>,
}

impl<'a> Checker<'a> {
    /// A checker for `text`, the content of `file`.
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Checker { file, text, errors: Vec::new(), warnings: Vec::new(), muted: Vec::new() }
    }

    /// Takes the structural errors of [`deserialize`] and returns what was read.
    pub(crate) fn take<T>(&mut self, read: Deserialized<T>) -> T {
        self.errors.extend(read.errors);
        self.muted.extend(read.muted);
        read.value
    }

    /// Whether an error at `start` (`None`: about the whole file) would only repeat a
    /// structural error: a table (or the document) whose wrongly typed value was left
    /// out, now "lacking" it. Only errors exactly at such a table's start are muted.
    fn mute(&self, start: Option<usize>) -> bool {
        self.muted.contains(&start)
    }

    /// An error at the start of `span`.
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        if self.mute(Some(span.start)) {
            return;
        }
        self.errors.push(Diagnostic::error_at(self.file, self.text, span.start, message));
    }

    /// A warning at the start of `span`.
    pub(crate) fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Diagnostic::warning_at(self.file, self.text, span.start, message));
    }

    /// An error about the file as a whole.
    pub(crate) fn file_error(&mut self, message: impl Into<String>) {
        if self.mute(None) {
            return;
        }
        self.errors.push(Diagnostic::file_error(self.file, message));
    }

    /// The 1-based line of a byte offset, to name another place in a message.
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// The 1-based line and column of a byte offset.
    pub(crate) fn position(&self, span: &Range<usize>) -> (usize, usize) {
        line_column(self.text, span.start)
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
