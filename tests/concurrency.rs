//! Plans' concurrency caps (docs/reference.md §4.4): `concurrency = N` lets at most N
//! requests of a tenant be in flight at once; a request holds its slot until its
//! response body ends or is dropped, a WebSocket until its tunnel closes; past the cap,
//! 429 with `"limit": "concurrency"` and `Retry-After: 1`. With Redis the cap holds
//! across replicas, and a dead replica's slots expire after `limits.concurrency_ttl`.
//!
//! The upstream here holds each `/hold/…?id=ID` response open (head and a first chunk
//! sent, the body unfinished) until the test releases that id: requests stay in flight
//! exactly as long as a test wants, with no sleeps.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate::ratelimit::concurrency::{redis::ACQUIRE_LUA, RedisSlots};
use support::redis::{RedisCluster, RedisServer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------
// The holding upstream

/// `/hold/…?id=ID` answers 200 at once with a first chunk `start`, and ends the body with
/// `end` only once the test calls [`Held::release`] for that id (before or after the
/// request arrived). A WebSocket upgrade is accepted and echoed until the client closes.
/// Anything else answers 200 `ok`.
#[derive(Clone)]
struct Held {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Held {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn gate(&self, id: &str) -> Arc<Semaphore> {
        self.gates.lock().unwrap().entry(id.to_string()).or_insert_with(|| Arc::new(Semaphore::new(0))).clone()
    }

    fn release(&self, id: &str) {
        self.gate(id).add_permits(1);
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

async fn held_upstream() -> Held {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held = Held {
        addr: listener.local_addr().unwrap(),
        arrived: Arc::new(AtomicUsize::new(0)),
        gates: Arc::new(Mutex::new(HashMap::new())),
    };
    let server = held.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.answer(request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    held
}

impl Held {
    fn answer(&self, mut request: Request<Incoming>) -> Response<TestBody> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        if request.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap();
        }
        let id = request.uri().query().and_then(|q| q.strip_prefix("id=")).map(str::to_string);
        let Some(id) = id.filter(|_| request.uri().path().starts_with("/hold")) else {
            return Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        };
        let gate = self.gate(&id);
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"start")))).await;
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"end")))).await;
        });
        Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
    }
}

// ---------------------------------------------------------------------------------------
// The client: one connection per request, so a test can go away mid-body.

/// A response whose head has come; its body is still streaming.
struct InFlight {
    status: u16,
    headers: http::HeaderMap,
    body: Incoming,
    connection: JoinHandle<()>,
}

impl InFlight {
    /// Reads the rest of the body (the test released it first).
    async fn finish(self) -> Bytes {
        let body = tokio::time::timeout(Duration::from_secs(10), self.body.collect()).await;
        body.expect("the body ends within 10 s").expect("the body reads").to_bytes()
    }

    /// The client goes away mid-body: its connection is closed.
    fn abandon(self) {
        self.connection.abort();
    }

    /// The body, read whole (a refusal's).
    async fn json(self) -> serde_json::Value {
        serde_json::from_slice(&self.finish().await).expect("a JSON body")
    }
}

async fn send(addr: SocketAddr, path: &str, key: &str, request_id: &str) -> InFlight {
    let tcp = TcpStream::connect(addr).await.expect("connect to keygate");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .uri(path)
        .header("host", "keygate")
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", request_id)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let response: Response<Incoming> = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("a response head within 10 s")
        .expect("request sent");
    let (parts, body) = response.into_parts();
    InFlight { status: parts.status.as_u16(), headers: parts.headers, body, connection }
}

/// Sends `/hold/x?id=ID` until it is admitted (a 429 for concurrency counts nothing, so
/// retrying is free): for a slot given back a moment ago.
async fn admitted_eventually(addr: SocketAddr, key: &str, id: &str) -> Option<InFlight> {
    let mut admitted = None;
    let ok = eventually(Duration::from_secs(5), async || {
        let answer = send(addr, &format!("/hold/x?id={id}"), key, id).await;
        if answer.status == 200 {
            admitted = Some(answer);
            return true;
        }
        assert_eq!(answer.status, 429, "only the concurrency cap refuses here");
        assert_eq!(answer.json().await["error"]["limit"], "concurrency");
        false
    })
    .await;
    ok.then_some(admitted).flatten()
}

