//! The Redis key store against real servers: every lifecycle operation and its refusals
//! (the same as the file store's), lookups by current and old pepper, tombstones,
//! `max_keys` under concurrency, the round trips of a lookup, the invalidations each
//! write publishes, `last_used_at`, the documented layout, and a three-master Redis
//! Cluster. Each test starts its own `redis-server`; a missing one fails loudly.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keygate::keys::data::{Lookup, StoreError};
use keygate::keys::manage::{CreatedKey, ManageError, NewKey};
use keygate::keys::redis_store::{layout, Invalidation, RedisStore, INVALIDATION_CHANNEL};
use keygate::keys::{generate_secret, KeyState, Peppers};
use keygate::policy::Policy;
use support::redis::*;
use time::OffsetDateTime;

const POLICY: &str = r#"
[scopes]
"calls:read" = "View call history"
"calls:write" = "Initiate calls"
"contacts:read" = "View contacts"

[plans.trial]
api_access = false
[plans.pro]
requests_per_minute = 300
max_keys = 2
[plans.team]
requests_per_minute = 600
max_keys = 5
[plans.agency]
requests_per_minute = 1000
[plans.retired]
requests_per_minute = 10

[upstreams.app]
url = "http://127.0.0.1:8080"

[[routes]]
prefix = "/v1/calls"
scopes = ["calls:read"]
upstream = "app"
"#;

const THIRTY_DAYS: i64 = 30 * 86_400;

fn policy() -> Policy {
    parse_policy(POLICY)
}

fn parse_policy(text: &str) -> Policy {
    match Policy::parse(text, Path::new("routes.toml")) {
        Ok((policy, _warnings)) => policy,
        Err(errors) => panic!("test policy: {errors:?}"),
    }
}

/// The policy without the plan `retired` and the scope `contacts:read`.
fn shrunk_policy() -> Policy {
    let text = POLICY
        .replace("[plans.retired]\nrequests_per_minute = 10\n", "")
        .replace("\"contacts:read\" = \"View contacts\"\n", "");
    parse_policy(&text)
}

fn peppers() -> Peppers {
    Peppers::from_entries(vec![("v1".into(), b"pepper-one".to_vec())])
}

/// Now, with nanoseconds: stored times must round-trip exactly.
fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn new_key(tenant: &str) -> NewKey {
    NewKey { tenant: tenant.into(), name: "ci".into(), scopes: vec!["calls:read".into()], expires_in: None }
}

async fn store(url: &str) -> RedisStore {
    RedisStore::new(client(url, Duration::from_secs(2)).await.0)
}

/// A store with tenants `acme` (pro: 2 keys), `big` (agency: no cap), `free` (trial: no
/// API access) and `team` (team: 5 keys).
async fn populated(url: &str) -> RedisStore {
    let store = store(url).await;
    let policy = policy();
    for (id, plan) in [("acme", "pro"), ("big", "agency"), ("free", "trial"), ("team", "team")] {
        store.create_tenant(&policy, id, plan, now()).await.unwrap();
    }
    store
}

async fn found(store: &RedisStore, peppers: &Peppers, key: &CreatedKey) -> Lookup {
    store.lookup(&peppers.all(&key.secret)).await.unwrap()
}

fn ttl(server: &RedisServer, key: &str) -> i64 {
    let out = server.cli(&["TTL", key]);
    out.trim().parse().unwrap_or_else(|_| panic!("TTL {key}: {out:?}"))
}

fn assert_tombstone_ttl(server: &RedisServer, key: &str) {
    let ttl = ttl(server, key);
    assert!((THIRTY_DAYS - 60..=THIRTY_DAYS).contains(&ttl), "{key}: TTL {ttl}, not ≈ 30 days");
}

