//! The limiter's [`Decision`] for one request, and the response headers every request
//! that reached the limiter carries (draft-ietf-httpapi-ratelimit-headers, and the legacy
//! `X-RateLimit-*`).
//! What a plan's headers share across requests ([`PlanHeaders`], in the policy) is built
//! once per policy load; a request formats only its own figures.

use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::HeaderMap;

pub use crate::policy::PlanHeaders;
use crate::policy::{ceil_secs, header_number as number, into_header_value as into_value};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy `X-RateLimit-Limit`: the plan's `requests`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`: seconds until the full quota is back (a delta, not a time).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

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

impl Decision {
    /// Adds `RateLimit-Policy`, `RateLimit`, `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
    /// `X-RateLimit-Reset` and, when refused, `Retry-After` (whole seconds, at least 1,
    /// rounded up).
    ///
    /// `RateLimit-Policy` and `X-RateLimit-Limit` describe the plan's limit (`plan`'s), so
    /// a decision taken under the reduced per-replica limit of the `local` fallback still
    /// advertises the plan; they are the plan's precomputed values. Existing headers of
    /// these names are replaced. A header whose value cannot be built (a plan name outside
    /// printable ASCII) is left out; this never panics.
    pub fn write_headers(&self, plan: &PlanHeaders, headers: &mut HeaderMap) {
        let reset = ceil_secs(self.reset);
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(self.remaining), t.format(reset));
        if let Some(policy) = plan.policy_value() {
            headers.insert(RATELIMIT_POLICY, policy.clone());
        }
        if let Some(name) = plan.sf_name() {
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
        headers.insert(X_RATELIMIT_LIMIT, plan.requests_value().clone());
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
