//! `handle()`: every request's phases, in order, in one place — the reference read top to
//! bottom. Normalise path → match route → extract key → authenticate → authorise plan
//! and scopes → rate-limit → rewrite headers → forward → record.
//!
//! The admission phases (key to rate limit) are [`crate::admission`]'s, whose proof types
//! keep the order honest: only an [`Admission`] can be forwarded, and only the admission
//! rules make one.
//!
//! A WebSocket handshake is a request like any other until it is admitted; then it is
//! forwarded with its `Upgrade`, and an upstream 101 turns into a tunnel (see
//! [`crate::upstream`]). Every request gets one access line ([`AccessLog`]), written when
//! its response body has been sent (or its tunnel closed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access_log::{AccessLog, Counted, Logged};
use crate::admission::{Admission, Denial, RateOutcome};
use crate::body::{self, Limited, ProxyBody, RateChecked};
use crate::connection::{ConnectionHold, ConnectionInfo};
use crate::error::Refusal;
use crate::keys;
use crate::metrics::RouteMetrics;
use crate::path;
use crate::policy::{Policy, Route, RouteMatch, RouteMode, UpstreamProtocol};
use crate::request_id::{self, RequestId};
use crate::state::App;
use crate::upstream::{self, FilteredTrailers, ForwardContext, Outbound, Tunnel, UpstreamError};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What forwarding produced: the response, the rate decision for its headers, and for an
/// accepted WebSocket upgrade the tunnel to run once the 101 is sent.
struct Forwarded {
    response: Response<ProxyBody>,
    rate: Option<RateOutcome>,
    tunnel: Option<Tunnel>,
    /// For a refusal: its HTTP status, which the metrics and the access line record even
    /// when the answer is gRPC-shaped (HTTP 200 with `grpc-status`), so that alerts on
    /// refusals see gRPC clients' too.
    refused: Option<StatusCode>,
}

/// Handles one request end to end. Never fails: every outcome is a response.
pub async fn handle(app: Arc<App>, connection: ConnectionInfo, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let policy = app.policy();
    let grpc = is_grpc(&request);
    // Written when dropped: with the response body, or with status 499 if this future is
    // dropped first (the client went away).
    let mut record =
        AccessLog::new(request_id(request.headers()), request.method().clone(), started, app.metrics().clone());
    record.usage = app.usage().cloned();

    let forwarded = match process(&app, &policy, connection, request, &mut record).await {
        Ok(forwarded) => forwarded,
        Err(denial) => {
            let Denial { refusal, principal, rate } = *denial;
            record.decision = refusal.decision();
            if let Some(limit) = refusal.limit_name() {
                record.limit = Some(limit.to_string());
            }
            // A refused or failed request gives its concurrency slot back now.
            record.concurrency = None;
            if principal.is_some() {
                record.principal = principal;
            }
            let refused = Some(refusal.status());
            let response = refusal.into_response(&record.request_id, grpc);
            Forwarded { response, rate, tunnel: None, refused }
        }
    };
    finish(forwarded, record)
}

/// A refusal decided before [`handle`] (the server's 431 for a head over
/// `max_header_bytes`): answered, counted and access-logged like the pipeline's own.
pub fn refuse<B>(app: &App, request: &Request<B>, refusal: Refusal) -> Response<ProxyBody> {
    let mut record =
        AccessLog::new(request_id(request.headers()), request.method().clone(), Instant::now(), app.metrics().clone());
    record.decision = refusal.decision();
    let refused = Some(refusal.status());
    let response = refusal.into_response(&record.request_id, is_grpc(request));
    finish(Forwarded { response, rate: None, tunnel: None, refused }, record)
}

/// The headers every response gets, the request metrics (at response-head time), and the
/// access line handed to the response body — or to the tunnel, for a WebSocket.
fn finish(forwarded: Forwarded, mut record: AccessLog) -> Response<ProxyBody> {
    let Forwarded { mut response, rate, tunnel, refused } = forwarded;
    if let Some(rate) = &rate {
        rate.write_headers(response.headers_mut());
    }
    response.headers_mut().insert(X_REQUEST_ID, record.request_id.header_value().clone());

    let status = refused.unwrap_or(response.status()).as_u16();
    record.record_request(status);
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
    // 1–3. Shape, path, route.
    let has_body = !hyper::body::Body::is_end_stream(request.body());
    let Routed { route, path, preflight } = route_request(app, policy, &request, has_body, record)?;

    // 4–7. Key, authentication, plan and scopes, body size, rate limit.
    let peer = connection.peer.ip();
    let admission = app.gate().admit(policy, route, request.headers(), peer, preflight, record).await?;

    // 8–9. Rewrite and forward.
    forward(app, route, admission, connection, request, path, record).await
}

/// A request that passed phases 1–3: its route, its normalised path, and whether it is a
/// CORS preflight to forward (matched as the method it asks about).
pub(crate) struct Routed<'p> {
    pub route: &'p Route,
    pub path: String,
    pub preflight: bool,
}