fn assert_concurrency_refusal(answer: &InFlight) {
    assert_eq!(answer.status, 429);
    assert_eq!(answer.headers["retry-after"], "1");
}

// ---------------------------------------------------------------------------------------
// Policy and logs

/// Plans: `capped` (2 in flight), `one` (1 in flight, 2 requests a minute), `free` (no
/// cap). Routes: `/hold` and `/ws` (the holding upstream), `/hold-local`, `-allow`,
/// `-deny` with that `on_store_error`.
fn routes(upstream: &str) -> String {
    format!(
        r#"
default = "deny"

[scopes]
"calls:read" = "View calls"

[plans.capped]
requests_per_minute = 1000
concurrency = 2

[plans.one]
requests = 2
window = "60s"
concurrency = 1

[plans.free]
requests_per_minute = 1000

[upstreams.held]
url = "{upstream}"
timeout = "10s"

[[routes]]
prefix = "/hold"
scopes = ["calls:read"]
upstream = "held"

[[routes]]
prefix = "/ws"
scopes = ["calls:read"]
upstream = "held"

[[routes]]
prefix = "/hold-local"
scopes = ["calls:read"]
upstream = "held"
on_store_error = "local"

[[routes]]
prefix = "/hold-allow"
scopes = ["calls:read"]
upstream = "held"
on_store_error = "allow"

[[routes]]
prefix = "/hold-deny"
scopes = ["calls:read"]
upstream = "held"
on_store_error = "deny"
"#
    )
}

async fn access_line(request_id: &str) -> serde_json::Value {
    let mut found = None;
    let ok = eventually(Duration::from_secs(3), async || {
        let text = String::from_utf8_lossy(&support::captured_logs().lock().unwrap()).into_owned();
        found = access_lines(&text).into_iter().find(|v| v["fields"]["request_id"] == request_id);
        found.is_some()
    })
    .await;
    assert!(ok, "no access line for {request_id}");
    found.unwrap()["fields"].clone()
}

