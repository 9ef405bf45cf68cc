//! Unit tests of the lifecycle rules, applied to a `KeysData` in memory.

use std::path::Path;

use time::macros::datetime;

use super::*;
use crate::keys::{parse_secret, KeyDigest};

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
[plans.agency]
requests_per_minute = 1000

[upstreams.app]
url = "http://127.0.0.1:8080"

[[routes]]
prefix = "/v1/calls"
scopes = ["calls:read"]
upstream = "app"
"#;

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);

fn policy() -> Policy {
    match Policy::parse(POLICY, Path::new("routes.toml")) {
        Ok((policy, _warnings)) => policy,
        Err(errors) => panic!("test policy: {errors:?}"),
    }
}

fn peppers() -> Peppers {
    Peppers::from_entries(vec![("v1".into(), b"pepper-one".to_vec())])
}

fn new_key(tenant: &str) -> NewKey {
    NewKey {
        tenant: tenant.to_string(),
        name: "ci".to_string(),
        scopes: vec!["calls:read".to_string()],
        expires_in: None,
    }
}

/// A store with tenants `acme` (pro: max 2 keys), `big` (agency: unlimited) and
/// `free` (trial: no API access).
fn data() -> KeysData {
    let policy = policy();
    let mut data = KeysData::empty();
    create_tenant(&mut data, &policy, "acme", "pro", NOW).unwrap();
    create_tenant(&mut data, &policy, "big", "agency", NOW).unwrap();
    create_tenant(&mut data, &policy, "free", "trial", NOW).unwrap();
    data
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

#[test]
fn creates_a_tenant() {
    let data = data();
    let acme = &data.tenants["acme"];
    assert_eq!(acme.id, "acme");
    assert_eq!(acme.plan, "pro");
    assert_eq!(acme.created_at, NOW);
}

#[test]
fn refuses_invalid_and_duplicate_tenant_ids() {
    let policy = policy();
    let mut data = data();
    for bad in ["", "Acme", "-x", "a b", &"a".repeat(64)] {
        let err = create_tenant(&mut data, &policy, bad, "pro", NOW).unwrap_err();
        assert!(matches!(err, ManageError::InvalidTenantId(_)), "{bad}: {err}");
    }
    let err = create_tenant(&mut data, &policy, "acme", "pro", NOW).unwrap_err();
    assert!(matches!(err, ManageError::TenantExists(_)), "{err}");
}

#[test]
fn unknown_plan_lists_the_known_ones() {
    let policy = policy();
    let mut data = data();
    let err = create_tenant(&mut data, &policy, "new", "gold", NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownPlan { .. }), "{err}");
    assert_eq!(err.to_string(), "unknown plan `gold`; the policy defines: agency, pro, trial");
    let err = set_plan(&mut data, &policy, "acme", "gold").unwrap_err();
    assert!(matches!(err, ManageError::UnknownPlan { .. }), "{err}");
    assert_eq!(data.tenants["acme"].plan, "pro");
}

#[test]
fn set_plan_moves_a_tenant() {
    let policy = policy();
    let mut data = data();
    let tenant = set_plan(&mut data, &policy, "acme", "agency").unwrap();
    assert_eq!(tenant.plan, "agency");
    assert_eq!(data.tenants["acme"].plan, "agency");
    let err = set_plan(&mut data, &policy, "nobody", "pro").unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
}

#[test]
fn creates_a_key_storing_only_its_digest() {
    let policy = policy();
    let mut data = data();
    let created = create_key(&mut data, &policy, &peppers(), &new_key("acme"), NOW).unwrap();
    let record = &data.keys[&created.record.id];
    assert_eq!(record, &created.record);
    assert!(record.id.starts_with("key_"));
    assert_eq!(record.tenant, "acme");
    assert_eq!(record.name, "ci");
    assert_eq!(record.scopes, vec!["calls:read"]);
    assert_eq!(record.created_at, NOW);
    assert_eq!(record.expires_at, None);
    assert_eq!(record.digest, peppers().current(&created.secret));
    assert!(parse_secret(created.secret.expose()).is_ok());
    let json = serde_json::to_string(&data).unwrap();
    assert!(!json.contains(created.secret.expose()));
}

