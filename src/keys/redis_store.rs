//! The Redis key store: tenants and key records shared by every replica, looked up by
//! key digest, with the lifecycle rules of [`super::manage`] enforced atomically on the
//! tenant's Redis Cluster slot. The layout of keys in Redis is documented for operators
//! and dashboards in `docs/redis-layout.md`; [`layout`] is its one implementation.
//!
//! # Why the writes come in two steps
//!
//! A tenant's records (its hash, the set of its key ids, each key's hash) share the hash
//! tag `{t:<tenant>}`, so that one Lua script can check and change them atomically on a
//! Redis Cluster, where a script may only touch keys of one slot. The digest index is
//! read before the tenant is known, so it cannot carry the tenant's tag and lives on its
//! own slot. Every write therefore changes the tenant's records first, in one script
//! (this is where `max_keys` and the rotation rules hold under concurrency), and then
//! writes the index entries as a second, idempotent step. Readers always go through the
//! key record, which is the truth: an index entry that points at a missing record, or at
//! a record whose digest is another, finds nothing; a revocation marks the record first,
//! so it takes effect before its index entry's TTL is even set. Only after both steps a
//! new key's secret is returned, and only after a change is durable is it published on
//! [`INVALIDATION_CHANNEL`] for the replicas' caches.
//!
//! Times are stored as RFC 3339 in UTC (`Z`); the scripts compare them as strings after
//! padding the fractional seconds to nine digits, which orders them correctly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::Poll;
use std::time::Duration;

use redis::Script;
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::data::{KeysData, Lookup, StoreError};
use super::manage::{self, CreatedKey, ManageError, NewKey, TOMBSTONE_TTL};
use super::{generate_key_id, KeyDigest, KeyRecord, Peppers, TenantRecord};
use crate::metrics::StoreOp;
use crate::policy::Policy;
use crate::redis_client::{RedisCallError, RedisClient, RedisConnection};

/// A Redis call that failed (unreachable, timed out, refused by the breaker) is the store
/// being unavailable: the proxy answers 503, never 401.
impl From<RedisCallError> for StoreError {
    fn from(e: RedisCallError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The pub/sub channel on which every write announces what changed (see
/// [`Invalidation`]); replicas subscribe to it to drop cached entries.
pub const INVALIDATION_CHANNEL: &str = "keygate:invalidate";

/// The bound on each Redis call of a management operation (CLI, admin API), which are
/// not on a request's path and may wait longer than `redis.timeout`.
pub const MANAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on each Redis call of the proxy's background work (re-storing a digest,
/// flushing `last_used_at`): off the request path, but never left hanging.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a write is retried when its optimistic check lost a race (a rotation whose
/// key changed between read and write) or a fresh key id was already taken.
const MAX_ATTEMPTS: usize = 5;

/// What a write changed, as published on [`INVALIDATION_CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The record of the key with this digest (lower-case hex) changed: revoked, rotated
    /// (the old key), re-stored under another pepper, or its tenant deleted.
    Digest(String),
    /// The tenant changed plan or was deleted.
    Tenant(String),
}

impl Invalidation {
    /// The message: `digest:<hex>` or `tenant:<id>`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Digest(hex) => format!("digest:{hex}"),
            Invalidation::Tenant(id) => format!("tenant:{id}"),
        }
    }

    /// The inverse of [`Invalidation::encode`]; `None` for anything else (a newer
    /// keygate's message, say), which a subscriber ignores.
    pub fn parse(text: &str) -> Option<Invalidation> {
        if let Some(hex) = text.strip_prefix("digest:") {
            return (!hex.is_empty()).then(|| Invalidation::Digest(hex.to_string()));
        }
        if let Some(id) = text.strip_prefix("tenant:") {
            return (!id.is_empty()).then(|| Invalidation::Tenant(id.to_string()));
        }
        None
    }
}

/// The names of keygate's Redis keys, all prefixed `kg:` (see `docs/redis-layout.md`).
pub mod layout {
    use crate::keys::KeyDigest;

    /// Set of every tenant id (second step after the tenant's hash).
    pub const TENANTS: &str = "kg:tenants";

