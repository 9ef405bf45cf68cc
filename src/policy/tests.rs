//! The policy's unit tests: the reference's example, every refusal with its position, the
//! warnings, and the value checks one by one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use sha2::{Digest, Sha256};

use super::limit::Limit;
use super::validate::{method_problem, parse_upstream_url, prefix_problem};
use super::*;
use crate::diag::Diagnostic;
use crate::path::PathOptions;
use crate::settings::OnStoreError;

const SPEC_EXAMPLE: &str = r#"
default = "deny"
forward_preflight = false

[paths]
encoded_slash = "reject"
semicolon = "reject"

[scopes]
"calls:read" = "View call history and details"
"calls:write" = "Initiate outbound calls"
"agents:read" = "View voice agent configurations"
"contacts:read" = "View contacts"
"webhooks:manage" = "Manage webhook endpoints"
"analytics:read" = "View analytics and reports"

[plans.trial]
api_access = false
[plans.pro]
requests_per_minute = 300
max_keys = 5
[plans.agency]
requests_per_minute = 1000
[plans.burst]
requests = 20
window = "10s"

[upstreams.app]
url = "http://127.0.0.1:8080"

[[routes]]
prefix = "/v1/calls"
methods = ["GET", "HEAD"]
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/v1/calls"
methods = ["POST"]
scopes = ["calls:write"]
upstream = "app"
max_body_bytes = 1048576

[[routes]]
prefix = "/v1/webhooks"
scopes = ["webhooks:manage"]
upstream = "app"
cost = 5
on_store_error = "deny"

[[routes]]
prefix = "/v1/analytics"
scopes = ["analytics:read"]
upstream = "app"
mode = "shadow"

[[routes]]
prefix = "/status"
auth = "none"
upstream = "app"
"#;

/// A minimal valid policy with `extra` appended (more tables or routes).
fn with(extra: &str) -> String {
    format!("[scopes]\n\"a:read\" = \"A\"\n\n[upstreams.app]\nurl = \"http://127.0.0.1:8080\"\n\n{extra}")
}

const ROUTE: &str = "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n";

fn parse(text: &str) -> Result<(Policy, Vec<Diagnostic>), Vec<Diagnostic>> {
    Policy::parse(text, Path::new("routes.toml"))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors,
    }
}

fn warnings(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Ok((_, warnings)) => warnings,
        Err(errors) => panic!("unexpected errors: {errors:#?}"),
    }
}

/// The one error of `text`: its line, column and message.
fn one_error(text: &str) -> (usize, usize, String) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert!(e.is_error());
    (e.line, e.column, e.message.clone())
}

fn assert_error(text: &str, line: usize, column: usize, fragment: &str) {
    let (l, c, message) = one_error(text);
    assert!(message.contains(fragment), "`{message}` should contain `{fragment}`");
    assert_eq!((l, c), (line, column), "{message}");
}

