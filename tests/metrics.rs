//! The metric set (docs/reference.md §5.1): every name of the table exported from start, labels that do
//! not grow with traffic, and output that `promtool check metrics` accepts.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use support::*;

const SPEC_METRICS: [(&str, &str); 13] = [
    ("keygate_requests_total", "counter"),
    ("keygate_request_duration_seconds", "histogram"),
    ("keygate_upstream_duration_seconds", "histogram"),
    ("keygate_auth_decisions_total", "counter"),
    ("keygate_ratelimit_store_fallback_total", "counter"),
    ("keygate_key_cache_lookups_total", "counter"),
    ("keygate_store_errors_total", "counter"),
    ("keygate_store_up", "gauge"),
    ("keygate_config_reloads_total", "counter"),
    ("keygate_config_last_reload_success_timestamp_seconds", "gauge"),
    ("keygate_tls_cert_expiry_timestamp_seconds", "gauge"),
    ("keygate_connections_active", "gauge"),
    ("keygate_build_info", "gauge"),
];

fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(s, _)| s.to_string())
        .collect()
}

#[tokio::test]
async fn every_metric_of_the_spec_is_exported_with_its_type() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    // Series whose labels are not a fixed set (route, method, status, upstream) exist once
    // traffic made them; one request makes them.
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    Http::new().get(&kg.url("/v1/calls"), Some(key.expose())).await;
    let text = Http::new().get(&kg.admin_url("/metrics"), None).await.text();
    for (name, kind) in SPEC_METRICS {
        assert!(text.contains(&format!("# TYPE {name} {kind}")), "{name} ({kind}) missing:\n{text}");
    }
    for action in ["local", "allow", "deny"] {
        assert_eq!(metric(&text, "keygate_ratelimit_store_fallback_total", &[("action", action)]), Some(0.0));
    }
    for result in ["hit", "miss", "negative_hit", "stale"] {
        assert_eq!(metric(&text, "keygate_key_cache_lookups_total", &[("result", result)]), Some(0.0));
    }
    for op in ["lookup", "limit", "write", "subscribe"] {
        assert_eq!(metric(&text, "keygate_store_errors_total", &[("op", op)]), Some(0.0));
    }
    assert_eq!(metric(&text, "keygate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    kg.stop().await;
}

#[tokio::test]
async fn label_sets_do_not_grow_with_paths_methods_or_keys() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let http = Http::new();
    let drive = async |round: usize| {
        for i in 0..60 {
            let n = round * 1000 + i;
            http.get(&kg.url(&format!("/v1/calls/{n}")), Some(key.expose())).await;
            http.get(&kg.url(&format!("/unrouted/{n}")), None).await;
            http.get(&kg.url("/v1/calls"), Some(keygate::keys::generate_secret().expose())).await;
            http.send(&format!("CUSTOM{}", n % 7), &kg.url(&format!("/v1/calls/{n}")), &[], Bytes::new()).await;
        }
    };
    drive(1).await;
    let first = series(&http.get(&kg.admin_url("/metrics"), None).await.text());
    drive(2).await;
    let second = series(&http.get(&kg.admin_url("/metrics"), None).await.text());
    let grown: Vec<_> = second.difference(&first).collect();
    assert!(grown.is_empty(), "new series from more of the same traffic: {grown:?}");
    let text = http.get(&kg.admin_url("/metrics"), None).await.text();
    assert!(!text.contains("/unrouted/"), "raw paths are never labels");
    assert!(!text.contains("CUSTOM"), "non-standard methods are OTHER");
    assert!(text.contains("method=\"OTHER\""));
    assert!(
        !text.contains("acme") && !text.contains("tenant=") && !text.contains("key_id="),
        "no tenant or key labels"
    );
    kg.stop().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let http = Http::new();
    http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
    http.get(&kg.url("/v1/calls"), None).await;
    let text = http.get(&kg.admin_url("/metrics"), None).await.text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics failed:\n{report}");
    kg.stop().await;
}
