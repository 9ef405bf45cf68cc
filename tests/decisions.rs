//! Every decision of docs/reference.md §4.2 that the embedded store can make, through the real proxy.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate::clock::{Clock, ManualClock, SystemClock};
use support::*;

#[tokio::test]
async fn a_valid_key_with_the_scope_reaches_the_upstream() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (key_id, key) = kg.key("acme", "pro", &["calls:read"]);
    let answer = Http::new().get(&kg.url("/v1/calls/7?page=2"), Some(key.expose())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "ok");
    let seen = upstream.last();
    assert_eq!(seen.target, "/v1/calls/7?page=2");
    assert_eq!(seen.headers["x-keygate-key-id"], key_id.as_str());
    assert_eq!(seen.headers["x-keygate-tenant"], "acme");
    kg.stop().await;
}

#[tokio::test]
async fn unauthorized_tells_missing_malformed_unknown_expired_and_revoked_apart() {
    let upstream = upstream().await;
    // Expiry reads the injected clock; keys get `expires_at` from the wall clock, so the
    // clock starts at the wall time and is moved past the expiry instead of waiting.
    let clock = Arc::new(ManualClock::new(SystemClock.now_millis()));
    let kg = Keygate::builder(&upstream.url()).clock(clock.clone()).start().await;
    let (_, valid) = kg.key("acme", "pro", &["calls:read"]);
    let (_, expiring) = kg.key_with("acme", "pro", &["calls:read"], Some(Duration::from_secs(1)));
    let created = SystemClock.now_millis();
    let (revoked_id, revoked) = kg.key("acme", "pro", &["calls:read"]);
    kg.edit_store(|data| {
        data.keys.get_mut(&revoked_id).unwrap().revoked_at = Some(time::OffsetDateTime::now_utc());
    });
    kg.sync_store().await;
    let unknown = keygate::keys::generate_secret();
    let mut malformed = valid.expose().to_string();
    let last = malformed.pop().unwrap();
    malformed.push(if last == 'A' { 'B' } else { 'A' });

    let http = Http::new();
    let url = kg.url("/v1/calls");
    assert_eq!(http.get(&url, Some(expiring.expose())).await.status, 200, "not expired yet");
    let admitted = upstream.count();
    clock.set(created + 1_100); // 1.1 s after `expiring` was created: it has expired
    let cases = [
        (None, "missing"),
        (Some(malformed.as_str()), "malformed"),
        (Some("not-a-key"), "malformed"),
        (Some(unknown.expose()), "unknown"),
        (Some(expiring.expose()), "expired"),
        (Some(revoked.expose()), "revoked"),
    ];
    let mut messages = std::collections::HashSet::new();
    for (key, word) in cases {
        let answer = http.get(&url, key).await;
        assert_eq!(answer.status, 401, "{word}: {}", answer.text());
        assert_eq!(answer.error_type(), "unauthorized");
        assert_eq!(answer.header("content-type"), "application/json");
        assert!(answer.message().to_lowercase().contains(word), "{word}: {}", answer.message());
        let www = answer.header("www-authenticate");
        if key.is_some() {
            assert_eq!(www, "Bearer realm=\"keygate\", error=\"invalid_token\"");
        } else {
            assert_eq!(www, "Bearer realm=\"keygate\"");
        }
        assert!(!answer.json()["error"]["request_id"].as_str().unwrap().is_empty());
        messages.insert(answer.message());
    }
    assert_eq!(messages.len(), 6, "one message per failure kind, and per malformation: {messages:?}");
    assert_eq!(upstream.count(), admitted, "no refused request reaches the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn a_missing_scope_is_403_with_insufficient_scope() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let bearer = format!("Bearer {}", key.expose());
    let answer = Http::new().send("POST", &kg.url("/v1/calls"), &[("authorization", &bearer)], Bytes::from("{}")).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.error_type(), "forbidden");
    assert_eq!(
        answer.header("www-authenticate"),
        "Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"calls:write\""
    );
    assert!(answer.message().contains("calls:write"));
    assert_eq!(upstream.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn plans_without_api_access_or_missing_from_the_policy_are_403() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, trial) = kg.key("trialco", "pro", &["calls:read"]);
    let (_, gold) = kg.key("goldco", "pro", &["calls:read"]);
    kg.edit_store(|data| {
        data.tenants.get_mut("trialco").unwrap().plan = "trial".into();
        data.tenants.get_mut("goldco").unwrap().plan = "gold".into();
    });
    kg.sync_store().await;
    let http = Http::new();
    let answer = http.get(&kg.url("/v1/calls"), Some(trial.expose())).await;
    assert_eq!(answer.status, 403);
    assert!(answer.message().contains("trial"), "{}", answer.message());
    assert!(answer.message().contains("API access"), "{}", answer.message());
    let answer = http.get(&kg.url("/v1/calls"), Some(gold.expose())).await;
    assert_eq!(answer.status, 403);
    assert!(answer.message().contains("gold"), "{}", answer.message());
    kg.stop().await;
}

