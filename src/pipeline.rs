//! `handle()`: every request's phases, in order, in one place — the SPEC read top to
//! bottom. Normalise path → match route → extract key → authenticate → authorise plan
//! and scopes → rate-limit → rewrite headers → forward → record.
//!
//! Proof types keep the order honest: authentication yields an [`Authenticated`], the
//! plan and scope checks consume it into a [`Authorized`], and only an [`Admission`]
//! (which only this module can build) can be forwarded.
//!
//! A WebSocket handshake is a request like any other until it is admitted; then it is
//! forwarded with its `Upgrade`, and an upstream 101 turns into a tunnel (see
//! [`crate::upstream`]). Every request gets one access line ([`AccessLog`]), written when
//! its response body has been sent (or its tunnel closed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::app::App;
use crate::auth::Authentication;
use crate::body::{self, AccessLog, Counted, Limited, Logged, ProxyBody};
use crate::error::{AuthFailure, Refusal};
use crate::keys::{self, Principal};
use crate::metrics::{AuthResult, Mode};
use crate::path;
use crate::policy::{Policy, Route, RouteAuth, RouteMatch, RouteMode, UpstreamProtocol};
use crate::ratelimit::front::STORE_DOWN_RETRY_AFTER;
use crate::ratelimit::{Decision, Limit};
use crate::upstream::{self, ForwardContext, Tunnel, UpstreamError};

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// What keeps the connection counted (against `max_connections`, among its worker's
    /// open connections, in `keygate_connections_active`) while anything holds a clone:
    /// the connection's task, and a WebSocket tunnel that outlives it.
    pub hold: Option<ConnectionHold>,
}

/// See [`ConnectionInfo::hold`].
pub type ConnectionHold = Arc<dyn std::any::Any + Send + Sync>;

/// What forwarding produced: the response, the rate decision for its headers, and for an
/// accepted WebSocket upgrade the tunnel to run once the 101 is sent.
struct Forwarded {
    response: Response<ProxyBody>,
    rate: Option<RateOutcome>,
    tunnel: Option<Tunnel>,
}

/// A key that authenticated.
struct Authenticated(Principal);

/// A principal cleared by plan and scopes, with its rate-limit decision.
struct Authorized {
    principal: Principal,
    rate: Option<RateOutcome>,
}

/// The limiter's decision and what it was made against, for the response headers.
#[derive(Clone)]
struct RateOutcome {
    plan: String,
    limit: Limit,
    decision: Decision,
}

