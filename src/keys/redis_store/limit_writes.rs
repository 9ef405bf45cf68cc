//! Writing limit overrides: a tenant's or a key's `limits` field, replaced by one script on
//! the tenant's slot, then announced to every replica (the tenant, or the key's digest),
//! which drop their cached records and read the new ones: the change reaches every
//! replica as fast as a revocation does.

use super::codec::{overrides_text, parse_key, parse_tenant, reply_fields, status, Fields};
use super::scripts::SET_LIMITS;
use super::{corrupt, layout, unavailable, unexpected, Invalidation, RedisStore, MANAGE_TIMEOUT};
use crate::keys::manage::{self, ManageError};
use crate::keys::{KeyRecord, TenantRecord};
use crate::metrics::StoreOp;
use crate::policy::overrides::LimitOverrides;
use crate::policy::Policy;

impl RedisStore {
    /// A tenant's record alone (one `HGETALL`), or `UnknownTenant`.
    async fn tenant_record(&self, id: &str) -> Result<TenantRecord, ManageError> {
        let name = layout::tenant(id);
        let fields: Fields = self
            .manage(StoreOp::Lookup, move |mut con| async move {
                redis::cmd("HGETALL").arg(name).query_async(&mut con).await
            })
            .await?;
        parse_tenant(&fields).map_err(corrupt)?.ok_or_else(|| ManageError::UnknownTenant(id.to_string()))
    }

    /// Runs the set-limits script on `record`; the reply's fields after the change.
    async fn write_limits(
        &self,
        record: String,
        overrides: &LimitOverrides,
        refuse_revoked: bool,
    ) -> Result<Result<Fields, &'static str>, ManageError> {
        let text = overrides_text(overrides).unwrap_or_default();
        let reply: Vec<String> = self
            .manage(StoreOp::Write, move |mut con| async move {
                SET_LIMITS
                    .key(&record)
                    .arg(&text)
                    .arg(if refuse_revoked { "1" } else { "0" })
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        Ok(match status(&reply) {
            "ok" => Ok(reply_fields(&reply)),
            "unknown" => Err("unknown"),
            "revoked" => Err("revoked"),
            _ => return Err(unexpected(&reply)),
        })
    }

    /// Replaces a tenant's limit overrides (checked against its plan, see
    /// [`manage::check_tenant_limits`]), then publishes [`Invalidation::Tenant`].
    pub async fn set_tenant_limits(
        &self,
        policy: &Policy,
        id: &str,
        overrides: &LimitOverrides,
    ) -> Result<TenantRecord, ManageError> {
        let tenant = self.tenant_record(id).await?;
        manage::check_tenant_limits(policy, &tenant, overrides)?;
        let fields = self
            .write_limits(layout::tenant(id), overrides, false)
            .await?
            .map_err(|_| ManageError::UnknownTenant(id.to_string()))?;
        let tenant =
            parse_tenant(&fields).map_err(corrupt)?.ok_or_else(|| ManageError::UnknownTenant(id.to_string()))?;
        self.publish(vec![Invalidation::Tenant(id.to_string())]).await;
        Ok(tenant)
    }

    /// Replaces a key's limit overrides (checked against its tenant's effective limits,
    /// see [`manage::check_key_limits`]; a revoked key is refused), then publishes the
    /// key's [`Invalidation::Digest`].
    pub async fn set_key_limits(
        &self,
        policy: &Policy,
        id: &str,
        overrides: &LimitOverrides,
    ) -> Result<KeyRecord, ManageError> {
        let tenant_id = self.tenant_of_key(id, MANAGE_TIMEOUT).await.map_err(unavailable)?;
        let tenant_id = tenant_id.ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
        let tenant = match self.tenant_record(&tenant_id).await {
            Ok(tenant) => tenant,
            Err(ManageError::UnknownTenant(_)) => return Err(ManageError::UnknownKey(id.to_string())),
            Err(e) => return Err(e),
        };
        manage::check_key_limits(policy, &tenant, overrides)?;
        let fields = match self.write_limits(layout::key(&tenant_id, id), overrides, true).await? {
            Ok(fields) => fields,
            Err("revoked") => return Err(ManageError::Revoked(id.to_string())),
            Err(_) => return Err(ManageError::UnknownKey(id.to_string())),
        };
        let key = parse_key(&fields).map_err(corrupt)?.ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
        self.publish(vec![Invalidation::Digest(key.digest.hex.clone())]).await;
        Ok(key)
    }
}
