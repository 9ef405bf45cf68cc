//! The in-process limiter: one replica's sliding windows, kept in memory per tenant.
//!
//! It applies the algorithm of the parent module (see [`super`]) to counters held in
//! memory: `SUB_WINDOWS + 1` of them per (tenant, window), in a fixed ring, and one per
//! (tenant, calendar quota) with the period it counts. It serves
//! `limits.backend = "local"` and the `on_store_error = "local"` fallback.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::decision::Decision;
use super::scope::KeyScope;
use crate::clock::Clock;
use crate::hashing::{FastMap, FastState};
use crate::policy::{Limit, LimitKind, Rule, SUB_WINDOWS};

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
    hasher: FastState,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    /// Tenant → one counter per limit it was checked against: one per limit of its plan,
    /// a few more right after a change of plan. Keyed by the tenant alone so that a
    /// lookup borrows `&str` and a request allocates nothing once its tenant is known.
    tenants: FastMap<String, Vec<Counter>>,
    /// Checks since the last sweep.
    checks: usize,
    /// Checks after which the next sweep runs.
    sweep_after: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { tenants: FastMap::default(), checks: 0, sweep_after: SWEEP_MIN_CHECKS }
    }
}

/// The counters of one (tenant, limit): a sliding window, or a calendar quota; with the
/// key it is counted for alone, for a key's own limit (a [`KeyScope`]).
struct Counter {
    of: Of,
    key: Option<Box<str>>,
}

enum Of {
    Window(Window),
    Quota(Quota),
}

/// What one limit says about one check: the fields of a [`Decision`] for that limit.
struct Part {
    fits: bool,
    remaining: u64,
    reset: Duration,
    retry_after: Option<Duration>,
}

impl Counter {
    fn new(rule: &Rule, key: Option<&str>, now: u64) -> Counter {
        let of = match rule.as_window() {
            Some(limit) => Of::Window(Window::new(limit, now)),
            None => Of::Quota(Quota { rule: *rule, start: 0, end: 0, count: 0 }),
        };
        Counter { of, key: key.map(Box::from) }
    }

    /// Whether this counter counts for `rule` (of `key` alone, or of the tenant). A window
    /// is one per window length, as the Redis keys are, whatever its `requests`; a quota
    /// one per kind of period (a day, a month) whatever its `requests` or `reset_day`:
    /// changing a limit (a plan edit, an override) keeps what has been counted.
    fn counts_for(&self, rule: &Rule, key: Option<&str>) -> bool {
        if self.key.as_deref() != key {
            return false;
        }
        match (&self.of, rule.kind) {
            (Of::Window(w), LimitKind::Window(window)) => w.limit.window == window,
            (Of::Quota(q), LimitKind::Day) => q.rule.kind == LimitKind::Day,
            (Of::Quota(q), LimitKind::Month { .. }) => matches!(q.rule.kind, LimitKind::Month { .. }),
            _ => false,
        }
    }

    /// Brings the counter to `now` and says whether `cost` fits.
    fn fits(&mut self, rule: &Rule, now: u64, cost: u64) -> bool {
        match &mut self.of {
            Of::Window(w) => {
                // The limit it was last checked under may have changed; the counts stand.
                w.limit.requests = rule.requests;
                w.fits(now, cost)
            }
            Of::Quota(q) => q.fits(rule, now, cost),
        }
    }

    /// Counts `cost` (after [`Counter::fits`] at the same `now`).
    fn add(&mut self, now: u64, cost: u64) {
        match &mut self.of {
            Of::Window(w) => w.add(now, cost),
            Of::Quota(q) => q.count = q.count.saturating_add(cost),
        }
    }

    fn part(&self, now: u64, cost: u64, fits: bool) -> Part {
        match &self.of {
            Of::Window(w) => w.part(now, cost, fits),
            Of::Quota(q) => q.part(now, fits),
        }
    }

    fn is_idle(&self, now: u64) -> bool {
        match &self.of {
            Of::Window(w) => w.is_idle(now),
            Of::Quota(q) => q.count == 0 || now >= q.end,
        }
    }
}

