//! Micro-benchmarks of the request path: path normalisation, route matching at 10 / 1,000
//! / 10,000 routes, key parsing + digest + file-store lookup, key parsing + digest + cache
//! hit (the path in front of the Redis key store), header rewriting (request and response),
//! request ids, the rate-limit response headers, the local limiter, and the Redis limiter
//! script against a real local `redis-server` (one call at a time, and coalesced: many
//! concurrent checks of one tenant on one limiter).
//!
//! Run: `cargo bench --bench hot_path` (see docs/benchmarks.md; the load benchmark is
//! `benches/load/run.sh`). The Redis benches start their own `redis-server` on a free
//! port in a temporary folder (never 127.0.0.1:6379) and stop it when they are done, or
//! when this process dies (it watches our stdin pipe). Like the Redis tests, they need
//! `redis-server` on PATH and say so loudly otherwise.

use std::future::Future;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use keygate::clock::SystemClock;
use keygate::keys::cache::KeyCache;
use keygate::keys::data::Lookup;
use keygate::keys::file_store::FileStore;
use keygate::keys::{manage, parse_secret, Peppers, Principal};
use keygate::metrics::CacheResult;
use keygate::metrics::Metrics;
use keygate::path::{normalize, PathOptions};
use keygate::policy::{Policy, RouteMatch};
use keygate::ratelimit::local::LocalLimiter;
use keygate::ratelimit::redis::RedisLimiter;
use keygate::ratelimit::{Decision, Limit, PlanHeaders};
use keygate::redis_client::RedisClient;
use keygate::request_id;
use keygate::upstream::{remove_hop_by_hop, rewrite_request_headers, ForwardContext};

fn policy_with_routes(n: usize) -> Policy {
    let mut text = String::from(
        "[scopes]\n\"calls:read\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:8080\"\n[plans.pro]\nrequests_per_minute = 300\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nprefix = \"/v1/service{}/resource{}\"\nscopes = [\"calls:read\"]\nupstream = \"app\"\n",
            i % 97,
            i
        ));
    }
    Policy::parse(&text, Path::new("bench.toml")).expect("bench policy").0
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for (name, path) in
        [("clean", "/v1/calls/12345/recordings/latest.json"), ("messy", "/v1//calls/./x/../%41%62c/%2e%2E/12345")]
    {
        group.bench_function(name, |b| b.iter(|| normalize(black_box(path), PathOptions::default())));
    }
    group.finish();
}

fn routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [10, 1_000, 10_000] {
        let policy = policy_with_routes(n);
        let path = "/v1/service5/resource5/items/42".to_string(); // resource 5 lives in service 5 % 97
        group.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| matches!(policy.routes.find(black_box(path), &Method::GET), RouteMatch::Found(_)))
        });
    }
    group.finish();
}

/// A file store holding one tenant on plan `pro` and one key; the key's text.
fn store_with_a_key(dir: &Path, peppers: &Peppers) -> (FileStore, String) {
    let store = FileStore::open(&dir.join("keys.json")).unwrap();
    let policy = policy_with_routes(1);
    let now = time::OffsetDateTime::now_utc();
    let created = store
        .update(|data| {
            manage::create_tenant(data, &policy, "acme", "pro", now)?;
            let new = manage::NewKey {
                tenant: "acme".into(),
                name: "b".into(),
                scopes: vec!["calls:read".into()],
                expires_in: None,
            };
            manage::create_key(data, &policy, peppers, &new, now)
        })
        .unwrap();
    (store, created.secret.expose().to_string())
}

fn keys(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let peppers = Peppers::from_entries(vec![("p1".into(), b"bench-pepper".to_vec())]);
    let (store, text) = store_with_a_key(dir.path(), &peppers);
    c.bench_function("key_parse_digest_lookup", |b| {
        b.iter(|| {
            let secret = parse_secret(black_box(&text)).unwrap();
            store.lookup(&peppers.all(&secret))
        })
    });

    // What `auth::Authenticator` does in front of the Redis key store on a warm key: every
    // digest (current pepper first, then plain SHA-256), the cache keyed by the first.
    let cache = KeyCache::new(Duration::from_secs(3600), Duration::from_secs(3600));
    let lookup = |text: &str| {
        let secret = parse_secret(text).unwrap();
        let digests = peppers.all(&secret);
        let cache_key = digests[0].hex.clone();
        let store = &store;
        ready(cache.get(&cache_key, || async move { Ok(store.lookup(&digests)) }))
    };
    let (warm, outcome) = lookup(&text);
    assert!(matches!(warm, Ok(Lookup::Found { .. })) && outcome == CacheResult::Miss);
    assert_eq!(lookup(&text).1, CacheResult::Hit);
    c.bench_function("key_parse_digest_cache_hit", |b| {
        b.iter(|| {
            let (found, outcome) = lookup(black_box(&text));
            debug_assert_eq!(outcome, CacheResult::Hit);
            found
        })
    });
}

