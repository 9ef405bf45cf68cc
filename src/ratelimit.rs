//! Plan rate limits (SPEC 4.4): the [`Limit`] of a plan, the limiter's [`Decision`], and
//! the response headers every request that reached the limiter carries.
//!
//! The window is sliding and exact: it is split into [`SUB_WINDOWS`] sub-windows with one
//! counter each, and the oldest, partly expired sub-window is counted whole, so the
//! estimate can only err on the side of refusing. In any span of one window at most
//! `requests` are admitted; a client at saturation gets at least
//! `SUB_WINDOWS / (SUB_WINDOWS + 1)` of the limit.

pub mod local;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// Sub-windows per window: the memory per tenant (one counter each) and the worst-case
/// under-admission (1 / (SUB_WINDOWS + 1)).
pub const SUB_WINDOWS: u64 = 20;

/// `requests` per `window` (whole seconds, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub requests: u64,
    pub window: Duration,
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The plan's limit (`requests`).
    pub limit: u64,
    /// What is left in the current window after this decision.
    pub remaining: u64,
    /// Until the window is empty again (full quota): `RateLimit` `t`, `X-RateLimit-Reset`.
    pub reset: Duration,
    /// Refused only: until a request of this cost would be admitted (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// A clock in milliseconds since the Unix epoch; injectable so window logic is tested
/// without waiting.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

impl Decision {
    /// Adds `RateLimit-Policy`, `RateLimit`, `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
    /// `X-RateLimit-Reset` and, when refused, `Retry-After` (whole seconds, at least 1,
    /// rounded up).
    pub fn write_headers(&self, plan: &str, limit: &Limit, headers: &mut HeaderMap) {
        let _ = (plan, limit, headers);
        todo!("ratelimit helper")
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1), for refused decisions.
    pub fn retry_after_secs(&self) -> Option<u64> {
        todo!("ratelimit helper")
    }
}
