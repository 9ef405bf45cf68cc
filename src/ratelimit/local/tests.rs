//! Unit tests of the in-process limiter: the window's bounds, refusals that count
//! nothing, resets and retry-afters, clocks that step back, memory per tenant.

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
    // Another window length has counters of its own.
    assert!(l.check("a", &limit(1, 30), 1).allowed);
}

/// Changing a limit's number (a plan edit, an override) keeps what its window counted:
/// the counters belong to the window's length, not to the limit.
#[test]
fn a_changed_limit_keeps_its_count() {
    let (_, l) = setup(1_000_000);
    for _ in 0..3 {
        assert!(l.check("t", &limit(3, 60), 1).allowed);
    }
    assert!(!l.check("t", &limit(3, 60), 1).allowed);
    // Raised to 5: the three admitted still count, two more fit.
    assert_eq!(l.check("t", &limit(5, 60), 1).remaining, 1);
    assert!(l.check("t", &limit(5, 60), 1).allowed);
    assert!(!l.check("t", &limit(5, 60), 1).allowed);
    // Lowered again: refused at once.
    assert!(!l.check("t", &limit(3, 60), 1).allowed);
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
        assert!(sum <= requests, "{sum} admitted in [{}, {t}] (limit {requests}), at #{i}", t.saturating_sub(window));
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

// ---------------------------------------------------------------------------------------
// Several limits, calendar quotas

/// Ms since the epoch of `y-m-d` at `h:mm:ss` UTC.
fn utc(y: i64, m: u32, d: u32, h: u64, min: u64, s: u64) -> u64 {
    let days = u64::try_from(crate::policy::days_from_civil(y, m, d)).unwrap();
    days * 86_400_000 + (h * 3_600 + min * 60 + s) * 1_000
}

fn window(requests: u64, secs: u64) -> Rule {
    Rule::window(limit(requests, secs))
}

fn day(requests: u64) -> Rule {
    Rule { requests, kind: LimitKind::Day }
}

fn month(requests: u64, reset_day: u8) -> Rule {
    Rule { requests, kind: LimitKind::Month { reset_day } }
}

#[test]
fn calendar_periods_follow_the_utc_calendar_and_the_reset_day() {
    let jan_15 = utc(2027, 1, 15, 12, 0, 0);
    assert_eq!(day(1).period(jan_15), Some((utc(2027, 1, 15, 0, 0, 0), utc(2027, 1, 16, 0, 0, 0))));
    assert_eq!(month(1, 1).period(jan_15), Some((utc(2027, 1, 1, 0, 0, 0), utc(2027, 2, 1, 0, 0, 0))));
    assert_eq!(month(1, 20).period(jan_15), Some((utc(2026, 12, 20, 0, 0, 0), utc(2027, 1, 20, 0, 0, 0))));
    // The 31st: February's last day stands in (28th in 2027, 29th in 2028).
    let feb = utc(2027, 2, 27, 23, 0, 0);
    assert_eq!(month(1, 31).period(feb), Some((utc(2027, 1, 31, 0, 0, 0), utc(2027, 2, 28, 0, 0, 0))));
    let feb_28 = utc(2027, 2, 28, 0, 0, 0);
    assert_eq!(month(1, 31).period(feb_28), Some((feb_28, utc(2027, 3, 31, 0, 0, 0))));
    let leap = utc(2028, 2, 28, 10, 0, 0);
    assert_eq!(month(1, 31).period(leap), Some((utc(2028, 1, 31, 0, 0, 0), utc(2028, 2, 29, 0, 0, 0))));
    // The last instant of a year, and the first of the next.
    let eve = utc(2027, 12, 31, 23, 59, 59) + 999;
    assert_eq!(month(1, 1).period(eve), Some((utc(2027, 12, 1, 0, 0, 0), utc(2028, 1, 1, 0, 0, 0))));
    assert_eq!(month(1, 1).period(eve + 1), Some((utc(2028, 1, 1, 0, 0, 0), utc(2028, 2, 1, 0, 0, 0))));
    assert_eq!(window(1, 1).period(eve), None);
    for z in [-1_000_000, -1, 0, 1, 19_000, 20_820, 2_000_000] {
        let (y, m, d) = crate::policy::civil_from_days(z);
        assert_eq!(crate::policy::days_from_civil(y, m, d), z);
    }
}

#[test]
fn a_day_quota_alone_counts_until_midnight_utc() {
    let (clock, l) = setup(utc(2027, 3, 10, 22, 0, 0));
    let rules = [day(3)];
    for left in [2, 1, 0] {
        let d = l.check_rules("t", &rules, 1);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.limit, d.index), (left, 3, 0));
        assert_eq!(d.reset, Duration::from_secs(2 * 3_600), "the day resets at midnight");
    }
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(2 * 3_600)), "until the reset");
    assert_eq!(d.retry_after_secs(), Some(7_200));
    clock.set(utc(2027, 3, 10, 23, 59, 59));
    assert!(!l.check_rules("t", &rules, 1).allowed);
    clock.set(utc(2027, 3, 11, 0, 0, 0));
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed, "a new day");
    assert_eq!(d.remaining, 2);
}

