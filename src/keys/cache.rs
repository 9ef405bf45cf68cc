//! The in-process cache in front of a remote key store (docs/reference.md §3, 4.4): positive entries
//! fresh for `cache_ttl` and usable while the store is unreachable for `stale_if_error`
//! more; negative entries (unknown digests) for a short time and bounded in number, so a
//! flood of random keys neither grows memory without bound nor reaches the store more than
//! once per digest; concurrent misses for one digest make one store call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::data::{Lookup, StoreError};
use crate::metrics::CacheResult;

/// How long "this digest is unknown" is believed. Short: a key created elsewhere is found
/// soon even if its invalidation message was lost.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// At most this many positive entries (keys in use) are kept.
pub const MAX_ENTRIES: u64 = 200_000;
/// At most this many negative entries are kept.
pub const MAX_NEGATIVE: u64 = 100_000;

#[derive(Debug, Clone)]
struct Entry {
    lookup: Lookup,
    tenant: Option<String>,
    fetched: Instant,
    generation: u64,
}

type Flight = Arc<OnceCell<Result<Lookup, String>>>;

/// The cache. Keys are the digest (hex) of the presented secret under the current pepper.
pub struct KeyCache {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    negatives: moka::sync::Cache<String, ()>,
    in_flight: Mutex<HashMap<String, Flight>>,
    ttl: Duration,
    stale_if_error: Duration,
    /// Entries fetched under an older generation are no longer fresh: bumped when the
    /// invalidation subscription was lost, since messages may have been missed.
    generation: AtomicU64,
}

impl KeyCache {
    pub fn new(ttl: Duration, stale_if_error: Duration) -> Self {
        KeyCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl + stale_if_error)
                .support_invalidation_closures()
                .build(),
            negatives: moka::sync::Cache::builder().max_capacity(MAX_NEGATIVE).time_to_live(NEGATIVE_TTL).build(),
            in_flight: Mutex::new(HashMap::new()),
            ttl,
            stale_if_error,
            generation: AtomicU64::new(0),
        }
    }

    /// The cache's own answer for `digest` when it has a fresh one (a hit, or a cached
    /// "no such key"), without asking the store; `None` when only the store can answer.
    pub fn fresh(&self, digest: &str) -> Option<(Lookup, CacheResult)> {
        let generation = self.generation.load(Ordering::Acquire);
        match self.entries.get(digest) {
            Some(entry) => self.is_fresh(&entry, generation).then(|| (entry.lookup.clone(), CacheResult::Hit)),
            None => self.negatives.contains_key(digest).then_some((Lookup::NotFound, CacheResult::NegativeHit)),
        }
    }

    fn is_fresh(&self, entry: &Entry, generation: u64) -> bool {
        entry.generation == generation && entry.fetched.elapsed() < self.ttl
    }

    /// The answer for `digest`: from the cache while fresh, else from `load` (one call per
    /// digest however many requests wait for it), else — when `load` fails — a stale entry
    /// up to `stale_if_error`, else the error.
    pub async fn get<F, Fut>(&self, digest: &str, load: F) -> (Result<Lookup, StoreError>, CacheResult)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Lookup, StoreError>>,
    {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = self.entries.get(digest);
        if let Some(entry) = &cached {
            if self.is_fresh(entry, generation) {
                return (Ok(entry.lookup.clone()), CacheResult::Hit);
            }
        } else if self.negatives.contains_key(digest) {
            return (Ok(Lookup::NotFound), CacheResult::NegativeHit);
        }

        let flight = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.entry(digest.to_string()).or_default().clone()
        };
        let result = flight
            .get_or_init(|| async {
                let loaded = load().await;
                if let Ok(lookup) = &loaded {
                    self.store(digest, lookup.clone(), generation);
                }
                loaded.map_err(|e| e.to_string())
            })
            .await
            .clone();
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.get(digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                in_flight.remove(digest);
            }
        }
        match result {
            Ok(lookup) => (Ok(lookup), CacheResult::Miss),
            Err(error) => match cached {
                Some(entry) if entry.fetched.elapsed() < self.ttl + self.stale_if_error => {
                    (Ok(entry.lookup.clone()), CacheResult::Stale)
                }
                _ => (Err(StoreError::Unavailable(error)), CacheResult::Miss),
            },
        }
    }

    fn store(&self, digest: &str, lookup: Lookup, generation: u64) {
        match &lookup {
            Lookup::NotFound => {
                self.entries.invalidate(digest);
                self.negatives.insert(digest.to_string(), ());
            }
            Lookup::Found { key, .. } => {
                self.negatives.invalidate(digest);
                let tenant = Some(key.tenant.clone());
                let entry = Entry { lookup, tenant, fetched: Instant::now(), generation };
                self.entries.insert(digest.to_string(), Arc::new(entry));
            }
        }
    }

    /// Forgets one digest (a key was created, revoked, rotated or re-stored). The message
    /// names the digest the key is stored under; entries are keyed by the presented key's
    /// digest under the current pepper, which differs for a key still stored under an old
    /// pepper, so entries whose record carries that digest go too.
    pub fn invalidate_digest(&self, digest: &str) {
        self.entries.invalidate(digest);
        self.negatives.invalidate(digest);
        let stored = digest.to_string();
        let _ = self.entries.invalidate_entries_if(
            move |_, entry| matches!(&entry.lookup, Lookup::Found { key, .. } if key.digest.hex == stored),
        );
    }

    /// Forgets every key of a tenant (its plan changed, or it was deleted).
    pub fn invalidate_tenant(&self, tenant: &str) {
        let tenant = tenant.to_string();
        if let Err(e) =
            self.entries.invalidate_entries_if(move |_, entry| entry.tenant.as_deref() == Some(tenant.as_str()))
        {
            tracing::warn!(error = %e, "could not invalidate a tenant's cached keys; revalidating all");
            self.revalidate_all();
        }
    }

    /// Marks every entry as needing revalidation (still usable while the store is down)
    /// and drops negative entries: messages may have been missed.
    pub fn revalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.negatives.invalidate_all();
    }

    /// Entries held (for tests and the bound on memory).
    pub fn negative_len(&self) -> u64 {
        self.negatives.run_pending_tasks();
        self.negatives.entry_count()
    }
}

#[cfg(test)]
mod tests;
