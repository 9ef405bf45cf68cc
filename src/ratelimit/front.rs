//! The limiter the proxy calls: `limits.backend` picks the in-process or the shared
//! (Redis) window, and `on_store_error` decides when the store cannot (docs/reference.md §4.4).
//!
//! With `backend = "redis"` every decision comes from the Redis script while Redis
//! answers. When it does not (a timeout, an error, or the client's circuit breaker open,
//! which fails at once so that no request waits on a Redis known to be down), the
//! request's `on_store_error` applies and is counted in
//! `keygate_ratelimit_store_fallback_total{action}`:
//!
//! - `local`: a fallback in-process limiter of this replica alone, with the plan's window
//!   and `ceil(requests / limits.replicas)` requests, so that N replicas together admit
//!   about the plan's limit. Its counters are separate from the `backend = "local"` ones
//!   and start empty: what Redis counted before the outage is not known here (docs/reference.md §4.4
//!   leaves decisions taken without the store out of the guarantee). The decision's
//!   `limit` is still the plan's (the headers advertise the plan, [`Decision::write_headers`]
//!   takes the plan's [`Limit`]); its `remaining`, `reset` and `retry_after` are this
//!   replica's.
//! - `allow`: admitted, with no decision: the response carries no rate-limit headers.
//!   Nothing was counted, and a made-up `remaining` would tell the client something
//!   false; no headers is the honest "not limited right now".
//! - `deny`: the caller answers 503 with `Retry-After: 1` ([`STORE_DOWN_RETRY_AFTER`]):
//!   the client comes back soon, by when the breaker's probe may have found Redis again.
//!
//! Decisions are shared again as soon as a call succeeds: the client's breaker probes
//! Redis while open, and nothing here remembers the outage.

use std::sync::Arc;
use std::time::Duration;

use super::decision::Decision;
use super::local::LocalLimiter;
use super::redis::RedisLimiter;
use super::scope::KeyScope;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy::{Limit, Rule};
use crate::settings::{LimitBackend, Limits, OnStoreError};

/// `Retry-After` of the 503 answered under `on_store_error = "deny"`: one second.
pub const STORE_DOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    /// Decided by the configured backend (the Redis script, or the local limiter for
    /// `backend = "local"`): admit or answer 429, with these headers.
    Decided(Decision),
    /// The store did not answer; `action` is the `on_store_error` applied:
    /// - `Local`: `decision` is `Some`, from this replica's fallback limiter (admit or
    ///   429 as usual; the headers advertise the plan's limit);
    /// - `Allow`: `decision` is `None`: admit, with no rate-limit headers;
    /// - `Deny`: `decision` is `None`: answer 503 with `Retry-After`
    ///   ([`STORE_DOWN_RETRY_AFTER`]).
    Fallback { action: OnStoreError, decision: Option<Decision> },
}

impl LimitOutcome {
    /// Whether the request goes on to the upstream.
    pub fn allowed(&self) -> bool {
        match self {
            LimitOutcome::Decided(d) => d.allowed,
            LimitOutcome::Fallback { action: OnStoreError::Local, decision } => decision.is_some_and(|d| d.allowed),
            LimitOutcome::Fallback { action: OnStoreError::Allow, .. } => true,
            LimitOutcome::Fallback { action: OnStoreError::Deny, .. } => false,
        }
    }

    /// The decision whose headers the response carries, if any.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            LimitOutcome::Decided(d) => Some(d),
            LimitOutcome::Fallback { decision, .. } => decision.as_ref(),
        }
    }

    /// Whether the store was needed and could not decide, and the policy is to refuse
    /// (503 with `Retry-After:` [`STORE_DOWN_RETRY_AFTER`]).
    pub fn store_unavailable(&self) -> bool {
        matches!(self, LimitOutcome::Fallback { action: OnStoreError::Deny, .. })
    }
}