#[tokio::test]
async fn tenants_round_trip_and_refusals() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let policy = policy();
    let at = now();
    let acme = store.create_tenant(&policy, "acme", "pro", at).await.unwrap();
    assert_eq!((acme.id.as_str(), acme.plan.as_str(), acme.created_at), ("acme", "pro", at));
    let data = store.load_all().await.unwrap();
    assert_eq!(data.tenants.get("acme"), Some(&acme));

    for bad in ["", "Acme", "-x", "a b", "a}b"] {
        let err = store.create_tenant(&policy, bad, "pro", at).await.unwrap_err();
        assert!(matches!(err, ManageError::InvalidTenantId(_)), "{bad}: {err}");
    }
    let err = store.create_tenant(&policy, "acme", "pro", at).await.unwrap_err();
    assert!(matches!(err, ManageError::TenantExists(_)), "{err}");
    // As in the file store: an existing tenant is reported before an unknown plan.
    let err = store.create_tenant(&policy, "acme", "gold", at).await.unwrap_err();
    assert!(matches!(err, ManageError::TenantExists(_)), "{err}");
    let err = store.create_tenant(&policy, "new", "gold", at).await.unwrap_err();
    assert_eq!(err.to_string(), "unknown plan `gold`; the policy defines: agency, pro, retired, team, trial");
    assert!(!store.load_all().await.unwrap().tenants.contains_key("new"));

    let moved = store.set_plan(&policy, "acme", "agency").await.unwrap();
    assert_eq!((moved.plan.as_str(), moved.created_at), ("agency", at));
    assert_eq!(store.load_all().await.unwrap().tenants["acme"].plan, "agency");
    let err = store.set_plan(&policy, "acme", "gold").await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownPlan { .. }), "{err}");
    let err = store.set_plan(&policy, "nobody", "pro").await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");

    // Deleting revokes the keys not yet revoked, and keeps them listed as tombstones.
    let peppers = peppers();
    let a = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    let b = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    let earlier = at - time::Duration::hours(1);
    store.revoke_key(&b.record.id, earlier).await.unwrap();
    let revoked = store.delete_tenant("acme", at).await.unwrap();
    assert_eq!(revoked, vec![a.record.id.clone()]);
    let err = store.delete_tenant("acme", at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
    let data = store.load_all().await.unwrap();
    assert!(!data.tenants.contains_key("acme"));
    assert_eq!(data.keys[&a.record.id].revoked_at, Some(at));
    assert_eq!(data.keys[&b.record.id].revoked_at, Some(earlier), "an earlier revocation keeps its time");
    match found(&store, &peppers, &a).await {
        Lookup::Found { key, tenant, .. } => {
            assert_eq!(key.state(at), KeyState::Revoked);
            assert_eq!(tenant, None);
        }
        Lookup::NotFound => panic!("a deleted tenant's key is a tombstone, not unknown"),
    }
    for key in [layout::key("acme", &a.record.id), layout::digest(&a.record.digest), layout::key_id(&a.record.id)] {
        assert_tombstone_ttl(&server, &key);
    }
    assert_eq!(server.cli(&["SISMEMBER", layout::TENANTS, "acme"]).trim(), "0");

    // Created again: a fresh tenant, whose old tombstones do not count against its cap.
    store.create_tenant(&policy, "acme", "pro", at).await.unwrap();
    assert_eq!(ttl(&server, &layout::keys("acme")), -1, "the key set is kept again");
    store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    let data = store.load_all().await.unwrap();
    assert_eq!(data.tenants["acme"].plan, "pro");
    assert_eq!(data.keys.len(), 4);
}

