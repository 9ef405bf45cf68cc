//! The key store as the CLI, the admin API and the proxy see it: the embedded file or
//! Redis, behind one set of operations with the same rules and the same errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::data::{KeysData, Lookup, StoreError};
use super::file_store::FileStore;
use super::manage::{self, CreatedKey, ManageError, NewKey};
use super::redis_store::RedisStore;
use super::{KeyDigest, KeyRecord, Peppers, TenantRecord};
use crate::policy::overrides::LimitOverrides;
use crate::policy::Policy;

/// Where keys and tenants live (`[keys] source`).
pub enum Store {
    File(Arc<FileStore>),
    Redis(RedisStore),
}

/// Now, to the second: stored times read better without nanoseconds, and truncating never
/// moves a revocation or an expiry later than asked.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

impl Store {
    /// Every tenant and key (lists, `show`, the admin API).
    pub async fn data(&self) -> Result<Arc<KeysData>, ManageError> {
        match self {
            Store::File(store) => {
                off_runtime(store, |store| store.refresh().map_err(ManageError::from)).await?;
                Ok(store.snapshot())
            }
            Store::Redis(store) => Ok(Arc::new(store.load_all().await?)),
        }
    }

    /// What [`Self::data`] holds about one tenant: its record and its keys (all of them,
    /// revoked and expired included). The file store gives its whole snapshot (in memory
    /// already); Redis reads that tenant alone.
    pub async fn tenant_data(&self, id: &str) -> Result<Arc<KeysData>, ManageError> {
        match self {
            Store::File(_) => self.data().await,
            Store::Redis(store) => Ok(Arc::new(store.load_tenant(id).await?)),
        }
    }

    /// What [`Self::data`] holds about one key: the key and its tenant's record. The file
    /// store gives its whole snapshot; Redis reads that key alone.
    pub async fn key_data(&self, id: &str) -> Result<Arc<KeysData>, ManageError> {
        match self {
            Store::File(_) => self.data().await,
            Store::Redis(store) => Ok(Arc::new(store.load_key(id).await?)),
        }
    }

