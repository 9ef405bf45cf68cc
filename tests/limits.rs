//! The in-process limiter through the proxy (docs/reference.md §4.4), on an injected clock: windows,
//! cost, refusals not counted, and the headers on every response that reached it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate::clock::ManualClock;
use support::*;

const START_MS: u64 = 1_800_000_000_000; // a whole number of sub-windows

async fn tiny_plan() -> (Upstream, Keygate, Arc<ManualClock>, String) {
    let upstream = upstream().await;
    let clock = Arc::new(ManualClock::new(START_MS));
    let kg = Keygate::builder(&upstream.url()).clock(clock.clone()).start().await;
    let (_, key) = kg.key("small", "tiny", &["calls:read", "webhooks:manage"]);
    (upstream, kg, clock, key.expose().to_string())
}

#[tokio::test]
async fn the_limit_is_exact_and_429_carries_retry_after_and_both_header_families() {
    let (upstream, kg, _clock, key) = tiny_plan().await;
    let http = Http::new();
    for remaining in [2, 1, 0] {
        let answer = http.get(&kg.url("/v1/calls"), Some(&key)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-policy"), "\"tiny\";q=3;w=10");
        assert_eq!(answer.header("x-ratelimit-limit"), "3");
        assert_eq!(answer.header("x-ratelimit-remaining"), remaining.to_string());
        assert!(answer.header("ratelimit").starts_with(&format!("\"tiny\";r={remaining};t=")));
        assert!(
            answer.header("x-ratelimit-reset").parse::<u64>().unwrap() <= 11,
            "at most one window plus a sub-window"
        );
    }
    let refused = http.get(&kg.url("/v1/calls"), Some(&key)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_type(), "rate_limited");
    assert_eq!(refused.message(), "Rate limit of 3 requests per 10 seconds exceeded");
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=11).contains(&retry), "{retry}");
    assert_eq!(refused.json()["error"]["retry_after"], retry);
    assert_eq!(refused.header("x-ratelimit-remaining"), "0");
    assert!(refused.header("ratelimit").starts_with("\"tiny\";r=0;t="));
    assert_eq!(upstream.count(), 3);
    kg.stop().await;
}

#[tokio::test]
async fn refused_requests_are_not_counted_and_the_window_slides() {
    let (upstream, kg, clock, key) = tiny_plan().await;
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    }
    // A client hammering while limited does not push its own window further away.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(100));
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 429);
    }
    // 10 s after the first admissions (plus one sub-window), all three are free again.
    clock.set(START_MS + 10_500);
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    }
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 429);
    assert_eq!(upstream.count(), 6);
    kg.stop().await;
}

#[tokio::test]
async fn retry_after_is_when_a_request_would_be_admitted() {
    let (_upstream, kg, clock, key) = tiny_plan().await;
    let http = Http::new();
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    clock.advance(Duration::from_secs(4));
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    let refused = http.get(&kg.url("/v1/calls"), Some(&key)).await;
    assert_eq!(refused.status, 429);
    // The first admission leaves the window 10 s (+ one 500 ms sub-window) after it: ~6.5 s.
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((6..=7).contains(&retry), "retry-after {retry}");
    clock.advance(Duration::from_secs(retry));
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200, "admitted once Retry-After passed");
    kg.stop().await;
}

#[tokio::test]
async fn a_route_cost_counts_that_many_requests() {
    let (_upstream, kg, _clock, key) = tiny_plan().await;
    let http = Http::new();
    let bearer = format!("Bearer {key}");
    let answer = http.send("POST", &kg.url("/v1/webhooks"), &[("authorization", &bearer)], Bytes::new()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-ratelimit-remaining"), "1");
    let answer = http.send("POST", &kg.url("/v1/webhooks"), &[("authorization", &bearer)], Bytes::new()).await;
    assert_eq!(answer.status, 429, "cost 2 does not fit in the 1 left");
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200, "cost 1 still fits");
    kg.stop().await;
}

#[tokio::test]
async fn tenants_have_separate_windows() {
    let (_upstream, kg, _clock, key) = tiny_plan().await;
    let (_, other) = kg.key("other", "tiny", &["calls:read"]);
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 200);
    }
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(&key)).await.status, 429);
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(other.expose())).await.status, 200);
    kg.stop().await;
}

#[tokio::test]
async fn shadow_mode_forwards_whatever_the_decision_and_records_it() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (key_id, key) = kg.key("acme", "pro", &["calls:read"]);
    let http = Http::new();
    // No key: forwarded, no identity.
    let answer = http.get(&kg.url("/v1/analytics/daily"), None).await;
    assert_eq!(answer.status, 200);
    assert!(upstream.last().headers.get("x-keygate-tenant").is_none());
    // Valid key without the scope: forwarded with identity.
    let answer = http.get(&kg.url("/v1/analytics/daily"), Some(key.expose())).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last().headers["x-keygate-key-id"], key_id.as_str());
    let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
    let shadow = |result| metric(&metrics, "keygate_auth_decisions_total", &[("result", result), ("mode", "shadow")]);
    assert_eq!(shadow("missing"), Some(1.0), "{metrics}");
    assert_eq!(shadow("forbidden"), Some(1.0));
    assert_eq!(
        metric(&metrics, "keygate_auth_decisions_total", &[("result", "forbidden"), ("mode", "enforce")]),
        Some(0.0)
    );
    kg.stop().await;
}

#[tokio::test]
async fn shadow_mode_counts_admitted_requests_against_the_limit() {
    let upstream = upstream().await;
    let clock = Arc::new(ManualClock::new(START_MS));
    let kg = Keygate::builder(&upstream.url()).clock(clock).start().await;
    let (_, key) = kg.key("small", "tiny", &["analytics:read", "calls:read"]);
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/analytics"), Some(key.expose())).await.status, 200);
    }
    let shadowed = http.get(&kg.url("/v1/analytics"), Some(key.expose())).await;
    assert_eq!(shadowed.status, 200, "shadow mode lets an over-limit request through");
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(key.expose())).await.status, 429, "the shadow requests counted");
    kg.stop().await;
}