/// A request cleared to go upstream.
enum Admission {
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

/// A refusal, with what was learnt before it (for shadow mode and the headers).
struct Denial {
    refusal: Refusal,
    principal: Option<Principal>,
    rate: Option<RateOutcome>,
}

impl From<Refusal> for Box<Denial> {
    fn from(refusal: Refusal) -> Self {
        Box::new(Denial { refusal, principal: None, rate: None })
    }
}

/// Handles one request end to end. Never fails: every outcome is a response.
pub async fn handle(app: Arc<App>, connection: ConnectionInfo, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let policy = app.policy.load_full();
    let grpc = is_grpc(request.headers());
    // Written when dropped: with the response body, or with status 499 if this future is
    // dropped first (the client went away).
    let mut record = AccessLog::new(request_id(request.headers()), request.method().clone(), started);

    let forwarded = match process(&app, &policy, connection, request, &mut record).await {
        Ok(forwarded) => forwarded,
        Err(denial) => {
            record.decision = decision_name(&denial.refusal);
            let response = denial.refusal.into_response(&record.request_id, grpc);
            Forwarded { response, rate: denial.rate, tunnel: None }
        }
    };
    finish(&app, forwarded, record)
}

/// A refusal decided before [`handle`] (the server's 431 for a head over
/// `max_header_bytes`): answered, counted and access-logged like the pipeline's own.
pub fn refuse<B>(app: &App, request: &Request<B>, refusal: Refusal) -> Response<ProxyBody> {
    let mut record = AccessLog::new(request_id(request.headers()), request.method().clone(), Instant::now());
    record.decision = decision_name(&refusal);
    let response = refusal.into_response(&record.request_id, is_grpc(request.headers()));
    finish(app, Forwarded { response, rate: None, tunnel: None }, record)
}

/// The headers every response gets, the request metrics (at response-head time), and the
/// access line handed to the response body — or to the tunnel, for a WebSocket.
fn finish(app: &App, forwarded: Forwarded, mut record: AccessLog) -> Response<ProxyBody> {
    let Forwarded { mut response, rate, tunnel } = forwarded;
    if let Some(rate) = &rate {
        rate.decision.write_headers(&rate.plan, &rate.limit, response.headers_mut());
    }
    if let Ok(id) = HeaderValue::from_str(&record.request_id) {
        response.headers_mut().insert("x-request-id", id);
    }

    let status = response.status().as_u16();
    let route = record.route.as_deref().unwrap_or("none");
    app.metrics.record_request(route, &record.method, status, record.elapsed());
    record.status = Some(status);
    match tunnel {
        Some(tunnel) => {
            tokio::spawn(tunnel.run(record));
            response
        }
        None => response.map(|body| body::boxed(Logged::new(body, record))),
    }
}

/// The phases. `Ok` is the upstream's response (with the rate decision for its headers).
async fn process(
    app: &App,
    policy: &Policy,
    connection: ConnectionInfo,
    request: Request<Incoming>,
    record: &mut AccessLog,
) -> Result<Forwarded, Box<Denial>> {
    // 1. The request's shape: one Host, an absolute-form target naming the same host.
    check_host(&request)?;

    // 2. The path, normalised once (SPEC 4.5); the query is never matched, but a key in
    //    it is refused before it travels on into access logs (SPEC 4.1).
    let path = path::normalize(request.uri().path(), policy.paths).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    if request.uri().query().is_some_and(keys::query_carries_key) {
        return Err(Refusal::BadRequest(
            "an API key must not be sent in the query string; use the Authorization header".into(),
        )
        .into());
    }

    // 3. The route: longest prefix, then method (404, 405).
    let preflight = policy.forward_preflight && is_cors_preflight(&request);
    let match_method = if preflight { preflight_method(&request) } else { request.method().clone() };
    let route = match policy.routes.find(&path, &match_method) {
        RouteMatch::Found(route) => route.clone(),
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            record.route = Some(prefix.to_string());
            return Err(Refusal::MethodNotAllowed { allow }.into());
        }
        RouteMatch::NotFound => return Err(Refusal::NotFound.into()),
    };
    record.route = Some(route.prefix.clone());
    record.upstream = Some(route.upstream.name.clone());
    if route.mode == RouteMode::Shadow {
        record.mode = Mode::Shadow;
    }

    // 4–7. Key, authentication, plan and scopes, body size, rate limit.
    let admission = if preflight || route.auth == RouteAuth::None {
        Admission::Public
    } else {
        match admit(app, policy, &route, request.headers()).await {
            Ok(authorized) => {
                app.metrics.auth_decision(AuthResult::Ok, record.mode);
                Admission::Authorized(authorized)
            }
            Err(denial) => {
                app.metrics.auth_decision(auth_result(&denial.refusal), record.mode);
                if route.mode == RouteMode::Shadow {
                    record.decision = decision_name(&denial.refusal);
                    tracing::info!(
                        request_id = %record.request_id,
                        route = %route.prefix,
                        decision = record.decision,
                        "shadow mode: request would have been refused; forwarded"
                    );
                    Admission::Shadow { principal: denial.principal, rate: denial.rate }
                } else {
                    record.principal = denial.principal.clone();
                    return Err(denial);
                }
            }
        }
    };

    // 8–9. Rewrite and forward.
    forward(app, &route, admission, connection, request, path, record).await
}

