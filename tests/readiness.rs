//! Readiness and Redis (docs/reference.md §5.1): a keygate that has never reached its
//! Redis since start — a refused password, a name that does not resolve — is not ready,
//! says why in `/readyz` and in its log every few seconds, and becomes ready without a
//! restart once Redis accepts it; a Redis that was reached and then went away leaves it
//! ready. `keygate check --connect` and the key and tenant commands name the exact
//! failure. Real `redis-server`s on free ports, the real binary for the CLI and the log.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::redis::RedisServer;
use support::*;

/// The password the Redis servers of these tests require.
const RIGHT: &str = "right-redis-pw-4411";
/// The password keygate is (wrongly) given: it must never appear in an answer or a log.
const WRONG: &str = "wrong-redis-pw-9937";

/// `/readyz`: (status, JSON body).
async fn readyz(admin: SocketAddr) -> (u16, serde_json::Value, String) {
    let answer = Http::new().get(&format!("http://{admin}/readyz"), None).await;
    (answer.status, answer.json(), answer.text())
}

/// A keygate config folder whose keys are in Redis at `url` (the standard policy).
fn config_dir(up: &Upstream, url: &str) -> tempfile::TempDir {
    Keygate::builder(&up.url()).redis_keys(url, "200ms").write()
}

#[tokio::test]
async fn a_refused_redis_password_is_not_ready_until_redis_accepts_it() {
    let redis = RedisServer::start_with_password(RIGHT);
    let up = upstream().await;
    let url = format!("redis://:{WRONG}@127.0.0.1:{}", redis.port);
    let kg = Keygate::builder(&up.url()).redis_keys(&url, "200ms").start().await;

    let (status, body, text) = readyz(kg.admin).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(body["ready"], false, "{text}");
    assert_eq!(body["store"]["reached_since_start"], false, "{text}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("Redis at redis://127.0.0.1:{}", redis.port)), "{text}");
    assert!(reason.contains("refused the password") && reason.contains("WRONGPASS"), "{text}");
    assert_eq!(body["store"]["error"], body["reason"], "{text}");
    assert!(!text.contains(WRONG), "the password leaked into /readyz: {text}");

    // Redis is told to accept that password: ready, without a restart.
    redis.cli(&["CONFIG", "SET", "requirepass", WRONG]);
    let ready = eventually(Duration::from_secs(10), async || readyz(kg.admin).await.0 == 200).await;
    let (_, body, text) = readyz(kg.admin).await;
    assert!(ready, "not ready 10 s after Redis accepted the password: {text}");
    assert_eq!(body["store"]["reached_since_start"], true, "{text}");
    assert!(body["reason"].is_null(), "{text}");
    kg.stop().await;
}

#[tokio::test]
async fn a_redis_reached_then_gone_leaves_keygate_ready() {
    let mut redis = RedisServer::start();
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).redis_keys(&redis.url(), "200ms").start().await;
    let ready = eventually(Duration::from_secs(10), async || readyz(kg.admin).await.0 == 200).await;
    assert!(ready, "not ready with Redis up: {}", readyz(kg.admin).await.2);

    redis.kill();
    let http = Http::new();
    // Lookups of keys nobody cached make the breaker see the outage.
    let down = eventually(Duration::from_secs(10), async || {
        let unknown = keygate::keys::generate_secret();
        http.get(&kg.url("/v1/calls"), Some(unknown.expose())).await;
        readyz(kg.admin).await.1["store"]["state"] == "down"
    })
    .await;
    let (status, body, text) = readyz(kg.admin).await;
    assert!(down, "the breaker never opened: {text}");
    assert_eq!(status, 200, "an outage after Redis was reached made keygate unready: {text}");
    assert_eq!(body["store"]["reached_since_start"], true, "{text}");
    kg.stop().await;
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_not_ready_with_the_reason() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).redis_keys("redis://no-such-host.invalid:6379", "200ms").start().await;
    let (status, body, text) = readyz(kg.admin).await;
    assert_eq!(status, 503, "{text}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no-such-host.invalid") && reason.contains("does not resolve"), "{text}");
    kg.stop().await;
}

/// `keygate serve` as a child process whose JSON log lines are collected as they come.
struct Serve {
    logged: support::process::LoggedServe,
}

impl Serve {
    fn start(config: &Path) -> Serve {
        Serve { logged: support::process::LoggedServe::spawn(config) }
    }

    /// The log lines whose message is `message`, parsed.
    fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.logged
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    fn all(&self) -> String {
        self.logged.lines().join("\n")
    }
}

fn timestamp(line: &serde_json::Value) -> time::OffsetDateTime {
    let text = line["timestamp"].as_str().expect("a timestamp");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("RFC 3339")
}

