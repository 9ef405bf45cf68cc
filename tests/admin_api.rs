//! The key and tenant API (docs/reference.md §5.2): every endpoint, the token check, the CLI's rules
//! and errors as HTTP statuses, the same JSON objects as `--json`, changes seen by the
//! proxy within a second, the Redis store behind it, and audit lines without secrets.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::*;

const TOKEN: &str = "test-admin-token-5d1f0c3a9b7e4e21";

/// A keygate with the API on, its token in a file of its own folder.
struct Api {
    kg: Keygate,
    client: Client,
    _token_dir: tempfile::TempDir,
}

impl std::ops::Deref for Api {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Calls the API at `addr`.
struct Client {
    addr: SocketAddr,
    http: Http,
}

/// The `[admin]` lines that turn the API on, with the token written to a new folder.
fn api_settings() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("  {TOKEN}\n")).unwrap();
    let lines = format!("api_address = \"127.0.0.1:0\"\ntoken_file = \"{}\"", path.display());
    (dir, lines)
}

async fn start_api(builder: Builder) -> Api {
    let (token_dir, lines) = api_settings();
    let kg = builder.admin(&lines).start().await;
    let addr = kg.running.as_ref().unwrap().admin_api_addr.expect("the admin API is on when a token is configured");
    Api { kg, client: Client { addr, http: Http::new() }, _token_dir: token_dir }
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A call with the right token and, when given, a JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let bearer = format!("Bearer {TOKEN}");
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        self.http
            .send(method, &self.url(path), &[("authorization", &bearer), ("content-type", "application/json")], body)
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    async fn create_tenant(&self, id: &str, plan: &str) {
        let answer = self.call("POST", "/admin/v1/tenants", Some(json!({"id": id, "plan": plan}))).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
    }

    /// Creates a key; returns the created object (with `key`).
    async fn create_key(&self, tenant: &str, scopes: &[&str]) -> Value {
        let body = json!({"tenant": tenant, "name": format!("{tenant} api key"), "scopes": scopes});
        let answer = self.call("POST", "/admin/v1/keys", Some(body)).await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json()
    }
}

/// An error answer: status, `type`, `code`, and JSON.
fn assert_error(answer: &Answer, status: u16, error_type: &str, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"]["type"], error_type, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(answer.header("content-type"), "application/json");
}

