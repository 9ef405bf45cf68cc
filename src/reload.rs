//! Watching a file for changes: the file's directory is watched (not the file: editors
//! rename over it and Kubernetes swaps a `..data` symlink), events are debounced, and a
//! slow poll is the backstop for filesystems without inotify. What a change means is the
//! caller's business: `on_change` re-reads, compares a content hash, validates and swaps.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

/// How long events are gathered before `on_change` runs: an editor's write, rename and
/// chmod arrive as one burst.
const DEBOUNCE: Duration = Duration::from_millis(50);

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
        if event.is_ok() {
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
                    // Gather the rest of the burst.
                    loop {
                        match receiver.recv_timeout(DEBOUNCE) {
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

/// The directory holding `path` (`.` for a bare file name).
fn watched_directory(path: &Path) -> PathBuf {
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
