//! The rules of the tenant and key lifecycle (docs/reference.md §1, 3), shared by the CLI and the admin
//! API: plans must exist and allow API access, `max_keys` holds, scopes come from the
//! policy, rotation keeps tenant, name and scopes and puts the old key in its grace.
//!
//! Two layers: the `check_*` functions and [`counts_against_max_keys`] are the rules
//! themselves, pure and store-agnostic, so that the file store (below) and the Redis store
//! (`redis_store`, whose checks that depend on stored state run inside Lua scripts)
//! refuse the same things with the same errors; the lifecycle functions apply them to a
//! [`KeysData`], which the file store runs under its lock.

use std::time::Duration;

use time::OffsetDateTime;

use super::data::{KeysData, StoreError};
use super::{valid_tenant_id, KeyRecord, KeyState, Peppers, Secret, TenantRecord};
use crate::policy::overrides::{effective, LimitOverrides};
use crate::policy::{Plan, Policy};

/// A refused lifecycle operation; each message is one actionable line.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("invalid tenant id `{0}`: use 1-63 characters of a-z 0-9 _ -, starting with a letter or digit")]
    InvalidTenantId(String),
    #[error("unknown tenant `{0}` (see `keygate tenants list`)")]
    UnknownTenant(String),
    #[error("tenant `{0}` already exists")]
    TenantExists(String),
    #[error("unknown plan `{plan}`; the policy defines: {known}")]
    UnknownPlan { plan: String, known: String },
    #[error("plan `{0}` has no API access (api_access = false); move the tenant to another plan first")]
    NoApiAccess(String),
    #[error("tenant `{tenant}` already has {max} active keys, the cap of plan `{plan}`; revoke one first")]
    CapReached { tenant: String, plan: String, max: u32 },
    #[error("unknown scope `{scope}`; the policy's [scopes] are: {known}")]
    UnknownScope { scope: String, known: String },
    #[error("a key needs at least one scope (--scopes a,b)")]
    NoScopes,
    #[error("invalid key name: {0}")]
    InvalidName(String),
    #[error("unknown key `{0}` (see `keygate keys list`)")]
    UnknownKey(String),
    #[error("key `{0}` is revoked")]
    Revoked(String),
    #[error("key `{0}` has expired")]
    Expired(String),
    #[error("key `{id}` was already rotated: it is replaced by `{by}` (rotate that one instead)")]
    Replaced { id: String, by: String },
    #[error("invalid expiry: {0}")]
    InvalidExpiry(String),
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key just created: its record and, this once, its secret.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: KeyRecord,
    pub secret: Secret,
}

/// The parameters of `keys create`.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in: Option<Duration>,
}

/// How long revoked keys are kept as tombstones, so that 401 says "revoked" rather than
/// "unknown" (docs/reference.md §3).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// The longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Creates a tenant on a plan of the policy (one with or without API access).
pub fn create_tenant(
    data: &mut KeysData,
    policy: &Policy,
    id: &str,
    plan: &str,
    now: OffsetDateTime,
) -> Result<TenantRecord, ManageError> {
    check_tenant_id(id)?;
    if data.tenants.contains_key(id) {
        return Err(ManageError::TenantExists(id.to_string()));
    }
    check_plan(policy, plan)?;
    let record =
        TenantRecord { id: id.to_string(), plan: plan.to_string(), created_at: now, overrides: Default::default() };
    data.tenants.insert(id.to_string(), record.clone());
    Ok(record)
}

/// Moves a tenant to another plan of the policy. Its keys stay as they are, even past
/// the new plan's `max_keys` (which only limits new keys).
pub fn set_plan(data: &mut KeysData, policy: &Policy, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
    check_plan(policy, plan)?;
    let tenant = data.tenants.get_mut(id).ok_or_else(|| ManageError::UnknownTenant(id.to_string()))?;
    tenant.plan = plan.to_string();
    Ok(tenant.clone())
}

/// Checks a tenant's limit overrides against its plan in the policy: the effective set
/// may not hold two limits of different names over one window or period (they would
/// share one counter). A plan missing from the policy has no limits to clash with.
pub fn check_tenant_limits(
    policy: &Policy,
    tenant: &TenantRecord,
    overrides: &LimitOverrides,
) -> Result<(), ManageError> {
    let plan = policy.plans.get(&tenant.plan).map_or(&[][..], |plan| plan.limits.as_slice());
    overrides.check_against(plan).map_err(ManageError::InvalidLimits)
}