    /// Sorted set of deleted tenants, scored by the Unix time of deletion: their
    /// tombstones are listed for 30 days.
    pub const DELETED_TENANTS: &str = "kg:tenants:deleted";

    /// Hash `id`, `plan`, `created_at`.
    pub fn tenant(tenant: &str) -> String {
        format!("kg:{{t:{tenant}}}:tenant")
    }

    /// Set of the tenant's key ids.
    pub fn keys(tenant: &str) -> String {
        format!("kg:{{t:{tenant}}}:keys")
    }

    /// Hash: the key record.
    pub fn key(tenant: &str, key_id: &str) -> String {
        format!("{}{key_id}", key_prefix(tenant))
    }

    /// What [`key`] puts before the key id (the scripts build record names from it).
    pub fn key_prefix(tenant: &str) -> String {
        format!("kg:{{t:{tenant}}}:key:")
    }

    /// String `<tenant>/<key_id>` (see [`digest_target`]): the digest index, on its
    /// own slot.
    pub fn digest(digest: &KeyDigest) -> String {
        format!("kg:digest:{}:{}", digest.pepper_id, digest.hex)
    }

    /// The value of a digest index entry.
    pub fn digest_target(tenant: &str, key_id: &str) -> String {
        format!("{tenant}/{key_id}")
    }

    /// String: the tenant of a key id, so that commands by key id find its slot.
    pub fn key_id(key_id: &str) -> String {
        format!("kg:keyid:{key_id}")
    }
}

/// The tenants, their plans and their keys, in Redis.
pub struct RedisStore {
    client: RedisClient,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// A hash's fields, as `HGETALL` returns them.
type Fields = HashMap<String, String>;

impl RedisStore {
    /// The store over `client`, whose `redis.timeout` bounds [`RedisStore::lookup`];
    /// management calls are bounded by [`MANAGE_TIMEOUT`].
    pub fn new(client: RedisClient) -> Self {
        RedisStore { client }
    }

    /// The client: the proxy subscribes to invalidations through it.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    // -----------------------------------------------------------------------------------
    // The request path

    /// Looks a key up by its digests (one per pepper, current first), on the request
    /// path: bounded as a whole by `redis.timeout` (through [`RedisClient::run`]) and two
    /// round trips at most: one `MGET` of the digest index entries (split by slot on a
    /// cluster), then one script on the tenant's slot reading the key record and the
    /// tenant. The record decides: `matched` is the asked digest equal (in constant time)
    /// to the record's; an index entry whose record is gone or holds another digest is
    /// not a match.
    pub async fn lookup(&self, digests: &[KeyDigest]) -> Result<Lookup, RedisCallError> {
        if digests.is_empty() {
            return Ok(Lookup::NotFound);
        }
        let index: Vec<String> = digests.iter().map(layout::digest).collect();
        let found = self
            .client
            .run(StoreOp::Lookup, move |mut con| async move {
                let targets: Vec<Option<String>> = redis::cmd("MGET").arg(&index).query_async(&mut con).await?;
                let Some((tenant, key_id)) = targets.iter().flatten().find_map(|t| split_target(t)) else {
                    return Ok(None);
                };
                let (key, tenant): (Fields, Fields) =
                    READ.key(layout::key(tenant, key_id)).key(layout::tenant(tenant)).invoke_async(&mut con).await?;
                Ok(Some((key, tenant)))
            })
            .await?;
        let Some((key_fields, tenant_fields)) = found else {
            return Ok(Lookup::NotFound);
        };
        let key = match parse_key(&key_fields) {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(Lookup::NotFound),
            Err(e) => {
                tracing::warn!(error = %e, "a key record in Redis is unreadable; the key is treated as unknown");
                return Ok(Lookup::NotFound);
            }
        };
        let matched = digests.iter().find(|d| {
            let same_hex: bool = d.hex.as_bytes().ct_eq(key.digest.hex.as_bytes()).into();
            same_hex && d.pepper_id == key.digest.pepper_id
        });
        let Some(matched) = matched.cloned() else {
            return Ok(Lookup::NotFound);
        };
        let tenant = match parse_tenant(&tenant_fields) {
            Ok(tenant) => tenant.filter(|t| t.id == key.tenant),
            Err(e) => {
                tracing::warn!(error = %e, key_id = %key.id, "a tenant record in Redis is unreadable");
                None
            }
        };
        Ok(Lookup::Found { key, tenant, matched })
    }

