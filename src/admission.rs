//! Admission: the rules a request must pass before it may go upstream — key,
//! authentication, plan, scopes, declared body size, rate limit (docs/reference.md §4.1–4.4) — and the
//! proof that it passed them.
//!
//! The proof types keep the order honest, as linkerd's permits do: only
//! [`Gate::authenticate`] makes an [`Authenticated`], only [`Gate::authorize`] turns one
//! into an [`Authorized`], and only [`Gate::admit`] makes the [`Admission`] that the
//! upstream side requires ([`crate::upstream::Outbound::new`] takes one). Their fields
//! are private to this module, so nothing else in the crate can make one: a request that
//! skipped a phase does not compile.

use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue};

use crate::access_log::AccessLog;
use crate::auth::{Authentication, Authenticator};
use crate::bearer::{self, BearerError};
use crate::clock::Clock;
use crate::error::{AuthFailure, AuthResult, Refusal};
use crate::keys::{self, Principal};
use crate::metrics::Metrics;
use crate::policy::{Policy, Route, RouteAuth, RouteMode};
use crate::ratelimit::front::{Limiter, STORE_DOWN_RETRY_AFTER};
use crate::ratelimit::{Decision, Limit};
use crate::settings::OnStoreError;

/// A key that authenticated.
pub struct Authenticated(Principal);

/// A principal cleared by plan and scopes, with its rate-limit decision.
pub struct Authorized {
    principal: Principal,
    rate: Option<RateOutcome>,
}

/// The limiter's decision and what it was made against, for the response headers.
#[derive(Clone)]
pub struct RateOutcome {
    plan: String,
    limit: Limit,
    decision: Decision,
}

impl RateOutcome {
    /// `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` (and `Retry-After` on a refusal).
    pub fn write_headers(&self, headers: &mut HeaderMap<HeaderValue>) {
        self.decision.write_headers(&self.plan, &self.limit, headers);
    }
}

/// A request cleared to go upstream: the only thing [`crate::upstream::Outbound`] is
/// made from.
pub struct Admission(Admitted);

enum Admitted {
    /// A public (`auth = "none"`) route, or a forwarded CORS preflight.
    Public,
    Authorized(Authorized),
    /// A shadow-mode route: forwarded whatever the decision; the principal if the key was
    /// valid, and the rate decision if the limiter was reached.
    Shadow {
        principal: Option<Principal>,
        rate: Option<RateOutcome>,
    },
}

impl Admission {
    /// Whose request this is: the identity headers are written from it.
    pub fn principal(&self) -> Option<&Principal> {
        match &self.0 {
            Admitted::Public => None,
            Admitted::Authorized(authorized) => Some(&authorized.principal),
            Admitted::Shadow { principal, .. } => principal.as_ref(),
        }
    }

    /// The principal (for the access line) and the rate decision (for the response
    /// headers), once the request has been sent.
    pub fn into_parts(self) -> (Option<Principal>, Option<RateOutcome>) {
        match self.0 {
            Admitted::Public => (None, None),
            Admitted::Authorized(Authorized { principal, rate }) => (Some(principal), rate),
            Admitted::Shadow { principal, rate } => (principal, rate),
        }
    }
}

/// A refusal, with what was learnt before it (for the access line and the headers).
pub struct Denial {
    pub refusal: Refusal,
    pub principal: Option<Principal>,
    pub rate: Option<RateOutcome>,
}

impl From<Refusal> for Box<Denial> {
    fn from(refusal: Refusal) -> Self {
        Box::new(Denial { refusal, principal: None, rate: None })
    }
}

/// What the admission rules read besides the policy: the keys, the limiter, the clock,
/// and where decisions are counted.
pub struct Gate {
    keys: Arc<Authenticator>,
    limiter: Limiter,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// `limits.on_store_error`, unless the route overrides it.
    on_store_error: OnStoreError,
}

impl Gate {
    pub fn new(
        keys: Arc<Authenticator>,
        limiter: Limiter,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        on_store_error: OnStoreError,
    ) -> Gate {
        Gate { keys, limiter, clock, metrics, on_store_error }
    }

    /// The key service the gate authenticates with.
    pub fn keys(&self) -> &Arc<Authenticator> {
        &self.keys
    }