fn cli_json(config: &std::path::Path, args: &[&str]) -> Value {
    let (code, out, err) = cli(config, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test]
async fn every_call_needs_the_token() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    let url = api.url("/admin/v1/tenants");

    let missing = api.http.get(&url, None).await;
    assert_error(&missing, 401, "unauthorized", "missing_token");
    assert_eq!(missing.header("www-authenticate"), "Bearer realm=\"keygate-admin\"");

    let wrong = api.http.get(&url, Some("test-admin-token-5d1f0c3a9b7e4e22")).await;
    assert_error(&wrong, 401, "unauthorized", "invalid_token");
    assert!(wrong.header("www-authenticate").starts_with("Bearer realm=\"keygate-admin\""));
    let prefix = api.http.get(&url, Some(&TOKEN[..TOKEN.len() - 1])).await;
    assert_eq!(prefix.status, 401, "a prefix of the token is not the token");
    let longer = api.http.get(&url, Some(&format!("{TOKEN}x"))).await;
    assert_eq!(longer.status, 401);
    let basic = api.http.send("GET", &url, &[("authorization", &format!("Basic {TOKEN}"))], Bytes::new()).await;
    assert_eq!(basic.status, 401, "only the Bearer scheme");
    let twice = api
        .http
        .send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {TOKEN}")), ("authorization", &format!("Bearer {TOKEN}"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(twice.status, 401, "two Authorization headers");

    // Nothing is learnt or changed without the token: not even whether a path exists.
    assert_eq!(api.http.get(&api.url("/admin/v1/nowhere"), None).await.status, 401);
    let create = api
        .http
        .send("POST", &url, &[("content-type", "application/json")], Bytes::from(r#"{"id":"acme","plan":"pro"}"#))
        .await;
    assert_eq!(create.status, 401);

    let right = api.get("/admin/v1/tenants").await;
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(right.json(), json!([]), "the unauthorized POST created nothing");
    assert_eq!(right.header("cache-control"), "no-store");
    let lower = api.http.send("GET", &url, &[("authorization", &format!("bearer {TOKEN}"))], Bytes::new()).await;
    assert_eq!(lower.status, 200, "the scheme is case-insensitive");
    api.kg.stop().await;
}

#[tokio::test]
async fn tenants_create_list_show_set_plan_delete() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    let config = api.kg.config_path();

    let created = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "acme", "plan": "pro"}))).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("location"), "/admin/v1/tenants/acme");
    let tenant = created.json();
    assert_eq!(tenant["id"], "acme");
    assert_eq!(tenant["plan"], "pro");
    assert!(tenant["created_at"].is_string());

    let again = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "acme", "plan": "pro"}))).await;
    assert_error(&again, 409, "conflict", "tenant_exists");
    let bad_id = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "Bad Name", "plan": "pro"}))).await;
    assert_error(&bad_id, 400, "bad_request", "invalid_tenant_id");
    let bad_plan = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "other", "plan": "platinum"}))).await;
    assert_error(&bad_plan, 400, "bad_request", "unknown_plan");
    assert!(bad_plan.message().contains("platinum"), "the CLI's message: {}", bad_plan.message());
    api.create_tenant("free", "trial").await;

    let list = api.get("/admin/v1/tenants").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["id"], "acme");
    assert_eq!(list[0]["active_keys"], 0);
    assert_eq!(list, cli_json(&config, &["tenants", "list", "--json"]), "the same objects as the CLI");

    let key = api.create_key("acme", &["calls:read"]).await;
    let one = api.get("/admin/v1/tenants/acme").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["plan"], "pro");
    assert_eq!(one.json()["active_keys"], 1);
    assert_error(&api.get("/admin/v1/tenants/nobody").await, 404, "not_found", "unknown_tenant");

    let moved = api.call("PATCH", "/admin/v1/tenants/acme", Some(json!({"plan": "tiny"}))).await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(moved.json()["plan"], "tiny");
    assert_eq!(api.get("/admin/v1/tenants/acme").await.json()["plan"], "tiny");
    let bad = api.call("PATCH", "/admin/v1/tenants/acme", Some(json!({"plan": "platinum"}))).await;
    assert_error(&bad, 400, "bad_request", "unknown_plan");
    let nobody = api.call("PATCH", "/admin/v1/tenants/nobody", Some(json!({"plan": "pro"}))).await;
    assert_error(&nobody, 404, "not_found", "unknown_tenant");

    let deleted = api.call("DELETE", "/admin/v1/tenants/acme", None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let deleted = deleted.json();
    assert_eq!(deleted["id"], "acme");
    assert_eq!(deleted["plan"], "tiny");
    assert_eq!(deleted["revoked_keys"], json!([key["id"]]));
    assert_error(&api.get("/admin/v1/tenants/acme").await, 404, "not_found", "unknown_tenant");
    assert_error(&api.call("DELETE", "/admin/v1/tenants/acme", None).await, 404, "not_found", "unknown_tenant");
    let revoked = api.get(&format!("/admin/v1/keys/{}", key["id"].as_str().unwrap())).await.json();
    assert_eq!(revoked["state"], "revoked", "deleting a tenant revokes its keys: {revoked}");
    api.kg.stop().await;
}

