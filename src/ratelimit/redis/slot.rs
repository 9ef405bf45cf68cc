//! One (worker, plan's limits, tenant) of the shared limiter (the parent module): the call in
//! flight, the checks queued behind it, and per limit of the plan its lease and the demand
//! that sizes the next one; how a call is planned (which limits it carries, what it takes
//! from the others' leases) and how its answers are merged with those leases.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::policy::Rule;
use crate::ratelimit::decision::Decision;
use crate::ratelimit::lease::{self, Demand, HandBack, Lease};
use crate::redis_client::RedisCallError;

/// One (worker, plan's limits, tenant): the call in flight, the checks queued behind it,
/// and per limit of the plan its lease and the demand that sizes the next one.
pub(super) struct Slot {
    /// The tenant's Redis keys, one per limit.
    pub(super) keys: Arc<[String]>,
    /// A call is in flight (or about to be sent); checks that cannot be served from the
    /// leases queue behind it.
    pub(super) calling: bool,
    pub(super) queue: Vec<Waiter>,
    /// Per limit, in the plan's order: its lease.
    pub(super) leases: Vec<Option<Lease>>,
    /// Per limit: tells a lease's end timer whether the lease it watches is still this one.
    pub(super) generations: Vec<u64>,
    /// Per limit: the unspent units of a lease that ran to its end, for the next call that
    /// carries the limit (or, after the hand-back grace of the parent module, a call of their own), with the
    /// generation of the lease they came from.
    pub(super) pending: Vec<Option<(HandBack, u64)>>,
    /// Per limit: the demand that sizes its next lease.
    pub(super) demand: Vec<Demand>,
}

/// What one call carries to Redis, and what it took from the leases of the limits it
/// does not carry.
pub(super) struct CallPlan {
    /// The positions in the plan of the limits the call carries, in order.
    pub(super) carried: Vec<usize>,
    /// Their Redis keys.
    pub(super) keys: Vec<String>,
    /// Per carried limit: the lease it asks for.
    pub(super) wants: Vec<u64>,
    /// Per carried limit: the unspent units of its last lease it hands back.
    pub(super) backs: Vec<Option<HandBack>>,
    /// The limits served from their leases for every cost of the call.
    pub(super) reserved: Vec<Reserved>,
}

/// The units a call took from the lease of a limit it does not carry: the sum of its
/// costs, taken when the call is sent (the lease still spendable then), so that the
/// limit's part of each decision is the lease's, as it would be without a call; those of
/// refused costs go back to the lease (or to Redis).
#[derive(Clone, Copy)]
pub(super) struct Reserved {
    pub(super) index: usize,
    /// The lease's units before the call took its costs.
    pub(super) units_before: u64,
    pub(super) sub_window: i64,
    pub(super) nonce: i64,
    pub(super) free_after: u64,
    pub(super) reset_at: u64,
}

impl Slot {
    pub(super) fn new(keys: Arc<[String]>) -> Slot {
        let n = keys.len();
        Slot {
            keys,
            calling: false,
            queue: Vec::new(),
            leases: vec![None; n],
            generations: vec![0; n],
            pending: vec![None; n],
            demand: vec![Demand::default(); n],
        }
    }

    /// Nothing in flight, queued or leased, and no check for a horizon
    /// ([`Demand::quiet`]): the slot can go. Its demand goes with it (a tenant still busy
    /// here shows it again, by the next queue or its rate), so that a slot outlives its
    /// last call, lease and check by at most a horizon (and the parent module's sweep).
    pub(super) fn is_idle(&self, now: u64) -> bool {
        !self.calling
            && self.queue.is_empty()
            && self.leases.iter().all(Option::is_none)
            && self.pending.iter().all(Option::is_none)
            && self.demand.iter().all(|demand| demand.quiet(now))
    }

    pub(super) fn pending_units(&self) -> u64 {
        self.pending.iter().flatten().map(|(back, _)| back.units).sum()
    }

    pub(super) fn leased_units(&self) -> u64 {
        self.leases.iter().flatten().map(|lease| lease.units).sum::<u64>() + self.pending_units()
    }

    /// A check arrived at `now`.
    pub(super) fn checked(&mut self, now: u64) {
        for demand in &mut self.demand {
            demand.checked(now);
        }
    }

    /// Ends limit `i`'s lease at `now`, and returns what is left of it to hand back.
    pub(super) fn end_lease(&mut self, i: usize, now: u64) -> Option<HandBack> {
        let lease = self.leases[i].take()?;
        if lease.expired(now) {
            self.demand[i].ended(&lease, now);
        } else {
            self.demand[i].renewed(&lease, now);
        }
        lease.hand_back()
    }

    /// What the next call carrying limit `i` hands back: the lease it ends, else the units
    /// a lease that ran to its end left pending (one hand-back per limit and call; the
    /// other waits for the next).
    pub(super) fn hand_back_with_call(&mut self, i: usize, now: u64) -> Option<HandBack> {
        self.end_lease(i, now).or_else(|| self.pending[i].take().map(|(back, _)| back))
    }