/// A calendar quota's count in its current period.
struct Quota {
    /// The rule it was last checked under (its `requests` and `reset_day` may change).
    rule: Rule,
    /// The period counted, in ms since the epoch: `[start, end)`.
    start: u64,
    end: u64,
    count: u64,
}

impl Quota {
    fn fits(&mut self, rule: &Rule, now: u64, cost: u64) -> bool {
        self.rule = *rule;
        let (start, end) = rule.period(now).unwrap_or((0, u64::MAX));
        // A new period starts from nothing. A clock that steps back into an earlier
        // period keeps counting the later one: this only refuses more.
        if start > self.start || self.end == 0 {
            (self.start, self.end, self.count) = (start, end, 0);
        } else if start < self.start {
            // Still the later period: its end stands.
        } else {
            self.end = end;
        }
        self.count.checked_add(cost).is_some_and(|n| n <= rule.requests)
    }

    fn part(&self, now: u64, fits: bool) -> Part {
        let left = Duration::from_millis(self.end.saturating_sub(now));
        Part {
            fits,
            remaining: self.rule.requests.saturating_sub(self.count),
            reset: if self.count > 0 { left } else { Duration::ZERO },
            // Refused: until the period resets (a cost above the quota included: a change
            // of plan may admit it then).
            retry_after: (!fits).then_some(left),
        }
    }
}

/// The counters of one (tenant, window).
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

    /// `now` as the window reads it: a clock that steps back (NTP) must not un-count what
    /// was admitted, so it acts as if it were still the start of the newest sub-window
    /// seen. This only refuses more.
    fn at(&self, now: u64) -> u64 {
        now.max(self.newest.saturating_mul(self.sub))
    }

    /// The sub-windows counted at `now` (already [`Window::at`]): from the oldest that
    /// overlaps [now − W, now] (`current − SUB_WINDOWS`, or 0 near the epoch), counted
    /// whole although partly expired, to the current one.
    fn counted(&self, now: u64) -> std::ops::RangeInclusive<u64> {
        now.saturating_sub(self.window) / self.sub..=now / self.sub
    }

    fn count(&self, now: u64) -> u64 {
        self.counted(now).map(|k| self.counts[slot(k)]).fold(0, u64::saturating_add)
    }

    fn fits(&mut self, now: u64, cost: u64) -> bool {
        let now = self.at(now);
        self.advance(now / self.sub);
        self.count(now).checked_add(cost).is_some_and(|n| n <= self.limit.requests)
    }

    fn add(&mut self, now: u64, cost: u64) {
        let current = self.at(now) / self.sub;
        let c = &mut self.counts[slot(current)];
        *c = c.saturating_add(cost);
    }

    fn part(&self, now: u64, cost: u64, fits: bool) -> Part {
        let requests = self.limit.requests;
        let (sub, window) = (self.sub, self.window);
        let now = self.at(now);
        let counted = self.counted(now);
        let count = self.count(now);

        // Sub-window k stops being counted once ⌊(t − W)/S⌋ > k, i.e. at t = (k+1)·S + W.
        let leaves = |k: u64| {
            let at = k.saturating_add(1).saturating_mul(sub).saturating_add(window);
            Duration::from_millis(at.saturating_sub(now))
        };
        let reset = counted.clone().rev().find(|&k| self.counts[slot(k)] > 0).map_or(Duration::ZERO, leaves);
        let retry_after = if fits {
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
        Part { fits, remaining: requests.saturating_sub(count), reset, retry_after }
    }
}