#[tokio::test]
async fn keys_create_list_show_revoke_rotate() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    let config = api.kg.config_path();
    api.create_tenant("acme", "pro").await;
    api.create_tenant("beta", "pro").await;

    let body =
        json!({"tenant": "acme", "name": "billing", "scopes": ["calls:read", "calls:write"], "expires_in": "90d"});
    let created = api.call("POST", "/admin/v1/keys", Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json();
    for field in ["id", "key", "tenant", "name", "scopes", "created_at", "expires_at"] {
        assert!(key.get(field).is_some(), "lacks {field}: {key}");
    }
    let id = key["id"].as_str().unwrap().to_string();
    let secret = key["key"].as_str().unwrap().to_string();
    assert!(id.starts_with("key_") && secret.starts_with("kg_"), "{key}");
    assert_eq!(created.header("location"), format!("/admin/v1/keys/{id}"));
    assert_eq!(created.header("cache-control"), "no-store");
    assert_eq!(key["scopes"], json!(["calls:read", "calls:write"]));
    assert!(key["expires_at"].is_string());
    let other = api.create_key("beta", &["calls:read"]).await;

    let shown = api.get(&format!("/admin/v1/keys/{id}")).await;
    assert_eq!(shown.status, 200);
    assert!(!shown.text().contains(&secret), "a secret is never shown again");
    let shown = shown.json();
    assert!(shown.get("key").is_none());
    assert_eq!(shown["state"], "active");
    assert!(shown.get("last_used_at").is_some() && shown.get("revoked_at").is_some());
    assert_eq!(shown, cli_json(&config, &["keys", "show", &id, "--json"]), "the same object as the CLI");
    assert_error(&api.get("/admin/v1/keys/key_doesnotexist").await, 404, "not_found", "unknown_key");
    // A secret pasted where the id belongs is refused, and never echoed.
    for path in [
        format!("/admin/v1/keys/{secret}"),
        format!("/admin/v1/keys/{secret}/rotate"),
        format!("/admin/v1/keys?tenant={secret}"),
    ] {
        let answer = api.get(&path).await;
        assert_error(&answer, 400, "bad_request", "secret_in_url");
        assert!(!answer.text().contains(&secret[3..]), "{path}: {}", answer.text());
    }

    let all = api.get("/admin/v1/keys").await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all, cli_json(&config, &["keys", "list", "--json"]));
    let acme = api.get("/admin/v1/keys?tenant=acme").await.json();
    assert_eq!(acme.as_array().unwrap().len(), 1);
    assert_eq!(acme[0]["id"], id.as_str());
    let beta = api.get("/admin/v1/keys?tenant=beta").await.json();
    assert_eq!(beta[0]["id"], other["id"]);
    assert_error(&api.get("/admin/v1/keys?tenant=nobody").await, 404, "not_found", "unknown_tenant");
    assert_error(&api.get("/admin/v1/keys?tenants=acme").await, 400, "bad_request", "unknown_parameter");

    // The CLI's rules.
    let create = |body: Value| api.call("POST", "/admin/v1/keys", Some(body));
    let answer = create(json!({"tenant": "acme", "name": "x", "scopes": ["calls:delete"]})).await;
    assert_error(&answer, 400, "bad_request", "unknown_scope");
    assert!(answer.message().contains("calls:delete"));
    assert_error(&create(json!({"tenant": "acme", "name": "x", "scopes": []})).await, 400, "bad_request", "no_scopes");
    let answer = create(json!({"tenant": "nobody", "name": "x", "scopes": ["calls:read"]})).await;
    assert_error(&answer, 404, "not_found", "unknown_tenant");
    let answer = create(json!({"tenant": "acme", "name": "x", "scopes": ["calls:read"], "expires_in": "soon"})).await;
    assert_error(&answer, 400, "bad_request", "invalid_duration");
    assert!(answer.message().contains("soon"));
    let answer = create(json!({"tenant": "acme", "name": "", "scopes": ["calls:read"]})).await;
    assert_error(&answer, 400, "bad_request", "invalid_name");
    let answer = create(json!({"tenant": "acme", "scopes": ["calls:read"]})).await;
    assert_error(&answer, 400, "bad_request", "invalid_json");
    assert!(answer.message().contains("name"), "names the missing field: {}", answer.message());
    let answer = create(json!({"tenant": "acme", "name": "x", "scopes": "calls:read"})).await;
    assert_error(&answer, 400, "bad_request", "invalid_json");

    // Rotation: same tenant, name and scopes; the old key in its grace.
    let rotated = api.call("POST", &format!("/admin/v1/keys/{id}/rotate"), Some(json!({"grace": "1h"}))).await;
    assert_eq!(rotated.status, 201, "{}", rotated.text());
    let new = rotated.json();
    assert_ne!(new["id"], key["id"]);
    assert_ne!(new["key"], key["key"]);
    assert_eq!((&new["tenant"], &new["name"], &new["scopes"]), (&key["tenant"], &key["name"], &key["scopes"]));
    assert_eq!(new["replaces"], id.as_str());
    let old = api.get(&format!("/admin/v1/keys/{id}")).await.json();
    assert_eq!(old["replaced_by"], new["id"]);
    assert_eq!(old["expires_at"], new["replaced_expires_at"], "the answer says when the old key stops: {old}");
    let again = api.call("POST", &format!("/admin/v1/keys/{id}/rotate"), None).await;
    assert_error(&again, 409, "conflict", "key_replaced");
    let bad_grace = api
        .call("POST", &format!("/admin/v1/keys/{}/rotate", new["id"].as_str().unwrap()), Some(json!({"grace": "-1h"})))
        .await;
    assert_error(&bad_grace, 400, "bad_request", "invalid_duration");
    let no_body = api.call("POST", &format!("/admin/v1/keys/{}/rotate", other["id"].as_str().unwrap()), None).await;
    assert_eq!(no_body.status, 201, "the grace defaults to 1h: {}", no_body.text());
    assert_error(&api.call("POST", "/admin/v1/keys/key_nope/rotate", None).await, 404, "not_found", "unknown_key");

    // Revocation.
    let new_id = new["id"].as_str().unwrap();
    let revoked = api.call("DELETE", &format!("/admin/v1/keys/{new_id}"), None).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["state"], "revoked");
    assert!(revoked.json()["revoked_at"].is_string());
    assert_error(&api.call("DELETE", &format!("/admin/v1/keys/{new_id}"), None).await, 409, "conflict", "key_revoked");
    let rotate_revoked = api.call("POST", &format!("/admin/v1/keys/{new_id}/rotate"), None).await;
    assert_error(&rotate_revoked, 409, "conflict", "key_revoked");
    assert_error(&api.call("DELETE", "/admin/v1/keys/key_nope", None).await, 404, "not_found", "unknown_key");
    api.kg.stop().await;
}

