//! Where keys and tenants live. The file store: one JSON file holding digests only,
//! written atomically (temp file + rename) under an exclusive lock so that concurrent
//! `keygate keys …` commands lose no write, and read by the proxy into an in-memory
//! snapshot that is re-read when the file changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{KeyDigest, KeyRecord, TenantRecord};

/// The whole content of the keys file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysData {
    /// Format version, 1.
    pub version: u32,
    pub tenants: BTreeMap<String, TenantRecord>,
    pub keys: BTreeMap<String, KeyRecord>,
}

/// A store failure. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("key store unavailable: {0}")]
    Unavailable(String),
}

/// What a lookup by digest found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found {
        key: KeyRecord,
        /// `None` when the tenant no longer exists.
        tenant: Option<TenantRecord>,
        /// The digest (of those asked for) that matched: when its pepper is not the
        /// current one, the caller re-stores the key under the current pepper.
        matched: KeyDigest,
    },
    NotFound,
}

/// The embedded file store.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// Opens the store at `path`; a missing file is an empty store (created on first
    /// write). An unreadable or corrupt file is an error.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let _ = path;
        todo!("keys helper")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since the last read. Returns whether it did.
    /// A corrupt file (e.g. hand-edited) is an error and keeps the last good snapshot.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        todo!("keys helper")
    }

    /// Looks a key up by its digests (one per pepper), in memory; digests are compared
    /// in constant time.
    pub fn lookup(&self, digests: &[KeyDigest]) -> Lookup {
        let _ = digests;
        todo!("keys helper")
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> std::sync::Arc<KeysData> {
        todo!("keys helper")
    }

    /// Runs `change` on the file's latest content under an exclusive lock and, if it
    /// returns `Ok`, writes the result atomically (temp file in the same directory,
    /// fsync, rename). Returns what `change` returned.
    pub fn update<R, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut KeysData) -> Result<R, E>,
    ) -> Result<R, E> {
        let _ = change;
        todo!("keys helper")
    }
}