    /// Phases 4–7: decides whether the request may go upstream. A public route or a
    /// forwarded preflight (`public`) is admitted as it is; otherwise key →
    /// authentication → plan → scopes → body size → rate limit, counted in
    /// `auth_decisions_total`. On a shadow-mode route a refusal is logged and recorded
    /// in `record`, and the request admitted all the same.
    pub async fn admit(
        &self,
        policy: &Policy,
        route: &Route,
        headers: &HeaderMap,
        public: bool,
        record: &mut AccessLog,
    ) -> Result<Admission, Box<Denial>> {
        if public || route.auth == RouteAuth::None {
            return Ok(Admission(Admitted::Public));
        }
        let decided = match self.authenticate(headers).await {
            Ok(authenticated) => self.authorize(policy, route, headers, authenticated).await,
            Err(denial) => Err(denial),
        };
        match decided {
            Ok(authorized) => {
                self.metrics.auth_decision(AuthResult::Ok, record.mode);
                Ok(Admission(Admitted::Authorized(authorized)))
            }
            Err(denial) => {
                self.metrics.auth_decision(denial.refusal.auth_result(), record.mode);
                if route.mode != RouteMode::Shadow {
                    return Err(denial);
                }
                record.decision = denial.refusal.decision();
                tracing::info!(
                    request_id = %record.request_id,
                    route = %route.prefix,
                    decision = record.decision,
                    "shadow mode: request would have been refused; forwarded"
                );
                Ok(Admission(Admitted::Shadow { principal: denial.principal, rate: denial.rate }))
            }
        }
    }

    /// Key → authentication. An outage never looks like a bad key (docs/reference.md §4.4): 503, not
    /// 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, Box<Denial>> {
        let secret = extract_key(headers).map_err(Refusal::Unauthorized)?;
        match self.keys.authenticate(&secret, self.clock.now_utc()).await {
            Ok(Authentication::Valid(principal)) => Ok(Authenticated(principal)),
            Ok(Authentication::Invalid(failure)) => Err(Refusal::Unauthorized(failure).into()),
            Err(e) => {
                tracing::warn!(error = %e, "key store unavailable for a key not in the cache");
                Err(Refusal::Unavailable { retry_after: 1 }.into())
            }
        }
    }

    /// Plan (exists, has API access), scopes, declared body size, then the rate limit.
    pub async fn authorize(
        &self,
        policy: &Policy,
        route: &Route,
        headers: &HeaderMap,
        Authenticated(principal): Authenticated,
    ) -> Result<Authorized, Box<Denial>> {
        let deny = |refusal: Refusal, principal: &Principal| {
            Box::new(Denial { refusal, principal: Some(principal.clone()), rate: None })
        };
        let Some(plan) = policy.plans.get(&principal.plan) else {
            tracing::warn!(plan = %principal.plan, tenant = %principal.tenant, "tenant's plan is not in the current policy");
            return Err(deny(Refusal::UnknownPlan { plan: principal.plan.clone() }, &principal));
        };
        if !plan.api_access {
            return Err(deny(Refusal::NoApiAccess { plan: plan.name.clone() }, &principal));
        }
        if let RouteAuth::Key { scopes } = &route.auth {
            if let Some(missing) = scopes.iter().find(|s| !principal.scopes.contains(s)) {
                return Err(deny(Refusal::InsufficientScope { scope: missing.clone() }, &principal));
            }
        }
        if let (Some(max), Some(declared)) = (route.max_body_bytes, content_length(headers)) {
            if declared > max {
                return Err(deny(Refusal::PayloadTooLarge { limit: max }, &principal));
            }
        }
        let Some(limit) = plan.limit else {
            return Ok(Authorized { principal, rate: None });
        };
        let on_store_error = route.on_store_error.unwrap_or(self.on_store_error);
        let outcome = self.limiter.check(&principal.tenant, &limit, route.cost, on_store_error).await;
        if outcome.store_unavailable() {
            // `on_store_error = "deny"` while the shared store is unreachable.
            return Err(deny(Refusal::Unavailable { retry_after: STORE_DOWN_RETRY_AFTER.as_secs() }, &principal));
        }
        let Some(decision) = outcome.decision().copied() else {
            // `on_store_error = "allow"`: admitted, nothing counted, no headers to give.
            return Ok(Authorized { principal, rate: None });
        };
        let rate = RateOutcome { plan: plan.name.clone(), limit, decision };
        if decision.allowed {
            Ok(Authorized { principal, rate: Some(rate) })
        } else {
            let retry_after = decision.retry_after_secs().unwrap_or(1);
            Err(Box::new(Denial {
                refusal: Refusal::RateLimited {
                    requests: limit.requests,
                    window_secs: limit.window.as_secs(),
                    retry_after,
                },
                principal: Some(principal),
                rate: Some(rate),
            }))
        }
    }
}

/// The API key of `Authorization: Bearer <key>`. No header, or another scheme, is a
/// missing key; anything else unusable is a malformed one.
fn extract_key(headers: &HeaderMap) -> Result<keys::Secret, AuthFailure> {
    let token = bearer::token(headers).map_err(|e| match e {
        BearerError::Missing | BearerError::OtherScheme => AuthFailure::Missing,
        BearerError::Duplicated | BearerError::NotText | BearerError::NoScheme | BearerError::EmptyToken => {
            AuthFailure::Malformed
        }
    })?;
    keys::parse_secret(token).map_err(|_| AuthFailure::Malformed)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}
