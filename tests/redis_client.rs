//! The shared Redis client against real `redis-server`s: call timeouts against a
//! stalled server, the circuit breaker and `store_up`, recovery by the background probe
//! (SIGCONT, restart on the same port, Redis down at start), cluster, auth, TLS, and the
//! test harness itself (the counting relay).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::metrics::{Metrics, StoreOp};
use keygate::redis_client::{RedisCallError, RedisClient, RedisConnection};
use keygate::settings;
use support::eventually;
use support::process::established_to;
use support::redis::*;

const TIMEOUT: Duration = Duration::from_millis(50);
/// For the tests that are not about timeouts: a loaded machine must not turn a slow reply
/// into a failure.
const RELAXED: Duration = Duration::from_secs(3);

async fn ping(client: &RedisClient) -> Result<String, RedisCallError> {
    client.run(StoreOp::Lookup, |mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await
}

/// `keygate_store_up` as exported.
fn store_up(metrics: &Metrics) -> i64 {
    sample(&metrics.encode(), "keygate_store_up")
}

fn store_errors(metrics: &Metrics, op: &str) -> i64 {
    sample(&metrics.encode(), &format!("keygate_store_errors_total{{op=\"{op}\"}}"))
}

fn sample(text: &str, series: &str) -> i64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}")) as i64
}

#[tokio::test]
async fn ping_through_the_client() {
    let server = RedisServer::start();
    let (client, metrics) = client(&server.url(), TIMEOUT).await;
    assert!(client.is_up(), "connect() connects at once when Redis is up");
    assert_eq!(store_up(&metrics), 1);
    assert_eq!(ping(&client).await.unwrap(), "PONG");
    let value: Option<String> = client
        .run(StoreOp::Write, |mut c| async move {
            redis::cmd("SET").arg("k").arg("v").exec_async(&mut c).await?;
            redis::cmd("GET").arg("k").query_async(&mut c).await
        })
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("v"));
    assert_eq!(server.cli(&["GET", "k"]).trim(), "v");
}

#[tokio::test]
async fn stalled_server_times_out_opens_the_breaker_and_the_probe_closes_it() {
    let server = RedisServer::start();
    let (client, metrics) = client(&server.url(), TIMEOUT).await;
    assert_eq!(ping(&client).await.unwrap(), "PONG");

    server.pause();
    for i in 0..3 {
        let start = Instant::now();
        let result = ping(&client).await;
        let took = start.elapsed();
        assert!(matches!(result, Err(RedisCallError::Timeout)), "call {i}: {result:?}");
        assert!(took < Duration::from_millis(300), "call {i} took {took:?} with a 50ms timeout");
    }
    assert!(!client.is_up());
    assert_eq!(store_up(&metrics), 0, "store_up drops to 0 when the breaker opens");
    assert_eq!(store_errors(&metrics, "lookup"), 3);

    // The open breaker refuses without calling Redis: `Unavailable`, not a `Timeout`, and
    // nothing counted as a failed call.
    for _ in 0..5 {
        let result = ping(&client).await;
        assert!(matches!(result, Err(RedisCallError::Unavailable)), "an open breaker refuses at once: {result:?}");
    }
    assert_eq!(store_errors(&metrics, "lookup"), 3, "refusals are not store errors");

    server.resume();
    let up = eventually(Duration::from_secs(1), async || client.is_up()).await;
    assert!(up, "the breaker closes within 1 s of SIGCONT, without traffic");
    assert_eq!(store_up(&metrics), 1);
    assert_eq!(ping(&client).await.unwrap(), "PONG");
}

#[tokio::test]
async fn recovers_from_a_restart_on_the_same_port() {
    let mut server = RedisServer::start();
    let (client, metrics) = client(&server.url(), RELAXED).await;
    assert_eq!(ping(&client).await.unwrap(), "PONG");

    server.kill();
    for _ in 0..3 {
        let result = ping(&client).await;
        assert!(result.as_ref().is_err_and(RedisCallError::is_unavailable), "{result:?}");
    }
    assert!(!client.is_up(), "three failures open the breaker");
    assert_eq!(store_up(&metrics), 0);

    server.restart();
    let up = eventually(Duration::from_secs(1), async || client.is_up()).await;
    assert!(up, "the breaker closes within 1 s of Redis answering again");
    assert_eq!(store_up(&metrics), 1);
    assert_eq!(ping(&client).await.unwrap(), "PONG");
}

