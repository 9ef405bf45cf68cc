//! The shared Redis client against real servers: timeouts, the circuit breaker,
//! recovery, cluster, auth; and the test harness itself.

mod support;

use std::time::Duration;

use support::redis::*;

#[test]
fn harness_server_pause_kill_restart() {
    let mut server = RedisServer::start();
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");
    server.cli(&["SET", "a", "1"]);
    server.pause();
    server.resume();
    assert_eq!(server.cli(&["GET", "a"]).trim(), "1");
    server.kill();
    server.restart();
    assert_eq!(server.cli(&["GET", "a"]).trim(), "", "a restarted server is empty");
    let _ = Duration::from_secs(1);
}

#[test]
fn harness_cluster_starts() {
    let cluster = RedisCluster::start();
    assert!(cluster.nodes[0].cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
}

#[tokio::test]
async fn harness_relay_counts_commands() {
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    let port = relay.addr.port().to_string();
    let out = std::process::Command::new("redis-cli").args(["-p", &port, "PING"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    assert!(relay.commands() >= 1);
}
