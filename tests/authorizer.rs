//! keygate as an authorizer: a real nginx (`auth_request`, with the shipped
//! deploy/nginx/keygate-auth-request.conf) in front of a recording upstream, and raw
//! requests in Traefik's ForwardAuth and Envoy's `ext_authz` HTTP-mode conventions.
//! Denials are compared with the proxy's own answers to the same requests.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keygate::clock::ManualClock;
use keygate::{Options, Settings};
use support::*;

const NGINX: &str = "/usr/sbin/nginx";
const SHIPPED_CONF: &str = "deploy/nginx/keygate-auth-request.conf";

/// An `[authorizer]` on a free port that trusts this machine's loopback address only
/// (tests speak from 127.0.0.2 to be an untrusted peer).
const AUTHORIZER: &str = "[authorizer]\naddress = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n";

fn authorizer_addr(kg: &Keygate) -> SocketAddr {
    kg.running.as_ref().unwrap().authorizer_addr.expect("the authorizer listener is up")
}

async fn start(upstream: &Upstream, extra: &str) -> Keygate {
    // A clock that does not move: the rate-limit windows cannot roll over mid-test.
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    Keygate::builder(&upstream.url()).settings(extra).clock(clock).start().await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real nginx (Debian's), started on a free port with its own prefix directory and
/// the shipped config, pointed at `authorizer` and `app`; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(authorizer: SocketAddr, app: SocketAddr) -> Nginx {
        assert!(Path::new(NGINX).exists(), "{NGINX} is missing: install Debian's nginx (apt-get install nginx)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_CONF)).unwrap();
        let site = shipped
            .replace("server keygate:9191;", &format!("server {authorizer};"))
            .replace("server app:8080;", &format!("server {app};"))
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(site, shipped);
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/site.conf;\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let test = Command::new(NGINX).arg("-p").arg(dir.path()).arg("-c").arg(&conf).arg("-t").output().unwrap();
        assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        Nginx { child, port, dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    async fn ready(&self) {
        let port = self.port;
        let up = eventually(Duration::from_secs(10), async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "nginx did not listen within 10 s: {}", self.error_log());
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    Http::new().send("GET", url, headers, Bytes::new()).await
}

fn bearer(secret: &keygate::keys::Secret) -> String {
    format!("Bearer {}", secret.expose())
}

#[tokio::test]
async fn nginx_auth_request_passes_the_identity_and_restores_keygates_refusals() {
    let upstream = upstream().await;
    let kg = start(&upstream, AUTHORIZER).await;
    let nginx = Nginx::start(authorizer_addr(&kg), upstream.addr);
    nginx.ready().await;
    let (key_id, secret) = kg.key("acme", "pro", &["calls:read"]);
    let auth = bearer(&secret);

    // Allowed: the identity reaches the upstream, the client's own x-keygate-* does not,
    // nor does the key.
    let forged = [
        ("authorization", auth.as_str()),
        ("x-keygate-tenant", "evil"),
        ("X-Keygate-Key-Id", "forged"),
        ("x-keygate-plan", "unlimited"),
        ("x-keygate-scopes", "admin"),
        ("x-keygate-status", "200"),
    ];
    let answer = get(&nginx.url("/v1/calls/1?page=2"), &forged).await;
    assert_eq!(answer.status, 200, "{} {}", answer.text(), nginx.error_log());
    let seen = upstream.last();
    assert_eq!(seen.target, "/v1/calls/1?page=2");
    assert_eq!(seen.headers["x-keygate-key-id"], key_id.as_str());
    assert_eq!(seen.headers["x-keygate-tenant"], "acme");
    assert_eq!(seen.headers["x-keygate-plan"], "pro");
    assert_eq!(seen.headers["x-keygate-scopes"], "calls:read");
    assert_eq!(seen.headers.get_all("x-keygate-tenant").iter().count(), 1);
    assert!(!seen.headers.contains_key("x-keygate-status"));
    assert!(!seen.headers.contains_key("authorization"));
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(answer.header("ratelimit").contains("r="), "{:?}", answer.headers);

    // A public route: no identity at all, whatever the client sent.
    let answer = get(&nginx.url("/status"), &forged[1..]).await;
    assert_eq!(answer.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.target, "/status");
    for name in ["x-keygate-tenant", "x-keygate-key-id", "x-keygate-plan", "x-keygate-scopes", "x-keygate-status"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the upstream: {:?}", seen.headers);
    }

    let before = upstream.count();
    // 401 without a key, with keygate's challenge.
    let answer = get(&nginx.url("/v1/calls"), &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("x-keygate-status"), "401");
    assert_eq!(answer.header("www-authenticate"), "Bearer realm=\"keygate\"");
    assert_eq!(answer.error_type(), "unauthorized");
    // 403: a scope the key lacks.
    let answer = get(&nginx.url("/v1/webhooks"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 403);
    assert!(answer.header("www-authenticate").contains("insufficient_scope"));
    // 400: a path keygate refuses; 404: no route; 405 with Allow.
    assert_eq!(get(&nginx.url("/v1/calls;jsessionid=1"), &[("authorization", &auth)]).await.status, 400);
    assert_eq!(get(&nginx.url("/nowhere"), &[("authorization", &auth)]).await.status, 404);
    let answer = Http::new().send("DELETE", &nginx.url("/v1/calls"), &[("authorization", &auth)], Bytes::new()).await;
    assert_eq!(answer.status, 405);
    assert!(answer.header("allow").contains("GET"));
    // 429 with Retry-After, after the plan's 3 requests.
    let (_, tiny) = kg.key("small", "tiny", &["calls:read"]);
    let tiny = bearer(&tiny);
    for _ in 0..3 {
        assert_eq!(get(&nginx.url("/v1/calls"), &[("authorization", &tiny)]).await.status, 200);
    }
    let before_429 = upstream.count();
    let answer = get(&nginx.url("/v1/calls"), &[("authorization", &tiny)]).await;
    assert_eq!(answer.status, 429, "{}", nginx.error_log());
    assert_eq!(answer.header("x-keygate-status"), "429");
    assert!(answer.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert!(answer.header("ratelimit").contains("r=0"), "{:?}", answer.headers);
    assert_eq!(answer.error_type(), "rate_limited");
    assert_eq!(upstream.count(), before_429, "a refused request reached the upstream");
    assert_eq!(before + 3, upstream.count());
    drop(nginx);
    kg.stop().await;
}

/// The answers of the authorizer are the proxy's: same status, JSON body (but the
/// request id) and headers; plus `x-keygate-status` on every one.
#[tokio::test]
async fn envoy_http_mode_decides_on_the_request_line_exactly_as_the_proxy_does() {
    let upstream = upstream().await;
    let kg = start(&upstream, "[authorizer]\naddress = \"127.0.0.1:0\"\npath_prefix = \"/authz\"\n").await;
    let authz = authorizer_addr(&kg);
    let (key_id, secret) = kg.key("acme", "pro", &["calls:read"]);
    let (_, trial) = kg.key("free", "pro", &["calls:read"]);
    kg.edit_store(|data| data.tenants.get_mut("free").unwrap().plan = "trial".into());
    let (_, tiny) = kg.key("small", "tiny", &["calls:read"]);
    let (auth, trial, tiny) = (bearer(&secret), bearer(&trial), bearer(&tiny));

    let answer = get(&format!("http://{authz}/authz/v1/calls/9?q=1"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-keygate-status"), "200");
    assert_eq!(answer.header("x-keygate-key-id"), key_id);
    assert_eq!(answer.header("x-keygate-tenant"), "acme");
    assert_eq!(answer.header("x-keygate-plan"), "pro");
    assert_eq!(answer.header("x-keygate-scopes"), "calls:read");
    assert!(!answer.header("x-request-id").is_empty());
    assert!(answer.header("ratelimit-policy").contains("q=300"), "{:?}", answer.headers);
    assert!(answer.headers.contains_key("x-ratelimit-remaining"));
    assert!(answer.body.is_empty());
    assert_eq!(upstream.count(), 0, "the authorizer forwards nothing");
    // Envoy removes what keygate names: the key, and a client's own x-keygate-* that the
    // answer does not replace.
    let forged = [("authorization", auth.as_str()), ("x-keygate-tenant", "evil"), ("x-keygate-extra", "1")];
    let answer = get(&format!("http://{authz}/authz/v1/calls"), &forged).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-envoy-auth-headers-to-remove"), "authorization, x-keygate-extra");
    let answer = get(&format!("http://{authz}/authz/status"), &forged[1..]).await;
    assert_eq!(answer.header("x-envoy-auth-headers-to-remove"), "authorization, x-keygate-extra, x-keygate-tenant");

    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/calls", vec![]),
        ("GET", "/v1/calls", vec![("authorization", "Bearer kg_nope")]),
        ("GET", "/v1/calls", vec![("authorization", &trial)]),
        ("GET", "/v1/webhooks", vec![("authorization", &auth)]),
        ("DELETE", "/v1/calls", vec![("authorization", &auth)]),
        ("GET", "/nowhere", vec![("authorization", &auth)]),
        ("GET", "/v1/calls;x=1", vec![("authorization", &auth)]),
        ("GET", "/v1/calls?api_key=x", vec![]),
    ];
    for (method, path, headers) in &cases {
        let proxied = Http::new().send(method, &kg.url(path), headers, Bytes::new()).await;
        let decided = Http::new().send(method, &format!("http://{authz}/authz{path}"), headers, Bytes::new()).await;
        assert_same_refusal(&proxied, &decided, &format!("{method} {path}"));
    }
    // A key in the query string, as the proxy refuses it.
    let query = format!("/v1/calls?key={}", secret.expose());
    let proxied = get(&kg.url(&query), &[]).await;
    let decided = get(&format!("http://{authz}/authz{query}"), &[]).await;
    assert_same_refusal(&proxied, &decided, "a key in the query");

    // Rate limits count a decision like a request: 3 decisions spend the tiny plan, then
    // the proxy refuses too (and the reverse).
    for _ in 0..3 {
        assert_eq!(get(&format!("http://{authz}/authz/v1/calls"), &[("authorization", &tiny)]).await.status, 200);
    }
    let proxied = get(&kg.url("/v1/calls"), &[("authorization", &tiny)]).await;
    let decided = get(&format!("http://{authz}/authz/v1/calls"), &[("authorization", &tiny)]).await;
    assert_eq!(proxied.status, 429);
    assert_same_refusal(&proxied, &decided, "rate limited");
    assert!(decided.header("retry-after").parse::<u64>().unwrap() >= 1);

    // Outside the path prefix: not a check request.
    assert_eq!(get(&format!("http://{authz}/v1/calls"), &[("authorization", &auth)]).await.status, 404);

    // Counted as decisions, with their own mode label.
    let text = metrics_text(kg.admin).await;
    let ok = metric(&text, "keygate_auth_decisions_total", &[("result", "ok"), ("mode", "authorizer")]);
    assert_eq!(ok, Some(5.0), "2 + 3 allowed decisions");
    let limited = metric(&text, "keygate_auth_decisions_total", &[("result", "rate_limited"), ("mode", "authorizer")]);
    assert_eq!(limited, Some(1.0));
    let calls =
        metric(&text, "keygate_requests_total", &[("route", "/v1/calls"), ("status", "200"), ("method", "GET")]);
    assert!(calls.unwrap_or(0.0) >= 5.0, "decisions are counted in requests_total: {calls:?}");
    kg.stop().await;
}

fn assert_same_refusal(proxied: &Answer, decided: &Answer, what: &str) {
    assert!(proxied.status >= 400, "{what}: the proxy answered {}", proxied.status);
    assert_eq!(decided.status, proxied.status, "{what}: {}", decided.text());
    assert_eq!(decided.header("x-keygate-status"), proxied.status.to_string(), "{what}");
    let mut decided_json = decided.json();
    let mut proxied_json = proxied.json();
    assert_eq!(decided_json["error"]["request_id"].as_str(), Some(decided.header("x-request-id")));
    decided_json["error"]["request_id"] = serde_json::Value::Null;
    proxied_json["error"]["request_id"] = serde_json::Value::Null;
    assert_eq!(decided_json, proxied_json, "{what}");
    for name in ["www-authenticate", "allow", "retry-after", "content-type", "ratelimit-policy"] {
        assert_eq!(decided.headers.get(name), proxied.headers.get(name), "{what}: {name}");
    }
    // The remaining count moved on by one refused request between the two.
    assert_eq!(decided.headers.contains_key("ratelimit"), proxied.headers.contains_key("ratelimit"), "{what}");
}

/// Traefik ForwardAuth: the original method, URI and host in `X-Forwarded-*`, read
/// from a trusted peer only; from any other peer they are refused.
#[tokio::test]
async fn traefik_forward_auth_headers_are_read_from_trusted_peers_only() {
    let upstream = upstream().await;
    let kg = start(&upstream, AUTHORIZER).await;
    let authz = authorizer_addr(&kg);
    let (_, secret) = kg.key("acme", "pro", &["calls:read"]);
    let auth = bearer(&secret);
    let traefik = |method: &'static str, uri: &'static str| {
        vec![
            ("x-forwarded-method", method),
            ("x-forwarded-uri", uri),
            ("x-forwarded-host", "api.example"),
            ("x-forwarded-proto", "https"),
        ]
    };

    // From 127.0.0.1 (trusted): the forwarded request is the one decided.
    let mut headers = traefik("GET", "/v1/calls/3");
    headers.push(("authorization", &auth));
    let answer = get(&format!("http://{authz}/"), &headers).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-keygate-tenant"), "acme");
    let mut headers = traefik("POST", "/v1/calls");
    headers.push(("authorization", &auth));
    let answer = get(&format!("http://{authz}/v1/calls"), &headers).await;
    assert_eq!(answer.status, 403, "POST needs calls:write: {}", answer.text());
    let answer = get(&format!("http://{authz}/v1/calls"), &traefik("GET", "/v1/calls/%2F..")).await;
    assert_eq!(answer.status, 400, "a path keygate refuses: {}", answer.text());

    // From 127.0.0.2 (not trusted): the same headers are refused, whatever the request
    // line says; without them, the request line decides.
    let untrusted = send_from("127.0.0.2", authz, "GET", "/v1/calls", &[("authorization", &auth)]).await;
    assert!(untrusted.starts_with("HTTP/1.1 200"), "{untrusted}");
    let mut headers = traefik("GET", "/status");
    headers.push(("authorization", &auth));
    let untrusted = send_from("127.0.0.2", authz, "GET", "/nowhere", &headers).await;
    assert!(untrusted.starts_with("HTTP/1.1 400"), "{untrusted}");
    assert!(untrusted.contains("x-keygate-status: 400"), "{untrusted}");
    assert!(untrusted.contains("authorizer.trusted_proxies"), "{untrusted}");
    let nginx_style = [("x-original-uri", "/status")];
    let untrusted = send_from("127.0.0.2", authz, "GET", "/v1/calls", &nginx_style).await;
    assert!(untrusted.starts_with("HTTP/1.1 400"), "{untrusted}");
    kg.stop().await;
}

/// One HTTP/1.1 request from the local address `from`; the whole answer as text.
async fn send_from(from: &str, to: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: keygate\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// `[authorizer]` without `[listen]`: keygate answers decisions and serves no proxy.
#[tokio::test]
async fn without_listen_keygate_is_an_authorizer_only() {
    let upstream = upstream().await;
    let builder = Keygate::builder(&upstream.url()).settings(AUTHORIZER);
    let dir = builder.write();
    let config = dir.path().join("keygate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let without_listen = text.replace("[listen]\naddress = \"127.0.0.1:0\"\n", "");
    assert_ne!(text, without_listen);
    std::fs::write(&config, without_listen).unwrap();
    let (settings, _) = Settings::load(&config).expect("valid");
    let running = keygate::start(settings, Options::default()).await.expect("starts");
    assert_eq!(running.proxy_addr, None);
    let authz = running.authorizer_addr.unwrap();
    let answer = get(&format!("http://{authz}/v1/calls"), &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("x-keygate-status"), "401");
    running.shutdown().await;
    let _: PathBuf = dir.path().to_path_buf();
}

/// The README shows the nginx configuration these tests run, as shipped.
#[test]
fn the_readme_shows_the_shipped_nginx_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let shipped = std::fs::read_to_string(root.join(SHIPPED_CONF)).unwrap();
    assert!(readme.contains(&format!("```nginx\n{shipped}```")), "README.md must show {SHIPPED_CONF} as it is");
}

/// The authorizer listener has TLS of its own (HTTP/2 by ALPN), while the proxy's stays
/// plain.
#[tokio::test]
async fn the_authorizer_listener_serves_tls_of_its_own() {
    let upstream = upstream().await;
    let tls = "[authorizer]\naddress = \"127.0.0.1:0\"\ntls = { cert = \"tls.crt\", key = \"tls.key\" }\n";
    let builder = Keygate::builder(&upstream.url()).settings(tls);
    let dir = builder.write();
    let (cert, _) = tls_pair(dir.path());
    let (settings, _) = Settings::load(&dir.path().join("keygate.toml")).expect("valid");
    let running = keygate::start(settings, Options::default()).await.expect("starts");
    let (authz, proxy) = (running.authorizer_addr.unwrap(), running.proxy_addr.unwrap());

    let (stream, alpn) = tls_connect(authz, &cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let request = http::Request::builder()
        .uri(format!("https://localhost:{}/v1/calls", authz.port()))
        .body(http_body_util::BodyExt::boxed(http_body_util::Full::new(Bytes::new())))
        .unwrap();
    let answer = send_over(stream, true, request).await;
    assert_eq!((answer.status, answer.header("x-keygate-status")), (401, "401"));
    // The proxy listener answers plain HTTP.
    assert_eq!(get(&format!("http://{proxy}/v1/calls"), &[]).await.status, 401);
    running.shutdown().await;
}

/// The real binary logs a decision like a proxied request, with `listener: "authorizer"`.
#[tokio::test]
async fn a_decision_has_an_access_line_naming_the_authorizer() {
    let upstream = upstream().await;
    let port = free_port();
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
    let url = format!("http://127.0.0.1:{port}/v1/calls/1");
    let answer = get(&url, &[("authorization", &bearer(&secret)), ("x-request-id", "authz-line-1")]).await;
    assert_eq!(answer.status, 200);
    let mut line = None;
    let logged = eventually(Duration::from_secs(5), async || {
        line =
            access_lines(&served.lines().join("\n")).into_iter().find(|l| l["fields"]["request_id"] == "authz-line-1");
        line.is_some()
    })
    .await;
    assert!(logged, "no access line: {:?}", served.lines());
    let line = &line.unwrap()["fields"];
    assert_eq!(line["listener"], "authorizer", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["route"], "/v1/calls", "{line}");
    assert_eq!(line["key_id"], key_id.as_str(), "{line}");
    assert_eq!(line["tenant"], "acme", "{line}");
    assert_eq!(line["mode"], "enforce", "{line}");
}

/// A plan's concurrency cap applies to a decision as to a request (a request in flight
/// through the proxy refuses a decision over the cap), and a decision gives its slot back
/// as soon as it is answered: decisions in a row never run into their own slots.
#[tokio::test]
async fn a_decision_takes_a_concurrency_slot_only_while_it_decides() {
    let upstream = upstream().await;
    let routes = format!(
        "{}\n[plans.one]\nrequests_per_minute = 1000\nconcurrency = 1\n",
        ROUTES.replace("{upstream}", &upstream.url()).replace("timeout = \"1s\"\n", "timeout = \"5s\"\n")
    );
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let kg = Keygate::builder(&upstream.url()).routes(&routes).settings(AUTHORIZER).clock(clock).start().await;
    let authz = authorizer_addr(&kg);
    let (_, secret) = kg.key("solo", "one", &["calls:read"]);
    let auth = bearer(&secret);

    for _ in 0..5 {
        let answer = get(&format!("http://{authz}/v1/calls"), &[("authorization", &auth)]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    // A proxied request holds the tenant's one slot while the upstream answers slowly.
    let held_url = kg.url("/slow/1500");
    let held_auth = auth.clone();
    let held = tokio::spawn(async move { get(&held_url, &[("authorization", &held_auth)]).await });
    let mut refused = None;
    let saw = eventually(Duration::from_secs(3), async || {
        let answer = get(&format!("http://{authz}/v1/calls"), &[("authorization", &auth)]).await;
        let over = answer.status == 429;
        refused = Some(answer);
        over
    })
    .await;
    let refused = refused.unwrap();
    assert!(saw, "a decision over the cap was not refused: {} {}", refused.status, refused.text());
    assert_eq!(refused.header("x-keygate-status"), "429");
    assert_eq!(held.await.unwrap().status, 200);
    // The slot is back: decisions go through again.
    let answer = get(&format!("http://{authz}/v1/calls"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    kg.stop().await;
}
