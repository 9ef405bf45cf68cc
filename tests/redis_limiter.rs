//! The shared limiter against real Redis servers (one per test, on a free port): exactness
//! across replicas, header agreement, cost, refusals, NOSCRIPT recovery, the
//! `on_store_error` fallbacks while Redis is paused, memory per tenant, and coalescing
//! measured in round trips through a counting relay. Also against a three-master Redis
//! Cluster. Fails loudly when `redis-server` is missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use keygate::clock::{ManualClock, SystemClock};
use keygate::metrics::Metrics;
use keygate::ratelimit::front::{LimitOutcome, Limiter};
use keygate::ratelimit::lease::{LEASE_SHARE, MAX_LEASE};
use keygate::ratelimit::redis::{self as shared_window, RedisLimiter};
use keygate::ratelimit::{Decision, Limit, LimitKind, LocalLimiter, PlanHeaders, Rule};
use keygate::settings::{LimitBackend, Limits, OnStoreError};
use support::redis::{client, leases_returned, CountingRelay, RedisCluster, RedisServer};
use support::{eventually, most_in_one_window};

/// Generous per-call timeout for the tests that are not about timeouts: a loaded CI
/// machine must not turn a slow reply into a fallback (500 ms was not enough beside a
/// CPU hog, a release build and a load benchmark: load average 12 on two cores).
const RELAXED: Duration = Duration::from_secs(3);
/// The default `redis.timeout`, for the tests that are about timeouts.
const TIGHT: Duration = Duration::from_millis(50);
/// What a request may take beyond `redis.timeout` while Redis is paused.
const MARGIN: Duration = Duration::from_millis(100);
/// How soon after Redis answers again decisions must be shared again (docs/reference.md: 1 s), plus
/// a margin for a loaded machine.
const RECOVERY: Duration = Duration::from_millis(1_500);

fn limit(requests: u64, window: Duration) -> Limit {
    Limit { requests, window }
}

async fn limiter(url: &str, timeout: Duration) -> RedisLimiter {
    RedisLimiter::new(client(url, timeout).await.0)
}

/// A `Limiter` with `backend = "redis"` and `replicas`, and its metrics.
async fn policy_limiter(url: &str, timeout: Duration, replicas: u32) -> (Limiter, Arc<Metrics>) {
    let (client, metrics) = client(url, timeout).await;
    let limits = Limits {
        backend: LimitBackend::Redis,
        on_store_error: OnStoreError::Local,
        replicas,
        concurrency_ttl: Duration::from_secs(10),
    };
    let limiter = Limiter::new(&limits, Some(RedisLimiter::new(client)), Arc::new(SystemClock), metrics.clone());
    (limiter, metrics)
}

/// `keygate_store_errors_total{op="limit"}`: limiter calls that reached Redis and failed.
fn limit_errors(metrics: &Metrics) -> u64 {
    let text = metrics.encode();
    let value = text.lines().find_map(|l| l.strip_prefix("keygate_store_errors_total{op=\"limit\"} "));
    value.map_or(0, |v| v.trim().parse().expect("a count"))
}

fn fallbacks(metrics: &Metrics, action: &str) -> u64 {
    let prefix = format!("keygate_ratelimit_store_fallback_total{{action=\"{action}\"}} ");
    let text = metrics.encode();
    let value = text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).expect("the fallback counter is exported");
    value.trim().parse().expect("a count")
}

/// The fields of `key`'s hash (`HGETALL` through redis-cli): index → value.
fn hash_fields(server: &RedisServer, key: &str) -> BTreeMap<i64, u64> {
    let out = server.cli(&["HGETALL", key]);
    let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .chunks(2)
        .map(|pair| {
            let field = pair[0].parse().unwrap_or_else(|_| panic!("field {:?} of {key}", pair[0]));
            let value = pair.get(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("value of {key}: {pair:?}"));
            (field, value)
        })
        .collect()
}

/// Checks the summary fields of a limiter hash against its counters (the sum, a bound
/// below the oldest, the newest, and the nonce leases are handed back with, if any lease
/// was granted); `fields` are `hash_fields`'. An empty hash has none; a hash whose
/// counters were all handed back may keep a summary of nothing until it expires.
fn assert_summary_agrees(fields: &BTreeMap<i64, u64>) {
    let counters: BTreeMap<i64, u64> = fields.range(0..).map(|(k, v)| (*k, *v)).collect();
    let nonce = usize::from(fields.contains_key(&-4));
    if counters.is_empty() {
        assert!(fields.get(&-1).is_none_or(|&sum| sum == 0), "a sum without counters: {fields:?}");
        return;
    }
    assert_eq!(fields.get(&-1), Some(&counters.values().sum::<u64>()), "the sum: {fields:?}");
    assert!(fields.get(&-2).is_some_and(|&low| low <= *counters.keys().next().unwrap() as u64), "{fields:?}");
    assert!(
        fields.get(&-3).is_some_and(|&newest| newest >= *counters.keys().next_back().unwrap() as u64),
        "{fields:?}"
    );
    assert_eq!(fields.len(), counters.len() + 3 + nonce, "only counters and the summary: {fields:?}");
}

/// Sums the counters of `key`, after checking that its summary agrees with them.
fn stored_count(server: &RedisServer, key: &str) -> u64 {
    let fields = hash_fields(server, key);
    assert_summary_agrees(&fields);
    fields.range(0..).map(|(_, v)| v).sum()
}

// ---------------------------------------------------------------------------------------
// Exactness

