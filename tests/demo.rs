//! `keygate demo` as a newcomer runs it: the real binary, without `RUST_LOG`. Its banner
//! names each listener truthfully, its secrets are the owner's alone, it prints an access
//! line per request, and SIGTERM (as Ctrl-C) stops it and deletes its folder.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::process::signal;
use support::*;

/// The access lines among the complete JSON lines of `log` (their `fields`).
fn access(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["target"] == "access")
        .map(|v| v["fields"].clone())
        .collect()
}

/// The value after `label` on the banner line that starts with it.
fn banner_value<'a>(banner: &'a str, label: &str) -> &'a str {
    let line =
        banner.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}: {banner}"));
    line.trim_start()[label.len()..].split_whitespace().next().unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn the_demo_labels_its_listeners_keeps_its_secrets_private_logs_requests_and_cleans_up_on_sigterm() {
    let mut child = Command::new(keygate_bin())
        .arg("demo")
        .env_remove("RUST_LOG")
        .env_remove("KEYGATE_PEPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygate demo");
    let pid = child.id();
    // The banner, up to the line that says it serves.
    let (banner_tx, banner_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("serving until") {
                let _ = banner_tx.send(banner.clone());
            }
        }
    });
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = stderr_text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    let banner = tokio::task::spawn_blocking(move || banner_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("no banner; stderr: {}", stderr_text.lock().unwrap()));

    // Each address under its own name, and each answers as what it is called.
    let proxy = banner_value(&banner, "proxy:");
    let health = banner_value(&banner, "metrics and health:");
    let api = banner_value(&banner, "admin API:");
    assert!(!banner.contains(" admin on "), "{banner}");
    assert_eq!(std::collections::HashSet::from([proxy, health, api]).len(), 3, "{banner}");
    let http = Http::new();
    let healthz = http.get(&format!("{health}/healthz"), None).await;
    assert_eq!((healthz.status, healthz.text().as_str()), (200, "ok\n"), "{banner}");
    assert!(http.get(&format!("{health}/metrics"), None).await.text().contains("keygate_"));
    assert_eq!(http.get(&format!("{api}/admin/v1/keys"), None).await.status, 401, "the admin API wants its token");
    assert_eq!(http.get(&format!("{proxy}/status"), None).await.status, 200, "the proxy's public route");

    // The folder is the owner's alone; its secrets too.
    let folder = PathBuf::from(
        banner
            .lines()
            .find_map(|l| l.strip_prefix("config, secrets and key store in "))
            .and_then(|rest| rest.strip_suffix(" (deleted on exit)"))
            .unwrap_or_else(|| panic!("no folder line: {banner}")),
    );
    assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    for secret in ["admin-token", "peppers", "keys.json"] {
        assert_eq!(mode(&folder.join(secret)), 0o600, "{secret}");
    }

    // The 200 line works, and its request gets an access line on stderr without RUST_LOG.
    let key = banner
        .lines()
        .find_map(|l| l.strip_prefix("curl -i -H 'Authorization: Bearer "))
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no 200 line: {banner}"));
    let answer = http.get(&format!("{proxy}/v1/calls"), Some(key)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let logged = eventually(Duration::from_secs(10), async || {
        access(&stderr_text.lock().unwrap()).iter().any(|l| l["status"] == 200 && l["route"] == "/v1/calls")
    })
    .await;
    assert!(logged, "no access line: {}", stderr_text.lock().unwrap());
    assert!(!stderr_text.lock().unwrap().contains(key), "the key is never logged");

    // SIGTERM: a clean exit, and the folder with its secrets is gone.
    signal(pid, "TERM");
    let exited = eventually(Duration::from_secs(20), async || matches!(child.try_wait(), Ok(Some(_)))).await;
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(exited, "the demo did not exit on SIGTERM");
    assert!(status.success(), "{status:?}: {}", stderr_text.lock().unwrap());
    assert!(!folder.exists(), "{} left behind", folder.display());
}

/// SIGHUP (the terminal closed) stops the demo and deletes its folder too.
#[tokio::test]
async fn the_demo_cleans_up_on_sighup() {
    let mut child = Command::new(keygate_bin())
        .arg("demo")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keygate demo");
    let stdout = child.stdout.take().unwrap();
    let folder = tokio::task::spawn_blocking(move || {
        let mut folder = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("config, secrets and key store in ") {
                folder = rest.strip_suffix(" (deleted on exit)").map(PathBuf::from);
            }
            if line.starts_with("serving until") {
                break;
            }
        }
        folder
    })
    .await
    .unwrap()
    .expect("the banner names the folder");
    assert!(folder.exists());
    signal(child.id(), "HUP");
    let exited = eventually(Duration::from_secs(20), async || matches!(child.try_wait(), Ok(Some(_)))).await;
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "the demo did not exit on SIGHUP");
    assert!(!folder.exists(), "{} left behind", folder.display());
}