/// The rate limiter of one replica: the configured backend and the `on_store_error`
/// fallbacks.
#[derive(Debug)]
pub struct Limiter {
    backend: LimitBackend,
    /// `limits.replicas`, at least 1.
    replicas: u64,
    /// `limits.on_store_error`: what [`Limiter::on_store_error`] reports.
    on_store_error: OnStoreError,
    /// Present with `backend = "redis"`.
    redis: Option<RedisLimiter>,
    /// `backend = "local"`.
    local: LocalLimiter,
    /// `on_store_error = "local"`: counters of this replica alone while Redis is away.
    fallback: LocalLimiter,
    metrics: Arc<Metrics>,
}

impl Limiter {
    /// A limiter for `limits`. `redis` is the shared limiter for `backend = "redis"`
    /// (ignored for `backend = "local"`); `backend = "redis"` without one treats every
    /// check as a store failure. `clock` drives the in-process limiters (the Redis
    /// script uses Redis's clock).
    pub fn new(limits: &Limits, redis: Option<RedisLimiter>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Limiter {
            backend: limits.backend,
            replicas: u64::from(limits.replicas.max(1)),
            on_store_error: limits.on_store_error,
            redis: if limits.backend == LimitBackend::Redis { redis } else { None },
            local: LocalLimiter::new(clock.clone()),
            fallback: LocalLimiter::new(clock),
            metrics,
        }
    }

    /// `limits.on_store_error`, for routes that do not override it.
    pub fn on_store_error(&self) -> OnStoreError {
        self.on_store_error
    }

    /// Decides `cost` requests of `tenant` under its plan's `limit`, applying
    /// `on_store_error` (the route's, or [`Limiter::on_store_error`]) if the store cannot
    /// decide. Never waits longer than `redis.timeout` on Redis, and not at all while the
    /// client's breaker is open.
    pub async fn check(&self, tenant: &str, limit: &Limit, cost: u64, on_store_error: OnStoreError) -> LimitOutcome {
        self.check_rules(tenant, &[Rule::window(*limit)], cost, on_store_error).await
    }

    /// [`Limiter::check`] against every limit of a plan (`rules`, in order), decided in one
    /// atomic step: admitted only if each has room, then counted in each, a refusal
    /// counted in none. The decision's `index` says which limit it describes.
    pub async fn check_rules(
        &self,
        tenant: &str,
        rules: &[Rule],
        cost: u64,
        on_store_error: OnStoreError,
    ) -> LimitOutcome {
        self.check_scoped(tenant, None, rules, cost, on_store_error).await
    }

    /// [`Limiter::check_rules`] with the rules `scope` covers counted for its key alone (a
    /// key's own limits), in the same atomic step.
    pub async fn check_scoped(
        &self,
        tenant: &str,
        scope: Option<KeyScope<'_>>,
        rules: &[Rule],
        cost: u64,
        on_store_error: OnStoreError,
    ) -> LimitOutcome {
        if self.backend == LimitBackend::Local {
            return LimitOutcome::Decided(self.local.check_scoped(tenant, scope, rules, cost));
        }
        if let Some(redis) = &self.redis {
            match redis.check_scoped(tenant, scope, rules, cost).await {
                Ok(decision) => return LimitOutcome::Decided(decision),
                Err(e) => tracing::debug!(error = %e, "rate limit store failed; applying on_store_error"),
            }
        }
        self.fall_back(tenant, scope, rules, cost, on_store_error)
    }

    /// The count of `tenant`'s calendar quota `rule` as this process holds it, with
    /// `backend = "local"`; `None` with Redis (the count is in Redis).
    pub fn local_quota_count(&self, tenant: &str, rule: &Rule) -> Option<u64> {
        (self.backend == LimitBackend::Local).then(|| self.local.quota_count(tenant, rule))
    }

