//! Reading from Redis: the request path's lookup by digest (two round trips at most), and
//! the management views (everything, one tenant, one key), none of them a scan.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use super::codec::{parse_key, parse_tenant, split_target, Fields};
use super::scripts::READ;
use super::{corrupt, layout, query_each, unavailable, RedisStore, MANAGE_TIMEOUT};
use crate::keys::data::{KeysData, Lookup};
use crate::keys::manage::{ManageError, TOMBSTONE_TTL};
use crate::keys::{KeyDigest, TenantRecord};
use crate::metrics::StoreOp;
use crate::redis_client::RedisCallError;

impl RedisStore {
    /// Looks a key up by its digests (one per pepper, current first), on the request
    /// path: bounded as a whole by `redis.timeout` (through
    /// [`crate::redis_client::RedisClient::run`]) and two round trips at most: one `MGET`
    /// of the digest index entries (split by slot on a cluster), then one script on the
    /// tenant's slot reading the key record and the tenant. The record decides: `matched`
    /// is the asked digest equal (in constant time) to the record's; an index entry whose
    /// record is gone or holds another digest is not a match.
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
        Ok(Lookup::found(Arc::new(key), tenant.map(Arc::new), matched))
    }

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
                    let calls: Vec<_> = ids
                        .iter()
                        .map(|id| {
                            let mut con = con.clone();
                            // One tenant's two reads: one slot, so one pipeline.
                            let mut pipe = redis::pipe();
                            pipe.cmd("HGETALL").arg(layout::tenant(id)).cmd("SMEMBERS").arg(layout::keys(id));
                            async move { pipe.query_async(&mut con).await }
                        })
                        .collect();
                    futures_util::future::join_all(calls).await.into_iter().collect()
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

    /// The tenant of a key id: from `kg:keyid:<id>`, else (an entry lost to a failed
    /// second step) by asking every listed tenant's key set.
    pub(super) async fn tenant_of_key(
        &self,
        key_id: &str,
        timeout: Duration,
    ) -> Result<Option<String>, RedisCallError> {
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

    /// Every tenant record, without keys: what a policy reload checks its plans against
    /// (`crate::reload::orphans`). Two round trips (the ids, then one `HGETALL` each, sent
    /// at once), none a scan; deleted tenants (no record left) are not in it.
    pub async fn load_tenants(&self) -> Result<Vec<TenantRecord>, ManageError> {
        let ids = self.tenant_ids(OffsetDateTime::now_utc(), MANAGE_TIMEOUT).await.map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Fields> = self
            .manage(StoreOp::Lookup, move |con| async move {
                let commands = ids.iter().map(|id| redis::cmd("HGETALL").arg(layout::tenant(id)).clone()).collect();
                query_each(&con, commands).await
            })
            .await?;
        records.iter().filter_map(|fields| parse_tenant(fields).map_err(corrupt).transpose()).collect()
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
}
