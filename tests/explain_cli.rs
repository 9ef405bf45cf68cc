//! `keygate explain` through the real binary: its exit code says the verdict (0 admitted,
//! 1 refused), and a question it cannot answer (a method that is not an HTTP token, a
//! scope the policy does not define) is refused with exit 2 and a message.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml")
}

fn explain(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    cli(&config(), &all)
}

#[test]
fn exit_0_when_admitted_and_1_when_refused() {
    let (code, out, err) = explain(&["GET", "/v1/calls", "--scopes", "calls:read"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("passes"), "{out}");
    for (args, status) in [
        (&["POST", "/v1/calls", "--scopes", "calls:read"][..], "403"),
        (&["GET", "/nowhere", "--scopes", "calls:read"][..], "404"),
        (&["POST", "/v1/analytics", "--scopes", "analytics:read"][..], "405"),
        (&["GET", "/v1/calls/..;/x"][..], "400"),
    ] {
        let (code, out, err) = explain(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.contains(status), "{args:?}: {out}");
        assert!(err.contains(&format!("refused ({status})")), "{args:?}: {err}");
    }
    // A public route passes; a key route asked about without a key or scopes passes
    // nothing and refuses nothing: exit 0.
    assert_eq!(explain(&["GET", "/status"]).0, 0);
    assert_eq!(explain(&["GET", "/v1/calls"]).0, 0);
}

#[test]
fn json_output_is_unchanged_but_the_exit_code_follows_the_verdict() {
    let (code, out, _) = explain(&["POST", "/v1/calls", "--scopes", "calls:read", "--json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["status"], 403);
    assert_eq!(json["route"], "/v1/calls");
    assert_eq!(json["required_scopes"], serde_json::json!(["calls:write"]));
    let (code, out, _) = explain(&["GET", "/v1/calls", "--scopes", "calls:read", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"], 200);
}

#[test]
fn an_undefined_scope_is_refused_with_exit_2() {
    let (code, out, err) = explain(&["GET", "/v1/calls", "--scopes", "calls:raed"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "no verdict for a question that cannot be answered: {out}");
    assert!(err.contains("unknown scope `calls:raed`"), "{err}");
    assert!(err.contains("did you mean `calls:read`?"), "{err}");
    // Defined scopes, and the empty set, are fine.
    assert_eq!(explain(&["GET", "/v1/calls", "--scopes", "calls:read,calls:write"]).0, 0);
    assert_eq!(explain(&["GET", "/v1/calls", "--scopes", ""]).0, 1, "no scope: 403");
}

#[test]
fn a_method_that_is_not_a_token_is_refused_and_lower_case_is_read_as_upper_case_with_a_warning() {
    for bad in ["GE T", "GET/", "", "G\u{e9}T", "(GET)"] {
        let (code, out, err) = explain(&[bad, "/v1/calls", "--scopes", "calls:read"]);
        assert_eq!(code, 2, "{bad:?}: {out}{err}");
        assert!(err.contains("is not an HTTP method"), "{bad:?}: {err}");
    }
    let (code, out, err) = explain(&["get", "/v1/calls", "--scopes", "calls:read"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("request:         GET /v1/calls"), "{out}");
    assert!(err.contains("warning: method `get` read as `GET`"), "{err}");
    // A valid token that is no standard method is explained as such (405 here).
    let (code, out, _) = explain(&["PURGE", "/v1/calls", "--scopes", "calls:read"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("405"), "{out}");
}

#[test]
fn an_invalid_config_is_exit_78_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.toml"), "policy = \"routes.toml\"\nunknown = 1\n").unwrap();
    let (code, _, err) = cli(&dir.path().join("keygate.toml"), &["explain", "GET", "/v1/calls"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("keygate.toml:2:1"), "{err}");
}

#[test]
fn a_plan_lists_its_limits_in_order_and_an_unknown_plan_is_a_usage_error() {
    let (code, out, err) = explain(&["GET", "/v1/calls", "--scopes", "calls:read", "--plan", "pro"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("plan:            pro, admitted only if every limit has room"), "{out}");
    let burst = out.find("burst: 10 requests per 1s (sliding window)").expect("the burst");
    let minute = out.find("minute: 300 requests per 1m (sliding window)").expect("the minute");
    let month = out.find("month: 100000 requests per calendar month (UTC").expect("the month");
    assert!(burst < minute && minute < month, "in the plan's order: {out}");
    assert!(out.contains("concurrency:     at most 5 requests of the tenant in flight at once"), "{out}");

    let (_, out, _) = explain(&["GET", "/v1/calls", "--scopes", "calls:read", "--plan", "agency", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["plan"], "agency");
    assert_eq!(json["limits"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["concurrency"], 50, "{json}");
    let (_, out, _) = explain(&["GET", "/v1/calls", "--scopes", "calls:read", "--plan", "starter", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["limits"], serde_json::json!(["default: 60 requests per 1m (sliding window)"]));
    assert!(json.get("concurrency").is_none(), "no cap, not shown: {json}");

    let (code, _, err) = explain(&["GET", "/v1/calls", "--plan", "platinum"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown plan `platinum` (the policy's plans: agency, pro, starter, trial)"), "{err}");
}