    /// Plans a call deciding `costs` at `now`: it carries the limits whose lease cannot
    /// serve them all (none, spent, ended) and those whose lease is [`Lease::low`] (renewed
    /// while a call goes anyway), asking each for a lease and handing its old one back;
    /// the others serve every cost from their leases (taken now). A tenant making
    /// `busy_checks` checks a horizon is busy without a queue ([`Demand::want`]).
    pub(super) fn plan_call(&mut self, costs: &[u64], now: u64, busy_checks: u64) -> CallPlan {
        let total = costs.iter().fold(0u64, |sum, &cost| sum.saturating_add(cost));
        let n = self.leases.len();
        let serves =
            |lease: &Option<Lease>| lease.as_ref().is_some_and(|lease| lease.holds(total, now) && !lease.low(now));
        let mut carried: Vec<usize> = (0..n).filter(|&i| !serves(&self.leases[i])).collect();
        if carried.is_empty() {
            // Not called for by any limit (a check the leases could serve): all go.
            carried = (0..n).collect();
        }
        let mut plan = CallPlan {
            keys: carried.iter().map(|&i| self.keys[i].clone()).collect(),
            wants: Vec::with_capacity(carried.len()),
            backs: Vec::with_capacity(carried.len()),
            reserved: Vec::new(),
            carried,
        };
        let mut next = plan.carried.iter().copied().peekable();
        for i in 0..n {
            if next.peek() == Some(&i) {
                next.next();
                plan.backs.push(self.hand_back_with_call(i, now));
                plan.wants.push(self.demand[i].want(costs.len(), busy_checks));
            } else if let Some(lease) = self.leases[i].as_mut() {
                plan.reserved.push(Reserved {
                    index: i,
                    units_before: lease.units,
                    sub_window: lease.sub_window,
                    nonce: lease.nonce,
                    free_after: lease.free_after,
                    reset_at: lease.reset_at,
                });
                lease.units -= total;
            }
        }
        plan
    }

    /// Gives `units` taken by a call for costs it did not admit back to limit `reserved`'s
    /// lease, or to the hand-back pending from it; `Some` if neither is held any more
    /// (they go back to Redis).
    pub(super) fn refund(&mut self, reserved: &Reserved, units: u64) -> Option<HandBack> {
        let i = reserved.index;
        let same = |sub_window: i64, nonce: i64| (sub_window, nonce) == (reserved.sub_window, reserved.nonce);
        if let Some(lease) = self.leases[i].as_mut().filter(|l| same(l.sub_window, l.nonce)) {
            lease.units += units;
            return None;
        }
        if let Some((back, _)) = self.pending[i].as_mut().filter(|(b, _)| same(b.sub_window, b.nonce)) {
            back.units += units;
            return None;
        }
        Some(HandBack { units, sub_window: reserved.sub_window, nonce: reserved.nonce })
    }

    /// Serves queued checks from the leases, in order, while they hold enough, and drops
    /// checks whose caller has gone away (they count nothing). Returns whether checks are
    /// left for a call; if none are, the slot has no call in flight any more.
    pub(super) fn settle(&mut self, rules: &[Rule], now: u64) -> bool {
        let mut rest = Vec::new();
        for waiter in self.queue.drain(..) {
            if waiter.tx.is_closed() {
                continue;
            }
            let spent = if rest.is_empty() { lease::spend(&mut self.leases, waiter.cost, rules, now) } else { None };
            match spent {
                // A receiver gone just now costs its unit of the lease: it only refuses more.
                Some(decision) => drop(waiter.tx.send(Ok(decision))),
                None => rest.push(waiter),
            }
        }
        self.queue = rest;
        self.calling = !self.queue.is_empty();
        self.calling
    }
}

/// The decisions of a call planned as `plan`, from the script's answers about the limits
/// it carried (`decisions`, their `index` a position among those) and the leases it took
/// the other limits' parts from; and the units of refused costs, to give back to those
/// leases.
pub(super) fn merge(
    plan: &CallPlan,
    rules: &[Rule],
    costs: &[u64],
    decisions: Vec<Decision>,
    now: u64,
) -> (Vec<Decision>, u64) {
    let mut spent = 0u64;
    let mut refunded = 0u64;
    let decisions = decisions
        .into_iter()
        .zip(costs)
        .map(|(mut d, &cost)| {
            d.index = plan.carried.get(d.index).copied().unwrap_or(d.index);
            if !d.allowed {
                refunded = refunded.saturating_add(cost);
                return d;
            }
            spent = spent.saturating_add(cost);
            let ms = u64::try_from(d.reset.as_millis()).unwrap_or(u64::MAX);
            let leased = plan.reserved.iter().map(|r| {
                let remaining = r.free_after.saturating_add(r.units_before.saturating_sub(spent));
                (r.index, remaining, r.reset_at.saturating_sub(now))
            });
            if let Some((index, remaining, reset)) = lease::least_room(leased.chain([(d.index, d.remaining, ms)])) {
                if index != d.index {
                    d.index = index;
                    d.limit = rules.get(index).map_or(0, |rule| rule.requests);
                    d.remaining = remaining;
                    d.reset = Duration::from_millis(reset);
                }
            }
            d
        })
        .collect();
    (decisions, refunded)
}

/// A queued check: its cost and where its answer goes.
pub(super) struct Waiter {
    pub(super) cost: u64,
    pub(super) tx: oneshot::Sender<Result<Decision, RedisCallError>>,
}
