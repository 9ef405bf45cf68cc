//! Unit tests of the file store: snapshots, refresh, locking writes, pruning.

use time::macros::datetime;

use super::*;
use crate::keys::{generate_secret, KeyRecord, Peppers, Secret, TenantRecord};

fn tenant(id: &str) -> TenantRecord {
    TenantRecord {
        id: id.to_string(),
        plan: "pro".to_string(),
        created_at: datetime!(2025-06-01 12:00 UTC),
        overrides: Default::default(),
    }
}

fn key(id: &str, secret: &Secret, peppers: &Peppers) -> KeyRecord {
    KeyRecord {
        id: id.to_string(),
        tenant: "acme".to_string(),
        name: "ci".to_string(),
        scopes: vec!["calls:read".to_string()],
        created_at: datetime!(2025-06-01 12:00 UTC),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
        digest: peppers.current(secret),
        overrides: Default::default(),
    }
}

fn add_key(store: &FileStore, record: KeyRecord) {
    store
        .update(|data| {
            data.tenants.insert("acme".into(), tenant("acme"));
            data.keys.insert(record.id.clone(), record);
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

#[test]
fn a_missing_file_is_an_empty_store_created_on_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let store = FileStore::open(&path).unwrap();
    assert_eq!(*store.snapshot(), KeysData::empty());
    assert!(!path.exists());
    assert!(!store.refresh().unwrap());
    store
        .update(|data| {
            data.tenants.insert("acme".into(), tenant("acme"));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let on_disk: KeysData = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk.version, 1);
    assert!(on_disk.tenants.contains_key("acme"));
    assert_eq!(*store.snapshot(), on_disk);
    assert!(!store.refresh().unwrap(), "its own write is no change");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_blank_file_is_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, "\n").unwrap();
    assert_eq!(*FileStore::open(&path).unwrap().snapshot(), KeysData::empty());
}

#[test]
fn a_failed_change_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let store = FileStore::open(&path).unwrap();
    let result: Result<(), StoreError> = store.update(|data| {
        data.tenants.insert("acme".into(), tenant("acme"));
        Err(StoreError::Unavailable("refused".into()))
    });
    assert!(result.is_err());
    assert!(!path.exists());
    assert!(store.snapshot().tenants.is_empty());
}

#[test]
fn lookup_by_digest_reports_the_matched_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("keys.json")).unwrap();
    let old = Peppers::from_entries(vec![("v1".into(), b"one".to_vec())]);
    let secret = generate_secret();
    add_key(&store, key("key_a", &secret, &old));

    let rotated = Peppers::from_entries(vec![("v2".into(), b"two".to_vec()), ("v1".into(), b"one".to_vec())]);
    match store.lookup(&rotated.all(&secret)) {
        Lookup::Found { key, tenant, matched, identity } => {
            assert_eq!(key.id, "key_a");
            assert_eq!(tenant.map(|t| t.id.clone()), Some("acme".to_string()));
            // The identity headers were made at load, from the key and its tenant.
            let identity = identity.expect("a key with a tenant has identity headers");
            assert_eq!(identity.key_id.as_ref().map(|v| v.as_bytes()), Some(&b"key_a"[..]));
            assert_eq!(identity.tenant.as_ref().map(|v| v.as_bytes()), Some(&b"acme"[..]));
            assert_eq!(identity.plan.as_ref().map(|v| v.as_bytes()), Some(&b"pro"[..]));
            assert_eq!(matched.pepper_id, "v1");
            assert_eq!(matched, old.current(&secret));
        }
        Lookup::NotFound => panic!("not found"),
    }
    assert_eq!(store.lookup(&rotated.all(&generate_secret())), Lookup::NotFound);
    // Same hex under another pepper id is not a match.
    let mut wrong_id = old.current(&secret);
    wrong_id.pepper_id = "v9".into();
    assert_eq!(store.lookup(&[wrong_id]), Lookup::NotFound);
    assert_eq!(store.lookup(&[]), Lookup::NotFound);
}

#[test]
fn lookup_reports_a_missing_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("keys.json")).unwrap();
    let peppers = Peppers::default();
    let secret = generate_secret();
    add_key(&store, key("key_a", &secret, &peppers));
    store
        .update(|data| {
            data.tenants.clear();
            Ok::<_, StoreError>(())
        })
        .unwrap();
    match store.lookup(&peppers.all(&secret)) {
        Lookup::Found { tenant, .. } => assert_eq!(tenant, None),
        Lookup::NotFound => panic!("not found"),
    }
}

#[test]
fn refresh_sees_changes_and_keeps_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let writer = FileStore::open(&path).unwrap();
    let reader = FileStore::open(&path).unwrap();
    let peppers = Peppers::default();
    let secret = generate_secret();
    add_key(&writer, key("key_a", &secret, &peppers));
    assert_eq!(reader.lookup(&peppers.all(&secret)), Lookup::NotFound);
    assert!(reader.refresh().unwrap());
    assert!(matches!(reader.lookup(&peppers.all(&secret)), Lookup::Found { .. }));
    assert!(!reader.refresh().unwrap());

    // The same content rewritten (new inode, new mtime): no change.
    let bytes = std::fs::read(&path).unwrap();
    let temp = dir.path().join("rewrite");
    std::fs::write(&temp, &bytes).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    assert!(!reader.refresh().unwrap());

    // A corrupt file: an error, once, and the last good snapshot keeps serving.
    std::fs::write(&path, b"{ not json").unwrap();
    let err = reader.refresh().unwrap_err();
    assert!(err.to_string().contains("keys.json"), "{err}");
    assert!(!reader.refresh().unwrap());
    assert!(matches!(reader.lookup(&peppers.all(&secret)), Lookup::Found { .. }));
    // ... and a writer refuses to overwrite it.
    let refused = writer.update(|_| Ok::<_, StoreError>(()));
    assert!(refused.is_err());
    assert!(FileStore::open(&path).is_err());

    // Fixed again: picked up.
    std::fs::write(&path, &bytes).unwrap();
    assert!(reader.refresh().unwrap());
    assert!(matches!(reader.lookup(&peppers.all(&secret)), Lookup::Found { .. }));

    // Removed: an empty store.
    std::fs::remove_file(&path).unwrap();
    assert!(reader.refresh().unwrap());
    assert_eq!(reader.lookup(&peppers.all(&secret)), Lookup::NotFound);
}

#[test]
fn refuses_an_unknown_version_or_inconsistent_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, r#"{"version": 2, "tenants": {}, "keys": {}}"#).unwrap();
    let err = FileStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    std::fs::write(
        &path,
        r#"{"version": 1, "tenants": {"a": {"id": "b", "plan": "pro", "created_at": "2025-01-01T00:00:00Z"}}, "keys": {}}"#,
    )
    .unwrap();
    assert!(FileStore::open(&path).is_err());
    std::fs::write(&path, r#"{"version": 1, "tenants": {}, "keys": {}, "extra": 1}"#).unwrap();
    assert!(FileStore::open(&path).is_err());
}

#[test]
fn updates_prune_old_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("keys.json")).unwrap();
    let peppers = Peppers::default();
    let mut old = key("key_old", &generate_secret(), &peppers);
    old.revoked_at = Some(datetime!(2020-01-01 0:00 UTC));
    let mut recent = key("key_recent", &generate_secret(), &peppers);
    recent.revoked_at = Some(time::OffsetDateTime::now_utc());
    add_key(&store, old);
    add_key(&store, recent);
    let data = store.snapshot();
    assert!(!data.keys.contains_key("key_old"));
    assert!(data.keys.contains_key("key_recent"));
}
