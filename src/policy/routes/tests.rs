//! Unit tests of `policy/routes.rs`.

use std::time::Duration;

use super::*;
use crate::policy::UpstreamProtocol;

fn upstream() -> Arc<Upstream> {
    Arc::new(Upstream {
        name: "app".to_string(),
        protocol: UpstreamProtocol::Http1,
        authority: http::uri::Authority::from_static("127.0.0.1:8080"),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(30),
        max_connections: 256,
        queue_timeout: Duration::from_secs(5),
    })
}

fn route(prefix: &str, methods: Option<&[&str]>) -> Route {
    Route {
        prefix: prefix.into(),
        methods: methods.map(|ms| ms.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()).collect()),
        auth: RouteAuth::Key { scopes: vec![] },
        upstream: upstream(),
        cost: 1,
        max_body_bytes: None,
        mode: RouteMode::Enforce,
        on_store_error: None,
        resolved: Default::default(),
    }
}

fn any(prefix: &str) -> Route {
    route(prefix, None)
}

/// The prefix (and the methods, for telling routes of one prefix apart) found.
fn found(table: &RouteTable, path: &str, method: Method) -> Option<(String, Option<Vec<Method>>)> {
    match table.find(path, &method) {
        RouteMatch::Found(r) => Some((r.prefix.to_string(), r.methods.clone())),
        _ => None,
    }
}

fn prefix_of(table: &RouteTable, path: &str) -> Option<String> {
    found(table, path, Method::GET).map(|(p, _)| p)
}

#[test]
fn empty_table_finds_nothing() {
    let table = RouteTable::new(vec![]);
    assert!(table.is_empty());
    assert_eq!(table.len(), 0);
    assert!(matches!(table.find("/", &Method::GET), RouteMatch::NotFound));
    assert!(matches!(table.find("/v1/calls", &Method::GET), RouteMatch::NotFound));
}

#[test]
fn prefix_matches_on_segment_boundary_only() {
    let table = RouteTable::new(vec![any("/v1/calls")]);
    for path in ["/v1/calls", "/v1/calls/", "/v1/calls/7", "/v1/calls/7/recording", "/v1/calls//x"] {
        assert_eq!(prefix_of(&table, path).as_deref(), Some("/v1/calls"), "{path}");
    }
    for path in ["/v1/callsign", "/v1/call", "/v1", "/", "/v1/calls-x", "/v1/calls.json", "/x/v1/calls", ""] {
        assert_eq!(prefix_of(&table, path), None, "{path}");
    }
}

#[test]
fn matching_is_case_sensitive() {
    let table = RouteTable::new(vec![any("/v1/calls")]);
    assert_eq!(prefix_of(&table, "/V1/calls"), None);
    assert_eq!(prefix_of(&table, "/v1/Calls"), None);
    assert_eq!(prefix_of(&table, "/v1/CALLS/7"), None);
}

#[test]
fn root_prefix_matches_everything() {
    let table = RouteTable::new(vec![any("/")]);
    for path in ["/", "/a", "/a/b/c", "/v1/callsign", "//"] {
        assert_eq!(prefix_of(&table, path).as_deref(), Some("/"), "{path}");
    }
    // Not an origin-form path: nothing to match on a boundary.
    assert_eq!(prefix_of(&table, "*"), None);
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    let routes = vec![any("/"), any("/v1"), any("/v1/calls"), any("/v1/calls/live")];
    let mut reversed = routes.clone();
    reversed.reverse();
    for table in [RouteTable::new(routes), RouteTable::new(reversed)] {
        assert_eq!(prefix_of(&table, "/v1/calls/live/3").as_deref(), Some("/v1/calls/live"));
        assert_eq!(prefix_of(&table, "/v1/calls/live").as_deref(), Some("/v1/calls/live"));
        assert_eq!(prefix_of(&table, "/v1/calls/lively").as_deref(), Some("/v1/calls"));
        assert_eq!(prefix_of(&table, "/v1/calls/7").as_deref(), Some("/v1/calls"));
        assert_eq!(prefix_of(&table, "/v1/callsign").as_deref(), Some("/v1"));
        assert_eq!(prefix_of(&table, "/v1").as_deref(), Some("/v1"));
        assert_eq!(prefix_of(&table, "/v10").as_deref(), Some("/"));
        assert_eq!(prefix_of(&table, "/").as_deref(), Some("/"));
    }
}

