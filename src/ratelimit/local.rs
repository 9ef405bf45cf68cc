//! The in-process limiter: one replica's sliding windows, kept in memory per tenant.
//!
//! It applies the algorithm of the parent module (see [`super`]) to counters held in
//! memory: `SUB_WINDOWS + 1` of them per (tenant, limit), in a fixed ring. It serves
//! `limits.backend = "local"` and the `on_store_error = "local"` fallback.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::decision::Decision;
use crate::clock::Clock;
use crate::policy::{Limit, SUB_WINDOWS};

/// Counters kept per (tenant, limit): every sub-window the count can include.
const SLOTS: usize = SUB_WINDOWS as usize + 1;

/// Independent locks, so concurrent requests of different tenants rarely contend. The
/// critical section is a hash lookup and a sum of 21 integers; a std `Mutex` is cheaper
/// than anything clever at that size.
const SHARDS: usize = 16;

/// A shard sweeps idle tenants after this many checks, or after as many checks as it
/// kept tenants at its last sweep if that is more: a sweep then costs O(1) per check,
/// amortised, and a shard never holds more than about twice its active tenants (plus
/// this many).
const SWEEP_MIN_CHECKS: usize = 1024;

/// Sliding-window counters per tenant, in memory. Memory per tenant is bounded
/// (`SUB_WINDOWS + 1` counters per limit it is checked against); idle tenants are
/// dropped by occasional sweeps.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    /// Picks a tenant's shard.
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    /// Tenant → one window per limit it was checked against: nearly always one (the
    /// plan's), two while the `local` fallback applies its reduced limit or right after a
    /// change of plan. Keyed by the tenant alone so that a lookup borrows `&str` and a
    /// request allocates nothing once its tenant is known.
    tenants: HashMap<String, Vec<Window>>,
    /// Checks since the last sweep.
    checks: usize,
    /// Checks after which the next sweep runs.
    sweep_after: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { tenants: HashMap::new(), checks: 0, sweep_after: SWEEP_MIN_CHECKS }
    }
}

/// The counters of one (tenant, limit).
struct Window {
    limit: Limit,
    /// `limit.sub_window_millis()` and `limit.window_millis()`, computed once.
    sub: u64,
    window: u64,
    /// Index (time / sub-window length) of the newest sub-window seen. Slot `k % SLOTS`
    /// holds the counter of sub-window `k` for `k` in `newest − SUB_WINDOWS ..= newest`;
    /// older sub-windows are gone (their slots were zeroed when `newest` moved on).
    newest: u64,
    counts: [u64; SLOTS],
}

fn slot(k: u64) -> usize {
    // The remainder is < SLOTS, so the cast never truncates.
    (k % SLOTS as u64) as usize
}

impl Window {
    fn new(limit: Limit, now: u64) -> Self {
        let sub = limit.sub_window_millis();
        Window { limit, sub, window: limit.window_millis(), newest: now / sub, counts: [0; SLOTS] }
    }

    /// Moves the ring on to sub-window `current`, forgetting the sub-windows that fell
    /// out of it.
    fn advance(&mut self, current: u64) {
        if current <= self.newest {
            return;
        }
        if current - self.newest >= SLOTS as u64 {
            self.counts = [0; SLOTS];
        } else {
            for k in self.newest + 1..=current {
                self.counts[slot(k)] = 0;
            }
        }
        self.newest = current;
    }

    /// Whether nothing it holds counts at `now` any more (it can be dropped: a fresh
    /// window would decide the same).
    fn is_idle(&self, now: u64) -> bool {
        let oldest = now.saturating_sub(self.window) / self.sub;
        let first = oldest.max(self.newest.saturating_sub(SUB_WINDOWS));
        (first..=self.newest).all(|k| self.counts[slot(k)] == 0)
    }