#[tokio::test]
async fn a_key_made_through_the_api_works_within_a_second_and_a_revoked_one_is_401_within_a_second() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    api.create_tenant("acme", "pro").await;
    let key = api.create_key("acme", &["calls:read"]).await;
    let created_at = Instant::now();
    let secret = key["key"].as_str().unwrap().to_string();
    let url = api.kg.url("/v1/calls");
    let http = Http::new();
    assert!(
        eventually(Duration::from_secs(1), async || http.get(&url, Some(&secret)).await.status == 200).await,
        "a key created through the API did not work within 1 s"
    );
    assert!(created_at.elapsed() < Duration::from_secs(1));
    assert_eq!(upstream.last().headers["x-keygate-key-id"], key["id"].as_str().unwrap());

    let revoked = api.call("DELETE", &format!("/admin/v1/keys/{}", key["id"].as_str().unwrap()), None).await;
    assert_eq!(revoked.status, 200);
    let revoked_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), async || http.get(&url, Some(&secret)).await.status == 401).await,
        "a key revoked through the API was not refused within 1 s"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert!(http.get(&url, Some(&secret)).await.message().contains("revoked"));
    api.kg.stop().await;
}

#[tokio::test]
async fn cap_reached_is_409_and_no_api_access_is_409() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    api.create_tenant("acme", "pro").await;
    for _ in 0..5 {
        api.create_key("acme", &["calls:read"]).await;
    }
    let sixth = api
        .call("POST", "/admin/v1/keys", Some(json!({"tenant": "acme", "name": "six", "scopes": ["calls:read"]})))
        .await;
    assert_error(&sixth, 409, "conflict", "cap_reached");
    assert!(sixth.message().contains('5'), "{}", sixth.message());
    assert_eq!(api.get("/admin/v1/keys?tenant=acme").await.json().as_array().unwrap().len(), 5);

    api.create_tenant("free", "trial").await;
    let trial = api
        .call("POST", "/admin/v1/keys", Some(json!({"tenant": "free", "name": "x", "scopes": ["calls:read"]})))
        .await;
    assert_error(&trial, 409, "conflict", "no_api_access");
    assert!(trial.message().contains("API access"));
    api.kg.stop().await;
}

