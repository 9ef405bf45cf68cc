//! Writing keys: create, revoke, rotate (each a script on the tenant's slot that checks
//! the rules under concurrency, then the digest index and key-id entries as a second
//! step, undone best effort when that fails), and the proxy's background writes:
//! re-storing a digest under the current pepper, and `last_used_at`.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::codec::{
    digest_text, format_time, key_fields, parse_digest, parse_key, parse_tenant, plan_args, reply_fields, status,
    Fields,
};
use super::scripts::{CREATE_KEY, READ, RESTORE, REVOKE, ROTATE, TOUCH, UNDO_CREATE, UNDO_ROTATE};
use super::{
    corrupt, layout, query_each, unavailable, unexpected, Invalidation, RedisStore, BACKGROUND_TIMEOUT, MANAGE_TIMEOUT,
    MAX_ATTEMPTS,
};
use crate::keys::data::StoreError;
use crate::keys::manage::{self, CreatedKey, ManageError, NewKey, TOMBSTONE_TTL};
use crate::keys::{generate_key_id, KeyDigest, KeyRecord, Peppers};
use crate::metrics::StoreOp;
use crate::policy::Policy;
use crate::redis_client::RedisCallError;

impl RedisStore {
    /// Creates a key under the rules of [`manage::create_key`]. The checks that need no
    /// stored state run here; the tenant, its plan's API access and `max_keys` are
    /// checked by the one script on the tenant's slot that also writes the record, so
    /// that concurrent creates (from any number of processes) never pass the cap. Then
    /// the digest index and key-id entries are written; only when both are durable is
    /// the secret returned (on failure the record is removed again, best effort).
    pub async fn create_key(
        &self,
        policy: &Policy,
        peppers: &Peppers,
        new: &NewKey,
        now: OffsetDateTime,
    ) -> Result<CreatedKey, ManageError> {
        let valid = manage::check_new_key(policy, new, now)?;
        let plans = plan_args(policy);
        let (tenant_key, keys_key, prefix) =
            (layout::tenant(&new.tenant), layout::keys(&new.tenant), layout::key_prefix(&new.tenant));
        let now_text = format_time(now);
        for _ in 0..MAX_ATTEMPTS {
            let created = manage::new_key_record(
                peppers,
                generate_key_id(),
                &new.tenant,
                &new.name,
                valid.scopes.clone(),
                valid.expires_at,
                now,
            );
            let fields = key_fields(&created.record);
            let record_key = layout::key(&new.tenant, &created.record.id);
            let key_id = created.record.id.clone();
            let (tenant_key, keys_key, prefix, now_text, plans) =
                (tenant_key.clone(), keys_key.clone(), prefix.clone(), now_text.clone(), plans.clone());
            let reply: Vec<String> = self
                .manage(StoreOp::Write, move |mut con| async move {
                    let mut invocation = CREATE_KEY.key(&tenant_key);
                    invocation.key(&keys_key).key(&record_key);
                    invocation.arg(&now_text).arg(&prefix).arg(&key_id).arg(plans.len() / 3);
                    for arg in &plans {
                        invocation.arg(arg);
                    }
                    for (field, value) in &fields {
                        invocation.arg(*field).arg(value);
                    }
                    invocation.invoke_async(&mut con).await
                })
                .await?;
            match status(&reply) {
                "ok" => {}
                "id_taken" => continue,
                "unknown_tenant" => return Err(ManageError::UnknownTenant(new.tenant.clone())),
                "unknown_plan" => {
                    manage::check_plan(policy, reply.get(1).map_or("", String::as_str))?;
                    return Err(unexpected(&reply));
                }
                "no_api_access" => {
                    return Err(ManageError::NoApiAccess(reply.get(1).cloned().unwrap_or_default()));
                }
                "cap" => {
                    let plan = reply.get(1).cloned().unwrap_or_default();
                    let max = reply.get(2).and_then(|m| m.parse().ok()).ok_or_else(|| unexpected(&reply))?;
                    return Err(ManageError::CapReached { tenant: new.tenant.clone(), plan, max });
                }
                _ => return Err(unexpected(&reply)),
            }
            if let Err(e) = self.write_index(&created.record).await {
                self.undo_create(&created.record).await;
                return Err(unavailable(e));
            }
            return Ok(created);
        }
        Err(ManageError::Store(StoreError::Unavailable(format!(
            "no free key id after {MAX_ATTEMPTS} attempts (this should never happen)"
        ))))
    }

