//! The admin listener (docs/reference.md §5.1) and the metrics the core records.

mod support;

use support::*;

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let http = Http::new();
    let health = http.get(&kg.admin_url("/healthz"), None).await;
    assert_eq!(health.status, 200);
    let ready = http.get(&kg.admin_url("/readyz"), None).await;
    assert_eq!(ready.status, 200);
    let body = ready.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["draining"], false);
    assert_eq!(body["policy"]["hash"].as_str().unwrap().len(), 64);

    let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
    for result in [
        "ok",
        "missing",
        "malformed",
        "unknown",
        "expired",
        "revoked",
        "forbidden",
        "no_api_access",
        "rate_limited",
        "store_unavailable",
    ] {
        for mode in ["enforce", "shadow"] {
            assert_eq!(
                metric(&metrics, "keygate_auth_decisions_total", &[("result", result), ("mode", mode)]),
                Some(0.0),
                "{result}/{mode} exported at 0 from start"
            );
        }
    }
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    http.get(&kg.url("/v1/calls/1"), Some(key.expose())).await;
    http.get(&kg.url("/v1/calls/2"), None).await;
    http.get(&kg.url("/nowhere/3"), None).await;
    let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
    assert_eq!(metric(&metrics, "keygate_auth_decisions_total", &[("result", "ok"), ("mode", "enforce")]), Some(1.0));
    assert_eq!(
        metric(&metrics, "keygate_auth_decisions_total", &[("result", "missing"), ("mode", "enforce")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "keygate_requests_total", &[("route", "/v1/calls"), ("method", "GET"), ("status", "200")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "keygate_requests_total", &[("route", "none"), ("method", "GET"), ("status", "404")]),
        Some(1.0)
    );
    assert!(metrics.contains("keygate_request_duration_seconds_bucket{route=\"/v1/calls\""));
    assert!(!metrics.contains("/v1/calls/1"), "raw paths are never labels");
    assert!(!metrics.contains("acme"), "tenants are never labels");
    kg.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_when_shutdown_begins() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).settings("[server]\ndrain_delay = \"1s\"").start().await;
    let admin = kg.admin_url("/readyz");
    let Keygate { running, dir: _dir, .. } = kg;
    let running = running.unwrap();
    let app = running.app.clone();
    let stopping = tokio::spawn(running.shutdown());
    let http = Http::new();
    assert!(eventually(std::time::Duration::from_secs(1), async || app.is_draining()).await);
    let ready = http.get(&admin, None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["draining"], true);
    stopping.await.unwrap();
}