/// Checks a key's limit overrides against its tenant's effective limits (plan and tenant
/// overrides), as [`check_tenant_limits`] does.
pub fn check_key_limits(policy: &Policy, tenant: &TenantRecord, overrides: &LimitOverrides) -> Result<(), ManageError> {
    let plan = policy.plans.get(&tenant.plan).map_or(&[][..], |plan| plan.limits.as_slice());
    let base: Vec<_> =
        effective(plan, &tenant.overrides, &LimitOverrides::default()).into_iter().map(|(l, _)| l).collect();
    overrides.check_against(&base).map_err(ManageError::InvalidLimits)
}

/// Replaces a tenant's limit overrides (empty overrides clear them).
pub fn set_tenant_limits(
    data: &mut KeysData,
    policy: &Policy,
    id: &str,
    overrides: &LimitOverrides,
) -> Result<TenantRecord, ManageError> {
    let tenant = data.tenants.get_mut(id).ok_or_else(|| ManageError::UnknownTenant(id.to_string()))?;
    check_tenant_limits(policy, tenant, overrides)?;
    tenant.overrides = overrides.clone();
    Ok(tenant.clone())
}

/// Replaces a key's limit overrides (empty overrides clear them). A revoked key is
/// refused; an expired one is not (it may be un-expired by no command, but its record
/// is still shown).
pub fn set_key_limits(
    data: &mut KeysData,
    policy: &Policy,
    id: &str,
    overrides: &LimitOverrides,
) -> Result<KeyRecord, ManageError> {
    let key = data.keys.get(id).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    if key.revoked_at.is_some() {
        return Err(ManageError::Revoked(id.to_string()));
    }
    let tenant = data.tenants.get(&key.tenant).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    check_key_limits(policy, tenant, overrides)?;
    let key = data.keys.get_mut(id).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    key.overrides = overrides.clone();
    Ok(key.clone())
}

/// Deletes the tenant and revokes (tombstones) all its keys; returns the revoked key ids.
pub fn delete_tenant(data: &mut KeysData, id: &str, now: OffsetDateTime) -> Result<Vec<String>, ManageError> {
    if data.tenants.remove(id).is_none() {
        return Err(ManageError::UnknownTenant(id.to_string()));
    }
    let mut revoked = Vec::new();
    for key in data.keys.values_mut() {
        if key.tenant == id && key.revoked_at.is_none() {
            key.revoked_at = Some(now);
            revoked.push(key.id.clone());
        }
    }
    Ok(revoked)
}

/// Creates a key: the tenant exists, its plan exists and has API access, the tenant is
/// under the plan's `max_keys`, the scopes are in the policy's `[scopes]`, and the name is
/// 1–100 characters with no control character. The secret is returned this once; only
/// its digest under the current pepper is stored.
pub fn create_key(
    data: &mut KeysData,
    policy: &Policy,
    peppers: &Peppers,
    new: &NewKey,
    now: OffsetDateTime,
) -> Result<CreatedKey, ManageError> {
    let valid = check_new_key(policy, new, now)?;
    let tenant = data.tenants.get(&new.tenant).ok_or_else(|| ManageError::UnknownTenant(new.tenant.clone()))?;
    let plan = check_key_plan(policy, &tenant.plan)?;
    check_cap(plan, &new.tenant, counted_keys(data, &new.tenant, now))?;
    let mut id = super::generate_key_id();
    while data.keys.contains_key(&id) {
        id = super::generate_key_id();
    }
    let created = new_key_record(peppers, id, &new.tenant, &new.name, valid.scopes, valid.expires_at, now);
    data.keys.insert(created.record.id.clone(), created.record.clone());
    Ok(created)
}

/// Revokes a key: it becomes a tombstone, kept 30 days (see [`prune_tombstones`]).
pub fn revoke_key(data: &mut KeysData, id: &str, now: OffsetDateTime) -> Result<KeyRecord, ManageError> {
    let key = data.keys.get_mut(id).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    check_revocable(key)?;
    key.revoked_at = Some(now);
    Ok(key.clone())
}

/// Issues a new key with the old one's tenant, name and scopes; the old one expires after
/// `grace` (or sooner, if it already expires sooner) and is marked `replaced_by`.
///
/// The old key must be active and not already rotated. The new key keeps the old one's
/// absolute expiry, if it had one, and its limit overrides. The rules of [`create_key`] hold again (tenant, plan
/// with API access, scopes still in the policy), except `max_keys`: the old key in its
/// grace does not count, so a rotation never needs a free slot.
pub fn rotate_key(
    data: &mut KeysData,
    policy: &Policy,
    peppers: &Peppers,
    id: &str,
    grace: Duration,
    now: OffsetDateTime,
) -> Result<CreatedKey, ManageError> {
    let old = data.keys.get(id).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    let rotation = check_rotation(policy, old, data.tenants.get(&old.tenant), grace, now)?;
    let (tenant, name, expires_at) = (old.tenant.clone(), old.name.clone(), old.expires_at);
    let overrides = old.overrides.clone();
    let mut new_id = super::generate_key_id();
    while data.keys.contains_key(&new_id) {
        new_id = super::generate_key_id();
    }
    let mut created = new_key_record(peppers, new_id, &tenant, &name, rotation.scopes, expires_at, now);
    // The new key keeps the old one's limit overrides.
    created.record.overrides = overrides;
    data.keys.insert(created.record.id.clone(), created.record.clone());
    if let Some(old) = data.keys.get_mut(id) {
        old.replaced_by = Some(created.record.id.clone());
        old.expires_at = Some(rotation.old_expires_at);
    }
    Ok(created)
}

