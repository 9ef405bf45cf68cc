//! Admission: the rules a request must pass before it may go upstream — key,
//! authentication, plan, scopes, declared body size, rate limit (docs/reference.md §4.1–4.4), and the
//! budgets per client address (§4.7) — and the proof that it passed them.
//!
//! The proof types keep the order honest, as linkerd's permits do: only
//! [`Gate::authenticate`] makes an [`Authenticated`], only [`Gate::authorize`] turns one
//! into an [`Authorized`], and only [`Gate::admit`] makes the [`Admission`] that the
//! upstream side requires ([`crate::upstream::Outbound::new`] takes one). Their fields
//! are private to this module, so nothing else in the crate can make one: a request that
//! skipped a phase does not compile.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue};

use crate::access_log::AccessLog;
use crate::address_budget::AddressBudgets;
use crate::auth::{Authentication, Authenticator};
use crate::bearer;
use crate::clock::Clock;
use crate::error::{AuthFailure, AuthResult, LimitSpan, Refusal};
use crate::keys::{self, Principal};
use crate::metrics::Metrics;
use crate::policy::{LimitKind, Plan, Policy, Route, RouteAuth, RouteMode};
use crate::ratelimit::concurrency::{Acquired, Concurrency, Slot};
use crate::ratelimit::front::{Limiter, STORE_DOWN_RETRY_AFTER};
use crate::ratelimit::{Decision, KeyScope, PlanHeaders};
use crate::settings::{OnStoreError, Server};

/// A key that authenticated.
pub struct Authenticated(Principal);

/// A principal cleared by plan and scopes, with its rate-limit decision.
pub struct Authorized {
    principal: Principal,
    rate: Option<RateOutcome>,
    /// The tenant's concurrency slot, for a plan with `concurrency`.
    slot: Option<Slot>,
}

/// The limiter's decision and what it was made against, for the response headers.
#[derive(Clone)]
pub struct RateOutcome {
    /// The plan's precomputed header values (shared with the policy, not copied).
    plan: Arc<PlanHeaders>,
    decision: Decision,
    /// When it was decided (ms since the epoch, the gate's clock), for a plan with a
    /// monthly quota (`RateLimit-Policy` gives the month's length); 0 otherwise.
    at: u64,
}

impl RateOutcome {
    /// `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` (and `Retry-After` on a refusal).
    pub fn write_headers(&self, headers: &mut HeaderMap<HeaderValue>) {
        self.decision.write_headers_at(&self.plan, self.at, headers);
    }
}

/// A request cleared to go upstream: the only thing [`crate::upstream::Outbound`] is
/// made from.
pub struct Admission(Admitted);

enum Admitted {
    /// A public (`auth = "none"`) route.
    Public,
    /// A forwarded CORS preflight: it goes upstream with the CORS request headers only
    /// and no body (see [`crate::upstream::Outbound::new`]).
    Preflight,
    Authorized(Authorized),
    /// A shadow-mode route: forwarded whatever the decision; the principal if the key was
    /// valid, and the rate decision if the limiter was reached.
    Shadow {
        principal: Option<Principal>,
        rate: Option<RateOutcome>,
    },
}

impl Admission {
    /// A forwarded CORS preflight.
    pub fn is_preflight(&self) -> bool {
        matches!(self.0, Admitted::Preflight)
    }

    /// Whose request this is: the identity headers are written from it.
    pub fn principal(&self) -> Option<&Principal> {
        match &self.0 {
            Admitted::Public | Admitted::Preflight => None,
            Admitted::Authorized(authorized) => Some(&authorized.principal),
            Admitted::Shadow { principal, .. } => principal.as_ref(),
        }
    }

    /// The concurrency slot the request holds, if its plan has `concurrency`: it goes
    /// with the access-log record, which lives until the response body ends or the
    /// tunnel closes.
    pub fn take_slot(&mut self) -> Option<Slot> {
        match &mut self.0 {
            Admitted::Authorized(authorized) => authorized.slot.take(),
            _ => None,
        }
    }

