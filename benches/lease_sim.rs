//! A deterministic simulation of the shared limiter's leases past this machine: many
//! replicas, many tenants, skewed traffic, some tenants at their limit. It drives keygate's
//! own lease code ([`keygate::ratelimit::lease`]: `Lease`, `Demand`, the constants) with a
//! fake clock, against a model of Redis that runs the limiter script's rules (sliding
//! window of 20 sub-windows, the oldest counted whole; leases counted when granted, at
//! most 1/LEASE_SHARE of what is free; unspent units handed back), and reports Redis calls
//! per second against requests per second, how much quota leases held back, and checks
//! that no window-long span ever admits more than the limit.
//!
//! `cargo bench --bench lease_sim` runs the full table (docs/benchmarks.md, "Leases past
//! this machine"); `cargo test --all-targets` runs a small configuration of it as a test.
//!
//! The replica side mirrors `src/ratelimit/redis.rs`: a check is served from the
//! (replica, tenant) lease if it can; otherwise it queues behind the call in flight, or
//! sends one (handing the old lease back in it, asking for `Demand::want`); a reply
//! installs the new lease, serves the queue from it, and sends what is left as the next
//! batch; a lease with units left at its end keeps them for the tenant's next call for
//! [`HAND_BACK_GRACE`], and only then, if no call took them, is handed back by a call of
//! its own. The model differs from the real thing in one way on purpose: each replica is
//! one worker.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use keygate::ratelimit::lease::{Demand, Grant, HandBack, Lease, BUSY_CHECKS, LEASE_SHARE};
use keygate::ratelimit::redis::HAND_BACK_GRACE;
use keygate::ratelimit::{Limit, Rule, SUB_WINDOWS};

/// A small, fixed random generator (xorshift64*): the same run every time.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
struct Setup {
    replicas: u32,
    tenants: u32,
    /// Requests per second over all replicas.
    rate: f64,
    /// Zipf exponent of the tenants' shares of the traffic.
    skew: f64,
    /// Simulated time, in seconds.
    seconds: u64,
    /// Round trip to Redis, in µs.
    rtt_us: u64,
    /// Whether replicas ask for leases (off: the limiter before leases, per-batch calls).
    leases: bool,
}

/// The model of Redis: one sliding window per tenant, as the script keeps it.
struct Window {
    limit: Limit,
    /// Sub-window index → count.
    counters: BTreeMap<i64, u64>,
}

impl Window {
    fn sub(&self) -> u64 {
        self.limit.sub_window_millis()
    }

    /// The script at `now_ms`: hands `back` back, decides `costs` in order, grants a lease
    /// of up to `want`. Returns the admitted flags and the grant.
    fn script(&mut self, now_ms: u64, back: Option<HandBack>, costs: &[u64], want: u64) -> (Vec<bool>, Grant) {
        let sub = self.sub();
        let current = (now_ms / sub) as i64;
        let oldest = (now_ms.saturating_sub(self.limit.window_millis()) / sub) as i64;
        self.counters.retain(|&k, _| k >= oldest);
        // One limit: the hand-back names its sub-window (a plan of several limits has a
        // lease, and hands back, per limit).
        if let Some(back) = &back {
            if let Some(held) = self.counters.get_mut(&back.sub_window) {
                *held -= back.units.min(*held);
            }
        }
        let mut count: u64 = self.counters.values().sum();
        let requests = self.limit.requests;
        let mut refused = false;
        let mut admitted = Vec::with_capacity(costs.len());
        for &cost in costs {
            let ok = count + cost <= requests;
            if ok {
                count += cost;
                *self.counters.entry(current).or_default() += cost;
            } else {
                refused = true;
            }
            admitted.push(ok);
        }
        let mut units = 0;
        if want > 0 && !refused {
            units = want.min((requests - count) / LEASE_SHARE);
            count += units;
            *self.counters.entry(current).or_default() += units;
        }
        let grant = Grant {
            units,
            sub_window_left: (current as u64 + 1) * sub - now_ms,
            sub_window: current,
            nonce: 1,
            free_after: requests - count,
            reset: (current as u64 + 1) * sub + self.limit.window_millis() - now_ms,
        };
        (admitted, grant)
    }
}