impl Shard {
    /// Decides `cost` against every rule at once: admitted only if each has room, then
    /// counted in each; refused, counted in none.
    fn check(&mut self, tenant: &str, scope: Option<KeyScope<'_>>, rules: &[Rule], cost: u64, now: u64) -> Decision {
        let key_of = |i: usize| scope.filter(|s| s.covers(i)).map(|s| s.key);
        if !self.tenants.contains_key(tenant) {
            self.tenants.insert(tenant.to_owned(), Vec::with_capacity(rules.len()));
        }
        let Some(counters) = self.tenants.get_mut(tenant) else { unreachable!("inserted above") };
        let mut allowed = true;
        for (index, rule) in rules.iter().enumerate() {
            let key = key_of(index);
            let i = match counters.iter().position(|c| c.counts_for(rule, key)) {
                Some(i) => i,
                None => {
                    counters.push(Counter::new(rule, key, now));
                    counters.len() - 1
                }
            };
            allowed &= counters[i].fits(rule, now, cost);
        }
        // The limit the decision describes: refused, the one that refused whose room
        // comes back last; admitted, the one with the least room left (of equals, the one
        // whose quota comes back last, then the first).
        let mut reported: Option<(usize, Part)> = None;
        for (index, rule) in rules.iter().enumerate() {
            let Some(counter) = counters.iter_mut().find(|c| c.counts_for(rule, key_of(index))) else { continue };
            if allowed {
                counter.add(now, cost);
            }
            let fits = allowed || counter.fits(rule, now, cost);
            let part = counter.part(now, cost, fits);
            let better = match &reported {
                None => true,
                Some((_, best)) if allowed => {
                    part.remaining < best.remaining || (part.remaining == best.remaining && part.reset > best.reset)
                }
                Some((_, best)) => !part.fits && (best.fits || part.retry_after > best.retry_after),
            };
            if better {
                reported = Some((index, part));
            }
        }
        self.checks += 1;
        if self.checks >= self.sweep_after {
            self.sweep(now);
        }
        let Some((index, part)) = reported else {
            // No rule: nothing limits.
            return Decision {
                allowed: true,
                limit: u64::MAX,
                index: 0,
                remaining: u64::MAX,
                reset: Duration::ZERO,
                retry_after: None,
            };
        };
        Decision {
            allowed,
            limit: rules[index].requests,
            index,
            remaining: part.remaining,
            reset: part.reset,
            retry_after: if allowed { None } else { part.retry_after },
        }
    }

    fn sweep(&mut self, now: u64) {
        self.checks = 0;
        self.tenants.retain(|_, counters| {
            counters.retain(|c| !c.is_idle(now));
            !counters.is_empty()
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
        LocalLimiter { clock, hasher: FastState::default(), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
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
    /// Each window length of a tenant has its own counters, whatever its `requests`.
    pub fn check(&self, tenant: &str, limit: &Limit, cost: u64) -> Decision {
        self.check_rules(tenant, &[Rule::window(*limit)], cost)
    }

    /// Admits `cost` requests for `tenant` only if every one of `rules` (a plan's limits,
    /// in order) has room for it, and then counts it in all of them; a refusal counts in
    /// none. One critical section: concurrent checks of the tenant see all of a decision
    /// or none of it. The [`Decision`] describes the limit that refused (the one whose
    /// room comes back last) or, admitted, the one with the least room left; its `index`
    /// says which. Calendar quotas read the UTC date from the limiter's clock.
    pub fn check_rules(&self, tenant: &str, rules: &[Rule], cost: u64) -> Decision {
        self.check_scoped(tenant, None, rules, cost)
    }

    /// [`LocalLimiter::check_rules`] with the rules `scope` covers counted in counters of
    /// the key alone (kept with the tenant's, in the same critical section).
    pub fn check_scoped(&self, tenant: &str, scope: Option<KeyScope<'_>>, rules: &[Rule], cost: u64) -> Decision {
        let now = self.clock.now_millis();
        self.shard(tenant).check(tenant, scope, rules, cost, now)
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

    /// The count of `tenant`'s calendar quota `rule` (its kind of period) in the period
    /// holding now; 0 for a window, or when nothing was counted this period.
    pub fn quota_count(&self, tenant: &str, rule: &Rule) -> u64 {
        let now = self.clock.now_millis();
        let Some((start, _)) = rule.period(now) else { return 0 };
        let shard = self.shard(tenant);
        let counters = shard.tenants.get(tenant).map(Vec::as_slice).unwrap_or_default();
        counters
            .iter()
            .find_map(|counter| match &counter.of {
                Of::Quota(q) if counter.counts_for(rule, None) && q.start == start => Some(q.count),
                _ => None,
            })
            .unwrap_or(0)
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
