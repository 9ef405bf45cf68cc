//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and the inputs of past
//! findings (`fuzz/regressions/<target>/`, kept apart so that minimising a corpus never
//! drops them) through the same checks the `cargo fuzz` targets run (`fuzz/src/`,
//! included here as a module), on stable Rust, in seconds. Every target named in
//! `fuzz/Cargo.toml` must have a non-empty corpus here, so a new target cannot go
//! unreplayed.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file of `fuzz/corpus/<target>/`, in name order; a missing or empty corpus
/// fails the test.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("a directory entry").path()).collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

/// Every file of `fuzz/regressions/<target>/`, if the target has had findings.
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("regressions").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

/// Runs `check` on every corpus and regression file of `target`, naming the file that
/// fails.
fn replay(target: &str, check: fn(&[u8])) {
    let mut files = corpus(target);
    files.extend(regressions(target));
    for (path, data) in &files {
        if let Err(panic) = std::panic::catch_unwind(|| check(data)) {
            eprintln!("fuzz target `{target}` fails on {}", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{target}: {} files replayed", files.len());
}

#[test]
fn path_corpus() {
    replay("path", checks::path::check);
}

#[test]
fn key_corpus() {
    replay("key", checks::key::check);
}

#[test]
fn settings_corpus() {
    replay("settings", checks::settings::check);
}

#[test]
fn policy_corpus() {
    replay("policy", checks::policy::check);
}

#[test]
fn codec_corpus() {
    replay("codec", checks::codec::check);
}

#[test]
fn headers_corpus() {
    replay("headers", checks::headers::check);
}

/// The targets this file replays, and those `fuzz/Cargo.toml` declares, are the same.
#[test]
fn every_target_is_replayed() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut declared: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name")).expect("a [[bin]] without a name");
            line.split('"').nth(1).expect("name = \"…\"")
        })
        .collect();
    declared.sort_unstable();
    let mut replayed = vec!["codec", "headers", "key", "path", "policy", "settings"];
    replayed.sort_unstable();
    assert_eq!(declared, replayed);
}

/// Findings are kept only for targets that exist.
#[test]
fn regressions_belong_to_targets() {
    let dir = fuzz_dir().join("regressions");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(fuzz_dir().join("corpus").join(&*name).is_dir(), "fuzz/regressions/{name} names no target");
    }
}
