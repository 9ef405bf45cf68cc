//! A small circuit breaker, so that no request waits on a store known to be down.
//!
//! Closed → after `failure_threshold` consecutive failures → Open: calls are refused at
//! once. After `probe_interval` in Open, exactly one trial call is let through
//! (HalfOpen); its success closes the breaker, its failure opens it again for another
//! `probe_interval`. Any success closes it (a store that answers is up, whoever asked).
//!
//! Time comes from an injectable [`Clock`], so the state machine is tested without
//! sleeping. State changes are reported to an optional observer (called under the
//! breaker's lock, so observed changes arrive in order — keep it cheap, e.g. set a
//! gauge) and on a [`tokio::sync::watch`] channel.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::Clock;

/// How a [`Breaker`] trips and recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker. Default 3; 0 is treated as 1.
    pub failure_threshold: u32,
    /// How long an open breaker refuses every call before letting one trial through.
    /// Default 250 ms.
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 3, probe_interval: Duration::from_millis(250) }
    }
}

/// Where a [`Breaker`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until `probe_interval` has passed since it opened.
    Open,
    /// One trial call is in flight; others are refused until it reports.
    HalfOpen,
}

/// Called with `true` when the breaker closes and `false` when it leaves Closed.
pub type Observer = Box<dyn Fn(bool) + Send + Sync>;

/// A circuit breaker (see the module docs). Cheap to share behind an `Arc`.
pub struct Breaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    observer: Option<Observer>,
    /// `true` while closed.
    up: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    state: BreakerState,
    /// Consecutive failures while closed.
    failures: u32,
    /// When it last opened (Open) or let its trial through (HalfOpen), in clock ms.
    since: u64,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("config", &self.config).field("state", &self.state()).finish()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>) -> Breaker {
        Self::build(config, clock, BreakerState::Closed, None)
    }

    /// A breaker that starts open (e.g. a store not connected yet), whose first trial is
    /// allowed after `probe_interval`.
    pub fn new_open(config: BreakerConfig, clock: Arc<dyn Clock>) -> Breaker {
        Self::build(config, clock, BreakerState::Open, None)
    }

    /// A breaker starting in `state` whose changes are reported to `observer`. The
    /// observer is also called once now, with the initial state, so that a mirror (a
    /// gauge) starts right.
    pub fn with_observer(
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        state: BreakerState,
        observer: impl Fn(bool) + Send + Sync + 'static,
    ) -> Breaker {
        Self::build(config, clock, state, Some(Box::new(observer)))
    }

    fn build(config: BreakerConfig, clock: Arc<dyn Clock>, state: BreakerState, observer: Option<Observer>) -> Breaker {
        let config = BreakerConfig { failure_threshold: config.failure_threshold.max(1), ..config };
        let closed = state == BreakerState::Closed;
        let since = clock.now_millis();
        if let Some(observer) = &observer {
            observer(closed);
        }
        let (up, _) = tokio::sync::watch::channel(closed);
        Breaker { config, clock, inner: Mutex::new(Inner { state, failures: 0, since }), observer, up }
    }

    /// The configuration (with `failure_threshold` at least 1).
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot panic; recover the data if one ever did.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn probe_millis(&self) -> u64 {
        u64::try_from(self.config.probe_interval.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go ahead now. `true` while closed; while open, `true` for
    /// exactly one caller once `probe_interval` has passed (the breaker turns
    /// HalfOpen and that caller must report with `record_success` or
    /// `record_failure`). A trial that never reports (its future was dropped) is
    /// given up after another `probe_interval`, and a new one is let through.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open | BreakerState::HalfOpen => {
                let now = self.clock.now_millis();
                if now.saturating_sub(inner.since) >= self.probe_millis() {
                    inner.state = BreakerState::HalfOpen;
                    inner.since = now;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// A call succeeded: the breaker closes (whatever state it was in).
    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.failures = 0;
        if inner.state != BreakerState::Closed {
            inner.state = BreakerState::Closed;
            self.changed(true);
        }
    }

    /// A call failed (or timed out). Closed: counts towards `failure_threshold`, and
    /// opens at it. HalfOpen (the trial failed) or Open: (re)opens for another
    /// `probe_interval`.
    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let now = self.clock.now_millis();
        match inner.state {
            BreakerState::Closed => {
                inner.failures = inner.failures.saturating_add(1);
                if inner.failures >= self.config.failure_threshold {
                    inner.state = BreakerState::Open;
                    inner.since = now;
                    inner.failures = 0;
                    self.changed(false);
                }
            }
            BreakerState::HalfOpen | BreakerState::Open => {
                inner.state = BreakerState::Open;
                inner.since = now;
            }
        }
    }

    /// Opens the breaker now, whatever its failure count (e.g. the connection is gone).
    pub fn trip(&self) {
        let mut inner = self.lock();
        let was_closed = inner.state == BreakerState::Closed;
        inner.state = BreakerState::Open;
        inner.since = self.clock.now_millis();
        inner.failures = 0;
        if was_closed {
            self.changed(false);
        }
    }

    /// Called under the lock, so observers see changes in order.
    fn changed(&self, closed: bool) {
        if let Some(observer) = &self.observer {
            observer(closed);
        }
        self.up.send_replace(closed);
    }

    /// Open or HalfOpen: calls are (mostly) refused.
    pub fn is_open(&self) -> bool {
        self.state() != BreakerState::Closed
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// A receiver that holds `true` while the breaker is closed and is notified on
    /// every change between closed and not closed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.up.subscribe()
    }
}

#[cfg(test)]
mod tests;
