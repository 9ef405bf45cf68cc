//! Unit tests of the circuit breaker's states and transitions.

use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::clock::ManualClock;

fn breaker() -> (Arc<ManualClock>, Breaker) {
    let clock = Arc::new(ManualClock::new(1_000));
    let breaker = Breaker::new(BreakerConfig::default(), clock.clone());
    (clock, breaker)
}

#[test]
fn opens_after_consecutive_failures() {
    let (_, b) = breaker();
    assert!(b.allow());
    b.record_failure();
    b.record_failure();
    assert_eq!(b.state(), BreakerState::Closed);
    b.record_success();
    b.record_failure();
    b.record_failure();
    assert!(!b.is_open(), "a success resets the count");
    b.record_failure();
    assert!(b.is_open());
    assert!(!b.allow());
}

#[test]
fn one_trial_after_probe_interval() {
    let (clock, b) = breaker();
    b.trip();
    clock.advance(Duration::from_millis(249));
    assert!(!b.allow());
    clock.advance(Duration::from_millis(1));
    assert!(b.allow(), "the trial goes through");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(!b.allow(), "exactly one trial");
    assert!(!b.allow());
    b.record_success();
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(b.allow());
}

#[test]
fn failed_trial_reopens_for_another_interval() {
    let (clock, b) = breaker();
    b.trip();
    clock.advance(Duration::from_millis(300));
    assert!(b.allow());
    b.record_failure();
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_millis(200));
    assert!(!b.allow());
    clock.advance(Duration::from_millis(50));
    assert!(b.allow());
}

#[test]
fn abandoned_trial_is_replaced() {
    let (clock, b) = breaker();
    b.trip();
    clock.advance(Duration::from_millis(250));
    assert!(b.allow());
    clock.advance(Duration::from_millis(249));
    assert!(!b.allow());
    clock.advance(Duration::from_millis(1));
    assert!(b.allow(), "a trial that never reported is given up");
}

#[test]
fn starts_open_and_observer_mirrors_state() {
    let clock = Arc::new(ManualClock::new(0));
    let gauge = Arc::new(AtomicI64::new(-1));
    let g = gauge.clone();
    let b = Breaker::with_observer(BreakerConfig::default(), clock.clone(), BreakerState::Open, move |up| {
        g.store(i64::from(up), Ordering::SeqCst)
    });
    let mut rx = b.subscribe();
    assert_eq!(gauge.load(Ordering::SeqCst), 0, "the initial state is reported");
    assert!(!*rx.borrow_and_update());
    assert!(!b.allow());
    b.record_success();
    assert_eq!(gauge.load(Ordering::SeqCst), 1);
    assert!(rx.has_changed().unwrap_or(false));
    assert!(*rx.borrow_and_update());
    for _ in 0..3 {
        b.record_failure();
    }
    assert_eq!(gauge.load(Ordering::SeqCst), 0);
    assert!(!*rx.borrow_and_update());
    clock.advance(Duration::from_millis(250));
    assert!(b.allow());
    assert_eq!(gauge.load(Ordering::SeqCst), 0, "HalfOpen is not up");
    b.record_success();
    assert_eq!(gauge.load(Ordering::SeqCst), 1);
}

#[test]
fn zero_threshold_is_one() {
    let clock = Arc::new(ManualClock::new(0));
    let b = Breaker::new(BreakerConfig { failure_threshold: 0, ..BreakerConfig::default() }, clock);
    b.record_failure();
    assert!(b.is_open());
}
