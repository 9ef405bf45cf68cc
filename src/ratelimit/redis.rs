//! The shared limiter: every replica decides against the counters of every limit of a
//! tenant's plan kept in Redis (one sliding window, or one calendar quota, per limit),
//! with one atomic Lua script per round trip (`limits.backend = "redis"`).
//!
//! # The script
//!
//! The algorithm is the parent module's (see [`super`]), run inside Redis so that every
//! replica applies it to the same counters, atomically (`redis/limits.lua`, loaded into
//! [`LUA`]). One call takes one key per limit of the plan ([`rule_key`]), all on the
//! tenant's hash slot, and decides every cost against all of them at once: admitted only
//! if each limit has room, then counted in each, a refusal counted in none. The steps
//! below are per sliding window; a calendar quota (`period = "day" | "month"`) is one
//! count for its current period (`p`, the period's first day, and `n` in its hash),
//! started from nothing when Redis's clock reaches the next period (computed from
//! `TIME` in the script, as [`crate::policy::Rule::period`] computes it), and kept until
//! a minute past the period's end. [`SCRIPT`] is sent with EVALSHA
//! (redis-rs' [`Script`] re-loads it and retries once on `NOSCRIPT`, and a second `NOSCRIPT`
//! sends it whole with EVAL, so a Redis restart or `SCRIPT FLUSH`es cost extra round trips
//! and no failed request). It:
//!
//! 1. reads the time from Redis (`TIME`), so the replicas' clocks, skewed or not, never
//!    matter: every decision about one tenant uses one clock. If that clock steps back
//!    (a failover to a replica whose clock lags) the script acts as if it were the start
//!    of the newest sub-window it holds, as the local limiter does: it only refuses more;
//! 2. reads the tenant's hash: sub-window index → count, plus a summary in three fields
//!    with negative names (never a sub-window's index): `-1` the sum of the counters
//!    held, `-2` an index no held counter is older than, `-3` the newest index held. One
//!    `HMGET` of the summary and the current sub-window's counter gives the count, so a
//!    call reads four fields, not the whole hash. When sub-windows have left the window
//!    it subtracts their counters from the sum and deletes their fields, so the hash
//!    never holds more than `SUB_WINDOWS + 1` counters and the summary (memory per tenant
//!    bounded whatever the limit: a plan of 100,000 requests a minute costs what a plan
//!    of 10 costs). A hash without a summary (new, or written by a keygate before the
//!    summary, whose script deletes the negative fields as stale) is summed once with
//!    `HGETALL`; replicas of both versions can therefore share a window during a rolling
//!    upgrade and stay exact;
//! 3. decides each cost it was given, in order: admitted iff `count + cost ≤ requests`;
//!    an admitted cost is added to the current sub-window, a refused one adds nothing.
//!    The other sub-windows' counters are read (`HMGET` of the window's fields) only
//!    when a request is refused (its `retry_after`) or the current sub-window is empty
//!    (the reset);
//! 4. writes the current counter and the summary with one `HSET` and sets `PEXPIRE` to
//!    one window plus one sub-window (the longest any counter can still count);
//! 5. returns, per cost, `allowed, limit, remaining, reset_ms, retry_after_ms` (`-1`:
//!    none; `limit`: which of the plan's limits the answer describes, the one that refused
//!    whose room comes back last or, admitted, the one with the least room), the fields
//!    of a [`Decision`], computed exactly as the local limiter computes them. The
//!    headers therefore come from the script's answer and agree across replicas:
//!    `remaining` counts down by one per request whichever replica asked.
//!
//! Calling `TIME` before writing needs effect replication, the default since Redis 5.
//!
//! A window's key is `kg:rl:{<tenant>}:<window>` (`60s`, `1500ms`): one per (tenant,
//! window length), without the limit's `requests`, so that changing a limit (a plan
//! edit, a tenant's or a key's override) keeps what the window has counted; a plan never
//! has two limits over one window (the policy and the overrides refuse it), so one key
//! never stands for two limits of one call. A calendar quota's key is
//! `kg:rq:{<tenant>}:day` or `:month`, likewise without its `requests`. Keygate before
//! this scheme keyed windows `kg:rl:{<tenant>}:<requests>:<window seconds>`: on the
//! upgrade those hashes are abandoned (they expire within a window) and the new keys
//! start from nothing, so at most one window is counted afresh. The `{tenant}` hash tag
//! keeps all of a tenant's keys on one slot of a Redis Cluster, so that one script may
//! touch them all.
//!
//! Redis holds integers exactly up to 2^63 but Lua numbers are doubles: limits and costs
//! are capped at 2^53 (far above any plan; a cost above a plan's limit is refused anyway).
//!
//! # Coalescing
//!
//! Under load, concurrent checks of one (tenant, plan) on one proxy worker thread of one
//! replica (each worker coalesces its own checks: see [`Worker`]) do not each cost a
//! round trip. The first check finds nothing in flight for its key and calls the script
//! at once (no timer, so an idle tenant pays no added latency). Checks that arrive while
//! that call is in flight queue behind it; when it returns, *all* the queued checks go to
//! Redis as one script call carrying their costs in arrival order, which decides each of
//! them atomically (admitted in order while they fit, a refused one adding nothing) and
//! returns one answer each. Checks arriving meanwhile queue for the next call, and so on
//! until the queue is empty. Exactness is untouched: the script still decides every
//! request against the shared counters, atomically; only the round trips are shared. At
//! most [`MAX_BATCH`] checks go in one call.
//!
//! When a call fails (timeout, error, breaker open), the checks queued behind it fail at
//! once with the same error instead of trying again: the store has just shown it is not
//! answering, and a queued check must not wait for a second timeout. A queued check
//! waits for at most the rest of the call in flight and then its own call, each bounded
//! by `redis.timeout` through [`RedisClient::run`]. A check whose caller has gone away
//! (its future dropped) before its batch is sent is left out of the batch, so it
//! counts nothing.
//!
//! # Leases
//!
//! A call of a tenant that is busy on this worker (checks queued behind a call, or at
//! least [`super::lease::BUSY_CHECKS`] checks in 50 ms, one at a time or not) also asks
//! for leases (see [`super::lease`]): per limit of the plan the call carries, units counted in Redis now
//! in that limit (in the window's current sub-window, or the quota's period), at most
//! `1/LEASE_SHARE` of that limit's room, that later checks on this worker admit without a
//! round trip, each limit's lease until its own sub-window ends, a check needing its cost
//! in every limit's lease. The checks queued behind a call are first served from the
//! leases; only what they cannot cover goes to Redis, and that call carries only the
//! limits whose lease is spent, ended or low (a quarter of its units or time left): the
//! other limits' parts of its decisions are taken from their leases when it is sent, and
//! each decision describes, of all the plan's limits, the one with the least room, the
//! script's answer for those it carried and the lease's for the others (what Redis had
//! free after the grant plus the lease's units still unspent). A refused cost's units go
//! back to the leases they were taken from. Unspent units go back to Redis with the next
//! call carrying their limit. A lease that runs to its end is ended by a timer, which
//! then keeps its unspent units for that call for [`HAND_BACK_GRACE`] and sends them
//! alone (on the limit's one key) only if no call comes by then: a busy tenant's next
//! request, just past the sub-window's end, carries them with its own call (one call at
//! each sub-window's end, not two). At saturation a worker therefore asks Redis about once
//! per lease ([`super::lease::MAX_LEASE`] requests) and once per sub-window of its plan's
//! shortest window, each call touching only the keys whose lease it renews, instead of
//! once per batch.
//!
//! A lease's state lives beside the coalescing queue, in one [`Slot`] per (worker, plan's
//! limits, tenant), with the tenant's recent rate, forgotten once nothing is in flight,
//! queued or leased and no check came for 50 ms: at once when its last call or lease
//! ends later than that, else by a sweep of the quiet slots, at most once a
//! [`SWEEP_EVERY`], on the next check.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, Script};
use tokio::sync::oneshot;