/// Three replicas (three limiters, each with its own client), four concurrent clients on
/// each, one tenant of 20 requests per 2 s, for four windows: for the first two the
/// clients send at random moments (about 16 a second between them, a little over the
/// limit, so admissions spread over the sub-windows and the window slides past partly
/// expired ones), then as fast as they are answered (saturation). Every admission is
/// recorded as the interval from sending the check to receiving its answer: the decision
/// was taken at some moment inside it.
async fn exactness(url: &str, tenant: &str) {
    const REQUESTS: u64 = 20;
    const WINDOW: Duration = Duration::from_secs(2);
    const RUN: Duration = Duration::from_secs(8);
    const SPREAD: Duration = Duration::from_secs(4);
    let plan = limit(REQUESTS, WINDOW);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(limiter(url, RELAXED).await);
    }
    let admitted: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..4 {
            let (replica, admitted, errors, checks) =
                (replica.clone(), admitted.clone(), errors.clone(), checks.clone());
            let tenant = tenant.to_string();
            tasks.push(tokio::spawn(async move {
                loop {
                    // Pacing: random while spreading, then 2 ms so that twelve clients do
                    // not starve a small machine.
                    let pause = if start.elapsed() < SPREAD { rand::random_range(0..1_500) } else { 2 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if start.elapsed() >= RUN {
                        break;
                    }
                    let sent = Instant::now();
                    match replica.check(&tenant, &plan, 1).await {
                        Ok(d) => {
                            assert!(d.remaining < REQUESTS || !d.allowed, "{d:?}");
                            assert_eq!(d.limit, REQUESTS);
                            assert_eq!(d.allowed, d.retry_after.is_none(), "{d:?}");
                            if d.allowed {
                                admitted.lock().unwrap().push((sent, Instant::now()));
                            }
                        }
                        Err(e) => {
                            eprintln!("check failed: {e}");
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    checks.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let elapsed = start.elapsed();
    assert_eq!(errors.load(Ordering::SeqCst), 0, "no check may fail while Redis answers");

    let mut admitted = admitted.lock().unwrap().clone();
    admitted.sort();
    let worst = most_in_one_window(&admitted, WINDOW);
    let latency = admitted.iter().map(|&(s, r)| r - s).max().unwrap_or_default();
    let allowed = REQUESTS as f64 * elapsed.as_secs_f64() / WINDOW.as_secs_f64();
    println!(
        "exactness ({tenant}): {} checks, {} admitted of {allowed:.0} the windows allowed ({:.0}%), \
         at most {worst} in one window, slowest admission {latency:?}",
        checks.load(Ordering::SeqCst),
        admitted.len(),
        100.0 * admitted.len() as f64 / allowed
    );
    assert!(worst as u64 <= REQUESTS, "{worst} admissions within one window of {WINDOW:?}");
    assert!(
        admitted.len() as f64 >= 0.8 * allowed,
        "only {} admitted, expected at least 80% of {allowed:.0}",
        admitted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_across_three_replicas() {
    let server = RedisServer::start();
    exactness(&server.url(), "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_across_three_replicas_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    // Tenants on every master: the script is loaded wherever their slots live.
    let replica = limiter(&url, RELAXED).await;
    let plan = limit(5, Duration::from_secs(60));
    for i in 0..12 {
        let tenant = format!("tenant-{i}");
        for left in (0..5).rev() {
            let d = replica.check(&tenant, &plan, 1).await.expect("cluster check");
            assert!(d.allowed);
            assert_eq!(d.remaining, left, "{tenant}");
        }
        assert!(!replica.check(&tenant, &plan, 1).await.expect("cluster check").allowed);
    }
    exactness(&url, "acme").await;
}

// ---------------------------------------------------------------------------------------
// Decisions and headers

fn headers(d: &Decision, plan: &Limit) -> HeaderMap {
    let mut h = HeaderMap::new();
    d.write_headers(&PlanHeaders::new("pro", *plan), &mut h);
    h
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().expect("ascii")).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_agree_across_replicas_and_with_the_local_limiter() {
    let server = RedisServer::start();
    let replicas = [
        limiter(&server.url(), RELAXED).await,
        limiter(&server.url(), RELAXED).await,
        limiter(&server.url(), RELAXED).await,
    ];
    let local = LocalLimiter::new(Arc::new(ManualClock::new(1_000_000)));
    let plan = limit(10, Duration::from_secs(60));
    for i in 0..10u64 {
        let d = replicas[i as usize % 3].check("acme", &plan, 1).await.expect("check");
        let l = local.check("acme", &plan, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9 - i, "remaining counts down by one whichever replica answers");
        assert_eq!((d.allowed, d.limit, d.remaining, d.retry_after), (l.allowed, l.limit, l.remaining, l.retry_after));
        // Admitted in the current sub-window: the full quota is back when it leaves the
        // window, between one window and one window plus one sub-window from now.
        assert!(d.reset > Duration::from_secs(60) && d.reset <= Duration::from_secs(63), "{d:?}");
        let h = headers(&d, &plan);
        assert_eq!(header(&h, "x-ratelimit-remaining"), (9 - i).to_string());
        assert_eq!(header(&h, "x-ratelimit-limit"), "10");
        assert_eq!(header(&h, "ratelimit-policy"), r#""pro";q=10;w=60"#);
        assert!(header(&h, "ratelimit").starts_with(&format!(r#""pro";r={};t=6"#, 9 - i)));
    }
    for replica in &replicas {
        let d = replica.check("acme", &plan, 1).await.expect("check");
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // Retry-After is when the oldest requests leave the window, not the window.
        let retry = d.retry_after.expect("refused has retry_after");
        assert!(retry > Duration::from_secs(60) && retry <= Duration::from_secs(63), "{d:?}");
        let h = headers(&d, &plan);
        assert!(matches!(header(&h, "retry-after"), "61" | "62" | "63"), "{h:?}");
    }
    assert_eq!(stored_count(&server, &shared_window::key("acme", &plan)), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_counts_and_refusals_do_not() {
    let server = RedisServer::start();
    let (a, b) = (limiter(&server.url(), RELAXED).await, limiter(&server.url(), RELAXED).await);
    let plan = limit(10, Duration::from_secs(60));
    assert_eq!(a.check("acme", &plan, 3).await.unwrap().remaining, 7);
    assert_eq!(b.check("acme", &plan, 3).await.unwrap().remaining, 4);
    assert_eq!(a.check("acme", &plan, 3).await.unwrap().remaining, 1);
    let d = b.check("acme", &plan, 3).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 1);
    for _ in 0..100 {
        assert!(!a.check("acme", &plan, 2).await.unwrap().allowed);
    }
    let d = b.check("acme", &plan, 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    // Cost 0 is admitted and counts nothing; a cost above the plan is never admitted.
    let d = a.check("acme", &plan, 0).await.unwrap();
    assert!(d.allowed && d.remaining == 0);
    let d = a.check("other", &plan, 11).await.unwrap();
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.reset, d.retry_after), (10, Duration::ZERO, Some(Duration::from_secs(60))));
    assert_eq!(stored_count(&server, &shared_window::key("acme", &plan)), 10);
    assert_eq!(stored_count(&server, &shared_window::key("other", &plan)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_lock_a_client_out_and_retry_after_is_exact() {
    let server = RedisServer::start();
    let replica = limiter(&server.url(), RELAXED).await;
    // W = 1 s, a sub-window is 50 ms.
    let plan = limit(3, Duration::from_secs(1));
    // The window filled by one admission of cost 3: three calls could straddle a
    // sub-window boundary (likely on a loaded machine), and then leave one by one.
    let first = Instant::now();
    assert!(replica.check("acme", &plan, 3).await.unwrap().allowed);
    let refused = replica.check("acme", &plan, 1).await.unwrap();
    let retry = refused.retry_after.expect("refused");
    // The admission's sub-window leaves the window 1 s (+ at most one 50 ms sub-window)
    // after it: a loaded machine may have spent some of that already.
    let floor = Duration::from_millis(1_000).saturating_sub(first.elapsed());
    assert!(retry >= floor && retry <= Duration::from_millis(1_050), "{refused:?}, floor {floor:?}");
    // Keep retrying until the answer says it fits: every retry refused, none counted.
    // (The window runs on Redis's clock, `TIME`, which a test cannot move: this waits
    // the second out.)
    let mut retries = 0;
    let mut admitted = None;
    let fits = eventually(Duration::from_secs(3), async || {
        let d = replica.check("acme", &plan, 1).await.unwrap();
        if !d.allowed {
            retries += 1;
            return false;
        }
        admitted = Some(d);
        true
    })
    .await;
    assert!(fits, "locked out");
    let d = admitted.unwrap();
    assert!(retries > 10, "the client kept retrying while refused: {retries}");
    // The admission left whole; the refusals left nothing behind.
    assert_eq!(d.remaining, 2, "{d:?}");
}

// ---------------------------------------------------------------------------------------
// NOSCRIPT and restarts

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_flush_mid_run_fails_no_request() {
    let server = RedisServer::start();
    let replica = limiter(&server.url(), RELAXED).await;
    let plan = limit(1_000_000, Duration::from_secs(60));
    assert!(replica.check("acme", &plan, 1).await.unwrap().allowed);
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", shared_window::SCRIPT.get_hash()]).trim(), "1");

    // A flush right before a call: EVALSHA gets NOSCRIPT, the script is loaded, the call
    // succeeds.
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", shared_window::SCRIPT.get_hash()]).trim(), "0");
    assert!(replica.check("acme", &plan, 1).await.unwrap().allowed);
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", shared_window::SCRIPT.get_hash()]).trim(), "1");

    // Flushes while eight clients run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (replica, stop) = (replica.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                match replica.check("acme", &plan, 1).await {
                    Ok(d) if d.allowed => ok += 1,
                    Ok(d) => panic!("refused under a huge limit: {d:?}"),
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        }));
    }
    // The flushes are spaced (50 ms) so that they land among the clients' calls, and the
    // clients run on 50 ms after the last one: the disruption is paced on purpose, no
    // verdict waits on these.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::task::block_in_place(|| server.cli(&["SCRIPT", "FLUSH"]));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await.expect("client task");
        ok += o;
        failed += f;
    }
    println!("SCRIPT FLUSH ×10 during {ok} checks: {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers() {
    let mut server = RedisServer::start();
    let (limiter, metrics) = policy_limiter(&server.url(), TIGHT, 1).await;
    let plan = limit(100, Duration::from_secs(60));
    assert!(matches!(limiter.check("acme", &plan, 1, OnStoreError::Deny).await, LimitOutcome::Decided(_)));

    tokio::task::block_in_place(|| server.kill());
    for _ in 0..5 {
        let started = Instant::now();
        let outcome = limiter.check("acme", &plan, 1, OnStoreError::Deny).await;
        assert_eq!(outcome, LimitOutcome::Fallback { action: OnStoreError::Deny, decision: None });
        assert!(started.elapsed() <= TIGHT + MARGIN, "{:?}", started.elapsed());
    }
    assert_eq!(fallbacks(&metrics, "deny"), 5);

    // A fresh, empty server on the same port: no script, no counters.
    tokio::task::block_in_place(|| server.restart());
    let back = Instant::now();
    let recovered = eventually(Duration::from_secs(5), async || {
        matches!(limiter.check("acme", &plan, 1, OnStoreError::Deny).await, LimitOutcome::Decided(_))
    })
    .await;
    let took = back.elapsed();
    println!("decisions shared again {took:?} after the restart");
    assert!(recovered, "no shared decision within 5 s of the restart");
    assert!(took <= RECOVERY, "decisions shared again only after {took:?}");
    // The script was re-loaded on NOSCRIPT, and nothing failed once Redis answered.
    let d = limiter.check("acme", &plan, 1, OnStoreError::Deny).await;
    assert!(matches!(d, LimitOutcome::Decided(Decision { allowed: true, .. })), "{d:?}");
}

// ---------------------------------------------------------------------------------------
// A paused Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_redis_under_each_on_store_error() {
    let server = RedisServer::start();
    let (limiter, metrics) = policy_limiter(&server.url(), TIGHT, 3).await;
    let limiter = Arc::new(limiter);
    // ceil(9 / 3) = 3 per replica under `local`.
    let plan = limit(9, Duration::from_secs(60));
    let d = limiter.check("acme", &plan, 1, OnStoreError::Deny).await;
    assert!(matches!(d, LimitOutcome::Decided(Decision { allowed: true, remaining: 8, .. })), "{d:?}");

    server.pause();
    let actions = [OnStoreError::Local, OnStoreError::Allow, OnStoreError::Deny];
    let mut latencies = Vec::new();
    let mut local_admitted = 0;
    let mut errors_after = Vec::new();
    for i in 0..30 {
        let action = actions[i % 3];
        let started = Instant::now();
        let outcome = limiter.check("acme", &plan, 1, action).await;
        latencies.push(started.elapsed());
        errors_after.push(limit_errors(&metrics));
        match outcome {
            LimitOutcome::Fallback { action: OnStoreError::Local, decision: Some(d) }
                if action == OnStoreError::Local =>
            {
                assert_eq!(d.limit, 9, "the plan's limit is advertised");
                let h = headers(&d, &plan);
                assert_eq!(header(&h, "x-ratelimit-limit"), "9");
                assert_eq!(header(&h, "ratelimit-policy"), r#""pro";q=9;w=60"#);
                if d.allowed {
                    local_admitted += 1;
                    assert_eq!(d.remaining, 3 - local_admitted);
                } else {
                    assert!(header(&h, "retry-after").parse::<u64>().unwrap() >= 1);
                }
            }
            LimitOutcome::Fallback { action: a, decision: None } if a == action && a != OnStoreError::Local => {
                assert_eq!(outcome.allowed(), a == OnStoreError::Allow);
                assert_eq!(outcome.store_unavailable(), a == OnStoreError::Deny);
            }
            other => panic!("{action:?}: {other:?}"),
        }
    }
    assert_eq!(local_admitted, 3, "each replica alone admits ceil(9 / 3)");
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    let open = latencies[20..].iter().max().copied().unwrap_or_default();
    println!("paused Redis: slowest check {slowest:?}; once the breaker is open, slowest {open:?}");
    assert!(slowest <= TIGHT + MARGIN, "a check took {slowest:?}");
    // Once the breaker is open, checks do not call Redis at all (a call would time out and
    // count as a store error): the count stops moving.
    assert!(errors_after[0] >= 1, "the first check against the paused Redis failed: {errors_after:?}");
    assert_eq!(
        errors_after[19], errors_after[29],
        "with the breaker open a check still called Redis: {errors_after:?}"
    );
    for action in ["local", "allow", "deny"] {
        assert_eq!(fallbacks(&metrics, action), 10, "{action}");
    }

    // Concurrent checks of one tenant (coalesced behind one call) are bounded too.
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = limiter.check("acme", &plan, 1, OnStoreError::Allow).await;
            assert_eq!(outcome, LimitOutcome::Fallback { action: OnStoreError::Allow, decision: None });
            started.elapsed()
        }));
    }
    for task in tasks {
        let took = task.await.expect("task");
        assert!(took <= TIGHT + MARGIN, "a concurrent check took {took:?}");
    }
    assert_eq!(fallbacks(&metrics, "allow"), 42);

    server.resume();
    let back = Instant::now();
    let recovered = eventually(Duration::from_secs(5), async || {
        matches!(limiter.check("acme", &plan, 1, OnStoreError::Deny).await, LimitOutcome::Decided(_))
    })
    .await;
    let took = back.elapsed();
    println!("decisions shared again {took:?} after SIGCONT");
    assert!(recovered && took <= RECOVERY, "decisions shared again only after {took:?}");
    // The shared window kept what it counted before the pause; the fallback's
    // admissions were not added to it (calls that timed out while Redis was stopped may
    // have been counted once it resumed: they were in its socket buffer).
    let d = limiter.check("acme", &plan, 1, OnStoreError::Deny).await;
    let LimitOutcome::Decided(d) = d else { panic!("{d:?}") };
    assert!(d.remaining < 8, "{d:?}");
}

// ---------------------------------------------------------------------------------------
// The hash's summary fields

/// Redis's clock in ms (`TIME`), as the script reads it.
fn redis_now_ms(server: &RedisServer) -> u64 {
    let out = server.cli(&["TIME"]);
    let parts: Vec<u64> = out.lines().map(|l| l.trim().parse().expect("TIME")).collect();
    parts[0] * 1_000 + parts[1] / 1_000
}

/// A hash written by a keygate before the summary fields (counters only), or by one
/// running beside this one in a rolling upgrade (its script deletes the negative fields
/// as stale and adds to a counter without them), is counted whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_written_without_the_summary_are_counted() {
    let server = RedisServer::start();
    let replica = limiter(&server.url(), RELAXED).await;
    let plan = limit(10, Duration::from_secs(60)); // sub-windows of 3 s
    let key = shared_window::key("acme", &plan);
    let current = redis_now_ms(&server) / 3_000;
    let (current, previous) = (current.to_string(), (current - 1).to_string());
    server.cli(&["HSET", &key, &previous, "3", &current, "4"]);
    server.cli(&["PEXPIRE", &key, "63000"]);

    let d = replica.check("acme", &plan, 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 2, "3 + 4 counted before this one: {d:?}");
    assert_eq!(stored_count(&server, &key), 8);

    // An older replica's call: the summary deleted, two admissions added to a counter.
    server.cli(&["HDEL", &key, "-1", "-2", "-3"]);
    server.cli(&["HINCRBY", &key, &current, "2"]);
    let d = replica.check("acme", &plan, 1).await.unwrap();
    assert!(!d.allowed, "10 counted: {d:?}");
    assert_eq!((d.remaining, hash_fields(&server, &key).get(&-1)), (0, Some(&10)));
    assert_eq!(stored_count(&server, &key), 10);
}

/// A limiter script with Redis's clock replaced by the number stored at `fake-now`, so
/// that two scripts can be given the same moments.
fn with_fake_clock(script: &str) -> String {
    let time = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";
    assert!(script.contains(time), "the script reads TIME as expected");
    script.replace(
        time,
        "local now = tonumber(redis.call('GET', 'fake-now'))\n\
         local t = { string.format('%d', math.floor(now / 1000)), string.format('%d', (now % 1000) * 1000) }",
    )
}

/// The summary fields change how the script reads and writes the hash, not what it
/// decides: fed the same moments and costs, it answers exactly what the script before
/// them (tests/fixtures/limiter-before-summary.lua) answers, and holds the same counters,
/// over random workloads: sub-window steps, idle spells longer than the window, a clock
/// stepping back, refusals, costs above the limit, and calls of the old scripts on the
/// same hash (replicas of several versions in a rolling upgrade: before the summary,
/// tests/fixtures/limiter-before-leases.lua, before leases, and
/// tests/fixtures/limiter-before-limits.lua, before several limits per plan). Asked for no
/// lease and given one limit, the script of several limits decides exactly as they did.
#[test]
fn the_script_decides_exactly_as_the_script_before_the_summary_did() {
    let server = RedisServer::start();
    let mut con = redis::Client::open(server.url()).unwrap().get_connection().expect("connect");
    let load = |con: &mut redis::Connection, script: &str| -> String {
        redis::cmd("SCRIPT").arg("LOAD").arg(with_fake_clock(script)).query(con).expect("SCRIPT LOAD")
    };
    let before = load(&mut con, include_str!("fixtures/limiter-before-summary.lua"));
    let before_leases = load(&mut con, include_str!("fixtures/limiter-before-leases.lua"));
    let before_limits = load(&mut con, include_str!("fixtures/limiter-before-limits.lua"));
    let now_script = load(&mut con, shared_window::LUA);
    let fields = |con: &mut redis::Connection, key: &str| -> BTreeMap<i64, u64> {
        redis::cmd("HGETALL").arg(key).query(con).expect("HGETALL")
    };
    let counters = |con: &mut redis::Connection, key: &str| -> BTreeMap<i64, u64> {
        fields(con, key).into_iter().filter(|(k, _)| *k >= 0).collect()
    };
    // A fixed xorshift: the same workload on every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    let mut calls = 0;
    for trial in 0..60 {
        // Windows of seconds or more: the keys' TTL runs on the real clock, and must not
        // expire one of them between two calls.
        let window = [20_000, 21_000, 30_000, 60_000, 3_600_000][random(5) as usize];
        let sub = (window / 20).max(1);
        let requests = [1, 3, 10, 20, 1_000][random(5) as usize];
        let mixed = trial % 2 == 1;
        let mut now = 1_700_000_000_000 + random(1 << 30);
        redis::cmd("DEL").arg("reference").arg("current").exec(&mut con).unwrap();
        for _ in 0..60 {
            match random(20) {
                0..=9 => now += random(sub + 1),
                10..=15 => now += random(window + 1),
                16..=17 => now += random(5 * window + 1),
                18 => now -= random(3 * sub + 1),
                _ => now += random(200 * sub + 1),
            }
            redis::cmd("SET").arg("fake-now").arg(now).exec(&mut con).unwrap();
            let costs: Vec<u64> =
                (0..=random(8)).map(|_| [1, 1, 1, 2, 5, requests, requests + 1][random(7) as usize]).collect();
            let mut run = |sha: &str, key: &str| -> Vec<i64> {
                let mut command = redis::cmd("EVALSHA");
                command.arg(sha).arg(1).arg(key);
                if sha == now_script {
                    // One limit, no lease wanted, none handed back: the decisions of the
                    // scripts before.
                    command.arg(1).arg(8).arg(requests).arg(sub).arg(window).arg(0).arg(0).arg(-1).arg(0);
                } else if sha == before_limits {
                    command.arg(requests).arg(sub).arg(window).arg(0).arg(8).arg(-1).arg(0).arg(0);
                } else {
                    command.arg(requests).arg(sub).arg(window);
                }
                let reply: Vec<i64> = command.arg(&costs).query(&mut con).expect("EVALSHA");
                if sha == now_script {
                    assert_eq!(reply.len(), costs.len() * 5 + 6, "the decisions, then the lease");
                    assert_eq!(reply[costs.len() * 5], 0, "no lease granted when none is wanted");
                    // Per cost: allowed, the limit (the only one), remaining, reset, retry.
                    return reply[..costs.len() * 5]
                        .chunks(5)
                        .flat_map(|d| {
                            assert_eq!(d[1], 0, "one limit");
                            [d[0], d[2], d[3], d[4]]
                        })
                        .collect();
                }
                if sha == before_limits {
                    assert_eq!(reply.len(), costs.len() * 4 + 6, "the decisions, then the lease");
                    return reply[..costs.len() * 4].to_vec();
                }
                reply
            };
            let expected = run(&before, "reference");
            let script = match random(7) {
                0 | 1 if mixed => &before,
                2 if mixed => &before_leases,
                3 if mixed => &before_limits,
                _ => &now_script,
            };
            let answered = run(script, "current");
            if *script == now_script {
                assert_summary_agrees(&fields(&mut con, "current"));
            }
            calls += 1;
            assert_eq!(answered, expected, "trial {trial}, now {now}, window {window}, {requests} requests, {costs:?}");
            assert_eq!(counters(&mut con, "current"), counters(&mut con, "reference"), "trial {trial}, now {now}");
        }
    }
    assert_eq!(calls, 60 * 60);
}

// ---------------------------------------------------------------------------------------
// Memory

fn memory_usage(server: &RedisServer, key: &str) -> u64 {
    let out = server.cli(&["MEMORY", "USAGE", key]);
    out.trim().parse().unwrap_or_else(|_| panic!("MEMORY USAGE {key}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_tenant_is_bounded_whatever_the_limit() {
    let server = RedisServer::start();
    let replica = limiter(&server.url(), RELAXED).await;

    // 100,000 a minute, 1,500 requests.
    let plan = limit(100_000, Duration::from_secs(60));
    for _ in 0..1_500 {
        assert!(replica.check("big", &plan, 1).await.unwrap().allowed);
    }
    let key = shared_window::key("big", &plan);
    // Back to back, the tenant is busy by its rate: what its lease holds is counted too.
    assert_eq!(stored_count(&server, &key), 1_500 + replica.leased_units());
    let big = memory_usage(&server, &key);

    // The same plan over a 1 s window, the requests spread over more than a window so
    // that every sub-window gets a counter: the hash still holds at most 21 counters
    // (and the three summary fields).
    let fast = limit(100_000, Duration::from_secs(1));
    let fast_key = shared_window::key("fast", &fast);
    // Read over a connection of the test's own (not redis-cli, whose start-up costs more
    // than a 50 ms sub-window on a loaded machine).
    let mut look = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    let mut fields_seen = 0;
    let mut spread = 0;
    // Until the requests have spread over most sub-windows (or a loaded machine's 10 s).
    while fields_seen < 18 && started.elapsed() < Duration::from_secs(10) {
        for _ in 0..20 {
            assert!(replica.check("fast", &fast, 1).await.unwrap().allowed);
        }
        // Measured right after the checks: the key expires 1.05 s after its last
        // admission, which a loaded machine can reach before a later look.
        let usage: u64 = redis::cmd("MEMORY").arg("USAGE").arg(&fast_key).query_async(&mut look).await.unwrap();
        spread = spread.max(usage);
        let hash: BTreeMap<i64, u64> = redis::cmd("HGETALL").arg(&fast_key).query_async(&mut look).await.unwrap();
        assert_summary_agrees(&hash);
        let fields = hash.range(0..).count();
        assert!(fields <= 21, "{fields} counters");
        fields_seen = fields_seen.max(fields);
        // Spreads the requests over Redis's clock (`TIME`, which a test cannot move), so
        // that every 50 ms sub-window gets a counter.

        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // And a plan of 10, for comparison.
    let small = limit(10, Duration::from_secs(60));
    for _ in 0..10 {
        assert!(replica.check("small", &small, 1).await.unwrap().allowed);
    }
    let small_usage = memory_usage(&server, &shared_window::key("small", &small));
    println!(
        "MEMORY USAGE: 100,000/min after 1,500 requests {big} B; 100,000/s spread over 1.5 s {spread} B \
         ({fields_seen} fields at most); 10/min {small_usage} B"
    );
    assert!(big < 2_048, "{big} bytes");
    assert!(spread < 2_048, "{spread} bytes");
    assert!(fields_seen >= 15, "the requests should have spread over the sub-windows: {fields_seen}");
    // The key expires one window plus one sub-window after its last admission.
    let ttl: i64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 63_000, "{ttl}");
}

// ---------------------------------------------------------------------------------------
// Coalescing

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalescing_cuts_round_trips_per_request() {
    const CLIENTS: usize = 32;
    const EACH: usize = 50;
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    // A day's window: sub-windows of 72 minutes, so that no lease of the run meets the
    // end of its sub-window (a lease handed back there makes `remaining` skip, on the
    // conservative side, until it is back; tested on its own below).
    let plan = limit(1_000_000, Duration::from_secs(86_400));

    // Sequential checks: one round trip each. (Back to back, as here, they would make the
    // tenant busy by its rate alone, tested on its own below: these limiters count only
    // queues as busy, so that coalescing is what is measured.)
    let queues_only = |client| RedisLimiter::tuned(client, shared_window::HAND_BACK_GRACE, 0);
    let replica = queues_only(client(&relay.url(), RELAXED).await.0);
    assert!(replica.check("acme", &plan, 1).await.unwrap().allowed); // loads the script
    relay.reset();
    for _ in 0..200 {
        assert!(replica.check("acme", &plan, 1).await.unwrap().allowed);
    }
    let sequential = relay.commands() as f64 / 200.0;

    // 32 concurrent clients, each through a limiter of its own (on one client): nothing
    // shares a round trip — the uncoalesced figure under the same concurrency.
    let (client, _) = client(&relay.url(), RELAXED).await;
    let alone: Vec<RedisLimiter> = (0..CLIENTS).map(|_| queues_only(client.clone())).collect();
    assert!(alone[0].check("acme", &plan, 1).await.unwrap().allowed);
    relay.reset();
    let mut tasks = Vec::new();
    for limiter in alone {
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                assert!(limiter.check("acme", &plan, 1).await.expect("check").allowed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let uncoalesced = relay.commands() as f64 / (CLIENTS * EACH) as f64;

    // 32 concurrent clients through one limiter: coalesced.
    let before = replica.check("acme", &plan, 1).await.unwrap().remaining;
    relay.reset();
    let remaining: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (replica, remaining) = (replica.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let d = replica.check("acme", &plan, 1).await.expect("check");
                assert!(d.allowed);
                remaining.lock().unwrap().push(d.remaining);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let total = (CLIENTS * EACH) as u64;
    let coalesced = relay.commands() as f64 / total as f64;
    println!(
        "Redis round trips per request: sequential {sequential:.3}; {CLIENTS} concurrent clients of one tenant \
         uncoalesced {uncoalesced:.3}, coalesced {coalesced:.3}"
    );
    assert!((sequential - 1.0).abs() < 1e-9, "{sequential}");
    assert!(uncoalesced > 0.99, "{uncoalesced}");
    // Leased: a worker asks Redis about once per lease once the tenant is busy.
    assert!(coalesced <= 0.02, "{coalesced}");
    // Still exact: every request got its own remaining, counting down by one.
    let remaining: BTreeSet<u64> = remaining.lock().unwrap().iter().copied().collect();
    assert_eq!(remaining.len() as u64, total);
    assert_eq!(remaining.first().copied(), Some(before - total));
    assert_eq!(remaining.last().copied(), Some(before - 1));
}

/// A tenant whose checks come one at a time, never queued, is busy by its rate: once it
/// made the busy number of checks in one horizon, its calls ask for leases and most checks
/// are admitted from them, still exact (every request its own `remaining`, counting down
/// by one); below that rate (`busy_checks` 0 here) every check is a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_checks_at_a_busy_rate_are_leased_without_a_queue() {
    const CHECKS: u64 = 1_000;
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    // A day's window: no lease of the run meets the end of its sub-window (72 minutes).
    let plan = limit(1_000_000, Duration::from_secs(86_400));
    // Busy at 4 checks in 50 ms (the default is 32): a loaded machine's round trips of
    // up to 12 ms still make the tenant busy, so the test never depends on speed.
    let (redis, _) = client(&relay.url(), RELAXED).await;
    let replica = RedisLimiter::tuned(redis.clone(), shared_window::HAND_BACK_GRACE, 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.leased_units() == 0 {
        assert!(Instant::now() < deadline, "no lease after 20 s of back-to-back checks");
        assert!(replica.check("acme", &plan, 1).await.unwrap().allowed);
    }

    let before = replica.check("acme", &plan, 1).await.unwrap().remaining;
    relay.reset();
    let mut remaining = Vec::new();
    for _ in 0..CHECKS {
        let d = replica.check("acme", &plan, 1).await.unwrap();
        assert!(d.allowed);
        remaining.push(d.remaining);
    }
    let leased = relay.commands() as f64 / CHECKS as f64;
    println!("Redis round trips per request, back to back once busy by rate: {leased:.3}");
    assert!(leased <= 0.25, "{leased} round trips per check once busy");
    let expected: Vec<u64> = (0..CHECKS).map(|i| before - 1 - i).collect();
    assert_eq!(remaining, expected, "one replica's remaining counts down by one, leased or not");

    // The same checks through a limiter that takes only queues as busy: a round trip each.
    let never = RedisLimiter::tuned(redis, shared_window::HAND_BACK_GRACE, 0);
    assert!(never.check("other", &plan, 1).await.unwrap().allowed);
    relay.reset();
    for _ in 0..200 {
        assert!(never.check("other", &plan, 1).await.unwrap().allowed);
    }
    assert_eq!(relay.commands(), 200);
    assert_eq!(never.leased_units(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_batches_decide_in_order_and_count_only_admissions() {
    let server = RedisServer::start();
    let replica = limiter(&server.url(), RELAXED).await;
    let plan = limit(50, Duration::from_secs(60));
    // 200 concurrent checks of mixed costs for 50: exactly 50 admitted in cost, refused
    // ones counting nothing, whatever the batches were.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let replica = replica.clone();
        tasks.push(tokio::spawn(async move {
            let cost = 1 + i % 3;
            (cost, replica.check("acme", &plan, cost).await.expect("check"))
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        let (cost, d) = task.await.expect("task");
        assert_eq!(d.allowed, d.retry_after.is_none());
        if d.allowed {
            admitted += cost;
        }
    }
    // What Redis holds is what was admitted, plus any lease still held here (granted
    // while the batches fitted; handed back when its sub-window ends).
    let stored = stored_count(&server, &shared_window::key("acme", &plan));
    assert_eq!(stored, admitted + replica.leased_units());
    assert!((48..=50).contains(&stored), "{stored}");
    // Cost 1 still fits or not, consistently with what is stored.
    let d = replica.check("acme", &plan, 1).await.unwrap();
    assert_eq!(d.allowed, stored < 50);
}

// ---------------------------------------------------------------------------------------
// Leases

/// Makes `tenant` busy on `replica` (bursts of 16 concurrent checks) until the replica
/// holds a lease with units left; returns how many checks were admitted meanwhile.
async fn hold_a_lease(replica: &RedisLimiter, tenant: &str, plan: &Limit) -> u64 {
    let mut admitted = 0;
    for _ in 0..50 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (replica, tenant, plan) = (replica.clone(), tenant.to_string(), *plan);
            tasks.push(tokio::spawn(async move { replica.check(&tenant, &plan, 1).await.expect("check") }));
        }
        for task in tasks {
            let d = task.await.expect("task");
            assert!(d.allowed, "{d:?}");
            admitted += 1;
        }
        if replica.leased_units() > 0 {
            return admitted;
        }
    }
    panic!("no lease held after 50 bursts of 16 concurrent checks");
}

/// Script calls Redis has run so far.
fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
    line.and_then(|l| l.split(',').next()?.strip_prefix("cmdstat_evalsha:calls=")?.parse().ok()).unwrap_or(0)
}

/// A lease that runs to the end of its sub-window is not handed back by a call of its
/// own while the tenant may call again: its units wait for the tenant's next call, which
/// carries them with its own check (one script call at a sub-window's end, not two).
/// With no call, they go back alone once the grace is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ran_out_goes_back_with_the_next_call_or_alone_after_its_grace() {
    let server = RedisServer::start();
    // 100,000 per 2 s: 100 ms sub-windows; a long grace, so that the next check surely
    // comes within it whatever the machine's load.
    let carried = RedisLimiter::with_hand_back_grace(client(&server.url(), RELAXED).await.0, Duration::from_secs(30));
    let plan = limit(100_000, Duration::from_secs(2));
    let key = shared_window::key("acme", &plan);
    let admitted = hold_a_lease(&carried, "acme", &plan).await;
    // The lease's sub-window ends: its units wait, still counted in Redis.
    let ended = eventually(Duration::from_secs(5), async || carried.pending_units() > 0).await;
    assert!(ended, "the lease never ended");
    let pending = carried.pending_units();
    assert_eq!(carried.leased_units(), pending, "no other lease: only the pending units are held");
    let calls = script_calls(&server);
    // The next check: one call, which decides it and hands the units back.
    assert!(carried.check("acme", &plan, 1).await.expect("check").allowed);
    assert_eq!(script_calls(&server), calls + 1, "one call at the sub-window's end");
    assert_eq!(carried.pending_units(), 0);
    // Counted: every admission, plus whatever the new call leased; the old lease's unspent
    // units are off their counter.
    let stored = stored_count(&server, &key);
    assert_eq!(stored, admitted + 1 + carried.leased_units(), "{pending} units were pending");

    // With a short grace and no further call, the units go back alone.
    let alone = RedisLimiter::with_hand_back_grace(client(&server.url(), RELAXED).await.0, Duration::from_millis(200));
    let other = limit(100_000, Duration::from_secs(2));
    let admitted = hold_a_lease(&alone, "umbrella", &other).await;
    let back = eventually(Duration::from_secs(10), async || alone.leased_units() == 0).await;
    assert!(back, "still held: {} units", alone.leased_units());
    // The hand-back call runs in a task of its own: wait for it to land.
    let key = shared_window::key("umbrella", &other);
    let landed = eventually(Duration::from_secs(5), async || stored_count(&server, &key) == admitted).await;
    assert!(landed, "{} counted, {admitted} admitted", stored_count(&server, &key));
}

/// Admits single checks of `tenant` on `replica` one after the other until one is
/// refused; returns how many were admitted.
async fn saturate(replica: &RedisLimiter, tenant: &str, plan: &Limit) -> u64 {
    let mut admitted = 0;
    loop {
        let d = replica.check(tenant, plan, 1).await.expect("check");
        if !d.allowed {
            return admitted;
        }
        admitted += 1;
        assert!(admitted <= plan.requests, "more admitted than the limit");
    }
}

/// One replica is busy for a moment, takes a lease, and goes idle holding it; another
/// saturates. The lease holds back at most its units (at most 1/LEASE_SHARE of the quota
/// free, at most MAX_LEASE), never more is admitted than the limit, and the units come back
/// when the lease's sub-window ends, without any further request on the idle replica:
/// then the other replica gets exactly them, and the window's admissions are exactly the
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_holds_back_at_most_its_lease_and_only_until_its_sub_window_ends() {
    let server = RedisServer::start();
    let (idle, busy) = (limiter(&server.url(), RELAXED).await, limiter(&server.url(), RELAXED).await);
    // 200 per 20 s: one-second sub-windows, and the test runs inside one window.
    let plan = limit(200, Duration::from_secs(20));
    let key = shared_window::key("acme", &plan);
    let started = Instant::now();
    let admitted_idle = hold_a_lease(&idle, "acme", &plan).await;
    let parked = idle.leased_units();
    assert!(parked <= MAX_LEASE && parked <= plan.requests / LEASE_SHARE, "{parked} units parked");
    let stored = stored_count(&server, &key);
    assert!(stored <= admitted_idle + parked, "{stored} counted, {admitted_idle} admitted, {parked} parked");

    // The busy replica is refused only once what is free is gone: what the idle one admitted
    // and holds is all that keeps it from the limit.
    let first = saturate(&busy, "acme", &plan).await;
    assert!(first + admitted_idle + parked >= plan.requests, "{first} + {admitted_idle} + {parked}");
    // Counted up to the limit, no further (less if the idle replica's sub-window has just
    // ended and its units are back already).
    let stored = stored_count(&server, &key);
    assert!(stored <= plan.requests, "{stored} counted");

    // The idle replica hands its units back when their sub-window ends: no request needed.
    let back = eventually(Duration::from_secs(6), async || idle.leased_units() == 0).await;
    assert!(back, "the idle replica still holds {} units", idle.leased_units());
    let held_for = started.elapsed();
    assert!(held_for < Duration::from_secs(8), "held for {held_for:?}: one-second sub-windows");
    let second = saturate(&busy, "acme", &plan).await;
    println!(
        "lease of {parked} parked on an idle replica for at most {held_for:?}; the busy replica got {first}, \
         then {second} once it was back"
    );
    assert!(started.elapsed() < Duration::from_secs(18), "the test must run inside one window");
    assert_eq!(admitted_idle + first + second, plan.requests, "exactly the limit over the window");
    assert_eq!(stored_count(&server, &key), plan.requests);
}

/// A replica killed with a lease in hand (its runtime gone, timers and all): its units
/// are lost to the others until their sub-window leaves the window, never spent twice;
/// then they are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_a_lease_loses_its_units_until_they_leave_the_window() {
    let server = RedisServer::start();
    // 200 per 4 s: 200 ms sub-windows.
    let plan = limit(200, Duration::from_secs(4));
    let url = server.url();
    let (admitted_dead, parked, granted_at) = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let held = runtime.block_on(async {
            let doomed = limiter(&url, RELAXED).await;
            let granted_at = Instant::now();
            let admitted = hold_a_lease(&doomed, "acme", &plan).await;
            (admitted, doomed.leased_units(), granted_at)
        });
        // The replica dies: its tasks (the lease's timer among them) with it.
        drop(runtime);
        held
    })
    .join()
    .expect("the doomed replica");
    assert!(parked > 0);

    let survivor = limiter(&server.url(), RELAXED).await;
    let admitted = saturate(&survivor, "acme", &plan).await;
    assert_eq!(stored_count(&server, &shared_window::key("acme", &plan)), plan.requests);
    assert!(admitted + admitted_dead + parked <= plan.requests, "{admitted} + {admitted_dead} + {parked}");

    // Free again once the dead replica's sub-window has left the window: within one window
    // plus one sub-window of the grant (and a margin for a loaded machine).
    let again =
        eventually(Duration::from_secs(10), async || survivor.check("acme", &plan, 1).await.expect("check").allowed)
            .await;
    let after = granted_at.elapsed();
    println!("{parked} units of a dead replica's lease were free again {after:?} after it took them");
    assert!(again, "the dead replica's units never came back");
    assert!(after >= Duration::from_secs(4), "back after {after:?}: before their sub-window left the window");
}

/// Redis restarted while a replica holds a lease: the new Redis knows nothing of it, and
/// the lease's units, handed back later, must not come off counters the new Redis holds
/// for others (the hash's nonce differs), or those would be admitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_handed_back_after_a_redis_restart_takes_nothing_off_the_new_counters() {
    let mut server = RedisServer::start();
    let (holder, other) = (limiter(&server.url(), RELAXED).await, limiter(&server.url(), RELAXED).await);
    // An hour's window: three-minute sub-windows, so that the whole scenario stays in the
    // lease's sub-window (checked below on Redis's clock; retried with another tenant if
    // a boundary fell inside it).
    let plan = limit(200, Duration::from_secs(3_600));
    let sub = plan.sub_window_millis();
    let mut sensitive = false;
    for attempt in 0..3 {
        let tenant = format!("acme-{attempt}");
        let key = shared_window::key(&tenant, &plan);
        let before = redis_now_ms(&server) / sub;
        hold_a_lease(&holder, &tenant, &plan).await;
        let parked = holder.leased_units();

        tokio::task::block_in_place(|| server.restart());
        // Both replicas reconnect (on another tenant's checks: the holder's lease stays).
        for replica in [&holder, &other] {
            let reached =
                eventually(Duration::from_secs(5), async || replica.check("warm-up", &plan, 0).await.is_ok()).await;
            assert!(reached, "Redis back after the restart");
        }
        assert_eq!(holder.leased_units(), parked);
        let d = other.check(&tenant, &plan, 1).await.expect("check");
        assert!(d.allowed);
        // A fresh window on the new Redis: the other replica gets all of it.
        let admitted = 1 + saturate(&other, &tenant, &plan).await;
        assert_eq!(admitted, plan.requests);

        // The holder needs more than its lease: its next call hands the lease back.
        let d = holder.check(&tenant, &plan, parked + 1).await.expect("check");
        assert!(!d.allowed, "{d:?}");
        assert_eq!(holder.leased_units(), 0);
        assert_eq!(stored_count(&server, &key), plan.requests, "the new counters lost nothing");
        assert!(!other.check(&tenant, &plan, 1).await.expect("check").allowed, "nothing admitted twice");
        if redis_now_ms(&server) / sub == before {
            sensitive = true;
            break;
        }
    }
    assert!(sensitive, "a sub-window boundary fell inside every attempt");
}

// ---------------------------------------------------------------------------------------
// Several limits per plan, calendar quotas

fn window_rule(requests: u64, window: Duration) -> Rule {
    Rule::window(limit(requests, window))
}

/// Three replicas, four clients each, one tenant whose plan has a burst of 5 a second, 10
/// per 3 s and 20 a day, for 8 s (random moments, then saturation): no second-long span
/// admits more than 5, no 3 s span more than 10, the day exactly 20, and what Redis
/// counted in every limit is exactly what was admitted (refusals, whichever limit made
/// them, count in none).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_limits_are_exact_across_three_replicas_and_refusals_count_in_none() {
    const RUN: Duration = Duration::from_secs(8);
    const SPREAD: Duration = Duration::from_secs(3);
    let server = RedisServer::start();
    let rules = [
        window_rule(5, Duration::from_secs(1)),
        window_rule(10, Duration::from_secs(3)),
        Rule { requests: 20, kind: LimitKind::Day },
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(limiter(&server.url(), RELAXED).await);
    }
    let admitted: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let refused_by: Arc<Mutex<BTreeMap<usize, u64>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..4 {
            let (replica, admitted, refused_by) = (replica.clone(), admitted.clone(), refused_by.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let pause = if start.elapsed() < SPREAD { rand::random_range(0..800) } else { 2 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if start.elapsed() >= RUN {
                        break;
                    }
                    let sent = Instant::now();
                    let d = replica.check_rules("acme", &rules, 1).await.expect("check");
                    assert_eq!(d.limit, rules[d.index].requests, "{d:?}");
                    assert_eq!(d.allowed, d.retry_after.is_none(), "{d:?}");
                    if d.allowed {
                        admitted.lock().unwrap().push((sent, Instant::now()));
                    } else {
                        *refused_by.lock().unwrap().entry(d.index).or_default() += 1;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let mut admitted = admitted.lock().unwrap().clone();
    admitted.sort();
    let worst = |window: Duration| most_in_one_window(&admitted, window);
    let refused_by = refused_by.lock().unwrap().clone();
    println!(
        "several limits: {} admitted, at most {} in 1 s, {} in 3 s; refused by limit: {refused_by:?}",
        admitted.len(),
        worst(Duration::from_secs(1)),
        worst(Duration::from_secs(3))
    );
    assert!(worst(Duration::from_secs(1)) <= 5, "the burst");
    assert!(worst(Duration::from_secs(3)) <= 10, "the 3 s window");
    assert_eq!(admitted.len(), 20, "the day's quota, shared exactly");
    assert!(refused_by.contains_key(&2), "the day refused at the end: {refused_by:?}");
    assert!(refused_by.contains_key(&0) && refused_by.contains_key(&1), "each window refused too: {refused_by:?}");

    leases_returned(&replicas).await;
    assert_eq!(server.quota_count(&shared_window::rule_key("acme", &rules[2])), 20, "refusals counted in none");
}

/// A month's quota shared by three replicas at saturation: exactly the quota is admitted,
/// and Redis holds exactly that once the leases are back; refusals past it count nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_month_quota_is_shared_exactly_across_three_replicas() {
    let server = RedisServer::start();
    let rules = [Rule { requests: 200, kind: LimitKind::Month { reset_day: 1 } }];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(limiter(&server.url(), RELAXED).await);
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..4 {
            let (replica, admitted) = (replica.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                let mut refused_in_a_row = 0;
                while refused_in_a_row < 50 {
                    let d = replica.check_rules("acme", &rules, 1).await.expect("check");
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        refused_in_a_row = 0;
                    } else {
                        refused_in_a_row += 1;
                        assert_eq!((d.index, d.remaining), (0, 0), "{d:?}");
                        let wait = d.retry_after.expect("until the month resets");
                        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(31 * 86_400), "{d:?}");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task");
    }
    leases_returned(&replicas).await;
    let key = shared_window::rule_key("acme", &rules[0]);
    assert_eq!(key, "kg:rq:{acme}:month");
    // Units handed back after the last admissions may be admitted by no one: what was
    // admitted is what Redis counts, and no more than the quota.
    let stored = server.quota_count(&key);
    let admitted = admitted.load(Ordering::SeqCst);
    assert_eq!(stored, admitted, "Redis counts exactly what was admitted");
    assert_eq!(admitted, 200, "the whole quota, and no more");
    let d = replicas[0].check_rules("acme", &rules, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(server.quota_count(&key), 200, "a refusal counts nothing");
    // Its TTL runs to the end of the month (and a minute).
    let ttl: u64 = server.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 60_000 && ttl <= 31 * 86_400_000 + 60_000, "{ttl}");
}

/// The script's calendar on a fake clock: a month quota reset at the end of January, a
/// reset_day of 31 standing on February's last day, a day quota at midnight, and the
/// period the script computes equal to the Rust limiter's over many random moments.
#[test]
fn the_script_resets_calendar_quotas_on_its_clock_as_the_local_limiter_does() {
    let server = RedisServer::start();
    let mut con = redis::Client::open(server.url()).unwrap().get_connection().expect("connect");
    let sha: String =
        redis::cmd("SCRIPT").arg("LOAD").arg(with_fake_clock(shared_window::LUA)).query(&mut con).expect("LOAD");
    let utc = |y: i64, m: u32, d: u32, h: u64| {
        u64::try_from(keygate::policy::days_from_civil(y, m, d)).unwrap() * 86_400_000 + h * 3_600_000
    };
    // (allowed, limit, remaining, reset, retry) per cost.
    let mut run = |key: &str, now: u64, requests: u64, reset_day: u64, costs: &[u64]| -> Vec<[i64; 5]> {
        redis::cmd("SET").arg("fake-now").arg(now).exec(&mut con).unwrap();
        let reply: Vec<i64> = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(key)
            .arg(1)
            .arg(8)
            .arg(requests)
            .arg(0)
            .arg(reset_day)
            .arg(0)
            .arg(0)
            .arg(-1)
            .arg(0)
            .arg(costs)
            .query(&mut con)
            .expect("EVALSHA");
        reply[..costs.len() * 5].chunks(5).map(|d| [d[0], d[1], d[2], d[3], d[4]]).collect()
    };
    // The end of January.
    let eve = utc(2027, 1, 31, 23) + 3_599_000;
    let d = run("m", eve, 2, 1, &[1, 1, 1]);
    assert_eq!(d[0][0..3], [1, 0, 1]);
    assert_eq!(d[1][0..3], [1, 0, 0]);
    assert_eq!(d[2], [0, 0, 0, 1_000, 1_000], "refused until February");
    let d = run("m", utc(2027, 2, 1, 0), 2, 1, &[1]);
    assert_eq!(d[0][0..3], [1, 0, 1], "a fresh month");
    assert_eq!(d[0][3], 28 * 86_400_000, "until March");
    // A reset day of 31 in February: the 28th stands in.
    let d = run("m31", utc(2027, 2, 27, 23), 1, 31, &[1, 1]);
    assert_eq!(d[1], [0, 0, 0, 3_600_000, 3_600_000]);
    let d = run("m31", utc(2027, 2, 28, 0), 1, 31, &[1, 1]);
    assert_eq!(d[0][0], 1, "the 28th: a new period");
    assert_eq!(d[1][4], 31 * 86_400_000, "the next on March 31st");
    // A day quota at midnight.
    let d = run("d", utc(2027, 6, 30, 23), 1, 0, &[1, 1]);
    assert_eq!(d[1][4], 3_600_000);
    assert_eq!(run("d", utc(2027, 7, 1, 0), 1, 0, &[1])[0][0], 1);
    // The script's periods are the Rust limiter's: a cost above the quota is refused
    // until the period's end.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let now = 1_700_000_000_000 + state % (6 * 365 * 86_400_000);
        let reset_day = [0, 1, 15, 28, 29, 30, 31][i % 7];
        let kind = if reset_day == 0 { LimitKind::Day } else { LimitKind::Month { reset_day: reset_day as u8 } };
        let (_, end) = Rule { requests: 1, kind }.period(now).unwrap();
        let d = run(&format!("r{i}"), now, 1, reset_day, &[2]);
        assert_eq!(d[0][4], (end - now) as i64, "now {now}, reset day {reset_day}");
    }
}