#[tokio::test]
async fn bodies_paths_and_methods() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let url = api.url("/admin/v1/tenants");

    let malformed = api.http.send("POST", &url, &auth, Bytes::from_static(b"{\"id\": \"acme\",")).await;
    assert_error(&malformed, 400, "bad_request", "invalid_json");
    let not_an_object = api.http.send("POST", &url, &auth, Bytes::from_static(b"[1, 2]")).await;
    assert_error(&not_an_object, 400, "bad_request", "invalid_json");
    let empty = api.http.send("POST", &url, &auth, Bytes::new()).await;
    assert_error(&empty, 400, "bad_request", "invalid_json");
    let unknown_field = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "acme", "plan": "pro", "x": 1}))).await;
    assert_error(&unknown_field, 400, "bad_request", "invalid_json");
    assert!(unknown_field.message().contains('x'));

    let padding = " ".repeat(64 * 1024);
    let big =
        api.http.send("POST", &url, &auth, Bytes::from(format!("{{\"id\":\"acme\",\"plan\":\"pro\"}}{padding}"))).await;
    assert_error(&big, 413, "payload_too_large", "payload_too_large");
    let just_fits = format!("{{\"id\":\"acme\",\"plan\":\"pro\"}}{}", " ".repeat(60 * 1024));
    assert_eq!(api.http.send("POST", &url, &auth, Bytes::from(just_fits)).await.status, 201);

    let put = api.http.send("PUT", &url, &auth, Bytes::new()).await;
    assert_error(&put, 405, "method_not_allowed", "method_not_allowed");
    assert_eq!(put.header("allow"), "GET, POST");
    let post_key = api.http.send("POST", &api.url("/admin/v1/keys/key_x"), &auth, Bytes::new()).await;
    assert_eq!(post_key.status, 405);
    assert_eq!(post_key.header("allow"), "GET, DELETE");
    for path in ["/admin/v1/nowhere", "/admin/v1/tenants/", "/admin/v2/tenants", "/metrics", "/"] {
        let answer = api.http.send("GET", &api.url(path), &auth, Bytes::new()).await;
        assert_error(&answer, 404, "not_found", "unknown_path");
    }
    let h2 = Http::h2c().send("GET", &url, &auth, Bytes::new()).await;
    assert_eq!(h2.status, 200, "HTTP/2 (h2c) too");
    api.kg.stop().await;
}

#[tokio::test]
async fn the_api_is_off_without_a_token_and_a_bad_token_file_stops_the_start() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).admin("api_address = \"127.0.0.1:0\"").start().await;
    assert_eq!(kg.running.as_ref().unwrap().admin_api_addr, None, "no token, no API");
    kg.stop().await;

    for content in [None, Some(" \n")] {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("admin-token");
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let builder = Keygate::builder(&upstream.url())
            .admin(&format!("api_address = \"127.0.0.1:0\"\ntoken_file = \"{}\"", path.display()));
        let config_dir = builder.write();
        let (settings, _) = keygate::Settings::load(&config_dir.path().join("keygate.toml")).unwrap();
        let error = keygate::admin_api::load_token(&settings).unwrap_err();
        assert!(error.contains("admin-token"), "names the file: {error}");
        assert!(keygate::start(settings, keygate::Options::default()).await.is_err(), "{content:?}: start refuses");
    }
}

