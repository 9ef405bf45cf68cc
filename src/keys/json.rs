//! How keys and tenants are shown as JSON: one definition for `keygate keys|tenants …
//! --json` and the admin API (docs/reference.md §1, 5.2), so that both print exactly the same objects.
//! Only [`created_key`] carries a secret, the one time it is shown.

use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::data::KeysData;
use super::manage::{CreatedKey, ManageError};
use super::{KeyRecord, KeyState, TenantRecord};
use crate::policy::overrides::{effective, LimitOverrides};
use crate::policy::Policy;

/// RFC 3339, as in the store and every JSON output.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `active`, `expired` or `revoked`.
pub(crate) fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::Expired => "expired",
        KeyState::Revoked => "revoked",
    }
}

/// A key as `keys list`, `keys show` and `GET /admin/v1/keys[/ID]` show it: never the
/// secret nor the digest. `replaced_by` only on the old key of a rotation.
pub(crate) fn key(key: &KeyRecord, now: OffsetDateTime) -> Value {
    let mut value = json!({
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": rfc3339(key.created_at),
        "expires_at": key.expires_at.map(rfc3339),
        "last_used_at": key.last_used_at.map(rfc3339),
        "revoked_at": key.revoked_at.map(rfc3339),
        "state": state_name(key.state(now)),
    });
    if let (Some(by), Value::Object(map)) = (&key.replaced_by, &mut value) {
        map.insert("replaced_by".to_string(), Value::String(by.clone()));
    }
    value
}

/// The old key of a rotation, as the rotation's output names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replaced {
    pub id: String,
    /// When the old key stops working: the end of its grace, or its own expiry if sooner.
    pub expires_at: Option<OffsetDateTime>,
}

impl Replaced {
    /// The old key `id` after a rotation that issued `created` with `grace`. The rotation
    /// gives the new key the old one's expiry and its own `created_at` as the start of
    /// the grace (`manage::rotate_key`), so the old key's new expiry follows from the
    /// created record alone, without reading the store again (which, after the secret
    /// was issued, must not be a reason to fail).
    pub(crate) fn after_rotation(id: &str, created: &CreatedKey, grace: Duration) -> Replaced {
        let record = &created.record;
        let grace_end = record.created_at.checked_add(time::Duration::try_from(grace).unwrap_or(time::Duration::MAX));
        let expires_at = match (record.expires_at, grace_end) {
            (Some(own), Some(end)) => Some(own.min(end)),
            (own, end) => own.or(end),
        };
        Replaced { id: id.to_string(), expires_at }
    }
}

/// A key just created (`keys create`, `POST /admin/v1/keys`) or issued by a rotation of
/// `replaced` (`keys rotate`, `POST /admin/v1/keys/ID/rotate`), with its secret: the
/// one time it is shown.
pub(crate) fn created_key(created: &CreatedKey, replaced: Option<&Replaced>) -> Value {
    let record = &created.record;
    let mut value = json!({
        "id": record.id,
        "key": created.secret.expose(),
        "tenant": record.tenant,
        "name": record.name,
        "scopes": record.scopes,
        "created_at": rfc3339(record.created_at),
        "expires_at": record.expires_at.map(rfc3339),
    });
    if let (Some(old), Value::Object(map)) = (replaced, &mut value) {
        map.insert("replaces".to_string(), Value::String(old.id.clone()));
        map.insert("replaced_expires_at".to_string(), json!(old.expires_at.map(rfc3339)));
    }
    value
}

/// `{id, plan, created_at}`, plus `active_keys` in lists and `GET /admin/v1/tenants/ID`.
pub(crate) fn tenant(tenant: &TenantRecord, active_keys: Option<usize>) -> Value {
    let mut value = json!({
        "id": tenant.id,
        "plan": tenant.plan,
        "created_at": rfc3339(tenant.created_at),
    });
    if let (Some(count), Value::Object(map)) = (active_keys, &mut value) {
        map.insert("active_keys".to_string(), json!(count));
    }
    value
}