    /// Re-stores a key found under an old pepper under `current` (SPEC 3): writes the new
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
            let calls = by_tenant
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
            join_all(calls).await.into_iter().try_for_each(|done| done.map(drop))
        })
        .await
    }

    // -----------------------------------------------------------------------------------
    // Reading everything

    /// Every tenant and key record, for `tenants list`, `keys list`/`show` and the admin
    /// API: the tenants of `kg:tenants` and those deleted less than 30 days ago (whose
    /// tombstones are still listed), then their hashes and key sets, then the key
    /// records; three round trips, none a scan. Not one atomic snapshot: a write may land
    /// between the reads.
    pub async fn load_all(&self) -> Result<KeysData, ManageError> {
        let now = OffsetDateTime::now_utc();
        let mut data = KeysData::empty();
        let tenant_ids = self.tenant_ids(now, MANAGE_TIMEOUT).await.map_err(unavailable)?;
        if tenant_ids.is_empty() {
            return Ok(data);
        }
        let per_tenant: Vec<(Fields, Vec<String>)> = self
            .manage(StoreOp::Lookup, {
                let ids = tenant_ids.clone();
                move |con| async move {
                    let calls = ids
                        .iter()
                        .map(|id| {
                            let mut con = con.clone();
                            // One tenant's two reads: one slot, so one pipeline.
                            let mut pipe = redis::pipe();
                            pipe.cmd("HGETALL").arg(layout::tenant(id)).cmd("SMEMBERS").arg(layout::keys(id));
                            async move { pipe.query_async(&mut con).await }
                        })
                        .collect();
                    join_all(calls).await.into_iter().collect()
                }
            })
            .await?;
        let mut records: Vec<String> = Vec::new();
        for (id, (tenant, keys)) in tenant_ids.iter().zip(per_tenant) {
            if let Some(tenant) = parse_tenant(&tenant).map_err(corrupt)? {
                data.tenants.insert(tenant.id.clone(), tenant);
            }
            records.extend(keys.iter().map(|key_id| layout::key(id, key_id)));
        }
        self.load_records(&mut data, records).await?;
        Ok(data)
    }

    /// One tenant and its keys (revoked and expired ones included), as [`Self::load_all`]
    /// gives them, read from that tenant's slot alone: the single-tenant views of the
    /// admin API and the CLI cost that tenant's records, not the whole store's. Empty
    /// for an unknown tenant.
    pub async fn load_tenant(&self, id: &str) -> Result<KeysData, ManageError> {
        let mut data = KeysData::empty();
        let (tenant, keys): (Fields, Vec<String>) = self
            .manage(StoreOp::Lookup, {
                let id = id.to_string();
                move |mut con| async move {
                    let mut pipe = redis::pipe();
                    pipe.cmd("HGETALL").arg(layout::tenant(&id)).cmd("SMEMBERS").arg(layout::keys(&id));
                    pipe.query_async(&mut con).await
                }
            })
            .await?;
        if let Some(tenant) = parse_tenant(&tenant).map_err(corrupt)? {
            data.tenants.insert(tenant.id.clone(), tenant);
        }
        self.load_records(&mut data, keys.iter().map(|key_id| layout::key(id, key_id)).collect()).await?;
        Ok(data)
    }

    /// One key and its tenant's record, as [`Self::load_all`] gives them, found through
    /// `kg:keyid:<id>` (the admin API's and the CLI's single-key views). Empty for an
    /// unknown key.
    pub async fn load_key(&self, key_id: &str) -> Result<KeysData, ManageError> {
        let mut data = KeysData::empty();
        let Some(tenant_id) = self.tenant_of_key(key_id, MANAGE_TIMEOUT).await.map_err(unavailable)? else {
            return Ok(data);
        };
        let tenant: Fields = self
            .manage(StoreOp::Lookup, {
                let name = layout::tenant(&tenant_id);
                move |mut con| async move { redis::cmd("HGETALL").arg(name).query_async(&mut con).await }
            })
            .await?;
        if let Some(tenant) = parse_tenant(&tenant).map_err(corrupt)? {
            data.tenants.insert(tenant.id.clone(), tenant);
        }
        self.load_records(&mut data, vec![layout::key(&tenant_id, key_id)]).await?;
        Ok(data)
    }

    /// Reads the key hashes named `records` into `data` (an empty hash, a tombstone past
    /// its 30 days still in its tenant's set, is skipped).
    async fn load_records(&self, data: &mut KeysData, records: Vec<String>) -> Result<(), ManageError> {
        if records.is_empty() {
            return Ok(());
        }
        let hashes: Vec<Fields> = self
            .manage(StoreOp::Lookup, {
                let records = records.clone();
                move |con| async move {
                    query_each(&con, records.iter().map(|record| redis::cmd("HGETALL").arg(record).clone()).collect())
                        .await
                }
            })
            .await?;
        for (name, fields) in records.iter().zip(&hashes) {
            if let Some(key) = parse_key(fields).map_err(|e| corrupt(format!("{name}: {e}")))? {
                data.keys.insert(key.id.clone(), key);
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Tenants

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
        let record = TenantRecord { id: id.to_string(), plan: plan.to_string(), created_at: now };
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

    // -----------------------------------------------------------------------------------
    // Keys

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
            let created = manage::new_key_record(
                peppers,
                generate_key_id(),
                &old.tenant,
                &old.name,
                rotation.scopes,
                old.expires_at,
                now,
            );
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

    // -----------------------------------------------------------------------------------
    // Helpers

    /// A management call: bounded by [`MANAGE_TIMEOUT`], errors as [`ManageError`].
    async fn manage<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, ManageError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.client.run_with_timeout(op, MANAGE_TIMEOUT, call).await.map_err(unavailable)
    }

    /// A background call: bounded by [`BACKGROUND_TIMEOUT`].
    async fn background<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.client.run_with_timeout(op, BACKGROUND_TIMEOUT, call).await
    }

    /// The tenant of a key id: from `kg:keyid:<id>`, else (an entry lost to a failed
    /// second step) by asking every listed tenant's key set.
    async fn tenant_of_key(&self, key_id: &str, timeout: Duration) -> Result<Option<String>, RedisCallError> {
        let entry = layout::key_id(key_id);
        let found: Option<String> = self
            .client
            .run_with_timeout(StoreOp::Lookup, timeout, move |mut con| async move {
                redis::cmd("GET").arg(&entry).query_async(&mut con).await
            })
            .await?;
        if found.is_some() {
            return Ok(found);
        }
        let tenants = self.tenant_ids(OffsetDateTime::now_utc(), timeout).await?;
        if tenants.is_empty() {
            return Ok(None);
        }
        let key_id = key_id.to_string();
        let candidates = tenants.clone();
        let members: Vec<bool> = self
            .client
            .run_with_timeout(StoreOp::Lookup, timeout, move |con| async move {
                let commands = candidates
                    .iter()
                    .map(|tenant| redis::cmd("SISMEMBER").arg(layout::keys(tenant)).arg(&key_id).clone());
                query_each(&con, commands.collect()).await
            })
            .await?;
        Ok(tenants.into_iter().zip(members).find_map(|(tenant, member)| member.then_some(tenant)))
    }

    /// The ids of the listed tenants and of those deleted less than 30 days ago, sorted.
    async fn tenant_ids(&self, now: OffsetDateTime, timeout: Duration) -> Result<Vec<String>, RedisCallError> {
        let since = now.unix_timestamp().saturating_sub(TOMBSTONE_TTL.as_secs() as i64);
        let (listed, deleted): (Vec<String>, Vec<String>) = self
            .client
            .run_with_timeout(StoreOp::Lookup, timeout, move |con| async move {
                let (mut listed, mut deleted) = (con.clone(), con);
                let members = redis::cmd("SMEMBERS").arg(layout::TENANTS).clone();
                let range = redis::cmd("ZRANGEBYSCORE").arg(layout::DELETED_TENANTS).arg(since).arg("+inf").clone();
                let (a, b) = tokio::join!(members.query_async(&mut listed), range.query_async(&mut deleted));
                Ok((a?, b?))
            })
            .await?;
        let ids: BTreeSet<String> = listed.into_iter().chain(deleted).collect();
        Ok(ids.into_iter().collect())
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

    /// Publishes invalidations, after the change they announce is durable. A failure is
    /// logged, not returned: the change is made, and replicas that missed the message
    /// (their subscription is then down too, Redis being unreachable) revalidate their
    /// caches when they subscribe again.
    async fn publish(&self, messages: Vec<Invalidation>) {
        if messages.is_empty() {
            return;
        }
        let payloads: Vec<String> = messages.iter().map(Invalidation::encode).collect();
        let result = self
            .client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |mut con| async move {
                // One pipeline of keyless commands, which a cluster sends to one node (and
                // the cluster bus to every other): in order, one round trip.
                let mut pipe = redis::pipe();
                for payload in &payloads {
                    pipe.cmd("PUBLISH").arg(INVALIDATION_CHANNEL).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut con).await
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "a key invalidation was not published; replicas revalidate when they resubscribe");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The scripts. Each one's KEYS are on one slot: the tenant's hash tag. Record names the
// scripts build themselves (from `layout::key_prefix`) carry the same tag.

/// Lua: RFC 3339 UTC timestamps made comparable as strings (fraction padded to 9 digits).
const NORM: &str = r"
local function norm(t)
  local base, frac = string.match(t, '^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d)%.?(%d*)Z$')
  if not base then return t end
  return base .. '.' .. frac .. string.rep('0', 9 - #frac)
end
";

/// KEYS: a key record, its tenant. Returns both hashes (empty when missing).
static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new("return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}"));

/// KEYS: tenant hash, tenant's key set. ARGV: plan known (1/0), then field/value pairs.
static CREATE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
if ARGV[1] ~= '1' then return {'unknown_plan'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
-- A deleted tenant's set of tombstones expires; the tenant is back, so it stays.
redis.call('PERSIST', KEYS[2])
return {'ok'}
",
    )
});

/// KEYS: tenant hash. ARGV: the plan. Returns the tenant's fields after the change.
static SET_PLAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_tenant'} end
redis.call('HSET', KEYS[1], 'plan', ARGV[1])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
",
    )
});

