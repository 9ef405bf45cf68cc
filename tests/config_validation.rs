//! Config validation through the library API: the shipped example configs load cleanly,
//! and each invalid config under `tests/fixtures/invalid/` (one file per case) is refused
//! with the expected message at the exact line and column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use keygate::diag::Diagnostic;
use keygate::policy::Policy;
use keygate::settings::Settings;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(kind: &str, name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures/invalid").join(kind).join(name)
}

/// Asserts that `errors` is exactly one error at `line:column` whose message holds
/// `fragment`, printed with the fixture's path.
fn assert_one_error(path: &Path, errors: &[Diagnostic], line: usize, column: usize, fragment: &str) {
    assert_eq!(errors.len(), 1, "{}: expected one error, got {errors:#?}", path.display());
    let error = &errors[0];
    assert!(error.is_error(), "{error}");
    assert_eq!(error.file, path, "{error}");
    assert!(error.message.contains(fragment), "{}: `{}` should contain `{fragment}`", path.display(), error.message);
    assert_eq!(
        (error.line, error.column),
        (line, column),
        "{}: wrong position for `{}`",
        path.display(),
        error.message
    );
    let shown = error.to_string();
    if line > 0 {
        assert!(shown.starts_with(&format!("{}:{line}:{column}: error: ", path.display())), "{shown}");
    }
}

fn policy_errors(name: &str) -> (PathBuf, Vec<Diagnostic>) {
    let path = fixture("policy", name);
    match Policy::load(&path) {
        Ok((_, warnings)) => panic!("{} was accepted (warnings: {warnings:#?})", path.display()),
        Err(errors) => (path, errors),
    }
}

fn settings_errors(name: &str) -> (PathBuf, Vec<Diagnostic>) {
    let path = fixture("settings", name);
    match Settings::load(&path) {
        Ok((_, warnings)) => panic!("{} was accepted (warnings: {warnings:#?})", path.display()),
        Err(errors) => (path, errors),
    }
}

/// `policy_case!(test_name, "fixture.toml", line, column, "message fragment")`.
macro_rules! policy_case {
    ($test:ident, $file:literal, $line:expr, $column:expr, $fragment:expr) => {
        #[test]
        fn $test() {
            let (path, errors) = policy_errors($file);
            assert_one_error(&path, &errors, $line, $column, $fragment);
        }
    };
}

/// `settings_case!(test_name, "fixture.toml", line, column, "message fragment")`.
macro_rules! settings_case {
    ($test:ident, $file:literal, $line:expr, $column:expr, $fragment:expr) => {
        #[test]
        fn $test() {
            let (path, errors) = settings_errors($file);
            assert_one_error(&path, &errors, $line, $column, $fragment);
        }
    };
}

/// Every policy fixture with a test; [`every_fixture_has_a_case`] keeps this in step with
/// the directory.
const POLICY_FIXTURES: &[&str] = &[
    "auth_none_with_scopes.toml",
    "bad_auth.toml",
    "bad_duration.toml",
    "bad_mode.toml",
    "bad_on_store_error.toml",
    "bad_paths_option.toml",
    "bad_prefix.toml",
    "bad_scope_name.toml",
    "bad_upstream_url.toml",
    "catch_all_overlaps_methods.toml",
    "default_allow.toml",
    "duplicate_limit_names.toml",
    "duplicate_method.toml",
    "duplicate_prefix_without_methods.toml",
    "empty_methods.toml",
    "empty_policy.toml",
    "https_upstream.toml",
    "limit_window_and_period.toml",
    "limits_and_rpm.toml",
    "lowercase_method.toml",
    "many_errors.toml",
    "many_structural_errors.toml",
    "negative_requests.toml",
    "overlapping_methods.toml",
    "prefix_with_query.toml",
    "requests_without_window.toml",
    "reset_day_out_of_range.toml",
    "route_without_prefix.toml",
    "route_without_upstream.toml",
    "rpm_and_requests.toml",
    "syntax_error.toml",
    "unknown_field.toml",
    "unknown_scope.toml",
    "unknown_top_level_table.toml",
    "unknown_upstream.toml",
    "upstream_without_url.toml",
    "window_not_whole_seconds.toml",
    "window_without_requests.toml",
    "wrong_type.toml",
    "zero_cost.toml",
    "zero_limit.toml",
    "zero_max_body_bytes.toml",
    "zero_max_keys.toml",
];

