//! Authentication: from a presented secret to a [`Principal`], through the key store.
//! Digests under every pepper, finds the record, and tells unknown, expired and revoked
//! apart. A key found under an old pepper is re-stored under the current one, off the
//! request's path.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::AuthFailure;
use crate::keys::manage;
use crate::keys::store::{FileStore, Lookup};
use crate::keys::{KeyState, Peppers, Principal, Secret};

/// What authenticating a well-formed key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Principal),
    Invalid(AuthFailure),
}

/// Looks keys up in the configured store.
pub struct KeyService {
    store: Arc<FileStore>,
    peppers: Peppers,
}

impl KeyService {
    pub fn new(store: Arc<FileStore>, peppers: Peppers) -> Self {
        KeyService { store, peppers }
    }

    pub fn store(&self) -> &Arc<FileStore> {
        &self.store
    }

    /// Authenticates a well-formed secret at `now`.
    pub fn authenticate(&self, secret: &Secret, now: OffsetDateTime) -> Authentication {
        let digests = self.peppers.all(secret);
        match self.store.lookup(&digests) {
            Lookup::NotFound => Authentication::Invalid(AuthFailure::Unknown),
            Lookup::Found { key, tenant, matched } => {
                if !self.peppers.is_empty() && matched != digests[0] {
                    self.restore_under_current_pepper(key.id.clone(), digests[0].clone());
                }
                match (key.state(now), tenant) {
                    (KeyState::Revoked, _) | (_, None) => Authentication::Invalid(AuthFailure::Revoked),
                    (KeyState::Expired, _) => Authentication::Invalid(AuthFailure::Expired),
                    (KeyState::Active, Some(tenant)) => Authentication::Valid(Principal {
                        key_id: key.id,
                        tenant: tenant.id,
                        plan: tenant.plan,
                        scopes: key.scopes,
                    }),
                }
            }
        }
    }

    /// Re-stores a key's digest under the current pepper, on a blocking thread (the file
    /// store writes under a lock): never on the request's path.
    fn restore_under_current_pepper(&self, key_id: String, current: crate::keys::KeyDigest) {
        let store = self.store.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn_blocking(move || {
            let result = store.update(|data| {
                manage::restore_digest(data, &key_id, current);
                Ok::<(), crate::keys::store::StoreError>(())
            });
            match result {
                Ok(()) => tracing::info!(target: "audit", action = "key.repepper", key_id = %key_id, "key re-stored under the current pepper"),
                Err(e) => tracing::warn!(key_id = %key_id, error = %e, "could not re-store a key under the current pepper"),
            }
        });
    }
}