#[tokio::test]
async fn no_route_is_404_and_a_wrong_method_is_405_with_allow_and_no_fallback() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read", "calls:write"]);
    let http = Http::new();
    let answer = http.get(&kg.url("/v2/nothing"), Some(key.expose())).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.error_type(), "not_found");
    // A segment boundary: /v1/callsign is not /v1/calls.
    assert_eq!(http.get(&kg.url("/v1/callsign"), Some(key.expose())).await.status, 404);
    let bearer = format!("Bearer {}", key.expose());
    let answer = http.send("DELETE", &kg.url("/v1/calls/7"), &[("authorization", &bearer)], Bytes::new()).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.error_type(), "method_not_allowed");
    assert_eq!(answer.header("allow"), "GET, HEAD, POST");
    assert_eq!(upstream.count(), 0);
    kg.stop().await;
}

#[tokio::test]
async fn public_routes_need_no_key_and_carry_no_identity() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let answer = Http::new()
        .send("GET", &kg.url("/status"), &[("x-keygate-tenant", "spoofed"), ("x_keygate_plan", "x")], Bytes::new())
        .await;
    assert_eq!(answer.status, 200);
    let seen = upstream.last();
    assert!(seen.headers.keys().all(|k| !k.as_str().replace('_', "-").starts_with("x-keygate-")), "{:?}", seen.headers);
    assert!(answer.headers.get("ratelimit").is_none(), "public routes do not reach the limiter");
    kg.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413_declared_or_streamed() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:write"]);
    let bearer = format!("Bearer {}", key.expose());
    let http = Http::new();
    let ok =
        http.send("POST", &kg.url("/v1/calls"), &[("authorization", &bearer)], Bytes::from(vec![b'a'; 1024])).await;
    assert_eq!(ok.status, 200);
    let declared =
        http.send("POST", &kg.url("/v1/calls"), &[("authorization", &bearer)], Bytes::from(vec![b'a'; 1025])).await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.error_type(), "payload_too_large");

    // Chunked, no Content-Length: refused while streaming.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> =
        (0..8).map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'b'; 512])))).collect();
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(tokio_stream::iter(chunks)));
    let request = http::Request::post(kg.url("/v1/calls")).header("authorization", &bearer).body(body).unwrap();
    let streamed = http.request(request).await;
    assert_eq!(streamed.status, 413, "{}", streamed.text());
    kg.stop().await;
}

#[tokio::test]
async fn a_key_in_the_query_string_is_refused_under_any_name() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let http = Http::new();
    for query in
        [format!("api_key={}", key.expose()), format!("x=1&anything={}", key.expose()), key.expose().to_string()]
    {
        let answer = http.get(&kg.url(&format!("/v1/calls?{query}")), Some(key.expose())).await;
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.error_type(), "bad_request");
        assert!(!answer.text().contains(&key.expose()[8..]));
    }
    // Not a key (bad checksum): allowed through.
    let answer = http.get(&kg.url("/v1/calls?q=kg_notakey"), Some(key.expose())).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.count(), 1);
    kg.stop().await;
}

