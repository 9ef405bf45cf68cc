//! Watching a file for changes: the file's directory is watched (not the file: editors
//! rename over it and Kubernetes swaps a `..data` symlink), events are debounced, and a
//! slow poll is the backstop for filesystems without inotify. What a change means is the
//! caller's business: `on_change` re-reads (resolving the path anew), compares a content
//! hash, validates and swaps; [`content_hash`], [`Fingerprint`] and [`Outcome`] are the
//! shared vocabulary.

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
    /// that content (its hash, or why it could not be read), so that a watcher can report
    /// the same refused content once rather than on every poll.
    Refused { fingerprint: Fingerprint },
}

/// The hex SHA-256 of `bytes`: the content hash reloads compare (the policy's `hash`).
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if done() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        done()
    }

    #[test]
    fn a_rename_over_the_file_is_seen_without_waiting_for_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, "a").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let _handle = watch(&file, Duration::from_secs(3600), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        thread::sleep(Duration::from_millis(100)); // let the watch register
        let temp = dir.path().join(".routes.toml.tmp");
        std::fs::write(&temp, "b").unwrap();
        std::fs::rename(&temp, &file).unwrap();
        assert!(wait_for(Duration::from_secs(5), || calls.load(Ordering::SeqCst) >= 1));
    }

    #[test]
    fn reading_the_file_in_the_callback_does_not_call_back_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, "a").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let read = file.clone();
        let _handle = watch(&file, Duration::from_secs(3600), move || {
            let _ = std::fs::read(&read);
            seen.fetch_add(1, Ordering::SeqCst);
        });
        thread::sleep(Duration::from_millis(100));
        std::fs::write(&file, "b").unwrap();
        assert!(wait_for(Duration::from_secs(5), || calls.load(Ordering::SeqCst) >= 1));
        thread::sleep(Duration::from_millis(600));
        let n = calls.load(Ordering::SeqCst);
        assert!(n <= 2, "the callback's own read of the file made {n} calls");
    }

    #[test]
    fn a_directory_that_never_goes_quiet_still_calls_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        let busy = dir.path().join("busy.log");
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let _handle = watch(&file, Duration::from_secs(3600), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        thread::sleep(Duration::from_millis(100));
        // A write every 10 ms for 2 s: never DEBOUNCE of quiet.
        let end = Instant::now() + Duration::from_secs(2);
        let mut n = 0u64;
        while Instant::now() < end && calls.load(Ordering::SeqCst) == 0 {
            std::fs::write(&busy, n.to_string()).unwrap();
            n += 1;
            thread::sleep(Duration::from_millis(10));
        }
        assert!(calls.load(Ordering::SeqCst) >= 1, "a busy directory starved the callback");
    }

    #[test]
    fn a_kubernetes_symlink_swap_is_seen_without_waiting_for_the_poll() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_11_27_a")).unwrap();
        std::fs::write(d.join("..2026_11_27_a/routes.toml"), "a").unwrap();
        symlink("..2026_11_27_a", d.join("..data")).unwrap();
        symlink("..data/routes.toml", d.join("routes.toml")).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let _handle = watch(&d.join("routes.toml"), Duration::from_secs(3600), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        thread::sleep(Duration::from_millis(100));
        std::fs::create_dir(d.join("..2026_11_27_b")).unwrap();
        std::fs::write(d.join("..2026_11_27_b/routes.toml"), "b").unwrap();
        symlink("..2026_11_27_b", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2026_11_27_a")).unwrap();
        assert!(wait_for(Duration::from_secs(5), || calls.load(Ordering::SeqCst) >= 1));
        assert_eq!(std::fs::read(d.join("routes.toml")).unwrap(), b"b");
    }

    #[test]
    fn opens_and_reads_are_no_change_but_a_close_after_writing_is() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let event = |kind| Ok(notify::Event::new(kind));
        assert!(!is_change(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!is_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
        assert!(!is_change(&event(EventKind::Access(AccessKind::Read))));
        assert!(is_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(is_change(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)))));
        assert!(is_change(&event(EventKind::Create(CreateKind::File))));
        assert!(is_change(&event(EventKind::Other)));
        assert!(is_change(&Err(notify::Error::generic("queue overflow"))));
    }

    #[test]
    fn the_content_hash_is_the_policys_hash() {
        let text = "[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/x\"\nauth = \"none\"\nupstream = \"app\"\n";
        let (policy, _) = crate::policy::Policy::parse(text, Path::new("routes.toml")).unwrap();
        assert_eq!(content_hash(text.as_bytes()), policy.hash);
        assert_eq!(content_hash(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn content_is_settled_only_when_it_stopped_changing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, "half").unwrap();
        let fingerprint = read(&file).fingerprint;
        assert_eq!(fingerprint, Fingerprint::Hash(content_hash(b"half")));
        assert!(fingerprint.is_hash(&content_hash(b"half")));
        assert!(settled(&file, &fingerprint));
        let writer = {
            let file = file.clone();
            thread::spawn(move || {
                thread::sleep(SETTLE / 2);
                std::fs::write(&file, "half and the rest").unwrap();
            })
        };
        assert!(!settled(&file, &fingerprint), "a file still being written counted as settled");
        writer.join().unwrap();
        let missing = read(&dir.path().join("nothing.toml"));
        assert!(matches!(missing.fingerprint, Fingerprint::Unreadable(_)) && missing.bytes.is_err());
        assert!(missing.fingerprint.to_string().starts_with("unreadable: "), "{}", missing.fingerprint);
        assert!(!missing.fingerprint.is_hash(&content_hash(b"")));
    }

    #[test]
    fn the_poll_calls_back_without_events() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.json");
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let _handle = watch(&file, Duration::from_millis(20), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        assert!(wait_for(Duration::from_secs(5), || calls.load(Ordering::SeqCst) >= 3));
    }
}