#[test]
fn the_spec_example_compiles() {
    let (policy, warnings) = parse(SPEC_EXAMPLE).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(policy.file, Path::new("routes.toml"));
    assert!(!policy.forward_preflight);
    assert_eq!(policy.paths, PathOptions::default());
    assert_eq!(policy.scopes.len(), 6);
    assert_eq!(policy.scopes["calls:read"], "View call history and details");

    assert_eq!(policy.plans.len(), 4);
    let trial = &policy.plans["trial"];
    assert!(!trial.api_access);
    assert!(trial.limits.is_empty());
    let pro = &policy.plans["pro"];
    assert_eq!((pro.name.as_str(), pro.api_access, pro.max_keys), ("pro", true, Some(5)));
    assert_eq!(window_limit(pro), Some(Limit { requests: 300, window: Duration::from_secs(60) }));
    assert_eq!(policy.plans["agency"].max_keys, None);
    assert_eq!(window_limit(&policy.plans["burst"]), Some(Limit { requests: 20, window: Duration::from_secs(10) }));

    let app = &policy.upstreams["app"];
    assert_eq!(app.name, "app");
    assert_eq!(app.protocol, UpstreamProtocol::Http1);
    assert_eq!(app.authority.as_str(), "127.0.0.1:8080");
    assert_eq!(app.connect_timeout, Duration::from_secs(2));
    assert_eq!(app.timeout, Duration::from_secs(30));

    assert_eq!(policy.routes.len(), 5);
    let routes: Vec<&Arc<Route>> = policy.routes.iter().collect();
    assert_eq!(routes[0].methods, Some(vec![Method::GET, Method::HEAD]));
    assert_eq!(routes[0].auth, RouteAuth::Key { scopes: vec!["calls:read".to_string()] });
    assert_eq!((routes[0].cost, routes[0].max_body_bytes), (1, None));
    assert_eq!(routes[0].mode, RouteMode::Enforce);
    assert_eq!(routes[0].on_store_error, None);
    assert!(Arc::ptr_eq(&routes[0].upstream, app));
    assert_eq!(routes[1].max_body_bytes, Some(1_048_576));
    assert_eq!(routes[2].methods, None);
    assert_eq!(routes[2].cost, 5);
    assert_eq!(routes[2].on_store_error, Some(OnStoreError::Deny));
    assert_eq!(routes[3].mode, RouteMode::Shadow);
    assert_eq!(routes[4].auth, RouteAuth::None);

    match policy.routes.find("/v1/calls/7", &Method::POST) {
        RouteMatch::Found(r) => assert_eq!(r.max_body_bytes, Some(1_048_576)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hash_is_the_sha256_of_the_bytes() {
    let (policy, _) = parse(SPEC_EXAMPLE).unwrap();
    assert_eq!(policy.hash, hex::encode(Sha256::digest(SPEC_EXAMPLE.as_bytes())));
    assert_eq!(policy.hash.len(), 64);
    assert!(policy.hash.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let (other, _) = parse(&format!("{SPEC_EXAMPLE}\n# a comment\n")).unwrap();
    assert_ne!(policy.hash, other.hash);
}

#[test]
fn defaults_of_a_minimal_policy() {
    let (policy, warnings) = parse(&with(ROUTE)).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert!(!policy.forward_preflight);
    assert_eq!(policy.paths, PathOptions::default());
    let route = policy.routes.iter().next().unwrap();
    assert_eq!(route.methods, None);
    assert_eq!(route.auth, RouteAuth::Key { scopes: vec![] });
    assert_eq!(route.cost, 1);
    assert_eq!(route.mode, RouteMode::Enforce);
}

#[test]
fn paths_and_preflight_can_be_set() {
    let text =
        format!("forward_preflight = true\n[paths]\nencoded_slash = \"keep\"\nsemicolon = \"keep\"\n{}", with(ROUTE));
    let (policy, _) = parse(&text).unwrap();
    assert!(policy.forward_preflight);
    assert!(policy.paths.keep_encoded_slash && policy.paths.keep_semicolon);
}

#[test]
fn bad_enum_values_are_refused() {
    assert_error(&format!("default = \"allow\"\n{}", with(ROUTE)), 1, 11, "only value is \"deny\"");
    assert_error(&format!("[paths]\nsemicolon = \"drop\"\n{}", with(ROUTE)), 2, 13, "must be \"reject\" or \"keep\"");
    let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
    assert_error(&route("mode = \"log\""), 10, 8, "\"enforce\" or \"shadow\"");
    assert_error(&route("auth = \"jwt\""), 10, 8, "\"key\" or \"none\"");
    assert_error(&route("on_store_error = \"retry\""), 10, 18, "\"local\" or \"allow\" or \"deny\"");
}

#[test]
fn syntax_errors_and_unknown_fields_have_positions() {
    assert_error("default = \"deny\n", 1, 16, "");
    let (line, column, message) = one_error(&with(&format!("{ROUTE}scope = [\"a:read\"]\n")));
    assert_eq!((line, column), (10, 1));
    assert!(message.contains("unknown field `scope`"), "{message}");
    // Alone in a file: the unknown field and the routes the file lacks, in one run.
    let found = errors("colour = \"blue\"\n");
    assert_eq!(found.iter().map(|e| (e.line, e.column)).collect::<Vec<_>>(), [(0, 0), (1, 1)], "{found:#?}");
    assert!(found[1].message.contains("unknown field `colour`"), "{found:#?}");
    assert_error(&with(&format!("{ROUTE}[plans.x]\nrpm = 5\n")), 11, 1, "unknown field `rpm`");
    assert_error(&with(&format!("{ROUTE}cost = \"5\"\n")), 10, 8, "invalid type");
}

#[test]
fn every_semantic_error_is_collected_and_sorted() {
    let text = with(
        "[plans.p]\nrequests_per_minute = 0\n\n[[routes]]\nprefix = \"/a/\"\nupstream = \"nope\"\n\
        scopes = [\"b:read\"]\ncost = 0\n",
    );
    let errors = errors(&text);
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, [(8, 23), (11, 10), (12, 12), (13, 11), (14, 8)], "{errors:#?}");
    assert!(errors.iter().all(Diagnostic::is_error));
    assert!(errors.iter().all(|e| e.file == Path::new("routes.toml")));
}

#[test]
fn scope_names_are_checked() {
    let text = "[scopes]\n\"\" = \"empty\"\n\"a b\" = \"space\"\n\"a,b\" = \"comma\"\nok = \"fine\"\n\
        [upstreams.app]\nurl = \"http://h\"\n[[routes]]\nprefix = \"/\"\nupstream = \"app\"\n";
    let errors = errors(text);
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, [(2, 1), (3, 1), (4, 1)], "{errors:#?}");
    assert!(errors[0].message.contains("empty"));
    assert!(errors[1].message.contains("whitespace"));
    assert!(errors[2].message.contains("comma"));
}

#[test]
fn plan_limits() {
    let plan = |body: &str| with(&format!("[plans.p]\n{body}\n{ROUTE}"));
    assert_error(&plan("requests_per_minute = 0"), 8, 23, "at least 1");
    assert_error(&plan("requests_per_minute = -3"), 8, 23, "at least 1");
    assert_error(&plan("requests = 0\nwindow = \"10s\""), 8, 12, "at least 1");
    assert_error(&plan("requests = 5"), 8, 12, "no `window`");
    assert_error(&plan("window = \"10s\""), 8, 10, "no `requests`");
    assert_error(&plan("requests = 5\nwindow = \"1500ms\""), 9, 10, "whole number of seconds");
    assert_error(&plan("requests = 5\nwindow = \"500ms\""), 9, 10, "at least 1s");
    assert_error(&plan("requests = 5\nwindow = \"0s\""), 9, 10, "at least 1s");
    assert_error(&plan("requests = 5\nwindow = \"ten seconds\""), 9, 10, "duration");
    assert_error(
        &plan("requests_per_minute = 5\nrequests = 5\nwindow = \"1s\""),
        8,
        23,
        "both `requests_per_minute` and `requests`/`window`",
    );
    assert_error(&plan("requests_per_minute = 5\nwindow = \"1s\""), 8, 23, "keep one");
    assert_error(&plan("requests_per_minute = 5\nmax_keys = 0"), 9, 12, "at least 1");
    assert_error(&plan("requests_per_minute = 5\nmax_keys = 4294967296"), 9, 12, "at most");
    assert_error(&plan("requests_per_minute = 5\nconcurrency = 0"), 9, 15, "`concurrency` must be at least 1");
    assert_error(&plan("requests_per_minute = 5\nconcurrency = -2"), 9, 15, "at least 1");
    assert_error(&plan("requests_per_minute = 5\nconcurrency = 4294967296"), 9, 15, "at most");
    assert_error(&plan("requests_per_minute = 5\nconcurrency = \"5\""), 9, 15, "expected i64");

    let (policy, _) = parse(&plan("requests = 100\nwindow = \"1h\"\nmax_keys = 3")).unwrap();
    assert_eq!(window_limit(&policy.plans["p"]), Some(Limit { requests: 100, window: Duration::from_secs(3600) }));
    assert_eq!(policy.plans["p"].max_keys, Some(3));
    assert_eq!(policy.plans["p"].concurrency, None, "no cap unless written");

    let (policy, _) = parse(&plan("requests_per_minute = 5\nconcurrency = 5")).unwrap();
    assert_eq!(policy.plans["p"].concurrency, Some(5));
}

#[test]
fn a_plan_without_limit_is_a_warning() {
    let w = warnings(&with(&format!("[plans.free]\nmax_keys = 1\n[plans.off]\napi_access = false\n{ROUTE}")));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!((w[0].line, w[0].column), (7, 1));
    assert!(w[0].message.contains("plan `free`") && w[0].message.contains("unlimited"));
    assert!(!w[0].is_error());
}

#[test]
fn upstream_urls() {
    let ok = |url: &str| parse_upstream_url(url).map(|(p, a)| (p, a.to_string()));
    assert_eq!(ok("http://127.0.0.1:8080"), Ok((UpstreamProtocol::Http1, "127.0.0.1:8080".into())));
    assert_eq!(ok("http://app"), Ok((UpstreamProtocol::Http1, "app:80".into())));
    assert_eq!(ok("http://app/"), Ok((UpstreamProtocol::Http1, "app:80".into())));
    assert_eq!(ok("h2c://grpc:50051"), Ok((UpstreamProtocol::H2c, "grpc:50051".into())));
    assert_eq!(ok("h2c://grpc"), Ok((UpstreamProtocol::H2c, "grpc:80".into())));
    assert_eq!(ok("http://[::1]:8080"), Ok((UpstreamProtocol::Http1, "[::1]:8080".into())));
    assert_eq!(ok("http://[::1]"), Ok((UpstreamProtocol::Http1, "[::1]:80".into())));
    for (bad, why) in [
        ("127.0.0.1:8080", "must look like"),
        ("https://app", "plain HTTP"),
        ("ftp://app", "scheme `ftp`"),
        ("http://app/api", "path `/api`"),
        ("http://app/?x=1", "query"),
        ("http://app?x=1", "query"),
        ("http://app#f", "fragment"),
        ("http://user:pw@app", "credentials"),
        ("http://", "no host"),
        ("http://:8080", "no host"),
        ("http://app:", "empty port"),
        ("http://app:0", "port 0"),
        ("http://app:99999", "bad port `99999`"),
        ("http://app:80x", "bad port `80x`"),
        ("http://a pp", "bad host or port"),
    ] {
        match parse_upstream_url(bad) {
            Ok(x) => panic!("{bad} accepted: {x:?}"),
            Err(e) => assert!(e.contains(why), "{bad}: `{e}` should contain `{why}`"),
        }
    }
}

#[test]
fn upstream_errors_are_positioned() {
    let text = |up: &str| format!("[upstreams.app]\n{up}\n{ROUTE}");
    assert_error(&text("url = \"http://a/b\""), 2, 7, "upstream `app`");
    assert_error(&text("connect_timeout = \"2s\""), 1, 1, "has no `url`");
    assert_error(&text("url = \"http://a\"\ntimeout = \"0s\""), 3, 11, "longer than 0s");
    assert_error(&text("url = \"http://a\"\nconnect_timeout = \"2\""), 3, 19, "no unit");
    let (policy, _) = parse(&text("url = \"h2c://a:1\"\nconnect_timeout = \"250ms\"\ntimeout = \"5m\"")).unwrap();
    let up = &policy.upstreams["app"];
    assert_eq!(up.connect_timeout, Duration::from_millis(250));
    assert_eq!(up.timeout, Duration::from_secs(300));
    assert_eq!(up.protocol, UpstreamProtocol::H2c);
    assert_eq!((up.max_connections, up.queue_timeout), (256, Duration::from_secs(5)), "the defaults");
    assert_error(&text("url = \"http://a\"\nmax_connections = 0"), 3, 19, "at least 1");
    assert_error(&text("url = \"http://a\"\nqueue_timeout = \"0s\""), 3, 17, "longer than 0s");
    let (policy, _) = parse(&text("url = \"http://a\"\nmax_connections = 8\nqueue_timeout = \"250ms\"")).unwrap();
    let up = &policy.upstreams["app"];
    assert_eq!((up.max_connections, up.queue_timeout), (8, Duration::from_millis(250)));
}

#[test]
fn a_route_naming_an_invalid_upstream_reports_only_the_upstream() {
    let text = format!("[upstreams.app]\nurl = \"https://a\"\n{ROUTE}");
    assert_error(&text, 2, 7, "plain HTTP");
}

#[test]
fn unused_upstream_is_a_warning() {
    let w = warnings(&with(&format!("[upstreams.spare]\nurl = \"http://b\"\n{ROUTE}")));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!((w[0].line, w[0].column), (7, 1));
    assert!(w[0].message.contains("`spare` is not used"));
}

#[test]
fn prefix_normal_form() {
    for good in ["/", "/v1", "/v1/calls", "/v1/phone-numbers", "/a:b/@c/~d/e.f/x..y/.z", "/$!&'()*+,="] {
        assert_eq!(prefix_problem(good), None, "{good}");
    }
    for (bad, fragment) in [
        ("", "cannot be empty"),
        ("v1/calls", "write `/v1/calls`"),
        ("/v1/calls/", "write `/v1/calls`"),
        ("/v1//calls", "write `/v1/calls`"),
        ("//", "write `/`"),
        ("/v1/./calls", "write `/v1/calls`"),
        ("/v1/../calls", "write `/calls`"),
        ("/..", "write `/`"),
        ("/.", "write `/`"),
        ("/a%2Fb", "`%`"),
        ("/a;b", "`;`"),
        ("/a\\b", "`\\`"),
        ("/a#b", "`#`"),
        ("/a?b=1", "`?`"),
        ("/a b", "' '"),
        ("/a\tb", "'\\t'"),
        ("/café", "'é'"),
        ("/a\"b", "'\"'"),
    ] {
        match prefix_problem(bad) {
            None => panic!("{bad:?} accepted"),
            Some(e) => assert!(e.contains(fragment), "{bad:?}: `{e}` should contain `{fragment}`"),
        }
    }
}

#[test]
fn bad_prefix_is_positioned_and_explained() {
    let text = with("[[routes]]\nprefix = \"/v1/calls/\"\nupstream = \"app\"\n");
    assert_error(&text, 8, 10, "write `/v1/calls`");
    assert_error(&with("[[routes]]\nupstream = \"app\"\n"), 7, 1, "needs a `prefix`");
    assert_error(&with("[[routes]]\nprefix = \"/a\"\n"), 7, 1, "needs an `upstream`");
}

#[test]
fn methods_are_checked() {
    assert_eq!(method_problem("GET"), None);
    assert_eq!(method_problem("PURGE"), None);
    assert_eq!(method_problem("M-SEARCH"), None);
    assert!(method_problem("get").is_some_and(|e| e.contains("write `GET`")));
    assert!(method_problem("Post").is_some_and(|e| e.contains("write `POST`")));
    assert!(method_problem("GET POST").is_some_and(|e| e.contains("not an HTTP method token")));
    assert!(method_problem("").is_some());
    assert!(method_problem("G(ET").is_some());

    let route = |methods: &str| with(&format!("{ROUTE}methods = {methods}\n"));
    assert_error(&route("[\"GET\", \"get\"]"), 10, 19, "write `GET`");
    assert_error(&route("[]"), 10, 11, "leave `methods` out");
    assert_error(&route("[\"GET\", \"POST\", \"GET\"]"), 10, 27, "listed twice");
    assert_error(&route("[\"GET\", \"\"]"), 10, 19, "cannot be empty");
    let (policy, _) = parse(&route("[\"PURGE\", \"GET\"]")).unwrap();
    let r = policy.routes.iter().next().unwrap();
    assert_eq!(r.methods, Some(vec![Method::from_bytes(b"PURGE").unwrap(), Method::GET]));
}

#[test]
fn route_references_are_checked() {
    let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
    assert_error(&route("scopes = [\"a:read\", \"a:write\"]"), 10, 21, "scope `a:write`, which is not in [scopes]");
    let (_, _, message) = one_error(&route("scopes = [\"a:write\"]"));
    assert!(message.contains("(defined: a:read)"), "{message}");
    assert_error(
        &with("[[routes]]\nprefix = \"/a\"\nupstream = \"ap\"\n"),
        9,
        12,
        "upstream `ap`, which is not defined (upstreams: app)",
    );
}

#[test]
fn numbers_of_a_route() {
    let route = |field: &str| with(&format!("{ROUTE}{field}\n"));
    assert_error(&route("cost = 0"), 10, 8, "`cost` must be at least 1");
    assert_error(&route("cost = -1"), 10, 8, "at least 1");
    assert_error(&route("max_body_bytes = 0"), 10, 18, "`max_body_bytes` must be at least 1");
    let (policy, _) = parse(&route("cost = 3\nmax_body_bytes = 1")).unwrap();
    let r = policy.routes.iter().next().unwrap();
    assert_eq!((r.cost, r.max_body_bytes), (3, Some(1)));
}

#[test]
fn public_routes() {
    let route = |field: &str| with(&format!("{ROUTE}auth = \"none\"\n{field}\n"));
    assert_error(&route("scopes = [\"a:read\"]"), 11, 10, "cannot require scopes");
    let w = warnings(&route("cost = 2\nmode = \"shadow\"\non_store_error = \"deny\"\nmax_body_bytes = 10"));
    let at: Vec<(usize, usize)> = w.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(at, [(11, 8), (12, 8), (13, 18)], "{w:#?}");
    assert!(w.iter().all(|d| d.message.contains("ignored")));
    let w = warnings(&route("scopes = []"));
    assert_eq!(w.len(), 1);
    let (policy, _) = parse(&route("")).unwrap();
    assert_eq!(policy.routes.iter().next().unwrap().auth, RouteAuth::None);
}

#[test]
fn overlapping_routes_are_refused() {
    let two = |a: &str, b: &str| {
        with(&format!(
            "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n{a}\n[[routes]]\nprefix = \"/a\"\n\
            upstream = \"app\"\n{b}\n"
        ))
    };
    // Both with methods that overlap: at the later route's methods.
    let (line, column, message) =
        one_error(&two("methods = [\"GET\", \"POST\"]", "methods = [\"PUT\", \"POST\", \"GET\"]"));
    assert_eq!((line, column), (14, 11));
    assert!(message.contains("lines 7 and 11") && message.contains("GET, POST"), "{message}");
    // Neither has methods: at the later route's prefix.
    let (line, column, message) = one_error(&two("", ""));
    assert_eq!((line, column), (12, 10));
    assert!(message.contains("neither has `methods`"), "{message}");
    // One has none.
    assert_error(&two("methods = [\"GET\"]", ""), 12, 10, "the one at line 11 has no `methods`");
    assert_error(&two("", "methods = [\"GET\"]"), 12, 10, "the one at line 7 has no `methods`");
    // Disjoint methods are fine.
    assert!(parse(&two("methods = [\"GET\"]", "methods = [\"POST\"]")).is_ok());
}

#[test]
fn three_overlapping_routes_give_every_pair() {
    let r = "[[routes]]\nprefix = \"/a\"\nupstream = \"app\"\n";
    let errors = errors(&with(&format!("{r}{r}{r}")));
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn overlaps_are_found_even_in_routes_with_other_errors() {
    let text = with(
        "[[routes]]\nprefix = \"/a\"\nupstream = \"nope\"\n[[routes]]\nprefix = \"/a\"\n\
        upstream = \"app\"\nscopes = [\"zz\"]\n",
    );
    assert_eq!(errors(&text).len(), 3);
}

#[test]
fn no_routes_is_refused() {
    for text in [String::new(), with(""), format!("routes = []\n{}", with(""))] {
        let (line, column, message) = one_error(&text);
        assert_eq!((line, column), (0, 0));
        assert!(message.contains("a policy with no routes is refused"), "{message}");
    }
}

#[test]
fn cost_above_a_plan_limit_is_a_warning() {
    let text = with(&format!(
        "[plans.tiny]\nrequests = 2\nwindow = \"1s\"\n[plans.big]\nrequests_per_minute = 100\n\
        [plans.off]\napi_access = false\nrequests = 1\nwindow = \"1s\"\n{ROUTE}cost = 3\n"
    ));
    let w = warnings(&text);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!((w[0].line, w[0].column), (19, 8));
    assert!(w[0].message.contains("route `/a`") && w[0].message.contains("plan `tiny`"), "{}", w[0].message);
    assert!(w[0].message.contains("2 requests per 1s"), "{}", w[0].message);
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/routes.toml");
    let (policy, warnings) = Policy::load(&path).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(policy.routes.len(), 13);
    assert!(!policy.plans["trial"].api_access);
}

#[test]
fn connect_is_refused_as_a_route_method() {
    assert!(method_problem("CONNECT").is_some_and(|p| p.contains("not supported")));
    assert_eq!(method_problem("PATCH"), None);
}

/// The one sliding window of a legacy plan.
fn window_limit(plan: &crate::policy::Plan) -> Option<Limit> {
    match plan.limits.as_slice() {
        [limit] if limit.name == crate::policy::LEGACY_LIMIT_NAME => limit.rule.as_window(),
        _ => None,
    }
}

/// The line and column (1-based) of the `nth` occurrence of `needle` in `text`.
fn position(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let at = text.match_indices(needle).nth(nth).unwrap_or_else(|| panic!("{needle:?} in {text}")).0;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, str::len) + 1;
    (line, column)
}

/// A policy whose plan `p` has `limits = [` the given entries, one a line `]`.
fn limits_plan(entries: &[&str], extra: &str) -> String {
    let lines: Vec<String> = entries.iter().map(|e| format!("  {e},")).collect();
    with(&format!("[plans.p]\nlimits = [\n{}\n]\n{extra}\n{ROUTE}", lines.join("\n")))
}

#[test]
fn several_limits_compile_in_order_with_their_kinds() {
    let text = limits_plan(
        &[
            r#"{ name = "burst", requests = 10, window = "1s" }"#,
            r#"{ name = "minute", requests = 300, window = "60s" }"#,
            r#"{ name = "day", requests = 5000, period = "day" }"#,
            r#"{ name = "month", requests = 100000, period = "month", reset_day = 15 }"#,
        ],
        "max_keys = 5",
    );
    let (policy, warnings) = parse(&text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let plan = &policy.plans["p"];
    let names: Vec<&str> = plan.limits.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["burst", "minute", "day", "month"]);
    let rules: Vec<Rule> = plan.limits.iter().map(|l| l.rule).collect();
    assert_eq!(
        rules,
        [
            Rule { requests: 10, kind: LimitKind::Window(Duration::from_secs(1)) },
            Rule { requests: 300, kind: LimitKind::Window(Duration::from_secs(60)) },
            Rule { requests: 5000, kind: LimitKind::Day },
            Rule { requests: 100_000, kind: LimitKind::Month { reset_day: 15 } },
        ]
    );
    assert_eq!(plan.max_keys, Some(5));
    let headers = plan.rate_headers.as_ref().expect("headers");
    assert_eq!(headers.rules(), rules.as_slice());
    assert!(!headers.legacy() && headers.monthly());
    assert_eq!(headers.limit_name(1), "minute");

    // A month without reset_day resets on the 1st; the legacy forms are one limit named
    // "default".
    let (policy, _) = parse(&limits_plan(&[r#"{ name = "m", requests = 1, period = "month" }"#], "")).unwrap();
    assert_eq!(policy.plans["p"].limits[0].rule.kind, LimitKind::Month { reset_day: 1 });
    let (policy, _) = parse(SPEC_EXAMPLE).unwrap();
    assert_eq!(policy.plans["pro"].limits.len(), 1);
    assert_eq!(policy.plans["pro"].limits[0].name, LEGACY_LIMIT_NAME);
    assert!(policy.plans["pro"].rate_headers.as_ref().unwrap().legacy());
}

#[test]
fn every_bad_limit_shape_is_refused_at_its_position() {
    let cases: &[(&[&str], &str, &str, usize, &str)] = &[
        // (entries, extra lines, where the error points, which occurrence, what it says)
        (
            &[r#"{ name = "a", requests = 1, window = "1s" }"#, r#"{ name = "a", requests = 2, window = "2s" }"#],
            "",
            "\"a\"",
            1,
            "two limits named `a`",
        ),
        (
            &[r#"{ name = "a", requests = 1, window = "1s", period = "day" }"#],
            "",
            "\"day\"",
            0,
            "both a `window` and a `period`",
        ),
        (&[r#"{ name = "a", requests = 1 }"#], "", "{ name", 0, "neither a `window`"),
        (&[r#"{ name = "a", requests = 0, window = "1s" }"#], "", "0,", 0, "at least 1"),
        (&[r#"{ name = "a", requests = -5, period = "day" }"#], "", "-5", 0, "at least 1"),
        (&[r#"{ name = "a", window = "1s" }"#], "", "{ name", 0, "no `requests`"),
        (&[r#"{ requests = 1, window = "1s" }"#], "", "{ requests", 0, "no `name`"),
        (&[r#"{ name = "a b", requests = 1, window = "1s" }"#], "", "\"a b\"", 0, "letters, digits"),
        (&[r#"{ name = "concurrency", requests = 1, window = "1s" }"#], "", "\"concurrency\"", 0, "reserved"),
        (&[r#"{ name = "m", requests = 1, period = "month", reset_day = 0 }"#], "", "0 }", 0, "1 to 31"),
        (&[r#"{ name = "m", requests = 1, period = "month", reset_day = 32 }"#], "", "32", 0, "1 to 31"),
        (&[r#"{ name = "d", requests = 1, period = "day", reset_day = 2 }"#], "", "2 }", 0, "a day always starts"),
        (&[r#"{ name = "w", requests = 1, window = "1s", reset_day = 2 }"#], "", "2 }", 0, "not to a sliding window"),
        (&[r#"{ name = "y", requests = 1, period = "year" }"#], "", "\"year\"", 0, "\"day\" or \"month\""),
        (&[r#"{ name = "w", requests = 1, window = "1500ms" }"#], "", "\"1500ms\"", 0, "whole number of seconds"),
        (
            &[r#"{ name = "a", requests = 1, window = "60s" }"#, r#"{ name = "b", requests = 2, window = "1m" }"#],
            "",
            "{ name = \"b\"",
            0,
            "the same window",
        ),
        (
            &[
                r#"{ name = "a", requests = 1, period = "month" }"#,
                r#"{ name = "b", requests = 2, period = "month", reset_day = 3 }"#,
            ],
            "",
            "{ name = \"b\"",
            0,
            "the same period",
        ),
        (
            &[r#"{ name = "a", requests = 1, window = "1s" }"#],
            "requests_per_minute = 5",
            "5\n",
            0,
            "both `limits` and `requests_per_minute`",
        ),
        (&[r#"{ name = "a", requests = 1, window = "1s" }"#], "requests = 5", "5\n", 0, "both `limits` and `requests`"),
    ];
    for (entries, extra, at, nth, fragment) in cases {
        let text = limits_plan(entries, extra);
        let (line, column) = position(&text, at, *nth);
        assert_error(&text, line, column, fragment);
    }
    // An empty list, and an unknown field, are refused too.
    let text = with(&format!("[plans.p]\nlimits = []\n{ROUTE}"));
    let (line, column) = position(&text, "[]", 0);
    assert_error(&text, line, column, "empty `limits`");
    let text = limits_plan(&[r#"{ name = "a", requests = 1, window = "1s", burst = 3 }"#], "");
    assert_eq!(one_error(&text).0, position(&text, "burst", 0).0);
}

#[test]
fn a_route_costlier_than_any_limit_of_a_plan_is_warned_about() {
    let text = limits_plan(
        &[
            r#"{ name = "burst", requests = 2, window = "1s" }"#,
            r#"{ name = "minute", requests = 100, window = "60s" }"#,
        ],
        "",
    )
    .replace("upstream = \"app\"\n", "upstream = \"app\"\ncost = 5\n");
    let warnings = warnings(&text);
    assert!(warnings.iter().any(|w| w.message.contains("limit of 2 requests per 1s")), "{warnings:?}");
}
