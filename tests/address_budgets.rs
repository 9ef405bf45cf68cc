//! The budgets per client address (docs/reference.md §4.6), through the real proxy:
//! failed authentications past `failed_auth_per_minute` get 429 without a store lookup
//! while cached valid keys still pass; the address is the peer, or a trusted proxy's
//! `X-Forwarded-For`; the budget refills on the (injected) clock. And forwarded CORS
//! preflights: what the upstream receives of them, and their own budget.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keygate::clock::ManualClock;
use keygate::keys::generate_secret;
use keygate::keys::redis_store::INVALIDATION_CHANNEL;
use support::redis::*;
use support::*;

/// A manual clock at the real time (keys are created with real timestamps).
fn clock_now() -> Arc<ManualClock> {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    Arc::new(ManualClock::new(millis))
}

/// `GET url` with the bearer `key` and, if given, an `X-Forwarded-For`.
async fn get(http: &Http, url: &str, key: &str, forwarded_for: Option<&str>) -> Answer {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("authorization", bearer.as_str())];
    if let Some(forwarded_for) = forwarded_for {
        headers.push(("x-forwarded-for", forwarded_for));
    }
    http.send("GET", url, &headers, Bytes::new()).await
}

/// `n` unknown (well-formed, never issued) keys from `forwarded_for`, each expected to be
/// a 401 `unknown`.
async fn unknown_keys(http: &Http, url: &str, n: usize, forwarded_for: Option<&str>) {
    for i in 0..n {
        let answer = get(http, url, generate_secret().expose(), forwarded_for).await;
        assert_eq!(answer.status, 401, "unknown key {i} from {forwarded_for:?}: {}", answer.text());
        assert_eq!(answer.message(), "API key unknown");
    }
}

/// A 429 `failed_auth_limited` with its `Retry-After`.
fn assert_failed_auth_limited(answer: &Answer) {
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.error_type(), "rate_limited");
    assert!(answer.message().contains("failed authentication"), "{}", answer.message());
    let retry: u64 = answer.header("retry-after").parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
}