const SETTINGS_FIXTURES: &[&str] = &[
    "admin_shares_listen_address.toml",
    "bad_duration.toml",
    "bad_keys_source.toml",
    "bad_listen_address.toml",
    "bad_on_store_error.toml",
    "bad_redis_url.toml",
    "bad_trusted_proxy.toml",
    "many_errors.toml",
    "max_header_bytes_too_small.toml",
    "redis_backend_without_redis.toml",
    "redis_keys_without_redis.toml",
    "redis_without_url.toml",
    "syntax_error.toml",
    "tls_without_key.toml",
    "unknown_field.toml",
    "unknown_table.toml",
    "zero_header_read_timeout.toml",
    "zero_max_connections.toml",
    "zero_replicas.toml",
];

// --- the shipped examples -------------------------------------------------------------

#[test]
fn shipped_configs_load_without_errors_or_warnings() {
    let settings_path = manifest_dir().join("config/keygate.toml");
    let (settings, warnings) = Settings::load(&settings_path).unwrap_or_else(|errors| {
        panic!("config/keygate.toml: {errors:#?}");
    });
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(settings.policy_file, manifest_dir().join("config/routes.toml"));

    let (policy, warnings) = Policy::load(&settings.policy_file).unwrap_or_else(|errors| {
        panic!("config/routes.toml: {errors:#?}");
    });
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(policy.file, settings.policy_file);
    assert_eq!(policy.hash.len(), 64);
    for plan in ["trial", "starter", "pro", "agency"] {
        assert!(policy.plans.contains_key(plan), "plan {plan}");
    }
    assert!(!policy.plans["trial"].api_access);
    assert_eq!(policy.plans["agency"].max_keys, None);
    for scope in ["calls:read", "calls:write", "phone_numbers:write", "analytics:read", "webhooks:manage"] {
        assert!(policy.scopes.contains_key(scope), "scope {scope}");
    }
    let prefixes: BTreeSet<&str> = policy.routes.iter().map(|r| &*r.prefix).collect();
    let expected: BTreeSet<&str> = [
        "/v1/calls",
        "/v1/agents",
        "/v1/contacts",
        "/v1/appointments",
        "/v1/phone-numbers",
        "/v1/webhooks",
        "/v1/analytics",
        "/status",
    ]
    .into();
    assert_eq!(prefixes, expected);
}

#[test]
fn shipped_policy_routes_requests_as_documented() {
    use keygate::policy::{RouteAuth, RouteMatch, RouteMode};
    use keygate::settings::OnStoreError;

    let (policy, _) = Policy::load(&manifest_dir().join("config/routes.toml")).unwrap();
    let scopes_for = |method: http::Method, path: &str| match policy.routes.find(path, &method) {
        RouteMatch::Found(route) => match &route.auth {
            RouteAuth::Key { scopes } => scopes.join(","),
            RouteAuth::None => "public".to_string(),
        },
        RouteMatch::MethodNotAllowed { .. } => "405".to_string(),
        RouteMatch::NotFound => "404".to_string(),
    };
    // The paid plans show several limits: a burst, a minute and a calendar month.
    for plan in ["pro", "agency"] {
        let names: Vec<&str> = policy.plans[plan].limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["burst", "minute", "month"], "{plan}");
        assert_eq!(policy.plans[plan].limits[2].rule.kind, keygate::policy::LimitKind::Month { reset_day: 1 });
    }
    assert_eq!(scopes_for(http::Method::GET, "/v1/calls/42"), "calls:read");
    assert_eq!(scopes_for(http::Method::POST, "/v1/calls"), "calls:write");
    assert_eq!(scopes_for(http::Method::DELETE, "/v1/phone-numbers/7"), "phone_numbers:write");
    assert_eq!(scopes_for(http::Method::HEAD, "/v1/appointments"), "appointments:read");
    assert_eq!(scopes_for(http::Method::PUT, "/v1/webhooks/1"), "webhooks:manage");
    assert_eq!(scopes_for(http::Method::GET, "/status"), "public");
    assert_eq!(scopes_for(http::Method::POST, "/v1/analytics"), "405");
    assert_eq!(scopes_for(http::Method::GET, "/v1/callsign"), "404");
    assert_eq!(scopes_for(http::Method::GET, "/"), "404");

    let webhooks = policy.routes.iter().find(|r| &*r.prefix == "/v1/webhooks").unwrap();
    assert_eq!((webhooks.cost, webhooks.on_store_error), (5, Some(OnStoreError::Deny)));
    let analytics = policy.routes.iter().find(|r| &*r.prefix == "/v1/analytics").unwrap();
    assert_eq!(analytics.mode, RouteMode::Shadow);
}

