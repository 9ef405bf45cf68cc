//! Writing tenants: create, change plan, delete (revoking their keys). Each is a script on
//! the tenant's slot, then its idempotent second step (`kg:tenants`, the revoked keys'
//! index entries), which running the command again finishes if it failed.

use time::OffsetDateTime;

use super::codec::{format_time, parse_digest, parse_tenant, reply_fields, status, tenant_fields};
use super::scripts::{CREATE_TENANT, DELETE_TENANT, SET_PLAN};
use super::{corrupt, layout, query_each, unavailable, unexpected, Invalidation, RedisStore, MANAGE_TIMEOUT};
use crate::keys::manage::{self, ManageError, TOMBSTONE_TTL};
use crate::keys::{KeyDigest, TenantRecord};
use crate::metrics::StoreOp;
use crate::policy::Policy;
use crate::redis_client::RedisCallError;

impl RedisStore {
    /// Creates a tenant on a plan of the policy: one script on its slot writes the hash
    /// unless it exists; then the tenant is added to `kg:tenants` (also when it already
    /// existed, which repairs a create whose second step failed).
    pub async fn create_tenant(
        &self,
        policy: &Policy,
        id: &str,
        plan: &str,
        now: OffsetDateTime,
    ) -> Result<TenantRecord, ManageError> {
        manage::check_tenant_id(id)?;
        // Checked here, reported after the existence check (the file store's order).
        let plan_check = manage::check_plan(policy, plan).map(|_| ());
        let record =
            TenantRecord { id: id.to_string(), plan: plan.to_string(), created_at: now, overrides: Default::default() };
        let fields = tenant_fields(&record);
        let plan_ok = if plan_check.is_ok() { "1" } else { "0" };
        let (tenant_key, keys_key) = (layout::tenant(id), layout::keys(id));
        let reply: Vec<String> = self
            .manage(StoreOp::Write, move |mut con| async move {
                let mut invocation = CREATE_TENANT.key(&tenant_key);
                invocation.key(&keys_key).arg(plan_ok);
                for (field, value) in &fields {
                    invocation.arg(*field).arg(value);
                }
                invocation.invoke_async(&mut con).await
            })
            .await?;
        match status(&reply) {
            "ok" => {}
            "exists" => {
                // Best effort: the error below is the answer either way.
                let _ = self.register_tenant(id).await;
                return Err(ManageError::TenantExists(id.to_string()));
            }
            "unknown_plan" => {
                plan_check?;
                return Err(unexpected(&reply));
            }
            _ => return Err(unexpected(&reply)),
        }
        self.register_tenant(id).await.map_err(unavailable)?;
        Ok(record)
    }

    /// Moves a tenant to another plan of the policy (its keys stay as they are, even past
    /// the new plan's `max_keys`), then publishes [`Invalidation::Tenant`].
    pub async fn set_plan(&self, policy: &Policy, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
        manage::check_plan(policy, plan)?;
        let tenant_key = layout::tenant(id);
        let plan = plan.to_string();
        let reply: Vec<String> = self
            .manage(StoreOp::Write, move |mut con| async move {
                SET_PLAN.key(&tenant_key).arg(&plan).invoke_async(&mut con).await
            })
            .await?;
        match status(&reply) {
            "ok" => {}
            "unknown_tenant" => return Err(ManageError::UnknownTenant(id.to_string())),
            _ => return Err(unexpected(&reply)),
        }
        let tenant = parse_tenant(&reply_fields(&reply)).map_err(corrupt)?.ok_or_else(|| unexpected(&reply))?;
        // Idempotent repair of a create whose second step failed; the change is made.
        if let Err(e) = self.register_tenant(id).await {
            tracing::warn!(tenant = %id, error = %e, "tenant not re-added to kg:tenants");
        }
        self.publish(vec![Invalidation::Tenant(id.to_string())]).await;
        Ok(tenant)
    }

    /// Deletes the tenant and revokes (tombstones) all its keys not yet revoked, in one
    /// script on its slot; then their index entries get the tombstones' 30 days, the
    /// tenant moves from `kg:tenants` to `kg:tenants:deleted`, and the tenant and every
    /// revoked key's digest are published. Returns the revoked key ids, sorted. Deleting
    /// again finishes a deletion whose second step failed (see [`Self::finish_half_deleted`]).
    pub async fn delete_tenant(&self, id: &str, now: OffsetDateTime) -> Result<Vec<String>, ManageError> {
        let (tenant_key, keys_key, prefix) = (layout::tenant(id), layout::keys(id), layout::key_prefix(id));
        let now_text = format_time(now);
        let reply: Vec<String> = self
            .manage(StoreOp::Write, move |mut con| async move {
                DELETE_TENANT
                    .key(&tenant_key)
                    .key(&keys_key)
                    .arg(&now_text)
                    .arg(TOMBSTONE_TTL.as_secs())
                    .arg(&prefix)
                    .invoke_async(&mut con)
                    .await
            })
            .await?;
        match status(&reply) {
            "ok" => {}
            "unknown_tenant" => return self.finish_half_deleted(id, now).await,
            _ => return Err(unexpected(&reply)),
        }
        let mut revoked: Vec<(String, KeyDigest)> = Vec::new();
        for pair in reply[1..].chunks(2) {
            let [key_id, digest] = pair else { return Err(unexpected(&reply)) };
            let digest = parse_digest(digest).ok_or_else(|| unexpected(&reply))?;
            revoked.push((key_id.clone(), digest));
        }
        self.delete_tenant_entries(id, revoked, now).await
    }

