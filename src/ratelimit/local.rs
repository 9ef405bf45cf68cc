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

use super::{Decision, Limit, SUB_WINDOWS};
use crate::clock::Clock;

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
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use proptest::prelude::*;

    fn limit(requests: u64, secs: u64) -> Limit {
        Limit { requests, window: Duration::from_secs(secs) }
    }

    fn setup(start: u64) -> (Arc<ManualClock>, LocalLimiter) {
        let clock = Arc::new(ManualClock::new(start));
        let limiter = LocalLimiter::new(clock.clone());
        (clock, limiter)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn limit_reached_exactly() {
        let (_, l) = setup(1_000_000);
        let lim = limit(5, 60);
        for left in (0..5).rev() {
            let d = l.check("t", &lim, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            assert_eq!(d.limit, 5);
            assert_eq!(d.retry_after, None);
        }
        let d = l.check("t", &lim, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(d.retry_after.is_some());
    }

    #[test]
    fn tenants_and_limits_are_independent() {
        let (_, l) = setup(1_000_000);
        let lim = limit(1, 60);
        assert!(l.check("a", &lim, 1).allowed);
        assert!(!l.check("a", &lim, 1).allowed);
        assert!(l.check("b", &lim, 1).allowed);
        // The `local` fallback's reduced limit has counters of its own.
        assert!(l.check("a", &limit(2, 60), 1).allowed);
    }

    #[test]
    fn refused_requests_are_not_counted() {
        // W = 20 s, so a sub-window is 1 s.
        let (clock, l) = setup(100_000);
        let lim = limit(3, 20);
        for _ in 0..3 {
            assert!(l.check("t", &lim, 1).allowed);
        }
        // Hammer for the rest of the window: every attempt refused, none counted.
        for _ in 0..20_999 {
            clock.advance(ms(1));
            assert!(!l.check("t", &lim, 1).allowed);
        }
        // 100_000 + 20_999: sub-window 100 is still (partly) in the window.
        assert_eq!(clock.now_millis(), 120_999);
        clock.advance(ms(1));
        // The three admitted at 100_000 have left; the refusals left nothing behind.
        for left in (0..3).rev() {
            assert_eq!(l.check("t", &lim, 1).remaining, left);
        }
    }

    #[test]
    fn cost() {
        let (_, l) = setup(0);
        let lim = limit(10, 60);
        assert_eq!(l.check("t", &lim, 3).remaining, 7);
        assert_eq!(l.check("t", &lim, 3).remaining, 4);
        assert_eq!(l.check("t", &lim, 3).remaining, 1);
        let d = l.check("t", &lim, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 1);
        assert_eq!(l.check("t", &lim, 1).remaining, 0);
        // Cost 0 is always admitted and counts nothing.
        let d = l.check("t", &lim, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn cost_above_the_limit_is_never_admitted() {
        let (clock, l) = setup(5_000);
        let lim = limit(2, 60);
        let d = l.check("t", &lim, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset, Duration::ZERO);
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
        clock.advance(Duration::from_secs(3600));
        assert!(!l.check("t", &lim, 3).allowed);
        assert!(l.check("t", &lim, 2).allowed);
    }

    #[test]
    fn window_slides_sub_window_by_sub_window() {
        // W = 20 s, S = 1 s: one request in each of sub-windows 0..20.
        let (clock, l) = setup(0);
        let lim = limit(20, 20);
        for i in 0..20 {
            clock.set(i * 1_000 + 500);
            assert!(l.check("t", &lim, 1).allowed, "sub-window {i}");
        }
        // Sub-window 20: sub-windows 0..=20 all counted.
        clock.set(20_999);
        let d = l.check("t", &lim, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(ms(1)));
        // Each new sub-window frees exactly the one request of the sub-window that left.
        for i in 21..40 {
            clock.set(i * 1_000);
            assert!(l.check("t", &lim, 1).allowed, "sub-window {i}");
            assert!(!l.check("t", &lim, 1).allowed, "sub-window {i}");
        }
    }

    #[test]
    fn oldest_partial_sub_window_counted_whole() {
        // W = 20 s, S = 1 s. Admitted at 500 ms, in sub-window [0, 1000).
        let (clock, l) = setup(500);
        let lim = limit(1, 20);
        assert!(l.check("t", &lim, 1).allowed);
        // At 20_600 the request itself is older than W (20_100 ms), but sub-window 0
        // still overlaps [600, 20_600]: counted whole.
        clock.set(20_600);
        let d = l.check("t", &lim, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(ms(400)));
        clock.set(20_999);
        assert!(!l.check("t", &lim, 1).allowed);
        clock.set(21_000);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn retry_after_is_exact() {
        // W = 60 s, S = 3 s. One at 0 (sub-window 0), one at 10 s (sub-window 3).
        let (clock, l) = setup(0);
        let lim = limit(2, 60);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(10_000);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(30_000);
        // Cost 1: sub-window 0 must leave, at 3 s + 60 s.
        let d = l.check("t", &lim, 1);
        assert_eq!(d.retry_after, Some(ms(33_000)));
        assert_eq!(d.retry_after_secs(), Some(33));
        // Cost 2: sub-window 3 must leave too, at 12 s + 60 s.
        let d = l.check("t", &lim, 2);
        assert_eq!(d.retry_after, Some(ms(42_000)));
        clock.set(62_999);
        assert!(!l.check("t", &lim, 1).allowed);
        clock.set(63_000);
        assert!(!l.check("t", &lim, 2).allowed);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn retry_after_rounds_up_to_one_second() {
        let (clock, l) = setup(0);
        let lim = limit(1, 1); // S = 50 ms
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(1_049);
        let d = l.check("t", &lim, 1);
        assert_eq!(d.retry_after, Some(ms(1)));
        assert_eq!(d.retry_after_secs(), Some(1));
        clock.set(1_050);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn reset() {
        // W = 60 s, S = 3 s.
        let (clock, l) = setup(10_000);
        let lim = limit(5, 60);
        // Nothing counted: the full quota is already there.
        assert_eq!(l.check("t", &lim, 0).reset, Duration::ZERO);
        let d = l.check("t", &lim, 1);
        // Sub-window 3 ([9 s, 12 s)) leaves at 12 s + 60 s.
        assert_eq!(d.reset, ms(62_000));
        clock.set(40_000);
        let d = l.check("t", &lim, 1);
        // Now the newest counted is sub-window 13 ([39 s, 42 s)).
        assert_eq!(d.reset, ms(62_000));
        assert_eq!(d.remaining, 3);
        clock.set(101_999);
        assert_eq!(l.check("t", &lim, 0).remaining, 4);
        clock.set(102_000);
        let d = l.check("t", &lim, 0);
        assert_eq!(d.remaining, 5);
        assert_eq!(d.reset, Duration::ZERO);
        // The refused keep the reset of what is counted.
        clock.set(200_000);
        for _ in 0..5 {
            assert!(l.check("t", &lim, 1).allowed);
        }
        let d = l.check("t", &lim, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset, ms(61_000));
    }

    #[test]
    fn near_the_epoch() {
        let (clock, l) = setup(0);
        let lim = limit(2, 1);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(999);
        assert!(l.check("t", &lim, 1).allowed);
        assert!(!l.check("t", &lim, 1).allowed);
        clock.set(1_050);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn clock_stepping_back_does_not_uncount() {
        let (clock, l) = setup(100_000);
        let lim = limit(2, 60);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(110_000);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(50_000);
        assert!(!l.check("t", &lim, 1).allowed);
        clock.set(0);
        assert!(!l.check("t", &lim, 1).allowed);
        // Time moves on again from where it was.
        clock.set(163_000);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let (clock, l) = setup(u64::MAX - 5);
        for lim in [limit(u64::MAX, 1), limit(0, 1), limit(1, 0), Limit { requests: 3, window: Duration::MAX }] {
            for cost in [0, 1, u64::MAX] {
                let _ = l.check("t", &lim, cost);
                clock.advance(ms(1));
                let _ = l.check("t", &lim, cost);
            }
        }
        l.sweep();
    }

    #[test]
    fn idle_tenants_are_swept() {
        let (clock, l) = setup(1_000_000);
        let lim = limit(10, 1);
        // 40 waves of 5 000 tenants that each go idle a second later: without the sweeps
        // of `check` the limiter would hold 200 000.
        for wave in 0..40 {
            for i in 0..5_000 {
                assert!(l.check(&format!("tenant-{wave}-{i}"), &lim, 1).allowed);
            }
            assert!(l.tracked() <= 2 * 5_000 + SHARDS * SWEEP_MIN_CHECKS, "{} after wave {wave}", l.tracked());
            clock.advance(ms(1_050));
        }
        l.sweep();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn sweep_keeps_what_still_counts() {
        let (clock, l) = setup(0);
        let lim = limit(1, 60);
        assert!(l.check("t", &lim, 1).allowed);
        clock.set(62_999);
        l.sweep();
        assert!(!l.check("t", &lim, 1).allowed);
        clock.set(63_000);
        l.sweep();
        assert_eq!(l.tracked(), 0);
        assert!(l.check("t", &lim, 1).allowed);
    }

    #[test]
    fn saturation_admits_at_least_twenty_twenty_firsts() {
        // One attempt every millisecond for 10 windows.
        let (clock, l) = setup(1_234_567);
        let lim = limit(100, 1);
        let mut admitted = 0;
        for _ in 0..10_000 {
            if l.check("t", &lim, 1).allowed {
                admitted += 1;
            }
            clock.advance(ms(1));
        }
        assert!(admitted >= 100 * 10 * 20 / 21 - 100, "{admitted}");
        assert!(admitted <= 100 * 11, "{admitted}");
    }

    /// Every admission at `t`: the admitted cost in `[t − W, t]` is at most `requests`.
    /// (Any span `[a, a + W]` holding admissions is covered by the one ending at its
    /// last admission.)
    fn assert_no_window_over(admitted: &[(u64, u64)], window: u64, requests: u64) {
        let mut sum = 0;
        let mut first = 0;
        for (i, &(t, cost)) in admitted.iter().enumerate() {
            sum += cost;
            while admitted[first].0 < t.saturating_sub(window) {
                sum -= admitted[first].1;
                first += 1;
            }
            assert!(
                sum <= requests,
                "{sum} admitted in [{}, {t}] (limit {requests}), at #{i}",
                t.saturating_sub(window)
            );
        }
    }

    fn gap() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 0u64..60, 0u64..4_000]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn never_more_than_requests_in_any_window(
            requests in 1u64..30,
            secs in 1u64..4,
            start in 0u64..10_000_000,
            steps in prop::collection::vec((gap(), 0u64..5), 1..600),
            probe_cost in 1u64..5,
        ) {
            let (clock, l) = setup(start);
            let lim = limit(requests, secs);
            let window = secs * 1_000;
            let mut admitted = Vec::new();
            for (dt, cost) in steps {
                clock.advance(ms(dt));
                let now = clock.now_millis();
                let d = l.check("t", &lim, cost);
                prop_assert!(d.remaining <= requests);
                prop_assert!(d.reset <= ms(window + window / SUB_WINDOWS));
                if d.allowed {
                    prop_assert_eq!(d.retry_after, None);
                    if cost > 0 {
                        prop_assert!(d.reset > ms(window));
                    }
                    admitted.push((now, cost));
                } else {
                    let r = d.retry_after.expect("refused has retry_after");
                    prop_assert!(r > Duration::ZERO && r <= ms(window + window / SUB_WINDOWS));
                    prop_assert!(d.retry_after_secs().expect("refused") >= 1);
                }
            }
            assert_no_window_over(&admitted, window, requests);

            // Fill up, then check that retry_after and reset are exact.
            let probe_cost = probe_cost.min(requests);
            let t = clock.now_millis();
            let d = loop {
                let d = l.check("t", &lim, probe_cost);
                if !d.allowed {
                    break d;
                }
            };
            let retry = d.retry_after.expect("refused").as_millis() as u64;
            let reset = d.reset.as_millis() as u64;
            prop_assert!(retry <= reset);
            // Probes of cost 0 count nothing, so they can look at the counters at
            // increasing times: `remaining >= cost` is exactly "cost would be admitted".
            let mut probes = [
                (t + retry - 1, false, probe_cost),
                (t + retry, true, probe_cost),
                (t + reset - 1, false, requests),
                (t + reset, true, requests),
            ];
            probes.sort_by_key(|p| p.0);
            for (at, fits, need) in probes {
                clock.set(at);
                let d = l.check("t", &lim, 0);
                prop_assert_eq!(d.remaining >= need, fits, "at {} (+{})", at, at - t);
                if !fits && need == probe_cost {
                    prop_assert!(!l.check("t", &lim, probe_cost).allowed);
                }
            }
        }

        #[test]
        fn saturation_admits_nearly_the_limit(
            requests in 1u64..60,
            secs in 1u64..4,
            start in 0u64..10_000_000,
            max_cost in 1u64..4,
            costs in prop::collection::vec(1u64..4, 1..50),
            offsets in prop::collection::vec(0.0f64..1.0, 1..50),
            blocks in 3u64..10,
        ) {
            let (clock, l) = setup(start);
            let lim = limit(requests, secs);
            let max_cost = max_cost.min(requests);
            let sub = lim.sub_window_millis();
            let first = start / sub + 1;
            let n = blocks * (SUB_WINDOWS + 1);
            let mut costs = costs.iter().map(|&c| c.min(max_cost)).cycle();
            let mut offsets = offsets.iter().cycle();
            let mut admitted = Vec::new();
            let mut total = 0;
            // In every sub-window, at some moment, send until refused.
            for k in first..first + n {
                let offset = (*offsets.next().expect("cycle") * sub as f64) as u64;
                clock.set(k * sub + offset.min(sub - 1));
                for _ in 0..=requests {
                    let cost = costs.next().expect("cycle");
                    if !l.check("t", &lim, cost).allowed {
                        break;
                    }
                    admitted.push((clock.now_millis(), cost));
                    total += cost;
                }
            }
            assert_no_window_over(&admitted, secs * 1_000, requests);
            // Each aligned run of SUB_WINDOWS + 1 sub-windows ends with a check that sums
            // exactly that run, and the client filled it to requests − cost + 1 at least.
            let full_runs = n / (SUB_WINDOWS + 1) - 1;
            let floor = (requests - max_cost + 1) * full_runs;
            prop_assert!(total >= floor, "{} admitted, expected at least {}", total, floor);
        }
    }
}