#[tokio::test]
async fn keys_round_trip_with_the_documented_layout() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let mut new = new_key("big");
    new.name = "billing, \"worker\" é".into();
    new.scopes = vec!["calls:write".into(), "calls:read".into(), "calls:write".into()];
    new.expires_in = Some(Duration::from_secs(90 * 86_400));
    let created = store.create_key(&policy, &peppers, &new, at).await.unwrap();
    let record = &created.record;
    assert!(record.id.starts_with("key_"));
    assert_eq!((record.tenant.as_str(), record.name.as_str()), ("big", "billing, \"worker\" é"));
    assert_eq!(record.scopes, vec!["calls:write", "calls:read"]);
    assert_eq!((record.created_at, record.expires_at), (at, Some(at + time::Duration::days(90))));
    assert_eq!(record.digest, peppers.current(&created.secret));

    let data = store.load_all().await.unwrap();
    assert_eq!(data.keys.get(&record.id), Some(record));
    match found(&store, &peppers, &created).await {
        Lookup::Found { key, tenant, matched, identity } => {
            assert_eq!(&*key, record);
            assert_eq!(tenant.map(|t| (t.id.clone(), t.plan.clone())), Some(("big".to_string(), "agency".to_string())));
            assert_eq!(matched, peppers.current(&created.secret));
            // The identity headers come with the record from Redis (and are cached with it).
            let identity = identity.expect("a key with a tenant has identity headers");
            let text = |v: &Option<http::HeaderValue>| v.as_ref().map(|v| v.to_str().unwrap().to_string());
            assert_eq!(text(&identity.tenant).as_deref(), Some("big"));
            assert_eq!(text(&identity.plan).as_deref(), Some("agency"));
            assert_eq!(text(&identity.scopes).as_deref(), Some("calls:write,calls:read"));
        }
        Lookup::NotFound => panic!("not found"),
    }

    // The layout of docs/redis-layout.md, read raw.
    let key_hash = server.cli(&["HGETALL", &layout::key("big", &record.id)]);
    let fields: Vec<&str> = key_hash.lines().collect();
    let field = |name: &str| fields.chunks(2).find(|p| p[0] == name).map(|p| p[1].to_string());
    assert_eq!(field("id").as_deref(), Some(record.id.as_str()));
    assert_eq!(field("tenant").as_deref(), Some("big"));
    assert_eq!(field("scopes").as_deref(), Some(r#"["calls:write","calls:read"]"#));
    assert_eq!(field("digest"), Some(format!("v1:{}", record.digest.hex)));
    assert!(field("created_at").is_some_and(|t| t.ends_with('Z')));
    assert_eq!(field("revoked_at"), None);
    assert!(!key_hash.contains(created.secret.expose()));
    assert_eq!(
        server.cli(&["GET", &format!("kg:digest:v1:{}", record.digest.hex)]).trim(),
        format!("big/{}", record.id)
    );
    assert_eq!(server.cli(&["GET", &format!("kg:keyid:{}", record.id)]).trim(), "big");
    assert_eq!(server.cli(&["SISMEMBER", "kg:{t:big}:keys", &record.id]).trim(), "1");
    assert_eq!(server.cli(&["HGET", "kg:{t:big}:tenant", "plan"]).trim(), "agency");
    let mut tenants: Vec<String> = server.cli(&["SMEMBERS", "kg:tenants"]).lines().map(String::from).collect();
    tenants.sort();
    assert_eq!(tenants, ["acme", "big", "free", "team"]);
    // No secret anywhere in Redis.
    let dump = server.cli(&["KEYS", "*"]);
    assert!(!dump.contains(created.secret.expose()));
    assert!(dump.lines().all(|k| k.starts_with("kg:")), "{dump}");
}

#[tokio::test]
async fn create_key_refuses_what_the_file_store_refuses() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let err = store.create_key(&policy, &peppers, &new_key("nobody"), at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
    let err = store.create_key(&policy, &peppers, &new_key("free"), at).await.unwrap_err();
    assert!(matches!(err, ManageError::NoApiAccess(ref p) if p == "trial"), "{err}");
    let err = store.create_key(&policy, &peppers, &new_key("Bad Id"), at).await.unwrap_err();
    assert!(matches!(err, ManageError::InvalidTenantId(_)), "{err}");

    // A tenant whose plan left the policy.
    store.create_tenant(&policy, "old", "retired", at).await.unwrap();
    let err = store.create_key(&shrunk_policy(), &peppers, &new_key("old"), at).await.unwrap_err();
    assert_eq!(err.to_string(), "unknown plan `retired`; the policy defines: agency, pro, team, trial");

    let mut new = new_key("acme");
    new.scopes = vec![];
    let err = store.create_key(&policy, &peppers, &new, at).await.unwrap_err();
    assert!(matches!(err, ManageError::NoScopes), "{err}");
    new.scopes = vec!["calls:read".into(), "calls:delete".into()];
    let err = store.create_key(&policy, &peppers, &new, at).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown scope `calls:delete`; the policy's [scopes] are: calls:read, calls:write, contacts:read"
    );
    for bad in ["", "   ", "a".repeat(101).as_str(), "new\nline"] {
        let mut new = new_key("acme");
        new.name = bad.to_string();
        let err = store.create_key(&policy, &peppers, &new, at).await.unwrap_err();
        assert!(matches!(err, ManageError::InvalidName(_)), "{bad:?}: {err}");
    }
    let mut new = new_key("acme");
    new.expires_in = Some(Duration::ZERO);
    let err = store.create_key(&policy, &peppers, &new, at).await.unwrap_err();
    assert!(matches!(err, ManageError::InvalidExpiry(_)), "{err}");
    new.expires_in = Some(Duration::from_secs(u64::MAX / 1000));
    let err = store.create_key(&policy, &peppers, &new, at).await.unwrap_err();
    assert!(matches!(err, ManageError::InvalidExpiry(_)), "{err}");
    assert!(store.load_all().await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn max_keys_counts_only_working_keys_not_in_grace() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let acme = new_key("acme");
    let create = |at: OffsetDateTime| store.create_key(&policy, &peppers, &acme, at);
    let first = create(at).await.unwrap();
    create(at).await.unwrap();
    let err = create(at).await.unwrap_err();
    assert!(
        matches!(err, ManageError::CapReached { ref tenant, ref plan, max: 2 } if tenant == "acme" && plan == "pro"),
        "{err}"
    );
    assert_eq!(err.to_string(), "tenant `acme` already has 2 active keys, the cap of plan `pro`; revoke one first");
    // A revoked key frees a slot.
    store.revoke_key(&first.record.id, at).await.unwrap();
    let third = create(at).await.unwrap();
    assert!(matches!(create(at).await, Err(ManageError::CapReached { .. })));
    // An expired key frees a slot: one that expires in a minute, seen two minutes later.
    store.revoke_key(&third.record.id, at).await.unwrap();
    let mut short = new_key("acme");
    short.expires_in = Some(minutes(1));
    store.create_key(&policy, &peppers, &short, at).await.unwrap();
    assert!(matches!(create(at).await, Err(ManageError::CapReached { .. })));
    let later = at + time::Duration::minutes(2);
    let fourth = create(later).await.unwrap();
    // Rotation needs no free slot, and the old key in its grace does not count.
    let rotated = store.rotate_key(&policy, &peppers, &fourth.record.id, minutes(60), later).await.unwrap();
    assert!(matches!(create(later).await, Err(ManageError::CapReached { .. })));
    store.revoke_key(&rotated.record.id, later).await.unwrap();
    create(later).await.unwrap();
    // Other tenants' keys do not count; no max_keys is no cap.
    for _ in 0..6 {
        store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_concurrent_creates_leave_exactly_max_keys() {
    let server = RedisServer::start();
    let url = server.url();
    populated(&url).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(12));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (url, barrier) = (url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let store = store(&url).await;
            barrier.wait().await;
            store.create_key(&policy(), &peppers(), &new_key("team"), now()).await
        }));
    }
    let (mut created, mut capped) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(ManageError::CapReached { max: 5, .. }) => capped += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((created, capped), (5, 7));
    let data = store(&url).await.load_all().await.unwrap();
    assert_eq!(data.keys.values().filter(|k| k.tenant == "team").count(), 5);
    assert_eq!(server.cli(&["SCARD", &layout::keys("team")]).trim(), "5");
}