/// One (replica, tenant): as `Slot` in src/ratelimit/redis.rs.
#[derive(Default)]
struct Slot {
    calling: bool,
    /// Checks waiting behind the call in flight (their arrival times, µs).
    queue: VecDeque<u64>,
    /// The batch of the call in flight, and when it was sent (ms).
    batch: usize,
    sent_ms: u64,
    lease: Option<Lease>,
    generation: u64,
    /// The hand-back of a lease that ran to its end, waiting for the next call (with the
    /// lease's generation and when it was granted, ms).
    pending: Option<(HandBack, u64, u64)>,
    demand: Demand,
}

enum Event {
    Arrival,
    Reply { replica: u32, tenant: u32, grant: Grant },
    LeaseEnd { replica: u32, tenant: u32, generation: u64 },
    GraceEnd { replica: u32, tenant: u32, generation: u64 },
}

/// An event at a time; events at one time run in the order they were scheduled.
struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

#[derive(Default, Debug)]
struct Outcome {
    requests: u64,
    admitted: u64,
    calls: u64,
    hand_backs: u64,
    /// Per tenant: admitted.
    admitted_per_tenant: Vec<u64>,
    /// Per tenant: the most units parked in leases at once, and the longest a lease with
    /// units left was parked (µs).
    most_parked: Vec<u64>,
    longest_parked_us: u64,
    /// The most admissions of one tenant in any window-long span, over its limit.
    worst_span_ratio: f64,
}

struct Sim {
    setup: Setup,
    now_us: u64,
    random: Random,
    events: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    windows: Vec<Window>,
    slots: HashMap<(u32, u32), Slot>,
    /// Admission times in the last window, per tenant (µs).
    recent: Vec<VecDeque<u64>>,
    /// Units parked per tenant right now.
    parked: Vec<u64>,
    cdf: Vec<f64>,
    out: Outcome,
}

