//! The limiter's [`Decision`] for one request, and the response headers every request
//! that reached the limiter carries (draft-ietf-httpapi-ratelimit-headers, and the legacy
//! `X-RateLimit-*`).
//! What a plan's headers share across requests ([`PlanHeaders`], in the policy) is built
//! once per policy load; a request formats only its own figures.

use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::HeaderMap;

use crate::clock::Clock;
pub use crate::policy::PlanHeaders;
use crate::policy::{ceil_secs, header_number as number, into_header_value as into_value};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy `X-RateLimit-Limit`: the `requests` of the limit the decision describes.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds until the full quota is back (a delta, not a time).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The `requests` of the limit this decision describes: the limit that refused (the
    /// one whose room comes back last, if several did), or, when admitted, the one with
    /// the least room left.
    pub limit: u64,
    /// Which of the plan's limits that is (its position in the plan's `limits`; 0 for a
    /// plan with one limit).
    pub index: usize,
    /// What is left of that limit after this decision.
    pub remaining: u64,
    /// Until the window is empty again (full quota): `RateLimit` `t`, `X-RateLimit-Reset`.
    pub reset: Duration,
    /// Refused only: until a request of this cost would be admitted (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Adds `RateLimit-Policy`, `RateLimit`, `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
    /// `X-RateLimit-Reset` and, when refused, `Retry-After` (whole seconds, at least 1,
    /// rounded up).
    ///
    /// `RateLimit-Policy` lists every limit of the plan; `RateLimit` and `X-RateLimit-*`
    /// describe the decision's limit (`index`). `RateLimit-Policy` and
    /// `X-RateLimit-Limit` are the plan's precomputed values, so a decision taken under
    /// the reduced per-replica limit of the `local` fallback still advertises the plan. Existing headers of
    /// these names are replaced. A header whose value cannot be built (a plan name outside
    /// printable ASCII) is left out; this never panics.
    pub fn write_headers(&self, plan: &PlanHeaders, headers: &mut HeaderMap) {
        self.write_headers_at(plan, crate::clock::SystemClock.now_millis(), headers);
    }

    /// [`Decision::write_headers`] at `now_ms` (ms since the epoch, UTC): the month whose
    /// length a monthly quota's `w` in `RateLimit-Policy` gives.
    pub fn write_headers_at(&self, plan: &PlanHeaders, now_ms: u64, headers: &mut HeaderMap) {
        let reset = ceil_secs(self.reset);
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(self.remaining), t.format(reset));
        if let Some(policy) = plan.policy_value(now_ms) {
            headers.insert(RATELIMIT_POLICY, policy.clone());
        }
        if let Some(name) = plan.sf_name(self.index) {
            // One exactly sized buffer, taken over by the header value.
            let mut current = Vec::with_capacity(name.len() + 6 + r.len() + t.len());
            current.extend_from_slice(name);
            for part in [";r=", r, ";t=", t] {
                current.extend_from_slice(part.as_bytes());
            }
            if let Some(v) = into_value(current) {
                headers.insert(RATELIMIT, v);
            }
        }
        match plan.requests_value(self.index) {
            Some(requests) => headers.insert(X_RATELIMIT_LIMIT, requests.clone()),
            None => headers.insert(X_RATELIMIT_LIMIT, number(itoa::Buffer::new().format(self.limit), self.limit)),
        };
        headers.insert(X_RATELIMIT_REMAINING, number(r, self.remaining));
        headers.insert(X_RATELIMIT_RESET, number(t, reset));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, number(itoa::Buffer::new().format(secs), secs));
        }
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1), for refused decisions;
    /// `None` when admitted. A refused decision without `retry_after` (never built by the
    /// limiters here) falls back to `reset`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        Some(ceil_secs(self.retry_after.unwrap_or(self.reset)).max(1))
    }
}

#[cfg(test)]
mod tests;
