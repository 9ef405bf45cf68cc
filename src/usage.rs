//! Usage per tenant and key, per UTC day (docs/reference.md §7): what each request of a
//! known tenant came to — admitted (its route's `cost`) or refused (by the access line's
//! `decision`) — counted in memory on the request path and written to the store by one
//! background task, in batches, at most [`FLUSH_EVERY`] behind.
//!
//! The request path ([`Usage::record`]) takes one of [`SHARDS`] locks, picked by the
//! tenant, and bumps counters in nested maps keyed by day, tenant and key id: a tenant
//! and key already seen since the last flush cost no allocation, and a tenant's requests
//! rarely meet another tenant's on a lock (a lock is held for a few map lookups). The
//! flusher swaps each shard's maps out, merges them into what is still unwritten, and
//! writes that in one round trip ([`store::UsageStore`]: one `HINCRBY` pipeline in Redis,
//! one rewritten file per day with the embedded store). A failed write keeps the counts
//! and tries again on the next tick; what waits is bounded by [`MAX_PENDING_ENTRIES`]
//! (past it, the counts of new tenants or keys are dropped and counted in
//! `keygate_usage_dropped_total`, never the counts of entries already waiting). A graceful
//! shutdown flushes once more.

mod counts;
pub mod report;
pub mod store;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
pub use counts::{day_of, Batch, Counts, Outcome, TenantDay};
pub use store::UsageStore;

/// How often the flusher writes what the requests counted: usage is at most about this
/// far behind (plus one store round trip).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Independent locks on the request path.
const SHARDS: usize = 16;

/// The most (day, tenant) and (day, tenant, key) entries waiting to be written after
/// failed flushes: about 200 bytes each, so at most some 20 MB while the store is away.
pub const MAX_PENDING_ENTRIES: usize = 100_000;

/// The usage counters of one keygate: cheap to clone (one shared state).
#[derive(Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Box<[Mutex<Batch>]>,
    store: UsageStore,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usage").field("store", &self.inner.store.kind()).finish_non_exhaustive()
    }
}

impl Usage {
    /// Counters written to `store`, dated by `clock`.
    pub fn new(store: UsageStore, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Usage {
        let shards = (0..SHARDS).map(|_| Mutex::default()).collect();
        Usage { inner: Arc::new(Inner { clock, hasher: RandomState::new(), shards, store, metrics }) }
    }

    /// Now, on the usage clock (ms since the epoch).
    pub fn now_millis(&self) -> u64 {
        self.inner.clock.now_millis()
    }

    /// Where the counts go.
    pub fn store(&self) -> &UsageStore {
        &self.inner.store
    }

    /// Counts one request of `tenant` made with key `key_id`, on today's UTC date (the
    /// usage clock's). The request path: one short lock, no allocation once the tenant
    /// and key have been seen since the last flush.
    pub fn record(&self, tenant: &str, key_id: &str, outcome: Outcome) {
        let day = day_of(self.inner.clock.now_millis());
        // The remainder is < SHARDS, so the cast never truncates.
        let shard = (self.inner.hasher.hash_one(tenant) % SHARDS as u64) as usize;
        let mut batch = self.inner.shards[shard].lock().unwrap_or_else(PoisonError::into_inner);
        let tenants = batch.entry(day).or_default();
        let tenant_day = match tenants.get_mut(tenant) {
            Some(found) => found,
            None => tenants.entry(tenant.to_string()).or_default(),
        };
        tenant_day.total.record(outcome);
        match tenant_day.keys.get_mut(key_id) {
            Some(counts) => counts.record(outcome),
            None => tenant_day.keys.entry(key_id.to_string()).or_default().record(outcome),
        }
    }

    /// Takes what the requests counted since the last call.
    fn take(&self) -> Batch {
        let mut all = Batch::new();
        for shard in self.inner.shards.iter() {
            let batch = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            if all.is_empty() {
                all = batch;
            } else {
                for (day, tenants) in batch {
                    all.entry(day).or_default().extend(tenants);
                }
            }
        }
        all
    }

    /// Starts the flusher: every [`FLUSH_EVERY`], and once more when `stop` is cancelled.
    /// The returned task ends after that last flush.
    pub fn spawn_flusher(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let usage = self.clone();
        tokio::spawn(async move {
            let mut flusher = Flusher::default();
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        flusher.flush(&usage).await;
                        return;
                    }
                    _ = tick.tick() => flusher.flush(&usage).await,
                }
            }
        })
    }

    /// Writes what was counted so far now (tests, and the CLI's own process).
    pub async fn flush_now(&self) -> Result<(), String> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.store.write(&batch).await
    }
}

