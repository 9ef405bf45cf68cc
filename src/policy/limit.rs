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

/// The name a plan's limit carries when the plan writes it the legacy way
/// (`requests_per_minute`, or `requests` and `window`): the 429's `"limit"` field.
pub const LEGACY_LIMIT_NAME: &str = "default";

/// A milliseconds-per-day constant for the calendar quotas.
const DAY_MS: u64 = 86_400_000;

/// What a limit counts over: a sliding window, or a calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A sliding window of this length (whole seconds, at least 1).
    Window(Duration),
    /// A calendar day, from 00:00 UTC.
    Day,
    /// A calendar month, from 00:00 UTC on its `reset_day` (1 to 31; in a shorter month,
    /// its last day stands in).
    Month { reset_day: u8 },
}

/// One limit of a plan as the limiters apply it: `requests` per window or period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub requests: u64,
    pub kind: LimitKind,
}

impl Rule {
    /// The sliding window of `limit`.
    pub fn window(limit: Limit) -> Rule {
        Rule { requests: limit.requests, kind: LimitKind::Window(limit.window) }
    }

    /// The sliding-window limit, if it is one.
    pub fn as_window(&self) -> Option<Limit> {
        match self.kind {
            LimitKind::Window(window) => Some(Limit { requests: self.requests, window }),
            LimitKind::Day | LimitKind::Month { .. } => None,
        }
    }

    /// The calendar period (start, end) in ms since the epoch that holds `now_ms`, for a
    /// calendar quota; `None` for a window.
    pub fn period(&self, now_ms: u64) -> Option<(u64, u64)> {
        match self.kind {
            LimitKind::Window(_) => None,
            LimitKind::Day => {
                let start = now_ms - now_ms % DAY_MS;
                Some((start, start.saturating_add(DAY_MS)))
            }
            LimitKind::Month { reset_day } => Some(month_period(now_ms, reset_day)),
        }
    }
}

/// A limit of a plan: its name (unique in the plan) and its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLimit {
    pub name: String,
    pub rule: Rule,
}

impl PlanLimit {
    /// `name: N requests per …`, for people (`keygate explain`).
    pub fn describe(&self) -> String {
        let per = match self.rule.kind {
            LimitKind::Window(window) => format!("{} (sliding window)", crate::duration::format(window)),
            LimitKind::Day => "calendar day (UTC, resets at 00:00)".to_string(),
            LimitKind::Month { reset_day: 1 } => "calendar month (UTC, resets on the 1st at 00:00)".to_string(),
            LimitKind::Month { reset_day } => {
                format!("calendar month (UTC, resets on day {reset_day} at 00:00, or a shorter month's last day)")
            }
        };
        format!("{}: {} requests per {per}", self.name, self.rule.requests)
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (H. Hinnant's
/// `days_from_civil`; the Redis script computes the same).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(y, m, d)` of day `z` since 1970-01-01 (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Days in month `m` of year `y`.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The day (since the epoch) month `m` of year `y` resets on: its `reset_day`, or its
/// last day if it is shorter.
fn reset_in(y: i64, m: u32, reset_day: u8) -> i64 {
    days_from_civil(y, m, u32::from(reset_day).clamp(1, days_in_month(y, m)))
}

/// The monthly period holding `now_ms`: from the latest reset at or before it to the next.
fn month_period(now_ms: u64, reset_day: u8) -> (u64, u64) {
    let today = i64::try_from(now_ms / DAY_MS).unwrap_or(i64::MAX / 2);
    let (y, m, _) = civil_from_days(today);
    let next = |y: i64, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let prev = |y: i64, m: u32| if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    let this = reset_in(y, m, reset_day);
    let (start, end) = if today >= this {
        let (ny, nm) = next(y, m);
        (this, reset_in(ny, nm, reset_day))
    } else {
        let (py, pm) = prev(y, m);
        (reset_in(py, pm, reset_day), this)
    };
    let ms = |days: i64| u64::try_from(days).unwrap_or(0).saturating_mul(DAY_MS);
    (ms(start), ms(end))
}
