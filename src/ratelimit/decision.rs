//! The limiter's [`Decision`] for one request, and the response headers every request
//! that reached the limiter carries (draft-ietf-httpapi-ratelimit-headers, and the legacy
//! `X-RateLimit-*`).
//! What a plan's headers share across requests ([`PlanHeaders`]) is built once per
//! policy load; a request formats only its own figures.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::HeaderMap;

use crate::policy::Limit;

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

/// Whole seconds, rounded up: a client told to wait `t` must not come back early.
fn ceil_secs(d: Duration) -> u64 {
    // Saturating: `Duration::MAX` has a fraction, and one more second would overflow.
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// The length of `plan` as an RFC 8941 sf-string, or `None` if it cannot be one.
fn sf_string_len(plan: &str) -> Option<usize> {
    let mut len = plan.len() + 2;
    for &b in plan.as_bytes() {
        match b {
            b'"' | b'\\' => len += 1,
            b' '..=b'~' => {}
            _ => return None,
        }
    }
    Some(len)
}

/// Appends `plan` as an sf-string; it must have passed [`sf_string_len`].
fn push_sf_string(out: &mut Vec<u8>, plan: &str) {
    out.push(b'"');
    for &b in plan.as_bytes() {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A header value that takes over `bytes` (validated, not copied: no allocation when the
/// buffer is exactly full), or `None` if they are not a valid header value.
fn into_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

/// `n`, already formatted as `digits`, as a header value: one allocation, where
/// `HeaderValue::from(u64)` costs two.
fn number(digits: &str, n: u64) -> HeaderValue {
    HeaderValue::from_bytes(digits.as_bytes()).unwrap_or_else(|_| HeaderValue::from(n))
}

/// A plan's rate-limit header values that are the same for every request: built once
/// when the policy is loaded ([`crate::policy::Plan::rate_headers`]), so that a request
/// only formats what is its own (`r`, `t`, remaining, reset).
#[derive(Debug, PartialEq, Eq)]
pub struct PlanHeaders {
    limit: Limit,
    /// The plan's name as an RFC 8941 sf-string (quoted, `"` and `\` escaped), or `None`
    /// if it holds a character an sf-string cannot carry (only printable ASCII can).
    /// Policy validation only lets ASCII identifiers through; this is belt and braces.
    name: Option<Box<[u8]>>,
    /// `RateLimit-Policy`: `"plan";q=requests;w=window`.
    policy: Option<HeaderValue>,
    /// `X-RateLimit-Limit`: the plan's `requests`.
    requests: HeaderValue,
}

impl PlanHeaders {
    /// The values for plan `plan` with limit `limit`.
    pub fn new(plan: &str, limit: Limit) -> PlanHeaders {
        let mut q = itoa::Buffer::new();
        let q = q.format(limit.requests);
        let name = sf_string_len(plan).map(|len| {
            let mut name = Vec::with_capacity(len);
            push_sf_string(&mut name, plan);
            name.into_boxed_slice()
        });
        let policy = name.as_deref().and_then(|name| {
            let mut w = itoa::Buffer::new();
            let mut policy = name.to_vec();
            for part in [";q=", q, ";w=", w.format(ceil_secs(limit.window))] {
                policy.extend_from_slice(part.as_bytes());
            }
            into_value(policy)
        });
        PlanHeaders { limit, name, policy, requests: number(q, limit.requests) }
    }

    /// The plan's limit.
    pub fn limit(&self) -> Limit {
        self.limit
    }
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
        if let Some(policy) = &plan.policy {
            headers.insert(RATELIMIT_POLICY, policy.clone());
        }
        if let Some(name) = &plan.name {
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
        headers.insert(X_RATELIMIT_LIMIT, plan.requests.clone());
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