/// KEYS: tenant hash, tenant's key set. ARGV: now, tombstone TTL (s), record prefix.
/// Returns `ok` then (key id, digest) of every key it revoked.
static DELETE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_tenant'} end
redis.call('DEL', KEYS[1])
local out = {'ok'}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local record = ARGV[3] .. id
  if redis.call('EXISTS', record) == 0 then
    redis.call('SREM', KEYS[2], id)
  elseif not redis.call('HGET', record, 'revoked_at') then
    redis.call('HSET', record, 'revoked_at', ARGV[1])
    redis.call('EXPIRE', record, ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', record, 'digest') or ''
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return out
",
    )
});

/// KEYS: tenant hash, tenant's key set, new record. ARGV: now, record prefix, new key id,
/// number of plans P, P × (plan, max_keys or -1, api_access 1/0), then the record's
/// field/value pairs. Counts the tenant's keys by `manage::counts_against_max_keys`.
static CREATE_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NORM}
if redis.call('EXISTS', KEYS[1]) == 0 then return {{'unknown_tenant'}} end
local plan = redis.call('HGET', KEYS[1], 'plan') or ''
local plans = tonumber(ARGV[4])
local max, access = nil, nil
for i = 0, plans - 1 do
  if ARGV[5 + 3 * i] == plan then
    max = tonumber(ARGV[6 + 3 * i])
    access = ARGV[7 + 3 * i]
  end
