//! Leased quota for the shared limiter: how many units of a tenant's quota a replica takes
//! from Redis in one call, and how it spends them. No I/O here: [`super::redis`] runs it
//! against Redis, and the simulation in `benches/lease_sim.rs` against a model of Redis
//! with a fake clock, so that both drive the same code.
//!
//! # Leases
//!
//! A script call that decides a batch of checks may also grant, for each limit of the plan
//! it carries, a **lease**: `units` more, counted in Redis at once in that limit, in the
//! sub-window the call ran in (its counter, like any admission's; a calendar quota's
//! current period), which this replica may then spend locally, without asking Redis, until
//! that sub-window ends (a quota's lease lasts at most a second). Each limit of a plan has
//! a lease of its own, with its own size and deadline: a request is admitted from the
//! leases only if every one of them still runs and holds its cost ([`spend`]), and then
//! takes it from each. A lease is at most `1/`[`LEASE_SHARE`] of its limit's free quota.
//!
//! A call goes to Redis when some limit's lease cannot serve a check, and carries only the
//! limits whose lease cannot serve it (none, spent, ended) or is [`Lease::low`] (a quarter
//! of its units or time left: renewed while a call goes anyway, to save it a call of its
//! own); the other limits' parts of the call's decisions are taken from their leases when
//! the call is sent (while they still run), and given back to them for a refused cost. With
//! a plan of a 1 s burst, a minute and a month, the burst's lease (50 ms sub-windows) is
//! renewed by calls on its one key, and the minute's and month's join a call only when
//! they run low, instead of every call touching all three keys.
//!
//! What is left of a lease when its sub-window ends (or when a request needs more than is
//! left, or it is renewed early) is handed back in the next call carrying its limit, or by
//! a timer [`super::redis::HAND_BACK_GRACE`] after the sub-window's end when no call comes:
//! the script takes the unspent units off that sub-window's counter. Every admission from a
//! lease is therefore counted in Redis, in every limit, before it happens, in the sub-window
//! of that limit it happens in, which is all the proof of [`crate::ratelimit`] needs: no
//! window-long span ever admits more than the limit, across any number of replicas.
//! Handing back only lowers a counter to what was really admitted in it.
//!
//! The replica cannot read Redis's clock, so it ends a lease early rather than late: the
//! script answers how long its sub-window still runs *at the moment the script ran*, and
//! the replica counts that from the moment it *sent* the call (earlier), minus 1 ms for
//! the script's whole milliseconds and 1/256 for clocks that tick at slightly different
//! rates ([`Lease::new`]).
//!
//! # Sizes
//!
//! A tenant that is not busy on this replica gets no lease: every check is its own script
//! call (or shares one with the checks queued behind it), exactly as without leases, so
//! sequential requests spread over replicas see `remaining` fall by one each. "Busy" is
//! seen, not guessed ([`Demand`]): checks queued behind a call in flight, a lease spent
//! before its sub-window ended, or at least [`BUSY_CHECKS`] checks within one
//! [`HORIZON_MS`] on this worker (a tenant whose requests come one at a time, back to
//! back: at 640 a second or more a round trip each costs Redis as much as a queue does,
//! and a lease of 50 ms of the tenant's own rate hides no more of its `remaining` than 50
//! ms of its traffic moves it anyway). Then the size follows the demand: about
//! [`HORIZON_MS`] of this replica's recent rate, doubling while leases run out early,
//! shrinking to what was spent when one ends with units left, back to none after
//! [`IDLE_MS`] without a request (or sooner: the limiter forgets a tenant's demand with
//! its slot, once nothing is in flight, queued or leased and no check came for a
//! [`HORIZON_MS`]), never more than [`MAX_LEASE`]; each limit's demand is its own (a lease
//! renewed early, nearly spent, counts as spent out: [`Demand::renewed`]).
//! The script caps every lease at `1/`[`LEASE_SHARE`] of its limit's quota still free, so
//! leases shrink to nothing (one unit per request, today's decision) as the quota nears
//! its end, and a lease parked on one replica can hold back at most that share from the
//! others.
//!
//! # What leases cost the tenant (under-admission)
//!
//! A lease's unspent units are counted in Redis but admit nothing until they are handed
//! back: at most `min(MAX_LEASE, free / LEASE_SHARE)` units of its limit per lease, one
//! lease per (replica, worker thread, tenant, limit), for at most the rest of one of that
//! limit's sub-windows (the window / 20: 3 s for a one-minute plan; a second for a quota)
//! plus [`super::redis::HAND_BACK_GRACE`] (50 ms) and one call to hand them back (a lease
//! that arrives already ended waits likewise). A replica that dies holding a lease loses
//! its units until their sub-window leaves the window (at most one window plus one
//! sub-window); they are never spent twice.