use super::decision::Decision;
use super::lease::{self, Grant, HandBack, Lease, BUSY_CHECKS, LEASE_SHARE};
use super::scope::KeyScope;
use crate::metrics::StoreOp;
use crate::policy::{Limit, LimitKind, Rule};
use crate::redis_client::{RedisCallError, RedisClient};

mod slot;

use slot::{merge, CallPlan, Slot, Waiter};

/// How long a lease that ran to its end keeps its unspent units for the tenant's next
/// call before a call of their own hands them back. Held that much longer, they only
/// ever refuse more (counted, admitted by no one); the script ignores a hand-back whose
/// sub-window has left the window since, or whose period has ended.
pub const HAND_BACK_GRACE: Duration = Duration::from_millis(50);

/// How often, at most, the slots of tenants gone quiet are swept away (on a check).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The most checks one script call decides. A burst larger than this takes several calls
/// (in a row, each carrying up to this many); it bounds the size of one command and the
/// time the script holds Redis.
pub const MAX_BATCH: usize = 512;

/// Limits and costs above this are capped to it: Lua numbers are doubles, exact up to
/// 2^53.
const MAX_EXACT: u64 = 1 << 53;

/// The fields the script answers per cost; about the lease, before and per limit; and
/// the arguments it takes before its limits, and per limit.
const PER_COST: usize = 5;
const LEASE_FIELDS: usize = 6;
const HEAD_ARGS: usize = 2;
const ARGS_PER_LIMIT: usize = 7;

/// The limiter script (`redis/limits.lua`: its header lists `KEYS` and `ARGV`). `KEYS`:
/// one per limit the call carries, in the plan's order ([`rule_key`]); `ARGV`: the number
/// of limits and a lease's share, then per limit its `requests`, sub-window and window
/// lengths (ms; `0` and the reset day, `0` for a day, for a calendar quota), the lease
/// wanted, and the units of a lease handed back with where they were counted (sub-window
/// or period, nonce), then one cost per request, in arrival order. Returns `allowed,
/// limit, remaining, reset_ms, retry_after_ms` per cost, flattened (`limit` is the
/// position of the limit described among those carried; `retry_after_ms` is `-1` when
/// admitted), then per limit the lease granted: units, ms left in its sub-window (at most
/// a second for a quota), where it is counted (sub-window or period, nonce), the quota
/// free after it and the reset.
pub const LUA: &str = include_str!("redis/limits.lua");

/// The script, with its SHA1 computed once.
pub static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA));

/// The Redis key of `tenant`'s window of `limit`'s length: `kg:rl:{<tenant>}:<window>`,
/// the window in the duration grammar's largest whole unit of seconds (`60s`; `<n>ms` for
/// a window that is not whole seconds). It does not hold `limit.requests`: a changed limit
/// keeps its counts.
pub fn key(tenant: &str, limit: &Limit) -> String {
    let mut window = itoa::Buffer::new();
    let whole_seconds = limit.window.subsec_nanos() == 0;
    let window =
        if whole_seconds { window.format(limit.window.as_secs()) } else { window.format(limit.window.as_millis()) };
    let mut key = String::with_capacity(10 + tenant.len() + window.len() + 2);
    for part in ["kg:rl:{", tenant, "}:", window, if whole_seconds { "s" } else { "ms" }] {
        key.push_str(part);
    }
    key
}