#[test]
fn a_month_quota_resets_at_the_end_of_the_month_on_the_injected_clock() {
    let (clock, l) = setup(utc(2027, 1, 31, 23, 59, 58));
    let rules = [month(2, 1)];
    assert!(l.check_rules("t", &rules, 2).allowed);
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(2)));
    clock.set(utc(2027, 1, 31, 23, 59, 59) + 999);
    let d = l.check_rules("t", &rules, 1);
    assert_eq!((d.allowed, d.retry_after), (false, Some(ms(1))));
    assert_eq!(d.retry_after_secs(), Some(1));
    clock.set(utc(2027, 2, 1, 0, 0, 0));
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed, "February: a fresh quota");
    assert_eq!(d.remaining, 1);
    assert_eq!(d.reset, Duration::from_secs(28 * 86_400), "until March 1st");
    // A clock that steps back into January does not give January's count back.
    clock.set(utc(2027, 1, 31, 12, 0, 0));
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed);
    assert!(!l.check_rules("t", &rules, 1).allowed, "February's two are spent");
}

#[test]
fn a_reset_day_of_31_resets_on_the_last_day_of_february() {
    let (clock, l) = setup(utc(2027, 2, 27, 23, 0, 0));
    let rules = [month(1, 31)];
    assert!(l.check_rules("t", &rules, 1).allowed);
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(3_600)), "resets on the 28th");
    clock.set(utc(2027, 2, 28, 0, 0, 0));
    assert!(l.check_rules("t", &rules, 1).allowed);
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(31 * 86_400)), "next on March 31st");
    clock.set(utc(2027, 3, 30, 23, 59, 59));
    assert!(!l.check_rules("t", &rules, 1).allowed);
    clock.set(utc(2027, 3, 31, 0, 0, 0));
    assert!(l.check_rules("t", &rules, 1).allowed);
}

#[test]
fn a_request_is_admitted_only_if_every_limit_has_room_and_a_refusal_counts_in_none() {
    let start = utc(2027, 5, 3, 10, 0, 0);
    let (clock, l) = setup(start);
    // burst 2/s, minute 5/60s, day 7.
    let rules = [window(2, 1), window(5, 60), day(7)];
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed);
    assert_eq!((d.index, d.remaining, d.limit), (0, 1, 2), "burst has the least room");
    assert!(l.check_rules("t", &rules, 1).allowed);
    // Burst refuses: neither the minute nor the day counts it.
    for _ in 0..10 {
        let d = l.check_rules("t", &rules, 1);
        assert!(!d.allowed);
        assert_eq!((d.index, d.limit), (0, 2), "the burst refused");
        assert!(d.retry_after.unwrap() <= Duration::from_millis(1_050), "{d:?}");
    }
    clock.advance(Duration::from_millis(1_100));
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed);
    assert_eq!((d.index, d.remaining), (0, 1), "the burst has room again");
    assert!(l.check_rules("t", &rules, 1).allowed);
    clock.advance(Duration::from_millis(1_100));
    assert!(l.check_rules("t", &rules, 1).allowed);
    clock.advance(Duration::from_millis(1_100));
    // The minute refuses now: 5 counted, not the 10 the burst refused; its Retry-After
    // is the minute's.
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!((d.index, d.limit, d.remaining), (1, 5, 0));
    let wait = d.retry_after.unwrap();
    assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60), "{wait:?}");
    // After the minute, the day (7) has room for 2 more: 5 were counted, not more.
    clock.set(start + 64_000);
    for left in [1, 0] {
        let d = l.check_rules("t", &rules, 1);
        assert!(d.allowed);
        assert_eq!((d.index, d.remaining), (2, left), "the day has the least room");
    }
    clock.advance(Duration::from_secs(2));
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!((d.index, d.limit), (2, 7), "the day refused");
    assert_eq!(d.retry_after, Some(Duration::from_millis(utc(2027, 5, 4, 0, 0, 0) - clock.now_millis())));
}

