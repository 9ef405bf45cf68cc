//! Leased quota for the shared limiter: how many units of a tenant's quota a replica takes
//! from Redis in one call, and how it spends them. No I/O here: [`super::redis`] runs it
//! against Redis, and the simulation in `benches/lease_sim.rs` against a model of Redis
//! with a fake clock, so that both drive the same code.
//!
//! # Leases
//!
//! A script call that decides a batch of checks may also grant a **lease**: `units` more,
//! counted in Redis at once in every limit of the plan, in the sub-window the call ran in
//! (its counter, like any admission's; a calendar quota's current period), which this
//! replica may then admit locally, without asking Redis, until the first of those
//! sub-windows ends (a quota-only plan's lease lasts at most a second). A lease is at
//! most `1/`[`LEASE_SHARE`] of the least room among the limits, granted and handed back
//! for all of them by one script call. What is left when the sub-window ends (or when a request needs
//! more than is left) is handed back in the next call, or by a timer [`super::redis::HAND_BACK_GRACE`] after the sub-window's
//! end when no call comes: the script takes the unspent units off that sub-window's
//! counter. Every admission from a lease is therefore counted in Redis before it happens,
//! in the sub-window it happens in, which is all the proof of [`crate::ratelimit`] needs:
//! no window-long span ever admits more than the limit, across any number of replicas.
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
//! seen, not guessed ([`Demand`]): checks queued behind a call in flight, or a lease spent
//! before its sub-window ended. Then the size follows the demand: about [`HORIZON_MS`] of
//! this replica's recent rate, doubling while leases run out early, shrinking to what was
//! spent when one ends with units left, back to none after [`IDLE_MS`] without a request
//! (or sooner: the limiter forgets a tenant's demand with its slot, once nothing is in
//! flight, queued or leased), never more than [`MAX_LEASE`]. The script caps every lease at `1/`[`LEASE_SHARE`] of
//! the quota still free, so leases shrink to nothing (one unit per request, today's
//! decision) as the quota nears its end, and a lease parked on one replica can hold back
//! at most that share from the others.
//!
//! # What leases cost the tenant (under-admission)
//!
//! A lease's unspent units are counted in Redis but admit nothing until they are handed
//! back: at most `min(MAX_LEASE, free / LEASE_SHARE)` units per lease, one lease per
//! (replica, worker thread, tenant, limit), for at most the rest of one sub-window (the
//! window / 20: 3 s for a one-minute plan) plus [`super::redis::HAND_BACK_GRACE`] (50 ms) and
//! one call to hand them back. A replica
//! that dies holding a lease loses its units until their sub-window leaves the window
//! (at most one window plus one sub-window); they are never spent twice.

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

/// Units of one tenant's quota, counted in Redis for this replica in every limit of its
/// plan at once, spendable here until `deadline`. Times are milliseconds of the caller's
/// monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Units left.
    pub units: u64,
    /// Units granted.
    pub granted: u64,
    /// When it was granted (the call was sent).
    pub granted_at: u64,
    /// Spendable while `now < deadline`: before the first of its sub-windows (or
    /// periods) ends.
    pub deadline: u64,
    /// Per limit of the plan, in order: where its units are counted.
    pub limits: Vec<LeaseLimit>,
}

/// One limit's side of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimit {
    /// The sub-window (Redis's index; a calendar quota's period) its units are counted in.
    pub sub_window: i64,
    /// The nonce of the hash that counted them: a hand-back names it.
    pub nonce: i64,
    /// The limit's quota free in Redis after the grant (what the headers add to `units`).
    pub free_after: u64,
    /// When the limit's full quota is back, as of the grant.
    pub reset_at: u64,
}

/// A lease's unspent units on their way back to Redis, for every limit it was counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandBack {
    pub units: u64,
    /// Per limit, in order: the sub-window (or period) and the hash's nonce.
    pub limits: Vec<(i64, i64)>,
}

/// What the script answered about the lease of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub units: u64,
    /// How long the first of its sub-windows (or periods) to end still ran when the
    /// script ran, in ms.
    pub sub_window_left: u64,
    /// Per limit, in order.
    pub limits: Vec<GrantLimit>,
}

/// One limit's side of a [`Grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantLimit {
    pub sub_window: i64,
    pub nonce: i64,
    pub free_after: u64,
    /// Until the full quota is back, as of the script, in ms.
    pub reset: u64,
}

impl Grant {
    /// Its units as a hand-back (a grant that arrived too late to be used).
    pub fn hand_back(&self) -> HandBack {
        HandBack { units: self.units, limits: self.limits.iter().map(|l| (l.sub_window, l.nonce)).collect() }
    }
}

impl Lease {
    /// The lease of `grant`, for a call sent at `sent` (received at `received`), or
    /// `None` if it carries no unit or ends before it could be used.
    pub fn new(grant: &Grant, sent: u64, received: u64) -> Option<Lease> {
        // Counted from the sending (the script ran later) and shortened for the script's
        // whole milliseconds and for clock rates: the lease ends before its sub-window.
        let left = grant.sub_window_left.saturating_sub(1 + grant.sub_window_left / 256);
        let deadline = sent.saturating_add(left);
        (grant.units > 0 && deadline > received && !grant.limits.is_empty()).then(|| Lease {
            units: grant.units,
            granted: grant.units,
            granted_at: sent,
            deadline,
            limits: grant
                .limits
                .iter()
                .map(|l| LeaseLimit {
                    sub_window: l.sub_window,
                    nonce: l.nonce,
                    free_after: l.free_after,
                    // Counted from the receiving: a client is never told the quota is back early.
                    reset_at: received.saturating_add(l.reset),
                })
                .collect(),
        })
    }