use std::time::Duration;

use super::decision::Decision;
use crate::policy::Rule;

/// The most units one lease carries.
pub const MAX_LEASE: u64 = 1024;
/// A lease takes at most `1/LEASE_SHARE` of the quota still free when it is granted.
pub const LEASE_SHARE: u64 = 8;
/// A busy tenant's lease aims at this much of its recent rate on this replica, in ms.
pub const HORIZON_MS: u64 = 50;
/// A tenant with no request on this replica for this long is no longer busy here.
pub const IDLE_MS: u64 = 1_000;
/// A tenant making this many checks within [`HORIZON_MS`] on one worker is busy there,
/// queue or no queue (640 checks a second).
pub const BUSY_CHECKS: u64 = 32;

/// Units of one limit of a tenant's plan, counted in Redis for this replica in that
/// limit's current sub-window (or period), spendable here until `deadline`. Times are
/// milliseconds of the caller's monotonic clock. A plan of several limits holds one per
/// limit, each with its own size and deadline: a request is admitted from them when every
/// one of them holds its cost (see [`spend`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Units left.
    pub units: u64,
    /// Units granted.
    pub granted: u64,
    /// When it was granted (the call was sent).
    pub granted_at: u64,
    /// Spendable while `now < deadline`: before its sub-window (or period) ends.
    pub deadline: u64,
    /// The sub-window (Redis's index; a calendar quota's period) its units are counted in.
    pub sub_window: i64,
    /// The nonce of the hash that counted them: a hand-back names it.
    pub nonce: i64,
    /// The limit's quota free in Redis after the grant (what the headers add to `units`).
    pub free_after: u64,
    /// When the limit's full quota is back, as of the grant.
    pub reset_at: u64,
}

/// A lease's unspent units on their way back to Redis, to the limit it was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandBack {
    pub units: u64,
    /// The sub-window (or period) they were counted in.
    pub sub_window: i64,
    /// The nonce of the hash that counted them.
    pub nonce: i64,
}

/// What the script answered about the lease of one limit in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub units: u64,
    /// How long its sub-window (at most a second, for a calendar quota) still ran when
    /// the script ran, in ms.
    pub sub_window_left: u64,
    pub sub_window: i64,
    pub nonce: i64,
    pub free_after: u64,
    /// Until the full quota is back, as of the script, in ms.
    pub reset: u64,
}

impl Grant {
    /// Its units as a hand-back (a grant that arrived too late to be used).
    pub fn hand_back(&self) -> HandBack {
        HandBack { units: self.units, sub_window: self.sub_window, nonce: self.nonce }
    }
}

/// One limit's part of a decision: its position in the plan, its `remaining` and its
/// reset (ms).
pub type Part = (usize, u64, u64);

/// Of the parts of an admitted request, the one its decision describes: the least room,
/// of equals the one whose quota comes back last, then the first (as the script chooses).
pub fn least_room(parts: impl IntoIterator<Item = Part>) -> Option<Part> {
    parts.into_iter().min_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)))
}

/// The decision of a request admitted with `best` ([`least_room`]) describing it.
pub fn admitted(best: Part, rules: &[Rule]) -> Decision {
    let (index, remaining, reset) = best;
    Decision {
        allowed: true,
        limit: rules.get(index).map_or(0, |rule| rule.requests),
        index,
        remaining,
        reset: Duration::from_millis(reset),
        retry_after: None,
    }
}

/// Admits `cost` at `now` from `leases` (one per limit of `rules`, in order) if every one
/// of them is still spendable and holds it: takes it from each, and describes the limit
/// with the least room, as the script does. Else takes nothing.
pub fn spend(leases: &mut [Option<Lease>], cost: u64, rules: &[Rule], now: u64) -> Option<Decision> {
    if leases.is_empty() || !leases.iter().all(|l| l.as_ref().is_some_and(|l| l.holds(cost, now))) {
        return None;
    }
    let parts = leases.iter_mut().enumerate().filter_map(|(i, l)| {
        let l = l.as_mut()?;
        l.units -= cost;
        Some(l.part(i, now))
    });
    let parts: Vec<Part> = parts.collect();
    least_room(parts).map(|best| admitted(best, rules))
}