/// What the flusher keeps between ticks: counts whose write failed.
#[derive(Default)]
struct Flusher {
    pending: Batch,
    entries: usize,
    /// When the oldest count in `pending` was taken (ms, the usage clock).
    oldest: Option<u64>,
}

impl Flusher {
    async fn flush(&mut self, usage: &Usage) {
        let inner = &usage.inner;
        let now = inner.clock.now_millis();
        let taken = usage.take();
        if !taken.is_empty() && self.oldest.is_none() {
            self.oldest = Some(now);
        }
        let dropped = self.merge(taken);
        if dropped > 0 {
            inner.metrics.usage_dropped(dropped);
            tracing::warn!(dropped, "usage counts dropped: the unwritten usage is at its bound");
        }
        if self.pending.is_empty() {
            inner.metrics.usage_lag(Duration::ZERO);
            return;
        }
        match inner.store.write(&self.pending).await {
            Ok(()) => {
                inner.metrics.usage_flush(true);
                inner.metrics.usage_lag(Duration::ZERO);
                self.pending.clear();
                self.entries = 0;
                self.oldest = None;
            }
            Err(e) => {
                inner.metrics.usage_flush(false);
                let lag = now.saturating_sub(self.oldest.unwrap_or(now));
                inner.metrics.usage_lag(Duration::from_millis(lag));
                tracing::warn!(error = %e, entries = self.entries, "usage not written; kept and tried again");
            }
        }
    }

    /// Merges `taken` into what waits; returns the requests dropped because a new entry
    /// would pass [`MAX_PENDING_ENTRIES`].
    fn merge(&mut self, taken: Batch) -> u64 {
        let mut dropped = 0u64;
        for (day, tenants) in taken {
            let waiting = self.pending.entry(day).or_default();
            for (tenant, counts) in tenants {
                match waiting.get_mut(&tenant) {
                    Some(mine) => {
                        let before = mine.entries();
                        let new_keys = counts.keys.keys().filter(|k| !mine.keys.contains_key(*k)).count();
                        if self.entries + new_keys > MAX_PENDING_ENTRIES {
                            // Keep what adds to entries already waiting; drop new keys.
                            for (key, key_counts) in &counts.keys {
                                match mine.keys.get_mut(key) {
                                    Some(k) => k.add(key_counts),
                                    None => dropped = dropped.saturating_add(requests_of(key_counts)),
                                }
                            }
                            mine.total.add(&counts.total);
                        } else {
                            mine.add(&counts);
                        }
                        self.entries += mine.entries() - before;
                    }
                    None if self.entries + counts.entries() > MAX_PENDING_ENTRIES => {
                        dropped = dropped.saturating_add(requests_of(&counts.total));
                    }
                    None => {
                        self.entries += counts.entries();
                        waiting.insert(tenant, counts);
                    }
                }
            }
        }
        self.pending.retain(|_, tenants| !tenants.is_empty());
        dropped
    }
}

/// Requests, admitted or refused, in `counts`.
fn requests_of(counts: &Counts) -> u64 {
    counts.requests.saturating_add(counts.refused_total())
}

#[cfg(test)]
mod tests;