/// Phases 1–3 of every request — shape, path, route — recorded in `record`; with
/// [`crate::admission::Gate::admit`] (phases 4–7) they are the whole decision, which the
/// proxy and the authorizer ([`crate::authorizer`]) both take. `request` is the request
/// to decide on (its body is not read: `has_body` says whether it has one).
pub(crate) fn route_request<'p, B>(
    app: &App,
    policy: &'p Policy,
    request: &Request<B>,
    has_body: bool,
    record: &mut AccessLog,
) -> Result<Routed<'p>, Box<Denial>> {
    // 1. The request's shape: one Host, an absolute-form target naming the same host; no
    //    transfer coding but a single `chunked`; no CONNECT (its target is a host and
    //    port, not a path any route could authorise).
    check_host(request)?;
    check_transfer_coding(request)?;
    if request.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed { allow: Vec::new() }.into());
    }

    // 2. The path, normalised once (docs/reference.md §4.5); the query is never matched, but a key in
    //    it is refused before it travels on into access logs (docs/reference.md §4.1).
    let path = path::normalize(request.uri().path(), policy.paths).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    if request.uri().query().is_some_and(keys::query_carries_key) {
        return Err(Refusal::BadRequest(
            "an API key must not be sent in the query string; use the Authorization header".into(),
        )
        .into());
    }

    // 3. The route: longest prefix, then method (404, 405).
    let preflight = policy.forward_preflight && is_cors_preflight(request);
    if preflight && has_body {
        // Browsers send none; what does is not a preflight, and must not pass keyless.
        return Err(Refusal::BadRequest("a CORS preflight must not have a body".into()).into());
    }
    let match_method = if preflight { preflight_method(request) } else { request.method().clone() };
    let route = match policy.routes.find(&path, &match_method) {
        RouteMatch::Found(route) => route,
        RouteMatch::MethodNotAllowed { prefix, allow } => {
            record.route = Some(prefix.into());
            return Err(Refusal::MethodNotAllowed { allow }.into());
        }
        RouteMatch::NotFound => return Err(Refusal::NotFound.into()),
    };
    record.route = Some(route.prefix.clone());
    record.upstream = Some(route.upstream.clone());
    record.route_metrics = route_metrics(app, route);
    if route.mode == RouteMode::Shadow {
        record.mode = RouteMode::Shadow;
    }

    Ok(Routed { route, path, preflight })
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
    let mut admission = admission;
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
    let context = ForwardContext {
        // `::ffff:a.b.c.d` (an IPv4 client on a dual-stack listener) is written `a.b.c.d`.
        peer: connection.peer.ip().to_canonical(),
        tls: connection.tls,
        request_id: record.request_id.header_value(),
        peer_trusted: app.peer_trusted(connection.peer.ip()),
        host,
    };

    let too_large = Arc::new(AtomicBool::new(false));
    let too_slow = Arc::new(AtomicBool::new(false));
    let incoming = FilteredTrailers::new(Counted::received(incoming, record.bytes()), context.peer_trusted);
    // A body must keep `server.min_body_rate` once started (a request without one pays nothing).
    let incoming = match app.settings().server.min_body_rate {
        Some(rate) if !incoming.is_end_stream() => Either::Left(RateChecked::new(incoming, rate, too_slow.clone())),
        _ => Either::Right(incoming),
    };
    let body = match route.max_body_bytes {
        Some(max) if route.mode == RouteMode::Enforce => body::boxed(Limited::new(incoming, max, too_large.clone())),
        _ => body::boxed(incoming),
    };
    let mut outbound = Outbound::new(&admission, parts, body, &context, websocket);
    if websocket {
        // Only WebSocket is asked for, whatever else the client listed.
        outbound.headers_mut().insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    // The identity headers are written; the access line keeps the principal from here.
    // The concurrency slot lives as long as the record: until the body ends or the tunnel closes.
    record.concurrency = admission.take_slot();
    let (principal, rate) = admission.into_parts();
    // Admitted: its usage counts the route's cost (a shadow-mode request the rules would
    // have refused counts as that refusal, as its access line says).
    if principal.is_some() && record.decision == "ok" {
        record.admitted_cost = Some(route.cost);
    }
    record.principal = principal;
    let upstream_started = Instant::now();
    let result = app.upstreams().send(&route.upstream, outbound).await;
    if let Some(metrics) = &record.route_metrics {
        metrics.observe_upstream(upstream_started.elapsed());
    }
    match result {
        Ok((mut response, permit)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let client_upgrade = match client_upgrade {
                Some(client_upgrade) if upstream::switched_to_websocket(response.headers()) => client_upgrade,
                _ => {
                    tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, "upstream switched protocols unasked");
                    return Err(Box::new(Denial { refusal: Refusal::BadGateway, principal: None, rate }));
                }
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _empty) = response.into_parts();
            upstream::remove_hop_by_hop(&mut parts.headers, true);
            // The tunnel keeps the client's connection counted and the upstream's slot held.
            let hold: ConnectionHold = Arc::new((connection.hold.clone(), permit));
            let tunnel = Tunnel::new(client_upgrade, upstream_upgrade, Some(hold));
            Ok(Forwarded {
                response: Response::from_parts(parts, body::empty()),
                rate,
                tunnel: Some(tunnel),
                refused: None,
            })
        }
        Ok((response, permit)) => {
            // Includes an upgrade the upstream refused: an ordinary response.
            let (mut parts, body) = response.into_parts();
            upstream::remove_hop_by_hop(&mut parts.headers, false);
            Ok(Forwarded {
                response: Response::from_parts(parts, body::boxed(body::Holding::new(body, permit))),
                rate,
                tunnel: None,
                refused: None,
            })
        }
        Err(UpstreamError::Busy) => {
            app.metrics().upstream_busy(&route.upstream.name);
            tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, "upstream busy: max_connections in use for queue_timeout");
            Err(Box::new(Denial { refusal: Refusal::UpstreamBusy, principal: None, rate }))
        }
        Err(UpstreamError::Timeout) => {
            tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, "upstream response headers timed out");
            Err(Box::new(Denial { refusal: Refusal::GatewayTimeout, principal: None, rate }))
        }
        Err(UpstreamError::Failed(why)) => {
            if too_large.load(Ordering::Relaxed) {
                let limit = route.max_body_bytes.unwrap_or_default();
                return Err(Box::new(Denial { refusal: Refusal::PayloadTooLarge { limit }, principal: None, rate }));
            }
            if too_slow.load(Ordering::Relaxed) {
                tracing::info!(request_id = %record.request_id, "request body slower than server.min_body_rate");
                return Err(Box::new(Denial { refusal: Refusal::RequestTimeout, principal: None, rate }));
            }
            let bytes = record.bytes();
            if bytes.received_aborted.load(Ordering::Relaxed) {
                // The client went away mid-body: nobody's error but its own, and no one to answer.
                tracing::info!(request_id = %record.request_id, "the client went away while its body was forwarded");
                return Err(Box::new(Denial { refusal: Refusal::ClientClosed, principal: None, rate }));
            }
            if bytes.received_failed.load(Ordering::Relaxed) {
                // The client's body failed first: its error, not the upstream's.
                tracing::info!(request_id = %record.request_id, error = %why, "request body failed while forwarded");
                return Err(Box::new(Denial { refusal: Refusal::BadRequestBody, principal: None, rate }));
            }
            tracing::warn!(request_id = %record.request_id, upstream = %route.upstream.name, error = %why, "upstream failed");
            Err(Box::new(Denial { refusal: Refusal::BadGateway, principal: None, rate }))
        }
    }
}