    /// A tenant whose deletion stopped after its first step (its hash gone and its keys
    /// revoked, but still listed in `kg:tenants`, and its index entries without their
    /// 30-day TTL) is finished: the second step runs again for its revoked keys (those
    /// revoked before the deletion too: their entries get a fresh 30 days). Any other
    /// tenant without a hash is unknown.
    async fn finish_half_deleted(&self, id: &str, now: OffsetDateTime) -> Result<Vec<String>, ManageError> {
        let listed: bool = self
            .manage(StoreOp::Lookup, {
                let id = id.to_string();
                move |mut con| async move {
                    redis::cmd("SISMEMBER").arg(layout::TENANTS).arg(id).query_async(&mut con).await
                }
            })
            .await?;
        if !listed {
            return Err(ManageError::UnknownTenant(id.to_string()));
        }
        let data = self.load_tenant(id).await?;
        let revoked = data
            .keys
            .values()
            .filter(|key| key.revoked_at.is_some())
            .map(|key| (key.id.clone(), key.digest.clone()))
            .collect();
        tracing::warn!(tenant = %id, "finishing a tenant deletion whose second step had failed");
        self.delete_tenant_entries(id, revoked, now).await
    }

    /// The second step of a tenant's deletion: the revoked keys' index entries expire
    /// with their tombstones, the tenant moves from `kg:tenants` to `kg:tenants:deleted`,
    /// and replicas hear of it. Returns the revoked key ids, sorted.
    async fn delete_tenant_entries(
        &self,
        id: &str,
        mut revoked: Vec<(String, KeyDigest)>,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, ManageError> {
        revoked.sort_by(|a, b| a.0.cmp(&b.0));
        let tenant = id.to_string();
        let entries = revoked.clone();
        let tombstones = self
            .manage(StoreOp::Write, move |con| async move {
                let ttl = TOMBSTONE_TTL.as_secs();
                let mut commands = Vec::new();
                for (key_id, digest) in &entries {
                    commands.push(redis::cmd("EXPIRE").arg(layout::digest(digest)).arg(ttl).clone());
                    commands.push(redis::cmd("EXPIRE").arg(layout::key_id(key_id)).arg(ttl).clone());
                }
                let deleted_at = now.unix_timestamp();
                let cutoff = deleted_at.saturating_sub(ttl as i64);
                commands.push(redis::cmd("SREM").arg(layout::TENANTS).arg(&tenant).clone());
                commands.push(redis::cmd("ZADD").arg(layout::DELETED_TENANTS).arg(deleted_at).arg(&tenant).clone());
                commands.push(
                    redis::cmd("ZREMRANGEBYSCORE")
                        .arg(layout::DELETED_TENANTS)
                        .arg("-inf")
                        .arg(format!("({cutoff}"))
                        .clone(),
                );
                query_each::<redis::Value>(&con, commands).await.map(drop)
            })
            .await;
        let mut invalidations = vec![Invalidation::Tenant(id.to_string())];
        invalidations.extend(revoked.iter().map(|(_, digest)| Invalidation::Digest(digest.hex.clone())));
        // The records are marked: replicas must hear of it even if the second step failed.
        self.publish(invalidations).await;
        tombstones?;
        Ok(revoked.into_iter().map(|(key_id, _)| key_id).collect())
    }

    /// The second step of creating a tenant: listed in `kg:tenants`, no longer in
    /// `kg:tenants:deleted`. Idempotent.
    async fn register_tenant(&self, id: &str) -> Result<(), RedisCallError> {
        let id = id.to_string();
        self.client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |con| async move {
                let commands = vec![
                    redis::cmd("SADD").arg(layout::TENANTS).arg(&id).clone(),
                    redis::cmd("ZREM").arg(layout::DELETED_TENANTS).arg(&id).clone(),
                ];
                query_each::<redis::Value>(&con, commands).await.map(drop)
            })
            .await
    }
}
