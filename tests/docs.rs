//! The user's documentation holds: it links only to what the repository has (files and
//! headings), names no outside contract and no issue number, the licence Cargo.toml names
//! is shipped, and the command blocks a user pastes — the README's "Running it" and the
//! admin API walk-through — run as written and touch nothing but what they create.
//!
//! The command blocks run under bash on free ports: the test copies `config/` and
//! `scripts/` into a temporary folder, replaces the ports the examples name (8443, 8080,
//! 9090, 9091) by free ones in the copies and in the block, and stands the test's own
//! binary in for `target/release/keygate`. Every other character is the documentation's.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The user's documents: the README and every Markdown file under docs/ and deploy/.
fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md")];
    for dir in ["docs", "deploy"] {
        collect_markdown(&root().join(dir), &mut out);
    }
    out
}

fn collect_markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_markdown(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The targets of the Markdown links `[text](target)` outside code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Drop code spans: a link inside backticks is not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file's headings make (a repeated one gets `-1`, `-2`, …).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block || !line.starts_with('#') {
            continue;
        }
        let base = anchor_of(line.trim_start_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

#[test]
fn every_link_of_the_documentation_resolves_inside_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() { doc.clone() } else { doc.parent().unwrap().join(file) };
            let Ok(resolved) = resolved.canonicalize() else {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            };
            if !resolved.starts_with(&root) {
                broken.push(format!("{}: {target}: outside the repository", doc.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if resolved.extension().is_some_and(|e| e == "md") {
                    let headings = anchors(&std::fs::read_to_string(&resolved).unwrap());
                    if !headings.contains(anchor) {
                        broken.push(format!("{}: {target}: no heading makes #{anchor}", doc.display()));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links found: the link reader is broken");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_documentation_names_no_outside_contract_and_no_issue_number() {
    let mut found = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for outside in ["shared/", "spec.md", "architecture.md"] {
                if lower.contains(outside) {
                    found.push(format!("{}:{}: names {outside}", doc.display(), n + 1));
                }
            }
            let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric() && c != '#').collect();
            for pair in words.windows(2) {
                let number = pair[1].trim_start_matches('#');
                if pair[0] == "issue" && !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()) {
                    found.push(format!("{}:{}: names an issue: {line}", doc.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "the documentation must stand on its own:\n{}", found.join("\n"));
}

#[test]
fn the_licence_cargo_toml_names_is_shipped() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.lines().any(|l| l.trim() == r#"license = "Apache-2.0""#), "Cargo.toml names another licence");
    let licence = std::fs::read_to_string(root().join("LICENSE")).expect("a LICENSE file at the root");
    assert!(licence.contains("Apache License") && licence.contains("Version 2.0, January 2004"));
    assert!(licence.contains("END OF TERMS AND CONDITIONS"), "LICENSE holds only part of the licence");
}

/// The first ```sh block after the heading `heading` of a Markdown file.
fn sh_block_after(doc: &Path, heading: &str) -> String {
    let text = std::fs::read_to_string(doc).unwrap();
    let at = text.find(heading).unwrap_or_else(|| panic!("{}: no {heading:?}", doc.display()));
    let start = text[at..].find("```sh\n").expect("a sh block after the heading") + at + "```sh\n".len();
    let end = text[start..].find("```").unwrap() + start;
    text[start..end].to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The example's ports and free ones to use instead.
struct Ports(Vec<(u16, u16)>);

impl Ports {
    fn new() -> Ports {
        Ports([8443, 8080, 9090, 9091].into_iter().map(|p| (p, free_port())).collect())
    }

    fn apply(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (from, to) in &self.0 {
            text = text.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
            text = text.replace(&format!("echo-upstream.py {from}"), &format!("echo-upstream.py {to}"));
        }
        text
    }
}

/// A copy of the repository's `config/` and `scripts/` with the ports replaced, and
/// `target/release/keygate` standing for the test's binary.
fn workspace(ports: &Ports) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "scripts"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(root().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with("keys.json") {
                continue; // a store left by someone running the example here
            }
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(dir.path().join(sub).join(&name), ports.apply(&text)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_keygate"), dir.path().join("target/release/keygate")).unwrap();
    dir
}

/// Runs a script under bash in `dir` in a process group of its own (so that whatever it
/// left running is stopped with it); returns (success, stdout and stderr).
fn run_bash(dir: &Path, script: &str, env: &[(&str, &str)]) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_remove("KEYGATE_CONFIG")
        .env_remove("KEYGATE_PEPPER")
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("bash");
    let group = child.id();
    let output = child.wait_with_output().unwrap();
    // Whatever the script left behind (it should have left nothing).
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stderr(Stdio::null()).status();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn the_readme_running_it_block_runs_as_written() {
    let block = sh_block_after(&root().join("README.md"), "## Running it");
    let first = block.lines().next().unwrap();
    assert!(first.starts_with("cargo build --release"), "the block starts with the build: {first}");
    let ports = Ports::new();
    let dir = workspace(&ports);
    // The build is the test's own; the rest is the README's, line by line, stopping at the
    // first failing line.
    let script = format!("set -e\n{}", ports.apply(&block.lines().skip(1).collect::<Vec<_>>().join("\n")));
    let (ok, output) = run_bash(dir.path(), &script, &[]);
    assert!(ok, "the README's block failed:\n{output}");
    // Error bodies end without a newline, so a status line may follow one on its line.
    let statuses: Vec<&str> = output.match_indices("HTTP/1.1 ").map(|(at, _)| &output[at..at + 12]).collect();
    assert_eq!(statuses.len(), 3, "three answers expected:\n{output}");
    assert!(statuses[0].starts_with("HTTP/1.1 200"), "{output}");
    assert!(statuses[1].starts_with("HTTP/1.1 401"), "{output}");
    assert!(statuses[2].starts_with("HTTP/1.1 403"), "{output}");
    assert!(output.contains("\"x-keygate-tenant\": \"try-keygate\""), "the upstream saw no identity:\n{output}");
    assert!(dir.path().join("config/keys.json").exists(), "the store is where the README says");
    // The README says git ignores the example's store.
    for path in ["config/keys.json", "config/keys.json.lock", "config/keys.json.tmp"] {
        let ignored = Command::new("git").args(["check-ignore", "-q", path]).current_dir(root()).status().unwrap();
        assert!(ignored.success(), ".gitignore does not cover the example's key store: {path}");
    }
}

#[test]
fn the_admin_api_walkthrough_touches_only_its_own_tenant() {
    let block = sh_block_after(&root().join("docs/admin-api.md"), "A walk-through");
    let ports = Ports::new();
    let dir = workspace(&ports);
    let token = "walkthrough-token-0123456789abcdef";
    let config = dir.path().join("config/keygate.toml");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("KEYGATE_PEPPER")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Someone's real tenant, which the walk-through must leave alone.
    cli(&["tenants", "create", "acme", "--plan", "pro"]);
    cli(&["keys", "create", "--tenant", "acme", "--name", "prod", "--scopes", "calls:read"]);
    let before = cli(&["--json", "keys", "list", "--tenant", "acme"]);

    let script = format!(
        "set -e\n{bin} --config config/keygate.toml serve &\n\
         curl -s --retry 40 --retry-delay 1 --retry-connrefused -o /dev/null http://127.0.0.1:{api}/admin/v1/tenants\n\
         {block}\nkill %1\n",
        bin = env!("CARGO_BIN_EXE_keygate"),
        api = ports.0[3].1,
        block = ports.apply(&block),
    );
    let (ok, output) = run_bash(dir.path(), &script, &[("KEYGATE_ADMIN_TOKEN", token)]);
    assert!(ok, "the walk-through failed:\n{output}");
    assert!(!output.contains("\"error\""), "a call of the walk-through was refused:\n{output}");
    assert!(output.contains("\"revoked_keys\""), "the clean-up did not run:\n{output}");

    assert_eq!(cli(&["--json", "keys", "list", "--tenant", "acme"]), before, "acme's keys changed");
    let tenants = cli(&["--json", "tenants", "list"]);
    assert!(tenants.contains("\"acme\""), "acme is gone: {tenants}");
    let keys = cli(&["--json", "keys", "list", "--tenant", "admin-api-example"]);
    assert!(!keys.contains("\"state\":\"active\""), "the walk-through left an active key: {keys}");
}