#[tokio::test]
async fn bad_paths_and_hosts_are_400() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let auth = format!("Authorization: Bearer {}\r\n", key.expose());
    for target in ["/v1/calls/..%2Fadmin", "/v1/calls;jsessionid=1", "/v1/calls/%00", "/../v1/calls", "/v1/calls/%zz"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(kg.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("\"bad_request\""), "{target}: {answer}");
    }
    let two_hosts = format!("GET /v1/calls HTTP/1.1\r\nHost: a\r\nHost: b\r\n{auth}Connection: close\r\n\r\n");
    assert!(raw(kg.addr, two_hosts.as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 400"));
    let absolute = format!("GET http://other.example/v1/calls HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
    assert!(raw(kg.addr, absolute.as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 400"));
    let absolute_same = format!("GET http://a/v1/calls HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
    assert!(raw(kg.addr, absolute_same.as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    // Encoded dots are decoded before matching, and the upstream gets the normalised path.
    let dots = format!("GET /v1/x/%2e%2e/calls/%41 HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
    assert!(raw(kg.addr, dots.as_bytes(), Duration::from_secs(5)).await.starts_with("HTTP/1.1 200"));
    assert_eq!(upstream.last().target, "/v1/calls/A");
    // A raw `#` never reaches the path rules: the HTTP parser ends the target's path at it
    // and drops the fragment. What is matched is what is forwarded, so the fragment
    // cannot carry a path past the route that admitted it.
    for (target, forwarded) in [("/v1/calls#/../../admin", "/v1/calls"), ("/v1/calls/%41#x", "/v1/calls/A")] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(kg.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{target}: {answer}");
        assert_eq!(upstream.last().target, forwarded, "{target}");
    }
    // CONNECT names a host and port, not a path: refused on every route, never forwarded.
    let before = upstream.count();
    for target in ["a:443", "127.0.0.1:80"] {
        let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}Connection: close\r\n\r\n");
        let answer = raw(kg.addr, connect.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "CONNECT {target}: {answer}");
    }
    assert_eq!(upstream.count(), before, "a CONNECT reached the upstream");
    kg.stop().await;
}

#[tokio::test]
async fn upstream_refused_is_502_and_slow_headers_are_504() {
    let closed = closed_port().await;
    let kg = Keygate::builder(&format!("http://{closed}")).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let answer = Http::new().get(&kg.url("/v1/calls"), Some(key.expose())).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.error_type(), "bad_gateway");
    kg.stop().await;

    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let started = std::time::Instant::now();
    let answer = Http::new().get(&kg.url("/slow/3000"), Some(key.expose())).await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.error_type(), "gateway_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500), "the 1 s timeout was not applied");
    kg.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_kept_when_valid() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let http = Http::new();
    let answer = http.send("GET", &kg.url("/status"), &[("x-request-id", "abc-123:x.y_z")], Bytes::new()).await;
    assert_eq!(answer.header("x-request-id"), "abc-123:x.y_z");
    assert_eq!(upstream.last().headers["x-request-id"], "abc-123:x.y_z");
    let answer = http.send("GET", &kg.url("/status"), &[("x-request-id", "bad id with spaces")], Bytes::new()).await;
    let generated = answer.header("x-request-id").to_string();
    assert_ne!(generated, "bad id with spaces");
    assert_eq!(upstream.last().headers["x-request-id"], generated.as_str());
    let refused = http.get(&kg.url("/v1/calls"), None).await;
    assert_eq!(refused.json()["error"]["request_id"], refused.header("x-request-id"));
    // Found by the `headers` fuzz target: an id that holds a well-formed key, even with
    // text around it, is replaced (request ids are logged; keys never are).
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    for sent in [key.expose().to_string(), format!("{}Ns", key.expose()), format!("req-{}", key.expose())] {
        let answer = http.send("GET", &kg.url("/status"), &[("x-request-id", sent.as_str())], Bytes::new()).await;
        let id = answer.header("x-request-id").to_string();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{sent} was kept as {id}");
        assert_eq!(upstream.last().headers["x-request-id"], id.as_str());
    }
    kg.stop().await;
}

#[tokio::test]
async fn cors_preflights_go_upstream_without_a_key_only_when_enabled() {
    let upstream = upstream().await;
    let preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST")];
    let kg = Keygate::builder(&upstream.url()).start().await;
    let answer = Http::new().send("OPTIONS", &kg.url("/v1/calls"), &preflight, Bytes::new()).await;
    assert_eq!(answer.status, 405, "off by default: OPTIONS is not a method of the route");
    kg.stop().await;

    let routes = ROUTES
        .replace("{upstream}", &upstream.url())
        .replace("default = \"deny\"", "default = \"deny\"\nforward_preflight = true");
    let kg = Keygate::builder(&upstream.url()).routes(&routes).start().await;
    let answer = Http::new().send("OPTIONS", &kg.url("/v1/calls"), &preflight, Bytes::new()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = upstream.last();
    assert_eq!(seen.method, "OPTIONS");
    assert!(seen.headers.get("x-keygate-tenant").is_none());
    // Not a preflight (no Origin): still needs a route for OPTIONS.
    let answer = Http::new().send("OPTIONS", &kg.url("/v1/calls"), &[], Bytes::new()).await;
    assert_eq!(answer.status, 405);
    kg.stop().await;
}

#[tokio::test]
async fn a_key_found_under_an_old_pepper_is_re_stored_under_the_current_one() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await; // peppers: p2 (current), p1
    let (id, _) = kg.key("acme", "pro", &["calls:read"]);
    // A key made while p1 was current, and one made before any pepper (plain SHA-256).
    let old_peppers = keygate::keys::Peppers::from_entries(vec![("p1".into(), b"first-pepper-secret".to_vec())]);
    let no_pepper = keygate::keys::Peppers::default();
    let policy = kg.policy();
    let mut made = Vec::new();
    for peppers in [&old_peppers, &no_pepper] {
        let created = kg
            .store
            .update(|data| {
                let new = keygate::keys::manage::NewKey {
                    tenant: "acme".into(),
                    name: "old".into(),
                    scopes: vec!["calls:read".into()],
                    expires_in: None,
                };
                keygate::keys::manage::create_key(data, &policy, peppers, &new, time::OffsetDateTime::now_utc())
            })
            .unwrap();
        made.push(created);
    }
    kg.proxy_store().refresh().unwrap();
    assert_eq!(kg.store.snapshot().keys[&id].digest.pepper_id, "p2");
    for created in &made {
        let answer = Http::new().get(&kg.url("/v1/calls"), Some(created.secret.expose())).await;
        assert_eq!(answer.status, 200);
        let key_id = created.record.id.clone();
        let store = &kg.store;
        let restored = eventually(Duration::from_secs(3), async || {
            store.refresh().unwrap();
            store.snapshot().keys[&key_id].digest.pepper_id == "p2"
        })
        .await;
        assert!(restored, "the key was not re-stored under the current pepper");
        // And it still works under the new digest.
        kg.proxy_store().refresh().unwrap();
        assert_eq!(Http::new().get(&kg.url("/v1/calls"), Some(created.secret.expose())).await.status, 200);
    }
    kg.stop().await;
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_error_not_the_upstreams() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:write"]);
    let auth = format!("Authorization: Bearer {}\r\n", key.expose());
    let head =
        format!("POST /v1/calls HTTP/1.1\r\nHost: a\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    // A chunk size that is not hex, one that overflows, a bare LF, a chunk longer than its size.
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "3\r\nhelloXX\r\n0\r\n\r\n",
    ] {
        let answer = raw(kg.addr, format!("{head}{body}").as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer}");
        assert!(answer.contains("\"bad_request\""), "{body:?}: {answer}");
    }
    let text = metrics_text(kg.admin).await;
    let counted = |status: &str| {
        metric(&text, "keygate_requests_total", &[("route", "/v1/calls"), ("method", "POST"), ("status", status)])
    };
    assert_eq!(counted("400"), Some(4.0), "{text}");
    assert_eq!(counted("502"), None, "a client's broken body is never the upstream's error: {text}");
    kg.stop().await;
}

/// A client that goes away in the middle of its request body (HTTP/1.1: the connection
/// closes before the declared length; HTTP/2: RST_STREAM CANCEL) is counted and logged as
/// 499 `client_closed`: neither the upstream's error (502) nor a malformed body (400).
#[tokio::test]
async fn a_client_that_goes_away_mid_body_is_499_not_the_upstreams_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (upstream, heads) = heads_upstream().await;
    let kg = Keygate::builder(&format!("http://{upstream}")).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:write"]);

    // HTTP/1.1: 10 of 1000 bytes, then the client's side closes.
    let mut stream = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let head = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n0123456789",
        key.expose()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let arrived = heads.clone();
    assert!(eventually(Duration::from_secs(5), async || arrived.load(Ordering::SeqCst) == 1).await, "forwarded");
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;

    // HTTP/2: the stream is reset while its body is open.
    let tcp = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(kg.url("/v1/calls"))
        .header("authorization", format!("Bearer {}", key.expose()))
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"0123456789"), false).unwrap();
    let arrived = heads.clone();
    assert!(eventually(Duration::from_secs(5), async || arrived.load(Ordering::SeqCst) == 2).await, "forwarded");
    body.send_reset(h2::Reason::CANCEL);

    let admin = kg.admin;
    let counted = async |status: &str| {
        let text = metrics_text(admin).await;
        metric(&text, "keygate_requests_total", &[("route", "/v1/calls"), ("method", "POST"), ("status", status)])
    };
    assert!(
        eventually(Duration::from_secs(10), async || counted("499").await == Some(2.0)).await,
        "both were counted as 499: {}",
        metrics_text(admin).await
    );
    for status in ["400", "502", "504"] {
        assert_eq!(counted(status).await, None, "a client gone mid-body is not a {status}");
    }
    kg.stop().await;
}

/// An upstream that counts request heads as they arrive, then reads the body to its end
/// (or error) and answers 200: a test can act while a request body is in flight.
async fn heads_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counter = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = request.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, heads)
}
