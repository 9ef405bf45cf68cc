//! Time, injectable: every rule that depends on the time (sliding windows, key expiry,
//! the circuit breaker) reads a [`Clock`], so tests drive it with a [`ManualClock`]
//! instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// A clock in milliseconds since the Unix epoch; injectable so window logic is tested
/// without waiting.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> u64;

    /// The same instant as a UTC date-time (key expiry is compared with it).
    fn now_utc(&self) -> OffsetDateTime {
        let nanos = i128::from(self.now_millis()) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that only moves when told to (tests, including integration tests, drive the
/// window without sleeping). Starts at the value given to [`ManualClock::new`]
/// (default 0, the epoch).
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock reading `millis` ms since the epoch.
    pub fn new(millis: u64) -> Self {
        ManualClock { millis: AtomicU64::new(millis) }
    }

    /// Sets the time to `millis` ms since the epoch (it may go backwards).
    pub fn set(&self, millis: u64) {
        self.millis.store(millis, Ordering::SeqCst);
    }

    /// Moves the time forward by `by` (saturating at `u64::MAX` ms).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self.millis.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| Some(m.saturating_add(by)));
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock() {
        let c = ManualClock::new(5);
        assert_eq!(c.now_millis(), 5);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_millis(), 1_505);
        c.set(7);
        assert_eq!(c.now_millis(), 7);
        c.set(u64::MAX - 1);
        c.advance(Duration::from_secs(10));
        assert_eq!(c.now_millis(), u64::MAX);
        assert!(SystemClock.now_millis() > 1_600_000_000_000);
    }

    #[test]
    fn utc_is_the_same_instant() {
        let c = ManualClock::new(1_700_000_000_250);
        assert_eq!(c.now_utc().unix_timestamp_nanos(), 1_700_000_000_250_000_000);
    }
}
