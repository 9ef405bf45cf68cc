//! `keygate.toml` (docs/reference.md §2.1): any text parses to settings or to errors without
//! a panic, the same way twice, and every diagnostic names the file and a line:column
//! inside the text (or 0:0, about the file as a whole), sorted by position. Valid
//! settings hold the invariants their types promise: every path resolved against the
//! config file's directory, `[redis]` present wherever Redis is used, and no zero
//! where at least one is needed.

use std::path::Path;

use keygate::diag::{Diagnostic, Severity};
use keygate::settings::{KeySource, LimitBackend, Settings};

/// Where the fuzzed file is said to live: absolute, so every resolved path must be too.
const FILE: &str = "/etc/keygate/keygate.toml";

/// The input as the file's text, invalid UTF-8 replaced.
pub fn check(data: &[u8]) {
    check_text(&String::from_utf8_lossy(data));
}

pub fn check_text(text: &str) {
    let file = Path::new(FILE);
    let result = Settings::parse(text, file);
    let again = Settings::parse(text, file);
    match (&result, &again) {
        (Ok((_, warnings)), Ok((_, warnings_again))) => assert_eq!(warnings, warnings_again, "warnings differ"),
        (Err(errors), Err(errors_again)) => assert_eq!(errors, errors_again, "errors differ"),
        _ => panic!("parsing {text:?} twice gives two answers"),
    }
    match result {
        Ok((settings, warnings)) => {
            diagnostics(text, file, &warnings, Severity::Warning);
            valid(&settings);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without an error");
            diagnostics(text, file, &errors, Severity::Error);
        }
    }
}

/// Every diagnostic: the file, the severity, a message, and a line:column inside `text`
/// (1-based, the column at most one past the line's last character), in order.
pub fn diagnostics(text: &str, file: &Path, found: &[Diagnostic], severity: Severity) {
    let lines: Vec<&str> = text.split('\n').collect();
    for d in found {
        assert_eq!(d.file, file, "{d}");
        assert_eq!(d.severity, severity, "{d}");
        assert!(!d.message.trim().is_empty(), "an empty message at {}:{}", d.line, d.column);
        if (d.line, d.column) == (0, 0) {
            continue;
        }
        assert!((1..=lines.len()).contains(&d.line), "line {} of {} lines: {d}", d.line, lines.len());
        let width = lines[d.line - 1].chars().count();
        assert!((1..=width + 1).contains(&d.column), "column {} of a {width}-character line: {d}", d.column);
    }
    assert!(found.windows(2).all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)), "{found:?} is unsorted");
}

fn valid(settings: &Settings) {
    assert_eq!(settings.file, Path::new(FILE));
    let mut paths = vec![&settings.policy_file];
    paths.extend(settings.listen.tls.iter().flat_map(|tls| [&tls.cert, &tls.key]));
    paths.extend(&settings.admin.token_file);
    paths.extend(&settings.keys.pepper_file);
    if let KeySource::File(file) = &settings.keys.source {
        paths.push(file);
    }
    if let Some(redis) = &settings.redis {
        paths.extend(redis.password_file.iter().chain(&redis.ca_file));
        assert!(!redis.url.is_empty());
    }
    for path in paths {
        assert!(path.is_absolute(), "{} is not resolved against the config file's directory", path.display());
    }
    let uses_redis = settings.keys.source == KeySource::Redis || settings.limits.backend == LimitBackend::Redis;
    assert!(!uses_redis || settings.redis.is_some(), "Redis is used but `[redis]` is missing");
    assert!(settings.limits.replicas >= 1);
    assert!(settings.server.max_connections >= 1);
    assert!(settings.server.workers >= 1);
    assert!(!settings.server.header_read_timeout.is_zero());
    let (proxy, admin) = (settings.listen.address, settings.admin.address);
    assert!(proxy != admin || proxy.port() == 0, "the proxy and the admin listener share {proxy}");
}
