//! The key store as the CLI, the admin API and the proxy see it: the embedded file or
//! Redis, behind one set of operations with the same rules and the same errors.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::manage::{self, CreatedKey, ManageError, NewKey};
use super::redis_store::RedisStore;
use super::store::{FileStore, KeysData, Lookup, StoreError};
use super::{KeyDigest, KeyRecord, Peppers, TenantRecord};
use crate::policy::Policy;
use crate::redis_client::RedisCallError;

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

impl From<RedisCallError> for StoreError {
    fn from(e: RedisCallError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl Store {
    /// Every tenant and key (lists, `show`, the admin API).
    pub async fn data(&self) -> Result<Arc<KeysData>, ManageError> {
        match self {
            Store::File(store) => {
                store.refresh()?;
                Ok(store.snapshot())
            }
            Store::Redis(store) => Ok(Arc::new(store.load_all().await?)),
        }
    }

    pub async fn create_tenant(&self, policy: &Policy, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::create_tenant(data, policy, id, plan, now())),
            Store::Redis(store) => store.create_tenant(policy, id, plan, now()).await,
        }
    }

    pub async fn set_plan(&self, policy: &Policy, id: &str, plan: &str) -> Result<TenantRecord, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::set_plan(data, policy, id, plan)),
            Store::Redis(store) => store.set_plan(policy, id, plan).await,
        }
    }

    /// Deletes a tenant and revokes its keys; returns the revoked key ids.
    pub async fn delete_tenant(&self, id: &str) -> Result<Vec<String>, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::delete_tenant(data, id, now())),
            Store::Redis(store) => store.delete_tenant(id, now()).await,
        }
    }

    pub async fn create_key(
        &self,
        policy: &Policy,
        peppers: &Peppers,
        new: &NewKey,
    ) -> Result<CreatedKey, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::create_key(data, policy, peppers, new, now())),
            Store::Redis(store) => store.create_key(policy, peppers, new, now()).await,
        }
    }

    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::revoke_key(data, id, now())),
            Store::Redis(store) => store.revoke_key(id, now()).await,
        }
    }

    pub async fn rotate_key(
        &self,
        policy: &Policy,
        peppers: &Peppers,
        id: &str,
        grace: Duration,
    ) -> Result<CreatedKey, ManageError> {
        match self {
            Store::File(store) => store.update(|data| manage::rotate_key(data, policy, peppers, id, grace, now())),
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
            Store::File(store) => store.update(|data| {
                manage::restore_digest(data, key_id, current);
                Ok::<(), StoreError>(())
            }),
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

    pub fn kind(&self) -> &'static str {
        match self {
            Store::File(_) => "file",
            Store::Redis(_) => "redis",
        }
    }
}