#[tokio::test]
async fn revoked_keys_are_tombstones_for_30_days() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let created = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    let id = &created.record.id;
    assert_eq!(ttl(&server, &layout::key("acme", id)), -1);
    let revoked = store.revoke_key(id, at).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(revoked.digest, created.record.digest);
    match found(&store, &peppers, &created).await {
        Lookup::Found { key, tenant, .. } => {
            assert_eq!(key.revoked_at, Some(at));
            assert_eq!(key.state(at), KeyState::Revoked);
            assert!(tenant.is_some());
        }
        Lookup::NotFound => panic!("a revoked key must be found (401 revoked, not unknown)"),
    }
    for key in [layout::key("acme", id), layout::digest(&created.record.digest), layout::key_id(id)] {
        assert_tombstone_ttl(&server, &key);
    }
    let err = store.revoke_key(id, at).await.unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    let err = store.revoke_key("key_nope", at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownKey(_)), "{err}");

    // A revocation whose second step was lost: revoking again restores the TTLs.
    server.cli(&["PERSIST", &layout::digest(&created.record.digest)]);
    let err = store.revoke_key(id, at).await.unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    assert_tombstone_ttl(&server, &layout::digest(&created.record.digest));

    // A lost key-id entry: the key is still found by id, through its tenant's set.
    let other = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    server.cli(&["DEL", &layout::key_id(&other.record.id)]);
    assert_eq!(store.revoke_key(&other.record.id, at).await.unwrap().id, other.record.id);
}

