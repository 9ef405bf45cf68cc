//! Unit tests of the upstream side: header rewriting, hop-by-hop removal, WebSocket
//! handshakes.

use http::header::{HeaderName, HeaderValue};
use std::net::IpAddr;

use http::{HeaderMap, Request, Version};

use super::hop_by_hop::*;
use super::outbound::*;
use super::tunnel::*;
use crate::keys::Principal;

static RID: HeaderValue = HeaderValue::from_static("rid-1");

fn context(trusted: bool) -> ForwardContext<'static> {
    ForwardContext {
        peer: "10.1.2.3".parse().unwrap(),
        tls: false,
        request_id: &RID,
        peer_trusted: trusted,
        host: Some(HeaderValue::from_static("api.example.com")),
    }
}

fn principal() -> Principal {
    Principal::new("key_abc", "acme", "pro", vec!["calls:read".into(), "calls:write".into()])
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    map
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_removed_but_te_trailers_kept() {
    let mut h = headers(&[
        ("connection", "keep-alive, x-secret-hop"),
        ("keep-alive", "timeout=5"),
        ("x-secret-hop", "1"),
        ("te", "trailers, deflate"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-authorization", "Basic x"),
        ("x-kept", "yes"),
    ]);
    remove_hop_by_hop(&mut h, false);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["x-kept"], "yes");
}

#[test]
fn every_spelling_of_x_keygate_is_stripped() {
    let mut h = headers(&[
        ("X-Keygate-Tenant", "evil"),
        ("x_keygate_tenant", "evil"),
        ("x-keygate_plan", "evil"),
        ("X_KEYGATE-SCOPES", "evil"),
        ("x-keygate-anything", "evil"),
        ("x-keygatex", "kept"),
        ("authorization", "Bearer kg_secret"),
    ]);
    rewrite_request_headers(&mut h, &context(false), None, false);
    assert!(h.keys().all(|n| !is_keygate_header(n)), "{h:?}");
    assert_eq!(h["x-keygatex"], "kept");
    assert!(!h.contains_key("authorization"));
}

#[test]
fn identity_headers_survive_a_connection_header_naming_them() {
    let mut h = headers(&[("connection", "x-keygate-tenant, x-request-id, x-forwarded-for")]);
    rewrite_request_headers(&mut h, &context(false), Some(&principal()), false);
    assert_eq!(h["x-keygate-tenant"], "acme");
    assert_eq!(h["x-keygate-key-id"], "key_abc");
    assert_eq!(h["x-keygate-plan"], "pro");
    assert_eq!(h["x-keygate-scopes"], "calls:read,calls:write");
    assert_eq!(h["x-request-id"], "rid-1");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3");
}

#[test]
fn forwarded_for_is_replaced_from_untrusted_and_appended_for_trusted_peers() {
    let mut h = headers(&[("x-forwarded-for", "1.1.1.1")]);
    rewrite_request_headers(&mut h, &context(false), None, false);
    assert_eq!(h["x-forwarded-for"], "10.1.2.3");

    let mut h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")]);
    rewrite_request_headers(&mut h, &context(true), None, false);
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
}

#[test]
fn forwarded_proto_and_host_are_single_values() {
    let mut h = headers(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "evil"), ("x-forwarded-host", "x")]);
    rewrite_request_headers(&mut h, &context(false), None, false);
    assert_eq!(h.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), ["http"]);
    assert_eq!(h.get_all("x-forwarded-host").iter().collect::<Vec<_>>(), ["api.example.com"]);
}

#[test]
fn an_authorised_upgrade_keeps_upgrade_and_says_so_in_connection() {
    let mut h = headers(&[
        ("connection", "Upgrade, keep-alive, x-hop"),
        ("upgrade", "websocket"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]);
    rewrite_request_headers(&mut h, &context(false), Some(&principal()), true);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h.get_all("connection").iter().collect::<Vec<_>>(), ["upgrade"]);
    assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert!(!h.contains_key("x-hop") && !h.contains_key("keep-alive"), "{h:?}");
    assert_eq!(h["x-keygate-tenant"], "acme");

    let mut h = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    remove_hop_by_hop(&mut h, false);
    assert!(h.is_empty(), "{h:?}");
}

#[test]
fn websocket_handshakes_are_recognised() {
    let request = |method: &str, version: Version, pairs: &[(&str, &str)]| {
        let mut builder = Request::builder().method(method).version(version).uri("/ws");
        for (k, v) in pairs {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    };
    let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
    assert!(is_websocket_upgrade(&request("GET", Version::HTTP_11, &ws)));
    assert!(!is_websocket_upgrade(&request("POST", Version::HTTP_11, &ws)));
    assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_10, &ws)));
    assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_2, &ws)));
    assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_11, &[("upgrade", "websocket")])));
    assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_11, &[("connection", "upgrade"), ("upgrade", "h2c")])));
}

fn pairs(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn a_map_without_hop_by_hop_headers_is_left_as_it_is() {
    let original = headers(&[
        ("content-type", "application/json"),
        ("x-a", "1"),
        ("keep-alive-x", "x"),
        ("x-a", "2"),
        ("tee", "trailers"),
        ("server", "app"),
    ]);
    for keep_upgrade in [false, true] {
        let mut h = original.clone();
        remove_hop_by_hop(&mut h, keep_upgrade);
        assert_eq!(pairs(&h), pairs(&original));
    }
}

#[test]
fn connection_close_alone_is_removed() {
    for keep_upgrade in [false, true] {
        let mut h = headers(&[("Connection", "close")]);
        remove_hop_by_hop(&mut h, keep_upgrade);
        assert!(h.is_empty(), "{h:?}");
    }
    // `close` is a name like any other token: a header so named goes too.
    let mut h = headers(&[("connection", "close"), ("close", "1"), ("x-kept", "yes")]);
    remove_hop_by_hop(&mut h, false);
    assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])));
}