#[test]
fn method_selects_among_routes_of_one_prefix() {
    let table = RouteTable::new(vec![route("/v1/calls", Some(&["GET", "HEAD"])), route("/v1/calls", Some(&["POST"]))]);
    let get = found(&table, "/v1/calls/7", Method::GET).unwrap();
    assert_eq!(get.1, Some(vec![Method::GET, Method::HEAD]));
    let head = found(&table, "/v1/calls", Method::HEAD).unwrap();
    assert_eq!(head.1, Some(vec![Method::GET, Method::HEAD]));
    let post = found(&table, "/v1/calls", Method::POST).unwrap();
    assert_eq!(post.1, Some(vec![Method::POST]));
}

#[test]
fn route_without_methods_takes_every_method() {
    let table = RouteTable::new(vec![any("/v1/webhooks")]);
    let custom = Method::from_bytes(b"PURGE").unwrap();
    for m in [Method::GET, Method::DELETE, Method::OPTIONS, Method::PATCH, custom] {
        assert!(found(&table, "/v1/webhooks/1", m.clone()).is_some(), "{m}");
    }
}

#[test]
fn specific_methods_and_a_catch_all_on_one_prefix() {
    // Validation refuses this overlap; the table still answers deterministically.
    let table = RouteTable::new(vec![route("/a", Some(&["GET"])), any("/a")]);
    assert_eq!(found(&table, "/a", Method::GET).unwrap().1, Some(vec![Method::GET]));
    assert_eq!(found(&table, "/a", Method::POST).unwrap().1, None);
}

#[test]
fn method_not_allowed_lists_the_prefix_methods_sorted_and_deduplicated() {
    let table = RouteTable::new(vec![
        route("/v1/calls", Some(&["POST", "GET"])),
        route("/v1/calls", Some(&["HEAD", "DELETE"])),
        route("/v1/calls", Some(&["PATCH"])),
    ]);
    match table.find("/v1/calls/7", &Method::PUT) {
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            assert_eq!(prefix, "/v1/calls");
            let names: Vec<&str> = allow.iter().map(Method::as_str).collect();
            assert_eq!(names, ["DELETE", "GET", "HEAD", "PATCH", "POST"]);
        }
        other => panic!("expected 405, got {other:?}"),
    }
}

#[test]
fn allow_is_deduplicated_even_if_validation_was_skipped() {
    let table = RouteTable::new(vec![route("/a", Some(&["GET", "POST"])), route("/a", Some(&["GET"]))]);
    match table.find("/a", &Method::DELETE) {
        RouteMatch::MethodNotAllowed { allow, .. } => {
            assert_eq!(allow, vec![Method::GET, Method::POST])
        }
        other => panic!("expected 405, got {other:?}"),
    }
}

#[test]
fn no_fall_back_to_a_shorter_prefix() {
    let table = RouteTable::new(vec![any("/"), any("/v1"), route("/v1/calls", Some(&["GET"]))]);
    match table.find("/v1/calls/7", &Method::POST) {
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            assert_eq!(prefix, "/v1/calls");
            assert_eq!(allow, vec![Method::GET]);
        }
        other => panic!("expected 405, got {other:?}"),
    }
    // A path the longer prefix does not match still reaches the shorter one.
    assert_eq!(found(&table, "/v1/callsign", Method::POST).map(|(p, _)| p).as_deref(), Some("/v1"));
}

#[test]
fn root_route_method_not_allowed() {
    let table = RouteTable::new(vec![route("/", Some(&["GET"]))]);
    match table.find("/anything/at/all", &Method::POST) {
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            assert_eq!(prefix, "/");
            assert_eq!(allow, vec![Method::GET]);
        }
        other => panic!("expected 405, got {other:?}"),
    }
}

#[test]
fn not_found_without_a_matching_prefix() {
    let table = RouteTable::new(vec![any("/v1/calls"), any("/status")]);
    for path in ["/", "/v2/calls", "/statusx", "/v1", "/v1/"] {
        assert!(matches!(table.find(path, &Method::GET), RouteMatch::NotFound), "{path}");
    }
}