/// The Redis key of one limit of `tenant`: a sliding window's [`key`], or for a calendar
/// quota `kg:rq:{<tenant>}:day` or `kg:rq:{<tenant>}:month`: one per kind of period,
/// without its `requests` or `reset_day`, so that raising a quota keeps what its period
/// has counted.
pub fn rule_key(tenant: &str, rule: &Rule) -> String {
    match rule.kind {
        LimitKind::Window(window) => key(tenant, &Limit { requests: rule.requests, window }),
        LimitKind::Day => format!("kg:rq:{{{tenant}}}:day"),
        LimitKind::Month { .. } => format!("kg:rq:{{{tenant}}}:month"),
    }
}

/// The Redis key of a limit that `key` of `tenant` counts alone (its own override):
/// `kg:rl:{<tenant>}:key:<key>:<window>`, or `kg:rq:{<tenant>}:key:<key>:day|month`: on
/// the tenant's slot, so that one script decides it with the tenant's other limits.
pub fn key_rule_key(tenant: &str, key: &str, rule: &Rule) -> String {
    let tenant_key = rule_key(tenant, rule);
    let (head, tail) = tenant_key.split_at(tenant_key.find("}:").map_or(tenant_key.len(), |i| i + 2));
    format!("{head}key:{key}:{tail}")
}

/// The name a slot is kept under: the tenant for a check of the tenant's counters alone;
/// for a check with a [`KeyScope`], the tenant, key and mask (two keys of one tenant with
/// the same limits have slots, and Redis keys, of their own). `\u{1f}` is in no tenant or
/// key id.
fn owner<'t>(tenant: &'t str, scope: Option<KeyScope<'_>>) -> std::borrow::Cow<'t, str> {
    match scope {
        None => std::borrow::Cow::Borrowed(tenant),
        Some(scope) => std::borrow::Cow::Owned(format!("{tenant}\u{1f}{}\u{1f}{}", scope.key, scope.mask)),
    }
}

/// The Redis keys of `rules` for the slot named `owner` (see [`owner`]).
fn owner_keys(owner: &str, rules: &[Rule]) -> Vec<String> {
    let mut parts = owner.split('\u{1f}');
    let tenant = parts.next().unwrap_or_default();
    let scope = match (parts.next(), parts.next().and_then(|m| m.parse::<u64>().ok())) {
        (Some(key), Some(mask)) => Some(KeyScope { key, mask }),
        _ => None,
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| match scope {
            Some(scope) if scope.covers(i) => key_rule_key(tenant, scope.key, rule),
            _ => rule_key(tenant, rule),
        })
        .collect()
}

/// The proxy worker thread checks run on (see [`crate::worker`]): each worker batches its
/// own checks and holds its own leases, so a batch's answers wake tasks on the thread that
/// sent it, never another one.
type Worker = Option<usize>;

/// One worker's slots, by plan (its limits) and tenant: looked up by `&[Rule]` and `&str`,
/// without building the Redis keys on every check.
type Plans = HashMap<Arc<[Rule]>, HashMap<Box<str>, Slot>>;

/// Every worker's slots, and when the quiet ones were last swept away.
#[derive(Default)]
struct Slots {
    workers: HashMap<Worker, Plans>,
    swept_at: u64,
}

impl Slots {
    /// Forgets the slots that are idle at `now` ([`Slot::is_idle`]), if the last sweep
    /// was [`SWEEP_EVERY`] ago: a tenant's slot stays while it checks, so that its rate
    /// is seen, and goes when it stops.
    fn sweep(&mut self, now: u64) {
        if now.saturating_sub(self.swept_at) < SWEEP_EVERY.as_millis() as u64 {
            return;
        }
        self.swept_at = now;
        for plans in self.workers.values_mut() {
            plans.retain(|_, tenants| {
                tenants.retain(|_, slot| !slot.is_idle(now));
                !tenants.is_empty()
            });
        }
    }
}

struct Inner {
    client: RedisClient,
    /// The monotonic clock of leases: [`Inner::now`] is milliseconds since this.
    epoch: Instant,
    slots: Mutex<Slots>,
    /// [`HAND_BACK_GRACE`], unless a test set another.
    grace: Duration,
    /// [`BUSY_CHECKS`], unless a test set another.
    busy_checks: u64,
}

/// The shared limiter over Redis: one [`SCRIPT`] call per round trip deciding every limit
/// of a plan at once, concurrent checks of one tenant coalesced into one round trip, and
/// busy tenants admitted from leases (see the module docs). Cheap to clone; clones share
/// the queues and leases.
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter").finish_non_exhaustive()
    }
}

/// What a check does after looking at its slot.
enum Next {
    Decided(Decision),
    Wait(oneshot::Receiver<Result<Decision, RedisCallError>>),
    Call(CallPlan),
}

impl RedisLimiter {
    /// A limiter deciding through `client` (its timeout and circuit breaker bound every
    /// call).
    pub fn new(client: RedisClient) -> Self {
        RedisLimiter::with_hand_back_grace(client, HAND_BACK_GRACE)
    }

    /// A limiter whose leases that ran to their end wait `grace` (not
    /// [`HAND_BACK_GRACE`]) for the tenant's next call before going back alone: for tests,
    /// which must not depend on a check arriving within 50 ms.
    pub fn with_hand_back_grace(client: RedisClient, grace: Duration) -> Self {
        RedisLimiter::tuned(client, grace, BUSY_CHECKS)
    }