/// Removes tombstones (revoked keys) older than 30 days; run on every write.
pub fn prune_tombstones(data: &mut KeysData, now: OffsetDateTime) {
    let Some(cutoff) = add_checked(now, TOMBSTONE_TTL, false) else {
        return;
    };
    data.keys.retain(|_, key| key.revoked_at.is_none_or(|t| t >= cutoff));
}

/// Re-stores a key found under an old pepper under the current one (docs/reference.md §3). A no-op when
/// the key is gone or already re-stored.
pub fn restore_digest(data: &mut KeysData, key_id: &str, current: super::KeyDigest) {
    if let Some(key) = data.keys.get_mut(key_id) {
        if key.digest != current {
            key.digest = current;
        }
    }
}

/// The keys of `tenant` that count against `max_keys` at `now` (see
/// [`counts_against_max_keys`]).
pub fn counted_keys(data: &KeysData, tenant: &str, now: OffsetDateTime) -> usize {
    data.keys.values().filter(|k| k.tenant == tenant && counts_against_max_keys(k, now)).count()
}

/// Whether a key counts against its tenant's `max_keys` at `now`: it is neither revoked
/// nor expired, and not an old key in its rotation grace (`replaced_by` set). The Redis
/// store's create script counts by the same rule.
pub fn counts_against_max_keys(key: &KeyRecord, now: OffsetDateTime) -> bool {
    key.state(now) == KeyState::Active && key.replaced_by.is_none()
}

// ---------------------------------------------------------------------------------------
// The rules, one function each, in the order the lifecycle functions apply them.

/// A new key's request, checked: its scopes (deduplicated, in the order given) and its
/// absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNewKey {
    pub scopes: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
}

/// The checks of `keys create` that need no stored state, in this order: tenant id, name,
/// scopes, expiry. What remains (the tenant exists, its plan exists and has API access,
/// the cap) needs the store: [`check_key_plan`] and [`check_cap`].
pub fn check_new_key(policy: &Policy, new: &NewKey, now: OffsetDateTime) -> Result<ValidNewKey, ManageError> {
    check_tenant_id(&new.tenant)?;
    check_name(&new.name)?;
    let scopes = check_scopes(policy, &new.scopes)?;
    let expires_at = check_expires_in(new.expires_in, now)?;
    Ok(ValidNewKey { scopes, expires_at })
}

/// A tenant id: 1–63 characters of `a-z 0-9 _ -`, starting with a letter or digit.
pub fn check_tenant_id(id: &str) -> Result<(), ManageError> {
    if valid_tenant_id(id) {
        Ok(())
    } else {
        Err(ManageError::InvalidTenantId(id.to_string()))
    }
}

/// The plan named `plan`, or an error listing the policy's plans.
pub fn check_plan<'p>(policy: &'p Policy, plan: &str) -> Result<&'p Plan, ManageError> {
    policy.plans.get(plan).ok_or_else(|| {
        let mut known: Vec<&str> = policy.plans.keys().map(String::as_str).collect();
        known.sort_unstable();
        ManageError::UnknownPlan { plan: plan.to_string(), known: list(&known) }
    })
}

/// The plan named `plan`, which must exist and have API access: the rule for creating
/// and rotating keys.
pub fn check_key_plan<'p>(policy: &'p Policy, plan: &str) -> Result<&'p Plan, ManageError> {
    let plan = check_plan(policy, plan)?;
    if !plan.api_access {
        return Err(ManageError::NoApiAccess(plan.name.clone()));
    }
    Ok(plan)
}

/// `tenant` may get one more key when `counted` (see [`counts_against_max_keys`]) is
/// under its plan's `max_keys`; no `max_keys` is no cap.
pub fn check_cap(plan: &Plan, tenant: &str, counted: usize) -> Result<(), ManageError> {
    match plan.max_keys {
        Some(max) if counted >= max as usize => {
            Err(ManageError::CapReached { tenant: tenant.to_string(), plan: plan.name.clone(), max })
        }
        _ => Ok(()),
    }
}