#[tokio::test]
async fn rotation_keeps_tenant_name_scopes_and_expiry() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let mut new = new_key("big");
    new.name = "billing".into();
    new.scopes = vec!["calls:read".into(), "contacts:read".into()];
    new.expires_in = Some(Duration::from_secs(86_400));
    let old = store.create_key(&policy, &peppers, &new, at).await.unwrap();
    let later = at + time::Duration::minutes(10);
    let rotated = store.rotate_key(&policy, &peppers, &old.record.id, minutes(60), later).await.unwrap();
    let data = store.load_all().await.unwrap();
    let new_record = &data.keys[&rotated.record.id];
    assert_eq!(new_record, &rotated.record);
    assert_ne!(rotated.secret, old.secret);
    assert_eq!((new_record.tenant.as_str(), new_record.name.as_str()), ("big", "billing"));
    assert_eq!(new_record.scopes, old.record.scopes);
    assert_eq!((new_record.created_at, new_record.expires_at), (later, old.record.expires_at));
    let old_record = &data.keys[&old.record.id];
    assert_eq!(old_record.replaced_by.as_deref(), Some(new_record.id.as_str()));
    assert_eq!(old_record.expires_at, Some(later + time::Duration::hours(1)));
    // Both work during the grace.
    assert!(matches!(found(&store, &peppers, &old).await, Lookup::Found { ref key, .. } if key.replaced_by.is_some()));
    assert!(matches!(found(&store, &peppers, &rotated).await, Lookup::Found { .. }));

    let err = store.rotate_key(&policy, &peppers, &old.record.id, minutes(60), later).await.unwrap_err();
    assert!(matches!(err, ManageError::Replaced { ref by, .. } if *by == rotated.record.id), "{err}");

    // The grace never extends an expiry; grace 0 ends the old key at once.
    let mut short = new_key("big");
    short.expires_in = Some(minutes(30));
    let old = store.create_key(&policy, &peppers, &short, at).await.unwrap();
    let rotated = store.rotate_key(&policy, &peppers, &old.record.id, minutes(60), at).await.unwrap();
    assert_eq!(rotated.record.expires_at, Some(at + time::Duration::minutes(30)));
    let data = store.load_all().await.unwrap();
    assert_eq!(data.keys[&old.record.id].expires_at, Some(at + time::Duration::minutes(30)));
    let old = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    let rotated = store.rotate_key(&policy, &peppers, &old.record.id, Duration::ZERO, at).await.unwrap();
    assert_eq!(rotated.record.expires_at, None);
    assert_eq!(store.load_all().await.unwrap().keys[&old.record.id].state(at), KeyState::Expired);
}

#[tokio::test]
async fn rotation_refusals() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let err = store.rotate_key(&policy, &peppers, "key_nope", minutes(60), at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownKey(_)), "{err}");
    let revoked = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    store.revoke_key(&revoked.record.id, at).await.unwrap();
    let err = store.rotate_key(&policy, &peppers, &revoked.record.id, minutes(60), at).await.unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    let mut short = new_key("big");
    short.expires_in = Some(minutes(1));
    let expired = store.create_key(&policy, &peppers, &short, at).await.unwrap();
    let later = at + time::Duration::minutes(2);
    let err = store.rotate_key(&policy, &peppers, &expired.record.id, minutes(60), later).await.unwrap_err();
    assert!(matches!(err, ManageError::Expired(_)), "{err}");

    // A scope dropped from the policy cannot be carried over; nothing changes.
    let mut new = new_key("big");
    new.scopes = vec!["contacts:read".into()];
    let key = store.create_key(&policy, &peppers, &new, at).await.unwrap();
    let before = store.load_all().await.unwrap();
    let err = store.rotate_key(&shrunk_policy(), &peppers, &key.record.id, minutes(60), at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownScope { .. }), "{err}");
    assert_eq!(store.load_all().await.unwrap(), before);

    // A tenant moved to a plan without API access cannot rotate.
    let key = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    store.set_plan(&policy, "acme", "trial").await.unwrap();
    let err = store.rotate_key(&policy, &peppers, &key.record.id, minutes(60), at).await.unwrap_err();
    assert!(matches!(err, ManageError::NoApiAccess(ref p) if p == "trial"), "{err}");
    // ... nor one whose tenant is gone (its key is revoked with it).
    store.set_plan(&policy, "acme", "pro").await.unwrap();
    store.delete_tenant("acme", at).await.unwrap();
    let err = store.rotate_key(&policy, &peppers, &key.record.id, minutes(60), at).await.unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    // Huge graces are refused.
    let key = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    let err = store
        .rotate_key(&policy, &peppers, &key.record.id, Duration::from_secs(u64::MAX / 1000), at)
        .await
        .unwrap_err();
    assert!(matches!(err, ManageError::InvalidExpiry(_)), "{err}");
}