    /// Revokes a key: one script on its tenant's slot marks the record (`revoked_at`)
    /// and gives it the tombstone's 30 days; then its index and key-id entries get the
    /// same TTL, and its digest is published. Revoking a revoked key is refused, but
    /// first re-applies the TTLs (repairing a revocation whose second step failed).
    pub async fn revoke_key(&self, id: &str, now: OffsetDateTime) -> Result<KeyRecord, ManageError> {
        let tenant = self.tenant_of_key(id, MANAGE_TIMEOUT).await.map_err(unavailable)?;
        let tenant = tenant.ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
        let record_key = layout::key(&tenant, id);
        let now_text = format_time(now);
        let reply: Vec<String> = self
            .manage(StoreOp::Write, move |mut con| async move {
                REVOKE.key(&record_key).arg(&now_text).arg(TOMBSTONE_TTL.as_secs()).invoke_async(&mut con).await
            })
            .await?;
        match status(&reply) {
            "ok" => {}
            "unknown_key" => return Err(ManageError::UnknownKey(id.to_string())),
            "revoked" => {
                let digest = reply.get(1).and_then(|d| parse_digest(d));
                let ttl = reply.get(2).and_then(|t| t.parse::<u64>().ok()).filter(|&t| t > 0);
                if let (Some(digest), Some(ttl)) = (digest, ttl) {
                    let _ = self.expire_entries(id, &digest, ttl).await;
                }
                return Err(ManageError::Revoked(id.to_string()));
            }
            _ => return Err(unexpected(&reply)),
        }
        let record = parse_key(&reply_fields(&reply)).map_err(corrupt)?.ok_or_else(|| unexpected(&reply))?;
        let tombstones = self.expire_entries(id, &record.digest, TOMBSTONE_TTL.as_secs()).await;
        self.publish(vec![Invalidation::Digest(record.digest.hex.clone())]).await;
        tombstones.map_err(unavailable)?;
        Ok(record)
    }

    /// Rotates a key under the rules of [`manage::rotate_key`]: reads the old key and
    /// its tenant, checks the rules, then one script on the tenant's slot writes the new
    /// record and puts the old one in its grace (`replaced_by`, `expires_at =
    /// min(existing, now + grace)`), but only if what the checks read is unchanged
    /// (otherwise it reads and checks again). Then the new key's index entries, then the
    /// old key's digest is published. `max_keys` does not apply: the old key in its grace
    /// stops counting.
    pub async fn rotate_key(
        &self,
        policy: &Policy,
        peppers: &Peppers,
        id: &str,
        grace: Duration,
        now: OffsetDateTime,
    ) -> Result<CreatedKey, ManageError> {
        let tenant = self.tenant_of_key(id, MANAGE_TIMEOUT).await.map_err(unavailable)?;
        let tenant = tenant.ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
        let (old_key, tenant_key, keys_key) =
            (layout::key(&tenant, id), layout::tenant(&tenant), layout::keys(&tenant));
        for _ in 0..MAX_ATTEMPTS {
            let (old_fields, tenant_fields): (Fields, Fields) = self
                .manage(StoreOp::Write, {
                    let (old_key, tenant_key) = (old_key.clone(), tenant_key.clone());
                    move |mut con| async move { READ.key(&old_key).key(&tenant_key).invoke_async(&mut con).await }
                })
                .await?;
            let old =
                parse_key(&old_fields).map_err(corrupt)?.ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
            let tenant_record = parse_tenant(&tenant_fields).map_err(corrupt)?;
            let rotation = manage::check_rotation(policy, &old, tenant_record.as_ref(), grace, now)?;
            let mut created = manage::new_key_record(
                peppers,
                generate_key_id(),
                &old.tenant,
                &old.name,
                rotation.scopes,
                old.expires_at,
                now,
            );
            // The new key keeps the old one's limit overrides.
            created.record.overrides = old.overrides.clone();
            // What the checks read; the script writes only if it is still so.
            let field = |name: &str| old_fields.get(name).cloned().unwrap_or_default();
            let guard = [
                tenant_fields.get("plan").cloned().unwrap_or_default(),
                field("revoked_at"),
                field("expires_at"),
                field("replaced_by"),
                field("scopes"),
            ];
            let fields = key_fields(&created.record);
            let new_key = layout::key(&tenant, &created.record.id);
            let new_id = created.record.id.clone();
            let old_expires_at = format_time(rotation.old_expires_at);
            let (old_key, tenant_key, keys_key) = (old_key.clone(), tenant_key.clone(), keys_key.clone());
            let reply: Vec<String> = self
                .manage(StoreOp::Write, move |mut con| async move {
                    let mut invocation = ROTATE.key(&tenant_key);
                    invocation.key(&keys_key).key(&old_key).key(&new_key);
                    for expected in &guard {
                        invocation.arg(expected);
                    }
                    invocation.arg(&old_expires_at).arg(&new_id);
                    for (field, value) in &fields {
                        invocation.arg(*field).arg(value);
                    }
                    invocation.invoke_async(&mut con).await
                })
                .await?;
            match status(&reply) {
                "ok" => {}
                "changed" | "id_taken" => continue,
                _ => return Err(unexpected(&reply)),
            }
            if let Err(e) = self.write_index(&created.record).await {
                self.undo_rotate(&old, &old_fields, &created.record).await;
                return Err(unavailable(e));
            }
            self.publish(vec![Invalidation::Digest(old.digest.hex.clone())]).await;
            return Ok(created);
        }
        Err(ManageError::Store(StoreError::Unavailable(format!(
            "key `{id}` kept changing during {MAX_ATTEMPTS} attempts to rotate it; try again"
        ))))
    }

