//! Watching a file for changes: the file's directory is watched (not the file: editors
//! rename over it and Kubernetes swaps a `..data` symlink), events are debounced, and a
//! slow poll is the backstop for filesystems without inotify. What a change means is the
//! caller's business: `on_change` re-reads (resolving the path anew), compares a content
//! hash, validates and swaps; [`content_hash`], [`Fingerprint`] and [`Outcome`] are the
//! shared vocabulary.

pub mod orphans;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

/// How long events are gathered before `on_change` runs: an editor's write, rename and
/// chmod arrive as one burst.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The longest a burst may put `on_change` off: a directory that never goes quiet for
/// [`DEBOUNCE`] (another writer's busy file next to ours) must not starve our reloads.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// How long a reload waits before refusing content, to see whether it is still being
/// written: a reader (the poll, or an event in the middle of a slow in-place write) may
/// catch a file half-written, and that is no error to report.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How many times a reload reads again content that keeps changing before refusing it.
pub const SETTLE_ROUNDS: u32 = 5;

/// What one read of a watched file found, named so that two reads can be compared: the
/// same fingerprint means the same content (or the same failure to read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    /// The hex SHA-256 of the bytes ([`content_hash`]: the policy's `hash`).
    Hash(String),
    /// The file could not be read: the error's text.
    Unreadable(String),
}

impl Fingerprint {
    /// Whether this is the content whose [`content_hash`] is `hash`.
    pub fn is_hash(&self, hash: &str) -> bool {
        matches!(self, Fingerprint::Hash(h) if h == hash)
    }
}

impl fmt::Display for Fingerprint {
    /// The hash, or `unreadable: <error>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fingerprint::Hash(hash) => f.write_str(hash),
            Fingerprint::Unreadable(error) => write!(f, "unreadable: {error}"),
        }
    }
}

/// A watched file as one reload read it.
pub struct Content {
    /// Names the content: its hash, or why it could not be read.
    pub fingerprint: Fingerprint,
    pub bytes: Result<Vec<u8>, std::io::Error>,
}

/// Reads `path` (through any symlinks, resolved anew: the `..data` swap changes them).
pub fn read(path: &Path) -> Content {
    match std::fs::read(path) {
        Ok(bytes) => Content { fingerprint: Fingerprint::Hash(content_hash(&bytes)), bytes: Ok(bytes) },
        Err(e) => Content { fingerprint: Fingerprint::Unreadable(e.to_string()), bytes: Err(e) },
    }
}

/// Waits [`SETTLE`], then tells whether `path` still holds the content of `fingerprint`
/// (read with [`read`]): only content that has stopped changing is refused.
pub fn settled(path: &Path, fingerprint: &Fingerprint) -> bool {
    thread::sleep(SETTLE);
    read(path).fingerprint == *fingerprint
}

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The content hash is the one being served: nothing done, nothing counted.
    Unchanged,
    /// The new content is valid and was swapped in.
    Reloaded,
    /// The content was refused (the last good one keeps serving). `fingerprint` names
    /// that content (its hash, or why it could not be read).
    Refused { fingerprint: Fingerprint },
}

/// The hex SHA-256 of `bytes`: the content hash reloads compare (the policy's `hash`).
pub fn content_hash(bytes: &[u8]) -> String {
    crate::encoding::lower_hex(&Sha256::digest(bytes))
}

/// Keeps a watch alive; dropping it stops the watch.
pub struct WatchHandle {
    stop: mpsc::Sender<Message>,
}

enum Message {
    Event,
    Stop,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(Message::Stop);
    }
}

/// Calls `on_change` (on a dedicated thread) soon after anything in `path`'s directory
/// changes, and every `poll` regardless. A directory that cannot be watched falls back to
/// polling alone, with a warning.
pub fn watch(path: &Path, poll: Duration, on_change: impl Fn() + Send + 'static) -> WatchHandle {
    let (sender, receiver) = mpsc::channel();
    let directory = watched_directory(path);
    let event_sender = sender.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if is_change(&event) {
            let _ = event_sender.send(Message::Event);
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(directory = %directory.display(), error = %e, "cannot watch directory; polling only");
            None
        }
    };
    let name = format!("watch {}", path.display());
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let _watcher = watcher; // lives as long as the thread
        loop {
            match receiver.recv_timeout(poll) {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Message::Event) => {
                    // Gather the rest of the burst, but not for longer than MAX_DELAY.
                    let end = Instant::now() + MAX_DELAY;
                    loop {
                        let wait = DEBOUNCE.min(end.saturating_duration_since(Instant::now()));
                        if wait.is_zero() {
                            break;
                        }
                        match receiver.recv_timeout(wait) {
                            Ok(Message::Event) => continue,
                            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    on_change();
                }
                Err(RecvTimeoutError::Timeout) => on_change(),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a file watcher thread");
    }
    WatchHandle { stop: sender }
}

/// Whether `event` may mean a change. inotify (through notify) also reports every open
/// and every close after reading: those are no change, and since each reload opens the
/// file, counting them would make every reload schedule the next one, forever. A close
/// after writing is a change (the end of an in-place write). An error may mean lost
/// events (a full inotify queue), so it is treated as a change: looking is cheap.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Err(_) => true,
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
    }
}

/// The directory [`watch`] watches for `path`: the one holding it (`.` for a bare file
/// name). Two files in one directory need one watch.
pub fn watched_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests;
