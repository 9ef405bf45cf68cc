//! The rate-limit response header values that belong to a plan rather than to a request
//! ([`PlanHeaders`]), built once when the policy is compiled, and the formatting helpers
//! the limiter's per-request headers share with them (`crate::ratelimit`'s `Decision`).

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;

use super::limit::Limit;

/// Whole seconds, rounded up: a client told to wait `t` must not come back early.
pub fn ceil_secs(d: Duration) -> u64 {
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
pub fn into_header_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

/// `n`, already formatted as `digits`, as a header value: one allocation, where
/// `HeaderValue::from(u64)` costs two.
pub fn header_number(digits: &str, n: u64) -> HeaderValue {
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
            into_header_value(policy)
        });
        PlanHeaders { limit, name, policy, requests: header_number(q, limit.requests) }
    }

    /// The plan's limit.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// The plan's name as an sf-string, if it can be one.
    pub fn sf_name(&self) -> Option<&[u8]> {
        self.name.as_deref()
    }

    /// `RateLimit-Policy`, if the name can be an sf-string.
    pub fn policy_value(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }

    /// `X-RateLimit-Limit`.
    pub fn requests_value(&self) -> &HeaderValue {
        &self.requests
    }
}