/// The effective limits of a tenant (or of one of its keys) under `policy`: each limit in
/// the policy's shape with where it comes from (`"source": "plan" | "tenant" | "key"`),
/// the `concurrency` override if any (with its source; `null`: the plan's applies), and
/// the overrides as stored (`tenants|keys set-limits`, `GET
/// /admin/v1/{tenants,keys}/…/limits`).
pub(crate) fn effective_limits(policy: &Policy, tenant: &TenantRecord, key: Option<&KeyRecord>) -> Value {
    let none = LimitOverrides::default();
    let key_overrides = key.map_or(&none, |k| &k.overrides);
    let plan = policy.plans.get(&tenant.plan);
    let plan_limits = plan.map_or(&[][..], |p| p.limits.as_slice());
    let limits: Vec<Value> = effective(plan_limits, &tenant.overrides, key_overrides)
        .into_iter()
        .map(|(limit, source)| {
            let raw = LimitOverrides { limits: vec![limit], concurrency: None }.to_raw();
            let mut value = serde_json::to_value(&raw.limits[0]).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("source".to_string(), json!(source.as_str()));
            }
            value
        })
        .collect();
    let concurrency = match (key_overrides.concurrency, tenant.overrides.concurrency) {
        (Some(n), _) => json!({"value": n, "source": "key"}),
        (None, Some(n)) => json!({"value": n, "source": "tenant"}),
        (None, None) => Value::Null,
    };
    let mut value = json!({
        "tenant": tenant.id,
        "plan": tenant.plan,
        "plan_in_policy": plan.is_some(),
        "limits": limits,
        "concurrency": concurrency,
        "overrides": {"tenant": tenant.overrides.to_raw()},
    });
    if let (Some(key), Value::Object(map)) = (key, &mut value) {
        map.insert("key".to_string(), json!(key.id));
        if let Some(Value::Object(overrides)) = map.get_mut("overrides") {
            overrides.insert("key".to_string(), serde_json::to_value(key.overrides.to_raw()).unwrap_or(Value::Null));
        }
    }
    value
}

/// Every tenant with its active key count (`tenants list --json`, `GET /admin/v1/tenants`).
pub(crate) fn tenants(data: &KeysData, now: OffsetDateTime) -> Value {
    Value::Array(data.tenants.values().map(|t| tenant(t, Some(active_keys(data, &t.id, now)))).collect())
}

/// A deleted tenant (as it was) and the ids of the keys its deletion revoked.
pub(crate) fn deleted_tenant(id: &str, record: Option<&TenantRecord>, revoked: &[String]) -> Value {
    let mut value = record.map_or_else(|| json!({ "id": id }), |t| tenant(t, None));
    if let Value::Object(map) = &mut value {
        map.insert("revoked_keys".to_string(), json!(revoked));
    }
    value
}

/// The tenant's keys that work now (old keys in their rotation grace included).
pub(crate) fn active_keys(data: &KeysData, tenant: &str, now: OffsetDateTime) -> usize {
    data.keys.values().filter(|k| k.tenant == tenant && k.state(now) == KeyState::Active).count()
}

/// The keys `keys list [--tenant T]` and `GET /admin/v1/keys[?tenant=T]` show, revoked
/// ones too, ordered by tenant, creation and id. A tenant that neither exists nor owns a
/// key (a deleted tenant's tombstones still list) is unknown.
pub(crate) fn listed_keys<'d>(data: &'d KeysData, tenant: Option<&str>) -> Result<Vec<&'d KeyRecord>, ManageError> {
    if let Some(tenant) = tenant {
        if !data.tenants.contains_key(tenant) && !data.keys.values().any(|k| k.tenant == tenant) {
            return Err(ManageError::UnknownTenant(tenant.to_string()));
        }
    }
    let mut keys: Vec<&KeyRecord> = data.keys.values().filter(|k| tenant.is_none_or(|t| k.tenant == t)).collect();
    keys.sort_by(|a, b| (&a.tenant, a.created_at, &a.id).cmp(&(&b.tenant, b.created_at, &b.id)));
    Ok(keys)
}

