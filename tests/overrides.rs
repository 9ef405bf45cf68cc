//! Limit overrides of a tenant and of a key (docs/reference.md §1, §4.4, §5.2): set with
//! the CLI and the admin API on both stores, shown as effective limits with their
//! sources, applied by the proxy within a second (across replicas on one Redis), without
//! resetting what was counted; `--clear`, and bad input refused.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::*;

const TOKEN: &str = "test-admin-token-0c5e8a1f7d2b4c69";

/// A plan of two limits (a minute of 3, a month of 1,000) and a legacy plan.
const ROUTES: &str = r#"
default = "deny"

[scopes]
"calls:read" = "View calls"

[plans.metered]
limits = [
  { name = "minute", requests = 3, window = "60s" },
  { name = "month", requests = 1000, period = "month" },
]

[plans.legacy]
requests = 3
window = "60s"

[upstreams.app]
url = "{upstream}"

[[routes]]
prefix = "/v1/calls"
scopes = ["calls:read"]
upstream = "app"
"#;

fn routes(upstream: &Upstream) -> String {
    ROUTES.replace("{upstream}", &upstream.url())
}

/// The admin API of a running keygate, with its token.
struct Api {
    addr: SocketAddr,
    http: Http,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let bearer = format!("Bearer {TOKEN}");
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let url = format!("http://{}{path}", self.addr);
        self.http.send(method, &url, &[("authorization", &bearer), ("content-type", "application/json")], body).await
    }
}

/// `[admin]` lines turning the API on, the token in `dir`.
fn api_lines(dir: &Path) -> String {
    let path = dir.join("admin-token");
    std::fs::write(&path, TOKEN).unwrap();
    format!("api_address = \"127.0.0.1:0\"\ntoken_file = \"{}\"", path.display())
}

fn api_of(kg: &Keygate) -> Api {
    Api { addr: kg.api.expect("the admin API is on"), http: Http::new() }
}