#[tokio::test]
async fn lookup_by_current_and_old_pepper_and_restore() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let policy = policy();
    let old_peppers = peppers();
    let created = store.create_key(&policy, &old_peppers, &new_key("big"), now()).await.unwrap();
    let rotated =
        Peppers::from_entries(vec![("v2".into(), b"pepper-two".to_vec()), ("v1".into(), b"pepper-one".to_vec())]);
    let old_digest = old_peppers.current(&created.secret);
    match found(&store, &rotated, &created).await {
        Lookup::Found { key, matched, .. } => {
            assert_eq!(key.id, created.record.id);
            assert_eq!(matched, old_digest);
            assert_eq!(matched.pepper_id, "v1");
        }
        Lookup::NotFound => panic!("not found under the old pepper"),
    }
    let current = rotated.current(&created.secret);
    store.restore_digest(&created.record.id, current.clone()).await.unwrap();
    match found(&store, &rotated, &created).await {
        Lookup::Found { key, matched, .. } => {
            assert_eq!(matched, current);
            assert_eq!(key.digest, current);
        }
        Lookup::NotFound => panic!("not found under the current pepper"),
    }
    assert_eq!(server.cli(&["EXISTS", &layout::digest(&old_digest)]).trim(), "0", "old index entry dropped");
    assert_eq!(store.lookup(std::slice::from_ref(&old_digest)).await.unwrap(), Lookup::NotFound);
    // Restoring again, or a key that is gone: no-ops.
    store.restore_digest(&created.record.id, current.clone()).await.unwrap();
    store.restore_digest("key_gone", current.clone()).await.unwrap();

    // Unknown secrets, no digests, and the same hex under another pepper id: not found.
    assert_eq!(store.lookup(&rotated.all(&generate_secret())).await.unwrap(), Lookup::NotFound);
    assert_eq!(store.lookup(&[]).await.unwrap(), Lookup::NotFound);
    let mut wrong_id = current.clone();
    wrong_id.pepper_id = "v9".into();
    assert_eq!(store.lookup(&[wrong_id]).await.unwrap(), Lookup::NotFound);
    // An index entry whose record holds another digest is no match.
    let stale = rotated.all(&created.secret)[2].clone();
    server.cli(&["SET", &layout::digest(&stale), &format!("big/{}", created.record.id)]);
    assert_eq!(store.lookup(&[stale]).await.unwrap(), Lookup::NotFound);
}

#[tokio::test]
async fn a_revoked_key_is_re_stored_as_a_tombstone() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let created = store.create_key(&policy(), &peppers(), &new_key("big"), now()).await.unwrap();
    store.revoke_key(&created.record.id, now()).await.unwrap();
    let rotated =
        Peppers::from_entries(vec![("v2".into(), b"pepper-two".to_vec()), ("v1".into(), b"pepper-one".to_vec())]);
    let current = rotated.current(&created.secret);
    store.restore_digest(&created.record.id, current.clone()).await.unwrap();
    assert_tombstone_ttl(&server, &layout::digest(&current));
}

#[tokio::test]
async fn a_lookup_costs_at_most_two_round_trips() {
    let server = RedisServer::start();
    let relay = CountingRelay::start(server.addr()).await;
    let store = populated(&relay.url()).await;
    // Two peppers: three digests per lookup, still one MGET.
    let peppers = Peppers::from_entries(vec![("v2".into(), b"two".to_vec()), ("v1".into(), b"one".to_vec())]);
    let created = store.create_key(&policy(), &peppers, &new_key("big"), now()).await.unwrap();
    // Warm: the script is loaded once per server.
    assert!(matches!(found(&store, &peppers, &created).await, Lookup::Found { .. }));
    relay.reset();
    assert!(matches!(found(&store, &peppers, &created).await, Lookup::Found { .. }));
    // Exactly: the relay does see this client's traffic, and it is two commands.
    assert_eq!(relay.commands(), 2, "a lookup: one MGET, one EVALSHA");
    relay.reset();
    assert_eq!(store.lookup(&peppers.all(&generate_secret())).await.unwrap(), Lookup::NotFound);
    assert_eq!(relay.commands(), 1, "an unknown key: the MGET alone");
}

