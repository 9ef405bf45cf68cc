//! Keys in Redis, through the real proxy (docs/reference.md §3, 4.4): replicas share keys, revocations
//! and plan changes reach every replica within a second, the cache spares Redis, and an
//! outage never looks like a bad key.

mod support;

use std::time::{Duration, Instant};

use support::redis::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_keys_and_see_revocations_and_plan_changes_within_a_second() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let replicas = [
        replica(&upstream, &redis.url(), "100ms", "").await,
        replica(&upstream, &redis.url(), "100ms", "").await,
        replica(&upstream, &redis.url(), "100ms", "").await,
    ];
    let (key_id, key) = replicas[0].store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    for kg in &replicas {
        let answer = http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("ratelimit-policy"), "\"pro\";q=300;w=60");
    }

    // A plan change through replica 1 reaches all (each has the tenant cached).
    let policy = replicas[1].app().policy();
    replicas[1].app().keys().store().set_plan(&policy, "acme", "tiny").await.unwrap();
    let changed = Instant::now();
    for kg in &replicas {
        let url = kg.url("/v1/calls");
        let seen = eventually(Duration::from_secs(1), async || {
            let answer = http.get(&url, Some(key.expose())).await;
            answer.headers.get("ratelimit-policy").is_some_and(|v| v == "\"tiny\";q=3;w=10") || answer.status == 429
        })
        .await;
        assert!(seen, "plan change not seen by a replica within 1 s");
    }
    assert!(changed.elapsed() < Duration::from_secs(2));

    // A revocation through replica 2 reaches all within 1 s.
    replicas[2].app().keys().store().revoke_key(&key_id).await.unwrap();
    let revoked = Instant::now();
    for kg in &replicas {
        let url = kg.url("/v1/calls");
        let seen =
            eventually(Duration::from_secs(1), async || http.get(&url, Some(key.expose())).await.status == 401).await;
        assert!(seen, "revocation not seen by a replica within 1 s");
    }
    assert!(revoked.elapsed() < Duration::from_millis(1500));
    let answer = http.get(&replicas[0].url("/v1/calls"), Some(key.expose())).await;
    assert!(answer.message().contains("revoked"), "{}", answer.message());
    for kg in replicas {
        kg.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_keeps_cached_keys_working_and_unknown_keys_get_503() {
    let mut redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = replica(&upstream, &redis.url(), "100ms", "").await;
    let (_, cached) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let (_, uncached_for_pause) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let (_, uncached_for_kill) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(cached.expose())).await.status, 200);

    for (outage, uncached) in [("pause", &uncached_for_pause), ("kill", &uncached_for_kill)] {
        match outage {
            "pause" => redis.pause(),
            _ => redis.kill(),
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let started = Instant::now();
            let answer = http.get(&kg.url("/v1/calls"), Some(cached.expose())).await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(answer.status, 200, "{outage}: a cached key keeps working: {}", answer.text());
        }
        assert!(slowest < Duration::from_millis(600), "{outage}: a request took {slowest:?} on a dead Redis");
        // A key not in the cache needs Redis: 503 (never 401), each bounded by the timeout;
        // after repeated failures the breaker opens and they stop waiting at all.
        for _ in 0..4 {
            let started = Instant::now();
            let answer = http.get(&kg.url("/v1/calls"), Some(uncached.expose())).await;
            assert_eq!(answer.status, 503, "{outage}: an unknown key during an outage is 503, never 401");
            assert_eq!(answer.error_type(), "unavailable");
            assert!(answer.headers.contains_key("retry-after"));
            assert!(started.elapsed() < Duration::from_millis(600));
        }
        // The open breaker answers at once: without a call to Redis (which would count as a
        // failed lookup).
        let failed_lookups = lookup_errors(&kg).await;
        assert!(failed_lookups >= 1.0, "{outage}: the lookups that timed out were counted");
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(uncached.expose())).await.status, 503);
        assert_eq!(lookup_errors(&kg).await, failed_lookups, "{outage}: the open breaker still called Redis");
        let ready = http.get(&kg.admin_url("/readyz"), None).await;
        assert_eq!(ready.status, 200, "a Redis outage does not make keygate unready");
        assert_eq!(ready.json()["store"]["state"], "down", "{}", ready.text());
        let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
        assert_eq!(metric(&metrics, "keygate_store_up", &[]), Some(0.0), "{outage}");

        match outage {
            "pause" => redis.resume(),
            _ => redis.restart(),
        }
        if outage == "kill" {
            // A restart lost everything: the key is gone, so the answer is 401 once Redis is back.
            let url = kg.url("/v1/calls");
            let recovered = eventually(Duration::from_secs(3), async || {
                http.get(&url, Some(uncached.expose())).await.status == 401
            })
            .await;
            assert!(recovered, "no recovery after a restart");
        } else {
            let url = kg.url("/v1/calls");
            let recovered = eventually(Duration::from_secs(3), async || {
                http.get(&url, Some(uncached.expose())).await.status == 200
            })
            .await;
            assert!(recovered, "no recovery after SIGCONT");
        }
        let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
        assert_eq!(metric(&metrics, "keygate_store_up", &[]), Some(1.0));
    }
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_one_lookup_for_many_requests_and_none_for_malformed_keys() {
    let redis = RedisServer::start();
    let relay = CountingRelay::start(redis.addr()).await;
    let upstream = upstream().await;
    // A request-path timeout far above any loaded machine's round trip: a lookup that
    // timed out would be asked again, and this test counts commands.
    let kg = replica(&upstream, &relay.url(), "5s", "").await;
    let (_, key) = kg.store_key("acme", "unlimited", &["calls:read"]).await;
    let (_, warm_up) = kg.store_key("acme", "unlimited", &["calls:read"]).await;
    let http = Http::new();
    // The lookup script's first use loads it (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA):
    // count the steady state.
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(warm_up.expose())).await.status, 200);
    let before = relay.commands_but_pings();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let http = http.clone();
        let url = kg.url("/v1/calls");
        let secret = key.expose().to_string();
        tasks.push(tokio::spawn(async move { http.get(&url, Some(&secret)).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    // The invalidation subscription's PINGs (on its own connection) are not lookups.
    let lookups = relay.commands_but_pings() - before;
    // One lookup is at most two round trips (digest index, then the tenant's records).
    assert!(lookups <= 2, "40 concurrent requests with one new key cost {lookups} Redis commands");

    let before = relay.commands();
    let mut malformed = key.expose().to_string();
    malformed.pop();
    for _ in 0..50 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&malformed)).await.status, 401);
        assert_eq!(http.get(&kg.url("/v1/calls"), Some("kg_garbage")).await.status, 401);
    }
    assert_eq!(relay.commands() - before, 0, "malformed keys never reach Redis");

    // Unknown (well-formed) keys: one lookup each, then negative hits.
    let unknown = keygate::keys::generate_secret();
    let before = relay.commands();
    for _ in 0..20 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(unknown.expose())).await.status, 401);
    }
    assert!(relay.commands() - before <= 2, "an unknown key is looked up once, then cached as unknown");
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tenants_work_through_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let upstream = upstream().await;
    let a = replica(&upstream, &cluster.url(), "100ms", "").await;
    let b = replica(&upstream, &cluster.url(), "100ms", "").await;
    let mut keys = Vec::new();
    for tenant in ["alpha", "bravo", "charlie", "delta"] {
        keys.push(a.store_key(tenant, "pro", &["calls:read"]).await);
    }
    let http = Http::new();
    for (_, key) in &keys {
        assert_eq!(http.get(&b.url("/v1/calls"), Some(key.expose())).await.status, 200);
    }
    a.app().keys().store().revoke_key(&keys[0].0).await.unwrap();
    let url = b.url("/v1/calls");
    let secret = keys[0].1.expose().to_string();
    assert!(eventually(Duration::from_secs(1), async || http.get(&url, Some(&secret)).await.status == 401).await);
    let data = b.app().keys().store().data().await.unwrap();
    assert_eq!(data.tenants.len(), 4);
    a.stop().await;
    b.stop().await;
}