/// Key → authentication → plan → scopes → body size → rate limit.
async fn admit(app: &App, policy: &Policy, route: &Route, headers: &HeaderMap) -> Result<Authorized, Box<Denial>> {
    let secret = extract_key(headers).map_err(Refusal::Unauthorized)?;
    let authenticated = match app.keys.authenticate(&secret, app.clock.now_utc()).await {
        Ok(Authentication::Valid(principal)) => Authenticated(principal),
        Ok(Authentication::Invalid(failure)) => return Err(Refusal::Unauthorized(failure).into()),
        // An outage never looks like a bad key (SPEC 4.4): 503, not 401.
        Err(e) => {
            tracing::warn!(error = %e, "key store unavailable for a key not in the cache");
            return Err(Refusal::Unavailable { retry_after: 1 }.into());
        }
    };
    authorize(app, policy, route, headers, authenticated).await
}

/// Plan (exists, has API access), scopes, declared body size, then the rate limit.
async fn authorize(
    app: &App,
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
    let on_store_error = route.on_store_error.unwrap_or(app.settings.limits.on_store_error);
    let outcome = app.limiter.check(&principal.tenant, &limit, route.cost, on_store_error).await;
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

/// `Authorization: Bearer <key>` (scheme case-insensitive, RFC 6750 2.1).
fn extract_key(headers: &HeaderMap) -> Result<keys::Secret, AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Missing);
    }
    keys::parse_secret(token.trim()).map_err(|_| AuthFailure::Malformed)
}

/// Rewrites the request for the upstream, sends it, and maps failures to 413/502/504.
/// An admitted WebSocket handshake keeps its `Upgrade`; the upstream's 101 becomes a
/// [`Tunnel`].
async fn forward(
    app: &App,
    route: &Route,
    admission: Admission,
    connection: ConnectionInfo,
    mut request: Request<Incoming>,
    path: String,
    record: &mut AccessLog,
) -> Result<Forwarded, Box<Denial>> {
    let (principal, rate) = match admission {
        Admission::Public => (None, None),
        Admission::Authorized(Authorized { principal, rate }) => (Some(principal), rate),
        Admission::Shadow { principal, rate } => (principal, rate),
    };
    // The access line keeps the principal; the rest of forwarding borrows it from there.
    record.principal = principal;

    // The client's side of the upgrade must be taken before the request is taken apart.
    let websocket = upstream::is_websocket_upgrade(&request) && route.upstream.protocol == UpstreamProtocol::Http1;
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));

    let (mut parts, incoming) = request.into_parts();
    // HTTP/2 carries the host as `:authority`, which hyper puts in the URI.
    let host = parts.headers.get(HOST).cloned().or_else(|| {
        let authority = parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let target = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    parts.uri = Uri::try_from(target).map_err(|_| Refusal::BadRequest("invalid request target".into()))?;
    let peer_trusted = app.trusted_proxies.iter().any(|net| net.contains(&connection.peer.ip()));
    let context = ForwardContext {
        peer: connection.peer.ip(),
        tls: connection.tls,
        request_id: &record.request_id,
        peer_trusted,
        host,
    };
    upstream::rewrite_request_headers(&mut parts.headers, &context, record.principal.as_ref(), websocket);
    if websocket {
        // Only WebSocket is asked for, whatever else the client listed.
        parts.headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }

    let too_large = Arc::new(AtomicBool::new(false));
    let incoming = Counted::received(incoming, record.bytes());
    let body = match route.max_body_bytes {
        Some(max) if route.mode == RouteMode::Enforce => body::boxed(Limited::new(incoming, max, too_large.clone())),
        _ => body::boxed(incoming),
    };
    let upstream_started = Instant::now();
    let result = app.upstreams.send(&route.upstream, Request::from_parts(parts, body)).await;
    app.metrics.observe_upstream(&route.upstream.name, upstream_started.elapsed());
    match result {
        Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let client_upgrade = match client_upgrade {
                Some(client_upgrade) if upstream::switched_to_websocket(response.headers()) => client_upgrade,
                _ => {
                    tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, "upstream switched protocols unasked");
                    let principal = record.principal.clone();
                    return Err(Box::new(Denial { refusal: Refusal::BadGateway, principal, rate }));
                }
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _empty) = response.into_parts();
            upstream::remove_hop_by_hop(&mut parts.headers, true);
            let tunnel = Tunnel::new(client_upgrade, upstream_upgrade, connection.hold.clone());
            Ok(Forwarded { response: Response::from_parts(parts, body::empty()), rate, tunnel: Some(tunnel) })
        }
        Ok(response) => {
            // Includes an upgrade the upstream refused: an ordinary response.
            let (mut parts, body) = response.into_parts();
            upstream::remove_hop_by_hop(&mut parts.headers, false);
            Ok(Forwarded { response: Response::from_parts(parts, body::boxed(body)), rate, tunnel: None })
        }
        Err(UpstreamError::Timeout) => {
            tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, "upstream response headers timed out");
            Err(Box::new(Denial { refusal: Refusal::GatewayTimeout, principal: record.principal.clone(), rate }))
        }
        Err(UpstreamError::Failed(why)) => {
            if too_large.load(Ordering::Relaxed) {
                let limit = route.max_body_bytes.unwrap_or_default();
                let principal = record.principal.clone();
                return Err(Box::new(Denial { refusal: Refusal::PayloadTooLarge { limit }, principal, rate }));
            }
            tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, error = %why, "upstream failed");
            Err(Box::new(Denial { refusal: Refusal::BadGateway, principal: record.principal.clone(), rate }))
        }
    }
}

