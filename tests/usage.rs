//! Usage per tenant and key per UTC day (docs/reference.md §7), through a real keygate
//! and a real upstream: what the usage says equals what the upstream received, with the
//! embedded store and with Redis; the CLI's JSON and CSV and the admin API say the same;
//! a day boundary on an injected clock, the retention, a graceful shutdown and a Redis
//! outage lose nothing.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keygate::clock::{Clock, ManualClock};
use serde_json::Value;
use support::redis::*;
use support::*;

/// A plan with a sliding window and a monthly quota of 12; two routes, of cost 1 and 3.
const ROUTES: &str = r#"
default = "deny"

[scopes]
"calls:read" = "View calls"
"webhooks:manage" = "Manage webhooks"

[plans.metered]
limits = [
  { name = "minute", requests = 1000, window = "60s" },
  { name = "month", requests = 12, period = "month" },
]

[upstreams.app]
url = "{upstream}"

[[routes]]
prefix = "/v1/calls"
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/v1/webhooks"
scopes = ["webhooks:manage"]
upstream = "app"
cost = 3

[[routes]]
prefix = "/status"
auth = "none"
upstream = "app"
"#;

const TOKEN: &str = "usage-test-admin-token-0c5e1b7d";

/// The `[admin]` lines that turn the admin API on.
fn api_lines(dir: &std::path::Path) -> String {
    let path = dir.join("admin-token");
    std::fs::write(&path, TOKEN).unwrap();
    format!("api_address = \"127.0.0.1:0\"\ntoken_file = \"{}\"", path.display())
}

fn routes(upstream: &Upstream) -> String {
    ROUTES.replace("{upstream}", &upstream.url())
}

/// The traffic of every test: key A (both scopes) and key B (calls only) of tenant
/// `acme`. 8 admitted requests of cost 12 (A: 6 of 10, B: 2 of 2), one refused
/// `forbidden` (B on webhooks), one `rate_limited` (A past the monthly 12), and requests
/// of no tenant (no key, an unknown key, a public route) that are no one's usage.
async fn drive(kg: &Keygate, a: &str, b: &str) {
    let http = Http::new();
    let get = async |path: &str, key: Option<&str>| http.get(&kg.url(path), key).await.status;
    for _ in 0..3 {
        assert_eq!(get("/v1/calls", Some(a)).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get("/v1/webhooks", Some(a)).await, 200);
        assert_eq!(get("/v1/calls", Some(b)).await, 200);
    }
    assert_eq!(get("/v1/webhooks", Some(b)).await, 403);
    assert_eq!(get("/v1/calls", Some(a)).await, 200);
    assert_eq!(get("/v1/calls", Some(a)).await, 429, "the month's 12 are spent");
    assert_eq!(get("/v1/calls", None).await, 401);
    assert_eq!(get("/v1/calls", Some("kg_notarealkeyatall")).await, 401);
    assert_eq!(get("/status", None).await, 200);
}

/// Requests and cost the upstream received per key id (`x-keygate-key-id`).
fn received(upstream: &Upstream, key_id: &str) -> (u64, u64) {
    let mine: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.headers.get("x-keygate-key-id").is_some_and(|v| v == key_id))
        .collect();
    let cost = mine.iter().map(|s| if s.target.starts_with("/v1/webhooks") { 3 } else { 1 }).sum();
    (mine.len() as u64, cost)
}

