//! The embedded file store: one JSON file holding digests only, written atomically (temp
//! file + rename) under an exclusive lock so that concurrent `keygate keys …` commands
//! lose no write, and read by the proxy into an in-memory snapshot that is re-read when
//! the file changes.

use crate::hashing::{FastMap, FastState};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::data::{KeysData, Lookup, StoreError, KEYS_FILE_VERSION};
use super::manage::prune_tombstones;
use super::{IdentityHeaders, KeyDigest, KeyRecord, TenantRecord};

/// The embedded file store.
///
/// Reads are served from an in-memory snapshot (the data plus a digest index) that
/// [`FileStore::refresh`] replaces when the file changes; writes go through
/// [`FileStore::update`], which serialises writers, across processes too, with an OS
/// lock on the sibling file `<file>.lock`.
pub struct FileStore {
    path: PathBuf,
    /// The sibling lock file, `<file>.lock`.
    lock_path: PathBuf,
    snapshot: ArcSwap<Loaded>,
    /// What the last read saw of the file; also serialises snapshot swaps.
    seen: Mutex<Seen>,
}

/// One snapshot: the data and its digest index.
struct Loaded {
    data: Arc<KeysData>,
    /// Digest hex → the key and its tenant, shared with every lookup that finds them (a
    /// lookup copies no record). A hash map is fine here: what must be constant-time is
    /// the comparison of the digest once found, which [`FileStore::lookup`] does.
    by_digest: FastMap<String, Indexed>,
}

/// A key as the index holds it: its record, its tenant's (`None` when the tenant does
/// not exist) and its identity headers, made once at load.
struct Indexed {
    key: Arc<KeyRecord>,
    tenant: Option<Arc<TenantRecord>>,
    identity: Option<Arc<IdentityHeaders>>,
}

/// The identity and content of the file as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// `None`: the file was missing.
    stamp: Option<Stamp>,
    /// SHA-256 of the content (empty when missing): an unchanged rewrite (e.g. `touch`,
    /// or a writer that changed nothing) does not rebuild the snapshot.
    hash: [u8; 32],
}

/// (mtime, length, device, inode): a cheap test of whether the file may have changed.
/// Every [`FileStore::update`] renames a new file in, so the inode alone changes on
/// each write; mtime and length catch edits in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Stamp { modified: meta.modified().ok(), len: meta.len(), dev, ino }
    }
}

/// What one read of the file found.
struct FileRead {
    stamp: Option<Stamp>,
    bytes: Vec<u8>,
}

