//! Leased quota for the shared limiter: how many units of a tenant's quota a replica takes
//! from Redis in one call, and how it spends them. No I/O here: [`super::redis`] runs it
//! against Redis, and the simulation in `benches/lease_sim.rs` against a model of Redis
//! with a fake clock, so that both drive the same code.
//!
//! # Leases
//!
//! A script call that decides a batch of checks may also grant a **lease**: `units` more,
//! counted in Redis at once, in the sub-window the call ran in (its counter, like any
//! admission's), which this replica may then admit locally, without asking Redis, until
//! that sub-window ends. What is left when the sub-window ends (or when a request needs
//! more than is left) is handed back in the next call, or by a timer at the sub-window's
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
//! window / 20: 3 s for a one-minute plan) plus one call to hand them back. A replica
//! that dies holding a lease loses its units until their sub-window leaves the window
//! (at most one window plus one sub-window); they are never spent twice.

use std::time::Duration;

use super::decision::Decision;
use crate::policy::Limit;

/// The most units one lease carries.
pub const MAX_LEASE: u64 = 1024;
/// A lease takes at most `1/LEASE_SHARE` of the quota still free when it is granted.
pub const LEASE_SHARE: u64 = 8;
/// A busy tenant's lease aims at this much of its recent rate on this replica, in ms.
pub const HORIZON_MS: u64 = 50;
/// A tenant with no request on this replica for this long is no longer busy here.
pub const IDLE_MS: u64 = 1_000;

/// Units of one tenant's quota, counted in Redis for this replica, spendable here until
/// `deadline`. Times are milliseconds of the caller's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Units left.
    pub units: u64,
    /// Units granted.
    pub granted: u64,
    /// When it was granted (the call was sent).
    pub granted_at: u64,
    /// Spendable while `now < deadline`.
    pub deadline: u64,
    /// The sub-window (Redis's index) its units are counted in.
    pub sub_window: i64,
    /// The nonce of the hash that counted them: a hand-back names it.
    pub nonce: i64,
    /// The quota free in Redis after the grant (what the headers add to `units`).
    pub free_after: u64,
    /// When the full quota is back, as of the grant.
    pub reset_at: u64,
}

/// A lease's unspent units on their way back to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandBack {
    pub sub_window: i64,
    pub units: u64,
    pub nonce: i64,
}

/// What the script answered about the lease of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub units: u64,
    /// How long the sub-window still ran when the script ran, in ms.
    pub sub_window_left: u64,
    pub sub_window: i64,
    pub nonce: i64,
    pub free_after: u64,
    /// Until the full quota is back, as of the script, in ms.
    pub reset: u64,
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

    /// Admits `cost` from the lease at `now` if it is still spendable and holds enough.
    pub fn spend(&mut self, cost: u64, limit: &Limit, now: u64) -> Option<Decision> {
        if now >= self.deadline || self.units < cost {
            return None;
        }
        self.units -= cost;
        Some(Decision {
            allowed: true,
            limit: limit.requests,
            index: 0,
            remaining: self.free_after.saturating_add(self.units),
            reset: Duration::from_millis(self.reset_at.saturating_sub(now)),
            retry_after: None,
        })
    }

    /// Whether the lease can no longer be spent at `now` (its sub-window ended).
    pub fn expired(&self, now: u64) -> bool {
        now >= self.deadline
    }

    /// Its unspent units, to hand back (`None` when all were spent).
    pub fn hand_back(&self) -> Option<HandBack> {
        (self.units > 0).then_some(HandBack { sub_window: self.sub_window, units: self.units, nonce: self.nonce })
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

    fn grant(units: u64, left: u64) -> Grant {
        Grant { units, sub_window_left: left, sub_window: 7, nonce: 42, free_after: 500, reset: 60_000 }
    }

    #[test]
    fn a_lease_ends_before_its_sub_window_and_spends_only_what_it_holds() {
        let plan = Limit { requests: 1_000, window: Duration::from_secs(60) };
        // Sent at 100, the script saw 2,560 ms left: the lease ends at 100 + 2,560 - 1 - 10.
        let mut lease = Lease::new(&grant(3, 2_560), 100, 105).expect("a lease");
        assert_eq!(lease.deadline, 2_649);
        let d = lease.spend(2, &plan, 200).expect("admitted");
        assert_eq!((d.allowed, d.remaining, d.limit), (true, 501, 1_000));
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
            sub_window: 0,
            nonce: 1,
            free_after: 0,
            reset_at: 0,
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