    /// A limiter with the hand-back grace `grace` and a tenant making `busy_checks`
    /// checks in 50 ms on one worker taken as busy without a queue (0: only a queue makes
    /// a tenant busy): for tests, which compare with and without.
    pub fn tuned(client: RedisClient, grace: Duration, busy_checks: u64) -> Self {
        let slots = Mutex::new(Slots::default());
        let inner = Inner { client, epoch: Instant::now(), slots, grace, busy_checks };
        RedisLimiter { inner: Arc::new(inner) }
    }

    /// Admits `cost` requests for `tenant` under the one sliding window `limit`, or
    /// refuses them without counting them: [`RedisLimiter::check_rules`] with one limit.
    pub async fn check(&self, tenant: &str, limit: &Limit, cost: u64) -> Result<Decision, RedisCallError> {
        self.check_rules(tenant, &[Rule::window(*limit)], cost).await
    }

    /// Admits `cost` requests for `tenant` only if every one of `rules` (its plan's
    /// limits, in order) has room for it, then counts it in all of them; a refusal counts
    /// in none. Decided against the counters shared by every replica, by one script call
    /// on the tenant's hash slot. The [`Decision`] is the script's (Redis's clock, every
    /// replica's admissions) or, for a busy tenant, its lease's; it has the same fields,
    /// computed the same way, as the local limiter's.
    ///
    /// An error means the store did not decide (unreachable, slower than `redis.timeout`,
    /// breaker open, or a Redis error): the caller applies `on_store_error`. A check that
    /// failed may still have been counted by Redis (a reply lost in a timeout), which
    /// only ever refuses more.
    pub async fn check_rules(&self, tenant: &str, rules: &[Rule], cost: u64) -> Result<Decision, RedisCallError> {
        self.check_scoped(tenant, None, rules, cost).await
    }

    /// [`RedisLimiter::check_rules`] with the rules `scope` covers counted in the key's own
    /// counters (on the tenant's slot, in the same script call: one atomic decision).
    pub async fn check_scoped(
        &self,
        tenant: &str,
        scope: Option<KeyScope<'_>>,
        rules: &[Rule],
        cost: u64,
    ) -> Result<Decision, RedisCallError> {
        let owner = owner(tenant, scope);
        let tenant: &str = &owner;
        let worker = crate::worker::current();
        let (next, plan) = {
            let mut slots = self.inner.lock();
            let now = self.inner.now();
            slots.sweep(now);
            let plans = slots.workers.entry(worker).or_default();
            let plan: Arc<[Rule]> = match plans.get_key_value(rules) {
                Some((plan, _)) => plan.clone(),
                None => {
                    let plan: Arc<[Rule]> = rules.into();
                    plans.insert(plan.clone(), HashMap::new());
                    plan
                }
            };
            let Some(tenants) = plans.get_mut(rules) else { unreachable!("inserted above") };
            if !tenants.contains_key(tenant) {
                let keys: Arc<[String]> = owner_keys(tenant, rules).into();
                tenants.insert(tenant.into(), Slot::new(keys));
            }
            let Some(slot) = tenants.get_mut(tenant) else { unreachable!("inserted above") };
            slot.checked(now);
            let next = if let Some(decision) = lease::spend(&mut slot.leases, cost, rules, now) {
                Next::Decided(decision)
            } else if slot.calling {
                let (tx, rx) = oneshot::channel();
                slot.queue.push(Waiter { cost, tx });
                Next::Wait(rx)
            } else {
                slot.calling = true;
                Next::Call(slot.plan_call(&[cost], now, self.inner.busy_checks))
            };
            (next, plan)
        };
        let call = match next {
            Next::Decided(decision) => return Ok(decision),
            // The sender is only dropped without an answer if the task sending the batch
            // died (a panic, or the runtime shutting down).
            Next::Wait(rx) => return rx.await.unwrap_or(Err(RedisCallError::Unavailable)),
            Next::Call(call) => call,
        };

        // Nothing was in flight: this check goes now, alone, and hands whatever queued
        // behind it to a batch when it is done (or dropped).
        let mut leader = Leader { inner: self.inner.clone(), worker, plan, tenant: tenant.into(), failed: None };
        let sent = self.inner.now();
        let result = self.inner.run_call(worker, &leader.plan, tenant, &call, &[cost], sent).await;
        let result = result.and_then(|mut decisions| {
            decisions.pop().ok_or_else(|| RedisCallError::Redis(unexpected("an empty reply")))
        });
        if let Err(e) = &result {
            leader.failed = Some(e.clone());
        }
        drop(leader);
        result
    }

    /// Units of leases that ran to their end and wait for the tenant's next call (or their
    /// grace) to go back to Redis.
    pub fn pending_units(&self) -> u64 {
        self.sum_over_slots(Slot::pending_units)
    }

    /// Units held in leases on this replica and not yet spent or handed back, those of
    /// leases that ended and wait for a call to go back with included, summed over the
    /// limits of each plan (each limit has leases of its own).
    pub fn leased_units(&self) -> u64 {
        self.sum_over_slots(Slot::leased_units)
    }

    /// [`RedisLimiter::leased_units`] of the limits at position `index` of their plans
    /// alone.
    pub fn leased_units_in(&self, index: usize) -> u64 {
        self.sum_over_slots(|slot| {
            let lease = slot.leases.get(index).and_then(Option::as_ref).map_or(0, |lease| lease.units);
            lease + slot.pending.get(index).and_then(Option::as_ref).map_or(0, |(back, _)| back.units)
        })
    }