impl Lease {
    /// The lease of `grant`, for a call sent at `sent` (received at `received`), or
    /// `None` if it carries no unit or ends before it could be used.
    pub fn new(grant: &Grant, sent: u64, received: u64) -> Option<Lease> {
        // Counted from the sending (the script ran later) and shortened for the script's
        // whole milliseconds and for clock rates: the lease ends before its sub-window.
        let left = grant.sub_window_left.saturating_sub(1 + grant.sub_window_left / 256);
        let deadline = sent.saturating_add(left);
        (grant.units > 0 && deadline > received).then_some(Lease {
            units: grant.units,
            granted: grant.units,
            granted_at: sent,
            deadline,
            sub_window: grant.sub_window,
            nonce: grant.nonce,
            free_after: grant.free_after,
            // Counted from the receiving: a client is never told the quota is back early.
            reset_at: received.saturating_add(grant.reset),
        })
    }

    /// Whether it can still serve `cost` at `now`.
    pub fn holds(&self, cost: u64, now: u64) -> bool {
        now < self.deadline && self.units >= cost
    }

    /// Its limit's part of a decision at `now` (the limit at `index` of the plan): what
    /// Redis had free after the grant plus what this lease still holds.
    pub fn part(&self, index: usize, now: u64) -> Part {
        (index, self.free_after.saturating_add(self.units), self.reset_at.saturating_sub(now))
    }

    /// Admits `cost` from the lease at `now` if it is still spendable and holds enough:
    /// [`spend`] for a plan of one limit.
    pub fn spend(&mut self, cost: u64, rules: &[Rule], now: u64) -> Option<Decision> {
        if !self.holds(cost, now) {
            return None;
        }
        self.units -= cost;
        Some(admitted(self.part(0, now), rules))
    }

    /// Whether the lease can no longer be spent at `now` (its sub-window ended).
    pub fn expired(&self, now: u64) -> bool {
        now >= self.deadline
    }

    /// Whether the lease is worth renewing in a call that goes to Redis anyway (for
    /// another limit of the plan) at `now`: it holds less than a quarter of its units or
    /// of its time. Renewing it then saves the call of its own it would soon need.
    pub fn low(&self, now: u64) -> bool {
        self.units.saturating_mul(4) < self.granted
            || self.deadline.saturating_sub(now).saturating_mul(4) < self.deadline.saturating_sub(self.granted_at)
    }

    /// Its unspent units, to hand back (`None` when all were spent).
    pub fn hand_back(&self) -> Option<HandBack> {
        (self.units > 0).then_some(HandBack { units: self.units, sub_window: self.sub_window, nonce: self.nonce })
    }
}

/// This replica's recent demand for one tenant's quota: what size of lease to ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// The lease size asked for while busy; 0: not busy (no lease).
    size: u64,
    /// When the last check arrived.
    last_check: u64,
    /// Checks since `counted_from` (the horizon being counted).
    counted: u64,
    counted_from: u64,
    /// Checks per [`HORIZON_MS`] in the last horizon counted to its end.
    rate: u64,
}

impl Demand {
    /// A check arrived at `now`.
    pub fn checked(&mut self, now: u64) {
        if now.saturating_sub(self.last_check) > IDLE_MS {
            self.size = 0;
        }
        let elapsed = now.saturating_sub(self.counted_from);
        if elapsed >= HORIZON_MS {
            // Per horizon, over however long the last count ran (longer after a pause).
            self.rate = self.counted.saturating_mul(HORIZON_MS) / elapsed;
            (self.counted, self.counted_from) = (0, now);
        }
        self.counted += 1;
        self.last_check = now;
    }

    /// Whether no check came within the last [`HORIZON_MS`] before `now`: a slot with
    /// nothing in flight, queued or leased can then go, and its demand with it.
    pub fn quiet(&self, now: u64) -> bool {
        now.saturating_sub(self.last_check) >= HORIZON_MS
    }

    /// The units to ask for beyond the costs of a call deciding `batch` checks (the
    /// script grants at most `1/LEASE_SHARE` of what is free). Checks queued behind a
    /// call are the sign of a busy tenant, and so is a rate of `busy_checks` or more per
    /// [`HORIZON_MS`] (0: never on its own): the lease then holds one horizon of it.
    pub fn want(&mut self, batch: usize, busy_checks: u64) -> u64 {
        if batch > 1 {
            self.size = self.size.max(batch as u64);
        }
        if self.size == 0 && busy_checks > 0 && self.rate >= busy_checks {
            self.size = self.rate;
        }
        self.size.min(MAX_LEASE)
    }