/// SPEC 4.5: two `Host` headers, or an absolute-form target (or HTTP/2 `:authority`)
/// whose authority differs from `Host`, is refused.
fn check_host<B>(request: &Request<B>) -> Result<(), Refusal> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header".into()));
    }
    if let (Some(authority), Some(host)) = (request.uri().authority(), host) {
        let same = host.to_str().is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str()));
        if !same {
            return Err(Refusal::BadRequest("the request target's authority differs from Host".into()));
        }
    }
    Ok(())
}

/// The client's `x-request-id` when valid, else a new one. A value that is a well-formed
/// key is replaced too: request ids are logged, keys never are.
fn request_id(headers: &HeaderMap) -> String {
    match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(value) if upstream::valid_request_id(value.as_bytes()) && keys::parse_secret(value).is_err() => {
            value.to_string()
        }
        _ => upstream::new_request_id(),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn is_cors_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key("origin")
        && request.headers().contains_key("access-control-request-method")
}

/// The method a preflight asks about: the route is matched as for that method.
fn preflight_method<B>(request: &Request<B>) -> Method {
    request
        .headers()
        .get("access-control-request-method")
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or(Method::OPTIONS)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The `decision` field of the access log.
fn decision_name(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::Unauthorized(failure) => failure.as_str(),
        Refusal::InsufficientScope { .. } => "forbidden",
        Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => "no_api_access",
        Refusal::RateLimited { .. } => "rate_limited",
        Refusal::Unavailable { .. } => "store_unavailable",
        Refusal::BadRequest(_) => "bad_request",
        Refusal::NotFound => "not_found",
        Refusal::MethodNotAllowed { .. } => "method_not_allowed",
        Refusal::PayloadTooLarge { .. } => "payload_too_large",
        Refusal::HeadersTooLarge => "headers_too_large",
        Refusal::BadGateway => "bad_gateway",
        Refusal::GatewayTimeout => "gateway_timeout",
    }
}

/// The `result` label of `auth_decisions_total` for a refusal of the admission phases.
/// A tenant whose plan is unknown counts as `no_api_access`; a declared body over the
/// route's limit as `forbidden`.
fn auth_result(refusal: &Refusal) -> AuthResult {
    match refusal {
        Refusal::Unauthorized(AuthFailure::Missing) => AuthResult::Missing,
        Refusal::Unauthorized(AuthFailure::Malformed) => AuthResult::Malformed,
        Refusal::Unauthorized(AuthFailure::Unknown) => AuthResult::Unknown,
        Refusal::Unauthorized(AuthFailure::Expired) => AuthResult::Expired,
        Refusal::Unauthorized(AuthFailure::Revoked) => AuthResult::Revoked,
        Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => AuthResult::NoApiAccess,
        Refusal::RateLimited { .. } => AuthResult::RateLimited,
        Refusal::Unavailable { .. } => AuthResult::StoreUnavailable,
        _ => AuthResult::Forbidden,
    }
}