/// The same API over the Redis store: the same objects, the proxy sees changes within a
/// second, and an unreachable Redis is 503 with `Retry-After`, never a wrong answer.
#[tokio::test]
async fn over_the_redis_store() {
    let upstream = upstream().await;
    let mut redis = RedisServer::start();
    let api = start_api(Keygate::builder(&upstream.url()).redis_keys(&redis.url(), "200ms")).await;
    let config = api.kg.config_path();
    api.create_tenant("acme", "pro").await;
    let key = api.create_key("acme", &["calls:read"]).await;
    let id = key["id"].as_str().unwrap();
    let secret = key["key"].as_str().unwrap().to_string();
    assert_eq!(
        api.get(&format!("/admin/v1/keys/{id}")).await.json(),
        cli_json(&config, &["keys", "show", id, "--json"])
    );
    assert_eq!(api.get("/admin/v1/tenants").await.json(), cli_json(&config, &["tenants", "list", "--json"]));

    let http = Http::new();
    let url = api.kg.url("/v1/calls");
    assert!(eventually(Duration::from_secs(1), async || http.get(&url, Some(&secret)).await.status == 200).await);
    for _ in 0..4 {
        api.create_key("acme", &["calls:read"]).await;
    }
    let sixth = api
        .call("POST", "/admin/v1/keys", Some(json!({"tenant": "acme", "name": "six", "scopes": ["calls:read"]})))
        .await;
    assert_error(&sixth, 409, "conflict", "cap_reached");
    assert_eq!(api.call("DELETE", &format!("/admin/v1/keys/{id}"), None).await.status, 200);
    assert!(
        eventually(Duration::from_secs(1), async || http.get(&url, Some(&secret)).await.status == 401).await,
        "revoked through the API: 401 within 1 s"
    );

    redis.kill();
    let down = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "late", "plan": "pro"}))).await;
    assert_error(&down, 503, "unavailable", "store_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    assert!(!down.message().contains(&redis.port.to_string()), "no internal detail: {}", down.message());
    assert_eq!(api.get("/admin/v1/keys").await.status, 503);
    api.kg.stop().await;
}