#[test]
fn when_several_limits_refuse_the_one_whose_room_comes_back_last_is_reported() {
    let (_, l) = setup(utc(2027, 5, 3, 23, 0, 0));
    let rules = [window(1, 1), month(1, 1), day(1)];
    assert!(l.check_rules("t", &rules, 1).allowed);
    let d = l.check_rules("t", &rules, 1);
    assert!(!d.allowed);
    assert_eq!(d.index, 1, "the month comes back last: {d:?}");
    assert_eq!(d.retry_after, Some(Duration::from_millis(utc(2027, 6, 1, 0, 0, 0) - utc(2027, 5, 3, 23, 0, 0))));
    // A cost above one limit is refused by it alone, and counts nowhere.
    let (_, l) = setup(utc(2027, 5, 3, 23, 0, 0));
    let rules = [window(3, 1), day(100)];
    let d = l.check_rules("t", &rules, 4);
    assert_eq!((d.allowed, d.index, d.retry_after), (false, 0, Some(Duration::from_secs(1))));
    let d = l.check_rules("t", &rules, 1);
    assert!(d.allowed);
    assert_eq!((d.index, d.remaining), (0, 2));
}

#[test]
fn a_quota_keeps_its_count_when_its_requests_change() {
    let (_, l) = setup(utc(2027, 5, 3, 12, 0, 0));
    assert!(l.check_rules("t", &[month(2, 1)], 2).allowed);
    assert!(!l.check_rules("t", &[month(2, 1)], 1).allowed);
    let d = l.check_rules("t", &[month(5, 1)], 1);
    assert_eq!((d.allowed, d.remaining), (true, 2), "raised to 5: 2 + 1 counted");
}

#[test]
fn concurrent_checks_of_several_limits_admit_exactly_the_smallest() {
    let (_, l) = setup(utc(2027, 5, 3, 12, 0, 0));
    let l = Arc::new(l);
    let rules = [window(50, 60), day(30), month(1_000, 1)];
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || (0..20).filter(|_| l.check_rules("t", &rules, 1).allowed).count())
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 30);
    // Every limit counted the 30 and nothing else.
    assert_eq!(l.check_rules("t", &[window(50, 60)], 20).remaining, 0, "30 + 20 of 50");
    assert_eq!(l.check_rules("t", &[month(1_000, 1)], 0).remaining, 970);
}

/// A key's own limits (a [`KeyScope`]) have counters of their own beside the tenant's,
/// decided in the same critical section: the key's request counts in its own `minute`
/// and in the tenant's other limits, never in the tenant's `minute`.
#[test]
fn a_keys_own_limits_count_for_it_alone() {
    let (_, l) = setup(1_000_000);
    let tenant_rules = [window(2, 60), day(100)];
    let key_rules = [window(5, 60), day(100)];
    let scope = Some(KeyScope { key: "key_a", mask: 0b01 });
    for left in (0..5).rev() {
        let d = l.check_scoped("t", scope, &key_rules, 1);
        assert!(d.allowed);
        assert_eq!((d.index, d.remaining), (0, left));
    }
    let refused = l.check_scoped("t", scope, &key_rules, 1);
    assert!(!refused.allowed);
    assert_eq!(refused.index, 0, "the key's own minute refused");
    // The tenant's minute is untouched; its day counted the key's five.
    let d = l.check_rules("t", &tenant_rules, 1);
    assert!(d.allowed);
    assert_eq!(l.check_rules("t", &[day(100)], 1).remaining, 93);
    // Another key with the same override has counters of its own.
    assert!(l.check_scoped("t", Some(KeyScope { key: "key_b", mask: 0b01 }), &key_rules, 1).allowed);
}
