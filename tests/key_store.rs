//! The file store under concurrent writers: every `FileStore` takes the OS lock on
//! `<file>.lock` and reads the latest file under it, so no write is lost; and a reader
//! sees another instance's writes on `refresh()`.

use std::path::Path;
use std::sync::{Arc, Barrier};

use keygate::keys::data::{KeysData, Lookup, StoreError};
use keygate::keys::file_store::FileStore;
use keygate::keys::{generate_key_id, generate_secret, KeyRecord, Peppers, TenantRecord};
use time::OffsetDateTime;

fn tenant(id: &str) -> TenantRecord {
    TenantRecord {
        id: id.to_string(),
        plan: "pro".to_string(),
        created_at: OffsetDateTime::now_utc(),
        overrides: Default::default(),
    }
}

fn append_tenant(store: &FileStore, id: &str) {
    store
        .update(|data: &mut KeysData| {
            assert!(data.tenants.insert(id.to_string(), tenant(id)).is_none());
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

#[test]
fn concurrent_writers_lose_no_write() {
    const THREADS: usize = 8;
    const WRITES: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("keys.json"));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (path, start) = (Arc::clone(&path), Arc::clone(&start));
            std::thread::spawn(move || {
                // Each thread its own store, as separate `keygate keys …` processes would.
                let store = FileStore::open(&path).unwrap();
                start.wait();
                for w in 0..WRITES {
                    append_tenant(&store, &format!("t{t}-{w}"));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let data = FileStore::open(&path).unwrap().snapshot();
    assert_eq!(data.tenants.len(), THREADS * WRITES);
    for t in 0..THREADS {
        for w in 0..WRITES {
            assert!(data.tenants.contains_key(&format!("t{t}-{w}")), "t{t}-{w} lost");
        }
    }
    // No temporary file is left behind; only the file and its lock.
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["keys.json", "keys.json.lock"]);
}

#[test]
fn one_store_shared_by_threads_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::open(&dir.path().join("keys.json")).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for w in 0..10 {
                    append_tenant(&store, &format!("t{t}-{w}"));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(store.snapshot().tenants.len(), 40);
    assert_eq!(FileStore::open(store.path()).unwrap().snapshot().tenants.len(), 40);
}

fn key_record(id: &str, digest: keygate::keys::KeyDigest) -> KeyRecord {
    KeyRecord {
        id: id.to_string(),
        tenant: "acme".to_string(),
        name: "ci".to_string(),
        scopes: vec!["calls:read".to_string()],
        created_at: OffsetDateTime::now_utc(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
        digest,
        overrides: Default::default(),
    }
}

#[test]
fn refresh_picks_up_another_instances_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = &dir.path().join("keys.json");
    let proxy = FileStore::open(path).unwrap();
    let cli = FileStore::open(path).unwrap();
    let peppers = Peppers::from_entries(vec![("v1".into(), b"pepper".to_vec())]);
    let secret = generate_secret();
    let id = generate_key_id();

    cli.update(|data| {
        data.tenants.insert("acme".into(), tenant("acme"));
        data.keys.insert(id.clone(), key_record(&id, peppers.current(&secret)));
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert_eq!(proxy.lookup(&peppers.all(&secret)), Lookup::NotFound, "not refreshed yet");
    assert!(proxy.refresh().unwrap());
    match proxy.lookup(&peppers.all(&secret)) {
        Lookup::Found { key, tenant, .. } => {
            assert_eq!(key.id, id);
            assert_eq!(tenant.map(|t| t.plan.clone()), Some("pro".to_string()));
        }
        Lookup::NotFound => panic!("the proxy did not see the new key"),
    }

    // A revocation through the other instance.
    let now = OffsetDateTime::now_utc();
    cli.update(|data| {
        if let Some(key) = data.keys.get_mut(&id) {
            key.revoked_at = Some(now);
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert!(proxy.refresh().unwrap());
    assert!(proxy.snapshot().keys[&id].revoked_at.is_some());
    assert!(!proxy.refresh().unwrap(), "nothing new");

    // A write by one instance is based on the file, not on its stale snapshot.
    proxy
        .update(|data| {
            data.tenants.insert("globex".into(), tenant("globex"));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    cli.update(|data| {
        assert!(data.tenants.contains_key("globex"), "read the latest file");
        data.tenants.insert("initech".into(), tenant("initech"));
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert!(proxy.refresh().unwrap());
    let names: Vec<String> = proxy.snapshot().tenants.keys().cloned().collect();
    assert_eq!(names, vec!["acme", "globex", "initech"]);
}