#[test]
fn create_key_needs_a_known_tenant_with_api_access() {
    let policy = policy();
    let mut data = data();
    let err = create_key(&mut data, &policy, &peppers(), &new_key("nobody"), NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
    let err = create_key(&mut data, &policy, &peppers(), &new_key("free"), NOW).unwrap_err();
    assert!(matches!(err, ManageError::NoApiAccess(ref p) if p == "trial"), "{err}");
    let err = create_key(&mut data, &policy, &peppers(), &new_key("Bad Id"), NOW).unwrap_err();
    assert!(matches!(err, ManageError::InvalidTenantId(_)), "{err}");
    // A tenant whose plan left the policy.
    data.tenants.get_mut("acme").unwrap().plan = "retired".into();
    let err = create_key(&mut data, &policy, &peppers(), &new_key("acme"), NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownPlan { .. }), "{err}");
    assert!(data.keys.is_empty());
}

#[test]
fn create_key_checks_scopes() {
    let policy = policy();
    let mut data = data();
    let mut new = new_key("acme");
    new.scopes = vec![];
    let err = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap_err();
    assert!(matches!(err, ManageError::NoScopes), "{err}");
    new.scopes = vec!["calls:read".into(), "calls:delete".into()];
    let err = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown scope `calls:delete`; the policy's [scopes] are: calls:read, calls:write, contacts:read"
    );
    new.scopes = vec!["calls:write".into(), "calls:read".into(), "calls:write".into()];
    let created = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap();
    assert_eq!(created.record.scopes, vec!["calls:write", "calls:read"]);
}

#[test]
fn create_key_checks_the_name() {
    let policy = policy();
    let mut data = data();
    for bad in ["".to_string(), "   ".to_string(), "a".repeat(101), "new\nline".to_string(), "tab\there".to_string()] {
        let mut new = new_key("acme");
        new.name = bad.clone();
        let err = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap_err();
        assert!(matches!(err, ManageError::InvalidName(_)), "{bad:?}: {err}");
    }
    let mut new = new_key("acme");
    new.name = "é".repeat(100);
    assert!(create_key(&mut data, &policy, &peppers(), &new, NOW).is_ok());
}

#[test]
fn expires_in_sets_expires_at() {
    let policy = policy();
    let mut data = data();
    let mut new = new_key("acme");
    new.expires_in = Some(Duration::from_secs(90 * 86_400));
    let created = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap();
    assert_eq!(created.record.expires_at, Some(datetime!(2025-08-30 12:00 UTC)));
    new.expires_in = Some(Duration::ZERO);
    let err = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap_err();
    assert!(matches!(err, ManageError::InvalidExpiry(_)), "{err}");
    new.expires_in = Some(Duration::from_secs(u64::MAX / 1000));
    let err = create_key(&mut data, &policy, &peppers(), &new, NOW).unwrap_err();
    assert!(matches!(err, ManageError::InvalidExpiry(_)), "{err}");
}

#[test]
fn max_keys_counts_only_working_keys_not_in_grace() {
    let policy = policy();
    let peppers = peppers();
    let mut data = data();
    let first = create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).unwrap();
    create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).unwrap();
    let err = create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).unwrap_err();
    assert!(
        matches!(err, ManageError::CapReached { ref tenant, ref plan, max: 2 } if tenant == "acme" && plan == "pro"),
        "{err}"
    );
    // A revoked key frees a slot.
    revoke_key(&mut data, &first.record.id, NOW).unwrap();
    let third = create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).unwrap();
    assert!(create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).is_err());
    // An expired key frees a slot.
    data.keys.get_mut(&third.record.id).unwrap().expires_at = Some(NOW);
    let fourth = create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).unwrap();
    assert!(create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).is_err());
    // Rotation needs no free slot, and the old key in its grace does not count.
    let rotated = rotate_key(&mut data, &policy, &peppers, &fourth.record.id, minutes(60), NOW).unwrap();
    assert_eq!(counted_keys(&data, "acme", NOW), 2);
    assert!(create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).is_err());
    revoke_key(&mut data, &rotated.record.id, NOW).unwrap();
    assert!(create_key(&mut data, &policy, &peppers, &new_key("acme"), NOW).is_ok());
    // Other tenants' keys do not count; no max_keys is no cap.
    for _ in 0..5 {
        create_key(&mut data, &policy, &peppers, &new_key("big"), NOW).unwrap();
    }
}