/// Every change through the API is an audit line (what, key id, tenant, `via`), and no
/// line carries a secret or the token. Runs the real binary to capture its log.
#[tokio::test]
async fn audit_lines_name_the_change_and_never_a_secret() {
    let upstream = upstream().await;
    let (_token_dir, lines) = api_settings();
    let kg = Keygate::builder(&upstream.url()).admin(&lines).start().await;
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;

    let served = process::Served::start(&config, "info").await;
    let api = Client { addr: find_api(served.pid()).await, http: Http::new() };

    api.create_tenant("acme", "pro").await;
    let key = api.create_key("acme", &["calls:read"]).await;
    let id = key["id"].as_str().unwrap().to_string();
    let rotated = api.call("POST", &format!("/admin/v1/keys/{id}/rotate"), Some(json!({"grace": "1h"}))).await.json();
    let new_id = rotated["id"].as_str().unwrap().to_string();
    assert_eq!(api.call("PATCH", "/admin/v1/tenants/acme", Some(json!({"plan": "tiny"}))).await.status, 200);
    assert_eq!(api.call("DELETE", &format!("/admin/v1/keys/{new_id}"), None).await.status, 200);
    assert_eq!(api.call("DELETE", "/admin/v1/tenants/acme", None).await.status, 200);
    assert_eq!(api.http.get(&api.url("/admin/v1/tenants"), Some("wrong-token")).await.status, 401);
    let secrets = [key["key"].as_str().unwrap().to_string(), rotated["key"].as_str().unwrap().to_string()];
    drop(api);

    let (stdout, stderr) = served.stop().await;
    let logs = stdout + &stderr;
    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "audit")
        .map(|l| l["fields"].clone())
        .collect();
    let find = |action: &str, key_id: Option<&str>| {
        audit.iter().find(|f| f["action"] == action && key_id.is_none_or(|k| f["key_id"] == k)).cloned().unwrap_or_else(
            || {
                panic!(
                    "no `{action}` audit line for {key_id:?} in:\n{}",
                    audit.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
                )
            },
        )
    };
    let created = find("key.create", Some(&id));
    assert_eq!((&created["tenant"], &created["via"]), (&json!("acme"), &json!("admin_api")));
    assert_eq!(created["scopes"], "calls:read");
    assert_eq!(find("key.rotate", Some(&new_id))["replaces"], id.as_str());
    assert_eq!(find("key.revoke", Some(&new_id))["tenant"], "acme");
    assert_eq!(find("key.revoke", Some(&id))["reason"], "tenant.delete", "the tenant's deletion revoked the old key");
    assert_eq!(find("tenant.create", None)["plan"], "pro");
    let moved = find("tenant.set_plan", None);
    assert_eq!((&moved["plan"], &moved["previous_plan"]), (&json!("tiny"), &json!("pro")));
    assert_eq!(find("tenant.delete", None)["tenant"], "acme");
    assert!(
        audit.iter().any(|f| f["action"] == "admin_api.unauthorized" && f["reason"] == "invalid token"),
        "the refused token is an audit line"
    );

    for secret in &secrets {
        assert!(!logs.contains(&secret[8..]), "a secret appears in the log");
    }
    assert!(!logs.contains(TOKEN), "the token appears in the log");
    assert!(!logs.contains("wrong-token"), "a presented token appears in the log");
}

/// The child's admin API address: of the ports it listens on (proxy, admin, API), the
/// one that answers an unauthenticated call with the API's challenge.
async fn find_api(pid: u32) -> SocketAddr {
    let http = Http::new();
    let mut found = None;
    let ok = eventually(Duration::from_secs(20), async || {
        for port in process::listening_ports(pid) {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let answer = http.get(&format!("http://{addr}/admin/v1/tenants"), None).await;
            if answer.status == 401
                && answer
                    .headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.as_bytes().starts_with(b"Bearer realm=\"keygate-admin\""))
            {
                found = Some(addr);
                return true;
            }
        }
        false
    })
    .await;
    assert!(ok, "the admin API did not start listening");
    found.unwrap()
}

/// A file-store write waits for the store's OS lock, which a CLI command may hold, on
/// the blocking pool and not on a runtime thread: on a single-threaded runtime (like
/// `keygate serve`'s main one, which also serves the health endpoints, metrics and
/// watchers) `/healthz` answers while the write waits, and the write completes once the
/// lock is released.
#[tokio::test]
async fn a_write_waiting_for_the_store_lock_does_not_stall_the_runtime() {
    let upstream = upstream().await;
    let api = start_api(Keygate::builder(&upstream.url())).await;
    // Held by another open file description, as another process would: released by a
    // thread of its own when the test says so (or after 10 s, so that a runtime stuck
    // in the write fails the test rather than hangs it).
    let lock_path = api.kg.dir.path().join("keys.json.lock");
    let lock = std::fs::File::options().read(true).write(true).create(true).truncate(false).open(&lock_path).unwrap();
    lock.lock().unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let releaser = std::thread::spawn(move || {
        let _ = released.recv_timeout(Duration::from_secs(10));
        let at = Instant::now();
        lock.unlock().unwrap();
        at
    });

    let create = async {
        let answer = api.call("POST", "/admin/v1/tenants", Some(json!({"id": "acme", "plan": "pro"}))).await;
        (answer, Instant::now())
    };
    // Once the write waits for the lock (its flock shows as blocked in /proc/locks),
    // /healthz is asked, timed from then: a runtime thread stuck in the write (which
    // would also hold up this poll) shows. Then the lock is released.
    let health = async {
        let waits = eventually(Duration::from_secs(5), async || process::flock_waiters(&lock_path) > 0).await;
        let asked = Instant::now();
        let answer = Http::new().get(&api.kg.admin_url("/healthz"), None).await;
        let took = asked.elapsed();
        let _ = release.send(());
        (waits, answer.status, took)
    };
    let ((created, created_at), (waits, health, health_took)) = tokio::join!(create, health);
    let released_at = releaser.join().unwrap();
    assert!(waits, "the write did not wait for the lock (or waited on a runtime thread, which stalled the poll)");
    assert_eq!(health, 200);
    assert!(health_took < Duration::from_secs(1), "/healthz took {health_took:?} while a write waited for the lock");
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(created_at >= released_at, "the write completed before the lock was released");
    assert!(api.kg.proxy_store().snapshot().tenants.contains_key("acme"));
}