// --- one fixture per invalid policy -----------------------------------------------------

policy_case!(unknown_field, "unknown_field.toml", 14, 1, "unknown field `scope`");
/// The misspelt table is reported, and so is what its absence leaves behind (no route):
/// both in one run.
#[test]
fn unknown_top_level_table() {
    let (path, errors) = policy_errors("unknown_top_level_table.toml");
    let found: Vec<(usize, usize, bool)> =
        errors.iter().map(|e| (e.line, e.column, e.message.contains("unknown field `upstream`"))).collect();
    assert_eq!(found, [(0, 0, false), (5, 2, true)], "{errors:#?}");
    assert!(errors[0].message.contains("a policy with no routes"), "{errors:#?}");
    assert!(errors.iter().all(|e| e.is_error() && e.file == path));
}
policy_case!(syntax_error, "syntax_error.toml", 12, 20, "invalid basic string");
policy_case!(wrong_type, "wrong_type.toml", 14, 8, "invalid type: string \"5\"");
policy_case!(unknown_upstream, "unknown_upstream.toml", 14, 12, "upstream `backend`, which is not defined");
policy_case!(unknown_scope, "unknown_scope.toml", 14, 25, "scope `call:write`, which is not in [scopes]");
policy_case!(auth_none_with_scopes, "auth_none_with_scopes.toml", 14, 10, "cannot require scopes");
policy_case!(
    overlapping_methods,
    "overlapping_methods.toml",
    19,
    11,
    "lines 11 and 17 both have the prefix `/v1/calls` and both take GET"
);
policy_case!(
    duplicate_prefix_without_methods,
    "duplicate_prefix_without_methods.toml",
    17,
    10,
    "lines 11 and 16 both have the prefix `/v1/calls` and neither has `methods`"
);
policy_case!(
    catch_all_overlaps_methods,
    "catch_all_overlaps_methods.toml",
    18,
    10,
    "the one at line 17 has no `methods`"
);
policy_case!(
    empty_policy,
    "empty_policy.toml",
    0,
    0,
    "a policy with no routes is refused: it is almost always a half-written file"
);
policy_case!(zero_limit, "zero_limit.toml", 2, 23, "`requests_per_minute` must be at least 1, not 0");
policy_case!(duplicate_limit_names, "duplicate_limit_names.toml", 4, 12, "plan `pro` has two limits named `minute`");
policy_case!(
    limit_window_and_period,
    "limit_window_and_period.toml",
    3,
    65,
    "limit `month` has both a `window` and a `period`"
);
policy_case!(
    reset_day_out_of_range,
    "reset_day_out_of_range.toml",
    3,
    70,
    "`reset_day` is 32; it is a day of the month"
);
policy_case!(limits_and_rpm, "limits_and_rpm.toml", 2, 23, "sets both `limits` and `requests_per_minute`");
policy_case!(negative_requests, "negative_requests.toml", 2, 12, "`requests` must be at least 1, not -20");
policy_case!(window_not_whole_seconds, "window_not_whole_seconds.toml", 3, 10, "a window is a whole number of seconds");
policy_case!(window_without_requests, "window_without_requests.toml", 2, 10, "has a `window` but no `requests`");
policy_case!(requests_without_window, "requests_without_window.toml", 2, 12, "has `requests` but no `window`");
policy_case!(
    rpm_and_requests,
    "rpm_and_requests.toml",
    2,
    23,
    "sets both `requests_per_minute` and `requests`/`window`"
);
policy_case!(zero_max_keys, "zero_max_keys.toml", 3, 12, "`max_keys` must be at least 1");
policy_case!(bad_duration, "bad_duration.toml", 3, 11, "`timeout`: duration `30 seconds`");
policy_case!(bad_upstream_url, "bad_upstream_url.toml", 2, 7, "has the path `/api`");
policy_case!(https_upstream, "https_upstream.toml", 2, 7, "use `http://` or `h2c://`");
policy_case!(upstream_without_url, "upstream_without_url.toml", 1, 1, "upstream `app` has no `url`");
policy_case!(bad_prefix, "bad_prefix.toml", 12, 10, "is not in normal form: write `/v1/calls`");
policy_case!(prefix_with_query, "prefix_with_query.toml", 12, 10, "contains `?`");
policy_case!(route_without_prefix, "route_without_prefix.toml", 11, 1, "a route needs a `prefix`");
policy_case!(route_without_upstream, "route_without_upstream.toml", 11, 1, "needs an `upstream`");
policy_case!(lowercase_method, "lowercase_method.toml", 13, 19, "must be upper-case: write `POST`");
policy_case!(duplicate_method, "duplicate_method.toml", 13, 27, "method `GET` is listed twice");
policy_case!(empty_methods, "empty_methods.toml", 13, 11, "leave `methods` out to take every method");
policy_case!(zero_cost, "zero_cost.toml", 15, 8, "`cost` must be at least 1, not 0");
policy_case!(zero_max_body_bytes, "zero_max_body_bytes.toml", 15, 18, "`max_body_bytes` must be at least 1");
policy_case!(bad_mode, "bad_mode.toml", 15, 8, "it must be \"enforce\" or \"shadow\"");
policy_case!(bad_auth, "bad_auth.toml", 13, 8, "it must be \"key\" or \"none\"");
policy_case!(bad_on_store_error, "bad_on_store_error.toml", 15, 18, "\"local\" or \"allow\" or \"deny\"");
policy_case!(default_allow, "default_allow.toml", 1, 11, "the only value is \"deny\"");
policy_case!(bad_paths_option, "bad_paths_option.toml", 2, 17, "it must be \"reject\" or \"keep\"");
policy_case!(bad_scope_name, "bad_scope_name.toml", 2, 1, "contains whitespace");

