//! The shared limiter through three real keygate replicas on one test-owned Redis
//! (docs/reference.md §4.4): exact across replicas, close to the limit under saturation, headers that
//! agree, and bounded degradation when Redis stops.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::redis::*;
use support::*;

/// The limits of these replicas: shared through Redis, refusing when it cannot answer.
const SHARED_LIMITS: &str = "[limits]\nbackend = \"redis\"\non_store_error = \"deny\"\nreplicas = 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_admit_more_than_the_limit_in_any_window_and_come_close_to_it() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    // Redis answers throughout: a call timeout of 1 s (not the request path's usual
    // 50 ms) keeps a loaded test machine from turning a slow answer into a 503 under
    // `on_store_error = "deny"`, which this test is not about.
    let replicas = [
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
    ];
    let (_, key) = replicas[0].store_key("busy", "twenty", &["calls:read"]).await;
    let (_, warmer) = replicas[0].store_key("warmer", "twenty", &["calls:read"]).await;
    let urls: Vec<String> = replicas.iter().map(|kg| kg.url("/v1/calls")).collect();
    let http = Http::new();
    for kg in &replicas {
        // Warm each replica's key cache and its limiter (script, connections) without
        // spending any of `busy`'s window, so that the run starts on an empty one (the
        // window runs on Redis's clock, which no test can move): `busy` authenticates but
        // lacks the scope, refused before the limiter; another tenant goes through it.
        assert_eq!(http.get(&kg.url("/v1/webhooks"), Some(key.expose())).await.status, 403);
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(warmer.expose())).await.status, 200);
    }
    let before = upstream.count();

    // 12 concurrent clients, round-robin over the replicas, for 4 windows.
    let run = Duration::from_secs(8);
    let started = Instant::now();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for client in 0..12 {
        let urls = urls.clone();
        let secret = key.expose().to_string();
        let http = http.clone();
        let statuses = statuses.clone();
        clients.push(tokio::spawn(async move {
            let mut i = client;
            while started.elapsed() < run {
                let answer = http.get(&urls[i % 3], Some(&secret)).await;
                statuses.lock().unwrap().push(answer.status);
                i += 1;
                // Paced load: twelve clients must not starve a small machine.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "only admissions and 429s: {statuses:?}");
    let admitted: Vec<Instant> = upstream.seen()[before..].iter().map(|s| s.at).collect();
    assert_eq!(admitted.len(), statuses.iter().filter(|s| **s == 200).count());

    // No span of one window (2 s) holds more than 20 admissions. The upstream sees each
    // admission a forwarding time after keygate decided it, which a loaded machine can
    // stretch, so spans get 250 ms of slack; a limiter that over-admits (a fixed window
    // lets up to 40 through around its boundary) still shows.
    let window = Duration::from_millis(2000 - 250);
    let mut worst = 0;
    for (i, start) in admitted.iter().enumerate() {
        let in_span = admitted[i..].iter().take_while(|t| t.duration_since(*start) < window).count();
        worst = worst.max(in_span);
    }
    assert!(worst <= 20, "{worst} admissions in one window-long span");
    // Under saturation the tenant gets close to its limit: at least 80% of 4 windows.
    let allowed = 20.0 * run.as_secs_f64() / 2.0;
    assert!(admitted.len() as f64 >= 0.8 * allowed, "only {} of {allowed} admitted", admitted.len());
    for kg in replicas {
        kg.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_agree_across_replicas_and_refusals_are_not_counted() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let replicas = [
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
        replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await,
    ];
    let (_, key) = replicas[0].store_key("small", "tiny", &["calls:read"]).await;
    let http = Http::new();
    for (i, expected) in [2, 1, 0].into_iter().enumerate() {
        let answer = http.get(&replicas[i].url("/v1/calls"), Some(key.expose())).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-ratelimit-remaining"), expected.to_string(), "replica {i}");
        assert_eq!(answer.header("ratelimit-policy"), "\"tiny\";q=3;w=10");
    }
    let mut retry_afters = Vec::new();
    for kg in &replicas {
        let refused = http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
        assert_eq!(refused.status, 429);
        retry_afters.push(refused.header("retry-after").parse::<u64>().unwrap());
    }
    let spread = retry_afters.iter().max().unwrap() - retry_afters.iter().min().unwrap();
    assert!(spread <= 1, "Retry-After agrees across replicas: {retry_afters:?}");
    assert!(retry_afters.iter().all(|r| (9..=11).contains(r)), "until the first admission leaves: {retry_afters:?}");
    // The refusals left nothing in the window: exactly the three admissions are counted,
    // in the counters (fields named by sub-window, not the negative summary fields) and
    // in the summary's sum (`-1`).
    let counted: Vec<(u64, u64)> = redis
        .cli(&["--scan", "--pattern", "kg:rl:*"])
        .lines()
        .map(|k| {
            let out = redis.cli(&["HGETALL", k]);
            let lines: Vec<&str> = out.lines().map(str::trim).collect();
            let field = |pair: &[&str]| (pair[0].parse::<i64>().unwrap(), pair[1].parse::<u64>().unwrap());
            let fields: Vec<(i64, u64)> = lines.chunks(2).map(field).collect();
            let counters = fields.iter().filter(|(k, _)| *k >= 0).map(|(_, v)| v).sum();
            let sum = fields.iter().find(|(k, _)| *k == -1).map_or(0, |(_, v)| *v);
            (counters, sum)
        })
        .collect();
    assert_eq!(counted, [(3, 3)]);
    for kg in replicas {
        kg.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_degrades_as_configured_without_waiting() {
    let upstream = upstream().await;
    for mode in ["local", "allow", "deny"] {
        let redis = RedisServer::start();
        // Keys stay in the file store here: this is about the limiter alone.
        let kg = Keygate::builder(&upstream.url())
            .settings(&format!("[redis]\nurl = \"{}\"\ntimeout = \"50ms\"\n[limits]\nbackend = \"redis\"\non_store_error = \"{mode}\"\nreplicas = 3\n", redis.url()))
            .start()
            .await;
        let (_, key) = kg.key("acme", "tiny", &["calls:read"]);
        let http = Http::new();
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(key.expose())).await.status, 200);
        redis.pause();
        let mut statuses = Vec::new();
        let mut slowest = Duration::ZERO;
        for _ in 0..8 {
            let started = Instant::now();
            let answer = http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
            slowest = slowest.max(started.elapsed());
            if mode == "deny" && answer.status == 503 {
                assert!(answer.headers.contains_key("retry-after"));
                assert_eq!(answer.error_type(), "unavailable");
            }
            statuses.push(answer.status);
        }
        assert!(slowest < Duration::from_millis(500), "{mode}: a request waited {slowest:?} on a stopped Redis");
        match mode {
            // ceil(3 / 3) = 1 request per window on this replica alone.
            "local" => assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{mode}: {statuses:?}"),
            "allow" => assert!(statuses.iter().all(|s| *s == 200), "{mode}: {statuses:?}"),
            _ => assert!(statuses.iter().all(|s| *s == 503), "{mode}: {statuses:?}"),
        }
        let metrics = http.get(&kg.admin_url("/metrics"), None).await.text();
        let counted = metric(&metrics, "keygate_ratelimit_store_fallback_total", &[("action", mode)]).unwrap();
        assert!(counted >= 8.0, "{mode}: fallback decisions counted: {counted}");
        assert_eq!(metric(&metrics, "keygate_store_up", &[]), Some(0.0));

        redis.resume();
        let url = kg.url("/v1/calls");
        let shared_again = eventually(Duration::from_secs(2), async || {
            http.get(&url, Some(key.expose())).await.headers.get("x-ratelimit-limit").is_some_and(|v| v == "3")
                && http.get(&kg.admin_url("/metrics"), None).await.text().contains("keygate_store_up 1")
        })
        .await;
        assert!(shared_again, "{mode}: decisions are shared again after SIGCONT");
        kg.stop().await;
    }
}

/// A keygate with two worker threads and the Redis limiter at `redis_url`
/// (`on_store_error = "allow"`: a request Redis did not decide carries no rate-limit
/// headers), and four kept connections to it: two on each worker (each new connection
/// goes to the worker with the fewest open).
async fn two_workers(upstream: &Upstream, redis_url: &str) -> (Keygate, Vec<KeptConnection>, String) {
    let kg = Keygate::builder(&upstream.url())
        .settings(&format!(
            "[server]\nworkers = 2\n[redis]\nurl = \"{redis_url}\"\ntimeout = \"50ms\"\n\
             [limits]\nbackend = \"redis\"\non_store_error = \"allow\"\n"
        ))
        .start()
        .await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(KeptConnection::open(kg.addr).await);
    }
    (kg, connections, key.expose().to_string())
}

/// Whether Redis decided `answer` (it carries the rate-limit headers).
fn decided_by_redis(answer: &Answer) -> bool {
    answer.status == 200 && answer.headers.contains_key("x-ratelimit-limit")
}

/// How many requests Redis decided, and how many fell back (on a loaded machine a call
/// that timed out may still have been counted by Redis: docs/reference.md 4.4).
#[derive(Debug, Clone, Copy, Default)]
struct Decided {
    by_redis: u64,
    fell_back: u64,
}

/// Sends requests on every connection until each has had one decided by Redis (panics
/// after `deadline`), then one more on each, which must be too.
async fn until_every_worker_decides_through_redis(
    connections: &mut [KeptConnection],
    key: &str,
    deadline: Duration,
) -> Decided {
    let mut decided = 0;
    let mut fell_back = 0;
    let mut waiting: Vec<usize> = (0..connections.len()).collect();
    let all = eventually(deadline, async || {
        let mut still = Vec::new();
        for &i in &waiting {
            let answer = connections[i].get("/v1/calls", key).await;
            assert_eq!(answer.status, 200, "on_store_error = allow");
            if decided_by_redis(&answer) {
                decided += 1;
            } else {
                fell_back += 1;
                still.push(i);
            }
        }
        waiting = still;
        waiting.is_empty()
    })
    .await;
    assert!(all, "connections {waiting:?} not decided by Redis after {deadline:?}");
    for connection in connections.iter_mut() {
        let answer = connection.get("/v1/calls", key).await;
        assert!(decided_by_redis(&answer), "back on Redis, a worker left it again: {:?}", answer.headers);
        decided += 1;
    }
    Decided { by_redis: decided, fell_back }
}

/// Redis counted every request it decided, and nothing else but (at most) requests whose
/// call timed out here after Redis had run it.
fn assert_counted(redis: &RedisServer, decided: Decided) {
    let counted = counted_by(redis);
    assert!(
        counted >= decided.by_redis && counted <= decided.by_redis + decided.fell_back,
        "Redis counted {counted}: {decided:?}"
    );
}

/// The sum of the limiter's counters in `redis` (the summary field of every window).
fn counted_by(redis: &RedisServer) -> u64 {
    redis
        .cli(&["--scan", "--pattern", "kg:rl:*"])
        .lines()
        .map(|k| redis.cli(&["HGET", k, "-1"]).trim().parse::<u64>().unwrap_or(0))
        .sum()
}

/// Each proxy worker thread calls Redis through a connection of its own. After a Redis
/// restart (a fresh, empty server on the same port) every worker decides through Redis
/// again, and the new server counts exactly the requests it decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_thread_decides_through_redis_again_after_a_restart() {
    let mut redis = RedisServer::start();
    let upstream = upstream().await;
    let (kg, mut connections, key) = two_workers(&upstream, &redis.url()).await;
    until_every_worker_decides_through_redis(&mut connections, &key, Duration::from_secs(5)).await;

    tokio::task::block_in_place(|| redis.kill());
    for connection in &mut connections {
        assert!(!decided_by_redis(&connection.get("/v1/calls", &key).await));
    }
    tokio::task::block_in_place(|| redis.restart());
    let decided = until_every_worker_decides_through_redis(&mut connections, &key, Duration::from_secs(5)).await;
    assert_counted(&redis, decided);
    kg.stop().await;
}

/// When every connection to Redis goes silent (a peer gone without a reset: nothing
/// fails, calls just time out), the prober gives up on the shared connection after
/// eight silent probes and builds a new one; the workers' own connections are as stuck,
/// and must be reopened too, or their requests stay on the fallback for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_thread_leaves_a_silent_redis_connection() {
    let redis = RedisServer::start();
    let relay = CountingRelay::start(redis.addr()).await;
    let upstream = upstream().await;
    let (kg, mut connections, key) = two_workers(&upstream, &relay.url()).await;
    let before = until_every_worker_decides_through_redis(&mut connections, &key, Duration::from_secs(5)).await;

    relay.silence_existing();
    for connection in &mut connections {
        assert!(!decided_by_redis(&connection.get("/v1/calls", &key).await));
    }
    // Eight probes 250 ms apart, then a new connection: a few seconds.
    let after = until_every_worker_decides_through_redis(&mut connections, &key, Duration::from_secs(10)).await;
    let both = Decided { by_redis: before.by_redis + after.by_redis, fell_back: before.fell_back + after.fell_back };
    assert_counted(&redis, both);
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_causes_no_5xx() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = replica(&upstream, &redis.url(), "1s", SHARED_LIMITS).await;
    let (_, key) = kg.store_key("acme", "pro", &["calls:read"]).await;
    let http = Http::new();
    for i in 0..60 {
        if i % 20 == 10 {
            assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
        }
        let answer = http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.text());
    }
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_is_shared_through_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let upstream = upstream().await;
    let a = replica(&upstream, &cluster.url(), "1s", SHARED_LIMITS).await;
    let b = replica(&upstream, &cluster.url(), "1s", SHARED_LIMITS).await;
    let (_, key) = a.store_key("small", "tiny", &["calls:read"]).await;
    let http = Http::new();
    let statuses = [
        http.get(&a.url("/v1/calls"), Some(key.expose())).await.status,
        http.get(&b.url("/v1/calls"), Some(key.expose())).await.status,
        http.get(&a.url("/v1/calls"), Some(key.expose())).await.status,
        http.get(&b.url("/v1/calls"), Some(key.expose())).await.status,
    ];
    assert_eq!(statuses, [200, 200, 200, 429]);
    a.stop().await;
    b.stop().await;
}

/// Plans of several limits through three replicas: every answer lists every limit of the
/// plan, reports the one with the least room, and a 429 names the limit that refused,
/// whichever replica answers; a refusal by the burst counts nothing in the day's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_of_several_limits_are_decided_and_reported_alike_by_every_replica() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let routes = ROUTES.replace("{upstream}", &upstream.url()).replace(
        "[plans.unlimited]",
        "[plans.layered]\nlimits = [\n  { name = \"burst\", requests = 2, window = \"10s\" },\n  \
         { name = \"minute\", requests = 10, window = \"60s\" },\n  \
         { name = \"day\", requests = 3, period = \"day\" },\n]\n\n\
         [plans.daily]\nlimits = [\n  { name = \"burst\", requests = 10, window = \"10s\" },\n  \
         { name = \"day\", requests = 2, period = \"day\" },\n]\n\n[plans.unlimited]",
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let kg = Keygate::builder(&upstream.url()).routes(&routes).redis_keys(&redis.url(), "1s");
        replicas.push(kg.settings(SHARED_LIMITS).start().await);
    }
    let (_, layered) = replicas[0].store_key("layered-tenant", "layered", &["calls:read"]).await;
    let (_, daily) = replicas[0].store_key("daily-tenant", "daily", &["calls:read"]).await;
    let http = Http::new();
    let policy = "\"burst\";q=2;w=10, \"minute\";q=10;w=60, \"day\";q=3;w=86400";

    let answers = [
        http.get(&replicas[0].url("/v1/calls"), Some(layered.expose())).await,
        http.get(&replicas[1].url("/v1/calls"), Some(layered.expose())).await,
    ];
    for (answer, left) in answers.iter().zip([1, 0]) {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-policy"), policy);
        assert!(
            answer.header("ratelimit").starts_with(&format!("\"burst\";r={left};t=")),
            "{}",
            answer.header("ratelimit")
        );
        assert_eq!(answer.header("x-ratelimit-limit"), "2");
        assert_eq!(answer.header("x-ratelimit-remaining"), left.to_string());
    }
    for kg in &replicas {
        let refused = http.get(&kg.url("/v1/calls"), Some(layered.expose())).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["error"]["limit"], "burst");
        assert_eq!(refused.header("ratelimit-policy"), policy);
        let retry: u64 = refused.header("retry-after").parse().unwrap();
        assert!((1..=11).contains(&retry), "the burst's Retry-After: {retry}");
    }
    let day_count = redis.cli(&["HGET", "kg:rq:{layered-tenant}:day", "n"]);
    assert_eq!(day_count.trim(), "2", "the burst's refusals counted nothing in the day");

    for (kg, left) in replicas.iter().zip([1, 0]) {
        let answer = http.get(&kg.url("/v1/calls"), Some(daily.expose())).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.header("ratelimit").starts_with(&format!("\"day\";r={left};t=")),
            "{}",
            answer.header("ratelimit")
        );
    }
    let refused = http.get(&replicas[2].url("/v1/calls"), Some(daily.expose())).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["limit"], "day");
    assert_eq!(refused.message(), "Quota \"day\" of 2 requests per day exceeded");
    // Until midnight UTC (Redis's clock and this one agree within a few seconds here).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!(retry.abs_diff(to_midnight) <= 3, "Retry-After {retry}, midnight in {to_midnight}");
    for kg in replicas {
        kg.stop().await;
    }
}
