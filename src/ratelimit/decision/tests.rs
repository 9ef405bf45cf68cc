//! Unit tests of the plan limit's geometry and of the rate-limit response headers.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::policy::Limit;

use super::*;

fn limit(requests: u64, secs: u64) -> Limit {
    Limit { requests, window: Duration::from_secs(secs) }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().expect("ascii header"))
}

#[test]
fn sub_window_geometry() {
    assert_eq!(limit(1, 60).sub_window_millis(), 3_000);
    assert_eq!(limit(1, 60).window_millis(), 60_000);
    assert_eq!(limit(1, 1).sub_window_millis(), 50);
    // Degenerate windows never divide by zero and round up.
    assert_eq!(limit(1, 0).sub_window_millis(), 1);
    let odd = Limit { requests: 1, window: Duration::from_millis(1_001) };
    assert_eq!(odd.sub_window_millis(), 51);
    assert_eq!(odd.window_millis(), 1_020);
    let huge = Limit { requests: 1, window: Duration::MAX };
    assert_eq!(huge.window_millis(), u64::MAX);
}

#[test]
fn seconds_round_up_without_overflowing() {
    assert_eq!(ceil_secs(Duration::ZERO), 0);
    assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
    assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
    assert_eq!(ceil_secs(Duration::from_millis(60_001)), 61);
    assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
}

#[test]
fn headers_when_admitted() {
    let d = Decision {
        allowed: true,
        limit: 300,
        index: 0,
        remaining: 299,
        reset: Duration::from_millis(61_001),
        retry_after: None,
    };
    let mut h = HeaderMap::new();
    d.write_headers(&PlanHeaders::new("pro", limit(300, 60)), &mut h);
    assert_eq!(header(&h, "ratelimit-policy"), Some(r#""pro";q=300;w=60"#));
    assert_eq!(header(&h, "ratelimit"), Some(r#""pro";r=299;t=62"#));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("300"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("299"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("62"));
    assert_eq!(header(&h, "retry-after"), None);
    assert_eq!(h.len(), 5);
    assert_eq!(d.retry_after_secs(), None);
}

#[test]
fn headers_when_refused() {
    let d = Decision {
        allowed: false,
        limit: 10,
        index: 0,
        remaining: 0,
        reset: Duration::from_secs(60),
        retry_after: Some(Duration::from_millis(12_000)),
    };
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("999"));
    d.write_headers(&PlanHeaders::new("free", limit(10, 60)), &mut h);
    assert_eq!(header(&h, "ratelimit-policy"), Some(r#""free";q=10;w=60"#));
    assert_eq!(header(&h, "ratelimit"), Some(r#""free";r=0;t=60"#));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("10"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("60"));
    assert_eq!(header(&h, "retry-after"), Some("12"));
    assert_eq!(h.get_all("retry-after").iter().count(), 1);
    assert_eq!(d.retry_after_secs(), Some(12));
}

#[test]
fn retry_after_is_rounded_up_and_at_least_one() {
    let mut d = Decision {
        allowed: false,
        limit: 1,
        index: 0,
        remaining: 0,
        reset: Duration::ZERO,
        retry_after: Some(Duration::from_millis(1)),
    };
    assert_eq!(d.retry_after_secs(), Some(1));
    d.retry_after = Some(Duration::ZERO);
    assert_eq!(d.retry_after_secs(), Some(1));
    d.retry_after = Some(Duration::from_millis(2_001));
    assert_eq!(d.retry_after_secs(), Some(3));
    d.retry_after = None;
    d.reset = Duration::from_millis(4_500);
    assert_eq!(d.retry_after_secs(), Some(5));
    let mut h = HeaderMap::new();
    d.write_headers(&PlanHeaders::new("p", limit(1, 1)), &mut h);
    assert_eq!(header(&h, "retry-after"), Some("5"));
}

#[test]
fn plan_names_are_escaped_or_skipped() {
    let d = Decision { allowed: true, limit: 1, index: 0, remaining: 0, reset: Duration::ZERO, retry_after: None };
    let mut h = HeaderMap::new();
    d.write_headers(&PlanHeaders::new(r#"a"b\c"#, limit(1, 1)), &mut h);
    assert_eq!(header(&h, "ratelimit-policy"), Some(r#""a\"b\\c";q=1;w=1"#));
    assert_eq!(header(&h, "ratelimit"), Some(r#""a\"b\\c";r=0;t=0"#));

    for bad in ["new\nline", "nul\0", "caf\u{e9}", "tab\t"] {
        let mut h = HeaderMap::new();
        d.write_headers(&PlanHeaders::new(bad, limit(1, 1)), &mut h);
        assert!(h.get("ratelimit-policy").is_none(), "{bad:?}");
        assert!(h.get("ratelimit").is_none(), "{bad:?}");
        assert_eq!(header(&h, "x-ratelimit-limit"), Some("1"));
    }
}

#[test]
fn numbers_are_written_in_full() {
    let d = Decision {
        allowed: false,
        limit: u64::MAX,
        index: 0,
        remaining: 0,
        reset: Duration::from_secs(u64::MAX),
        retry_after: Some(Duration::from_millis(1)),
    };
    let mut h = HeaderMap::new();
    d.write_headers(&PlanHeaders::new("", limit(u64::MAX, 10)), &mut h);
    assert_eq!(header(&h, "ratelimit-policy"), Some(r#""";q=18446744073709551615;w=10"#));
    assert_eq!(header(&h, "ratelimit"), Some(r#""";r=0;t=18446744073709551615"#));
    assert_eq!(header(&h, "x-ratelimit-limit"), Some("18446744073709551615"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("18446744073709551615"));
    assert_eq!(header(&h, "retry-after"), Some("1"));
}
