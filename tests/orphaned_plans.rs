//! Orphaned plans: a policy that drops a plan tenants are on is refused by `keygate check`
//! and by a hot reload (the old policy keeps serving; the failure is counted, shown in
//! `/readyz` and the reload gauge), naming the plan and how many tenants use it, unless
//! `--allow-orphaned-plans`; `keygate tenants set-plan --from OLD --to NEW` moves them, so
//! that a plan is renamed without a refused request. With the file store and with Redis;
//! the CLI through the real binary.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::redis::RedisServer;
use support::*;

/// The standard policy with plan `tiny` renamed `tiny-2025`.
fn renamed(up: &Upstream) -> String {
    let text = ROUTES.replace("{upstream}", &up.url());
    assert!(text.contains("[plans.tiny]\n"));
    text.replace("[plans.tiny]\n", "[plans.tiny-2025]\n")
}

/// The standard policy plus plan `tiny-2025` (a copy of `tiny`): the first step of a rename.
fn with_both(up: &Upstream) -> String {
    let text = ROUTES.replace("{upstream}", &up.url());
    format!("{text}\n[plans.tiny-2025]\nrequests = 3\nwindow = \"10s\"\n")
}

async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    metric(&metrics_text(admin).await, "keygate_config_reloads_total", &[("result", result)]).unwrap()
}

async fn reload_gauge(admin: SocketAddr) -> f64 {
    metric(&metrics_text(admin).await, "keygate_config_last_reload_successful", &[]).unwrap()
}

async fn readyz(admin: SocketAddr) -> serde_json::Value {
    Http::new().get(&format!("http://{admin}/readyz"), None).await.json()
}

fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    cli(config, args)
}

