//! Unit tests of the file watcher (renames, the `..data` swap, busy directories, the
//! poll) and of the content fingerprints reloads compare.

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
    // The rest of the write lands: the content no longer matches what was read.
    std::fs::write(&file, "half and the rest").unwrap();
    assert!(!settled(&file, &fingerprint), "a file still being written counted as settled");
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