/// The route's metric children, resolved the first time it answers and kept on it.
fn route_metrics(app: &App, route: &Route) -> Option<Arc<RouteMetrics>> {
    let resolved = route.resolved.get_or_init(|| Arc::new(app.metrics().route(&route.prefix, &route.upstream.name)));
    resolved.clone().downcast::<RouteMetrics>().ok()
}

/// docs/reference.md §4.5: two `Host` headers, or an absolute-form target (or HTTP/2 `:authority`)
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

/// docs/reference.md §4.6: a `Transfer-Encoding` must be exactly one `chunked`. The HTTP
/// parser frames a body by the last coding alone, so `gzip, chunked`, `chunked, chunked`
/// or two `Transfer-Encoding` fields would go upstream de-chunked with the other codings
/// silently dropped (the upstream reading gzip bytes as the content); they are refused.
fn check_transfer_coding<B>(request: &Request<B>) -> Result<(), Refusal> {
    let mut codings = request.headers().get_all(TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(only), None) if only.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Refusal::BadRequest("a Transfer-Encoding other than a single `chunked` is not supported".into())),
    }
}

/// The client's `x-request-id` when valid, else a new one. A value that holds a
/// well-formed key, alone or inside a longer id (`kg_…-1`), is replaced too: request ids
/// are logged, keys never are.
///
/// Public (and hidden from the docs) only for the fuzz targets in `fuzz/` and their
/// corpus replay in `tests/fuzz_corpus.rs`.
#[doc(hidden)]
pub fn request_id(headers: &HeaderMap) -> RequestId {
    match headers.get(X_REQUEST_ID).and_then(RequestId::kept) {
        Some(id) if !keys::text_carries_key(&id) => id,
        _ => request_id::new(),
    }
}

/// A gRPC request: HTTP/2 with a gRPC content type. gRPC runs over HTTP/2 only, so an
/// HTTP/1.1 request that says `application/grpc` gets an ordinary HTTP refusal (a
/// gRPC-shaped one would be an `HTTP/1.1 200` that every HTTP client reads as success).
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_2
        && request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
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
