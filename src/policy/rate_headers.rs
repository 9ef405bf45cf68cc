//! The rate-limit response header values that belong to a plan rather than to a request
//! ([`PlanHeaders`]), built once when the policy is compiled, and the formatting helpers
//! the limiter's per-request headers share with them (`crate::ratelimit`'s `Decision`).

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;

use super::limit::{Limit, LimitKind, PlanLimit, Rule};

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
///
/// A plan written the legacy way (one limit: `requests_per_minute`, or `requests` and
/// `window`) names its plan in the headers, as keygate always did (`"pro";q=300;w=60`); a
/// plan with `limits = [...]` names each limit (`"burst";q=10;w=1, "minute";q=300;w=60`).
#[derive(Debug, PartialEq, Eq)]
pub struct PlanHeaders {
    /// The plan's limits, in order (what the limiter decides against).
    rules: Box<[Rule]>,
    /// The limits' names (the 429's `"limit"`).
    names: Box<[Box<str>]>,
    /// Per limit: its name in the headers as an RFC 8941 sf-string (quoted, `"` and `\`
    /// escaped), or `None` if it holds a character an sf-string cannot carry (only
    /// printable ASCII can). Policy validation only lets ASCII identifiers through; this
    /// is belt and braces.
    sf_names: Box<[Option<Box<[u8]>>]>,
    /// Per limit: `X-RateLimit-Limit`, its `requests`.
    requests: Box<[HeaderValue]>,
    /// `RateLimit-Policy`, every limit of the plan: the one value, or, for a plan with a
    /// monthly quota (whose `w` is the length of the current month), one per length of a
    /// month from 28 to 31 days.
    policy: [Option<HeaderValue>; 4],
    /// Whether the plan has a monthly quota (`policy` depends on the month).
    monthly: bool,
    /// Whether the plan wrote its one limit the legacy way (the headers name the plan).
    legacy: bool,
    /// Bit `i`: limit `i` is a key's own override, counted for that key alone (0 for a
    /// plan's headers; see [`crate::ratelimit::KeyScope`]).
    key_scoped: u64,
}

/// Seconds in a day.
const DAY_SECS: u64 = 86_400;

impl PlanHeaders {
    /// The values for plan `plan` with the single, legacy limit `limit`.
    pub fn new(plan: &str, limit: Limit) -> PlanHeaders {
        let limits = [PlanLimit { name: super::limit::LEGACY_LIMIT_NAME.to_string(), rule: Rule::window(limit) }];
        PlanHeaders::with_limits(plan, &limits, true)
    }

    /// The values for plan `plan` with `limits` (at least one). `legacy`: the plan wrote
    /// its one limit the legacy way, so the headers carry the plan's name.
    pub fn with_limits(plan: &str, limits: &[PlanLimit], legacy: bool) -> PlanHeaders {
        let sf = |name: &str| {
            sf_string_len(name).map(|len| {
                let mut out = Vec::with_capacity(len);
                push_sf_string(&mut out, name);
                out.into_boxed_slice()
            })
        };
        let sf_names: Box<[Option<Box<[u8]>>]> =
            limits.iter().map(|limit| sf(if legacy { plan } else { limit.name.as_str() })).collect();
        let monthly = limits.iter().any(|limit| matches!(limit.rule.kind, LimitKind::Month { .. }));
        let policy_for = |month_days: u64| {
            let mut policy = Vec::new();
            for (limit, name) in limits.iter().zip(sf_names.iter()) {
                let name = name.as_deref()?;
                let w = match limit.rule.kind {
                    LimitKind::Window(window) => ceil_secs(window),
                    LimitKind::Day => DAY_SECS,
                    LimitKind::Month { .. } => month_days * DAY_SECS,
                };
                if !policy.is_empty() {
                    policy.extend_from_slice(b", ");
                }
                policy.extend_from_slice(name);
                let (mut q, mut w_text) = (itoa::Buffer::new(), itoa::Buffer::new());
                for part in [";q=", q.format(limit.rule.requests), ";w=", w_text.format(w)] {
                    policy.extend_from_slice(part.as_bytes());
                }
            }
            into_header_value(policy)
        };
        let policy = if monthly {
            [policy_for(28), policy_for(29), policy_for(30), policy_for(31)]
        } else {
            [policy_for(0), None, None, None]
        };
        PlanHeaders {
            rules: limits.iter().map(|limit| limit.rule).collect(),
            names: limits.iter().map(|limit| limit.name.as_str().into()).collect(),
            sf_names,
            requests: limits
                .iter()
                .map(|limit| header_number(itoa::Buffer::new().format(limit.rule.requests), limit.rule.requests))
                .collect(),
            policy,
            monthly,
            legacy,
            key_scoped: 0,
        }
    }

    /// The same values, with the limits of bit mask `mask` counted for the request's key
    /// alone (a key's own overrides).
    pub fn with_key_scoped(mut self, mask: u64) -> PlanHeaders {
        self.key_scoped = mask;
        self
    }

    /// Bit `i`: limit `i` is counted for the request's key alone (0: all the tenant's).
    pub fn key_scoped(&self) -> u64 {
        self.key_scoped
    }

    /// Whether `RateLimit-Policy` depends on the month (a plan with a monthly quota).
    pub fn monthly(&self) -> bool {
        self.monthly
    }

    /// Whether the plan wrote its one limit the legacy way (`requests_per_minute`, or
    /// `requests` and `window`): its headers name the plan, its 429 message is the one
    /// keygate always gave.
    pub fn legacy(&self) -> bool {
        self.legacy
    }

    /// The plan's limits, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The name of limit `index` (the 429's `"limit"`).
    pub fn limit_name(&self, index: usize) -> &str {
        self.names.get(index).map_or(super::limit::LEGACY_LIMIT_NAME, |name| name)
    }

    /// The name of limit `index` in the headers as an sf-string, if it can be one.
    pub fn sf_name(&self, index: usize) -> Option<&[u8]> {
        self.sf_names.get(index)?.as_deref()
    }

    /// `RateLimit-Policy` at `now_ms` (the length of the current month, for a plan with a
    /// monthly quota), if every name can be an sf-string.
    pub fn policy_value(&self, now_ms: u64) -> Option<&HeaderValue> {
        let i = if self.monthly { self.month_days(now_ms).saturating_sub(28).min(3) as usize } else { 0 };
        self.policy[i].as_ref()
    }

    /// The days of the monthly quota's current period at `now_ms` (0 without one).
    fn month_days(&self, now_ms: u64) -> u64 {
        self.rules
            .iter()
            .find_map(|rule| rule.period(now_ms).filter(|_| matches!(rule.kind, LimitKind::Month { .. })))
            .map_or(0, |(start, end)| (end - start) / (DAY_SECS * 1_000))
    }

    /// `X-RateLimit-Limit` of limit `index`.
    pub fn requests_value(&self, index: usize) -> Option<&HeaderValue> {
        self.requests.get(index)
    }
}