#[tokio::test]
async fn writes_publish_invalidations() {
    use tokio_stream::StreamExt;

    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let mut pubsub = store.client().pubsub_client().get_async_pubsub().await.unwrap();
    pubsub.subscribe(INVALIDATION_CHANNEL).await.unwrap();
    let mut messages = pubsub.into_on_message();
    let mut next = async || -> Invalidation {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("an invalidation within 5 s")
            .expect("the subscription is open");
        let text: String = message.get_payload().unwrap();
        Invalidation::parse(&text).unwrap_or_else(|| panic!("not an invalidation: {text}"))
    };

    let at = now();
    let a = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    let b = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    store.revoke_key(&a.record.id, at).await.unwrap();
    assert_eq!(next().await, Invalidation::Digest(a.record.digest.hex.clone()), "creates publish nothing");
    store.set_plan(&policy, "big", "team").await.unwrap();
    assert_eq!(next().await, Invalidation::Tenant("big".into()));
    let c = store.rotate_key(&policy, &peppers, &b.record.id, minutes(5), at).await.unwrap();
    assert_eq!(next().await, Invalidation::Digest(b.record.digest.hex.clone()));
    let rotated = Peppers::from_entries(vec![("v2".into(), b"two".to_vec()), ("v1".into(), b"pepper-one".to_vec())]);
    let current = rotated.current(&c.secret);
    store.restore_digest(&c.record.id, current.clone()).await.unwrap();
    assert_eq!(next().await, Invalidation::Digest(c.record.digest.hex.clone()));
    assert_eq!(next().await, Invalidation::Digest(current.hex.clone()));
    let revoked = store.delete_tenant("big", at).await.unwrap();
    assert_eq!(revoked.len(), 2, "the rotated-out key and its replacement");
    assert_eq!(next().await, Invalidation::Tenant("big".into()));
    let mut digests = vec![next().await, next().await];
    digests.sort_by_key(Invalidation::encode);
    let mut expected = vec![Invalidation::Digest(b.record.digest.hex.clone()), Invalidation::Digest(current.hex)];
    expected.sort_by_key(Invalidation::encode);
    assert_eq!(digests, expected);
}