/// Over the Redis store, reading one key or one tenant reads that key or tenant, not the
/// whole store: with 30 tenants, `GET /admin/v1/keys/ID`, `GET /admin/v1/tenants/T` and
/// `GET /admin/v1/keys?tenant=T` each send a handful of commands (counted through a
/// relay), where listing everything sends one or more per tenant, and they answer what
/// the full listings hold.
#[tokio::test]
async fn single_records_over_the_redis_store_are_read_alone() {
    let upstream = upstream().await;
    let redis = RedisServer::start();
    let relay = support::redis::CountingRelay::start(redis.addr()).await;
    let api = start_api(Keygate::builder(&upstream.url()).redis_keys(&relay.url(), "200ms")).await;
    for i in 0..30 {
        api.create_tenant(&format!("t{i:02}"), "pro").await;
    }
    let key = api.create_key("t07", &["calls:read"]).await;
    api.create_key("t07", &["calls:read"]).await;
    let id = key["id"].as_str().unwrap();

    let commands = |before: u64| relay.commands() - before;
    let before = relay.commands();
    let all_keys = api.get("/admin/v1/keys").await;
    let listing_all = commands(before);
    let before = relay.commands();
    let all_tenants = api.get("/admin/v1/tenants").await;
    assert!(listing_all >= 30 && commands(before) >= 30, "the full listings read every tenant");

    let before = relay.commands();
    let one_key = api.get(&format!("/admin/v1/keys/{id}")).await;
    assert!(commands(before) <= 4, "GET of one key sent {} commands", commands(before));
    assert_eq!(one_key.status, 200);
    let listed = all_keys.json().as_array().unwrap().iter().find(|k| k["id"] == id).unwrap().clone();
    assert_eq!(one_key.json(), listed);

    let before = relay.commands();
    let tenant = api.get("/admin/v1/tenants/t07").await;
    assert!(commands(before) <= 6, "GET of one tenant sent {} commands", commands(before));
    assert_eq!(tenant.json()["active_keys"], 2, "{}", tenant.text());
    let summary = all_tenants.json().as_array().unwrap().iter().find(|t| t["id"] == "t07").unwrap().clone();
    assert_eq!(tenant.json()["plan"], summary["plan"]);

    let before = relay.commands();
    let keys_of = api.get("/admin/v1/keys?tenant=t07").await;
    assert!(commands(before) <= 6, "the keys of one tenant sent {} commands", commands(before));
    let expected: Vec<Value> =
        all_keys.json().as_array().unwrap().iter().filter(|k| k["tenant"] == "t07").cloned().collect();
    assert_eq!(keys_of.json(), Value::Array(expected));

    assert_eq!(api.get("/admin/v1/keys/key_doesnotexist").await.status, 404);
    assert_eq!(api.get("/admin/v1/tenants/nobody").await.status, 404);
    api.kg.stop().await;
}
