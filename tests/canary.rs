//! A canary key goes through every kind of traffic this suite knows, against the real
//! binary with debug logging; no trace of it (beyond its first 8 characters) may appear
//! in logs, metrics, error bodies or upstream headers (docs/reference.md §3).

mod support;

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

    let served = process::Served::start(&config, "debug").await;
    let (proxy, admin) = (served.proxy, served.admin);

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
    let (stdout, stderr) = served.stop().await;
    let logs = stdout + &stderr;
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