/// Checks a usage JSON answer (CLI `--json` or the admin API) against the upstream.
fn check_against_upstream(report: &Value, upstream: &Upstream, a_id: &str, b_id: &str) {
    let (a_requests, a_cost) = received(upstream, a_id);
    let (b_requests, b_cost) = received(upstream, b_id);
    assert_eq!((a_requests, a_cost, b_requests, b_cost), (6, 10, 2, 2), "the traffic went as planned");
    let total = &report["total"];
    assert_eq!(total["requests"], a_requests + b_requests, "{report}");
    assert_eq!(total["cost"], a_cost + b_cost, "{report}");
    assert_eq!(total["refused"]["forbidden"], 1, "{report}");
    assert_eq!(total["refused"]["rate_limited"], 1, "{report}");
    assert_eq!(total["refused_total"], 2, "{report}");
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{report}");
    let keys = &days[0]["keys"];
    assert_eq!((keys[a_id]["requests"].as_u64(), keys[a_id]["cost"].as_u64()), (Some(a_requests), Some(a_cost)));
    assert_eq!((keys[b_id]["requests"].as_u64(), keys[b_id]["cost"].as_u64()), (Some(b_requests), Some(b_cost)));
    assert_eq!(keys[a_id]["refused"]["rate_limited"], 1);
    assert_eq!(keys[b_id]["refused"]["forbidden"], 1);
    assert_eq!(keys.as_object().unwrap().len(), 2, "no other key, and no keyless request: {report}");
}

/// keygate with the embedded store and the admin API on (the token's folder lives as long
/// as the test keeps it).
async fn with_the_admin_api(upstream: &Upstream) -> (Keygate, tempfile::TempDir) {
    let token_dir = tempfile::tempdir().unwrap();
    let kg =
        Keygate::builder(&upstream.url()).routes(&routes(upstream)).admin(&api_lines(token_dir.path())).start().await;
    (kg, token_dir)
}

/// The admin API's usage answer.
async fn api_usage(kg: &Keygate, query: &str) -> Answer {
    let url = format!("http://{}/admin/v1/usage?{query}", kg.api.expect("the admin API is on"));
    Http::new().send("GET", &url, &[("authorization", &format!("Bearer {TOKEN}"))], Default::default()).await
}