    pub async fn create_tenant(&self, policy: &Arc<Policy>, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, id, plan) = (Arc::clone(policy), id.to_string(), plan.to_string());
                update(store, move |data| manage::create_tenant(data, &policy, &id, &plan, now())).await
            }
            Store::Redis(store) => store.create_tenant(policy, id, plan, now()).await,
        }
    }

    pub async fn set_plan(&self, policy: &Arc<Policy>, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, id, plan) = (Arc::clone(policy), id.to_string(), plan.to_string());
                update(store, move |data| manage::set_plan(data, &policy, &id, &plan)).await
            }
            Store::Redis(store) => store.set_plan(policy, id, plan).await,
        }
    }

    /// Replaces a tenant's limit overrides (empty ones clear them); a running proxy
    /// applies them within a second (the file store's watcher, Redis's invalidations).
    pub async fn set_tenant_limits(
        &self,
        policy: &Arc<Policy>,
        id: &str,
        overrides: &LimitOverrides,
    ) -> Result<TenantRecord, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, id, overrides) = (Arc::clone(policy), id.to_string(), overrides.clone());
                update(store, move |data| manage::set_tenant_limits(data, &policy, &id, &overrides)).await
            }
            Store::Redis(store) => store.set_tenant_limits(policy, id, overrides).await,
        }
    }

    /// Replaces a key's limit overrides (empty ones clear them), as
    /// [`Self::set_tenant_limits`] does a tenant's.
    pub async fn set_key_limits(
        &self,
        policy: &Arc<Policy>,
        id: &str,
        overrides: &LimitOverrides,
    ) -> Result<KeyRecord, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, id, overrides) = (Arc::clone(policy), id.to_string(), overrides.clone());
                update(store, move |data| manage::set_key_limits(data, &policy, &id, &overrides)).await
            }
            Store::Redis(store) => store.set_key_limits(policy, id, overrides).await,
        }
    }

    /// Moves every tenant on plan `from` to plan `to` of the policy (`from` need not be in
    /// it any more): the bulk step of renaming a plan. Returns the tenants moved. The
    /// file store moves them all in one write; Redis one tenant at a time, each change
    /// atomic, so that running it again after a failure moves the rest.
    pub async fn move_plan(
        &self,
        policy: &Arc<Policy>,
        from: &str,
        to: &str,
    ) -> Result<Vec<TenantRecord>, ManageError> {
        manage::check_plan(policy, to)?;
        match self {
            Store::File(store) => {
                let (policy, from, to) = (Arc::clone(policy), from.to_string(), to.to_string());
                update(store, move |data| {
                    let ids: Vec<String> =
                        data.tenants.values().filter(|t| t.plan == from).map(|t| t.id.clone()).collect();
                    ids.iter().map(|id| manage::set_plan(data, &policy, id, &to)).collect()
                })
                .await
            }
            Store::Redis(store) => {
                let mut moved = Vec::new();
                for tenant in store.load_tenants().await?.into_iter().filter(|t| t.plan == from) {
                    moved.push(store.set_plan(policy, &tenant.id, to).await?);
                }
                Ok(moved)
            }
        }
    }

    /// How many tenants are on each plan (deleted tenants are not counted): what a policy
    /// that drops a plan is checked against (`crate::reload::orphans`). The file store
    /// reads its file again first; Redis reads the tenant records alone, not the keys.
    pub async fn tenants_per_plan(&self) -> Result<BTreeMap<String, usize>, ManageError> {
        let mut counts = BTreeMap::new();
        let mut count = |plan: &str| *counts.entry(plan.to_string()).or_insert(0) += 1;
        match self {
            Store::File(_) => self.data().await?.tenants.values().for_each(|t| count(&t.plan)),
            Store::Redis(store) => store.load_tenants().await?.iter().for_each(|t| count(&t.plan)),
        }
        Ok(counts)
    }

    /// Deletes a tenant and revokes its keys; returns the revoked key ids.
    pub async fn delete_tenant(&self, id: &str) -> Result<Vec<String>, ManageError> {
        match self {
            Store::File(store) => {
                let id = id.to_string();
                update(store, move |data| manage::delete_tenant(data, &id, now())).await
            }
            Store::Redis(store) => store.delete_tenant(id, now()).await,
        }
    }

    pub async fn create_key(
        &self,
        policy: &Arc<Policy>,
        peppers: &Peppers,
        new: &NewKey,
    ) -> Result<CreatedKey, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, peppers, new) = (Arc::clone(policy), peppers.clone(), new.clone());
                update(store, move |data| manage::create_key(data, &policy, &peppers, &new, now())).await
            }
            Store::Redis(store) => store.create_key(policy, peppers, new, now()).await,
        }
    }

    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, ManageError> {
        match self {
            Store::File(store) => {
                let id = id.to_string();
                update(store, move |data| manage::revoke_key(data, &id, now())).await
            }
            Store::Redis(store) => store.revoke_key(id, now()).await,
        }
    }

    pub async fn rotate_key(
        &self,
        policy: &Arc<Policy>,
        peppers: &Peppers,
        id: &str,
        grace: Duration,
    ) -> Result<CreatedKey, ManageError> {
        match self {
            Store::File(store) => {
                let (policy, peppers, id) = (Arc::clone(policy), peppers.clone(), id.to_string());
                update(store, move |data| manage::rotate_key(data, &policy, &peppers, &id, grace, now())).await
            }
            Store::Redis(store) => store.rotate_key(policy, peppers, id, grace, now()).await,
        }
    }

    /// The request path's lookup by digest (one per pepper, current first).
    pub async fn lookup(&self, digests: &[KeyDigest]) -> Result<Lookup, StoreError> {
        match self {
            Store::File(store) => Ok(store.lookup(digests)),
            Store::Redis(store) => Ok(store.lookup(digests).await?),
        }
    }

    /// Re-stores a key found under an old pepper under the current one.
    pub async fn restore_digest(&self, key_id: &str, current: KeyDigest) -> Result<(), StoreError> {
        match self {
            Store::File(store) => {
                let key_id = key_id.to_string();
                update(store, move |data| {
                    manage::restore_digest(data, &key_id, current);
                    Ok::<(), StoreError>(())
                })
                .await
            }
            Store::Redis(store) => Ok(store.restore_digest(key_id, current).await?),
        }
    }

    /// The file store, for what only it does (watching its file).
    pub fn file(&self) -> Option<&Arc<FileStore>> {
        match self {
            Store::File(store) => Some(store),
            Store::Redis(_) => None,
        }
    }

    /// The Redis store, for what only it has (its client).
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            Store::File(_) => None,
            Store::Redis(store) => Some(store),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }
}

/// [`FileStore::update`] on Tokio's blocking pool (see [`off_runtime`]).
async fn update<R, E>(
    store: &Arc<FileStore>,
    change: impl FnOnce(&mut KeysData) -> Result<R, E> + Send + 'static,
) -> Result<R, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    off_runtime(store, move |store| store.update(change)).await
}

/// Runs `work` on the file store on Tokio's blocking pool. A write takes an OS lock that
/// another process (a CLI command) may hold, and fsyncs the file and its directory; a
/// read stats and may read the file. None of that may stall a runtime thread: a proxy
/// worker's (every connection it serves waits; a key re-stored under a new pepper writes
/// from the request path) or the main thread's (health endpoints, metrics, watchers,
/// the Redis tasks, the admin API). Outside a runtime (the CLI runs inside one too) it
/// runs in place.
async fn off_runtime<R, E>(
    store: &Arc<FileStore>,
    work: impl FnOnce(&FileStore) -> Result<R, E> + Send + 'static,
) -> Result<R, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    if tokio::runtime::Handle::try_current().is_err() {
        return work(&store);
    }
    match tokio::task::spawn_blocking(move || work(&store)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down under it.
        Err(e) => Err(StoreError::Unavailable(format!("the key store operation did not finish: {e}")).into()),
    }
}