/// The output of a future that completes without waiting (a cache hit never awaits).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future was expected to complete at once"),
    }
}

/// A browser-ish request head as a client sends it to keygate: hop-by-hop headers, the
/// key, a spoofed keygate header, a client `X-Forwarded-For` (dropped: untrusted peer).
fn client_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("authorization", "Bearer kg_7Hq2xV9mLwP4sT1bR8nK3cYdE0fGhJ"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5"),
        ("x-debug", "1"),
        ("te", "trailers"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-keygate-tenant", "someone-else"),
        ("x-request-id", "req-1234567890"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("cookie", "session=abcdef0123456789; theme=dark"),
        ("origin", "https://app.example.com"),
        ("referer", "https://app.example.com/calls"),
    ] {
        headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    headers
}

fn headers(c: &mut Criterion) {
    let original = client_headers();
    let principal =
        Principal::new("key_3XbQ9yZ1aB2cD4eF", "acme", "pro", vec!["calls:read".into(), "calls:write".into()]);
    let request_id = &HeaderValue::from_static("9f86d081884c7d659a2feaa0c55ad015");
    let context = ForwardContext {
        peer: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        tls: false,
        request_id,
        peer_trusted: false,
        host: original.get("host").cloned(),
    };
    // The clone of the client's map is set-up, not measured.
    c.bench_function("rewrite_request_headers", |b| {
        b.iter_batched_ref(
            || original.clone(),
            |headers| rewrite_request_headers(headers, black_box(&context), Some(&principal), false),
            BatchSize::SmallInput,
        )
    });

    // An upstream's response head: no hop-by-hop headers (the common case).
    let response = upstream_response_headers();
    c.bench_function("remove_hop_by_hop/response", |b| {
        b.iter_batched_ref(|| response.clone(), |headers| remove_hop_by_hop(headers, false), BatchSize::SmallInput)
    });
    c.bench_function("new_request_id", |b| b.iter(request_id::new));
    // The rate-limit headers an admitted request's response gets.
    let decision = Decision {
        allowed: true,
        limit: 300,
        index: 0,
        remaining: 287,
        reset: Duration::from_millis(58_250),
        retry_after: None,
    };
    let plan = PlanHeaders::new("pro", Limit { requests: 300, window: Duration::from_secs(60) });
    c.bench_function("write_headers", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |headers| black_box(&decision).write_headers(black_box(&plan), headers),
            BatchSize::SmallInput,
        )
    });
}

/// A typical upstream response head (after hyper parsed it).
fn upstream_response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "1234"),
        ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("cache-control", "no-store"),
        ("vary", "accept-encoding"),
        ("server", "app"),
    ] {
        headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    headers
}

fn limiter(c: &mut Criterion) {
    let limiter = LocalLimiter::new(Arc::new(SystemClock));
    let limit = Limit { requests: u64::MAX / 2, window: Duration::from_secs(60) };
    c.bench_function("local_limiter_check", |b| b.iter(|| limiter.check(black_box("acme"), &limit, 1)));
}