end
if max == nil then return {{'unknown_plan', plan}} end
if access ~= '1' then return {{'no_api_access', plan}} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {{'id_taken'}} end
if max >= 0 then
  local now = norm(ARGV[1])
  local count = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local f = redis.call('HMGET', ARGV[2] .. id, 'id', 'revoked_at', 'expires_at', 'replaced_by')
    if not f[1] then
      redis.call('SREM', KEYS[2], id)
    elseif (not f[2] or norm(f[2]) > now) and (not f[3] or norm(f[3]) > now) and not f[4] then
      count = count + 1
    end
  end
  if count >= max then return {{'cap', plan, tostring(max)}} end
end
redis.call('HSET', KEYS[3], unpack(ARGV, 5 + 3 * plans))
redis.call('SADD', KEYS[2], ARGV[3])
return {{'ok'}}
"
    ))
});

/// KEYS: tenant hash, tenant's key set, old record, new record. ARGV: the expected tenant
/// plan and old `revoked_at`, `expires_at`, `replaced_by`, `scopes` ('' for none), the
/// old key's new `expires_at`, the new key id, then the new record's field/value pairs.
static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[3]) == 0 then return {'changed'} end
if (redis.call('HGET', KEYS[1], 'plan') or '') ~= ARGV[1] then return {'changed'} end
local f = redis.call('HMGET', KEYS[3], 'revoked_at', 'expires_at', 'replaced_by', 'scopes')
for i = 1, 4 do
  if (f[i] or '') ~= ARGV[i + 1] then return {'changed'} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'id_taken'} end