impl Sim {
    fn new(setup: Setup) -> Sim {
        let n = setup.tenants as usize;
        let weights: Vec<f64> = (1..=n).map(|i| 1.0 / (i as f64).powf(setup.skew)).collect();
        let total: f64 = weights.iter().sum();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cdf.push(acc);
        }
        // Plans by expected demand: every 20th tenant is sold 70% of what it sends (at its
        // limit), the others three times it; at least 10 a minute.
        let windows = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let per_minute = setup.rate * w / total * 60.0;
                let factor = if i % 20 == 3 { 0.7 } else { 3.0 };
                let requests = ((per_minute * factor) as u64).max(10);
                Window { limit: Limit { requests, window: Duration::from_secs(60) }, counters: BTreeMap::new() }
            })
            .collect();
        let mut sim = Sim {
            setup,
            now_us: 0,
            random: Random(0x9e37_79b9_7f4a_7c15),
            events: BinaryHeap::new(),
            seq: 0,
            windows,
            slots: HashMap::new(),
            recent: vec![VecDeque::new(); n],
            parked: vec![0; n],
            cdf,
            out: Outcome { admitted_per_tenant: vec![0; n], most_parked: vec![0; n], ..Outcome::default() },
        };
        sim.schedule(0, Event::Arrival);
        sim
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled { at_us, seq: self.seq, event }));
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1_000
    }

    fn run(mut self) -> Outcome {
        let end = self.setup.seconds * 1_000_000;
        while let Some(Reverse(Scheduled { at_us, event, .. })) = self.events.pop() {
            if at_us > end {
                break;
            }
            self.now_us = at_us;
            match event {
                Event::Arrival => self.arrival(),
                Event::Reply { replica, tenant, grant } => self.reply(replica, tenant, grant),
                Event::LeaseEnd { replica, tenant, generation } => self.lease_end(replica, tenant, generation),
                Event::GraceEnd { replica, tenant, generation } => self.grace_end(replica, tenant, generation),
            }
        }
        self.out
    }

    fn admit(&mut self, tenant: u32, at_us: u64) {
        let t = tenant as usize;
        self.out.admitted += 1;
        self.out.admitted_per_tenant[t] += 1;
        let window_us = self.windows[t].limit.window_millis() * 1_000;
        let recent = &mut self.recent[t];
        while recent.front().is_some_and(|&front| front + window_us < at_us) {
            recent.pop_front();
        }
        recent.push_back(at_us);
        let ratio = recent.len() as f64 / self.windows[t].limit.requests as f64;
        if ratio > self.out.worst_span_ratio {
            self.out.worst_span_ratio = ratio;
        }
    }

    fn arrival(&mut self) {
        let gap = -(1.0 - self.random.unit()).ln() / self.setup.rate * 1e6;
        self.schedule(self.now_us + gap.max(1.0) as u64, Event::Arrival);
        self.out.requests += 1;
        let u = self.random.unit();
        let tenant = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32;
        let replica = self.random.below(u64::from(self.setup.replicas)) as u32;
        let (now_ms, now_us) = (self.now_ms(), self.now_us);
        let limit = [Rule::window(self.windows[tenant as usize].limit)];
        let slot = self.slots.entry((replica, tenant)).or_default();
        slot.demand.checked(now_ms);
        if slot.lease.as_mut().and_then(|lease| lease.spend(1, &limit, now_ms)).is_some() {
            self.parked[tenant as usize] -= 1;
            self.admit(tenant, now_us);
        } else if slot.calling {
            slot.queue.push_back(now_us);
        } else {
            slot.queue.push_back(now_us);
            self.send(replica, tenant);
        }
    }

    /// Sends the slot's queue as one call (it has no call in flight).
    fn send(&mut self, replica: u32, tenant: u32) {
        let now_ms = self.now_ms();
        let leases = self.setup.leases;
        let slot = self.slots.get_mut(&(replica, tenant)).expect("slot");
        let mut granted_at = None;
        let back = slot.lease.take().and_then(|lease| {
            slot.demand.ended(&lease, now_ms);
            granted_at = lease.hand_back().map(|_| lease.granted_at);
            lease.hand_back()
        });
        // Else the units a lease that ran out left pending go with this call.
        let back = back.or_else(|| {
            let (back, _, at) = slot.pending.take()?;
            granted_at = Some(at);
            Some(back)
        });
        let batch = std::mem::take(&mut slot.queue);
        let want = if leases { slot.demand.want(batch.len(), BUSY_CHECKS) } else { 0 };
        slot.calling = true;
        slot.batch = batch.len();
        slot.sent_ms = now_ms;
        if let Some(back) = &back {
            self.parked[tenant as usize] -= back.units;
        }
        if let Some(granted_at) = granted_at {
            self.out.longest_parked_us = self.out.longest_parked_us.max(self.now_us.saturating_sub(granted_at * 1_000));
        }
        self.out.calls += 1;
        let costs = vec![1; batch.len()];
        // The script runs when the call reaches Redis: modelled as the moment it is sent,
        // its answer arriving one round trip later.
        let (admitted, grant) = self.windows[tenant as usize].script(now_ms, back, &costs, want);
        for &ok in &admitted {
            if ok {
                self.admit(tenant, self.now_us);
            }
        }
        self.parked[tenant as usize] += grant.units;
        let t = tenant as usize;
        self.out.most_parked[t] = self.out.most_parked[t].max(self.parked[t]);
        let at = self.now_us + self.setup.rtt_us;
        self.schedule(at, Event::Reply { replica, tenant, grant });
    }

    fn reply(&mut self, replica: u32, tenant: u32, grant: Grant) {
        let now_ms = self.now_ms();
        let limit = [Rule::window(self.windows[tenant as usize].limit)];
        let slot = self.slots.get_mut(&(replica, tenant)).expect("slot");
        slot.calling = false;
        let mut served_now = 0;
        match Lease::new(&grant, slot.sent_ms, now_ms) {
            Some(lease) => {
                let deadline = lease.deadline;
                slot.lease = Some(lease);
                slot.generation += 1;
                let generation = slot.generation;
                // Serve the queue from the new lease, in order.
                let lease = slot.lease.as_mut().expect("lease");
                while !slot.queue.is_empty() && lease.spend(1, &limit, now_ms).is_some() {
                    slot.queue.pop_front();
                    served_now += 1;
                }
                self.schedule(deadline * 1_000, Event::LeaseEnd { replica, tenant, generation });
            }
            None if grant.units > 0 => {
                // Over before it arrived: its units wait for the next call (the queue's,
                // at once, if checks are queued), or go back alone after the grace.
                let (back, sent_ms): (HandBack, u64) = (grant.hand_back(), slot.sent_ms);
                if slot.pending.is_none() {
                    let tag = slot.generation | 1 << 63;
                    slot.pending = Some((back, tag, sent_ms));
                    let at = self.now_us + HAND_BACK_GRACE.as_micros() as u64;
                    self.schedule(at, Event::GraceEnd { replica, tenant, generation: tag });
                } else {
                    self.hand_back_alone(tenant, back, sent_ms);
                }
            }
            None => {}
        }
        self.parked[tenant as usize] -= served_now;
        for _ in 0..served_now {
            self.admit(tenant, self.now_us);
        }
        let slot = self.slots.get_mut(&(replica, tenant)).expect("slot");
        if !slot.queue.is_empty() {
            self.send(replica, tenant);
        }
    }

    fn lease_end(&mut self, replica: u32, tenant: u32, generation: u64) {
        let now_ms = self.now_ms();
        let Some(slot) = self.slots.get_mut(&(replica, tenant)) else { return };
        if slot.generation != generation {
            return;
        }
        let Some(lease) = slot.lease.take() else { return };
        slot.demand.ended(&lease, now_ms);
        if let Some(back) = lease.hand_back() {
            // Kept for the next call; one still pending from an earlier lease goes now.
            if let Some((earlier, _, at)) = slot.pending.replace((back, generation, lease.granted_at)) {
                self.hand_back_alone(tenant, earlier, at);
            }
            let at = self.now_us + HAND_BACK_GRACE.as_micros() as u64;
            self.schedule(at, Event::GraceEnd { replica, tenant, generation });
        }
    }

    fn grace_end(&mut self, replica: u32, tenant: u32, generation: u64) {
        let Some(slot) = self.slots.get_mut(&(replica, tenant)) else { return };
        match slot.pending.take() {
            Some((back, from, at)) if from == generation => self.hand_back_alone(tenant, back, at),
            other => slot.pending = other,
        }
    }

    /// A call that only hands `back` (of a lease granted at `granted_at`, ms) to Redis.
    fn hand_back_alone(&mut self, tenant: u32, back: HandBack, granted_at: u64) {
        let now_ms = self.now_ms();
        self.out.longest_parked_us = self.out.longest_parked_us.max(self.now_us.saturating_sub(granted_at * 1_000));
        self.out.calls += 1;
        self.out.hand_backs += 1;
        let units = back.units;
        self.windows[tenant as usize].script(now_ms, Some(back), &[], 0);
        self.parked[tenant as usize] -= units;
    }
}