    fn sum_over_slots(&self, units: impl Fn(&Slot) -> u64) -> u64 {
        let slots = self.inner.lock();
        slots.workers.values().flat_map(HashMap::values).flat_map(HashMap::values).map(units).sum()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Nothing panics while holding the lock, and the slots stay consistent anyway.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds of the leases' monotonic clock.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the slot of (`worker`, `plan`, `tenant`) with the clock read under the
    /// lock, and forgets the slot if that left it idle; `None` if there is no such slot.
    fn with_slot<R>(
        &self,
        worker: Worker,
        plan: &[Rule],
        tenant: &str,
        f: impl FnOnce(&mut Slot, u64) -> R,
    ) -> Option<R> {
        let mut slots = self.lock();
        let now = self.now();
        let plans = slots.workers.get_mut(&worker)?;
        let tenants = plans.get_mut(plan)?;
        let slot = tenants.get_mut(tenant)?;
        let result = f(slot, now);
        if slot.is_idle(now) {
            tenants.remove(tenant);
            if tenants.is_empty() {
                plans.remove(plan);
            }
        }
        Some(result)
    }

    /// A call planned as `call` (sent at `sent`) deciding `costs` in order, for the slot
    /// of (`worker`, `plan`, `tenant`): installs the leases it brought back, gives the
    /// units of refused costs back to the leases it took them from, and returns one
    /// decision per cost, every limit of the plan in it. If it fails, every unit it took
    /// goes back.
    async fn run_call(
        self: &Arc<Self>,
        worker: Worker,
        plan: &Arc<[Rule]>,
        tenant: &str,
        call: &CallPlan,
        costs: &[u64],
        sent: u64,
    ) -> Result<Vec<Decision>, RedisCallError> {
        let rules: Vec<Rule> = call.carried.iter().map(|&i| plan[i]).collect();
        let result = self.call(&call.keys, &rules, costs, &call.wants, &call.backs).await;
        let (decisions, refunded) = match result {
            Ok((decisions, grants)) => {
                for (&i, grant) in call.carried.iter().zip(&grants) {
                    self.install(worker, plan, tenant, i, grant, sent);
                }
                merge(call, plan, costs, decisions, self.now())
            }
            Err(e) => {
                let all = costs.iter().fold(0u64, |sum, &cost| sum.saturating_add(cost));
                self.refund(worker, plan, tenant, call, all);
                return Err(e);
            }
        };
        self.refund(worker, plan, tenant, call, refunded);
        Ok(decisions)
    }

    /// Gives `units` back to every lease `call` took them from (or to Redis).
    fn refund(self: &Arc<Self>, worker: Worker, plan: &Arc<[Rule]>, tenant: &str, call: &CallPlan, units: u64) {
        if units == 0 {
            return;
        }
        for reserved in &call.reserved {
            let lost = HandBack { units, sub_window: reserved.sub_window, nonce: reserved.nonce };
            let back =
                self.with_slot(worker, plan, tenant, |slot, _| slot.refund(reserved, units)).unwrap_or(Some(lost));
            if let Some(back) = back {
                self.spawn_hand_back(tenant, plan, reserved.index, back);
            }
        }
    }

    /// One script call deciding `costs` in order (one decision each, its `index` a
    /// position in `rules`) against every limit of `rules` (their `keys`), asking for a
    /// lease of `wants` more units of each and handing `backs` leases' unspent units.
    async fn call(
        &self,
        keys: &[String],
        rules: &[Rule],
        costs: &[u64],
        wants: &[u64],
        backs: &[Option<HandBack>],
    ) -> Result<(Vec<Decision>, Vec<Grant>), RedisCallError> {
        let n = rules.len();
        let mut args: Vec<i64> = Vec::with_capacity(HEAD_ARGS + n * ARGS_PER_LIMIT + costs.len());
        args.extend([n as i64, LEASE_SHARE as i64]);
        for (i, rule) in rules.iter().enumerate() {
            let (sub, third) = match rule.kind {
                LimitKind::Window(window) => {
                    let limit = Limit { requests: rule.requests, window };
                    (limit.sub_window_millis().min(MAX_EXACT), limit.window_millis().min(MAX_EXACT))
                }
                LimitKind::Day => (0, 0),
                LimitKind::Month { reset_day } => (0, u64::from(reset_day)),
            };
            let want = wants.get(i).copied().unwrap_or(0).min(MAX_EXACT);
            let back = backs.get(i).copied().flatten();
            let (units, at, nonce) = back.map_or((0, -1, 0), |b| (b.units.min(MAX_EXACT), b.sub_window, b.nonce));
            args.extend([rule.requests.min(MAX_EXACT) as i64, sub as i64, third as i64, want as i64, units as i64]);
            args.extend([at, nonce]);
        }
        args.extend(costs.iter().map(|&cost| cost.min(MAX_EXACT) as i64));
        let keys = keys.to_vec();
        let reply: Vec<i64> = self
            .client
            .run(StoreOp::Limit, move |mut connection| async move {
                let mut invocation = SCRIPT.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(&args);
                match invocation.invoke_async(&mut connection).await {
                    // Flushed again between redis-rs' SCRIPT LOAD and its retried EVALSHA
                    // (two `SCRIPT FLUSH`es in a row): the script is sent whole, once.
                    Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        redis::cmd("EVAL")
                            .arg(LUA)
                            .arg(keys.len())
                            .arg(&keys)
                            .arg(&args)
                            .query_async(&mut connection)
                            .await
                    }
                    other => other,
                }
            })
            .await?;
        if reply.len() != costs.len() * PER_COST + n * LEASE_FIELDS {
            return Err(RedisCallError::Redis(unexpected("a reply of the wrong length")));
        }
        let (per_cost, lease) = reply.split_at(costs.len() * PER_COST);
        let millis = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        let whole = |v: i64| u64::try_from(v).unwrap_or(0);
        let decisions = per_cost
            .chunks_exact(PER_COST)
            .map(|d| {
                let index = usize::try_from(d[1]).unwrap_or(0).min(n.saturating_sub(1));
                Decision {
                    allowed: d[0] == 1,
                    limit: rules.get(index).map_or(0, |rule| rule.requests),
                    index,
                    remaining: whole(d[2]),
                    reset: millis(d[3]),
                    retry_after: (d[0] != 1).then(|| millis(d[4])),
                }
            })
            .collect();
        let grants = lease
            .chunks_exact(LEASE_FIELDS)
            .map(|l| Grant {
                units: whole(l[0]),
                sub_window_left: whole(l[1]),
                sub_window: l[2],
                nonce: l[3],
                free_after: whole(l[4]),
                reset: whole(l[5]),
            })
            .collect();
        Ok((decisions, grants))
    }

