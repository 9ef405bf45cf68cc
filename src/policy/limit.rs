//! A plan's rate limit, and the sub-window geometry every limiter applies to it (so that
//! the in-process and the Redis limiters agree on the boundaries, see
//! [`crate::ratelimit`]).

use std::time::Duration;

/// Sub-windows per window: the memory per tenant (one counter each) and the worst-case
/// under-admission (1 / (SUB_WINDOWS + 1)).
pub const SUB_WINDOWS: u64 = 20;

/// `requests` per `window` (whole seconds, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub requests: u64,
    pub window: Duration,
}

impl Limit {
    /// The length of one sub-window in milliseconds: `window / SUB_WINDOWS`, at least 1 ms.
    /// Exact for whole-second windows; a window that is not a multiple of
    /// `SUB_WINDOWS` ms is rounded up (a longer window only ever refuses more). Every
    /// limiter must use this, so that all of them agree on the sub-window boundaries.
    pub fn sub_window_millis(&self) -> u64 {
        let window = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        window.div_ceil(SUB_WINDOWS).max(1)
    }

    /// The window in milliseconds as the limiters apply it:
    /// `SUB_WINDOWS × sub_window_millis()` (the configured window for whole seconds).
    pub fn window_millis(&self) -> u64 {
        self.sub_window_millis().saturating_mul(SUB_WINDOWS)
    }
}