struct Row {
    setup: Setup,
    with: Outcome,
    without: Outcome,
}

fn simulate(setup: Setup) -> Row {
    let with = Sim::new(Setup { leases: true, ..setup }).run();
    let without = Sim::new(Setup { leases: false, ..setup }).run();
    Row { setup, with, without }
}

fn print_header() {
    println!(
        "| replicas | tenants | requests/s | Redis calls/s before leases | with leases | calls per request | \
         of which hand-backs | admitted ÷ before leases (all; worst tenant at its limit) | most quota parked \
         for one tenant | longest parked | most admitted in one window ÷ limit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(row: &Row) {
    let s = row.setup;
    let secs = s.seconds as f64;
    let (w, wo) = (&row.with, &row.without);
    let worst = worst_at_limit(row);
    let parked = (0..s.tenants as usize)
        .filter(|&t| w.admitted_per_tenant[t] > 0)
        .map(|t| w.most_parked[t] as f64 / limit_of(row, t) as f64)
        .fold(0.0, f64::max);
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.0} | {:.4} | {:.4} | {:.4}; {:.4} | {:.1}% of its limit | {:.2} s | {:.3} / {:.3} |",
        s.replicas,
        s.tenants,
        w.requests as f64 / secs,
        wo.calls as f64 / secs,
        w.calls as f64 / secs,
        w.calls as f64 / w.requests as f64,
        w.hand_backs as f64 / w.requests as f64,
        w.admitted as f64 / wo.admitted as f64,
        worst,
        100.0 * parked,
        w.longest_parked_us as f64 / 1e6,
        w.worst_span_ratio,
        wo.worst_span_ratio,
    );
}