#[test]
fn paths_longer_than_every_prefix_still_match() {
    let table = RouteTable::new(vec![any("/a")]);
    let long = format!("/a{}", "/segment".repeat(1000));
    assert_eq!(prefix_of(&table, &long).as_deref(), Some("/a"));
    let long_miss = format!("/b{}", "/segment".repeat(1000));
    assert_eq!(prefix_of(&table, &long_miss), None);
}

#[test]
fn prefixes_with_unusual_characters_match_literally() {
    let table = RouteTable::new(vec![any("/v1/a:b"), any("/~user"), any("/x-y.z")]);
    assert_eq!(prefix_of(&table, "/v1/a:b/c").as_deref(), Some("/v1/a:b"));
    assert_eq!(prefix_of(&table, "/~user").as_deref(), Some("/~user"));
    assert_eq!(prefix_of(&table, "/x-y.z/1").as_deref(), Some("/x-y.z"));
    assert_eq!(prefix_of(&table, "/x-y"), None);
}

#[test]
fn non_ascii_paths_are_split_on_char_boundaries() {
    let table = RouteTable::new(vec![any("/café")]);
    assert_eq!(prefix_of(&table, "/café/menu").as_deref(), Some("/café"));
    assert_eq!(prefix_of(&table, "/cafés"), None);
}

#[test]
fn iter_keeps_file_order() {
    let table = RouteTable::new(vec![any("/b"), any("/a"), route("/b", Some(&["GET"]))]);
    let prefixes: Vec<&str> = table.iter().map(|r| &*r.prefix).collect();
    assert_eq!(prefixes, ["/b", "/a", "/b"]);
    assert_eq!(table.len(), 3);
}

#[test]
fn found_route_is_the_shared_arc() {
    let table = RouteTable::new(vec![any("/a")]);
    let first = table.iter().next().unwrap();
    match table.find("/a/1", &Method::GET) {
        RouteMatch::Found(r) => assert!(Arc::ptr_eq(r, first)),
        other => panic!("expected a route, got {other:?}"),
    }
}

#[test]
fn ten_thousand_routes() {
    let mut routes = Vec::new();
    for i in 0..10_000 {
        routes.push(route(&format!("/v1/tenants/t{i}/calls"), Some(&["GET"])));
        routes.push(route(&format!("/v1/tenants/t{i}/calls"), Some(&["POST"])));
    }
    routes.push(any("/"));
    let table = RouteTable::new(routes);
    assert_eq!(table.len(), 20_001);
    for i in [0, 1, 4_999, 9_999] {
        let path = format!("/v1/tenants/t{i}/calls/42");
        assert_eq!(
            found(&table, &path, Method::POST),
            Some((format!("/v1/tenants/t{i}/calls"), Some(vec![Method::POST])))
        );
        assert!(matches!(table.find(&path, &Method::DELETE), RouteMatch::MethodNotAllowed { .. }));
    }
    assert_eq!(prefix_of(&table, "/v1/tenants/t10000/calls").as_deref(), Some("/"));
    assert_eq!(prefix_of(&table, "/v1/tenants/t1/callsx").as_deref(), Some("/"));
}

/// Every answer of the table agrees with a naive scan of all routes.
#[test]
fn agrees_with_a_linear_scan() {
    let prefixes = ["/", "/a", "/a/b", "/a/bc", "/ab", "/a/b/c/d", "/x/y", "/x"];
    let routes: Vec<Route> = prefixes.iter().map(|p| any(p)).collect();
    let table = RouteTable::new(routes);
    let paths = [
        "/",
        "/a",
        "/a/",
        "/a/b",
        "/a/b/",
        "/a/bc",
        "/a/bcd",
        "/a/b/c",
        "/a/b/c/d",
        "/a/b/c/de",
        "/ab",
        "/abc",
        "/x",
        "/x/",
        "/x/y",
        "/x/yz",
        "/y",
        "//",
        "/a//b",
    ];
    for path in paths {
        let naive = prefixes
            .iter()
            .filter(|p| {
                **p == "/" || (path.starts_with(**p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            })
            .max_by_key(|p| p.len())
            .map(|p| p.to_string());
        assert_eq!(prefix_of(&table, path), naive, "{path}");
    }
}