    /// Admits `cost` from the lease at `now` if it is still spendable and holds enough.
    /// `rules` are the plan's limits, in the lease's order; the decision describes the
    /// one with the least room (of equals, the one whose quota comes back last), as the
    /// script's do.
    pub fn spend(&mut self, cost: u64, rules: &[Rule], now: u64) -> Option<Decision> {
        if now >= self.deadline || self.units < cost {
            return None;
        }
        self.units -= cost;
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, l) in self.limits.iter().enumerate() {
            let remaining = l.free_after.saturating_add(self.units);
            let reset = l.reset_at.saturating_sub(now);
            let better = match best {
                None => true,
                Some((_, r, t)) => remaining < r || (remaining == r && reset > t),
            };
            if better {
                best = Some((i, remaining, reset));
            }
        }
        let (index, remaining, reset) = best?;
        Some(Decision {
            allowed: true,
            limit: rules.get(index).map_or(0, |rule| rule.requests),
            index,
            remaining,
            reset: Duration::from_millis(reset),
            retry_after: None,
        })
    }

    /// Whether the lease can no longer be spent at `now` (its sub-window ended).
    pub fn expired(&self, now: u64) -> bool {
        now >= self.deadline
    }

    /// Its unspent units, to hand back (`None` when all were spent).
    pub fn hand_back(&self) -> Option<HandBack> {
        (self.units > 0).then(|| HandBack {
            units: self.units,
            limits: self.limits.iter().map(|l| (l.sub_window, l.nonce)).collect(),
        })
    }
}

/// This replica's recent demand for one tenant's quota: what size of lease to ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// The lease size asked for while busy; 0: not busy (no lease).
    size: u64,
    /// When the last check arrived.
    last_check: u64,
}

impl Demand {
    /// A check arrived at `now`.
    pub fn checked(&mut self, now: u64) {
        if now.saturating_sub(self.last_check) > IDLE_MS {
            self.size = 0;
        }
        self.last_check = now;
    }

    /// The units to ask for beyond the costs of a call deciding `batch` checks (the
    /// script grants at most `1/LEASE_SHARE` of what is free). Checks queued behind a
    /// call are the sign of a busy tenant.
    pub fn want(&mut self, batch: usize) -> u64 {
        if batch > 1 {
            self.size = self.size.max(batch as u64);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Limit, LimitKind};

    fn grant(units: u64, left: u64) -> Grant {
        let limit = GrantLimit { sub_window: 7, nonce: 42, free_after: 500, reset: 60_000 };
        Grant { units, sub_window_left: left, limits: vec![limit] }
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
    fn a_lease_of_several_limits_reports_the_least_room_and_hands_back_to_each() {
        let plan = [
            Rule::window(Limit { requests: 10, window: Duration::from_secs(1) }),
            Rule { requests: 100_000, kind: LimitKind::Month { reset_day: 1 } },
        ];
        let grant = Grant {
            units: 4,
            sub_window_left: 40,
            limits: vec![
                GrantLimit { sub_window: 9, nonce: 1, free_after: 3, reset: 1_000 },
                GrantLimit { sub_window: 20_820, nonce: 2, free_after: 50, reset: 86_400_000 },
            ],
        };
        let mut lease = Lease::new(&grant, 0, 1).expect("a lease");
        let d = lease.spend(1, &plan, 2).expect("admitted");
        assert_eq!((d.index, d.limit, d.remaining), (0, 10, 6), "the burst: 3 free + 3 leased");
        assert_eq!(lease.hand_back(), Some(HandBack { units: 3, limits: vec![(9, 1), (20_820, 2)] }));
        assert_eq!(grant.hand_back().limits, vec![(9, 1), (20_820, 2)]);
    }

    #[test]
    fn demand_grows_while_leases_run_out_and_shrinks_to_none_when_idle() {
        let mut demand = Demand::default();
        demand.checked(0);
        assert_eq!(demand.want(1), 0, "one check at a time: no lease");
        assert_eq!(demand.want(4), 4, "checks queued: busy");
        let lease = |granted: u64, units: u64, at: u64| Lease {
            units,
            granted,
            granted_at: at,
            deadline: at + 3_000,
            limits: vec![LeaseLimit { sub_window: 0, nonce: 1, free_after: 0, reset_at: 0 }],
        };
        // Spent out fast: the size doubles at least, or follows the rate.
        demand.ended(&lease(4, 0, 0), 10);
        assert_eq!(demand.want(1), 20, "4 in 10 ms is 20 per 50 ms");
        demand.ended(&lease(20, 0, 10), 1_000);
        assert_eq!(demand.want(1), 40, "doubles");
        for _ in 0..20 {
            demand.ended(&lease(40, 0, 0), 1);
        }
        assert_eq!(demand.want(1), MAX_LEASE);
        // Ended with units left: shrinks to the rate it was spent at.
        demand.ended(&lease(1_024, 1_000, 0), 100);
        assert_eq!(demand.want(1), 12);
        demand.checked(900);
        demand.checked(1_901);
        assert_eq!(demand.want(1), 0);
    }
}