redis.call('HSET', KEYS[4], unpack(ARGV, 8))
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[3], 'replaced_by', ARGV[7], 'expires_at', ARGV[6])
return {'ok'}
",
    )
});

/// KEYS: a key record. ARGV: now, tombstone TTL (s). Returns `ok` and the record's
/// fields, or `revoked` with its digest and remaining TTL.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_key'} end
if redis.call('HGET', KEYS[1], 'revoked_at') then
  return {'revoked', redis.call('HGET', KEYS[1], 'digest') or '', tostring(redis.call('TTL', KEYS[1]))}
end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
",
    )
});

/// KEYS: a key record. ARGV: the digest read, the digest to store (`pepper_id:hex`).
static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local digest = redis.call('HGET', KEYS[1], 'digest')
if not digest then return 'gone' end
if digest == ARGV[2] then return 'same' end
if digest ~= ARGV[1] then return 'other' end
redis.call('HSET', KEYS[1], 'digest', ARGV[2])
return 'ok'
",
    )
});

/// KEYS: key records of one tenant. ARGV[i]: when KEYS[i] was used.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NORM}
for i, record in ipairs(KEYS) do
  if redis.call('EXISTS', record) == 1 then
    local seen = redis.call('HGET', record, 'last_used_at')
    if not seen or norm(seen) < norm(ARGV[i]) then
      redis.call('HSET', record, 'last_used_at', ARGV[i])
    end
  end
end
return 0
"
    ))
});

/// KEYS: a key record, its tenant's key set. ARGV: its digest, its id. Deletes the
/// record if it is still the one created.
static UNDO_CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
",
    )
});

/// KEYS: tenant's key set, old record, new record. ARGV: new key id, the old key's
/// original `expires_at` ('' for none).
static UNDO_ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[2], 'replaced_by') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], 'replaced_by')
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], 'expires_at')
else
  redis.call('HSET', KEYS[2], 'expires_at', ARGV[2])
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
",
    )
});

// ---------------------------------------------------------------------------------------
// Encoding

/// A time as stored: RFC 3339 in UTC (`Z`), fractional seconds only when non-zero.
fn format_time(t: OffsetDateTime) -> String {
    // Cannot fail for a UTC time in the years 0–9999, the range `time` supports here.
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).unwrap_or_default()
}

fn parse_time(field: &str, text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("`{field}` is not an RFC 3339 time: {e}"))
}

/// `pepper_id:hex`, as the record's `digest` field holds it.
fn digest_text(digest: &KeyDigest) -> String {
    format!("{}:{}", digest.pepper_id, digest.hex)
}