#[tokio::test]
async fn check_refuses_a_policy_that_drops_a_plan_tenants_are_on_and_set_plan_from_to_moves_them() {
    let up = upstream().await;
    let dir = Keygate::builder(&up.url()).write();
    let config = dir.path().join("keygate.toml");
    for (tenant, plan) in [("acme", "tiny"), ("beta", "tiny"), ("gamma", "pro")] {
        let (code, out, err) = run(&config, &["tenants", "create", tenant, "--plan", plan]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = run(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");

    std::fs::write(dir.path().join("routes.toml"), renamed(&up)).unwrap();
    let (code, out, err) = run(&config, &["check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("routes.toml") && out.contains("plan \"tiny\"") && out.contains("2 tenant(s)"), "{out}");
    assert!(out.contains("set-plan --from tiny"), "{out}");
    let (code, out, err) = run(&config, &["check", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["valid"], false, "{out}");
    let (code, out, err) = run(&config, &["check", "--allow-orphaned-plans"]);
    assert_eq!(code, 0, "{out}{err}");

    // The bulk move: every tenant of `tiny`, and only those.
    let (code, out, err) = run(&config, &["tenants", "set-plan", "--from", "tiny", "--to", "tiny-2025"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Moved 2 tenant(s) from plan tiny to plan tiny-2025"), "{out}");
    assert!(err.contains("tenant.set_plan"), "no audit line: {err}");
    let (code, out, _) = run(&config, &["tenants", "list", "--json"]);
    assert_eq!(code, 0);
    let tenants: serde_json::Value = serde_json::from_str(&out).unwrap();
    let plan_of = |id: &str| tenants.as_array().unwrap().iter().find(|t| t["id"] == id).unwrap()["plan"].clone();
    assert_eq!(
        (plan_of("acme"), plan_of("beta"), plan_of("gamma")),
        ("tiny-2025".into(), "tiny-2025".into(), "pro".into())
    );
    let (code, out, err) = run(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");

    // A target plan the policy lacks is refused; a second run has nothing left to move.
    let (code, _, err) = run(&config, &["tenants", "set-plan", "--from", "pro", "--to", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
    let (code, out, _) = run(&config, &["tenants", "set-plan", "--from", "tiny", "--to", "tiny-2025", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["moved"], serde_json::json!([]), "{out}");
    // The single form still works; mixing the forms does not.
    let (code, out, err) = run(&config, &["tenants", "set-plan", "gamma", "tiny-2025"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run(&config, &["tenants", "set-plan", "gamma", "pro", "--from", "tiny-2025", "--to", "pro"]);
    assert_ne!(code, 0);
}

#[tokio::test]
async fn a_reload_that_drops_a_plan_in_use_is_refused_until_its_tenants_move() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    let (_, secret) = kg.key("acme", "tiny", &["calls:read"]);
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status, 200);
    let serving = kg.app().policy().hash.clone();
    let failures = reloads(kg.admin, "failure").await;

    // Step 1 of a rename done wrong: the old plan removed while a tenant is on it.
    let text = renamed(&up);
    rename_over(&kg.routes_path(), &text);
    let refused = eventually(Duration::from_secs(15), async || reloads(kg.admin, "failure").await > failures).await;
    assert!(refused, "the reload was not refused");
    assert_eq!(kg.app().policy().hash, serving, "the policy was replaced");
    assert_eq!(reload_gauge(kg.admin).await, 0.0);
    let ready = readyz(kg.admin).await;
    let error = ready["policy"]["last_reload_error"].as_str().unwrap_or_default();
    assert!(error.contains("plan \"tiny\"") && error.contains("1 tenant(s)"), "{ready}");
    assert_eq!(ready["policy"]["serving_sha256"], serving.as_str(), "{ready}");
    assert_eq!(ready["policy"]["disk_sha256"], keygate::reload::content_hash(text.as_bytes()).as_str(), "{ready}");
    // The old policy keeps serving the tenant.
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status, 200);

    // The tenant moves (the real binary, on the same key file): the key file's change is
    // in the watched directory, so the reload is tried again and now goes through.
    let (code, out, err) = cli(&kg.config_path(), &["tenants", "set-plan", "--from", "tiny", "--to", "tiny-2025"]);
    assert_eq!(code, 0, "{out}{err}");
    let new_hash = keygate::reload::content_hash(text.as_bytes());
    let reloaded = eventually(Duration::from_secs(15), async || kg.app().policy().hash == new_hash).await;
    assert!(reloaded, "the reload was not tried again after the tenants moved: {}", readyz(kg.admin).await);
    assert_eq!(reload_gauge(kg.admin).await, 1.0);
    let moved = eventually(Duration::from_secs(15), async || {
        http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status == 200
    })
    .await;
    assert!(moved, "the tenant on the renamed plan is refused");
    kg.stop().await;
}

#[tokio::test]
async fn a_rename_in_three_steps_refuses_no_request() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    let (_, secret) = kg.key("acme", "tiny", &["calls:read"]);
    let failures = reloads(kg.admin, "failure").await;
    let ok = |status: u16| status == 200 || status == 429;

    // 1. Add the new plan beside the old one.
    let both = with_both(&up);
    rename_over(&kg.routes_path(), &both);
    let hash = keygate::reload::content_hash(both.as_bytes());
    assert!(eventually(Duration::from_secs(15), async || kg.app().policy().hash == hash).await);
    assert!(ok(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status));
    // 2. Move the tenants.
    let (code, out, err) = cli(&kg.config_path(), &["tenants", "set-plan", "--from", "tiny", "--to", "tiny-2025"]);
    assert_eq!(code, 0, "{out}{err}");
    // The proxy sees the key file's change within a second; meanwhile, either plan serves.
    let on_new = eventually(Duration::from_secs(15), async || {
        let answer = http.get(&kg.url("/v1/calls"), Some(secret.expose())).await;
        assert!(ok(answer.status), "{answer:?}");
        answer.headers.get("ratelimit-policy").is_some_and(|p| p.to_str().unwrap().contains("tiny-2025"))
    })
    .await;
    assert!(on_new, "the tenant is not on the new plan");
    // 3. Remove the old plan: nobody is on it, the reload goes through.
    let text = renamed(&up);
    rename_over(&kg.routes_path(), &text);
    let hash = keygate::reload::content_hash(text.as_bytes());
    assert!(eventually(Duration::from_secs(15), async || kg.app().policy().hash == hash).await);
    assert_eq!(reloads(kg.admin, "failure").await, failures, "a step of the rename was refused");
    assert!(ok(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status));
    kg.stop().await;
}

#[tokio::test]
async fn serve_allow_orphaned_plans_lets_the_reload_through() {
    let up = upstream().await;
    let builder = Keygate::builder(&up.url());
    let dir = builder.write();
    let (settings, _) = keygate::Settings::load(&dir.path().join("keygate.toml")).unwrap();
    let options =
        keygate::Options { polls: keygate::Polls::events_only(), allow_orphaned_plans: true, ..Default::default() };
    let running = keygate::start(settings, options).await.unwrap();
    let app = running.app.clone();
    let policy = app.policy();
    let store = app.keys().store();
    store.create_tenant(&policy, "acme", "tiny").await.unwrap();

    let text = renamed(&up);
    rename_over(&dir.path().join("routes.toml"), &text);
    let hash = keygate::reload::content_hash(text.as_bytes());
    assert!(eventually(Duration::from_secs(15), async || app.policy().hash == hash).await, "the reload was refused");
    assert_eq!(reload_gauge(running.admin_addr).await, 1.0);
    running.shutdown().await;
}

#[tokio::test]
async fn with_redis_the_reload_checks_the_stores_tenants_and_the_poll_retries_it() {
    let redis = RedisServer::start();
    let up = upstream().await;
    // A short poll: after the tenants move, nothing in the policy's directory changes;
    // only the poll tries the file again.
    let polls = keygate::Polls { policy: Duration::from_millis(300), ..keygate::Polls::events_only() };
    let kg = Keygate::builder(&up.url()).redis_keys(&redis.url(), "500ms").polls(polls).start().await;
    let http = Http::new();
    let (_, secret) = kg.store_key("acme", "tiny", &["calls:read"]).await;
    kg.store_key("beta", "tiny", &["calls:read"]).await;
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status, 200);
    let serving = kg.app().policy().hash.clone();

    let text = renamed(&up);
    rename_over(&kg.routes_path(), &text);
    let refused = eventually(Duration::from_secs(15), async || {
        readyz(kg.admin).await["policy"]["last_reload_error"].as_str().is_some_and(|e| e.contains("2 tenant(s)"))
    })
    .await;
    assert!(refused, "not refused for the store's tenants: {}", readyz(kg.admin).await);
    assert_eq!(kg.app().policy().hash, serving);
    assert_eq!(reload_gauge(kg.admin).await, 0.0);
    // Refused again on every poll while they stay: the failures keep counting.
    let failures = reloads(kg.admin, "failure").await;
    assert!(eventually(Duration::from_secs(15), async || reloads(kg.admin, "failure").await >= failures + 2.0).await);
    assert_eq!(http.get(&kg.url("/v1/calls"), Some(secret.expose())).await.status, 200);
    // `check --connect` reads Redis' tenants; offline, it cannot.
    let (code, out, err) = cli(&kg.config_path(), &["check", "--connect"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("plan \"tiny\"") && out.contains("2 tenant(s)"), "{out}");
    let (code, out, err) = cli(&kg.config_path(), &["check"]);
    assert_eq!(code, 0, "{out}{err}");

    let (code, out, err) = cli(&kg.config_path(), &["tenants", "set-plan", "--from", "tiny", "--to", "tiny-2025"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Moved 2 tenant(s)"), "{out}");
    let hash = keygate::reload::content_hash(text.as_bytes());
    let reloaded = eventually(Duration::from_secs(15), async || kg.app().policy().hash == hash).await;
    assert!(reloaded, "the poll did not retry the reload: {}", readyz(kg.admin).await);
    assert_eq!(reload_gauge(kg.admin).await, 1.0);
    let (code, out, err) = cli(&kg.config_path(), &["check", "--connect"]);
    assert_eq!(code, 0, "{out}{err}");
    kg.stop().await;
}