#[tokio::test]
async fn last_used_at_moves_forward_only_and_never_recreates_a_record() {
    let server = RedisServer::start();
    let store = populated(&server.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    let a = store.create_key(&policy, &peppers, &new_key("big"), at).await.unwrap();
    let b = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    let later = at + time::Duration::seconds(90);
    let used = vec![
        (a.record.id.clone(), "big".to_string(), later),
        (b.record.id.clone(), "acme".to_string(), at),
        ("key_gone".to_string(), "acme".to_string(), at),
    ];
    store.record_last_used(&used).await.unwrap();
    store.record_last_used(&[(a.record.id.clone(), "big".to_string(), at)]).await.unwrap();
    store.record_last_used(&[]).await.unwrap();
    let data = store.load_all().await.unwrap();
    assert_eq!(data.keys[&a.record.id].last_used_at, Some(later));
    assert_eq!(data.keys[&b.record.id].last_used_at, Some(at));
    assert_eq!(server.cli(&["EXISTS", &layout::key("acme", "key_gone")]).trim(), "0");
    // After a SCRIPT FLUSH the pipeline reloads its script.
    server.cli(&["SCRIPT", "FLUSH"]);
    let latest = later + time::Duration::seconds(90);
    store.record_last_used(&[(b.record.id.clone(), "acme".to_string(), latest)]).await.unwrap();
    assert_eq!(store.load_all().await.unwrap().keys[&b.record.id].last_used_at, Some(latest));
}

#[tokio::test]
async fn an_unreachable_store_is_an_error_never_unknown() {
    let mut server = RedisServer::start();
    let store = populated(&server.url()).await;
    let created = store.create_key(&policy(), &peppers(), &new_key("big"), now()).await.unwrap();
    server.kill();
    assert!(store.lookup(&peppers().all(&created.secret)).await.is_err());
    let err = store.revoke_key(&created.record.id, now()).await.unwrap_err();
    assert!(matches!(err, ManageError::Store(StoreError::Unavailable(_))), "{err}");
    let err = store.load_all().await.unwrap_err();
    assert!(matches!(err, ManageError::Store(StoreError::Unavailable(_))), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let store = store(&cluster.url()).await;
    let (policy, peppers) = (policy(), peppers());
    let at = now();
    // Enough tenants that their slots land on every node.
    let tenants: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    for tenant in &tenants {
        store.create_tenant(&policy, tenant, "pro", at).await.unwrap();
    }
    let mut keys = Vec::new();
    for tenant in &tenants {
        keys.push(store.create_key(&policy, &peppers, &new_key(tenant), at).await.unwrap());
    }
    let err = {
        store.create_key(&policy, &peppers, &new_key("t0"), at).await.unwrap();
        store.create_key(&policy, &peppers, &new_key("t0"), at).await.unwrap_err()
    };
    assert!(matches!(err, ManageError::CapReached { .. }), "{err}");
    for key in &keys {
        match found(&store, &peppers, key).await {
            Lookup::Found { key: record, tenant, .. } => {
                assert_eq!(*record, key.record);
                assert_eq!(tenant.map(|t| t.id.clone()), Some(key.record.tenant.clone()));
            }
            Lookup::NotFound => panic!("{} not found on the cluster", key.record.id),
        }
    }
    let revoked = store.revoke_key(&keys[1].record.id, at).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert!(matches!(found(&store, &peppers, &keys[1]).await, Lookup::Found { key, .. } if key.revoked_at.is_some()));
    let rotated = store.rotate_key(&policy, &peppers, &keys[2].record.id, minutes(5), at).await.unwrap();
    assert!(matches!(found(&store, &peppers, &rotated).await, Lookup::Found { .. }));
    store.set_plan(&policy, "t3", "agency").await.unwrap();
    assert_eq!(store.delete_tenant("t4", at).await.unwrap(), vec![keys[4].record.id.clone()]);
    let rotated_peppers =
        Peppers::from_entries(vec![("v2".into(), b"two".to_vec()), ("v1".into(), b"pepper-one".to_vec())]);
    store.restore_digest(&keys[5].record.id, rotated_peppers.current(&keys[5].secret)).await.unwrap();
    assert!(
        matches!(found(&store, &rotated_peppers, &keys[5]).await, Lookup::Found { ref matched, .. } if matched.pepper_id == "v2")
    );
    let used: Vec<(String, String, OffsetDateTime)> =
        keys.iter().map(|k| (k.record.id.clone(), k.record.tenant.clone(), at)).collect();
    store.record_last_used(&used).await.unwrap();

    let data = store.load_all().await.unwrap();
    assert_eq!(data.tenants.len(), 11);
    assert_eq!(data.tenants["t3"].plan, "agency");
    assert_eq!(data.keys.len(), 12 + 1 + 1);
    assert_eq!(data.keys[&keys[0].record.id].last_used_at, Some(at));
    assert!(data.keys[&keys[4].record.id].revoked_at.is_some());
    assert_eq!(data.keys[&keys[2].record.id].replaced_by.as_deref(), Some(rotated.record.id.as_str()));
}

/// A deletion that stopped after its first step (the tenant's hash gone and its keys
/// revoked, but the tenant still in `kg:tenants` and its index entries without their
/// 30-day TTL) is finished by deleting again, instead of "unknown tenant" for good.
#[tokio::test]
async fn deleting_again_finishes_a_deletion_whose_second_step_failed() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let (policy, peppers, at) = (policy(), peppers(), now());
    store.create_tenant(&policy, "acme", "pro", at).await.unwrap();
    let a = store.create_key(&policy, &peppers, &new_key("acme"), at).await.unwrap();
    assert_eq!(store.delete_tenant("acme", at).await.unwrap(), vec![a.record.id.clone()]);
    // Undo the second step: what a deletion whose second step failed leaves.
    let entries = [layout::digest(&a.record.digest), layout::key_id(&a.record.id)];
    for entry in &entries {
        assert_eq!(server.cli(&["PERSIST", entry]).trim(), "1");
    }
    server.cli(&["SADD", layout::TENANTS, "acme"]);
    server.cli(&["ZREM", layout::DELETED_TENANTS, "acme"]);
    assert!(!store.load_all().await.unwrap().tenants.contains_key("acme"), "no hash: not a tenant any more");

    let revoked = store.delete_tenant("acme", at).await.expect("deleting again finishes the deletion");
    assert_eq!(revoked, vec![a.record.id.clone()]);
    for entry in &entries {
        assert_tombstone_ttl(&server, entry);
    }
    assert_eq!(server.cli(&["SISMEMBER", layout::TENANTS, "acme"]).trim(), "0");
    assert!(!server.cli(&["ZSCORE", layout::DELETED_TENANTS, "acme"]).trim().is_empty(), "listed as deleted");
    // Finished: a third delete is an unknown tenant again.
    let err = store.delete_tenant("acme", at).await.unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
}
