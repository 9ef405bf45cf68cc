//! Unit tests of `keys/cache.rs`.

use super::*;
use crate::keys::{KeyDigest, KeyRecord};
use std::sync::atomic::AtomicUsize;

fn found(tenant: &str) -> Lookup {
    let digest = KeyDigest { pepper_id: "p".into(), hex: "ab".into() };
    Lookup::found(
        std::sync::Arc::new(KeyRecord {
            id: "key_1".into(),
            tenant: tenant.into(),
            name: "n".into(),
            scopes: vec![],
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            replaced_by: None,
            digest: digest.clone(),
            overrides: Default::default(),
        }),
        None,
        digest,
    )
}

#[tokio::test]
async fn hits_after_a_miss_and_counts_loads() {
    let cache = KeyCache::new(Duration::from_secs(30), Duration::from_secs(300));
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok(found("acme"))
    };
    assert_eq!(cache.get("d", load).await.1, CacheResult::Miss);
    assert_eq!(cache.get("d", load).await.1, CacheResult::Hit);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn fresh_answers_only_what_the_cache_holds_fresh() {
    let cache = KeyCache::new(Duration::from_secs(30), Duration::from_secs(300));
    assert!(cache.fresh("d").is_none());
    let _ = cache.get("d", || async { Ok(found("acme")) }).await;
    assert_eq!(cache.fresh("d"), Some((found("acme"), CacheResult::Hit)));
    let _ = cache.get("x", || async { Ok(Lookup::NotFound) }).await;
    assert_eq!(cache.fresh("x"), Some((Lookup::NotFound, CacheResult::NegativeHit)));
    // Kept for `stale_if_error`, but no longer fresh: only the store can answer.
    cache.revalidate_all();
    assert!(cache.fresh("d").is_none() && cache.fresh("x").is_none());
}

#[tokio::test]
async fn unknown_digests_are_negative_hits_until_invalidated() {
    let cache = KeyCache::new(Duration::from_secs(30), Duration::from_secs(300));
    let (r, o) = cache.get("x", || async { Ok(Lookup::NotFound) }).await;
    assert_eq!((r.unwrap(), o), (Lookup::NotFound, CacheResult::Miss));
    assert_eq!(cache.get("x", || async { Ok(found("a")) }).await.1, CacheResult::NegativeHit);
    cache.invalidate_digest("x");
    assert_eq!(cache.get("x", || async { Ok(found("a")) }).await.1, CacheResult::Miss);
}

#[tokio::test]
async fn concurrent_misses_make_one_load() {
    let cache = Arc::new(KeyCache::new(Duration::from_secs(30), Duration::from_secs(300)));
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let loads = loads.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get("d", || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(found("acme"))
                })
                .await
                .0
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stale_entries_serve_only_when_the_store_fails() {
    let cache = KeyCache::new(Duration::from_millis(10), Duration::from_secs(300));
    let _ = cache.get("d", || async { Ok(found("acme")) }).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (r, o) = cache.get("d", || async { Err(StoreError::Unavailable("down".into())) }).await;
    assert_eq!(o, CacheResult::Stale);
    assert!(r.is_ok());
    let (r, _) = cache.get("other", || async { Err(StoreError::Unavailable("down".into())) }).await;
    assert!(r.is_err(), "an unknown key during an outage is an error, never NotFound");
}

#[tokio::test]
async fn revalidation_and_tenant_invalidation() {
    let cache = KeyCache::new(Duration::from_secs(30), Duration::from_secs(300));
    let _ = cache.get("d", || async { Ok(found("acme")) }).await;
    cache.revalidate_all();
    assert_eq!(cache.get("d", || async { Ok(found("acme")) }).await.1, CacheResult::Miss);
    cache.invalidate_tenant("acme");
    cache.entries.run_pending_tasks();
    assert_eq!(cache.get("d", || async { Ok(found("acme")) }).await.1, CacheResult::Miss);
}

#[tokio::test]
async fn negative_entries_are_bounded() {
    let cache = KeyCache::new(Duration::from_secs(30), Duration::from_secs(300));
    for i in 0..(MAX_NEGATIVE + 5_000) {
        cache.store(&format!("d{i}"), Lookup::NotFound, 0);
    }
    assert!(cache.negative_len() <= MAX_NEGATIVE, "{}", cache.negative_len());
}