#[test]
fn each_hop_by_hop_header_alone_is_removed() {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-kept"), HeaderValue::from_static("yes"));
        h.insert(name.clone(), HeaderValue::from_static("x"));
        assert_eq!(hop_by_hop_present(&h), 1 << i, "{name}");
        remove_hop_by_hop(&mut h, false);
        assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])), "{name}");
    }

    let upgrade = headers(&[("x-kept", "yes"), ("Upgrade", "websocket")]);
    assert_eq!(hop_by_hop_present(&upgrade), UPGRADE_BIT);
    let mut h = upgrade.clone();
    remove_hop_by_hop(&mut h, false);
    assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])));
    // Kept for an authorised upgrade, and then this hop's `Connection` names it.
    let mut h = upgrade.clone();
    remove_hop_by_hop(&mut h, true);
    assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes"), ("upgrade", "websocket"), ("connection", "upgrade")])));
}

#[test]
fn forwarded_for_writes_every_peer_address_and_leaves_out_unusable_client_values() {
    let mut context = context(true);
    context.peer = "2001:db8::ffff:1".parse().unwrap();
    let mut h = HeaderMap::new();
    for value in [&b" 1.1.1.1 "[..], b"  ", b"caf\xe9", b"2.2.2.2,3.3.3.3"] {
        h.append("x-forwarded-for", HeaderValue::from_bytes(value).unwrap());
    }
    rewrite_request_headers(&mut h, &context, None, false);
    assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2,3.3.3.3, 2001:db8::ffff:1");

    for peer in ["0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "::ffff:192.168.100.200", "2001:db8::1"] {
        let peer: IpAddr = peer.parse().unwrap();
        assert_eq!(IpText::new(peer).as_bytes(), peer.to_string().as_bytes());
    }
    let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
    assert_eq!(IpText::new(longest).as_bytes(), longest.to_string().as_bytes());
}

#[test]
fn scopes_are_joined_by_commas() {
    for (scopes, want) in [(&[][..], ""), (&["calls:read"][..], "calls:read"), (&["a", "b", "c"][..], "a,b,c")] {
        let principal = Principal::new("key_abc", "acme", "pro", scopes.iter().map(|s| s.to_string()).collect());
        let mut h = HeaderMap::new();
        rewrite_request_headers(&mut h, &context(false), Some(&principal), false);
        assert_eq!(h["x-keygate-scopes"], want);
    }
}

#[test]
fn identity_and_override_headers_are_dropped_in_every_spelling() {
    let sent = [
        ("x-keygate.tenant", "evil"),
        ("x.keygate.plan", "agency"),
        ("x_keygate_scopes", "admin"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x.forwarded.proto", "https"),
        ("x_request_id", "forged"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x_real_ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-ssl", "on"),
        ("x-original-url", "/admin"),
        ("x.rewrite.url", "/admin"),
        ("x-app", "kept"),
        ("cookie", "kept"),
    ];
    let always = ["x_real_ip", "x.rewrite.url"];
    for trusted in [false, true] {
        let mut h = headers(&sent);
        rewrite_request_headers(&mut h, &context(trusted), Some(&principal()), false);
        let keygate_named: Vec<_> =
            h.keys().filter(|k| k.as_str().replace(['_', '.'], "-").starts_with("x-keygate-")).collect();
        assert_eq!(keygate_named.len(), 4, "only keygate's own four: {keygate_named:?}");
        assert_eq!(h["x-keygate-tenant"], "acme");
        for name in ["x_forwarded_for", "x.forwarded.proto", "x_request_id"] {
            assert!(h.get(name).is_none(), "{name} is dropped whatever the peer");
        }
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h["cookie"], "kept");
        for (name, value) in &sent[6..17] {
            let expected = if trusted && !always.contains(name) { Some(*value) } else { None };
            assert_eq!(h.get(*name).map(|v| v.to_str().unwrap()), expected, "{name}, trusted: {trusted}");
        }
    }
}

#[test]
fn spellings_fold_dash_underscore_and_dot_only() {
    let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
    assert!(is_keygate_header(&name("x.keygate_key.id")));
    assert!(!is_keygate_header(&name("x-keygatex-tenant")));
    assert!(!must_drop(&name("x-forwarded-for"), false), "keygate rewrites the canonical one itself");
    assert!(!must_drop(&name("x-forwarded-forx"), false));
    assert!(!must_drop(&name("te"), false));
    assert!(must_drop(&name("x-real-ip"), false));
    assert!(!must_drop(&name("x-real-ip"), true));
    assert!(must_drop(&name("x.real.ip"), true));
}

#[test]
fn a_content_length_beside_transfer_encoding_is_dropped() {
    let mut h = headers(&[("content-length", "100"), ("transfer-encoding", "chunked"), ("x-app", "1")]);
    remove_hop_by_hop(&mut h, false);
    assert!(h.get("content-length").is_none() && h.get("transfer-encoding").is_none());
    let mut h = headers(&[("content-length", "5")]);
    remove_hop_by_hop(&mut h, false);
    assert_eq!(h["content-length"], "5", "a length alone is kept");
}