fn limit_of(row: &Row, tenant: usize) -> u64 {
    let s = row.setup;
    let weights: f64 = (1..=s.tenants).map(|i| 1.0 / f64::from(i).powf(s.skew)).sum();
    let w = 1.0 / ((tenant + 1) as f64).powf(s.skew) / weights;
    let factor = if tenant % 20 == 3 { 0.7 } else { 3.0 };
    ((s.rate * w * 60.0 * factor) as u64).max(10)
}

/// Among tenants sold less than they send (every 20th) with enough traffic to matter: the
/// lowest ratio of admissions with leases to admissions without.
fn worst_at_limit(row: &Row) -> f64 {
    (0..row.setup.tenants as usize)
        .filter(|t| t % 20 == 3 && row.without.admitted_per_tenant[*t] >= 200)
        .map(|t| row.with.admitted_per_tenant[t] as f64 / row.without.admitted_per_tenant[t] as f64)
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let base =
        Setup { replicas: 100, tenants: 10_000, rate: 100_000.0, skew: 1.1, seconds: 130, rtt_us: 500, leases: true };
    let setups: Vec<Setup> = if bench {
        vec![
            Setup { replicas: 10, tenants: 1_000, rate: 20_000.0, ..base },
            Setup { replicas: 10, tenants: 10_000, rate: 20_000.0, ..base },
            Setup { replicas: 100, tenants: 1_000, ..base },
            base,
            Setup { replicas: 10, tenants: 10_000, rate: 100_000.0, ..base },
        ]
    } else {
        // Under `cargo test`: small enough for a debug build, the same checks.
        vec![Setup { replicas: 10, tenants: 300, rate: 5_000.0, seconds: 70, ..base }]
    };
    println!(
        "lease simulation: Zipf s = {}, 60 s windows ({SUB_WINDOWS} sub-windows), round trip {} µs",
        base.skew, base.rtt_us
    );
    print_header();
    for setup in setups {
        let row = simulate(setup);
        print_row(&row);
        assert!(row.with.worst_span_ratio <= 1.0, "a window admitted more than the limit with leases");
        assert!(row.without.worst_span_ratio <= 1.0, "a window admitted more than the limit without leases");
        assert!(row.with.calls < row.without.calls, "leases must save calls");
        let longest = row.with.longest_parked_us;
        let bound = 3_000_000 + HAND_BACK_GRACE.as_micros() as u64 + row.setup.rtt_us;
        assert!(longest <= bound, "a lease parked for {longest} µs, past its sub-window and grace");
    }
}
