//! The in-process limiter through the proxy (docs/reference.md §4.4), on an injected clock: windows,
//! cost, refusals not counted, and the headers on every response that reached it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate::clock::{Clock, ManualClock};
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

/// Ms since the epoch of `y-m-d` at `h:mm:ss` UTC.
fn utc(y: i64, m: u32, d: u32, h: u64, min: u64, s: u64) -> u64 {
    let days = u64::try_from(keygate::policy::days_from_civil(y, m, d)).unwrap();
    days * 86_400_000 + (h * 3_600 + min * 60 + s) * 1_000
}

/// The test policy with a plan `layered` of three limits: 2 a second, 4 a minute, 6 a month.
fn layered_routes() -> String {
    ROUTES.replace(
        "[plans.unlimited]",
        "[plans.layered]\nlimits = [\n  { name = \"burst\", requests = 2, window = \"1s\" },\n  \
         { name = \"minute\", requests = 4, window = \"60s\" },\n  \
         { name = \"month\", requests = 6, period = \"month\" },\n]\n\n[plans.unlimited]",
    )
}

#[tokio::test]
async fn a_plan_of_three_limits_lists_them_all_reports_the_tightest_and_names_the_one_that_refused() {
    let upstream = upstream().await;
    // February 2027 (28 days), ten minutes before March.
    let start = utc(2027, 2, 28, 23, 50, 0);
    let clock = Arc::new(ManualClock::new(start));
    let kg = Keygate::builder(&upstream.url())
        .routes(&layered_routes().replace("{upstream}", &upstream.url()))
        .clock(clock.clone())
        .start()
        .await;
    let (_, key) = kg.key("acme", "layered", &["calls:read"]);
    let key = key.expose().to_string();
    let http = Http::new();
    let february = "\"burst\";q=2;w=1, \"minute\";q=4;w=60, \"month\";q=6;w=2419200";
    let url = kg.url("/v1/calls");
    let get = || http.get(&url, Some(&key));

    let expect = |answer: &Answer, status: u16, current: &str, limit: &str, remaining: &str| {
        assert_eq!(answer.status, status, "{}", answer.text());
        assert_eq!(answer.header("ratelimit-policy"), february);
        assert!(answer.header("ratelimit").starts_with(current), "{} vs {current}", answer.header("ratelimit"));
        assert_eq!(answer.header("x-ratelimit-limit"), limit);
        assert_eq!(answer.header("x-ratelimit-remaining"), remaining);
    };
    // burst 1 left, minute 3, month 5: the burst has the least room.
    expect(&get().await, 200, "\"burst\";r=1;t=", "2", "1");
    expect(&get().await, 200, "\"burst\";r=0;t=", "2", "0");
    let refused = get().await;
    expect(&refused, 429, "\"burst\";r=0;t=", "2", "0");
    assert_eq!(refused.json()["error"]["limit"], "burst");
    assert_eq!(refused.message(), "Rate limit \"burst\" of 2 requests per second exceeded");
    assert_eq!(refused.header("retry-after"), "2", "the burst's 1 s and a 50 ms sub-window, rounded up");

    // A second later: burst 1 left and minute 1 left; of equals, the one that comes back
    // last (the minute) is reported.
    clock.advance(Duration::from_millis(1_100));
    expect(&get().await, 200, "\"minute\";r=1;t=", "4", "1");
    expect(&get().await, 200, "\"minute\";r=0;t=", "4", "0");
    clock.advance(Duration::from_millis(1_100));
    let refused = get().await;
    expect(&refused, 429, "\"minute\";r=0;t=", "4", "0");
    assert_eq!(refused.json()["error"]["limit"], "minute");
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((55..=61).contains(&retry), "the minute's Retry-After: {retry}");

    // After the minute: the month has 2 left, then 1, then none.
    clock.set(start + 64_000);
    // Burst and month have 1 left each: the month comes back last.
    expect(&get().await, 200, "\"month\";r=1;t=", "6", "1");
    expect(&get().await, 200, "\"month\";r=0;t=", "6", "0");
    clock.advance(Duration::from_millis(1_100));
    let refused = get().await;
    expect(&refused, 429, "\"month\";r=0;t=", "6", "0");
    assert_eq!(refused.json()["error"]["limit"], "month");
    assert_eq!(refused.message(), "Quota \"month\" of 6 requests per month exceeded");
    let to_march = (utc(2027, 3, 1, 0, 0, 0) - clock.now_millis()).div_ceil(1_000);
    assert_eq!(refused.header("retry-after"), to_march.to_string(), "until the quota resets");
    assert_eq!(refused.json()["error"]["retry_after"], to_march);
    assert_eq!(upstream.count(), 6, "6 admitted, each counted once in every limit");

    // March: a fresh month of 31 days.
    clock.set(utc(2027, 3, 1, 0, 0, 0));
    let answer = get().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit-policy"), "\"burst\";q=2;w=1, \"minute\";q=4;w=60, \"month\";q=6;w=2678400");
    kg.stop().await;
}
