//! The audit lines of docs/reference.md §6: one `tracing` event (target `audit`) per change made
//! through the CLI or the admin API, the same for both: what, key id, tenant — never a
//! secret (these functions never see one). `via` says which door the change came in by.

use std::time::Duration;

use super::{KeyRecord, TenantRecord};

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `keygate keys …` / `keygate tenants …`.
    Cli,
    /// The key and tenant API (docs/reference.md §5.2).
    AdminApi,
}

impl Via {
    /// The `via` field of audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::AdminApi => "admin_api",
        }
    }
}

/// `tenant.create`.
pub fn tenant_created(via: Via, tenant: &TenantRecord) {
    tracing::info!(target: "audit", action = "tenant.create", tenant = %tenant.id, plan = %tenant.plan, via = via.as_str());
}

/// `tenant.set_plan`; `previous` is the plan before the change, when it could be read.
pub fn plan_set(via: Via, tenant: &TenantRecord, previous: Option<&str>) {
    tracing::info!(
        target: "audit",
        action = "tenant.set_plan",
        tenant = %tenant.id,
        plan = %tenant.plan,
        previous_plan = %previous.unwrap_or_default(),
        via = via.as_str(),
    );
}

/// `tenant.set_limits` or `key.set_limits`: the overrides after the change (empty:
/// cleared), as their JSON.
pub fn limits_set(via: Via, tenant: &str, key_id: Option<&str>, overrides: &crate::policy::overrides::LimitOverrides) {
    let limits = serde_json::to_string(overrides).unwrap_or_default();
    match key_id {
        Some(key_id) => tracing::info!(
            target: "audit",
            action = "key.set_limits",
            key_id = %key_id,
            tenant = %tenant,
            limits = %limits,
            via = via.as_str(),
        ),
        None => tracing::info!(
            target: "audit",
            action = "tenant.set_limits",
            tenant = %tenant,
            limits = %limits,
            via = via.as_str(),
        ),
    }
}

/// A tenant's deletion: one `key.revoke` line per key it revoked, then the deletion.
pub fn tenant_deleted(via: Via, tenant: &str, revoked: &[String]) {
    for key_id in revoked {
        tracing::info!(
            target: "audit",
            action = "key.revoke",
            key_id = %key_id,
            tenant = %tenant,
            reason = "tenant.delete",
            via = via.as_str(),
        );
    }
    tracing::info!(target: "audit", action = "tenant.delete", tenant = %tenant, revoked_keys = revoked.len(), via = via.as_str());
}

/// `key.create`: id, tenant, name and scopes.
pub fn key_created(via: Via, key: &KeyRecord) {
    tracing::info!(
        target: "audit",
        action = "key.create",
        key_id = %key.id,
        tenant = %key.tenant,
        name = %key.name,
        scopes = %key.scopes.join(","),
        via = via.as_str(),
    );
}

/// `key.revoke`.
pub fn key_revoked(via: Via, key: &KeyRecord) {
    tracing::info!(target: "audit", action = "key.revoke", key_id = %key.id, tenant = %key.tenant, via = via.as_str());
}

/// `key.rotate`: `key` is the new key; `replaces` the old one's id.
pub fn key_rotated(via: Via, key: &KeyRecord, replaces: &str, grace: Duration) {
    tracing::info!(
        target: "audit",
        action = "key.rotate",
        key_id = %key.id,
        replaces = %replaces,
        tenant = %key.tenant,
        grace = %crate::duration::format(grace),
        via = via.as_str(),
    );
}