    /// Re-stores a key found under an old pepper under `current` (docs/reference.md §3): writes the new
    /// index entry, then switches the record's digest (only if it still holds the one
    /// read), then drops the old index entry, and publishes both digests. A no-op when
    /// the key is gone or already re-stored. Off the request path.
    pub async fn restore_digest(&self, key_id: &str, current: KeyDigest) -> Result<(), RedisCallError> {
        let Some(tenant) = self.tenant_of_key(key_id, BACKGROUND_TIMEOUT).await? else {
            return Ok(());
        };
        let record = layout::key(&tenant, key_id);
        let (stored, pttl): (Option<String>, i64) = self
            .background(StoreOp::Write, {
                let record = record.clone();
                move |mut con| async move {
                    redis::pipe()
                        .cmd("HGET")
                        .arg(&record)
                        .arg("digest")
                        .cmd("PTTL")
                        .arg(&record)
                        .query_async(&mut con)
                        .await
                }
            })
            .await?;
        let Some(old) = stored.as_deref().and_then(parse_digest) else {
            return Ok(());
        };
        if old == current {
            return Ok(());
        }
        // The new entry first, so that the key stays findable throughout; a tombstone's
        // entry expires with its record.
        let new_index = layout::digest(&current);
        let target = layout::digest_target(&tenant, key_id);
        self.background(StoreOp::Write, {
            let new_index = new_index.clone();
            move |mut con| async move {
                let mut set = redis::cmd("SET");
                set.arg(&new_index).arg(&target);
                if pttl > 0 {
                    set.arg("PX").arg(pttl);
                }
                set.query_async::<()>(&mut con).await
            }
        })
        .await?;
        let (old_text, new_text) = (digest_text(&old), digest_text(&current));
        let outcome: String = self
            .background(StoreOp::Write, move |mut con| async move {
                RESTORE.key(&record).arg(&old_text).arg(&new_text).invoke_async(&mut con).await
            })
            .await?;
        let stale = match outcome.as_str() {
            // Switched: the old entry is stale.
            "ok" => layout::digest(&old),
            // Someone else re-stored it meanwhile: nothing more to do.
            "same" => return Ok(()),
            // Gone or re-stored under yet another digest: the entry just written is stale.
            _ => new_index,
        };
        self.background(StoreOp::Write, move |mut con| async move {
            redis::cmd("DEL").arg(&stale).query_async::<()>(&mut con).await
        })
        .await?;
        if outcome == "ok" {
            self.publish(vec![Invalidation::Digest(old.hex), Invalidation::Digest(current.hex)]).await;
        }
        Ok(())
    }

    /// Writes `last_used_at` for a batch of `(key id, tenant, time)`: one script per
    /// tenant (on its slot), all sent at once. A time never moves `last_used_at`
    /// back, and a record that is gone is not re-created. Called by a background
    /// flusher, at most once a minute per key, never on a request's path.
    pub async fn record_last_used(&self, used: &[(String, String, OffsetDateTime)]) -> Result<(), RedisCallError> {
        let mut by_tenant: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (key_id, tenant, at) in used {
            by_tenant.entry(tenant.clone()).or_default().push((layout::key(tenant, key_id), format_time(*at)));
        }
        if by_tenant.is_empty() {
            return Ok(());
        }
        self.background(StoreOp::Write, move |con| async move {
            let calls: Vec<_> = by_tenant
                .into_values()
                .map(|uses| {
                    let mut con = con.clone();
                    async move {
                        let mut invocation = TOUCH.prepare_invoke();
                        for (record, _) in &uses {
                            invocation.key(record);
                        }
                        for (_, at) in &uses {
                            invocation.arg(at);
                        }
                        invocation.invoke_async::<i64>(&mut con).await
                    }
                })
                .collect();
            futures_util::future::join_all(calls).await.into_iter().try_for_each(|done| done.map(drop))
        })
        .await
    }