    /// Installs the lease of limit `i` of `grant` (for a call sent at `sent`) in its slot,
    /// with a timer that hands its unspent units back when it ends.
    fn install(self: &Arc<Self>, worker: Worker, plan: &Arc<[Rule]>, tenant: &str, i: usize, grant: &Grant, sent: u64) {
        let Some(lease) = Lease::new(grant, sent, self.now()) else {
            if grant.units > 0 {
                // Over before it arrived (granted at its sub-window's very end): its units
                // wait for the next call carrying the limit, as a lease's that ran to its
                // end do (a busy tenant's comes at once: the checks queued behind this
                // one), instead of a call of their own.
                self.park(worker, plan, tenant, i, grant.hand_back());
            }
            return;
        };
        let deadline = lease.deadline;
        let installed = self.with_slot(worker, plan, tenant, |slot, now| {
            // A lease still held (a call raced past it) goes back at once.
            let back = slot.end_lease(i, now);
            slot.leases[i] = Some(lease);
            slot.generations[i] += 1;
            (slot.generations[i], back)
        });
        let Some((generation, back)) = installed else {
            // No slot (cannot happen while its call is in flight): the units go back.
            self.spawn_hand_back(tenant, plan, i, grant.hand_back());
            return;
        };
        if let Some(back) = back {
            self.spawn_hand_back(tenant, plan, i, back);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (inner, plan, tenant) = (self.clone(), plan.clone(), Box::<str>::from(tenant));
        runtime.spawn(async move {
            tokio::time::sleep_until((inner.epoch + Duration::from_millis(deadline)).into()).await;
            // Replaced (generation moved on): its units went back with what replaced it.
            // Else it ends here, and its units wait for the next call carrying its limit;
            // one still pending from an earlier lease (no call came, and its own grace has
            // not yet run out) goes back now.
            let earlier = inner.with_slot(worker, &plan, &tenant, |slot, now| {
                let back = (slot.generations[i] == generation).then(|| slot.end_lease(i, now)).flatten()?;
                slot.pending[i].replace((back, generation)).map(|(earlier, _)| earlier)
            });
            if let Some(earlier) = earlier.flatten() {
                inner.hand_back(&tenant, &plan, i, earlier).await;
            }
            tokio::time::sleep(inner.grace).await;
            // No call took them: they go back alone.
            let back = inner.with_slot(worker, &plan, &tenant, |slot, _| match slot.pending[i].take() {
                Some((back, from)) if from == generation => Some(back),
                other => {
                    slot.pending[i] = other;
                    None
                }
            });
            if let Some(back) = back.flatten() {
                inner.hand_back(&tenant, &plan, i, back).await;
            }
        });
    }

    /// Keeps `back` (the units of a lease of limit `i` that ended before it arrived) for the
    /// next call carrying the limit, and hands them back alone after [`HAND_BACK_GRACE`] if
    /// none took them; at once if units are already waiting.
    fn park(self: &Arc<Self>, worker: Worker, plan: &Arc<[Rule]>, tenant: &str, i: usize, back: HandBack) {
        // A tag no lease's timer uses: theirs are the generations themselves.
        const PARKED: u64 = 1 << 63;
        let parked = self.with_slot(worker, plan, tenant, |slot, _| {
            if slot.pending[i].is_some() {
                return None;
            }
            let tag = slot.generations[i] | PARKED;
            slot.pending[i] = Some((back, tag));
            Some(tag)
        });
        let Some(Some(tag)) = parked else {
            self.spawn_hand_back(tenant, plan, i, back);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (inner, plan, tenant) = (self.clone(), plan.clone(), Box::<str>::from(tenant));
        runtime.spawn(async move {
            tokio::time::sleep(inner.grace).await;
            let back = inner.with_slot(worker, &plan, &tenant, |slot, _| match slot.pending[i].take() {
                Some((back, from)) if from == tag => Some(back),
                other => {
                    slot.pending[i] = other;
                    None
                }
            });
            if let Some(back) = back.flatten() {
                inner.hand_back(&tenant, &plan, i, back).await;
            }
        });
    }

    /// Hands `back` to limit `i` of `plan` in Redis from a task of its own.
    fn spawn_hand_back(self: &Arc<Self>, tenant: &str, plan: &Arc<[Rule]>, i: usize, back: HandBack) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (inner, tenant, plan) = (self.clone(), Box::<str>::from(tenant), plan.clone());
            runtime.spawn(async move { inner.hand_back(&tenant, &plan, i, back).await });
        }
    }

    /// A call that only hands a lease's unspent units back to limit `i` of `plan` (its one
    /// key). If it fails they stay counted until their sub-window leaves the window (or
    /// their period ends), which only ever refuses more.
    async fn hand_back(&self, tenant: &str, plan: &[Rule], i: usize, back: HandBack) {
        let units = back.units;
        let (Some(key), Some(rule)) = (owner_keys(tenant, plan).into_iter().nth(i), plan.get(i)) else { return };
        if let Err(e) = self.call(&[key], &[*rule], &[], &[0], &[Some(back)]).await {
            tracing::debug!(error = %e, units, "a lease's unspent units could not be handed back");
        }
    }