#[tokio::test]
async fn recovers_from_a_long_stall_by_reconnecting() {
    // Paused long enough for the prober to give up on the silent connection and build a
    // new one, which itself hangs in its handshake until SIGCONT.
    let server = RedisServer::start();
    let (client, _metrics) = client(&server.url(), TIMEOUT).await;
    server.pause();
    let connections = established_to(server.port);
    for _ in 0..3 {
        let _ = ping(&client).await;
    }
    assert!(!client.is_up());
    // The prober gives up after 8 silent probes (about 2.4 s) and opens a new connection:
    // the kernel accepts it for the stopped server, so it shows while its handshake hangs.
    let rebuilding = eventually(Duration::from_secs(15), async || established_to(server.port) > connections).await;
    assert!(rebuilding, "the prober did not open a new connection to the stalled server");
    server.resume();
    assert!(eventually(Duration::from_secs(1), async || client.is_up()).await);
    assert_eq!(ping(&client).await.unwrap(), "PONG");
}

#[tokio::test]
async fn connects_while_redis_is_down_and_works_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let start = Instant::now();
    let (client, metrics) = client(&server.url(), TIMEOUT).await;
    assert!(start.elapsed() < Duration::from_secs(2), "connect() does not wait for Redis");
    assert!(!client.is_up());
    assert_eq!(store_up(&metrics), 0, "no connection yet: the breaker is open");
    // Refused by the breaker, without a call (a call would fail to connect or time out).
    assert!(matches!(ping(&client).await, Err(RedisCallError::Unavailable)));
    assert_eq!(store_errors(&metrics, "lookup"), 0, "a refusal by the breaker is not a failed call");

    server.restart();
    assert!(client.wait_up(Duration::from_secs(2)).await, "the background connect succeeds");
    assert_eq!(store_up(&metrics), 1);
    assert_eq!(ping(&client).await.unwrap(), "PONG");
}

#[tokio::test]
async fn command_errors_do_not_open_the_breaker() {
    let server = RedisServer::start();
    let (client, metrics) = client(&server.url(), TIMEOUT).await;
    server.cli(&["SET", "s", "x"]);
    for _ in 0..5 {
        let result = client
            .run(StoreOp::Lookup, |mut c| async move {
                redis::cmd("HGET").arg("s").arg("f").query_async::<()>(&mut c).await
            })
            .await;
        let err = result.unwrap_err();
        assert!(!err.is_unavailable());
        assert_eq!(err.redis_error().and_then(|e| e.code()), Some("WRONGTYPE"));
    }
    assert!(client.is_up(), "WRONGTYPE proves Redis answers");
    assert_eq!(store_errors(&metrics, "lookup"), 5, "but each counts as a store error");
}

#[tokio::test]
async fn scripts_reload_after_noscript() {
    let server = RedisServer::start();
    let (client, metrics) = client(&server.url(), RELAXED).await;
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let run = |client: RedisClient, script: redis::Script| async move {
        client
            .run(StoreOp::Limit, |mut c: RedisConnection| async move {
                script.key("{t}:n").arg(2).invoke_async::<i64>(&mut c).await
            })
            .await
    };
    assert_eq!(run(client.clone(), script.clone()).await.unwrap(), 2);
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(run(client.clone(), script.clone()).await.unwrap(), 4, "NOSCRIPT is handled by invoke_async");
    assert_eq!(store_errors(&metrics, "limit"), 0);
}

