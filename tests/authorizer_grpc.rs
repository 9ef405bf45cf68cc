//! Envoy `ext_authz` over gRPC on the authorizer listener, driven by the tonic client
//! that envoy-types generates: the Check API answers the proxy's own decision (status,
//! JSON body, headers) in Envoy's shapes, reads the client address from trusted peers
//! only, and spends the same (Redis) rate limits as a proxied request. A bare HTTP/2
//! client (the h2 crate) checks the wire: a decided Check's framing, and the gRPC errors
//! of calls keygate cannot read.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use keygate::clock::ManualClock;
use support::redis::RedisServer;
use support::*;
use tonic::transport::{Channel, Endpoint};

/// An `[authorizer]` on a free port that trusts this machine's loopback address only
/// (tests speak from 127.0.0.2 to be an untrusted peer).
const AUTHORIZER: &str = "[authorizer]\naddress = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n";

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

fn authorizer_addr(kg: &Keygate) -> SocketAddr {
    kg.running.as_ref().unwrap().authorizer_addr.expect("the authorizer listener is up")
}

async fn start(upstream: &Upstream, routes: Option<&str>, extra: &str) -> Keygate {
    // A clock that does not move: the rate-limit windows cannot roll over mid-test.
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut builder = Keygate::builder(&upstream.url()).settings(extra).clock(clock);
    if let Some(routes) = routes {
        builder = builder.routes(routes);
    }
    builder.start().await
}

/// A gRPC client of `addr`, speaking from the local address `from`.
async fn client(addr: SocketAddr, from: &str) -> AuthorizationClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(from.parse::<IpAddr>().unwrap()))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("the authorizer accepts a gRPC connection");
    AuthorizationClient::new(channel)
}

/// A CheckRequest as Envoy sends one: the original request's method, path (with its
/// query), host, headers (lower-cased, with Envoy's pseudo-headers) and the downstream
/// client's address.
fn check_request(method: &str, path: &str, headers: &[(&str, &str)], source: &str) -> CheckRequest {
    let mut map: HashMap<String, String> = headers.iter().map(|(n, v)| (n.to_lowercase(), v.to_string())).collect();
    map.insert(":method".into(), method.into());
    map.insert(":path".into(), path.into());
    map.insert(":authority".into(), "api.example".into());
    let http = HttpRequest {
        id: "1".into(),
        method: method.into(),
        path: path.into(),
        host: "api.example".into(),
        scheme: "http".into(),
        protocol: "HTTP/1.1".into(),
        headers: map,
        ..HttpRequest::default()
    };
    let source = Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: source.into(),
                ..SocketAddress::default()
            })),
        }),
        ..Peer::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            request: Some(AttrRequest { http: Some(http), ..AttrRequest::default() }),
            ..AttributeContext::default()
        }),
    }
}

/// What a CheckResponse says, flattened for assertions.
#[derive(Debug)]
struct Checked {
    code: i32,
    /// Denied: the HTTP status Envoy answers; allowed: 200.
    status: u16,
    /// Allowed: headers set on the forwarded request; denied: on the answer.
    headers: HashMap<String, String>,
    headers_to_remove: Vec<String>,
    response_headers_to_add: HashMap<String, String>,
    body: String,
}