/// How many `MGET`s the Redis server has run: the key store's lookup is one `MGET`.
fn store_lookups(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// Makes `key` cached in `kg`, once `kg` follows the invalidation channel: when it
/// starts to, it revalidates every cached key, which would make `key` need the store again.
async fn cache_key(kg: &Keygate, redis: &RedisServer, key: &keygate::keys::Secret) {
    let subscribed = eventually(Duration::from_secs(10), async || {
        redis.cli(&["PUBSUB", "NUMSUB", INVALIDATION_CHANNEL]).lines().nth(1) == Some("1")
    })
    .await;
    assert!(subscribed, "keygate did not subscribe to the invalidation channel within 10 s");
    let cache = kg.app().keys().cache().expect("a Redis keygate has a cache");
    let digest = kg.app().keys().peppers().current(key).hex;
    let (http, url) = (Http::new(), kg.url("/v1/calls"));
    let cached = eventually(Duration::from_secs(10), async || {
        let answer = get(&http, &url, key.expose(), None).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        cache.fresh(&digest).is_some()
    })
    .await;
    assert!(cached, "the key did not stay cached");
}

async fn metrics(kg: &Keygate) -> String {
    metrics_text(kg.admin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_unknown_keys_get_429_without_a_store_lookup_and_cached_keys_still_pass() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .redis_keys(&redis.url(), "1s")
        .settings("[server]\nfailed_auth_per_minute = 5\n")
        .clock(clock_now())
        .start()
        .await;
    let (_, cached) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let (_, uncached) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    let url = kg.url("/v1/calls");
    cache_key(&kg, &redis, &cached).await;

    // Each unknown key is one lookup, and one of the five.
    let before = store_lookups(&redis);
    unknown_keys(&http, &url, 5, None).await;
    assert_eq!(store_lookups(&redis) - before, 5, "each unknown key costs one lookup");
    let text = metrics(&kg).await;
    assert_eq!(metric(&text, "keygate_failed_auth_limited_total", &[]), Some(0.0));
    let misses = metric(&text, "keygate_key_cache_lookups_total", &[("result", "miss")]);

    // The sixth: 429, and the store is not asked.
    let answer = get(&http, &url, generate_secret().expose(), None).await;
    assert_failed_auth_limited(&answer);
    assert_eq!(store_lookups(&redis) - before, 5, "a refused key must not be looked up");
    // A key the cache holds passes: the budget protects the store, and it costs nothing.
    let answer = get(&http, &url, cached.expose(), None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // A valid key the cache does not hold would need the store: refused like any other.
    assert_failed_auth_limited(&get(&http, &url, uncached.expose(), None).await);
    assert_eq!(store_lookups(&redis) - before, 5, "no lookup for an address past its budget");

    let text = metrics(&kg).await;
    assert_eq!(metric(&text, "keygate_failed_auth_limited_total", &[]), Some(2.0));
    assert_eq!(metric(&text, "keygate_key_cache_lookups_total", &[("result", "miss")]), misses);
    assert_eq!(
        metric(&text, "keygate_auth_decisions_total", &[("result", "rate_limited"), ("mode", "enforce")]),
        Some(2.0)
    );
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarded_for_tells_clients_apart() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .listen("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]")
        .settings("[server]\nfailed_auth_per_minute = 3\n")
        .clock(clock_now())
        .start()
        .await;
    let http = Http::new();
    let url = kg.url("/v1/calls");
    // Client A, behind two trusted hops; what it wrote itself on the left is not read.
    unknown_keys(&http, &url, 3, Some("198.51.100.1, 10.1.1.1")).await;
    let key = generate_secret();
    assert_failed_auth_limited(&get(&http, &url, key.expose(), Some("198.51.100.1")).await);
    assert_failed_auth_limited(&get(&http, &url, key.expose(), Some("203.0.113.66, 198.51.100.1, 10.2.2.2")).await);
    // Client B, through the same proxy, has its own budget.
    unknown_keys(&http, &url, 3, Some("198.51.100.2")).await;
    assert_failed_auth_limited(&get(&http, &url, key.expose(), Some("198.51.100.2")).await);
    // A header that cannot be read names no one: the trusted peer's own budget.
    unknown_keys(&http, &url, 3, Some("not-an-address")).await;
    assert_failed_auth_limited(&get(&http, &url, key.expose(), None).await);
    let text = metrics(&kg).await;
    assert_eq!(metric(&text, "keygate_failed_auth_limited_total", &[]), Some(4.0));
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_dodge_the_budget_by_rotating_forwarded_for() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .settings("[server]\nfailed_auth_per_minute = 3\n")
        .clock(clock_now())
        .start()
        .await;
    let http = Http::new();
    let url = kg.url("/v1/calls");
    for i in 1..=3 {
        unknown_keys(&http, &url, 1, Some(&format!("198.51.100.{i}"))).await;
    }
    let answer = get(&http, &url, generate_secret().expose(), Some("198.51.100.4")).await;
    assert_failed_auth_limited(&answer);
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_keys_count_missing_and_malformed_ones_do_not_and_the_budget_refills() {
    let clock = clock_now();
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .settings("[server]\nfailed_auth_per_minute = 3\n")
        .clock(clock.clone())
        .start()
        .await;
    let (_, valid) = kg.key("acme", "pro", &["calls:read"]);
    let (_, expired) = kg.key_with("acme", "pro", &["calls:read"], Some(Duration::from_secs(1)));
    let (revoked_id, revoked) = kg.key("acme", "pro", &["calls:read"]);
    kg.edit_store(|data| data.keys.get_mut(&revoked_id).unwrap().revoked_at = Some(time::OffsetDateTime::now_utc()));
    // Past the expiry (nothing is spent yet, so the budget is whole whatever the time).
    clock.advance(Duration::from_secs(30));
    let http = Http::new();
    let url = kg.url("/v1/calls");

    // Missing and malformed keys never reach the store, and spend nothing.
    for _ in 0..10 {
        assert_eq!(http.get(&url, None).await.status, 401);
        let answer = get(&http, &url, "not-a-keygate-key", None).await;
        assert_eq!((answer.status, answer.message().contains("malformed")), (401, true), "{}", answer.text());
    }
    let answer = get(&http, &url, expired.expose(), None).await;
    assert_eq!((answer.status, answer.message()), (401, "API key expired".to_string()));
    let answer = get(&http, &url, revoked.expose(), None).await;
    assert_eq!((answer.status, answer.message()), (401, "API key revoked".to_string()));
    unknown_keys(&http, &url, 1, None).await;
    // Three failures: spent, whatever the key.
    let answer = get(&http, &url, generate_secret().expose(), None).await;
    assert_failed_auth_limited(&answer);
    assert_eq!(answer.header("retry-after"), "20");
    assert_failed_auth_limited(&get(&http, &url, revoked.expose(), None).await);
    // The file store is all in memory: a valid key is answered as from a cache.
    assert_eq!(get(&http, &url, valid.expose(), None).await.status, 200);

    // One comes back every 20 s; the whole budget after a minute.
    clock.advance(Duration::from_secs(20));
    unknown_keys(&http, &url, 1, None).await;
    assert_failed_auth_limited(&get(&http, &url, generate_secret().expose(), None).await);
    clock.advance(Duration::from_secs(60));
    unknown_keys(&http, &url, 3, None).await;
    assert_failed_auth_limited(&get(&http, &url, generate_secret().expose(), None).await);
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_turns_the_failed_auth_budget_off() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .settings("[server]\nfailed_auth_per_minute = 0\n")
        .clock(clock_now())
        .start()
        .await;
    unknown_keys(&Http::new(), &kg.url("/v1/calls"), 20, None).await;
    kg.stop().await;
}

/// The standard policy with `forward_preflight = true`.
fn preflight_routes(upstream: &Upstream) -> String {
    ROUTES
        .replace("{upstream}", &upstream.url())
        .replace("default = \"deny\"", "default = \"deny\"\nforward_preflight = true")
}

const PREFLIGHT: [(&str, &str); 2] = [("origin", "https://app.example"), ("access-control-request-method", "POST")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_preflight_carries_only_the_cors_headers_and_no_body() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .routes(&preflight_routes(&upstream))
        .listen("trusted_proxies = [\"127.0.0.1\"]")
        .start()
        .await;
    let (_, key) = kg.key("acme", "pro", &["calls:write"]);
    let bearer = format!("Bearer {}", key.expose());
    let mut headers = PREFLIGHT.to_vec();
    headers.extend([
        ("access-control-request-headers", "authorization, content-type"),
        ("access-control-request-private-network", "true"),
        ("authorization", bearer.as_str()),
        ("cookie", "session=secret"),
        ("x-keygate-tenant", "someone-else"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-real-ip", "198.51.100.8"),
        ("user-agent", "test"),
        ("x-custom", "1"),
        ("x-request-id", "preflight-1"),
    ]);
    let answer = Http::new().send("OPTIONS", &kg.url("/v1/calls"), &headers, Bytes::new()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let seen = upstream.last();
    assert_eq!((seen.method.as_str(), seen.target.as_str(), seen.body_len), ("OPTIONS", "/v1/calls", 0));
    let value = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(value("origin").as_deref(), Some("https://app.example"));
    assert_eq!(value("access-control-request-method").as_deref(), Some("POST"));
    assert_eq!(value("access-control-request-headers").as_deref(), Some("authorization, content-type"));
    assert_eq!(value("access-control-request-private-network").as_deref(), Some("true"));
    assert_eq!(value("x-request-id").as_deref(), Some("preflight-1"));
    assert_eq!(value("x-forwarded-for").as_deref(), Some("198.51.100.7, 127.0.0.1"));
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(value("x-forwarded-host"), value("host"));
    assert!(value("host").is_some());
    // Nothing else; an empty body may be declared as such, never chunked.
    let allowed = [
        "host",
        "origin",
        "access-control-request-method",
        "access-control-request-headers",
        "access-control-request-private-network",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    for (name, value) in &seen.headers {
        let empty_length = name == "content-length" && value == "0";
        assert!(allowed.contains(&name.as_str()) || empty_length, "{name}: {value:?} reached the upstream");
    }
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_with_a_body_is_refused_before_the_upstream() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&preflight_routes(&upstream)).start().await;
    let answer = Http::new().send("OPTIONS", &kg.url("/v1/calls"), &PREFLIGHT, Bytes::from_static(b"smuggled")).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.message().contains("preflight"), "{}", answer.message());
    assert_eq!(upstream.count(), 0, "a preflight with a body must not reach the upstream");
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_past_their_budget_get_429_and_it_refills() {
    let clock = clock_now();
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .routes(&preflight_routes(&upstream))
        .settings("[server]\npreflights_per_minute = 3\n")
        .clock(clock.clone())
        .start()
        .await;
    let http = Http::new();
    let url = kg.url("/v1/calls");
    for i in 0..3 {
        let answer = http.send("OPTIONS", &url, &PREFLIGHT, Bytes::new()).await;
        assert_eq!(answer.status, 200, "preflight {i}: {}", answer.text());
    }
    let answer = http.send("OPTIONS", &url, &PREFLIGHT, Bytes::new()).await;
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.error_type(), "rate_limited");
    assert!(answer.message().contains("preflight"), "{}", answer.message());
    assert_eq!(answer.header("retry-after"), "20");
    assert_eq!(upstream.count(), 3, "a refused preflight must not reach the upstream");
    // Preflights are not failed authentications: keys from this address still work.
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    assert_eq!(http.get(&url, Some(key.expose())).await.status, 200);

    clock.advance(Duration::from_secs(20));
    assert_eq!(http.send("OPTIONS", &url, &PREFLIGHT, Bytes::new()).await.status, 200);
    assert_eq!(http.send("OPTIONS", &url, &PREFLIGHT, Bytes::new()).await.status, 429);
    let text = metrics(&kg).await;
    assert_eq!(metric(&text, "keygate_preflights_limited_total", &[]), Some(2.0));
    assert_eq!(metric(&text, "keygate_failed_auth_limited_total", &[]), Some(0.0));
    kg.stop().await;
}