    fn fall_back(
        &self,
        tenant: &str,
        scope: Option<KeyScope<'_>>,
        rules: &[Rule],
        cost: u64,
        action: OnStoreError,
    ) -> LimitOutcome {
        self.metrics.store_fallback(action);
        let decision = match action {
            OnStoreError::Local => {
                let shares: Vec<Rule> = rules
                    .iter()
                    .map(|rule| Rule { requests: rule.requests.div_ceil(self.replicas), kind: rule.kind })
                    .collect();
                let mut decision = self.fallback.check_scoped(tenant, scope, &shares, cost);
                decision.limit = rules.get(decision.index).map_or(decision.limit, |rule| rule.requests);
                Some(decision)
            }
            OnStoreError::Allow | OnStoreError::Deny => None,
        };
        LimitOutcome::Fallback { action, decision }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limits(backend: LimitBackend, replicas: u32) -> Limits {
        Limits { backend, on_store_error: OnStoreError::Local, replicas, concurrency_ttl: Duration::from_secs(10) }
    }

    fn limit(requests: u64, secs: u64) -> Limit {
        Limit { requests, window: Duration::from_secs(secs) }
    }

    fn fallbacks(metrics: &Metrics, action: &str) -> u64 {
        let line = format!("keygate_ratelimit_store_fallback_total{{action=\"{action}\"}} ");
        let text = metrics.encode();
        let value = text.lines().find_map(|l| l.strip_prefix(line.as_str())).expect("fallback counter");
        value.trim().parse().expect("a count")
    }

    #[tokio::test]
    async fn local_backend_decides_locally() {
        let metrics = Arc::new(Metrics::new());
        let l = Limiter::new(&limits(LimitBackend::Local, 3), None, Arc::new(ManualClock::new(0)), metrics.clone());
        let lim = limit(2, 60);
        for left in [1, 0] {
            let outcome = l.check("t", &lim, 1, OnStoreError::Deny).await;
            assert_eq!(outcome.decision().map(|d| d.remaining), Some(left));
            assert!(matches!(outcome, LimitOutcome::Decided(_)));
            assert!(outcome.allowed());
        }
        assert!(!l.check("t", &lim, 1, OnStoreError::Deny).await.allowed());
        assert_eq!(fallbacks(&metrics, "deny"), 0);
    }

    #[tokio::test]
    async fn redis_backend_without_a_store_applies_on_store_error() {
        let metrics = Arc::new(Metrics::new());
        let l = Limiter::new(&limits(LimitBackend::Redis, 3), None, Arc::new(ManualClock::new(0)), metrics.clone());
        let lim = limit(10, 60);

        // ceil(10 / 3) = 4 per replica, advertised as the plan's 10.
        for left in (0..4).rev() {
            let outcome = l.check("t", &lim, 1, OnStoreError::Local).await;
            let LimitOutcome::Fallback { action: OnStoreError::Local, decision: Some(d) } = outcome else {
                panic!("{outcome:?}")
            };
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (10, left));
        }
        let outcome = l.check("t", &lim, 1, OnStoreError::Local).await;
        assert!(!outcome.allowed());
        assert!(outcome.decision().and_then(|d| d.retry_after).is_some());
        assert_eq!(fallbacks(&metrics, "local"), 5);

        let outcome = l.check("t", &lim, 1, OnStoreError::Allow).await;
        assert_eq!(outcome, LimitOutcome::Fallback { action: OnStoreError::Allow, decision: None });
        assert!(outcome.allowed() && !outcome.store_unavailable());
        assert_eq!(fallbacks(&metrics, "allow"), 1);

        let outcome = l.check("t", &lim, 1, OnStoreError::Deny).await;
        assert_eq!(outcome, LimitOutcome::Fallback { action: OnStoreError::Deny, decision: None });
        assert!(!outcome.allowed() && outcome.store_unavailable());
        assert_eq!(fallbacks(&metrics, "deny"), 1);
        assert_eq!(l.on_store_error(), OnStoreError::Local);
    }
}