/// Sets 200 keys through `client` and reads them back; they must land on every node.
async fn set_and_get_on_every_node(client: &RedisClient, cluster: &RedisCluster) {
    let timeout = Duration::from_secs(2);
    for i in 0..200 {
        let key = format!("key:{i}");
        client
            .run_with_timeout(StoreOp::Write, timeout, |mut c| async move {
                redis::cmd("SET").arg(&key).arg(i).exec_async(&mut c).await
            })
            .await
            .unwrap();
    }
    for i in 0..200 {
        let key = format!("key:{i}");
        let got: i64 = client
            .run_with_timeout(StoreOp::Lookup, timeout, |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await
            .unwrap();
        assert_eq!(got, i);
    }
    for node in &cluster.nodes {
        let size: u64 = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(size > 0, "node {} holds no key", node.port);
    }
}

#[tokio::test]
async fn cluster_set_and_get_many_keys() {
    let cluster = RedisCluster::start();
    let (client, _metrics) = client(&cluster.url(), TIMEOUT).await;
    assert!(client.is_cluster());
    assert!(client.wait_up(Duration::from_secs(5)).await);
    let timeout = Duration::from_secs(2);
    set_and_get_on_every_node(&client, &cluster).await;
    // A script over two keys of one hash tag, loaded on demand on the right node.
    let script = redis::Script::new("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])");
    let n: i64 = client
        .run_with_timeout(StoreOp::Limit, timeout, |mut c| async move {
            script.key("{tenant}:a").key("{tenant}:b").arg("x").invoke_async(&mut c).await
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn pubsub_client_reaches_the_server() {
    let server = RedisServer::start_with_password("pubsub-pw");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "pubsub-pw\n").unwrap();
    let metrics = Arc::new(Metrics::new());
    let settings = settings::Redis { password_file: Some(file), ..redis_settings(&server.url(), TIMEOUT) };
    let client = RedisClient::connect(&settings, metrics).await.unwrap();
    let mut pubsub = client.pubsub_client().get_async_pubsub().await.unwrap();
    pubsub.subscribe("keygate:test").await.unwrap();
    client
        .run(StoreOp::Write, |mut c| async move {
            redis::cmd("PUBLISH").arg("keygate:test").arg("hello").query_async::<i64>(&mut c).await
        })
        .await
        .unwrap();
    use futures_core::Stream;
    let mut messages = pubsub.on_message();
    let message = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
}

#[tokio::test]
async fn password_from_password_file() {
    let server = RedisServer::start_with_password("s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, "  s3cret-pw\n").unwrap();
    let metrics = Arc::new(Metrics::new());
    let settings = settings::Redis { password_file: Some(file.clone()), ..redis_settings(&server.url(), TIMEOUT) };
    let client = RedisClient::connect(&settings, metrics).await.unwrap();
    assert_eq!(ping(&client).await.unwrap(), "PONG");
    assert!(!format!("{client:?}").contains("s3cret"));

    // A wrong password: connect() still succeeds (a running keygate must start), the
    // breaker stays open, and nothing shows the password.
    std::fs::write(&file, "wrong-pw").unwrap();
    let metrics = Arc::new(Metrics::new());
    let client = RedisClient::connect(&settings, metrics.clone()).await.unwrap();
    assert!(!client.is_up());
    assert_eq!(store_up(&metrics), 0);
    let err = ping(&client).await.unwrap_err();
    assert!(!err.to_string().contains("wrong-pw"));

    // An unreadable password file is a configuration error.
    let missing = settings::Redis { password_file: Some(dir.path().join("missing")), ..settings.clone() };
    let err = RedisClient::connect(&missing, Arc::new(Metrics::new())).await.unwrap_err();
    assert!(err.to_string().contains("password_file"), "{err}");
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let server = RedisServer::start_tls();
    let ca = server.tls_ca().expect("a TLS server has a CA");
    let settings = settings::Redis {
        ca_file: Some(ca),
        timeout: Duration::from_secs(1),
        ..redis_settings(&format!("rediss://127.0.0.1:{}", server.tls_port().unwrap()), TIMEOUT)
    };
    let client = RedisClient::connect(&settings, Arc::new(Metrics::new())).await.unwrap();
    assert!(client.is_up());
    assert_eq!(ping(&client).await.unwrap(), "PONG");

    // Without the CA, the server's certificate is not trusted: no connection.
    let untrusted = settings::Redis { ca_file: None, ..settings };
    let client = RedisClient::connect(&untrusted, Arc::new(Metrics::new())).await.unwrap();
    assert!(!client.is_up());
}

#[tokio::test]
async fn relay_counts_round_trips_not_script_internals() {
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    let (client, _metrics) = client(&relay.url(), RELAXED).await;
    assert_eq!(ping(&client).await.unwrap(), "PONG");

    relay.reset();
    let (pong, n): (String, i64) = client
        .run(StoreOp::Write, |mut c| async move {
            redis::pipe().cmd("SET").arg("a").arg(1).ignore().cmd("PING").cmd("INCR").arg("a").query_async(&mut c).await
        })
        .await
        .unwrap();
    assert_eq!((pong.as_str(), n), ("PONG", 2));
    assert_eq!(relay.commands(), 3, "a pipeline of 3 commands counts 3");

    let five = "redis.call('SET', KEYS[1], 0) for i = 1, 4 do redis.call('INCR', KEYS[1]) end return redis.call('GET', KEYS[1])";
    relay.reset();
    let n: i64 = client
        .run(
            StoreOp::Limit,
            |mut c| async move { redis::cmd("EVAL").arg(five).arg(1).arg("e").query_async(&mut c).await },
        )
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(relay.commands(), 1, "an EVAL running 5 commands counts 1");

    // Script::invoke_async: EVALSHA, then on NOSCRIPT, SCRIPT LOAD + EVALSHA; then 1.
    let script = redis::Script::new(five);
    let invoke = |client: RedisClient, script: redis::Script| async move {
        client
            .run(StoreOp::Limit, |mut c| async move { script.key("e").invoke_async::<i64>(&mut c).await })
            .await
            .unwrap()
    };
    server.cli(&["SCRIPT", "FLUSH"]); // the EVAL above cached this very script
    relay.reset();
    assert_eq!(invoke(client.clone(), script.clone()).await, 4);
    assert_eq!(relay.commands(), 3, "first use: EVALSHA, SCRIPT LOAD, EVALSHA");
    relay.reset();
    assert_eq!(invoke(client.clone(), script.clone()).await, 4);
    assert_eq!(relay.commands(), 1, "cached: one EVALSHA");
}

#[tokio::test]
async fn relay_counts_a_pipeline_of_three_split_across_reads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let bytes = b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    // Byte by byte: the parser must carry partial commands across reads.
    for b in bytes {
        stream.write_all(&[*b]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let expected = b"+PONG\r\n$5\r\nhello\r\n+OK\r\n";
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, expected);
    assert_eq!(relay.commands(), 3);
}

/// `rediss+cluster://` with a private CA: the client verifies every node it is sent to
/// (the cluster names its TLS ports to a TLS client), routes keys to all three masters,
/// and runs scripts on the right one; without the CA no node is trusted.
#[tokio::test]
async fn tls_cluster_with_a_private_ca() {
    let cluster = RedisCluster::start_tls();
    let ca = cluster.nodes[0].tls_ca().expect("a TLS cluster has a CA");
    let settings = settings::Redis {
        ca_file: Some(ca),
        timeout: Duration::from_secs(1),
        ..redis_settings(&cluster.tls_url(), TIMEOUT)
    };
    let client = RedisClient::connect(&settings, Arc::new(Metrics::new())).await.unwrap();
    assert!(client.is_cluster());
    assert!(client.wait_up(Duration::from_secs(5)).await, "connected over TLS");
    let timeout = Duration::from_secs(2);
    set_and_get_on_every_node(&client, &cluster).await;
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    for tenant in ["a", "b", "c", "d", "e", "f"] {
        let script = script.clone();
        let n: i64 = client
            .run_with_timeout(StoreOp::Limit, timeout, |mut c| async move {
                script.key(format!("{{{tenant}}}:n")).arg(2).invoke_async(&mut c).await
            })
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    let untrusted = settings::Redis { ca_file: None, ..settings };
    let client = RedisClient::connect(&untrusted, Arc::new(Metrics::new())).await.unwrap();
    assert!(!client.wait_up(Duration::from_secs(1)).await, "a cluster whose CA is not trusted is not up");
}