/// The scopes, each in the policy's `[scopes]`, without duplicates, in the order given.
pub fn check_scopes(policy: &Policy, scopes: &[String]) -> Result<Vec<String>, ManageError> {
    if scopes.is_empty() {
        return Err(ManageError::NoScopes);
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !policy.scopes.contains_key(scope) {
            let known: Vec<&str> = policy.scopes.keys().map(String::as_str).collect();
            return Err(ManageError::UnknownScope { scope: scope.clone(), known: list(&known) });
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

/// A key name: 1–100 characters, not blank, no control character.
pub fn check_name(name: &str) -> Result<(), ManageError> {
    if name.trim().is_empty() {
        return Err(ManageError::InvalidName("a key needs a name (--name)".to_string()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ManageError::InvalidName(format!("longer than {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ManageError::InvalidName("contains a control character".to_string()));
    }
    Ok(())
}

/// `--expires-in`: the absolute expiry it gives at `now` (none without it); it must be
/// longer than zero and within the calendar.
pub fn check_expires_in(
    expires_in: Option<Duration>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, ManageError> {
    let expires_at = expires_in.map(|d| add(now, d, "--expires-in")).transpose()?;
    if expires_at.is_some_and(|t| t <= now) {
        return Err(ManageError::InvalidExpiry("--expires-in must be longer than zero".to_string()));
    }
    Ok(expires_at)
}

/// A key may be revoked once.
pub fn check_revocable(key: &KeyRecord) -> Result<(), ManageError> {
    if key.revoked_at.is_some() {
        return Err(ManageError::Revoked(key.id.clone()));
    }
    Ok(())
}

/// What a permitted rotation does: the new key's scopes, and the old key's new expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The old key's scopes, checked against the policy again.
    pub scopes: Vec<String>,
    /// `min(old expiry, now + grace)`.
    pub old_expires_at: OffsetDateTime,
}

/// The rules of `keys rotate`, in this order: the old key is active (not revoked, not
/// expired) and not already rotated; its tenant (`tenant`, `None` when it is gone) is on
/// a plan with API access; its scopes are still in the policy; `now + grace` is within
/// the calendar.
pub fn check_rotation(
    policy: &Policy,
    old: &KeyRecord,
    tenant: Option<&TenantRecord>,
    grace: Duration,
    now: OffsetDateTime,
) -> Result<Rotation, ManageError> {
    match old.state(now) {
        KeyState::Active => {}
        KeyState::Revoked => return Err(ManageError::Revoked(old.id.clone())),
        KeyState::Expired => return Err(ManageError::Expired(old.id.clone())),
    }
    if let Some(by) = &old.replaced_by {
        return Err(ManageError::Replaced { id: old.id.clone(), by: by.clone() });
    }
    let tenant = tenant.ok_or_else(|| ManageError::UnknownTenant(old.tenant.clone()))?;
    check_key_plan(policy, &tenant.plan)?;
    let scopes = check_scopes(policy, &old.scopes)?;
    let grace_end = add(now, grace, "--grace")?;
    Ok(Rotation { scopes, old_expires_at: old.expires_at.map_or(grace_end, |t| t.min(grace_end)) })
}

/// A new key's record with id `id` and a fresh secret, whose digest under the current
/// pepper is all the record keeps of it.
pub fn new_key_record(
    peppers: &Peppers,
    id: String,
    tenant: &str,
    name: &str,
    scopes: Vec<String>,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> CreatedKey {
    let secret = super::generate_secret();
    let record = KeyRecord {
        id,
        tenant: tenant.to_string(),
        name: name.to_string(),
        scopes,
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
        digest: peppers.current(&secret),
        overrides: Default::default(),
    };
    CreatedKey { record, secret }
}

/// The list of the policy's plans and scopes that errors name: `a, b, c`, or `(none)`.
fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

/// `now + d`, or an error naming the option when that is past the calendar's end.
fn add(now: OffsetDateTime, d: Duration, option: &str) -> Result<OffsetDateTime, ManageError> {
    add_checked(now, d, true)
        .ok_or_else(|| ManageError::InvalidExpiry(format!("{option} {} is too long", crate::duration::format(d))))
}

/// `now + d` (`forward`) or `now - d`; `None` on overflow.
fn add_checked(now: OffsetDateTime, d: Duration, forward: bool) -> Option<OffsetDateTime> {
    let d = time::Duration::try_from(d).ok()?;
    if forward {
        now.checked_add(d)
    } else {
        now.checked_sub(d)
    }
}

#[cfg(test)]
mod tests;
