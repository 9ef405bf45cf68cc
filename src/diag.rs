//! Configuration diagnostics: an error or warning tied to file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// Whether a diagnostic makes the file invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a config file, printed as `file:line:column: error: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the finding is about the file as a whole.
    pub line: usize,
    /// 1-based; 0 when the finding is about the file as a whole.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// An error at a byte offset of `text` (the file's content).
    pub fn error_at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_column(text, offset);
        Diagnostic { severity: Severity::Error, file: file.to_path_buf(), line, column, message: message.into() }
    }

    /// A warning at a byte offset of `text`.
    pub fn warning_at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Self::error_at(file, text, offset, message) }
    }

    /// An error about the file as a whole (unreadable, empty policy, …).
    pub fn file_error(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, file: file.to_path_buf(), line: 0, column: 0, message: message.into() }
    }

    /// A warning about the file as a whole.
    pub fn file_warning(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Self::file_error(file, message) }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "{}: {level}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {level}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

/// 1-based line and column (in characters) of a byte offset; offsets past the end clamp to it.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 4));
        assert_eq!(line_column(text, 999), (3, 1));
    }

    #[test]
    fn display_names_file_line_column() {
        let d = Diagnostic::error_at(Path::new("routes.toml"), "x\ny = 2", 2, "bad");
        assert_eq!(d.to_string(), "routes.toml:2:1: error: bad");
    }
}