#[test]
fn the_cli_works_against_redis() {
    let redis = RedisServer::start();
    let dir = Keygate::builder("http://127.0.0.1:1").redis_keys(&redis.url(), "100ms").write();
    let config = dir.path().join("keygate.toml");
    let (code, _, err) = cli(&config, &["tenants", "create", "acme", "--plan", "pro"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        cli(&config, &["keys", "create", "--tenant", "acme", "--name", "ci", "--scopes", "calls:read", "--json"]);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (code, out, _) = cli(&config, &["keys", "list", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains(created["id"].as_str().unwrap()));
    assert!(!out.contains(created["key"].as_str().unwrap()));
    let (code, _, err) = cli(&config, &["keys", "revoke", created["id"].as_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // max_keys from several processes at once: exactly five of twelve succeed.
    assert_eq!(cli(&config, &["tenants", "create", "capped", "--plan", "pro"]).0, 0);
    let children: Vec<_> = (0..12)
        .map(|i| {
            std::process::Command::new(keygate_bin())
                .args([
                    "--config",
                    config.to_str().unwrap(),
                    "keys",
                    "create",
                    "--tenant",
                    "capped",
                    "--name",
                    &format!("k{i}"),
                    "--scopes",
                    "calls:read",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let ok = children
        .into_iter()
        .filter(|_| true)
        .map(|c| c.wait_with_output().unwrap().status.success())
        .filter(|s| *s)
        .count();
    assert_eq!(ok, 5, "max_keys = 5 holds across processes");
    let (_, out, _) = cli(&config, &["keys", "list", "--tenant", "capped", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_revalidates_the_cache_because_messages_may_have_been_missed() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = replica(&upstream, &redis.url(), "100ms", "").await;
    let (key_id, key) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(key.expose())).await.status, 200);
    // Revoke behind keygate's back (no invalidation message), and cut its subscription:
    // a replica must not trust its cache for cache_ttl (30 s) after a lost subscription.
    let record = keygate::keys::redis_store::layout::key("acme", &key_id);
    redis.cli(&["HSET", &record, "revoked_at", "2020-01-01T00:00:00Z"]);
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(key.expose())).await.status, 200, "still cached");
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let url = kg.url("/v1/calls");
    let seen =
        eventually(Duration::from_secs(3), async || http.get(&url, Some(key.expose())).await.status == 401).await;
    assert!(seen, "the cache was not revalidated after the subscription was lost");
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_written_off_the_request_path() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = replica(&upstream, &redis.url(), "100ms", "").await;
    let (key_id, key) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    let store = kg.app().keys().store().clone();
    assert!(store.data().await.unwrap().keys[&key_id].last_used_at.is_none());
    for _ in 0..5 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(key.expose())).await.status, 200);
    }
    let written =
        eventually(Duration::from_secs(5), async || store.data().await.unwrap().keys[&key_id].last_used_at.is_some())
            .await;
    assert!(written, "last_used_at was not written");
    let first = store.data().await.unwrap().keys[&key_id].last_used_at;
    // More uses within the minute do not write again: a flush after them (the one the
    // background flusher runs every 2 s, run here at once) writes nothing.
    for _ in 0..5 {
        http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
    }
    kg.app().keys().flush_last_used().await;
    assert_eq!(store.data().await.unwrap().keys[&key_id].last_used_at, first, "written at most once a minute");
    kg.stop().await;
}

/// `keygate_store_errors_total{op="lookup"}`: key lookups that reached Redis and failed.
async fn lookup_errors(kg: &Keygate) -> f64 {
    metric(&metrics_text(kg.admin).await, "keygate_store_errors_total", &[("op", "lookup")]).unwrap_or(0.0)
}
