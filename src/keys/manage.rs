//! The rules of the tenant and key lifecycle (SPEC 1, 3), shared by the CLI and the admin
//! API: plans must exist and allow API access, `max_keys` holds, scopes come from the
//! policy, rotation keeps tenant, name and scopes and puts the old key in its grace.
//! Pure functions over [`KeysData`]; the store runs them under its lock.

use std::time::Duration;

use time::OffsetDateTime;

use super::store::{KeysData, StoreError};
use super::{KeyRecord, Peppers, Secret, TenantRecord};
use crate::policy::Policy;

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

pub fn create_tenant(
    data: &mut KeysData,
    policy: &Policy,
    id: &str,
    plan: &str,
    now: OffsetDateTime,
) -> Result<TenantRecord, ManageError> {
    let _ = (data, policy, id, plan, now);
    todo!("keys helper")
}

pub fn set_plan(
    data: &mut KeysData,
    policy: &Policy,
    id: &str,
    plan: &str,
) -> Result<TenantRecord, ManageError> {
    let _ = (data, policy, id, plan);
    todo!("keys helper")
}

/// Deletes the tenant and revokes (tombstones) all its keys; returns the revoked key ids.
pub fn delete_tenant(
    data: &mut KeysData,
    id: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, ManageError> {
    let _ = (data, id, now);
    todo!("keys helper")
}

pub fn create_key(
    data: &mut KeysData,
    policy: &Policy,
    peppers: &Peppers,
    new: &NewKey,
    now: OffsetDateTime,
) -> Result<CreatedKey, ManageError> {
    let _ = (data, policy, peppers, new, now);
    todo!("keys helper")
}

pub fn revoke_key(data: &mut KeysData, id: &str, now: OffsetDateTime) -> Result<KeyRecord, ManageError> {
    let _ = (data, id, now);
    todo!("keys helper")
}

/// Issues a new key with the old one's tenant, name and scopes; the old one expires after
/// `grace` (or sooner, if it already expires sooner) and is marked `replaced_by`.
pub fn rotate_key(
    data: &mut KeysData,
    policy: &Policy,
    peppers: &Peppers,
    id: &str,
    grace: Duration,
    now: OffsetDateTime,
) -> Result<CreatedKey, ManageError> {
    let _ = (data, policy, peppers, id, grace, now);
    todo!("keys helper")
}

/// Removes tombstones (revoked keys) older than 30 days; run on every write.
pub fn prune_tombstones(data: &mut KeysData, now: OffsetDateTime) {
    let _ = (data, now);
    todo!("keys helper")
}

/// Re-stores a key found under an old pepper under the current one (SPEC 3). A no-op when
/// the key is gone or already re-stored.
pub fn restore_digest(data: &mut KeysData, key_id: &str, current: super::KeyDigest) {
    let _ = (data, key_id, current);
    todo!("keys helper")
}