#[test]
fn many_errors_are_all_reported_in_file_order() {
    let (path, errors) = policy_errors("many_errors.toml");
    let found: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(found, [(6, 23), (12, 10), (13, 11), (14, 12)], "{errors:#?}");
    let fragments =
        ["`requests_per_minute` must be at least 1", "write `/v1/calls`", "scope `calls:raed`", "upstream `ap`"];
    for (error, fragment) in errors.iter().zip(fragments) {
        assert!(error.is_error());
        assert_eq!(error.file, path);
        assert!(error.message.contains(fragment), "`{}` should contain `{fragment}`", error.message);
    }
}

/// Asserts that `errors` are exactly these (line, column, message fragment), in order.
fn assert_errors(path: &Path, errors: &[Diagnostic], expected: &[(usize, usize, &str)]) {
    let found: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    let wanted: Vec<(usize, usize)> = expected.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(found, wanted, "{errors:#?}");
    for (error, (_, _, fragment)) in errors.iter().zip(expected) {
        assert!(error.is_error(), "{error}");
        assert_eq!(error.file, path);
        assert!(error.message.contains(fragment), "`{}` should contain `{fragment}`", error.message);
    }
}

/// Unknown fields and values of the wrong type no longer stop the file at the first one:
/// each is reported, and the checks of values go on. A route whose `upstream` has the
/// wrong type is not also told that it lacks an `upstream`.
#[test]
fn every_unknown_field_and_wrong_type_is_reported_with_the_other_errors() {
    let (path, errors) = policy_errors("many_structural_errors.toml");
    assert_errors(
        &path,
        &errors,
        &[
            (7, 1, "unknown field `timout`"),
            (11, 1, "unknown field `scope`"),
            (12, 12, "`upstream`: invalid type: integer `5`, expected a string"),
            (16, 19, "`methods`: invalid type: integer `7`"),
            (18, 8, "`cost` must be at least 1, not 0"),
        ],
    );
    let (path, errors) = settings_errors("many_errors.toml");
    assert_errors(
        &path,
        &errors,
        &[
            (3, 1, "unknown field `adress`"),
            (6, 23, "`header_read_timeout`: invalid type: integer `10`"),
            (7, 1, "unknown field `idle_timout`"),
            (8, 19, "`max_connections` is 0"),
        ],
    );
}