/// Waits until the admin API reports `requests` admitted for `acme` in `query`'s range.
async fn wait_for_flush(kg: &Keygate, query: &str, requests: u64) -> Value {
    let mut last = Value::Null;
    let flushed = eventually(Duration::from_secs(10), async || {
        let answer = api_usage(kg, query).await;
        last = answer.json();
        answer.status == 200 && last["total"]["requests"] == requests
    })
    .await;
    assert!(flushed, "the usage was not written within 10 s: {last}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_file_store_usage_equals_what_the_upstream_received() {
    let upstream = upstream().await;
    let (kg, _token_dir) = with_the_admin_api(&upstream).await;
    let (a_id, a) = kg.key("acme", "metered", &["calls:read", "webhooks:manage"]);
    let (b_id, b) = kg.key("acme", "metered", &["calls:read"]);
    drive(&kg, a.expose(), b.expose()).await;

    let report = wait_for_flush(&kg, "tenant=acme", 8).await;
    check_against_upstream(&report, &upstream, &a_id, &b_id);
    // The local limiter's quota, as the running process holds it.
    assert_eq!(report["quotas"][0]["name"], "month");
    assert_eq!((report["quotas"][0]["count"].as_u64(), report["quotas"][0]["limit"].as_u64()), (Some(12), Some(12)));
    assert!(report["quotas_unavailable"].is_null());
    let today = report["to"].as_str().unwrap().to_string();
    assert!(kg.dir.path().join(format!("usage/{today}.json")).is_file(), "beside the keys file");

    // One key's share.
    let mine = api_usage(&kg, &format!("tenant=acme&key={b_id}&from={today}&to={today}")).await.json();
    assert_eq!(
        (mine["total"]["requests"].as_u64(), mine["total"]["refused"]["forbidden"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(mine["days"][0]["keys"].as_object().unwrap().len(), 1);

    // The CLI reads the same store: JSON, CSV and the table.
    let config = kg.config_path();
    let (code, out, err) = cli(&config, &["usage", "--tenant", "acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    check_against_upstream(&json, &upstream, &a_id, &b_id);
    assert_eq!(json["quotas"], serde_json::json!([]));
    assert!(json["quotas_unavailable"].as_str().unwrap().contains("not available offline"), "{json}");
    let (code, csv, err) = cli(&config, &["usage", "--tenant", "acme", "--from", &today, "--to", &today, "--csv"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "date,key,requests,cost,refused,refused_forbidden,refused_rate_limited");
    assert_eq!(lines[1], format!("{today},,8,12,2,1,1"));
    let (code, table, err) = cli(&config, &["usage", "--tenant", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("Usage of tenant acme") && table.contains(&a_id), "{table}");

    // Bad input is refused, with a one-line reason.
    let (code, _, err) = cli(&config, &["usage", "--tenant", "acme", "--from", "2026-02-30"]);
    assert_eq!(code, 1);
    assert!(err.contains("YYYY-MM-DD"), "{err}");
    let answer = api_usage(&kg, "tenant=acme&from=2026-12-05&to=2026-12-01").await;
    assert_eq!((answer.status, answer.json()["error"]["code"].as_str()), (400, Some("invalid_range")));
    let answer = api_usage(&kg, "from=2026-12-01").await;
    assert_eq!((answer.status, answer.json()["error"]["code"].as_str()), (400, Some("missing_parameter")));
    let answer = api_usage(&kg, "tenant=acme&tenants=x").await;
    assert_eq!(answer.status, 400);
    let url = format!("http://{}/admin/v1/usage?tenant=acme", kg.api.unwrap());
    assert_eq!(Http::new().get(&url, None).await.status, 401, "the token is needed");
    let metrics = metrics_text(kg.admin).await;
    assert!(metric(&metrics, "keygate_usage_flushes_total", &[("result", "success")]).unwrap() >= 1.0);
    assert_eq!(metric(&metrics, "keygate_usage_flushes_total", &[("result", "failure")]), Some(0.0));
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_quota_is_the_one_its_usage_reports() {
    let upstream = upstream().await;
    let (kg, _token_dir) = with_the_admin_api(&upstream).await;
    let (_, a) = kg.key("acme", "metered", &["calls:read"]);
    let (code, _, err) = cli(&kg.config_path(), &["tenants", "set-limits", "acme", "--limit", "month=20/month"]);
    assert_eq!(code, 0, "{err}");
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(a.expose())).await.status, 200);
    }
    // The tenant's `month` replaces the plan's 12, in the report as in its admissions.
    let mut last = Value::Null;
    let shown = eventually(Duration::from_secs(10), async || {
        last = api_usage(&kg, "tenant=acme").await.json();
        last["quotas"][0]["limit"] == 20
    })
    .await;
    assert!(shown, "the tenant's own quota is not reported: {last}");
    assert_eq!((last["quotas"][0]["name"].as_str(), last["quotas"][0]["count"].as_u64()), (Some("month"), Some(3)));
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_land_on_the_utc_day_of_the_injected_clock_and_a_shutdown_flushes() {
    let upstream = upstream().await;
    // 2026-12-31T23:59:59Z.
    let clock = Arc::new(ManualClock::new(1_798_761_599_000));
    let token_dir = tempfile::tempdir().unwrap();
    let kg = Keygate::builder(&upstream.url())
        .routes(&routes(&upstream))
        .admin(&api_lines(token_dir.path()))
        .clock(clock.clone())
        .start()
        .await;
    let (_, a) = kg.key("acme", "metered", &["calls:read", "webhooks:manage"]);
    let http = Http::new();
    for _ in 0..2 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(a.expose())).await.status, 200);
    }
    clock.advance(Duration::from_secs(1));
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/webhooks"), Some(a.expose())).await.status, 200);
    }
    // The default range is this month to today, on the keygate's clock.
    let report = wait_for_flush(&kg, "tenant=acme", 3).await;
    assert_eq!((report["from"].as_str(), report["to"].as_str()), (Some("2027-01-01"), Some("2027-01-01")));
    let report = wait_for_flush(&kg, "tenant=acme&from=2026-12-31&to=2027-01-01", 5).await;
    let days = report["days"].as_array().unwrap();
    assert_eq!((days[0]["date"].as_str(), days[0]["cost"].as_u64()), (Some("2026-12-31"), Some(2)));
    assert_eq!((days[1]["date"].as_str(), days[1]["cost"].as_u64()), (Some("2027-01-01"), Some(9)));
    assert_eq!(report["quotas"][0]["count"], 9, "the new month's quota counts the new month only");

    // Requests answered right before a graceful shutdown are written by it.
    for _ in 0..3 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(a.expose())).await.status, 200);
    }
    let dir = kg.stop_keep_dir().await;
    let file: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("usage/2027-01-01.json")).unwrap()).unwrap();
    assert_eq!(file["acme"]["total"]["requests"], 6, "{file}");
}