impl Checked {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn flatten(response: CheckResponse) -> Checked {
    let code = response.status.as_ref().expect("a status").code;
    let pairs = |options: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| -> HashMap<String, String> {
        options
            .iter()
            .map(|o| {
                let h = o.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect()
    };
    match response.http_response.expect("an http_response") {
        HttpResponse::OkResponse(ok) => Checked {
            code,
            status: 200,
            headers: pairs(&ok.headers),
            headers_to_remove: ok.headers_to_remove,
            response_headers_to_add: pairs(&ok.response_headers_to_add),
            body: String::new(),
        },
        HttpResponse::DeniedResponse(denied) => Checked {
            code,
            status: denied.status.expect("a denied status").code as u16,
            headers: pairs(&denied.headers),
            headers_to_remove: Vec::new(),
            response_headers_to_add: HashMap::new(),
            body: denied.body,
        },
        other => panic!("keygate answers allowed or denied, never {other:?}"),
    }
}

async fn check(
    client: &mut AuthorizationClient<Channel>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Checked {
    flatten(
        client.check(check_request(method, path, headers, "203.0.113.7")).await.expect("Check answers").into_inner(),
    )
}

fn bearer(secret: &keygate::keys::Secret) -> String {
    format!("Bearer {}", secret.expose())
}

/// A denied Check is the proxy's refusal of the same request: status, JSON body (but the
/// request id), and headers.
fn assert_same_refusal(proxied: &Answer, decided: &Checked, what: &str) {
    assert!(proxied.status >= 400, "{what}: the proxy answered {}", proxied.status);
    assert_eq!(decided.status, proxied.status, "{what}: {decided:?}");
    let want_code = if proxied.status == 401 { UNAUTHENTICATED } else { PERMISSION_DENIED };
    assert_eq!(decided.code, want_code, "{what}");
    assert_eq!(decided.header("x-keygate-status"), proxied.status.to_string(), "{what}");
    let (mut decided_json, mut proxied_json) = (decided.json(), proxied.json());
    assert_eq!(decided_json["error"]["request_id"].as_str(), Some(decided.header("x-request-id")), "{what}");
    decided_json["error"]["request_id"] = serde_json::Value::Null;
    proxied_json["error"]["request_id"] = serde_json::Value::Null;
    assert_eq!(decided_json, proxied_json, "{what}");
    for name in ["www-authenticate", "allow", "retry-after", "content-type", "ratelimit-policy"] {
        let proxied = proxied.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(decided.headers.get(name).map(String::as_str), proxied, "{what}: {name}");
    }
    assert_eq!(decided.headers.contains_key("ratelimit"), proxied.headers.contains_key("ratelimit"), "{what}");
    assert!(!decided.headers.contains_key("content-length"), "{what}: Envoy frames the body itself");
}

#[tokio::test]
async fn check_allows_with_the_identity_and_denies_exactly_as_the_proxy_does() {
    let upstream = upstream().await;
    let kg = start(&upstream, None, AUTHORIZER).await;
    let mut grpc = client(authorizer_addr(&kg), "127.0.0.1").await;
    let (key_id, secret) = kg.key("acme", "pro", &["calls:read"]);
    let (_, trial) = kg.key("free", "pro", &["calls:read"]);
    kg.edit_store(|data| data.tenants.get_mut("free").unwrap().plan = "trial".into());
    let (_, tiny) = kg.key("small", "tiny", &["calls:read"]);
    let (auth, trial, tiny) = (bearer(&secret), bearer(&trial), bearer(&tiny));

    // Allowed: the identity for the upstream, the key and the client's own x-keygate-*
    // removed, the rate-limit headers for the client.
    let forged = [
        ("authorization", auth.as_str()),
        ("x-keygate-tenant", "evil"),
        ("X-Keygate-Extra", "1"),
        ("x-request-id", "grpc-check-1"),
    ];
    let allowed = check(&mut grpc, "GET", "/v1/calls/9?q=1", &forged).await;
    assert_eq!((allowed.code, allowed.status), (OK, 200), "{allowed:?}");
    assert_eq!(allowed.header("x-keygate-key-id"), key_id);
    assert_eq!(allowed.header("x-keygate-tenant"), "acme");
    assert_eq!(allowed.header("x-keygate-plan"), "pro");
    assert_eq!(allowed.header("x-keygate-scopes"), "calls:read");
    assert_eq!(allowed.header("x-request-id"), "grpc-check-1");
    assert_eq!(allowed.headers_to_remove, ["authorization", "x-keygate-extra"]);
    let rate = &allowed.response_headers_to_add;
    assert!(rate["ratelimit-policy"].contains("q=300"), "{rate:?}");
    assert!(rate.contains_key("ratelimit") && rate.contains_key("x-ratelimit-remaining"), "{rate:?}");
    assert_eq!(upstream.count(), 0, "the authorizer forwards nothing");
    // A public route: no identity, and every client-sent x-keygate-* removed.
    let public = check(&mut grpc, "GET", "/status", &forged[1..]).await;
    assert_eq!(public.code, OK);
    assert!(!public.headers.contains_key("x-keygate-tenant"));
    assert_eq!(public.headers_to_remove, ["authorization", "x-keygate-extra", "x-keygate-tenant"]);

    // Denials: 401 (no key, a bad key), 403 (no API access, a scope the key lacks), 405,
    // 404, and the paths keygate refuses, each the proxy's own answer.
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/calls", vec![]),
        ("GET", "/v1/calls", vec![("authorization", "Bearer kg_nope")]),
        ("GET", "/v1/calls", vec![("authorization", &trial)]),
        ("GET", "/v1/webhooks", vec![("authorization", &auth)]),
        ("DELETE", "/v1/calls", vec![("authorization", &auth)]),
        ("GET", "/nowhere", vec![("authorization", &auth)]),
        ("GET", "/v1/calls;x=1", vec![("authorization", &auth)]),
        ("GET", "/v1/calls/%2F..", vec![("authorization", &auth)]),
        ("GET", "/v1/calls/..;/webhooks", vec![("authorization", &auth)]),
        ("GET", "/v1/calls/%zz", vec![("authorization", &auth)]),
        ("GET", "/v1/calls?api_key=x", vec![]),
    ];
    for (method, path, headers) in &cases {
        let proxied = Http::new().send(method, &kg.url(path), headers, Bytes::new()).await;
        let decided = check(&mut grpc, method, path, headers).await;
        assert_same_refusal(&proxied, &decided, &format!("{method} {path}"));
    }
    let unauthorized = check(&mut grpc, "GET", "/v1/calls", &[]).await;
    assert_eq!(unauthorized.header("www-authenticate"), "Bearer realm=\"keygate\"");
    let forbidden = check(&mut grpc, "GET", "/v1/webhooks", &[("authorization", &auth)]).await;
    assert!(forbidden.header("www-authenticate").contains("insufficient_scope"), "{forbidden:?}");
    assert_eq!(check(&mut grpc, "GET", "/v1/calls/%2F..", &[("authorization", &auth)]).await.status, 400);
    // A CheckRequest far over the headers keygate reads is not decoded at all.
    let huge = "x".repeat(1 << 20);
    let oversized = grpc.check(check_request("GET", "/v1/calls", &[("x-huge", &huge)], "203.0.113.7")).await;
    assert!(oversized.is_err(), "a 1 MiB CheckRequest was decoded");

    // 429: the tiny plan's 3 requests, spent by Checks; the proxy refuses the next one
    // too, and a Check answers its Retry-After, RateLimit headers and JSON body.
    for _ in 0..3 {
        let answer = check(&mut grpc, "GET", "/v1/calls", &[("authorization", &tiny)]).await;
        assert_eq!(answer.code, OK, "{answer:?}");
    }
    let proxied = Http::new().send("GET", &kg.url("/v1/calls"), &[("authorization", &tiny)], Bytes::new()).await;
    assert_eq!(proxied.status, 429);
    let limited = check(&mut grpc, "GET", "/v1/calls", &[("authorization", &tiny)]).await;
    assert_same_refusal(&proxied, &limited, "rate limited");
    assert!(limited.header("retry-after").parse::<u64>().unwrap() >= 1, "{limited:?}");
    assert!(limited.header("ratelimit").contains("r=0"), "{limited:?}");
    assert_eq!(limited.json()["error"]["type"], "rate_limited");
    assert_eq!(upstream.count(), 0, "a Check forwards nothing");

    // Counted as decisions, with the authorizer's mode label, and in requests_total.
    let text = metrics_text(kg.admin).await;
    let ok = metric(&text, "keygate_auth_decisions_total", &[("result", "ok"), ("mode", "authorizer")]);
    assert_eq!(ok, Some(4.0), "1 + 3 allowed decisions (a public route is no auth decision)");
    let limited = metric(&text, "keygate_auth_decisions_total", &[("result", "rate_limited"), ("mode", "authorizer")]);
    assert_eq!(limited, Some(1.0));
    let calls =
        metric(&text, "keygate_requests_total", &[("route", "/v1/calls"), ("status", "200"), ("method", "GET")]);
    assert_eq!(calls, Some(4.0), "1 + 3 allowed Checks on the route: {calls:?}");

    // A body declared over the route's max_body_bytes (1 KiB for POST /v1/calls): 413, as
    // the proxy answers it from the Content-Length before reading the body; from the
    // header, or from Envoy's `size` when no header says it. Within the limit: allowed.
    let (_, writer) = kg.key("acme", "pro", &["calls:write"]);
    let writer = bearer(&writer);
    let body = Bytes::from(vec![b'x'; 2048]);
    let proxied = Http::new().send("POST", &kg.url("/v1/calls"), &[("authorization", &writer)], body).await;
    assert_eq!(proxied.status, 413);
    let declared = [("authorization", writer.as_str()), ("content-length", "2048")];
    let decided = check(&mut grpc, "POST", "/v1/calls", &declared).await;
    assert_same_refusal(&proxied, &decided, "a declared body over max_body_bytes");
    let mut sized = check_request("POST", "/v1/calls", &declared[..1], "203.0.113.7");
    sized.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().size = 2048;
    let decided = flatten(grpc.check(sized).await.expect("Check answers").into_inner());
    assert_same_refusal(&proxied, &decided, "Envoy's size over max_body_bytes");
    let within = [("authorization", writer.as_str()), ("content-length", "1024")];
    assert_eq!(check(&mut grpc, "POST", "/v1/calls", &within).await.code, OK);
    kg.stop().await;
}

/// `attributes.source.address` is the client (for the per-address budgets) only when
/// the peer is a trusted proxy; from any other peer the peer itself is the client.
#[tokio::test]
async fn the_source_address_is_the_client_only_from_a_trusted_peer() {
    let upstream = upstream().await;
    let settings = format!("{AUTHORIZER}[server]\nfailed_auth_per_minute = 2\n");
    let kg = start(&upstream, None, &settings).await;
    let authz = authorizer_addr(&kg);
    let unknown = format!("Bearer {}", keygate::keys::generate_secret().expose());
    let bad_key = |source: &str| check_request("GET", "/v1/calls", &[("authorization", &unknown)], source);
    let status = |response: CheckResponse| flatten(response).status;

    // From the trusted peer, each source address has a budget of its own.
    let mut trusted = client(authz, "127.0.0.1").await;
    for _ in 0..2 {
        assert_eq!(status(trusted.check(bad_key("198.51.100.1")).await.unwrap().into_inner()), 401);
    }
    let over = flatten(trusted.check(bad_key("198.51.100.1")).await.unwrap().into_inner());
    assert_eq!(over.status, 429, "{over:?}");
    assert!(over.json()["error"]["message"].as_str().unwrap().contains("failed authentication"), "{over:?}");
    assert_eq!(status(trusted.check(bad_key("198.51.100.2")).await.unwrap().into_inner()), 401);

    // From an untrusted peer, the source address is not believed: every call counts
    // against the peer, whatever address it names.
    let mut untrusted = client(authz, "127.0.0.2").await;
    assert_eq!(status(untrusted.check(bad_key("198.51.100.3")).await.unwrap().into_inner()), 401);
    assert_eq!(status(untrusted.check(bad_key("198.51.100.4")).await.unwrap().into_inner()), 401);
    assert_eq!(status(untrusted.check(bad_key("198.51.100.5")).await.unwrap().into_inner()), 429);
    assert_eq!(status(trusted.check(bad_key("198.51.100.5")).await.unwrap().into_inner()), 401);
    kg.stop().await;
}

/// A plan's limit counted in Redis by the proxy and by Checks together: one budget,
/// spent by whichever asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_proxied_requests_spend_one_redis_limit() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    // A long window: Redis's clock, which no test moves, cannot roll it over mid-test.
    let routes =
        format!("{}\n[plans.few]\nrequests = 3\nwindow = \"1h\"\n", ROUTES.replace("{upstream}", &upstream.url()));
    let settings = format!(
        "{AUTHORIZER}[redis]\nurl = \"{}\"\ntimeout = \"1s\"\n[limits]\nbackend = \"redis\"\non_store_error = \"deny\"\n",
        redis.url()
    );
    let kg = start(&upstream, Some(&routes), &settings).await;
    let mut grpc = client(authorizer_addr(&kg), "127.0.0.1").await;
    let (_, secret) = kg.key("acme", "few", &["calls:read"]);
    let auth = bearer(&secret);
    let proxied =
        || async { Http::new().send("GET", &kg.url("/v1/calls"), &[("authorization", &auth)], Bytes::new()).await };

    let first = check(&mut grpc, "GET", "/v1/calls", &[("authorization", &auth)]).await;
    assert_eq!(first.code, OK, "{first:?}");
    assert_eq!(first.response_headers_to_add["x-ratelimit-remaining"], "2", "{first:?}");
    assert_eq!(proxied().await.status, 200);
    let third = check(&mut grpc, "GET", "/v1/calls", &[("authorization", &auth)]).await;
    assert_eq!(third.response_headers_to_add["x-ratelimit-remaining"], "0", "{third:?}");
    assert_eq!(counted_by(&redis), 3, "Redis counted two Checks and one request");

    let refused = check(&mut grpc, "GET", "/v1/calls", &[("authorization", &auth)]).await;
    assert_eq!((refused.code, refused.status), (PERMISSION_DENIED, 429), "{refused:?}");
    assert!(refused.header("retry-after").parse::<u64>().unwrap() >= 1);
    let answer = proxied().await;
    assert_eq!(answer.status, 429);
    assert_eq!(upstream.count(), 1, "only the proxied request went upstream");
    kg.stop().await;
}

/// What Redis counted for the limits: each window's counter.
fn counted_by(redis: &RedisServer) -> u64 {
    redis
        .cli(&["--scan", "--pattern", "kg:rl:*"])
        .lines()
        .map(|k| redis.cli(&["HGET", k, "-1"]).trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// The real binary serves HTTP checks and Checks on one port, and logs a Check like a
/// proxied request, with `listener: "authorizer"` and `protocol: "grpc"`.
#[tokio::test]
async fn the_binary_serves_both_protocols_on_one_port_and_logs_each_check() {
    let upstream = upstream().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = format!("[authorizer]\naddress = \"127.0.0.1:{port}\"\n");
    let kg = Keygate::builder(&upstream.url()).settings(&settings).start().await;
    let (key_id, secret) = kg.key("acme", "pro", &["calls:read"]);
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;
    let served = support::process::LoggedServe::spawn(&config);
    let up =
        eventually(Duration::from_secs(20), async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
            .await;
    assert!(up, "the authorizer did not listen");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut grpc = client(addr, "127.0.0.1").await;
    let headers = [("authorization", bearer(&secret)), ("x-request-id", "grpc-line-1".to_string())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let allowed = check(&mut grpc, "GET", "/v1/calls/1", &headers).await;
    assert_eq!(allowed.code, OK, "{allowed:?}");
    let denied = check(&mut grpc, "GET", "/v1/calls/1", &[("x-request-id", "grpc-line-2")]).await;
    assert_eq!(denied.status, 401);
    // The same port answers an HTTP check.
    let http = Http::new().send("GET", &format!("http://{addr}/v1/calls/1"), &[], Bytes::new()).await;
    assert_eq!((http.status, http.header("x-keygate-status")), (401, "401"));

    let mut lines = Vec::new();
    let logged = eventually(Duration::from_secs(5), async || {
        lines = access_lines(&served.lines().join("\n"))
            .into_iter()
            .filter(|l| l["fields"]["request_id"].as_str().is_some_and(|id| id.starts_with("grpc-line-")))
            .collect();
        lines.len() == 2
    })
    .await;
    assert!(logged, "no access lines: {:?}", served.lines());
    let line = lines.iter().find(|l| l["fields"]["request_id"] == "grpc-line-1").unwrap();
    let line = &line["fields"];
    assert_eq!(line["listener"], "authorizer", "{line}");
    assert_eq!(line["protocol"], "grpc", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["route"], "/v1/calls", "{line}");
    assert_eq!(line["key_id"], key_id.as_str(), "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    let line = &lines.iter().find(|l| l["fields"]["request_id"] == "grpc-line-2").unwrap()["fields"];
    assert_eq!((line["status"].as_u64(), line["decision"].as_str()), (Some(401), Some("missing")), "{line}");
}

/// A call's answer as a bare HTTP/2 client sees it: the head, each DATA frame, the
/// trailers.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: http::HeaderMap,
    frames: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Wire {
    /// The `grpc-status` and `grpc-message` of a trailers-only answer (checked to be one).
    fn error(&self) -> (u32, String) {
        assert_eq!(self.headers["content-type"], "application/grpc", "{self:?}");
        assert!(self.frames.is_empty() && self.trailers.is_none(), "not trailers-only: {self:?}");
        let code = self.headers.get("grpc-status").expect("a grpc-status").to_str().unwrap().parse().unwrap();
        let message = self.headers.get("grpc-message").map_or("", |m| m.to_str().unwrap()).to_string();
        (code, message)
    }
}

/// A length-prefixed gRPC message with its compressed flag.
fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn encoded(check: &CheckRequest) -> Vec<u8> {
    prost::Message::encode_to_vec(check)
}

/// One call over a new bare HTTP/2 connection (the h2 crate): `method` on `path` with a
/// gRPC content type and `headers`, the body sent as `chunks` (a DATA frame each), the
/// stream ended after them only if `end`. The answer must come while the request stream
/// is still as the client left it.
async fn raw_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    end: bool,
) -> Wire {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(stream).await.expect("an HTTP/2 connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut head = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        head = head.header(*name, *value);
    }
    let (response, mut body) = send.send_request(head.body(()).unwrap(), end && chunks.is_empty()).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        body.send_data(Bytes::copy_from_slice(chunk), end && i + 1 == chunks.len()).unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer, with the request stream as the client left it")
        .expect("a response");
    let (head, mut answer) = response.into_parts();
    let mut frames = Vec::new();
    while let Some(frame) = answer.data().await {
        let frame = frame.expect("the answer's data");
        let _ = answer.flow_control().release_capacity(frame.len());
        frames.push(frame);
    }
    let trailers = answer.trailers().await.expect("the answer's trailers");
    drop(body);
    Wire { status: head.status.as_u16(), headers: head.headers, frames, trailers }
}

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A decided Check on the wire: HTTP 200 and `application/grpc`, one DATA frame holding
/// the length-prefixed CheckResponse, then the trailers `grpc-status: 0`; a message that
/// arrives in several DATA frames (its prefix split) is read whole.
#[tokio::test]
async fn a_decided_check_is_one_data_frame_then_grpc_status_0() {
    let upstream = upstream().await;
    let kg = start(&upstream, None, AUTHORIZER).await;
    let (_, secret) = kg.key("acme", "pro", &["calls:read"]);
    let auth = bearer(&secret);
    let message = framed(0, &encoded(&check_request("GET", "/v1/calls", &[("authorization", &auth)], "203.0.113.7")));

    for chunks in [vec![&message[..]], vec![&message[..2], &message[2..4], &message[4..]]] {
        let wire = raw_call(authorizer_addr(&kg), "POST", CHECK, &[], &chunks, true).await;
        assert_eq!(wire.status, 200, "{wire:?}");
        assert_eq!(wire.headers["content-type"], "application/grpc", "{wire:?}");
        assert!(!wire.headers.contains_key("grpc-status"), "not trailers-only: {wire:?}");
        assert_eq!(wire.frames.len(), 1, "one DATA frame: {wire:?}");
        let data = &wire.frames[0];
        assert_eq!(data[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize, data.len() - 5, "one whole message");
        let answer: CheckResponse = prost::Message::decode(&data[5..]).expect("a CheckResponse");
        let answer = flatten(answer);
        assert_eq!((answer.code, answer.status), (OK, 200), "{answer:?}");
        assert_eq!(answer.header("x-keygate-tenant"), "acme");
        let trailers = wire.trailers.as_ref().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0", "{wire:?}");
    }
    kg.stop().await;
}

/// A call keygate cannot read is a trailers-only gRPC error with a message, and no
/// decision: an unknown method 12, a method other than POST HTTP 405 with 13, a
/// compressed message 12, and no message, a truncated one, two, or bytes that are no
/// CheckRequest 13.
#[tokio::test]
async fn malformed_calls_are_grpc_errors_and_no_decision() {
    let upstream = upstream().await;
    let kg = start(&upstream, None, AUTHORIZER).await;
    let addr = authorizer_addr(&kg);
    let (_, secret) = kg.key("acme", "pro", &["calls:read"]);
    let auth = bearer(&secret);
    let message = encoded(&check_request("GET", "/v1/calls", &[("authorization", &auth)], "203.0.113.7"));
    let one = framed(0, &message);

    let unknown = raw_call(addr, "POST", "/envoy.service.auth.v3.Authorization/Nope", &[], &[&one], true).await;
    assert_eq!(unknown.status, 200);
    let (code, text) = unknown.error();
    assert_eq!(code, 12, "{text}");
    assert!(text.contains("/envoy.service.auth.v3.Authorization/Nope"), "{text}");

    // gRPC is POST only: grpc-go answers 405 with INTERNAL.
    let get = raw_call(addr, "GET", CHECK, &[], &[], true).await;
    assert_eq!((get.status, get.error().0), (405, 13), "{get:?}");

    for encoding in [&[("grpc-encoding", "gzip")][..], &[]] {
        let compressed = raw_call(addr, "POST", CHECK, encoding, &[&framed(1, &message)], true).await;
        assert_eq!(compressed.status, 200);
        let (code, text) = compressed.error();
        assert_eq!(code, 12, "{encoding:?}: {text}");
        assert!(text.contains("compressed"), "{text}");
        assert_eq!(compressed.headers["grpc-accept-encoding"], "identity");
    }

    let two = [one.clone(), one.clone()].concat();
    let garbage = framed(0, b"\xff\xff\xff\xff");
    let cases: [(&str, &[u8]); 4] = [
        ("two messages", &two),
        ("garbage", &garbage),
        ("truncated", &one[..one.len() - 1]),
        ("a bare prefix", &one[..3]),
    ];
    for (what, body) in cases {
        let wire = raw_call(addr, "POST", CHECK, &[], &[body], true).await;
        assert_eq!(wire.status, 200, "{what}");
        let (code, text) = wire.error();
        assert_eq!(code, 13, "{what}: {text}");
        assert!(!text.is_empty(), "{what}: a message says why");
    }
    let empty = raw_call(addr, "POST", CHECK, &[], &[], true).await;
    assert_eq!(empty.error().0, 13, "{empty:?}");

    // None of these was a decision; the next Check is the first.
    let text = metrics_text(kg.admin).await;
    let decided = metric(&text, "keygate_auth_decisions_total", &[("result", "ok"), ("mode", "authorizer")]);
    assert_eq!(decided.unwrap_or(0.0), 0.0, "a malformed call was decided");
    let wire = raw_call(addr, "POST", CHECK, &[], &[&one], true).await;
    let status = wire.trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes());
    assert_eq!(status, Some(&b"0"[..]), "{wire:?}");
    let text = metrics_text(kg.admin).await;
    let decided = metric(&text, "keygate_auth_decisions_total", &[("result", "ok"), ("mode", "authorizer")]);
    assert_eq!(decided, Some(1.0));
    kg.stop().await;
}

/// A message declared over the limit (4 × `server.max_header_bytes`, at least 64 KiB) is
/// refused RESOURCE_EXHAUSTED as soon as its prefix arrives: the answer comes while the
/// client still holds the rest of the body back.
#[tokio::test]
async fn a_message_declared_over_the_limit_is_refused_from_its_prefix() {
    let upstream = upstream().await;
    let kg = start(&upstream, None, AUTHORIZER).await;
    let addr = authorizer_addr(&kg);
    for declared in [16u32 << 20, u32::MAX] {
        let mut start = vec![0];
        start.extend_from_slice(&declared.to_be_bytes());
        start.extend_from_slice(&[b'x'; 1024]);
        let wire = raw_call(addr, "POST", CHECK, &[], &[&start], false).await;
        assert_eq!(wire.status, 200);
        let (code, text) = wire.error();
        assert_eq!(code, 8, "{text}");
        assert!(text.contains(&declared.to_string()), "{text}");
    }
    kg.stop().await;
}