#[tokio::test]
async fn the_binary_says_every_few_seconds_why_redis_is_not_reached_then_once_that_it_connected() {
    const UNREACHED: &str = "Redis not reached since start; retrying in the background";
    const CONNECTED: &str = "connected to Redis";
    let redis = RedisServer::start_with_password(RIGHT);
    let up = upstream().await;
    let dir = config_dir(&up, &format!("redis://:{WRONG}@127.0.0.1:{}", redis.port));
    let serve = Serve::start(&dir.path().join("keygate.toml"));

    let repeated = eventually(Duration::from_secs(20), async || serve.with_message(UNREACHED).len() >= 3).await;
    assert!(repeated, "not said three times within 20 s: {}", serve.all());
    let said = serve.with_message(UNREACHED);
    for line in &said {
        let error = line["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("refused the password") && error.contains("WRONGPASS"), "{line}");
    }
    // Every few seconds, not on every attempt (every 250 ms).
    let gaps: Vec<f64> = said.windows(2).map(|w| (timestamp(&w[1]) - timestamp(&w[0])).as_seconds_f64()).collect();
    assert!(gaps.iter().all(|&gap| gap >= 2.0), "logged too often: gaps {gaps:?}");
    assert!(serve.with_message(CONNECTED).is_empty(), "{}", serve.all());

    redis.cli(&["CONFIG", "SET", "requirepass", WRONG]);
    let connected = eventually(Duration::from_secs(10), async || !serve.with_message(CONNECTED).is_empty()).await;
    assert!(connected, "no line saying it connected: {}", serve.all());
    // Once connected, the complaint stops and the connection is announced once.
    let complaints = serve.with_message(UNREACHED).len();
    let ready_line =
        eventually(Duration::from_secs(10), async || !serve.with_message("keygate ready").is_empty()).await;
    assert!(ready_line);
    let admin: SocketAddr =
        serve.with_message("keygate ready")[0]["fields"]["admin"].as_str().unwrap().parse().unwrap();
    assert!(eventually(Duration::from_secs(10), async || readyz(admin).await.0 == 200).await);
    assert_eq!(serve.with_message(CONNECTED).len(), 1, "{}", serve.all());
    assert_eq!(serve.with_message(UNREACHED).len(), complaints, "{}", serve.all());
    assert!(!serve.all().contains(WRONG), "the password leaked into the log");
}

#[tokio::test]
async fn check_connect_reports_the_exact_failure_and_check_alone_stays_offline() {
    let redis = RedisServer::start_with_password(RIGHT);
    let up = upstream().await;

    // A wrong password.
    let dir = config_dir(&up, &format!("redis://:{WRONG}@127.0.0.1:{}", redis.port));
    let config = dir.path().join("keygate.toml");
    let (code, stdout, stderr) = cli(&config, &["check", "--connect"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("Redis at redis://127.0.0.1:{} refused the password", redis.port)), "{stdout}");
    assert!(stdout.contains("WRONGPASS"), "{stdout}");
    assert!(!stdout.contains(WRONG) && !stderr.contains(WRONG), "the password leaked: {stdout}{stderr}");
    // Without --connect, check does not touch Redis.
    let (code, stdout, stderr) = cli(&config, &["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The key and tenant commands name the failure too.
    let (code, stdout, stderr) = cli(&config, &["tenants", "list"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("refused the password") && stderr.contains("WRONGPASS"), "{stderr}");
    assert!(!stderr.contains(WRONG), "the password leaked: {stderr}");

    // No password where one is needed.
    let dir = config_dir(&up, &format!("redis://127.0.0.1:{}", redis.port));
    let (code, stdout, _) = cli(&dir.path().join("keygate.toml"), &["check", "--connect"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("requires a password") && stdout.contains("NOAUTH"), "{stdout}");

    // A name that does not resolve.
    let dir = config_dir(&up, "redis://no-such-host.invalid:6379");
    let (code, stdout, _) = cli(&dir.path().join("keygate.toml"), &["check", "--connect"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("Redis at redis://no-such-host.invalid:6379 does not resolve"), "{stdout}");
    let (code, _, stderr) = cli(&dir.path().join("keygate.toml"), &["keys", "list"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not resolve"), "{stderr}");

    // Nothing listening.
    let closed = closed_port().await;
    let dir = config_dir(&up, &format!("redis://{closed}"));
    let (code, stdout, _) = cli(&dir.path().join("keygate.toml"), &["check", "--connect"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("refused the connection"), "{stdout}");

    // The right password: valid.
    let dir = config_dir(&up, &format!("redis://:{RIGHT}@127.0.0.1:{}", redis.port));
    let (code, stdout, stderr) = cli(&dir.path().join("keygate.toml"), &["check", "--connect"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
