//! `keygate check` through the real binary: every error of both files in one run, each at
//! its file:line:column (the peppers' too), and a summary naming the files that hold them.

mod support;

use std::path::Path;

use support::*;

const ROUTES: &str = "[scopes]\n\"a:b\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/x\"\nscopes = [\"a:b\"]\nupstream = \"app\"\n";
const PEPPER: &str = "p1=9f1c2e7a4b6d0835ab73c1e05d\n";

/// A folder with keygate.toml (`settings` after the `policy` line, then a `[keys]` table
/// naming `peppers`), routes.toml and the pepper file.
fn folder(settings: &str, routes: &str, peppers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("policy = \"routes.toml\"\n{settings}[keys]\nsource = \"file\"\npepper_file = \"peppers\"\n");
    std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    std::fs::write(dir.path().join("peppers"), peppers).unwrap();
    dir
}

fn check(dir: &Path) -> (i32, String, String) {
    cli(&dir.join("keygate.toml"), &["check"])
}

/// The `error` lines of check's output, as `file:line:column` (file name only) and message.
fn errors(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|line| {
            let (at, message) = line.split_once(": error: ")?;
            let name = Path::new(at).file_name()?.to_string_lossy().into_owned();
            Some((name, message.to_string()))
        })
        .collect()
}

#[test]
fn a_valid_folder_passes() {
    let dir = folder("", ROUTES, PEPPER);
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn two_typos_in_one_file_are_two_errors_with_their_lines() {
    let dir = folder("[listen]\nadress = \"127.0.0.1:8443\"\n[server]\nidle_timout = \"60s\"\n", ROUTES, PEPPER);
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let found = errors(&out);
    assert_eq!(found.len(), 2, "{out}");
    assert_eq!(found[0].0, "keygate.toml:3:1", "{out}");
    assert!(found[0].1.contains("unknown field `adress`"), "{out}");
    assert_eq!(found[1].0, "keygate.toml:5:1", "{out}");
    assert!(found[1].1.contains("unknown field `idle_timout`"), "{out}");
    assert!(err.contains("2 error(s) (2 in ") && err.contains("keygate.toml)"), "{err}");
}

#[test]
fn errors_in_both_files_are_all_reported_and_the_summary_names_routes_toml() {
    let routes = ROUTES.replace("upstream = \"app\"", "upstream = \"nope\"\ncots = 2");
    let dir = folder("[server]\nworkers = 0\n", &routes, PEPPER);
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let found = errors(&out);
    let places: Vec<&str> = found.iter().map(|(at, _)| at.as_str()).collect();
    assert_eq!(places, ["keygate.toml:3:11", "routes.toml:8:12", "routes.toml:9:1"], "{out}");
    assert!(found[1].1.contains("`nope`"), "{out}");
    assert!(found[2].1.contains("unknown field `cots`"), "{out}");
    let summary = err.lines().find(|l| l.starts_with("keygate:")).unwrap_or_default();
    assert!(summary.contains("3 error(s)"), "{err}");
    assert!(summary.contains("routes.toml") && summary.contains("keygate.toml"), "{err}");

    // Errors in routes.toml alone: the summary names it, not keygate.toml.
    let dir = folder("", &routes, PEPPER);
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let summary = err.lines().find(|l| l.starts_with("keygate:")).unwrap_or_default();
    assert!(summary.contains("routes.toml") && !summary.contains("keygate.toml"), "{err}");
}

#[test]
fn a_syntax_error_in_keygate_toml_still_checks_routes_toml() {
    let routes = ROUTES.replace("upstream = \"app\"", "upstream = \"nope\"");
    let dir = folder("[server\n", &routes, PEPPER);
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let places: Vec<String> = errors(&out).into_iter().map(|(at, _)| at).collect();
    assert_eq!(places.len(), 2, "{out}");
    assert!(places[0].starts_with("keygate.toml:2:"), "{out}");
    assert_eq!(places[1], "routes.toml:8:12", "{out}");
}

#[test]
fn pepper_errors_have_their_line_and_column() {
    let dir = folder("", ROUTES, &format!("# rotated\n{PEPPER}not a pair\n"));
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let found = errors(&out);
    assert_eq!(found.len(), 1, "{out}");
    assert_eq!(found[0].0, "peppers:3:1", "{out}");
    assert!(found[0].1.contains("id=secret"), "{out}");
    assert!(err.contains("1 in ") && err.contains("peppers)"), "{err}");

    // A pepper file that cannot be read is reported where keygate.toml names it.
    std::fs::remove_file(dir.path().join("peppers")).unwrap();
    let (code, out, _) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    let found = errors(&out);
    assert_eq!(found[0].0, "keygate.toml:4:15", "{out}");
    assert!(found[0].1.contains("cannot read"), "{out}");
}

#[test]
fn a_3_byte_pepper_is_refused_by_check_and_serve() {
    let dir = folder("", ROUTES, "p1=abc\n");
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 1, "{out}{err}");
    let found = errors(&out);
    assert_eq!(found.len(), 1, "{out}");
    assert_eq!(found[0].0, "peppers:1:4", "{out}");
    assert!(found[0].1.contains("3 byte(s)") && found[0].1.contains("at least 16 bytes"), "{out}");
    assert!(!out.contains("abc"), "never quotes the pepper: {out}");

    let (code, _, err) = cli(&dir.path().join("keygate.toml"), &["serve"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("peppers:1:4"), "{err}");

    // $KEYGATE_PEPPER too (no pepper file).
    std::fs::write(dir.path().join("keygate.toml"), "policy = \"routes.toml\"\n[keys]\nsource = \"file\"\n").unwrap();
    let output = std::process::Command::new(keygate_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("keygate.toml"))
        .env("KEYGATE_PEPPER", "abc")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("$KEYGATE_PEPPER: error:") && out.contains("3 byte(s)"), "{out}");
}

#[test]
fn a_weak_pepper_is_a_warning() {
    let dir = folder("", ROUTES, "p1=changeme-changeme-changeme\n");
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 0, "a warning only: {out}{err}");
    assert!(out.contains("peppers:1:4: warning:") && out.contains("placeholder"), "{out}");
}