#[test]
fn revokes_a_key_once() {
    let policy = policy();
    let mut data = data();
    let created = create_key(&mut data, &policy, &peppers(), &new_key("acme"), NOW).unwrap();
    let id = created.record.id;
    let revoked = revoke_key(&mut data, &id, NOW).unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW));
    assert_eq!(data.keys[&id].state(NOW), KeyState::Revoked);
    let err = revoke_key(&mut data, &id, NOW).unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    let err = revoke_key(&mut data, "key_nope", NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownKey(_)), "{err}");
}

#[test]
fn delete_tenant_tombstones_its_keys() {
    let policy = policy();
    let mut data = data();
    let a = create_key(&mut data, &policy, &peppers(), &new_key("acme"), NOW).unwrap();
    let b = create_key(&mut data, &policy, &peppers(), &new_key("acme"), NOW).unwrap();
    let other = create_key(&mut data, &policy, &peppers(), &new_key("big"), NOW).unwrap();
    revoke_key(&mut data, &b.record.id, datetime!(2025-05-01 0:00 UTC)).unwrap();
    let revoked = delete_tenant(&mut data, "acme", NOW).unwrap();
    assert_eq!(revoked, vec![a.record.id.clone()]);
    assert!(!data.tenants.contains_key("acme"));
    assert_eq!(data.keys[&a.record.id].revoked_at, Some(NOW));
    // An earlier revocation keeps its time.
    assert_eq!(data.keys[&b.record.id].revoked_at, Some(datetime!(2025-05-01 0:00 UTC)));
    assert_eq!(data.keys[&other.record.id].state(NOW), KeyState::Active);
    let err = delete_tenant(&mut data, "acme", NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownTenant(_)), "{err}");
}

#[test]
fn rotation_keeps_tenant_name_scopes_and_expiry() {
    let policy = policy();
    let peppers = peppers();
    let mut data = data();
    let mut new = new_key("big");
    new.name = "billing".into();
    new.scopes = vec!["calls:read".into(), "contacts:read".into()];
    new.expires_in = Some(Duration::from_secs(86_400));
    let old = create_key(&mut data, &policy, &peppers, &new, NOW).unwrap();
    let later = NOW + time::Duration::minutes(10);
    let rotated = rotate_key(&mut data, &policy, &peppers, &old.record.id, minutes(60), later).unwrap();
    let new_record = &data.keys[&rotated.record.id];
    assert_ne!(new_record.id, old.record.id);
    assert_ne!(rotated.secret, old.secret);
    assert_eq!(new_record.tenant, "big");
    assert_eq!(new_record.name, "billing");
    assert_eq!(new_record.scopes, old.record.scopes);
    assert_eq!(new_record.created_at, later);
    assert_eq!(new_record.expires_at, old.record.expires_at);
    let old_record = &data.keys[&old.record.id];
    assert_eq!(old_record.replaced_by.as_deref(), Some(new_record.id.as_str()));
    assert_eq!(old_record.expires_at, Some(later + time::Duration::hours(1)));
    assert_eq!(old_record.state(later + time::Duration::minutes(59)), KeyState::Active);
    assert_eq!(old_record.state(later + time::Duration::hours(1)), KeyState::Expired);
}

#[test]
fn rotation_grace_never_extends_an_expiry() {
    let policy = policy();
    let peppers = peppers();
    let mut data = data();
    let mut new = new_key("big");
    new.expires_in = Some(minutes(30));
    let old = create_key(&mut data, &policy, &peppers, &new, NOW).unwrap();
    let rotated = rotate_key(&mut data, &policy, &peppers, &old.record.id, minutes(60), NOW).unwrap();
    assert_eq!(data.keys[&old.record.id].expires_at, Some(NOW + time::Duration::minutes(30)));
    assert_eq!(rotated.record.expires_at, Some(NOW + time::Duration::minutes(30)));
    // Without an expiry, a rotated key has none either; grace 0 ends the old at once.
    let old = create_key(&mut data, &policy, &peppers, &new_key("big"), NOW).unwrap();
    let rotated = rotate_key(&mut data, &policy, &peppers, &old.record.id, Duration::ZERO, NOW).unwrap();
    assert_eq!(rotated.record.expires_at, None);
    assert_eq!(data.keys[&old.record.id].state(NOW), KeyState::Expired);
}

