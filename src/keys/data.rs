//! What every key store holds and answers, whatever its backend: the whole data
//! ([`KeysData`], also the keys file's format), the result of a lookup by digest
//! ([`Lookup`]) and a store's failure ([`StoreError`]). The lifecycle rules
//! ([`super::manage`]) work on these types, and both stores build on them, so they sit
//! below both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{IdentityHeaders, KeyDigest, KeyRecord, TenantRecord};

/// The format version this keygate reads and writes.
pub const KEYS_FILE_VERSION: u32 = 1;

/// The whole content of the keys file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysData {
    /// Format version, 1.
    pub version: u32,
    pub tenants: BTreeMap<String, TenantRecord>,
    pub keys: BTreeMap<String, KeyRecord>,
}

impl KeysData {
    /// An empty store of the current version: what a missing file holds.
    pub fn empty() -> KeysData {
        KeysData { version: KEYS_FILE_VERSION, ..KeysData::default() }
    }
}

/// A store failure. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {message}")]
    File { path: PathBuf, message: String },
    /// The store could not be reached (or did not answer in time).
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data keygate cannot read (a hand-edited Redis record, an
    /// unexpected script reply): not an outage, but answered like one (503 on the admin
    /// API, the same message in the CLI), so its text keeps the wording it had when it
    /// was reported as `Unavailable`.
    #[error("key store unavailable: {0}")]
    Corrupt(String),
}

/// What a lookup by digest found.
// Returned by value once per lookup, never stored in bulk: boxing `Found` would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found {
        /// Shared, not copied: the file store's snapshot and the cache hold the same
        /// record, so a request's lookup copies no string.
        key: Arc<KeyRecord>,
        /// `None` when the tenant no longer exists.
        tenant: Option<Arc<TenantRecord>>,
        /// The digest (of those asked for) that matched: when its pepper is not the
        /// current one, the caller re-stores the key under the current pepper.
        matched: KeyDigest,
        /// The key's identity headers (with its tenant), made with the record and shared
        /// like it; `None` when the tenant no longer exists.
        identity: Option<Arc<IdentityHeaders>>,
    },
    NotFound,
}

impl Lookup {
    /// `key` found by the digest `matched`, with its tenant if that still exists; the
    /// identity headers are made here (once per record a store holds, not per request).
    pub fn found(key: Arc<KeyRecord>, tenant: Option<Arc<TenantRecord>>, matched: KeyDigest) -> Lookup {
        let identity = tenant.as_ref().map(|tenant| Arc::new(IdentityHeaders::of(&key, tenant)));
        Lookup::Found { key, tenant, matched, identity }
    }
}
