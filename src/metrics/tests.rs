//! Unit tests of `metrics.rs`.

use super::*;

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn fixed_label_values_exported_at_zero_from_start() {
    let m = Metrics::new();
    let text = m.encode();
    for res in AuthResult::ALL {
        for mode in DecisionMode::ALL {
            let line = format!("keygate_auth_decisions_total{{mode=\"{mode}\",result=\"{res}\"}} 0");
            assert!(has_line(&text, &line), "missing {line}\n{text}");
        }
    }
    for (name, label, values) in [
        (
            "ratelimit_store_fallback_total",
            "action",
            STORE_FALLBACK_ACTIONS.iter().map(|&v| store_fallback_label(v).0).collect::<Vec<_>>(),
        ),
        ("key_cache_lookups_total", "result", CacheResult::ALL.iter().map(|v| v.as_str()).collect()),
        ("store_errors_total", "op", StoreOp::ALL.iter().map(|v| v.as_str()).collect()),
        ("config_reloads_total", "result", ReloadResult::ALL.iter().map(|v| v.as_str()).collect()),
    ] {
        for v in values {
            let line = format!("keygate_{name}{{{label}=\"{v}\"}} 0");
            assert!(has_line(&text, &line), "missing {line}\n{text}");
        }
    }
    for line in [
        "keygate_store_up 1",
        "keygate_config_last_reload_success_timestamp_seconds 0",
        "keygate_tls_cert_expiry_timestamp_seconds 0",
        "keygate_connections_active 0",
        "keygate_failed_auth_limited_total 0",
        "keygate_preflights_limited_total 0",
        "keygate_concurrency_refused_total 0",
        "keygate_concurrency_slots_held 0",
        "keygate_usage_flushes_total{result=\"success\"} 0",
        "keygate_usage_flushes_total{result=\"failure\"} 0",
        "keygate_usage_dropped_total 0",
        &format!("keygate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(has_line(&text, line), "missing {line}\n{text}");
    }
    // Exactly the label sets of docs/reference.md §5.1.
    assert_eq!(AuthResult::ALL.len(), 10);
    assert_eq!(text.lines().filter(|l| l.starts_with("keygate_auth_decisions_total{")).count(), 30);
}

#[test]
fn every_metric_is_prefixed_and_of_its_type() {
    let m = Metrics::new();
    m.record_request("/v1", &http::Method::GET, 200, Duration::from_millis(3));
    m.observe_upstream("api", Duration::from_millis(2));
    let text = m.encode();
    let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
    let mut expected = vec![
        "keygate_auth_decisions_total counter",
        "keygate_build_info gauge",
        "keygate_config_last_reload_success_timestamp_seconds gauge",
        "keygate_config_last_reload_successful gauge",
        "keygate_concurrency_refused_total counter",
        "keygate_concurrency_slots_held gauge",
        "keygate_config_reloads_total counter",
        "keygate_connections_active gauge",
        "keygate_failed_auth_limited_total counter",
        "keygate_preflights_limited_total counter",
        "keygate_key_cache_lookups_total counter",
        "keygate_ratelimit_store_fallback_total counter",
        "keygate_request_duration_seconds histogram",
        "keygate_requests_total counter",
        "keygate_store_errors_total counter",
        "keygate_store_up gauge",
        "keygate_tls_cert_expiry_timestamp_seconds gauge",
        "keygate_upstream_duration_seconds histogram",
        "keygate_usage_dropped_total counter",
        "keygate_usage_flush_lag_seconds gauge",
        "keygate_usage_flushes_total counter",
    ];
    expected.sort_unstable();
    let mut types = types;
    types.sort_unstable();
    assert_eq!(types, expected);
}

#[test]
fn requests_and_methods() {
    let m = Metrics::new();
    let weird = http::Method::from_bytes(b"BREW").expect("extension method");
    m.record_request("/v1/", &weird, 404, Duration::from_millis(1));
    m.record_request("none", &http::Method::PATCH, 404, Duration::from_millis(1));
    m.record_request("none", &http::Method::PATCH, 404, Duration::from_millis(1));
    m.record_request("/v1/", &http::Method::GET, 7, Duration::from_millis(1));
    let text = m.encode();
    assert!(has_line(&text, r#"keygate_requests_total{method="OTHER",route="/v1/",status="404"} 1"#));
    assert!(has_line(&text, r#"keygate_requests_total{method="PATCH",route="none",status="404"} 2"#));
    assert!(has_line(&text, r#"keygate_requests_total{method="GET",route="/v1/",status="7"} 1"#));
    assert!(!text.contains("BREW"));
    for (method, label) in [
        (http::Method::GET, "GET"),
        (http::Method::HEAD, "HEAD"),
        (http::Method::POST, "POST"),
        (http::Method::PUT, "PUT"),
        (http::Method::DELETE, "DELETE"),
        (http::Method::CONNECT, "CONNECT"),
        (http::Method::OPTIONS, "OPTIONS"),
        (http::Method::TRACE, "TRACE"),
        (http::Method::PATCH, "PATCH"),
        (http::Method::from_bytes(b"get").expect("method"), "OTHER"),
        (http::Method::from_bytes(b"PROPFIND").expect("method"), "OTHER"),
    ] {
        assert_eq!(method_label(&method), label);
    }
}

#[test]
fn status_rendering() {
    for s in [0u16, 7, 42, 200, 404, 599, 9_999, 65_535] {
        let mut buf = [0u8; 5];
        assert_eq!(status_str(s, &mut buf), s.to_string());
    }
}

#[test]
fn histogram_buckets() {
    let m = Metrics::new();
    m.record_request("/a", &http::Method::GET, 200, Duration::from_micros(300));
    m.observe_upstream("billing", Duration::from_secs(20));
    let text = m.encode();
    for le in [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "2.5", "5", "10", "+Inf",
    ] {
        let line = format!("keygate_request_duration_seconds_bucket{{route=\"/a\",le=\"{le}\"}}");
        assert!(text.contains(&line), "missing {line}\n{text}");
        let line = format!("keygate_upstream_duration_seconds_bucket{{upstream=\"billing\",le=\"{le}\"}}");
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    assert!(has_line(&text, r#"keygate_request_duration_seconds_bucket{route="/a",le="0.00025"} 0"#));
    assert!(has_line(&text, r#"keygate_request_duration_seconds_bucket{route="/a",le="0.0005"} 1"#));
    assert!(has_line(&text, r#"keygate_upstream_duration_seconds_bucket{upstream="billing",le="10"} 0"#));
    assert!(has_line(&text, r#"keygate_upstream_duration_seconds_bucket{upstream="billing",le="+Inf"} 1"#));
}

#[test]
fn typed_recorders() {
    let m = Metrics::new();
    m.auth_decision(AuthResult::NoApiAccess, RouteMode::Shadow);
    m.auth_decision(AuthResult::Ok, RouteMode::Enforce);
    m.auth_decision(AuthResult::Ok, RouteMode::Enforce);
    m.store_fallback(OnStoreError::Deny);
    m.cache_lookup(CacheResult::NegativeHit);
    m.store_error(StoreOp::Subscribe);
    m.set_store_up(false);
    m.config_reload(ReloadResult::Success, Some(1_700_000_000.5));
    m.config_reload(ReloadResult::Failure, Some(1_800_000_000.0));
    m.set_cert_expiry(1_900_000_000.0);
    m.failed_auth_limited();
    m.preflight_limited();
    m.preflight_limited();
    let text = m.encode();
    for line in [
        r#"keygate_auth_decisions_total{mode="shadow",result="no_api_access"} 1"#,
        r#"keygate_auth_decisions_total{mode="enforce",result="no_api_access"} 0"#,
        r#"keygate_auth_decisions_total{mode="enforce",result="ok"} 2"#,
        r#"keygate_ratelimit_store_fallback_total{action="deny"} 1"#,
        r#"keygate_key_cache_lookups_total{result="negative_hit"} 1"#,
        r#"keygate_store_errors_total{op="subscribe"} 1"#,
        r#"keygate_config_reloads_total{result="success"} 1"#,
        r#"keygate_config_reloads_total{result="failure"} 1"#,
        "keygate_store_up 0",
        "keygate_config_last_reload_success_timestamp_seconds 1700000000.5",
        "keygate_tls_cert_expiry_timestamp_seconds 1900000000",
        "keygate_failed_auth_limited_total 1",
        "keygate_preflights_limited_total 2",
    ] {
        assert!(has_line(&text, line), "missing {line}\n{text}");
    }
}

#[test]
fn connection_guard_decrements_on_drop() {
    let m = Metrics::new();
    let a = m.connection_opened();
    let b = m.connection_opened();
    assert!(has_line(&m.encode(), "keygate_connections_active 2"));
    drop(a);
    assert!(has_line(&m.encode(), "keygate_connections_active 1"));
    let handle = std::thread::spawn(move || drop(b));
    handle.join().expect("thread");
    assert!(has_line(&m.encode(), "keygate_connections_active 0"));
}

#[test]
fn own_registry_not_the_global_one() {
    // Two instances in one process: registering either on the default registry twice
    // would have panicked.
    let a = Metrics::new();
    let b = Metrics::new();
    a.store_error(StoreOp::Lookup);
    assert!(has_line(&a.encode(), r#"keygate_store_errors_total{op="lookup"} 1"#));
    assert!(has_line(&b.encode(), r#"keygate_store_errors_total{op="lookup"} 0"#));
    assert!(prometheus::gather().iter().all(|family| !family.name().starts_with("keygate_")));
    assert!(!a.registry().gather().is_empty());
}

#[test]
fn a_routes_resolved_children_count_what_labelled_lookups_count_and_appear_only_when_used() {
    let m = Metrics::new();
    let route = m.route("/v1", "api");
    let untouched = m.encode();
    assert!(!untouched.contains(r#"route="/v1""#), "nothing exported before use\n{untouched}");
    assert!(!untouched.contains(r#"upstream="api""#), "nothing exported before use\n{untouched}");
    route.record_request(&http::Method::GET, 200, Duration::from_millis(1));
    route.record_request(&http::Method::GET, 200, Duration::from_millis(1));
    // An uncommon status and a method outside the standard ones take the labelled path.
    route.record_request(&http::Method::from_bytes(b"BREW").unwrap(), 418, Duration::from_millis(1));
    m.record_request("/v1", &http::Method::GET, 200, Duration::from_millis(1));
    route.observe_upstream(Duration::from_millis(2));
    m.observe_upstream("api", Duration::from_millis(2));
    let text = m.encode();
    assert!(has_line(&text, r#"keygate_requests_total{method="GET",route="/v1",status="200"} 3"#), "{text}");
    assert!(has_line(&text, r#"keygate_requests_total{method="OTHER",route="/v1",status="418"} 1"#), "{text}");
    assert!(has_line(&text, r#"keygate_request_duration_seconds_count{route="/v1"} 4"#), "{text}");
    assert!(has_line(&text, r#"keygate_upstream_duration_seconds_count{upstream="api"} 2"#), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("keygate_requests_total{")).count(), 2, "{text}");
}

#[test]
fn the_config_state_is_one_info_series_and_a_gauge() {
    let m = Metrics::new();
    m.set_config_state("aaa", "aaa", true);
    m.set_config_state("aaa", "bbb", false);
    let text = m.encode();
    assert!(has_line(&text, "keygate_config_last_reload_successful 0"), "{text}");
    assert!(has_line(&text, r#"keygate_config_info{disk_sha256="bbb",serving_sha256="aaa"} 1"#), "{text}");
    // The earlier hashes are gone: one series, whatever the number of reloads.
    assert_eq!(text.lines().filter(|l| l.starts_with("keygate_config_info{")).count(), 1, "{text}");
    m.set_config_state("bbb", "bbb", true);
    let text = m.encode();
    assert!(has_line(&text, "keygate_config_last_reload_successful 1"), "{text}");
    assert!(has_line(&text, r#"keygate_config_info{disk_sha256="bbb",serving_sha256="bbb"} 1"#), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("keygate_config_info{")).count(), 1, "{text}");
}