fn parse_digest(text: &str) -> Option<KeyDigest> {
    let (pepper_id, hex) = text.rsplit_once(':')?;
    (!pepper_id.is_empty() && !hex.is_empty())
        .then(|| KeyDigest { pepper_id: pepper_id.to_string(), hex: hex.to_string() })
}

/// `<tenant>/<key_id>` → its parts.
fn split_target(text: &str) -> Option<(&str, &str)> {
    let (tenant, key_id) = text.split_once('/')?;
    (!tenant.is_empty() && !key_id.is_empty()).then_some((tenant, key_id))
}

/// A key record as hash fields; absent optional fields are not written.
fn key_fields(record: &KeyRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", record.id.clone()),
        ("tenant", record.tenant.clone()),
        ("name", record.name.clone()),
        ("scopes", serde_json::to_string(&record.scopes).unwrap_or_else(|_| "[]".to_string())),
        ("created_at", format_time(record.created_at)),
        ("digest", digest_text(&record.digest)),
    ];
    let optional =
        [("expires_at", record.expires_at), ("revoked_at", record.revoked_at), ("last_used_at", record.last_used_at)];
    fields.extend(optional.into_iter().filter_map(|(name, t)| t.map(|t| (name, format_time(t)))));
    if let Some(by) = &record.replaced_by {
        fields.push(("replaced_by", by.clone()));
    }
    fields
}

fn tenant_fields(tenant: &TenantRecord) -> Vec<(&'static str, String)> {
    vec![("id", tenant.id.clone()), ("plan", tenant.plan.clone()), ("created_at", format_time(tenant.created_at))]
}

/// A key record from its hash; `None` when the hash is empty (missing).
fn parse_key(fields: &Fields) -> Result<Option<KeyRecord>, String> {
    if fields.is_empty() {
        return Ok(None);
    }
    let required = |name: &str| fields.get(name).ok_or_else(|| format!("a key record has no `{name}`"));
    let optional_time =
        |name: &str| fields.get(name).filter(|v| !v.is_empty()).map(|v| parse_time(name, v)).transpose();
    let scopes: Vec<String> =
        serde_json::from_str(required("scopes")?).map_err(|e| format!("`scopes` is not a JSON list: {e}"))?;
    Ok(Some(KeyRecord {
        id: required("id")?.clone(),
        tenant: required("tenant")?.clone(),
        name: required("name")?.clone(),
        scopes,
        created_at: parse_time("created_at", required("created_at")?)?,
        expires_at: optional_time("expires_at")?,
        revoked_at: optional_time("revoked_at")?,
        last_used_at: optional_time("last_used_at")?,
        replaced_by: fields.get("replaced_by").filter(|v| !v.is_empty()).cloned(),
        digest: parse_digest(required("digest")?).ok_or("`digest` is not `pepper_id:hex`")?,
    }))
}

/// A tenant from its hash; `None` when the hash is empty (missing).
fn parse_tenant(fields: &Fields) -> Result<Option<TenantRecord>, String> {
    if fields.is_empty() {
        return Ok(None);
    }
    let required = |name: &str| fields.get(name).ok_or_else(|| format!("a tenant record has no `{name}`"));
    Ok(Some(TenantRecord {
        id: required("id")?.clone(),
        plan: required("plan")?.clone(),
        created_at: parse_time("created_at", required("created_at")?)?,
    }))
}

/// The policy's plans as the create script takes them: (name, max_keys or -1,
/// api_access 1/0) for each, flat.
fn plan_args(policy: &Policy) -> Vec<String> {
    let mut plans: Vec<_> = policy.plans.values().collect();
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    plans
        .into_iter()
        .flat_map(|plan| {
            let max = plan.max_keys.map_or_else(|| "-1".to_string(), |m| m.to_string());
            [plan.name.clone(), max, if plan.api_access { "1" } else { "0" }.to_string()]
        })
        .collect()
}

/// A script's status, its first element.
fn status(reply: &[String]) -> &str {
    reply.first().map_or("", String::as_str)
}