fn run(config: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(config, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn run_json(config: &Path, args: &[&str]) -> Value {
    let out = run(config, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `(name, requests, source)` of each effective limit in a limits view.
fn limits(view: &Value) -> Vec<(String, u64, String)> {
    view["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("no limits: {view}"))
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["requests"].as_u64().unwrap(),
                l["source"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn l(name: &str, requests: u64, source: &str) -> (String, u64, String) {
    (name.to_string(), requests, source.to_string())
}

/// Creates a tenant and `n` keys with the CLI; returns the keys' (id, secret).
fn tenant_with_keys(config: &Path, tenant: &str, plan: &str, n: usize) -> Vec<(String, String)> {
    run(config, &["tenants", "create", tenant, "--plan", plan]);
    (0..n)
        .map(|i| {
            let key = run_json(
                config,
                &["keys", "create", "--tenant", tenant, "--name", &format!("k{i}"), "--scopes", "calls:read", "--json"],
            );
            (key["id"].as_str().unwrap().to_string(), key["key"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The first request of `secret` admitted within `deadline` (refusals count nothing, so
/// polling with requests changes no count).
async fn admitted_within(http: &Http, url: &str, secret: &str, deadline: Duration) -> Option<Answer> {
    let mut admitted = None;
    eventually(deadline, async || {
        let answer = http.get(url, Some(secret)).await;
        let ok = answer.status == 200;
        if ok {
            admitted = Some(answer);
        }
        ok
    })
    .await;
    admitted
}

/// With the file store and the local limiter: a tenant override raising a limit admits
/// more and keeps what was counted (admitted 3 under 3, raised to 5: the next request is
/// the 4th counted); a key override; the CLI's and the API's views agree and name each
/// limit's source; `--clear` and `DELETE` restore the plan; bad input is refused.
#[tokio::test]
async fn overrides_over_the_file_store() {
    let upstream = upstream().await;
    let token_dir = tempfile::tempdir().unwrap();
    let kg =
        Keygate::builder(&upstream.url()).routes(&routes(&upstream)).admin(&api_lines(token_dir.path())).start().await;
    let config = kg.config_path();
    let api = api_of(&kg);
    let keys = tenant_with_keys(&config, "acme", "metered", 2);
    let ((k1, s1), (k2, s2)) = (keys[0].clone(), keys[1].clone());
    let http = Http::new();
    let url = kg.url("/v1/calls");

    assert!(admitted_within(&http, &url, &s1, Duration::from_secs(2)).await.is_some(), "the key works");
    for _ in 0..2 {
        assert_eq!(http.get(&url, Some(&s1)).await.status, 200);
    }
    let refused = http.get(&url, Some(&s1)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["limit"], "minute");

    // Raised to 5 for the tenant, with a concurrency of its own.
    let view = run_json(
        &config,
        &["tenants", "set-limits", "acme", "--limit", "minute=5/60s", "--concurrency", "20", "--json"],
    );
    assert_eq!(limits(&view), [l("minute", 5, "tenant"), l("month", 1000, "plan")]);
    assert_eq!(view["concurrency"], json!({"value": 20, "source": "tenant"}));
    assert_eq!(
        view["overrides"]["tenant"],
        json!({"limits": [{"name": "minute", "requests": 5, "window": "1m"}], "concurrency": 20})
    );
    let shown = api.call("GET", "/admin/v1/tenants/acme/limits", None).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json(), run_json(&config, &["tenants", "limits", "acme", "--json"]));
    assert_eq!(shown.json(), view);
    let text = run(&config, &["tenants", "limits", "acme"]);
    assert!(
        text.contains("minute: 5 per 1m (sliding)  [tenant]") && text.contains("concurrency: 20  [tenant]"),
        "{text}"
    );

    // The proxy applies it within a second, and the three admitted still count.
    let next =
        admitted_within(&http, &url, &s1, Duration::from_secs(1)).await.expect("admitted under the raised limit");
    assert_eq!(next.header("x-ratelimit-remaining"), "1", "the 4th of 5 counted, not the 1st");
    assert_eq!(next.header("x-ratelimit-limit"), "5");
    assert!(
        next.header("ratelimit-policy").starts_with("\"minute\";q=5;w=60, \"month\";q=1000;w="),
        "{}",
        next.header("ratelimit-policy")
    );
    assert_eq!(http.get(&url, Some(&s2)).await.status, 200, "the tenant's other key: the 5th");
    let refused = http.get(&url, Some(&s1)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["limit"], "minute");

    // A key's override, through the API: that key is checked against its own number.
    let put = api
        .call(
            "PUT",
            &format!("/admin/v1/keys/{k2}/limits"),
            Some(r#"{"limits":[{"name":"minute","requests":7,"window":"60s"}]}"#),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(limits(&put.json()), [l("minute", 7, "key"), l("month", 1000, "plan")]);
    assert_eq!(put.json()["key"], k2.as_str());
    assert_eq!(put.json()["concurrency"], json!({"value": 20, "source": "tenant"}));
    assert_eq!(put.json(), run_json(&config, &["keys", "limits", &k2, "--json"]));
    // That key's `minute` is its own counter, fresh: 7 requests of its own, then 429.
    let k2_next = admitted_within(&http, &url, &s2, Duration::from_secs(1)).await.expect("the key's own limit");
    assert_eq!(k2_next.header("x-ratelimit-limit"), "7");
    assert_eq!(k2_next.header("x-ratelimit-remaining"), "6");
    for left in (0..6).rev() {
        let answer = http.get(&url, Some(&s2)).await;
        assert_eq!((answer.status, answer.header("x-ratelimit-remaining")), (200, left.to_string().as_str()));
    }
    let refused = http.get(&url, Some(&s2)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["limit"], "minute");
    assert_eq!(refused.header("x-ratelimit-limit"), "7");
    assert_eq!(http.get(&url, Some(&s1)).await.status, 429, "the tenant's other key keeps the tenant's 5");

    // A rotation's new key keeps the old one's overrides.
    let rotated = run_json(&config, &["keys", "rotate", &k2, "--json"]);
    let rotated_view = run_json(&config, &["keys", "limits", rotated["id"].as_str().unwrap(), "--json"]);
    assert_eq!(limits(&rotated_view), [l("minute", 7, "key"), l("month", 1000, "plan")]);

    // Bad input: refused, nothing changed.
    let (code, _, err) = cli(&config, &["tenants", "set-limits", "acme", "--limit", "minute=lots/60s"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a whole number"), "{err}");
    let (code, _, err) = cli(&config, &["tenants", "set-limits", "acme", "--limit", "per-minute=9/60s"]);
    assert_ne!(code, 0);
    assert!(err.contains("name it `minute`"), "{err}");
    let (code, _, err) = cli(&config, &["keys", "set-limits", &k1, "--limit", "m=9/month@32"]);
    assert_ne!(code, 0);
    assert!(err.contains("1 to 31"), "{err}");
    let (code, _, err) = cli(&config, &["tenants", "set-limits", "acme"]);
    assert_ne!(code, 0);
    assert!(err.contains("--clear"), "{err}");
    let zero = api
        .call(
            "PUT",
            "/admin/v1/tenants/acme/limits",
            Some(r#"{"limits":[{"name":"minute","requests":0,"window":"60s"}]}"#),
        )
        .await;
    assert_eq!(zero.status, 422, "{}", zero.text());
    assert_eq!(zero.json()["error"]["code"], "invalid_limits");
    let unknown_field = api.call("PUT", "/admin/v1/tenants/acme/limits", Some(r#"{"limit":[]}"#)).await;
    assert_eq!(unknown_field.status, 400);
    assert_eq!(api.call("PUT", "/admin/v1/tenants/nobody/limits", Some("{}")).await.status, 404);
    assert_eq!(api.call("GET", "/admin/v1/keys/key_unknown/limits", None).await.status, 404);
    assert_eq!(api.call("POST", "/admin/v1/tenants/acme/limits", Some("{}")).await.status, 405);
    assert_eq!(run_json(&config, &["tenants", "limits", "acme", "--json"]), view, "unchanged");

    // The key's seven did not count in the tenant's `minute` (still 5 of it): raised to
    // 6, the tenant's other key gets exactly one more.
    run(&config, &["tenants", "set-limits", "acme", "--limit", "minute=6/60s"]);
    let sixth = admitted_within(&http, &url, &s1, Duration::from_secs(1)).await.expect("raised to 6");
    assert_eq!(sixth.header("x-ratelimit-remaining"), "0");
    assert_eq!(http.get(&url, Some(&s1)).await.status, 429);

    // Cleared: the plan's limits again, everywhere.
    let cleared = run_json(&config, &["tenants", "set-limits", "acme", "--clear", "--json"]);
    assert_eq!(limits(&cleared), [l("minute", 3, "plan"), l("month", 1000, "plan")]);
    assert_eq!(cleared["concurrency"], Value::Null);
    let deleted = api.call("DELETE", &format!("/admin/v1/keys/{k2}/limits"), None).await;
    assert_eq!(limits(&deleted.json()), [l("minute", 3, "plan"), l("month", 1000, "plan")]);
    // Neither the tenant's record nor the key's carries overrides any more.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(kg.dir.path().join("keys.json")).unwrap()).unwrap();
    assert_eq!(file["tenants"]["acme"].get("overrides"), None, "{file}");
    assert_eq!(file["keys"][k2.as_str()]["id"], k2.as_str());
    assert_eq!(file["keys"][k2.as_str()].get("overrides"), None, "{file}");
    let refused = http.get(&url, Some(&s2)).await;
    let refused = if refused.status == 429 {
        refused
    } else {
        // The proxy may still have held the key's record for a moment.
        let mut last = refused;
        eventually(Duration::from_secs(1), async || {
            last = http.get(&url, Some(&s2)).await;
            last.status == 429
        })
        .await;
        last
    };
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-limit"), "3");
    kg.stop().await;
}

/// A legacy plan's one limit is `default`: an override of that name replaces it, and the
/// headers still name the plan, as they always did.
#[tokio::test]
async fn a_legacy_plans_limit_is_overridden_by_the_name_default() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).routes(&routes(&upstream)).start().await;
    let config = kg.config_path();
    let keys = tenant_with_keys(&config, "old", "legacy", 1);
    let view = run_json(&config, &["tenants", "set-limits", "old", "--limit", "default=4/60s", "--json"]);
    assert_eq!(limits(&view), [l("default", 4, "tenant")]);
    // `explain` lists the effective limits of the key.
    let (_, out, err) = cli(&config, &["explain", "GET", "/v1/calls", "--key-id", &keys[0].0]);
    assert!(out.contains("default: 4 requests per 1m (sliding window) (the tenant's override)"), "{out}{err}");
    let http = Http::new();
    let first = admitted_within(&http, &kg.url("/v1/calls"), &keys[0].1, Duration::from_secs(2)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(1), async || {
            http.get(&kg.url("/v1/calls"), Some(&keys[0].1)).await.header("ratelimit-policy") == "\"legacy\";q=4;w=60"
        })
        .await,
        "first: {}",
        first.header("ratelimit-policy")
    );
    kg.stop().await;
}

/// Two replicas on one real Redis (keys and limits shared): an override set with the CLI
/// reaches both within a second, the count survives it (admitted 3 under 3, raised to 5:
/// the next request, on the other replica, is the 4th), a key's override too, and the
/// window's Redis key holds no limit.
#[tokio::test]
async fn overrides_reach_every_replica_within_a_second() {
    let upstream = upstream().await;
    let redis = RedisServer::start();
    let token_dir = tempfile::tempdir().unwrap();
    let start = |api: bool| {
        let mut builder = Keygate::builder(&upstream.url())
            .routes(&routes(&upstream))
            .redis_keys(&redis.url(), "500ms")
            .settings("[limits]\nbackend = \"redis\"\non_store_error = \"deny\"");
        if api {
            builder = builder.admin(&api_lines(token_dir.path()));
        }
        builder.start()
    };
    let a = start(true).await;
    let b = start(false).await;
    let config = a.config_path();
    let keys = tenant_with_keys(&config, "acme", "metered", 2);
    let ((_, s1), (k2, s2)) = (keys[0].clone(), keys[1].clone());
    let http = Http::new();

    assert!(admitted_within(&http, &a.url("/v1/calls"), &s1, Duration::from_secs(2)).await.is_some());
    assert_eq!(http.get(&b.url("/v1/calls"), Some(&s1)).await.status, 200);
    assert_eq!(http.get(&a.url("/v1/calls"), Some(&s1)).await.status, 200);
    for kg in [&a, &b] {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&s1)).await.status, 429);
    }
    let windows = redis.cli(&["--scan", "--pattern", "kg:rl:*"]);
    assert_eq!(windows.trim(), "kg:rl:{acme}:60s", "keyed by the window, not the limit");

    let view = run_json(&config, &["tenants", "set-limits", "acme", "--limit", "minute=5/60s", "--json"]);
    assert_eq!(limits(&view), [l("minute", 5, "tenant"), l("month", 1000, "plan")]);
    let api = api_of(&a);
    assert_eq!(api.call("GET", "/admin/v1/tenants/acme/limits", None).await.json(), view);
    let next = admitted_within(&http, &b.url("/v1/calls"), &s1, Duration::from_secs(1))
        .await
        .expect("replica b applies the override within a second");
    assert_eq!(next.header("x-ratelimit-remaining"), "1", "the 4th of 5 counted, not the 1st");
    let fifth = admitted_within(&http, &a.url("/v1/calls"), &s2, Duration::from_secs(1))
        .await
        .expect("replica a applies the override within a second");
    assert_eq!(fifth.header("x-ratelimit-remaining"), "0");
    for kg in [&a, &b] {
        assert_eq!(http.get(&kg.url("/v1/calls"), Some(&s1)).await.status, 429);
    }

    // A key's override, through the API of replica a: replica b applies it within a second.
    let put = api
        .call(
            "PUT",
            &format!("/admin/v1/keys/{k2}/limits"),
            Some(r#"{"limits":[{"name":"minute","requests":6,"window":"60s"}],"concurrency":2}"#),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(limits(&put.json()), [l("minute", 6, "key"), l("month", 1000, "plan")]);
    assert_eq!(put.json()["concurrency"], json!({"value": 2, "source": "key"}));
    assert_eq!(put.json(), run_json(&config, &["keys", "limits", &k2, "--json"]));
    let sixth = admitted_within(&http, &b.url("/v1/calls"), &s2, Duration::from_secs(1))
        .await
        .expect("the key's override on replica b within a second");
    assert_eq!(sixth.header("x-ratelimit-limit"), "6");
    assert_eq!(sixth.header("x-ratelimit-remaining"), "5", "the key's own counter");
    // Exactly six across both replicas, counted on the tenant's slot in a key of its own.
    for (i, left) in (0..5).rev().enumerate() {
        let kg = if i % 2 == 0 { &a } else { &b };
        let answer = http.get(&kg.url("/v1/calls"), Some(&s2)).await;
        assert_eq!((answer.status, answer.header("x-ratelimit-remaining")), (200, left.to_string().as_str()));
    }
    for kg in [&a, &b] {
        let refused = http.get(&kg.url("/v1/calls"), Some(&s2)).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["error"]["limit"], "minute");
    }
    let mut windows: Vec<String> = redis.cli(&["--scan", "--pattern", "kg:rl:*"]).lines().map(str::to_string).collect();
    windows.sort();
    assert_eq!(windows, ["kg:rl:{acme}:60s".to_string(), format!("kg:rl:{{acme}}:key:{k2}:60s")]);

    // A rotation's new key keeps the old one's overrides.
    let rotated = run_json(&config, &["keys", "rotate", &k2, "--json"]);
    let new_id = rotated["id"].as_str().unwrap();
    let view = run_json(&config, &["keys", "limits", new_id, "--json"]);
    assert_eq!(limits(&view), [l("minute", 6, "key"), l("month", 1000, "plan")]);

    // Cleared: the stored records hold no overrides any more.
    run(&config, &["tenants", "set-limits", "acme", "--clear"]);
    run(&config, &["keys", "set-limits", &k2, "--clear"]);
    assert!(!redis.cli(&["HGETALL", "kg:{t:acme}:tenant"]).contains("limits"));
    let view = run_json(&config, &["keys", "limits", &k2, "--json"]);
    assert_eq!(limits(&view), [l("minute", 3, "plan"), l("month", 1000, "plan")]);
    a.stop().await;
    b.stop().await;
}

/// A key's own limit stays exact under concurrent load across two replicas on one Redis
/// (coalesced calls and leases included): at most its number admitted, all of it in the
/// end, and every admission also counted in the tenant's month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_own_limit_is_exact_across_replicas_under_load() {
    let upstream = upstream().await;
    let redis = RedisServer::start();
    let start = || {
        Keygate::builder(&upstream.url())
            .routes(&routes(&upstream))
            .redis_keys(&redis.url(), "1s")
            .settings("[limits]\nbackend = \"redis\"\non_store_error = \"deny\"")
            .start()
    };
    let replicas = [start().await, start().await];
    let config = replicas[0].config_path();
    let keys = tenant_with_keys(&config, "busy", "metered", 1);
    let (id, secret) = keys[0].clone();
    run(&config, &["keys", "set-limits", &id, "--limit", "minute=40/60s"]);
    let http = Http::new();
    let urls: Vec<String> = replicas.iter().map(|kg| kg.url("/v1/calls")).collect();
    for url in &urls {
        // The key's first request on each replica reads its record with the override.
        let first = admitted_within(&http, url, &secret, Duration::from_secs(2)).await.expect("admitted");
        assert_eq!(first.header("x-ratelimit-limit"), "40");
    }
    let before = upstream.count();

    let mut clients = Vec::new();
    for client in 0..8 {
        let (urls, secret, http) = (urls.clone(), secret.clone(), http.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..12 {
                statuses.push(http.get(&urls[(client + i) % 2], Some(&secret)).await.status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(upstream.count() - before, admitted);
    assert!(admitted <= 38, "{admitted} admitted beyond the key's 40 (2 went before)");
    assert!(admitted > 3, "the key's own limit, not the tenant's 3: {admitted}");

    // Units parked in leases come back when they end: in the end exactly 40 in all.
    let mut total = 2 + admitted;
    let mut i = 0;
    eventually(Duration::from_secs(8), async || {
        i += 1;
        if http.get(&urls[i % 2], Some(&secret)).await.status == 200 {
            total += 1;
        }
        total >= 40
    })
    .await;
    assert_eq!(total, 40);
    for url in &urls {
        assert_eq!(http.get(url, Some(&secret)).await.status, 429);
    }
    assert_eq!(upstream.count() - before + 2, 40);
    // The tenant's month counted every one of them, in its own key, once the units its
    // own leases still hold (each limit has a lease of its own, a quota's for up to a
    // second) are handed back.
    let mut month = String::new();
    let settled = eventually(Duration::from_secs(5), async || {
        month = redis.cli(&["HGET", "kg:rq:{busy}:month", "n"]).trim().to_string();
        month == "40"
    })
    .await;
    assert!(settled, "the month counted {month}, not the 40 admitted");
    for kg in replicas {
        kg.stop().await;
    }
}