fn metric(kg: &Keygate, name: &str) -> i64 {
    let text = kg.app().metrics().encode();
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.and_then(|l| l[name.len()..].trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in {text}"))
}

// ---------------------------------------------------------------------------------------
// One process (local counts)

#[tokio::test]
async fn past_the_cap_429_names_concurrency_and_a_slot_frees_when_a_body_ends_or_is_dropped() {
    support::captured_logs();
    let upstream = held_upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&routes(&upstream.url())).start().await;
    let (_, key) = kg.key("acme", "capped", &["calls:read"]);
    let key = key.expose().to_string();
    let (_, other) = kg.key("globex", "capped", &["calls:read"]);

    let first = send(kg.addr, "/hold/x?id=1", &key, "cc-1").await;
    let second = send(kg.addr, "/hold/x?id=2", &key, "cc-2").await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(metric(&kg, "keygate_concurrency_slots_held"), 2);

    // The third in flight: refused, never reaching the upstream.
    let refused = send(kg.addr, "/hold/x?id=3", &key, "cc-refused").await;
    assert_concurrency_refusal(&refused);
    let body = refused.json().await;
    assert_eq!(body["error"]["limit"], "concurrency", "{body}");
    assert_eq!(body["error"]["type"], "rate_limited", "{body}");
    assert_eq!(body["error"]["retry_after"], 1, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Concurrency limit of 2 requests in flight"), "{message}");
    assert_eq!(upstream.arrived(), 2);
    let line = access_line("cc-refused").await;
    assert_eq!(line["status"], 429);
    assert_eq!(line["limit"], "concurrency");
    assert_eq!(line["tenant"], "acme");
    assert_eq!(metric(&kg, "keygate_concurrency_refused_total"), 1);

    // Another tenant has its own cap.
    let theirs = send(kg.addr, "/hold/x?id=g", other.expose(), "cc-g").await;
    assert_eq!(theirs.status, 200);

    // A body that ends gives its slot back.
    upstream.release("1");
    assert_eq!(first.finish().await, "startend");
    let third = admitted_eventually(kg.addr, &key, "4").await.expect("a slot is free once a body ended");
    assert!(send(kg.addr, "/hold/x?id=5", &key, "cc-5").await.status == 429, "two in flight again");

    // A client that goes away mid-body gives its slot back.
    second.abandon();
    let fourth = admitted_eventually(kg.addr, &key, "6").await.expect("a slot is free once its client went away");

    upstream.release("4");
    upstream.release("6");
    upstream.release("g");
    third.finish().await;
    fourth.finish().await;
    theirs.finish().await;
    let ok = eventually(Duration::from_secs(3), async || metric(&kg, "keygate_concurrency_slots_held") == 0).await;
    assert!(ok, "every slot is given back");
    kg.stop().await;
}

/// Overrides of `concurrency`: a tenant's replaces its plan's cap; a key's caps that key's
/// requests alone, in slots of their own (they neither take nor need the tenant's).
#[tokio::test]
async fn a_tenants_concurrency_override_replaces_the_plans_cap_and_a_keys_caps_its_own_requests() {
    let upstream = held_upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&routes(&upstream.url())).start().await;
    let (_, tenant_key) = kg.key("acme", "capped", &["calls:read"]);
    let (own_id, own_key) = kg.key("acme", "capped", &["calls:read"]);
    kg.edit_store(|data| {
        data.tenants.get_mut("acme").expect("acme").overrides.concurrency = Some(3);
        data.keys.get_mut(&own_id).expect("the key").overrides.concurrency = Some(1);
    });
    kg.sync_store().await;
    let (tenant_key, own_key) = (tenant_key.expose().to_string(), own_key.expose().to_string());

    // Three in flight for the tenant (its plan says two), the fourth refused.
    let mut held = Vec::new();
    for id in ["t1", "t2", "t3"] {
        let answer = send(kg.addr, &format!("/hold/x?id={id}"), &tenant_key, id).await;
        assert_eq!(answer.status, 200, "{id}: the tenant's override of 3 replaces the plan's 2");
        held.push(answer);
    }
    let refused = send(kg.addr, "/hold/x?id=t4", &tenant_key, "t4").await;
    assert_concurrency_refusal(&refused);
    assert!(refused.json().await["error"]["message"].as_str().unwrap().contains("limit of 3 requests in flight"));

    // The key with its own cap of 1: admitted while the tenant is at its cap, once.
    let own = send(kg.addr, "/hold/x?id=k1", &own_key, "k1").await;
    assert_eq!(own.status, 200, "a key's own cap counts its own requests, not the tenant's");
    let second = send(kg.addr, "/hold/x?id=k2", &own_key, "k2").await;
    assert_concurrency_refusal(&second);
    assert!(second.json().await["error"]["message"].as_str().unwrap().contains("limit of 1 request in flight"));
    // And its request in flight takes nothing from the tenant's three.
    upstream.release("t1");
    held.remove(0).finish().await;
    let again = admitted_eventually(kg.addr, &tenant_key, "t5").await.expect("the tenant's slot is free again");

    for id in ["t2", "t3", "t5", "k1"] {
        upstream.release(id);
    }
    for answer in held.into_iter().chain([again, own]) {
        answer.finish().await;
    }
    let ok = eventually(Duration::from_secs(3), async || metric(&kg, "keygate_concurrency_slots_held") == 0).await;
    assert!(ok, "every slot is given back");
    kg.stop().await;
}

#[tokio::test]
async fn a_concurrency_refusal_counts_nothing_and_a_rate_refusal_gives_the_slot_back() {
    support::captured_logs();
    let upstream = held_upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&routes(&upstream.url())).start().await;
    let (_, key) = kg.key("acme", "one", &["calls:read"]);
    let key = key.expose().to_string();

    // `one`: 1 in flight, 2 requests a minute. The first holds the slot (1 unit spent).
    let first = send(kg.addr, "/hold/x?id=1", &key, "one-1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-remaining"], "1");
    // Refused by concurrency, again and again: no unit of the rate limit is spent.
    for i in 0..5 {
        let refused = send(kg.addr, "/hold/x?id=r", &key, &format!("one-r{i}")).await;
        assert_concurrency_refusal(&refused);
        assert_eq!(refused.json().await["error"]["limit"], "concurrency");
    }
    upstream.release("1");
    first.finish().await;

    // So the second unit is still there.
    upstream.release("2");
    let second = admitted_eventually(kg.addr, &key, "2").await.expect("the second unit was never spent");
    assert_eq!(second.headers["x-ratelimit-remaining"], "0");
    second.finish().await;

    // Now the rate limit refuses; each refusal gives the slot back at once, so the next
    // request is refused by the rate limit again, never by concurrency.
    for i in 0..3 {
        let mut answer = None;
        // The slot of the request before may take a moment to come back (its body ended).
        let ok = eventually(Duration::from_secs(3), async || {
            let a = send(kg.addr, "/hold/x?id=z", &key, &format!("one-z{i}")).await;
            let json = a.json().await;
            answer = Some(json.clone());
            json["error"]["limit"] == "default"
        })
        .await;
        assert!(ok, "a rate-limit refusal, not concurrency: {answer:?}");
    }
    assert_eq!(upstream.arrived(), 2);
    assert_eq!(metric(&kg, "keygate_concurrency_slots_held"), 0);
    kg.stop().await;
}