// --- one fixture per invalid settings file ----------------------------------------------

settings_case!(settings_unknown_field, "unknown_field.toml", 5, 1, "unknown field `adress`");
settings_case!(settings_unknown_table, "unknown_table.toml", 3, 2, "unknown field `limit`");
settings_case!(settings_syntax_error, "syntax_error.toml", 2, 25, "`_` may only go between digits");
settings_case!(
    redis_backend_without_redis,
    "redis_backend_without_redis.toml",
    2,
    11,
    "`limits.backend = \"redis\"` needs a [redis] table"
);
settings_case!(
    redis_keys_without_redis,
    "redis_keys_without_redis.toml",
    2,
    10,
    "`keys.source = \"redis\"` needs a [redis] table"
);
settings_case!(redis_without_url, "redis_without_url.toml", 4, 1, "[redis] needs a `url`");
settings_case!(bad_redis_url, "bad_redis_url.toml", 5, 7, "scheme `tcp`");
settings_case!(zero_replicas, "zero_replicas.toml", 3, 12, "`replicas` is 0; it must be at least 1");
settings_case!(
    max_header_bytes_too_small,
    "max_header_bytes_too_small.toml",
    2,
    20,
    "must be at least 1024: a request head needs room"
);
settings_case!(zero_max_connections, "zero_max_connections.toml", 2, 19, "would accept no connection");
settings_case!(bad_listen_address, "bad_listen_address.toml", 2, 11, "write an IP address and a port");
settings_case!(bad_trusted_proxy, "bad_trusted_proxy.toml", 3, 34, "`10.0.0.0/40` in `trusted_proxies` is neither");
settings_case!(settings_bad_duration, "bad_duration.toml", 2, 23, "`header_read_timeout`: duration `10` has no unit");
settings_case!(zero_header_read_timeout, "zero_header_read_timeout.toml", 2, 23, "must be longer than 0s");
settings_case!(tls_without_key, "tls_without_key.toml", 3, 7, "needs both `cert` and `key`");
settings_case!(bad_keys_source, "bad_keys_source.toml", 2, 10, "it must be \"file\" or \"redis\"");
settings_case!(settings_bad_on_store_error, "bad_on_store_error.toml", 2, 18, "\"local\" or \"allow\" or \"deny\"");
settings_case!(
    admin_shares_listen_address,
    "admin_shares_listen_address.toml",
    5,
    11,
    "cannot share the proxy's address"
);

// --- housekeeping -----------------------------------------------------------------------

/// A fixture without a case, or a case without a fixture, fails here.
#[test]
fn every_fixture_has_a_case() {
    for (kind, cases) in [("policy", POLICY_FIXTURES), ("settings", SETTINGS_FIXTURES)] {
        let dir = manifest_dir().join("tests/fixtures/invalid").join(kind);
        let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let listed: BTreeSet<String> = cases.iter().map(|s| s.to_string()).collect();
        assert_eq!(on_disk, listed, "fixtures in {} and the cases listed differ", dir.display());
    }
}