    /// The principal (for the access line) and the rate decision (for the response
    /// headers), once the request has been sent.
    pub fn into_parts(self) -> (Option<Principal>, Option<RateOutcome>) {
        match self.0 {
            Admitted::Public | Admitted::Preflight => (None, None),
            Admitted::Authorized(Authorized { principal, rate, .. }) => (Some(principal), rate),
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
/// the budgets per client address, and where decisions are counted.
pub struct Gate {
    keys: Arc<Authenticator>,
    limiter: Limiter,
    /// Plans' `concurrency` caps (in-process unless [`Gate::with_concurrency`]).
    concurrency: Concurrency,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// `limits.on_store_error`, unless the route overrides it.
    on_store_error: OnStoreError,
    budgets: AddressBudgets,
}

impl Gate {
    pub fn new(
        keys: Arc<Authenticator>,
        limiter: Limiter,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        on_store_error: OnStoreError,
    ) -> Gate {
        let concurrency = Concurrency::local(metrics.clone());
        Gate { keys, limiter, concurrency, clock, metrics, on_store_error, budgets: AddressBudgets::off() }
    }

    /// The plans' `concurrency` caps, as `limits.backend` configures them (without this
    /// call: in-process).
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> Gate {
        self.concurrency = concurrency;
        self
    }

    /// The budgets per client address of `server` (`failed_auth_per_minute`,
    /// `preflights_per_minute`), on the gate's clock; the addresses are decided with
    /// `trusted_proxies`. Without this call there are none.
    pub fn with_address_budgets(mut self, server: &Server, trusted_proxies: &[ipnet::IpNet]) -> Gate {
        self.budgets = AddressBudgets::new(server, trusted_proxies, self.clock.clone());
        self
    }

    /// The rate limiter (the usage report reads the local quotas' counts from it).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The key service the gate authenticates with.
    pub fn keys(&self) -> &Arc<Authenticator> {
        &self.keys
    }

    /// Phases 4–7: decides whether the request from `peer` may go upstream. A forwarded
    /// preflight is admitted within its address's `preflights_per_minute`; a public route
    /// as it is; otherwise key → authentication (within the address's
    /// `failed_auth_per_minute`) → plan → scopes → body size → rate limit, counted in
    /// `auth_decisions_total`. On a shadow-mode route a refusal is logged and recorded
    /// in `record`, and the request admitted all the same.
    pub async fn admit(
        &self,
        policy: &Policy,
        route: &Route,
        headers: &HeaderMap,
        peer: IpAddr,
        preflight: bool,
        record: &mut AccessLog,
    ) -> Result<Admission, Box<Denial>> {
        if preflight {
            if let Some(budget) = &self.budgets.preflights {
                if let Err(retry_after) = budget.take(self.budgets.client_address(peer, headers)) {
                    self.metrics.preflight_limited();
                    let refusal = Refusal::PreflightLimited { retry_after };
                    if route.mode != RouteMode::Shadow {
                        return Err(refusal.into());
                    }
                    shadow_refusal(route, &refusal, record);
                }
            }
            return Ok(Admission(Admitted::Preflight));
        }
        if route.auth == RouteAuth::None {
            return Ok(Admission(Admitted::Public));
        }
        let decided = match self.authenticate(headers, peer).await {
            Ok(authenticated) => self.authorize(policy, route, headers, authenticated).await,
            Err(denial) => Err(denial),
        };
        match decided {
            Ok(authorized) => {
                self.metrics.auth_decision(AuthResult::Ok, record.decision_mode());
                Ok(Admission(Admitted::Authorized(authorized)))
            }
            Err(denial) => {
                self.metrics.auth_decision(denial.refusal.auth_result(), record.decision_mode());
                if route.mode != RouteMode::Shadow {
                    return Err(denial);
                }
                shadow_refusal(route, &denial.refusal, record);
                Ok(Admission(Admitted::Shadow { principal: denial.principal, rate: denial.rate }))
            }
        }
    }

    /// Key → authentication. An outage never looks like a bad key (docs/reference.md §4.4): 503, not
    /// 401.
    ///
    /// Unknown, expired and revoked keys spend the client address's
    /// `failed_auth_per_minute` (missing and malformed ones never reach the store and
    /// spend nothing). A key that needs the store spends it before the store is asked, and
    /// gets it back if it was valid (or the store could not answer); past the budget it
    /// gets 429 without a lookup. A key the cache answers as valid never touches the
    /// budget: the hot path pays nothing for it.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Authenticated, Box<Denial>> {
        let secret = extract_key(headers).map_err(Refusal::Unauthorized)?;
        let budget = self.budgets.failed_auth.as_ref();
        // The address whose budget paid for a store lookup, or the wait when none was left.
        let mut spent = None;
        let mut refused = None;
        let may_ask = || {
            let Some(budget) = budget else { return true };
            let address = self.budgets.client_address(peer, headers);
            match budget.take(address) {
                Ok(()) => spent = Some(address),
                Err(retry_after) => refused = Some(retry_after),
            }
            refused.is_none()
        };
        let authenticated = self.keys.authenticate(&secret, self.clock.now_utc(), may_ask).await;
        let give_back = || {
            if let (Some(budget), Some(address)) = (budget, spent) {
                budget.give_back(address);
            }
        };
        match authenticated {
            Ok(Authentication::Valid(principal)) => {
                give_back();
                Ok(Authenticated(principal))
            }
            Ok(Authentication::Invalid(failure)) => {
                // Answered from the cache: spent now (after a lookup it already was).
                if let (Some(budget), None) = (budget, spent) {
                    if let Err(retry_after) = budget.take(self.budgets.client_address(peer, headers)) {
                        return Err(self.failed_auth_limited(retry_after));
                    }
                }
                Err(Refusal::Unauthorized(failure).into())
            }
            Ok(Authentication::NotAsked) => Err(self.failed_auth_limited(refused.unwrap_or(1))),
            Err(e) => {
                give_back();
                tracing::warn!(error = %e, "key store unavailable for a key not in the cache");
                Err(Refusal::Unavailable { retry_after: 1 }.into())
            }
        }
    }

    fn failed_auth_limited(&self, retry_after: u64) -> Box<Denial> {
        self.metrics.failed_auth_limited();
        Refusal::FailedAuthLimited { retry_after }.into()
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
        let Some(plan) = policy.plans.get(principal.plan()) else {
            tracing::warn!(plan = %principal.plan(), tenant = %principal.tenant(), "tenant's plan is not in the current policy");
            return Err(deny(Refusal::UnknownPlan { plan: principal.plan().to_string() }, &principal));
        };
        if !plan.api_access {
            return Err(deny(Refusal::NoApiAccess { plan: plan.name.clone() }, &principal));
        }
        if let RouteAuth::Key { scopes } = &route.auth {
            if let Some(missing) = scopes.iter().find(|s| !principal.scopes().contains(s)) {
                return Err(deny(Refusal::InsufficientScope { scope: missing.clone() }, &principal));
            }
        }
        if let (Some(max), Some(declared)) = (route.max_body_bytes, content_length(headers)) {
            if declared > max {
                return Err(deny(Refusal::PayloadTooLarge { limit: max }, &principal));
            }
        }
        let on_store_error = route.on_store_error.unwrap_or(self.on_store_error);
        // The concurrency slot first: a refusal by it counts nothing in the rate limits,
        // and a rate-limit refusal below drops (gives back) the slot at once.
        let slot = match concurrency_cap(plan, &principal) {
            None => None,
            Some((cap, holder)) => match self.concurrency.acquire(&holder, cap, on_store_error).await {
                Acquired::Admitted(slot) => slot,
                Acquired::Refused => return Err(deny(Refusal::ConcurrencyLimited { cap }, &principal)),
                Acquired::Unavailable => {
                    let retry_after = STORE_DOWN_RETRY_AFTER.as_secs();
                    return Err(deny(Refusal::Unavailable { retry_after }, &principal));
                }
            },
        };
        // A key or tenant with limit overrides decides against its effective limits,
        // built once per record and policy; every other principal takes the plan's.
        let overridden = principal.has_overrides().then(|| principal.effective_limits(policy, plan));
        let Some(plan_headers) = (match &overridden {
            Some(effective) => effective.as_ref(),
            None => plan.rate_headers.as_ref(),
        }) else {
            return Ok(Authorized { principal, rate: None, slot });
        };
        let rules = plan_headers.rules();
        let scoped = plan_headers.key_scoped();
        let outcome = if scoped == 0 {
            self.limiter.check_rules(principal.tenant(), rules, route.cost, on_store_error).await
        } else {
            // A key's own limits: counted for it alone, in the same atomic decision.
            let scope = KeyScope { key: principal.key_id(), mask: scoped };
            self.limiter.check_scoped(principal.tenant(), Some(scope), rules, route.cost, on_store_error).await
        };
        if outcome.store_unavailable() {
            // `on_store_error = "deny"` while the shared store is unreachable.
            return Err(deny(Refusal::Unavailable { retry_after: STORE_DOWN_RETRY_AFTER.as_secs() }, &principal));
        }
        let Some(decision) = outcome.decision().copied() else {
            // `on_store_error = "allow"`: admitted, nothing counted, no headers to give.
            return Ok(Authorized { principal, rate: None, slot });
        };
        let at = if plan_headers.monthly() { self.clock.now_millis() } else { 0 };
        let rate = RateOutcome { plan: plan_headers.clone(), decision, at };
        if decision.allowed {
            Ok(Authorized { principal, rate: Some(rate), slot })
        } else {
            let retry_after = decision.retry_after_secs().unwrap_or(1);
            let rule = rules.get(decision.index).or(rules.first());
            Err(Box::new(Denial {
                refusal: Refusal::RateLimited {
                    limit: plan_headers.limit_name(decision.index).to_string(),
                    requests: rule.map_or(decision.limit, |rule| rule.requests),
                    per: match rule.map(|rule| rule.kind) {
                        Some(LimitKind::Day) => LimitSpan::Day,
                        Some(LimitKind::Month { .. }) => LimitSpan::Month,
                        Some(LimitKind::Window(window)) => LimitSpan::Window { secs: window.as_secs() },
                        None => LimitSpan::Window { secs: 60 },
                    },
                    named: !plan_headers.legacy(),
                    retry_after,
                },
                principal: Some(principal),
                rate: Some(rate),
            }))
        }
    }
}

/// The most requests that may be in flight at once for `principal`'s request, if capped,
/// and whose requests they are: a key's own `concurrency` override counts that key's
/// requests alone (as a key's own rate limits count for it alone), under
/// `<tenant>:key:<key id>` (a tenant id has no `:`); else the tenant's override, else the
/// plan's `concurrency`, counts the tenant's.
pub fn concurrency_cap<'p>(plan: &Plan, principal: &'p Principal) -> Option<(u32, Cow<'p, str>)> {
    let (tenant, key) = principal.overrides();
    if let Some(cap) = key.concurrency {
        return Some((cap, Cow::Owned(format!("{}:key:{}", principal.tenant(), principal.key_id()))));
    }
    let cap = tenant.concurrency.or(plan.concurrency)?;
    Some((cap, Cow::Borrowed(principal.tenant())))
}

/// The API key of `Authorization: Bearer <key>`. No header, or another scheme, is a
/// missing key; anything else unusable is a malformed one, with what is wrong with it.
fn extract_key(headers: &HeaderMap) -> Result<keys::Secret, AuthFailure> {
    let token = bearer::token(headers).map_err(|e| bearer::why_no_key(headers, e))?;
    keys::parse_secret(token).map_err(|e| AuthFailure::Malformed(crate::auth::why_not_a_key(token, e)))
}

/// A refusal on a shadow-mode route: recorded and logged; the request goes on.
fn shadow_refusal(route: &Route, refusal: &Refusal, record: &mut AccessLog) {
    record.decision = refusal.decision();
    tracing::info!(
        request_id = %record.request_id,
        route = %route.prefix,
        decision = record.decision,
        "shadow mode: request would have been refused; forwarded"
    );
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}