#[test]
fn rotation_needs_an_active_key_not_yet_rotated() {
    let policy = policy();
    let peppers = peppers();
    let mut data = data();
    let err = rotate_key(&mut data, &policy, &peppers, "key_nope", minutes(60), NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownKey(_)), "{err}");
    let revoked = create_key(&mut data, &policy, &peppers, &new_key("big"), NOW).unwrap();
    revoke_key(&mut data, &revoked.record.id, NOW).unwrap();
    let err = rotate_key(&mut data, &policy, &peppers, &revoked.record.id, minutes(60), NOW).unwrap_err();
    assert!(matches!(err, ManageError::Revoked(_)), "{err}");
    let mut new = new_key("big");
    new.expires_in = Some(minutes(1));
    let expired = create_key(&mut data, &policy, &peppers, &new, NOW).unwrap();
    let later = NOW + time::Duration::minutes(2);
    let err = rotate_key(&mut data, &policy, &peppers, &expired.record.id, minutes(60), later).unwrap_err();
    assert!(matches!(err, ManageError::Expired(_)), "{err}");
    let old = create_key(&mut data, &policy, &peppers, &new_key("big"), NOW).unwrap();
    let first = rotate_key(&mut data, &policy, &peppers, &old.record.id, minutes(60), NOW).unwrap();
    let err = rotate_key(&mut data, &policy, &peppers, &old.record.id, minutes(60), NOW).unwrap_err();
    assert!(matches!(err, ManageError::Replaced { ref by, .. } if *by == first.record.id), "{err}");
    let keys_before = data.keys.len();
    // A scope dropped from the policy cannot be carried over.
    data.keys.get_mut(&first.record.id).unwrap().scopes = vec!["gone:scope".into()];
    let err = rotate_key(&mut data, &policy, &peppers, &first.record.id, minutes(60), NOW).unwrap_err();
    assert!(matches!(err, ManageError::UnknownScope { .. }), "{err}");
    assert_eq!(data.keys.len(), keys_before);
    assert_eq!(data.keys[&first.record.id].replaced_by, None);
}

#[test]
fn prunes_tombstones_after_30_days() {
    let policy = policy();
    let mut data = data();
    let old = create_key(&mut data, &policy, &peppers(), &new_key("big"), NOW).unwrap();
    let recent = create_key(&mut data, &policy, &peppers(), &new_key("big"), NOW).unwrap();
    let active = create_key(&mut data, &policy, &peppers(), &new_key("big"), NOW).unwrap();
    let mut expired_new = new_key("big");
    expired_new.expires_in = Some(minutes(1));
    let expired = create_key(&mut data, &policy, &peppers(), &expired_new, NOW).unwrap();
    revoke_key(&mut data, &old.record.id, NOW).unwrap();
    revoke_key(&mut data, &recent.record.id, NOW + time::Duration::days(2)).unwrap();
    let at = NOW + time::Duration::days(30);
    prune_tombstones(&mut data, at);
    assert!(data.keys.contains_key(&old.record.id), "exactly 30 days: kept");
    prune_tombstones(&mut data, at + time::Duration::seconds(1));
    assert!(!data.keys.contains_key(&old.record.id));
    assert!(data.keys.contains_key(&recent.record.id));
    assert!(data.keys.contains_key(&active.record.id));
    assert!(data.keys.contains_key(&expired.record.id));
}

#[test]
fn restores_a_digest_under_the_current_pepper() {
    let policy = policy();
    let old_peppers = peppers();
    let mut data = data();
    let created = create_key(&mut data, &policy, &old_peppers, &new_key("big"), NOW).unwrap();
    let new_peppers =
        Peppers::from_entries(vec![("v2".into(), b"pepper-two".to_vec()), ("v1".into(), b"pepper-one".to_vec())]);
    let all = new_peppers.all(&created.secret);
    assert_eq!(all[1], data.keys[&created.record.id].digest, "found under the old pepper");
    let current = new_peppers.current(&created.secret);
    restore_digest(&mut data, &created.record.id, current.clone());
    assert_eq!(data.keys[&created.record.id].digest, current);
    assert_eq!(data.keys[&created.record.id].digest.pepper_id, "v2");
    // Gone key: a no-op.
    let before = data.clone();
    restore_digest(&mut data, "key_gone", KeyDigest { pepper_id: "v2".into(), hex: "00".into() });
    assert_eq!(data, before);
}