    fn check(&mut self, now: u64, cost: u64) -> Decision {
        let requests = self.limit.requests;
        let (sub, window) = (self.sub, self.window);
        // A clock that steps back (NTP) must not un-count what was admitted: act as if
        // it were still the start of the newest sub-window seen. This only refuses more.
        let now = now.max(self.newest.saturating_mul(sub));
        let current = now / sub;
        self.advance(current);
        // The oldest sub-window overlapping [now − W, now]: `current − SUB_WINDOWS`, or 0
        // near the epoch. Counted whole although partly expired.
        let oldest = now.saturating_sub(window) / sub;
        let counted = oldest..=current;
        let mut count: u64 = counted.clone().map(|k| self.counts[slot(k)]).fold(0, u64::saturating_add);

        let allowed = count.checked_add(cost).is_some_and(|n| n <= requests);
        if allowed {
            let c = &mut self.counts[slot(current)];
            *c = c.saturating_add(cost);
            count = count.saturating_add(cost);
        }

        // Sub-window k stops being counted once ⌊(t − W)/S⌋ > k, i.e. at t = (k+1)·S + W.
        let leaves = |k: u64| {
            let at = k.saturating_add(1).saturating_mul(sub).saturating_add(window);
            Duration::from_millis(at.saturating_sub(now))
        };
        let reset = counted.clone().rev().find(|&k| self.counts[slot(k)] > 0).map_or(Duration::ZERO, leaves);
        let retry_after = if allowed {
            None
        } else if cost > requests {
            // It can never be admitted. Say "a window" rather than "never": the client
            // backs off, and a change of plan may admit it.
            Some(Duration::from_millis(window))
        } else {
            // Wait for the oldest sub-windows to leave, oldest first, until enough has
            // gone for `cost` to fit (assuming nothing else is admitted meanwhile). The
            // current sub-window leaving empties the count, so this always finds one.
            let excess = count.saturating_add(cost) - requests;
            let mut freed: u64 = 0;
            counted
                .clone()
                .find(|&k| {
                    freed = freed.saturating_add(self.counts[slot(k)]);
                    freed >= excess
                })
                .map(leaves)
                .or(Some(Duration::from_millis(window)))
        };

        Decision { allowed, limit: requests, remaining: requests.saturating_sub(count), reset, retry_after }
    }
}

impl Shard {
    fn check(&mut self, tenant: &str, limit: &Limit, cost: u64, now: u64) -> Decision {
        let decision = match self.tenants.get_mut(tenant) {
            Some(windows) => match windows.iter_mut().find(|w| w.limit == *limit) {
                Some(w) => w.check(now, cost),
                None => {
                    let mut w = Window::new(*limit, now);
                    let d = w.check(now, cost);
                    windows.push(w);
                    d
                }
            },
            None => {
                let mut w = Window::new(*limit, now);
                let d = w.check(now, cost);
                self.tenants.insert(tenant.to_owned(), vec![w]);
                d
            }
        };
        self.checks += 1;
        if self.checks >= self.sweep_after {
            self.sweep(now);
        }
        decision
    }

    fn sweep(&mut self, now: u64) {
        self.checks = 0;
        self.tenants.retain(|_, windows| {
            windows.retain(|w| !w.is_idle(now));
            !windows.is_empty()
        });
        self.sweep_after = self.tenants.len().max(SWEEP_MIN_CHECKS);
        // Give back the memory of a burst of tenants that has passed.
        if self.tenants.capacity() > 4 * self.sweep_after {
            self.tenants.shrink_to_fit();
        }
    }
}

impl LocalLimiter {
    /// An empty limiter reading time from `clock` ([`crate::clock::SystemClock`] in production,
    /// [`crate::clock::ManualClock`] in tests).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter { clock, hasher: RandomState::new(), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }

    fn shard(&self, tenant: &str) -> MutexGuard<'_, Shard> {
        // The remainder is < SHARDS, so the cast never truncates.
        let i = (self.hasher.hash_one(tenant) % SHARDS as u64) as usize;
        // No code panics while holding the lock, and the counters stay consistent even
        // if one did: a poisoned lock is still usable.
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits `cost` requests for `tenant` under `limit`, or refuses them without counting
    /// them (a client that keeps retrying is not locked out).
    ///
    /// A `cost` above `limit.requests` is always refused, with `retry_after` one window.
    /// Each distinct `limit` of a tenant has its own counters.
    pub fn check(&self, tenant: &str, limit: &Limit, cost: u64) -> Decision {
        let now = self.clock.now_millis();
        self.shard(tenant).check(tenant, limit, cost, now)
    }

    /// Drops every tenant whose counters have all left their window. `check` already does
    /// this now and then on its own; a periodic task may call it to return memory when
    /// traffic stops altogether.
    pub fn sweep(&self) {
        let now = self.clock.now_millis();
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).sweep(now);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tenants.len()).sum()
    }
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