/// Replicas' settings: keys and limits in Redis.
const SHARED: &str = "[limits]\nbackend = \"redis\"\non_store_error = \"local\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_usage_equals_what_the_upstream_received_and_expires_after_the_retention() {
    let redis = RedisServer::start();
    let upstream = upstream().await;
    let token_dir = tempfile::tempdir().unwrap();
    let kg = Keygate::builder(&upstream.url())
        .routes(&routes(&upstream))
        .redis_keys(&redis.url(), "1s")
        .settings(SHARED)
        .admin(&api_lines(token_dir.path()))
        .start()
        .await;
    let (a_id, a) = kg.store_key("acme", "metered", &["calls:read", "webhooks:manage"]).await;
    let (b_id, b) = kg.store_key("acme", "metered", &["calls:read"]).await;
    drive(&kg, a.expose(), b.expose()).await;

    let report = wait_for_flush(&kg, "tenant=acme", 8).await;
    check_against_upstream(&report, &upstream, &a_id, &b_id);
    assert_eq!(report["quotas"][0]["count"], 12, "the Redis limiter's quota: {report}");
    let today = report["to"].as_str().unwrap().to_string();
    let key = format!("kg:us:{{acme}}:{today}");
    let ttl: i64 = redis.cli(&["TTL", &key]).trim().parse().unwrap();
    assert!(ttl > 90 * 86_400 && ttl <= 100 * 86_400, "kept 100 days: TTL {ttl}");
    assert_eq!(redis.cli(&["HGET", &key, "c"]).trim(), "12");
    assert_eq!(redis.cli(&["HGET", &key, &format!("{b_id}:x:forbidden")]).trim(), "1");

    // The CLI, on the same config, reads Redis, quotas included.
    let (code, out, err) = cli(&kg.config_path(), &["usage", "--tenant", "acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    check_against_upstream(&json, &upstream, &a_id, &b_id);
    assert_eq!(json["quotas"][0]["count"], 12, "{json}");
    let (code, table, _) = cli(&kg.config_path(), &["usage", "--tenant", "acme"]);
    assert_eq!(code, 0);
    assert!(table.contains("month: 12 of 12"), "{table}");

    // Memory per tenant and day: a tenant with 5 keys and one with 100, each key with
    // admitted requests and two refusal reasons.
    let usage = kg.app().usage().unwrap().clone();
    for (tenant, keys) in [("five", 5), ("hundred", 100)] {
        for k in 0..keys {
            let id = format!("key_{k:022}");
            usage.record(tenant, &id, keygate::usage::Outcome::Admitted { cost: 1 });
            usage.record(tenant, &id, keygate::usage::Outcome::Refused("rate_limited"));
            usage.record(tenant, &id, keygate::usage::Outcome::Refused("forbidden"));
        }
    }
    usage.flush_now().await.unwrap();
    for (tenant, bound) in [("five", 1_500), ("hundred", 24_000)] {
        let bytes: u64 =
            redis.cli(&["MEMORY", "USAGE", &format!("kg:us:{{{tenant}}}:{today}")]).trim().parse().unwrap();
        eprintln!("MEMORY USAGE of a day of tenant {tenant}: {bytes} bytes");
        assert!(bytes <= bound, "{tenant}: {bytes} bytes");
    }
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_buffered_while_redis_is_down_are_written_once_it_is_back() {
    let mut redis = RedisServer::start();
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url())
        .routes(&routes(&upstream))
        .redis_keys(&redis.url(), "200ms")
        .settings(SHARED)
        .start()
        .await;
    let (_, a) = kg.store_key("acme", "metered", &["calls:read"]).await;
    let http = Http::new();
    // The key is cached, and its first request written.
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(a.expose())).await.status, 200);
    let usage = kg.app().usage().unwrap().clone();
    let today = keygate::usage::store::date_string(keygate::usage::day_of(usage.now_millis()));
    let key = format!("kg:us:{{acme}}:{today}");
    let written = eventually(Duration::from_secs(10), async || redis.cli(&["HGET", &key, "n"]).trim() == "1").await;
    assert!(written, "the first request's usage was not written");

    redis.kill();
    // Served from the key cache and the local fallback while Redis is away.
    for _ in 0..5 {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(a.expose())).await.status, 200);
    }
    let failed = eventually(Duration::from_secs(10), async || {
        let text = metrics_text(kg.admin).await;
        metric(&text, "keygate_usage_flushes_total", &[("result", "failure")]).unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(failed, "the flusher did not try (and fail) while Redis was down");
    let text = metrics_text(kg.admin).await;
    assert!(metric(&text, "keygate_usage_flush_lag_seconds", &[]).unwrap() > 0.0, "the lag shows");

    // A new, empty Redis: exactly what was buffered arrives, nothing lost, nothing twice.
    redis.restart();
    let arrived = eventually(Duration::from_secs(15), async || redis.cli(&["HGET", &key, "n"]).trim() == "5").await;
    assert!(arrived, "the buffered usage was not written after Redis came back: {}", redis.cli(&["HGETALL", &key]));
    assert_eq!(redis.cli(&["HGET", &key, "c"]).trim(), "5");
    let settled = eventually(Duration::from_secs(5), async || {
        metric(&metrics_text(kg.admin).await, "keygate_usage_flush_lag_seconds", &[]) == Some(0.0)
    })
    .await;
    assert!(settled, "the lag went back to 0");
    kg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_each_tenant_is_written_and_read_on_its_own_slot() {
    let cluster = RedisCluster::start();
    let (client, _) = client(&cluster.url(), Duration::from_secs(2)).await;
    assert!(client.wait_up(Duration::from_secs(10)).await, "the cluster answers");
    let clock = Arc::new(ManualClock::new(1_798_761_599_000));
    let usage = keygate::usage::Usage::new(
        keygate::usage::UsageStore::Redis(client),
        clock.clone(),
        Arc::new(keygate::metrics::Metrics::new()),
    );
    // Enough tenants that their slots land on every node.
    let tenants: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    for (i, tenant) in tenants.iter().enumerate() {
        for _ in 0..=i {
            usage.record(tenant, "key_a", keygate::usage::Outcome::Admitted { cost: 2 });
        }
        usage.record(tenant, "key_b", keygate::usage::Outcome::Refused("rate_limited"));
    }
    usage.flush_now().await.unwrap();
    let day = keygate::usage::day_of(clock.now_millis());
    for (i, tenant) in tenants.iter().enumerate() {
        let days = usage.store().read(tenant, day - 1, day).await.unwrap();
        assert_eq!(days.len(), 1, "{tenant}");
        let counts = &days[0].1;
        assert_eq!((counts.total.requests, counts.total.cost), (i as u64 + 1, 2 * (i as u64 + 1)), "{tenant}");
        assert_eq!(counts.keys["key_b"].refused.get("rate_limited"), Some(&1), "{tenant}");
    }
}