    /// Serves the checks queued for a slot from its leases, and sends the rest, batch
    /// after batch, until none is left; then the slot has no call in flight (and is
    /// forgotten if idle).
    async fn drain(self: Arc<Self>, worker: Worker, plan: Arc<[Rule]>, tenant: Box<str>) {
        loop {
            let next = self.with_slot(worker, &plan, &tenant, |slot, now| {
                if !slot.settle(&plan, now) {
                    return None;
                }
                let n = slot.queue.len().min(MAX_BATCH);
                let batch: Vec<Waiter> = slot.queue.drain(..n).collect();
                let costs: Vec<u64> = batch.iter().map(|w| w.cost).collect();
                let call = slot.plan_call(&costs, now, self.busy_checks);
                Some((batch, costs, call, now))
            });
            let Some((batch, costs, call, sent)) = next.flatten() else { return };
            match self.run_call(worker, &plan, &tenant, &call, &costs, sent).await {
                Ok(decisions) => {
                    for (waiter, decision) in batch.into_iter().zip(decisions) {
                        let _ = waiter.tx.send(Ok(decision));
                    }
                }
                Err(e) => {
                    fail(batch, &e);
                    self.fail_queued(worker, &plan, &tenant, &e);
                    return;
                }
            }
        }
    }

    /// Fails every check queued for a slot with `error`; the slot has no call in flight.
    fn fail_queued(&self, worker: Worker, plan: &[Rule], tenant: &str, error: &RedisCallError) {
        let queued = self.with_slot(worker, plan, tenant, |slot, _| {
            slot.calling = false;
            std::mem::take(&mut slot.queue)
        });
        fail(queued.unwrap_or_default(), error);
    }
}

fn fail(waiters: Vec<Waiter>, error: &RedisCallError) {
    for waiter in waiters {
        let _ = waiter.tx.send(Err(error.clone()));
    }
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::UnexpectedReturnType, "the limiter script returned", what.to_string()))
}