    /// The second step of creating a key: its digest index and key-id entries (each on
    /// its own slot). Idempotent, so it is tried twice.
    async fn write_index(&self, record: &KeyRecord) -> Result<(), RedisCallError> {
        let mut last = None;
        for _ in 0..2 {
            let (index, target) = (layout::digest(&record.digest), layout::digest_target(&record.tenant, &record.id));
            let (entry, tenant) = (layout::key_id(&record.id), record.tenant.clone());
            let result = self
                .client
                .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |con| async move {
                    let commands = vec![
                        redis::cmd("SET").arg(&index).arg(&target).clone(),
                        redis::cmd("SET").arg(&entry).arg(&tenant).clone(),
                    ];
                    query_each::<redis::Value>(&con, commands).await.map(drop)
                })
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(RedisCallError::Unavailable))
    }

    /// Gives a revoked key's index and key-id entries the tombstone's TTL (seconds).
    async fn expire_entries(&self, key_id: &str, digest: &KeyDigest, ttl: u64) -> Result<(), RedisCallError> {
        let (index, entry) = (layout::digest(digest), layout::key_id(key_id));
        self.client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |con| async move {
                let commands = vec![
                    redis::cmd("EXPIRE").arg(&index).arg(ttl).clone(),
                    redis::cmd("EXPIRE").arg(&entry).arg(ttl).clone(),
                ];
                query_each::<redis::Value>(&con, commands).await.map(drop)
            })
            .await
    }

    /// Best effort after a failed [`RedisStore::write_index`]: removes the new record
    /// (so that a key whose secret nobody got does not hold a `max_keys` slot) and any
    /// index entry written. What cannot be removed can still be revoked by id.
    async fn undo_create(&self, record: &KeyRecord) {
        let (record_key, keys_key) = (layout::key(&record.tenant, &record.id), layout::keys(&record.tenant));
        let (digest, key_id) = (digest_text(&record.digest), record.id.clone());
        let undone = self
            .client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |mut con| async move {
                UNDO_CREATE
                    .key(&record_key)
                    .key(&keys_key)
                    .arg(&digest)
                    .arg(&key_id)
                    .invoke_async::<i64>(&mut con)
                    .await
            })
            .await;
        self.drop_entries(record).await;
        if let Err(e) = undone {
            tracing::warn!(key_id = %record.id, tenant = %record.tenant, error = %e,
                "a key whose index could not be written was not removed; revoke it");
        }
    }

    /// Best effort after a rotation whose new key's index could not be written: puts the
    /// old key back as it was and removes the new one.
    async fn undo_rotate(&self, old: &KeyRecord, old_fields: &Fields, new: &KeyRecord) {
        let keys = [layout::keys(&new.tenant), layout::key(&old.tenant, &old.id), layout::key(&new.tenant, &new.id)];
        let expires_at = old_fields.get("expires_at").cloned().unwrap_or_default();
        let new_id = new.id.clone();
        let undone = self
            .client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |mut con| async move {
                let mut invocation = UNDO_ROTATE.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(&new_id).arg(&expires_at).invoke_async::<i64>(&mut con).await
            })
            .await;
        self.drop_entries(new).await;
        if let Err(e) = undone {
            tracing::warn!(key_id = %old.id, new_key_id = %new.id, error = %e,
                "a rotation whose new key could not be indexed was not undone; rotate the new key");
        }
    }

    /// Removes a key's index and key-id entries (best effort).
    async fn drop_entries(&self, record: &KeyRecord) {
        let (index, entry) = (layout::digest(&record.digest), layout::key_id(&record.id));
        let _ = self
            .client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |con| async move {
                let commands = vec![redis::cmd("DEL").arg(&index).clone(), redis::cmd("DEL").arg(&entry).clone()];
                query_each::<redis::Value>(&con, commands).await.map(drop)
            })
            .await;
    }
}