impl FileStore {
    /// Opens the store at `path`; a missing file is an empty store (created on first
    /// write). An unreadable or corrupt file is an error.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let read = read_file(path)?;
        let data = parse(path, &read.bytes)?;
        let loaded = index(path, data)?;
        let mut lock_name = path.as_os_str().to_os_string();
        lock_name.push(".lock");
        Ok(FileStore {
            path: path.to_path_buf(),
            lock_path: PathBuf::from(lock_name),
            snapshot: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(Seen { stamp: read.stamp, hash: sha256(&read.bytes) }),
        })
    }

    /// The keys file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since the last read. Returns whether it did.
    /// A corrupt file (e.g. hand-edited) is an error and keeps the last good snapshot.
    ///
    /// Cheap when nothing changed (one `stat`), so it can run every second. A corrupt
    /// file is reported once: later calls return `Ok(false)` until the file changes
    /// again.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_error(&self.path, format!("cannot stat: {e}"))),
        };
        if stamp == seen.stamp {
            return Ok(false);
        }
        let read = read_file(&self.path)?;
        let hash = sha256(&read.bytes);
        if hash == seen.hash {
            seen.stamp = read.stamp;
            return Ok(false);
        }
        // Remember what was read even when it is corrupt, so that a bad file is reported
        // once rather than on every poll; the last good snapshot keeps serving.
        *seen = Seen { stamp: read.stamp, hash };
        let loaded = parse(&self.path, &read.bytes).and_then(|data| index(&self.path, data))?;
        self.snapshot.store(Arc::new(loaded));
        Ok(true)
    }

    /// Looks a key up by its digests (one per pepper), in memory; digests are compared
    /// in constant time.
    pub fn lookup(&self, digests: &[KeyDigest]) -> Lookup {
        let loaded = self.snapshot.load();
        for digest in digests {
            let Some(Indexed { key, tenant, identity }) = loaded.by_digest.get(&digest.hex) else {
                continue;
            };
            let same_hex: bool = key.digest.hex.as_bytes().ct_eq(digest.hex.as_bytes()).into();
            if same_hex && key.digest.pepper_id == digest.pepper_id {
                return Lookup::Found {
                    key: Arc::clone(key),
                    tenant: tenant.clone(),
                    matched: digest.clone(),
                    identity: identity.clone(),
                };
            }
        }
        Lookup::NotFound
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<KeysData> {
        Arc::clone(&self.snapshot.load().data)
    }

    /// Runs `change` on the file's latest content under an exclusive lock and, if it
    /// returns `Ok`, writes the result atomically (temp file in the same directory,
    /// fsync, rename). Returns what `change` returned.
    ///
    /// The lock is an OS lock (`flock`) on `<file>.lock`, so concurrent commands, in this
    /// process or others, lose no write. The content is read from disk under the lock,
    /// never taken from the snapshot. Tombstones past their 30 days are pruned on every
    /// write (see [`prune_tombstones`]). The file gets mode 0600: it holds
    /// digests. A corrupt file is refused rather than overwritten.
    pub fn update<R, E: From<StoreError>>(&self, change: impl FnOnce(&mut KeysData) -> Result<R, E>) -> Result<R, E> {
        let lock = self.lock()?;
        let read = read_file(&self.path)?;
        let mut data = parse(&self.path, &read.bytes)?;
        let result = change(&mut data)?;
        prune_tombstones(&mut data, time::OffsetDateTime::now_utc());
        data.version = KEYS_FILE_VERSION;
        let loaded = index(&self.path, data)?;
        let (stamp, hash) = self.write(&loaded.data)?;
        // Swap the snapshot before the lock is released, so that snapshots follow the
        // order of writes.
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            *seen = Seen { stamp: Some(stamp), hash };
            self.snapshot.store(Arc::new(loaded));
        }
        drop(lock);
        Ok(result)
    }

    /// Takes the exclusive lock on `<file>.lock` (created if missing), blocking until
    /// other writers are done. Released when the returned file is dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(&self.lock_path)
            .map_err(|e| file_error(&self.path, format!("cannot open lock file {}: {e}", self.lock_path.display())))?;
        // `File::lock` (flock on Unix), stable since Rust 1.89.
        file.lock().map_err(|e| file_error(&self.path, format!("cannot lock {}: {e}", self.lock_path.display())))?;
        Ok(file)
    }

    /// Writes `data` atomically: a temp file in the same directory, fsync, rename over
    /// the file, fsync the directory (so that the rename survives a crash). Returns the
    /// new file's stamp and content hash.
    fn write(&self, data: &KeysData) -> Result<(Stamp, [u8; 32]), StoreError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| file_error(&self.path, format!("{what}: {e}"));
        let mut bytes = serde_json::to_vec_pretty(data).map_err(|e| fail("cannot serialise", &e))?;
        bytes.push(b'\n');
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // NamedTempFile creates the file with mode 0600 on Unix.
        let mut temp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| fail(&format!("cannot create a temporary file in {}", dir.display()), &e))?;
        temp.write_all(&bytes).map_err(|e| fail("cannot write", &e))?;
        temp.as_file().sync_all().map_err(|e| fail("cannot fsync", &e))?;
        let meta = temp.as_file().metadata().map_err(|e| fail("cannot stat", &e))?;
        temp.persist(&self.path).map_err(|e| fail("cannot rename into place", &e.error))?;
        #[cfg(unix)]
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(&format!("cannot fsync directory {}", dir.display()), &e))?;
        Ok((Stamp::of(&meta), sha256(&bytes)))
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::File { path: path.to_path_buf(), message: message.into() }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

/// Reads the file and the stamp of what was read (from the open handle, so the two
/// agree even if the file is renamed over meanwhile). Missing: no stamp, no bytes.
fn read_file(path: &Path) -> Result<FileRead, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileRead { stamp: None, bytes: Vec::new() }),
        Err(e) => return Err(file_error(path, format!("cannot open: {e}"))),
    };
    let meta = file.metadata().map_err(|e| file_error(path, format!("cannot stat: {e}")))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    Ok(FileRead { stamp: Some(Stamp::of(&meta)), bytes })
}

/// Parses the file's content. Missing or blank (e.g. just `touch`ed): an empty store.
fn parse(path: &Path, bytes: &[u8]) -> Result<KeysData, StoreError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(KeysData::empty());
    }
    let data: KeysData =
        serde_json::from_slice(bytes).map_err(|e| file_error(path, format!("not a valid keys file: {e}")))?;
    if data.version != KEYS_FILE_VERSION {
        return Err(file_error(
            path,
            format!("version {} is not supported (this keygate reads version {KEYS_FILE_VERSION})", data.version),
        ));
    }
    Ok(data)
}

/// Checks the data's consistency and builds its digest index.
fn index(path: &Path, data: KeysData) -> Result<Loaded, StoreError> {
    for (id, tenant) in &data.tenants {
        if &tenant.id != id {
            return Err(file_error(path, format!("tenant `{id}` has id `{}`", tenant.id)));
        }
    }
    let mut by_digest = FastMap::with_capacity_and_hasher(data.keys.len(), FastState::default());
    for (id, key) in &data.keys {
        if &key.id != id {
            return Err(file_error(path, format!("key `{id}` has id `{}`", key.id)));
        }
        let tenant = data.tenants.get(&key.tenant).map(|tenant| Arc::new(tenant.clone()));
        let identity = tenant.as_ref().map(|tenant| Arc::new(IdentityHeaders::of(key, tenant)));
        let indexed = Indexed { key: Arc::new(key.clone()), tenant, identity };
        if let Some(other) = by_digest.insert(key.digest.hex.clone(), indexed) {
            return Err(file_error(path, format!("keys `{}` and `{id}` have the same digest", other.key.id)));
        }
    }
    Ok(Loaded { data: Arc::new(data), by_digest })
}

#[cfg(test)]
mod tests;