/// The check that went alone. When it is done, or dropped half-way (its caller went
/// away), the checks that queued behind it are served from the lease its call brought
/// back, or sent as one batch by a task of their own, or failed at once if its call
/// failed.
struct Leader {
    inner: Arc<Inner>,
    worker: Worker,
    plan: Arc<[Rule]>,
    tenant: Box<str>,
    failed: Option<RedisCallError>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(error) = self.failed.take() {
            self.inner.fail_queued(self.worker, &self.plan, &self.tenant, &error);
            return;
        }
        let plan = self.plan.clone();
        if self.inner.with_slot(self.worker, &plan, &self.tenant, |slot, now| slot.settle(&plan, now)) != Some(true) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.inner.clone().drain(self.worker, plan, std::mem::take(&mut self.tenant)));
            }
            // No runtime to send them from (it is shutting down): they fail.
            Err(_) => self.inner.fail_queued(self.worker, &self.plan, &self.tenant, &RedisCallError::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_as_hash_tag_and_the_window() {
        let per_minute = Limit { requests: 300, window: Duration::from_secs(60) };
        assert_eq!(key("acme", &per_minute), "kg:rl:{acme}:60s");
        let odd = Limit { requests: 5, window: Duration::from_millis(1_500) };
        assert_eq!(key("acme", &odd), "kg:rl:{acme}:1500ms");
        // Not the limit: changing it keeps what was counted.
        assert_eq!(key("acme", &per_minute), key("acme", &Limit { requests: 301, ..per_minute }));
        assert_ne!(key("acme", &per_minute), key("acme", &Limit { window: Duration::from_secs(61), ..per_minute }));
    }

    #[test]
    fn calendar_quotas_are_keyed_by_tenant_and_period_alone() {
        let month = Rule { requests: 100_000, kind: LimitKind::Month { reset_day: 15 } };
        assert_eq!(rule_key("acme", &month), "kg:rq:{acme}:month");
        assert_eq!(rule_key("acme", &Rule { requests: 7, kind: LimitKind::Day }), "kg:rq:{acme}:day");
        let minute = Limit { requests: 300, window: Duration::from_secs(60) };
        assert_eq!(rule_key("acme", &Rule::window(minute)), key("acme", &minute));
    }

    #[test]
    fn a_keys_own_limits_are_keyed_by_the_key_on_the_tenants_slot() {
        let minute = Rule::window(Limit { requests: 300, window: Duration::from_secs(60) });
        let month = Rule { requests: 9, kind: LimitKind::Month { reset_day: 1 } };
        assert_eq!(key_rule_key("acme", "key_1", &minute), "kg:rl:{acme}:key:key_1:60s");
        assert_eq!(key_rule_key("acme", "key_1", &month), "kg:rq:{acme}:key:key_1:month");
        assert_eq!(owner_keys("acme", &[minute, month]), ["kg:rl:{acme}:60s", "kg:rq:{acme}:month"]);
        let scoped = owner("acme", Some(KeyScope { key: "key_1", mask: 0b10 }));
        assert_eq!(owner_keys(&scoped, &[minute, month]), ["kg:rl:{acme}:60s", "kg:rq:{acme}:key:key_1:month"]);
    }

    /// A slot with nothing in flight, queued or leased stays while its tenant checks (its
    /// rate is seen), and is swept away once 50 ms quiet, at most once a second.
    #[test]
    fn quiet_idle_slots_are_swept_and_busy_or_recent_ones_kept() {
        let rules: Arc<[Rule]> = vec![Rule::window(Limit { requests: 100, window: Duration::from_secs(60) })].into();
        let slot_checked_at = |at: u64| {
            let mut slot = Slot::new(owner_keys("t", &rules).into());
            slot.checked(at);
            slot
        };
        let mut slots = Slots::default();
        let mut calling = slot_checked_at(0);
        calling.calling = true;
        let tenants: HashMap<Box<str>, Slot> = [
            ("quiet".into(), slot_checked_at(0)),
            ("recent".into(), slot_checked_at(990)),
            ("calling".into(), calling),
        ]
        .into_iter()
        .collect();
        slots.workers.entry(Some(0)).or_default().insert(rules.clone(), tenants);
        let names = |slots: &Slots| -> Vec<String> {
            let mut names: Vec<String> =
                slots.workers.values().flat_map(|p| p.values()).flat_map(|t| t.keys()).map(|k| k.to_string()).collect();
            names.sort();
            names
        };
        slots.sweep(999);
        assert_eq!(names(&slots), ["calling", "quiet", "recent"], "not a second since the last sweep");
        slots.sweep(1_000);
        assert_eq!(names(&slots), ["calling", "recent"]);
        slots
            .workers
            .values_mut()
            .for_each(|p| p.values_mut().for_each(|t| t.values_mut().for_each(|s| s.calling = false)));
        slots.sweep(1_500);
        assert_eq!(names(&slots), ["calling", "recent"], "swept at most once a second");
        slots.sweep(2_000);
        assert!(names(&slots).is_empty() && slots.workers.values().all(HashMap::is_empty));
    }

    fn lease(units: u64, granted: u64, deadline: u64, sub_window: i64) -> Lease {
        let grant =
            Grant { units: granted, sub_window_left: 100_000, sub_window, nonce: 9, free_after: 1_000, reset: 0 };
        let mut lease = Lease::new(&grant, 0, 0).expect("a lease");
        (lease.units, lease.deadline, lease.reset_at) = (units, deadline, 60_000);
        lease
    }

    /// A plan of a burst, a minute and a month: the burst's lease has ended, the minute's
    /// holds plenty, the month's is low. The call carries the burst and the month (their
    /// old leases handed back with it), takes the minute's part from its lease, and gives
    /// the units of a refused cost back to it.
    #[test]
    fn a_call_carries_only_the_limits_whose_lease_needs_renewing() {
        let rules: Arc<[Rule]> = vec![
            Rule::window(Limit { requests: 100_000, window: Duration::from_secs(1) }),
            Rule::window(Limit { requests: 100_000, window: Duration::from_secs(60) }),
            Rule { requests: 1_000_000, kind: LimitKind::Month { reset_day: 1 } },
        ]
        .into();
        let mut slot = Slot::new(owner_keys("acme", &rules).into());
        slot.leases =
            vec![Some(lease(30, 100, 50, 1)), Some(lease(500, 1_000, 3_000, 2)), Some(lease(200, 1_000, 900, 3))];
        slot.checked(60);
        let call = slot.plan_call(&[1, 2], 60, BUSY_CHECKS);
        assert_eq!(call.carried, [0, 2]);
        assert_eq!(call.keys, ["kg:rl:{acme}:1s", "kg:rq:{acme}:month"]);
        assert_eq!(
            call.backs,
            [
                Some(HandBack { units: 30, sub_window: 1, nonce: 9 }),
                Some(HandBack { units: 200, sub_window: 3, nonce: 9 })
            ]
        );
        assert_eq!(call.reserved.len(), 1);
        assert_eq!((call.reserved[0].index, call.reserved[0].units_before), (1, 500));
        assert_eq!(slot.leases[1].as_ref().map(|l| l.units), Some(497), "both costs taken from the minute's lease");
        assert!(slot.leases[0].is_none() && slot.leases[2].is_none(), "ended, handed back with the call");

        // The script admitted the first cost (the month's room, 40, the least among those
        // carried) and refused the second (by the burst).
        let decision = |allowed: bool, index: usize, remaining: u64| Decision {
            allowed,
            limit: 0,
            index,
            remaining,
            reset: Duration::from_millis(1_000),
            retry_after: (!allowed).then_some(Duration::from_millis(20)),
        };
        let (decisions, refunded) =
            merge(&call, &rules, &[1, 2], vec![decision(true, 1, 40), decision(false, 0, 0)], 100);
        assert_eq!((decisions[0].index, decisions[0].remaining), (2, 40), "the month, by its position in the plan");
        assert_eq!((decisions[1].index, decisions[1].allowed), (0, false), "the burst refused");
        assert_eq!(refunded, 2);
        assert_eq!(slot.refund(&call.reserved[0], refunded), None);
        assert_eq!(slot.leases[1].as_ref().map(|l| l.units), Some(499), "the refused cost's units are back");
        // The minute's lease describes the decision when its room is the least.
        let (decisions, _) = merge(&call, &rules, &[1, 2], vec![decision(true, 1, 5_000)], 100);
        assert_eq!((decisions[0].index, decisions[0].remaining, decisions[0].limit), (1, 1_499, 100_000));
        assert_eq!(decisions[0].reset, Duration::from_millis(59_900));
        // A lease gone since: the units go back to Redis.
        slot.leases[1] = None;
        assert_eq!(slot.refund(&call.reserved[0], 2), Some(HandBack { units: 2, sub_window: 2, nonce: 9 }));
    }

    #[test]
    fn the_script_is_sent_by_its_sha1() {
        assert_eq!(SCRIPT.get_hash().len(), 40);
        assert!(LUA.contains("redis.call('TIME')"));
    }
}