#[tokio::test]
async fn a_websocket_tunnel_holds_its_slot_until_it_closes() {
    let upstream = held_upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&routes(&upstream.url())).start().await;
    let (_, key) = kg.key("acme", "one", &["calls:read"]);
    let key = key.expose().to_string();

    let mut tunnel = TcpStream::connect(kg.addr).await.unwrap();
    let head = format!(
        "GET /ws/live HTTP/1.1\r\nHost: keygate\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    tunnel.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tunnel.read(&mut byte).await.unwrap(), 1, "the handshake's answer");
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response));
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");

    // The tunnel is open: its slot is held.
    upstream.release("a");
    let refused = send(kg.addr, "/hold/x?id=a", &key, "ws-refused").await;
    assert_concurrency_refusal(&refused);

    // Closed: the slot comes back.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let after = admitted_eventually(kg.addr, &key, "a").await.expect("the tunnel's slot is free once it closed");
    after.finish().await;
    kg.stop().await;
}

// ---------------------------------------------------------------------------------------
// Replicas on one Redis

const SHARED: &str =
    "[limits]\nbackend = \"redis\"\nreplicas = 3\non_store_error = \"deny\"\nconcurrency_ttl = \"3s\"\n";

#[tokio::test]
async fn three_replicas_on_one_redis_never_exceed_the_cap_together() {
    let redis = RedisServer::start();
    let upstream = held_upstream().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let kg = Keygate::builder(&upstream.url())
            .routes(&routes(&upstream.url()))
            .redis_keys(&redis.url(), "1s")
            .settings(SHARED)
            .start()
            .await;
        replicas.push(kg);
    }
    let (_, key) = replicas[0].store_key("acme", "capped", &["calls:read"]).await;
    let key = key.expose().to_string();

    // Three requests at once on each replica: two admitted in all.
    let mut sends = Vec::new();
    for (r, kg) in replicas.iter().enumerate() {
        for i in 0..3 {
            let (addr, key) = (kg.addr, key.clone());
            let id = format!("{r}-{i}");
            sends.push(tokio::spawn(async move { send(addr, &format!("/hold/x?id={id}"), &key, &id).await }));
        }
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for send in sends {
        let answer = send.await.unwrap();
        match answer.status {
            200 => admitted.push(answer),
            429 => {
                assert_eq!(answer.headers["retry-after"], "1");
                assert_eq!(answer.json().await["error"]["limit"], "concurrency");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((admitted.len(), refused), (2, 7), "at most the cap in flight across the replicas");
    assert_eq!(upstream.arrived(), 2);
    assert_eq!(redis.cli(&["ZCARD", "kg:cc:{acme}"]).trim(), "2");
    // `limits.concurrency_ttl` sets the slots' (and the set's) expiry.
    let pttl: i64 = redis.cli(&["PTTL", "kg:cc:{acme}"]).trim().parse().unwrap();
    assert!(pttl > 0 && pttl <= 3000, "{pttl}");

    // Their bodies end: the slots are released in Redis, and others are admitted, on any replica.
    for (r, i) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)] {
        upstream.release(&format!("{r}-{i}"));
    }
    for answer in admitted {
        answer.finish().await;
    }
    let ok = eventually(Duration::from_secs(3), async || redis.cli(&["ZCARD", "kg:cc:{acme}"]).trim() == "0").await;
    assert!(ok, "released slots leave Redis");
    upstream.release("again");
    let again = admitted_eventually(replicas[2].addr, &key, "again").await.expect("admitted again");
    again.finish().await;
    for kg in replicas {
        kg.stop().await;
    }
}

#[tokio::test]
async fn a_dead_replicas_slots_free_after_the_ttl_and_not_while_it_renews_them() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(600);
    let (client_a, metrics_a) = support::redis::client(&redis.url(), Duration::from_secs(1)).await;
    let (client_b, metrics_b) = support::redis::client(&redis.url(), Duration::from_secs(1)).await;
    let a = RedisSlots::start(client_a, ttl, metrics_a);
    let b = RedisSlots::start(client_b, ttl, metrics_b);

    let held: Vec<_> = [a.acquire("acme", 2).await, a.acquire("acme", 2).await]
        .into_iter()
        .map(|slot| slot.expect("Redis answers").expect("within the cap"))
        .collect();
    assert!(b.acquire("acme", 2).await.unwrap().is_none(), "the cap is shared");

    // Renewed: still held after several ttls.
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        assert!(b.acquire("acme", 2).await.unwrap().is_none(), "a live replica's slots never expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The replica dies holding its slots: no renewal, no release.
    drop(a);
    let died = Instant::now();
    let mut taken = None;
    let ok = eventually(Duration::from_secs(5), async || {
        taken = b.acquire("acme", 2).await.unwrap();
        taken.is_some()
    })
    .await;
    assert!(ok, "the dead replica's slots expire");
    let freed_after = died.elapsed();
    assert!(freed_after <= ttl + Duration::from_millis(500), "freed within the ttl (and a poll): {freed_after:?}");
    drop(held);
    drop(taken);
    drop(b);
}

#[tokio::test]
async fn on_a_redis_cluster_slots_are_shared_renewed_and_released_across_hash_slots() {
    let cluster = RedisCluster::start();
    let ttl = Duration::from_millis(600);
    let (client_a, metrics_a) = support::redis::client(&cluster.url(), Duration::from_secs(1)).await;
    let (client_b, metrics_b) = support::redis::client(&cluster.url(), Duration::from_secs(1)).await;
    assert!(client_a.wait_up(Duration::from_secs(5)).await && client_b.wait_up(Duration::from_secs(5)).await);
    let a = RedisSlots::start(client_a, ttl, metrics_a);
    let b = RedisSlots::start(client_b, ttl, metrics_b);
    // Tenants on different hash slots (and nodes): renewal and release go to each.
    let tenants = ["alpha", "bravo", "charlie", "delta"];
    let mut held = Vec::new();
    for tenant in tenants {
        held.push(a.acquire(tenant, 1).await.unwrap().expect("within the cap"));
    }
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        for tenant in tenants {
            assert!(b.acquire(tenant, 1).await.unwrap().is_none(), "{tenant}'s slot is renewed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Released (well before the ttl would free them: renewal has just pushed it on).
    drop(held);
    for tenant in tenants {
        let mut taken = None;
        let ok = eventually(Duration::from_millis(400), async || {
            taken = b.acquire(tenant, 1).await.unwrap();
            taken.is_some()
        })
        .await;
        assert!(ok, "{tenant}'s slot is released");
    }
}

#[tokio::test]
async fn the_scripts_take_refuse_expire_and_release_slots_in_redis() {
    let redis = RedisServer::start();
    let (client, metrics) = support::redis::client(&redis.url(), Duration::from_secs(1)).await;
    let slots = RedisSlots::start(client, Duration::from_secs(10), metrics.clone());

    let one = slots.acquire("t", 2).await.unwrap().expect("taken");
    let two = slots.acquire("t", 2).await.unwrap().expect("taken");
    assert!(slots.acquire("t", 2).await.unwrap().is_none(), "the cap");
    assert_eq!(redis.cli(&["ZCARD", "kg:cc:{t}"]).trim(), "2", "a refusal adds nothing");
    let members = redis.cli(&["ZRANGE", "kg:cc:{t}", "0", "-1"]);
    assert!(members.lines().all(|m| m.starts_with(slots.replica_id())), "{members}");
    let pttl: i64 = redis.cli(&["PTTL", "kg:cc:{t}"]).trim().parse().unwrap();
    assert!(pttl > 0 && pttl <= 10_000, "the set expires with its slots: {pttl}");
    assert_eq!(slots.held(), 2);

    // A member whose expiry has passed no longer counts.
    drop(one);
    assert!(eventually(Duration::from_secs(3), async || redis.cli(&["ZCARD", "kg:cc:{t}"]).trim() == "1").await);
    redis.cli(&["ZADD", "kg:cc:{t}", "1", "stale:1"]);
    let three = slots.acquire("t", 2).await.unwrap().expect("an expired slot does not count");
    assert_eq!(redis.cli(&["ZSCORE", "kg:cc:{t}", "stale:1"]).trim(), "", "and is removed");
    drop((two, three));
    assert!(eventually(Duration::from_secs(3), async || redis.cli(&["EXISTS", "kg:cc:{t}"]).trim() == "0").await);
    assert_eq!(slots.held(), 0);
    assert!(metrics.encode().contains("keygate_concurrency_slots_held 0"));
}

#[tokio::test]
async fn with_redis_down_on_store_error_decides() {
    let mut redis = RedisServer::start();
    let upstream = held_upstream().await;
    // Two replicas' worth: a replica alone allows ceil(2 / 2) = 1 while Redis is down.
    let kg = Keygate::builder(&upstream.url())
        .routes(&routes(&upstream.url()))
        .redis_keys(&redis.url(), "100ms")
        .settings("[limits]\nbackend = \"redis\"\nreplicas = 2\n")
        .start()
        .await;
    let (_, key) = kg.store_key("acme", "capped", &["calls:read"]).await;
    let key = key.expose().to_string();
    // The key is cached while Redis answers.
    upstream.release("warm");
    send(kg.addr, "/hold/x?id=warm", &key, "warm").await.finish().await;
    redis.kill();

    // local: this replica's own share of the cap.
    let local = send(kg.addr, "/hold-local/x?id=l1", &key, "l1").await;
    assert_eq!(local.status, 200);
    let refused = send(kg.addr, "/hold-local/x?id=l2", &key, "l2").await;
    assert_concurrency_refusal(&refused);
    // allow: admitted without a slot (the cap is not enforced).
    let allowed: Vec<_> = futures_join((0..3).map(|i| {
        let key = key.clone();
        let addr = kg.addr;
        async move { send(addr, &format!("/hold-allow/x?id=a{i}"), &key, &format!("a{i}")).await }
    }))
    .await;
    assert!(allowed.iter().all(|a| a.status == 200));
    // deny: 503.
    let denied = send(kg.addr, "/hold-deny/x?id=d", &key, "d").await;
    assert_eq!(denied.status, 503);
    assert_eq!(denied.headers["retry-after"], "1");

    for id in ["l1", "a0", "a1", "a2"] {
        upstream.release(id);
    }
    local.finish().await;
    for a in allowed {
        a.finish().await;
    }
    kg.stop().await;
}

#[tokio::test]
async fn a_plan_without_concurrency_makes_no_redis_call_for_it() {
    let redis = RedisServer::start();
    let upstream = held_upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .routes(&routes(&upstream.url()))
        .redis_keys(&redis.url(), "1s")
        .settings(SHARED)
        .start()
        .await;
    let sha = ::redis::Script::new(ACQUIRE_LUA).get_hash().to_string();
    let (_, free) = kg.store_key("free-tenant", "free", &["calls:read"]).await;
    for i in 0..5 {
        let id = format!("f{i}");
        upstream.release(&id);
        let answer = send(kg.addr, &format!("/hold/x?id={id}"), free.expose(), &id).await;
        assert_eq!(answer.status, 200);
        answer.finish().await;
    }
    assert_eq!(redis.cli(&["SCRIPT", "EXISTS", &sha]).trim(), "0", "the acquire script never ran");
    assert_eq!(redis.cli(&["EXISTS", "kg:cc:{free-tenant}"]).trim(), "0");

    // A capped plan's request does call it.
    let (_, capped) = kg.store_key("acme", "capped", &["calls:read"]).await;
    upstream.release("c");
    send(kg.addr, "/hold/x?id=c", capped.expose(), "c").await.finish().await;
    assert_eq!(redis.cli(&["SCRIPT", "EXISTS", &sha]).trim(), "1");
    kg.stop().await;
}

async fn futures_join<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