/// The keys of [`listed_keys`] as a JSON array.
pub(crate) fn keys(keys: &[&KeyRecord], now: OffsetDateTime) -> Value {
    Value::Array(keys.iter().map(|k| key(k, now)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_secret, KeyDigest};
    use time::macros::datetime;

    fn record() -> KeyRecord {
        KeyRecord {
            id: "key_abc".to_string(),
            tenant: "acme".to_string(),
            name: "ci".to_string(),
            scopes: vec!["calls:read".to_string()],
            created_at: datetime!(2025-01-01 00:00 UTC),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            replaced_by: Some("key_def".to_string()),
            digest: KeyDigest { pepper_id: "sha256".to_string(), hex: "00".to_string() },
            overrides: Default::default(),
        }
    }

    #[test]
    fn key_has_the_spec_fields_and_no_secret() {
        let value = key(&record(), datetime!(2025-02-01 00:00 UTC));
        for field in
            ["id", "tenant", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at", "state"]
        {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert!(value.get("key").is_none());
        assert!(value.get("digest").is_none());
        assert_eq!(value["expires_at"], Value::Null);
        assert_eq!(value["created_at"], "2025-01-01T00:00:00Z");
        assert_eq!(value["state"], "active");
        assert_eq!(value["replaced_by"], "key_def");
    }

    #[test]
    fn created_key_shows_the_secret_and_the_replaced_key() {
        let created = CreatedKey { record: record(), secret: generate_secret() };
        let value = created_key(&created, None);
        assert_eq!(value["key"], created.secret.expose());
        assert!(value.get("replaces").is_none());
        let replaced = Replaced::after_rotation("key_old", &created, Duration::from_secs(3600));
        assert_eq!(replaced.expires_at, Some(datetime!(2025-01-01 01:00 UTC)));
        let value = created_key(&created, Some(&replaced));
        assert_eq!(value["replaces"], "key_old");
        assert_eq!(value["replaced_expires_at"], "2025-01-01T01:00:00Z");
    }

    #[test]
    fn a_rotated_key_expiring_before_its_grace_keeps_its_expiry() {
        let mut record = record();
        record.expires_at = Some(datetime!(2025-01-01 00:30 UTC));
        let created = CreatedKey { record, secret: generate_secret() };
        let replaced = Replaced::after_rotation("key_old", &created, Duration::from_secs(3600));
        assert_eq!(replaced.expires_at, Some(datetime!(2025-01-01 00:30 UTC)));
    }

    #[test]
    fn tenants_carry_their_active_key_count() {
        let mut data = KeysData::empty();
        let acme = TenantRecord {
            id: "acme".into(),
            plan: "pro".into(),
            created_at: datetime!(2025-01-01 00:00 UTC),
            overrides: Default::default(),
        };
        data.tenants.insert("acme".into(), acme.clone());
        let mut active = record();
        active.replaced_by = None;
        let mut revoked = record();
        revoked.id = "key_rev".into();
        revoked.revoked_at = Some(datetime!(2025-01-02 00:00 UTC));
        data.keys.insert(active.id.clone(), active);
        data.keys.insert(revoked.id.clone(), revoked);
        let list = tenants(&data, datetime!(2025-02-01 00:00 UTC));
        assert_eq!(list[0]["active_keys"], 1);
        assert_eq!(tenant(&acme, None).get("active_keys"), None);
        let deleted = deleted_tenant("acme", Some(&acme), &["key_abc".to_string()]);
        assert_eq!(deleted["plan"], "pro");
        assert_eq!(deleted["revoked_keys"], json!(["key_abc"]));
        assert_eq!(listed_keys(&data, Some("acme")).map(|k| k.len()).ok(), Some(2));
        assert!(matches!(listed_keys(&data, Some("nobody")), Err(ManageError::UnknownTenant(_))));
    }
}