/// The field/value pairs after a script's `ok`.
fn reply_fields(reply: &[String]) -> Fields {
    reply.get(1..).unwrap_or_default().chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}

/// Sends independent commands, which may be on different slots, concurrently over the
/// multiplexed connection: in effect a pipeline, one round trip on a single server, but
/// one that a Redis Cluster accepts (redis-rs sends a cluster pipeline to one slot only).
async fn query_each<T: redis::FromRedisValue>(
    con: &RedisConnection,
    commands: Vec<redis::Cmd>,
) -> redis::RedisResult<Vec<T>> {
    let calls = commands
        .into_iter()
        .map(|command| {
            let mut con = con.clone();
            async move { command.query_async::<T>(&mut con).await }
        })
        .collect();
    join_all(calls).await.into_iter().collect()
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn join_all<F: Future>(calls: Vec<F>) -> Vec<F::Output> {
    let mut calls: Vec<Pin<Box<F>>> = calls.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = calls.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (call, output) in calls.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match call.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn unavailable(e: RedisCallError) -> ManageError {
    ManageError::Store(StoreError::Unavailable(e.to_string()))
}

fn corrupt(message: impl Into<String>) -> ManageError {
    ManageError::Store(StoreError::Corrupt(format!("unreadable data in Redis: {}", message.into())))
}

fn unexpected(reply: &[String]) -> ManageError {
    corrupt(format!("unexpected script reply `{}`", status(reply)))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn invalidations_round_trip() {
        for message in [Invalidation::Digest("ab12".into()), Invalidation::Tenant("acme".into())] {
            assert_eq!(Invalidation::parse(&message.encode()), Some(message));
        }
        assert_eq!(Invalidation::parse("digest:"), None);
        assert_eq!(Invalidation::parse("other:x"), None);
    }

    #[test]
    fn layout_keeps_a_tenant_on_one_slot() {
        let digest = KeyDigest { pepper_id: "v1".into(), hex: "ab".into() };
        assert_eq!(layout::tenant("acme"), "kg:{t:acme}:tenant");
        assert_eq!(layout::keys("acme"), "kg:{t:acme}:keys");
        assert_eq!(layout::key("acme", "key_1"), "kg:{t:acme}:key:key_1");
        assert_eq!(layout::digest(&digest), "kg:digest:v1:ab");
        assert_eq!(layout::key_id("key_1"), "kg:keyid:key_1");
        assert_eq!(split_target(&layout::digest_target("acme", "key_1")), Some(("acme", "key_1")));
        assert_eq!(split_target("nokey/"), None);
    }

    #[test]
    fn records_round_trip_through_hash_fields() {
        let record = KeyRecord {
            id: "key_1".into(),
            tenant: "acme".into(),
            name: "billing, \"worker\"".into(),
            scopes: vec!["calls:read".into(), "calls:write".into()],
            created_at: datetime!(2025-06-01 12:00:00.5 UTC),
            expires_at: Some(datetime!(2025-06-02 12:00 +02:00)),
            revoked_at: None,
            last_used_at: Some(datetime!(2025-06-01 13:00 UTC)),
            replaced_by: Some("key_2".into()),
            digest: KeyDigest { pepper_id: "v1".into(), hex: "00ff".into() },
        };
        let fields: Fields = key_fields(&record).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(fields["created_at"], "2025-06-01T12:00:00.5Z");
        assert_eq!(fields["expires_at"], "2025-06-02T10:00:00Z");
        assert!(!fields.contains_key("revoked_at"));
        assert_eq!(parse_key(&fields).unwrap(), Some(record));
        assert_eq!(parse_key(&Fields::new()).unwrap(), None);
        let tenant =
            TenantRecord { id: "acme".into(), plan: "pro".into(), created_at: datetime!(2025-06-01 12:00 UTC) };
        let fields: Fields = tenant_fields(&tenant).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(parse_tenant(&fields).unwrap(), Some(tenant));
        let mut broken = fields.clone();
        broken.remove("plan");
        assert!(parse_tenant(&broken).is_err());
    }
}