    /// `lease` ended at `now`: spent out (it ran out before its sub-window did) or with
    /// units left. The next size follows the rate it was spent at.
    pub fn ended(&mut self, lease: &Lease, now: u64) {
        let spent = lease.granted - lease.units;
        let elapsed = now.saturating_sub(lease.granted_at).max(1);
        let rate_size = spent.saturating_mul(HORIZON_MS).div_ceil(elapsed);
        self.size = if lease.units == 0 {
            self.size.saturating_mul(2).max(rate_size).clamp(1, MAX_LEASE)
        } else {
            self.size.min(rate_size)
        };
    }

    /// `lease` was renewed at `now` before it ran out or ended, because it was
    /// [`Lease::low`] (or could not serve a batch): nearly spent, it is taken as spent out
    /// (the size doubles, or follows the rate); low on time only, as ended.
    pub fn renewed(&mut self, lease: &Lease, now: u64) {
        if lease.units.saturating_mul(4) >= lease.granted {
            return self.ended(lease, now);
        }
        let spent = lease.granted - lease.units;
        let elapsed = now.saturating_sub(lease.granted_at).max(1);
        let rate_size = spent.saturating_mul(HORIZON_MS).div_ceil(elapsed);
        self.size = self.size.saturating_mul(2).max(rate_size).clamp(1, MAX_LEASE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Limit, LimitKind};

    fn grant(units: u64, left: u64) -> Grant {
        Grant { units, sub_window_left: left, sub_window: 7, nonce: 42, free_after: 500, reset: 60_000 }
    }

    #[test]
    fn a_lease_ends_before_its_sub_window_and_spends_only_what_it_holds() {
        let plan = [Rule::window(Limit { requests: 1_000, window: Duration::from_secs(60) })];
        // Sent at 100, the script saw 2,560 ms left: the lease ends at 100 + 2,560 - 1 - 10.
        let mut lease = Lease::new(&grant(3, 2_560), 100, 105).expect("a lease");
        assert_eq!(lease.deadline, 2_649);
        let d = lease.spend(2, &plan, 200).expect("admitted");
        assert_eq!((d.allowed, d.remaining, d.limit, d.index), (true, 501, 1_000, 0));
        assert_eq!(d.reset, Duration::from_millis(105 + 60_000 - 200));
        assert_eq!(lease.spend(2, &plan, 201), None, "one unit left");
        assert_eq!(lease.spend(1, &plan, 2_649), None, "its sub-window may have ended");
        let d = lease.spend(1, &plan, 2_648).expect("admitted");
        assert_eq!(d.remaining, 500);
        assert_eq!(lease.hand_back(), None);
        assert!(Lease::new(&grant(0, 2_560), 100, 105).is_none(), "no units");
        assert!(Lease::new(&grant(5, 10), 100, 120).is_none(), "over before it arrived");
    }

    #[test]
    fn leases_of_several_limits_admit_only_together_report_the_least_room_and_hand_back_each() {
        let plan = [
            Rule::window(Limit { requests: 10, window: Duration::from_secs(1) }),
            Rule { requests: 100_000, kind: LimitKind::Month { reset_day: 1 } },
        ];
        let burst = Grant { units: 4, sub_window_left: 40, sub_window: 9, nonce: 1, free_after: 3, reset: 1_000 };
        let month =
            Grant { units: 2, sub_window_left: 1_000, sub_window: 20_820, nonce: 2, free_after: 50, reset: 86_400_000 };
        let mut leases = [Lease::new(&burst, 0, 1), Lease::new(&month, 0, 1)];
        assert_eq!((leases[0].as_ref().unwrap().deadline, leases[1].as_ref().unwrap().deadline), (39, 996));
        let d = spend(&mut leases, 1, &plan, 2).expect("admitted");
        assert_eq!((d.index, d.limit, d.remaining), (0, 10, 6), "the burst: 3 free + 3 leased");
        // The month's lease holds 1: a cost of 2 is admitted by neither, taken from neither.
        assert_eq!(spend(&mut leases, 2, &plan, 2), None);
        assert_eq!((leases[0].as_ref().unwrap().units, leases[1].as_ref().unwrap().units), (3, 1));
        // Past the burst's deadline, the month's lease alone admits nothing.
        assert_eq!(spend(&mut leases, 1, &plan, 39), None);
        let d = spend(&mut leases, 1, &plan, 38).expect("admitted");
        assert_eq!((d.index, d.remaining), (0, 5));
        assert_eq!(leases[0].as_ref().unwrap().hand_back(), Some(HandBack { units: 2, sub_window: 9, nonce: 1 }));
        assert_eq!(leases[1].as_ref().unwrap().hand_back(), None, "the month's lease is spent");
        assert_eq!(month.hand_back(), HandBack { units: 2, sub_window: 20_820, nonce: 2 });
        // Of equal room, the limit whose quota comes back last, then the first.
        assert_eq!(least_room([(0, 5, 100), (1, 5, 200), (2, 5, 200)]), Some((1, 5, 200)));
        assert_eq!(least_room([(0, 4, 100), (1, 5, 200)]), Some((0, 4, 100)));
    }

    #[test]
    fn a_lease_is_low_with_a_quarter_of_its_units_or_time_left() {
        let mut lease = Lease::new(&grant(100, 1_000), 0, 1).expect("a lease");
        let deadline = lease.deadline;
        assert!(!lease.low(0));
        lease.units = 25;
        assert!(!lease.low(0), "a quarter left");
        lease.units = 24;
        assert!(lease.low(0));
        lease.units = 100;
        assert!(!lease.low(deadline - deadline / 4));
        assert!(lease.low(deadline - deadline / 4 + 1));
    }

    #[test]
    fn a_tenant_checking_back_to_back_at_the_busy_rate_is_busy_without_a_queue() {
        let mut demand = Demand::default();
        // 31 checks in the first horizon (0 - 49 ms): below the busy rate.
        for t in 0..31 {
            demand.checked(t);
        }
        demand.checked(50);
        assert_eq!(demand.want(1, BUSY_CHECKS), 0, "31 per 50 ms is not busy");
        // 40 in the next: busy, and the lease holds one horizon of that rate.
        for t in 51..90 {
            demand.checked(t);
        }
        demand.checked(100);
        assert_eq!(demand.want(1, BUSY_CHECKS), 40);
        assert_eq!(demand.want(1, 0), 40, "once busy, the leases' own use sizes the next ones");
        // Fast once, then a pause: the count is spread over the whole pause.
        let mut paused = Demand::default();
        for t in 0..40 {
            paused.checked(t);
        }
        paused.checked(5_000);
        assert_eq!(paused.want(1, BUSY_CHECKS), 0);
        assert!(!paused.quiet(5_049) && paused.quiet(5_050), "quiet a horizon after its last check");
        // A busy rate of 0 never makes a tenant busy on its own.
        let mut off = Demand::default();
        for t in 0..100 {
            off.checked(t / 2);
        }
        off.checked(50);
        assert_eq!(off.want(1, 0), 0);
        assert_eq!(off.want(1, BUSY_CHECKS), 100);
    }

    #[test]
    fn demand_grows_while_leases_run_out_and_shrinks_to_none_when_idle() {
        let mut demand = Demand::default();
        demand.checked(0);
        assert_eq!(demand.want(1, BUSY_CHECKS), 0, "one check at a time: no lease");
        assert_eq!(demand.want(4, BUSY_CHECKS), 4, "checks queued: busy");
        let lease = |granted: u64, units: u64, at: u64| Lease {
            units,
            granted,
            granted_at: at,
            deadline: at + 3_000,
            sub_window: 0,
            nonce: 1,
            free_after: 0,
            reset_at: 0,
        };
        // Spent out fast: the size doubles at least, or follows the rate.
        demand.ended(&lease(4, 0, 0), 10);
        assert_eq!(demand.want(1, BUSY_CHECKS), 20, "4 in 10 ms is 20 per 50 ms");
        demand.ended(&lease(20, 0, 10), 1_000);
        assert_eq!(demand.want(1, BUSY_CHECKS), 40, "doubles");
        for _ in 0..20 {
            demand.ended(&lease(40, 0, 0), 1);
        }
        assert_eq!(demand.want(1, BUSY_CHECKS), MAX_LEASE);
        // Ended with units left: shrinks to the rate it was spent at.
        demand.ended(&lease(1_024, 1_000, 0), 100);
        assert_eq!(demand.want(1, BUSY_CHECKS), 12);
        // Renewed early, nearly spent: as spent out; with units left (its time ran low), as
        // at its end.
        demand.renewed(&lease(100, 10, 0), 10);
        assert_eq!(demand.want(1, BUSY_CHECKS), 450, "90 in 10 ms is 450 per 50 ms");
        demand.renewed(&lease(100, 20, 0), 1_000);
        assert_eq!(demand.want(1, BUSY_CHECKS), 900, "doubles");
        demand.renewed(&lease(100, 80, 0), 100);
        assert_eq!(demand.want(1, BUSY_CHECKS), 10, "20 in 100 ms, with units left");
        demand.checked(900);
        demand.checked(1_901);
        assert_eq!(demand.want(1, BUSY_CHECKS), 0);
    }
}