/// A `redis-server` of our own on a free port, in a temporary folder, with no
/// persistence. It is stopped when this is dropped, and also when the bench process dies
/// without dropping it (even by SIGKILL): it runs under a shell that kills it and removes
/// its folder once our end of the shell's stdin pipe closes.
struct RedisServer {
    port: u16,
    shell: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        assert!(
            redis_on_path(),
            "`redis-server` must be on PATH for the Redis limiter benches (Debian: apt-get install redis-server)"
        );
        for _attempt in 0..20 {
            // A fresh folder each attempt: the shell removes the folder of a failed one.
            let dir = tempfile::Builder::new().prefix("keygate-bench-redis-").tempdir().unwrap();
            let dir_text = dir.path().to_str().expect("a UTF-8 temp dir").to_string();
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if port == 6379 {
                continue;
            }
            let mut shell = Command::new("sh")
                .arg("-c")
                .arg(r#"redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$2" --logfile "$2/redis.log" & r=$!; read _ignored; kill "$r" 2>/dev/null; wait "$r"; rm -rf "$2""#)
                .arg("sh")
                .arg(port.to_string())
                .arg(&dir_text)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot run sh");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // Ours, not another server that took the port in a race: its folder is ours.
                if let Some(reply) = redis_command(port, &["CONFIG", "GET", "dir"]) {
                    if reply.contains(&dir_text) {
                        return RedisServer { port, shell, _dir: dir };
                    }
                    break; // someone else's server: try another port
                }
                let log = std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    break;
                }
                if Instant::now() >= deadline {
                    drop(shell.stdin.take());
                    let _ = shell.wait();
                    panic!("redis-server on port {port} did not answer within 10s; its log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(shell.stdin.take());
            let _ = shell.wait();
        }
        panic!("could not start redis-server on a free port after 20 attempts");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        drop(self.shell.stdin.take()); // EOF: the shell kills redis-server and waits for it
        let _ = self.shell.wait();
    }
}

fn redis_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file()))
}

/// One command over a fresh connection; the raw reply, or `None` if nothing answers.
fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// `cmdstat_evalsha` calls so far: the limiter's round trips (what the script runs inside
/// is counted under other commands).
fn evalsha_calls(port: u16) -> Option<u64> {
    let stats = redis_command(port, &["INFO", "commandstats"])?;
    let line = stats.lines().find(|l| l.starts_with("cmdstat_evalsha:"))?;
    line.split([':', ',']).find_map(|f| f.strip_prefix("calls=")).and_then(|n| n.parse().ok())
}

/// Concurrent checks per iteration of the coalesced bench: more than a proxy under a
/// 32-connection load has in flight for one tenant.
const COALESCED: usize = 64;

fn redis_limiter(c: &mut Criterion) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let settings = keygate::settings::Redis {
        url: server.url(),
        password_file: None,
        ca_file: None,
        // Generous: a noisy machine must not turn a slow call into a failed bench.
        timeout: Duration::from_secs(2),
    };
    let client = runtime
        .block_on(RedisClient::connect(&settings, Arc::new(Metrics::new())))
        .expect("connect to the bench's redis-server");
    assert!(client.is_up(), "the bench's redis-server did not answer the first connection");
    let limiter = RedisLimiter::new(client);
    let limit = Limit { requests: 1 << 50, window: Duration::from_secs(60) };
    // The first call loads the script (NOSCRIPT, SCRIPT LOAD): not what is measured.
    assert!(runtime.block_on(limiter.check("warm", &limit, 1)).expect("limiter script").allowed);

    let mut group = c.benchmark_group("redis_limiter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single", |b| {
        b.iter(|| runtime.block_on(limiter.check(black_box("acme"), &limit, 1)).expect("limiter script"))
    });
    // One element = one check: the time per element is what one request pays when 64
    // arrive together for one tenant (one call in flight, the rest in one batch).
    group.throughput(Throughput::Elements(COALESCED as u64));
    let checks = AtomicU64::new(0);
    let calls_before = evalsha_calls(server.port);
    group.bench_function(BenchmarkId::new("coalesced", COALESCED), |b| {
        b.iter(|| {
            checks.fetch_add(COALESCED as u64, Ordering::Relaxed);
            runtime.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..COALESCED {
                    let limiter = limiter.clone();
                    tasks.spawn(async move { limiter.check("acme", &limit, 1).await });
                }
                while let Some(decision) = tasks.join_next().await {
                    assert!(decision.unwrap().expect("limiter script").allowed);
                }
            })
        })
    });
    group.finish();
    // Script calls (round trips) per check under coalescing: far fewer than one.
    if let (Some(before), Some(after)) = (calls_before, evalsha_calls(server.port)) {
        let checks = checks.load(Ordering::Relaxed);
        eprintln!(
            "redis_limiter/coalesced: {checks} checks took {} script calls ({:.3} round trips per check)",
            after - before,
            (after - before) as f64 / checks.max(1) as f64
        );
    }
    drop(limiter);
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(server);
}

criterion_group!(benches, paths, routes, keys, headers, limiter, redis_limiter);
criterion_main!(benches);
