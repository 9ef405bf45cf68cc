//! A canary key goes through every kind of traffic this suite knows, against the real
//! binary with debug logging; no trace of it (beyond its first 8 characters) may appear
//! in logs, metrics, error bodies or upstream headers (SPEC 3).

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use support::*;

#[tokio::test]
async fn the_canary_key_leaves_no_trace() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (canary_id, canary) = kg.key("acme", "pro", &["calls:read", "analytics:read"]);
    let (_, tiny) = kg.key("small", "tiny", &["calls:read"]);
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;
    let secret = canary.expose().to_string();
    let tail = &secret[8..];

    let mut child = Command::new(keygate_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // The addresses: read back from the config is not possible (port 0), so find them
    // from /proc: the child's listening sockets. Simpler: poll the log file we capture
    // only at the end — instead, ask the kernel which ports the child listens on.
    let ports = wait_for_listening_ports(child.id()).await;
    assert_eq!(ports.len(), 2, "proxy and admin ports: {ports:?}");
    let (proxy, admin) = identify(&ports).await;

    let http = Http::new();
    let h2 = Http::h2c();
    let bearer = format!("Bearer {secret}");
    let mut bodies = Vec::new();
    let mut push = |a: Answer| bodies.push(format!("{:?}\n{}", a.headers, a.text()));
    push(http.get(&format!("http://{proxy}/v1/calls"), Some(&secret)).await);
    push(h2.get(&format!("http://{proxy}/v1/calls"), Some(&secret)).await);
    push(http.get(&format!("http://{proxy}/v1/calls?api_key={secret}"), Some(&secret)).await);
    // The test upstream echoes the path it got in `x-upstream-target`: that answer is the
    // upstream's, not keygate's, so only its status is kept.
    let echoed = http.get(&format!("http://{proxy}/v1/calls/{secret}"), Some(&secret)).await;
    assert_eq!(echoed.status, 200);
    push(http.get(&format!("http://{proxy}/nowhere/{secret}"), Some(&secret)).await);
    push(http.get(&format!("http://{proxy}/v1/analytics"), Some(&secret)).await);
    push(http.send("POST", &format!("http://{proxy}/v1/calls"), &[("authorization", &bearer)], Bytes::from("x")).await);
    push(
        http.send(
            "GET",
            &format!("http://{proxy}/v1/calls"),
            &[("authorization", &bearer), ("x-request-id", &secret), ("x-keygate-key-id", &secret)],
            Bytes::new(),
        )
        .await,
    );
    push(
        http.send(
            "GET",
            &format!("http://{proxy}/v1/calls"),
            &[("authorization", &format!("Basic {secret}"))],
            Bytes::new(),
        )
        .await,
    );
    let mut mistyped = secret.clone();
    mistyped.pop();
    push(http.get(&format!("http://{proxy}/v1/calls"), Some(&mistyped)).await);
    push(http.get(&format!("http://{proxy}/v1/calls"), Some(&format!("{secret}x"))).await);
    for _ in 0..4 {
        push(http.get(&format!("http://{proxy}/v1/calls"), Some(tiny.expose())).await);
    }
    push(
        h2.send(
            "POST",
            &format!("http://{proxy}/v1/calls"),
            &[("authorization", &bearer), ("content-type", "application/grpc")],
            Bytes::new(),
        )
        .await,
    );
    let metrics = http.get(&format!("http://{admin}/metrics"), None).await.text();
    let readyz = http.get(&format!("http://{admin}/readyz"), None).await.text();

    // Revoke it through the CLI and use it once more.
    let (code, _, err) = cli(&config, &["keys", "revoke", &canary_id]);
    assert_eq!(code, 0, "{err}");
    let url = format!("http://{proxy}/v1/calls");
    assert!(eventually(Duration::from_secs(2), async || http.get(&url, Some(&secret)).await.status == 401).await);
    let (_, listed, _) = cli(&config, &["keys", "list", "--json"]);

    drop((http, h2));
    terminate(&mut child).await;
    let logs = out_reader.join().unwrap() + &err_reader.join().unwrap();
    assert!(logs.contains("\"target\":\"access\""), "the access log was captured: {logs}");
    assert!(logs.contains(&canary_id), "the key id may be logged");

    let upstream_headers: String = upstream.seen().iter().map(|s| format!("{:?}{}", s.headers, s.target)).collect();
    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("readyz", &readyz),
        ("error bodies", &bodies.join("\n")),
        ("keys list", &listed),
        ("upstream headers", &upstream_headers.replace(&format!("/v1/calls/{secret}"), "")),
    ] {
        assert!(!text.contains(tail), "the canary key appears in {what}");
    }
}

/// SIGTERM, then wait (without blocking the runtime, whose client connections must be
/// able to close) for a clean exit.
async fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let exited = eventually(Duration::from_secs(10), async || matches!(child.try_wait(), Ok(Some(_)))).await;
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(exited && status.success(), "keygate did not exit 0 on SIGTERM: {status:?}");
}

/// The TCP ports a process listens on, from /proc/net/tcp and its fd links.
async fn wait_for_listening_ports(pid: u32) -> Vec<u16> {
    let mut ports = Vec::new();
    assert!(
        eventually(Duration::from_secs(20), async || {
            ports = listening_ports(pid);
            ports.len() >= 2
        })
        .await,
        "keygate did not start listening"
    );
    ports
}

fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                if let Some(port) = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

/// Which of the two ports is the admin listener (it answers /healthz with `ok`).
async fn identify(ports: &[u16]) -> (String, String) {
    let http = Http::new();
    let first = format!("127.0.0.1:{}", ports[0]);
    let second = format!("127.0.0.1:{}", ports[1]);
    if http.get(&format!("http://{first}/healthz"), None).await.text() == "ok\n" {
        (second, first)
    } else {
        (first, second)
    }
}
