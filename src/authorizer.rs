//! keygate as the authorizer of another proxy: the `[authorizer]` listener answers, for
//! nginx `auth_request`, Traefik ForwardAuth and Envoy `ext_authz` in HTTP mode, whether
//! the request that proxy holds may go on, instead of forwarding it.
//!
//! The decision is the proxy's own: [`decide`] runs phases 1–3 of
//! [`crate::pipeline::route_request`] (shape, path normalised by keygate's rules, route)
//! and phases 4–7 of [`crate::admission::Gate::admit`] (key, authentication, plan,
//! scopes, rate limit) on the *original* request, rebuilt by [`original_request`]:
//! - its method and target are the request line's (Envoy's HTTP mode sends the original
//!   request that way; `authorizer.path_prefix` is stripped from the path), unless the
//!   peer is in `authorizer.trusted_proxies` and sends `X-Original-Method` /
//!   `X-Original-URI` (nginx) or `X-Forwarded-Method` / `X-Forwarded-Uri` (Traefik);
//! - its host is `X-Forwarded-Host` from a trusted peer, else the request's own;
//! - its headers are the request's (`Authorization` carries the key);
//! - its client address (for the per-address budgets) is read from a trusted peer's
//!   `X-Forwarded-For`, else it is the peer.
//!
//! These headers decide which route, hence which rules, apply: from a peer that is not
//! trusted they are refused (400), never silently ignored, so that a proxy missing from
//! `trusted_proxies` is noticed at once rather than judged on the wrong path.
//!
//! The body is never part of a decision (the fronting proxy does not send it): a
//! route's `max_body_bytes` is not checked here (the check request's framing is its own,
//! not the original's), only over gRPC, on the length Envoy declares ([`grpc`]). An admitted request's admission is
//! dropped as soon as it is decided: nothing it holds outlives the answer, since the
//! request itself is forwarded by another proxy.
//!
//! Answers ([`handle`]): allowed → 200, empty, with the identity headers (`x-keygate-*`),
//! `x-request-id` and the rate-limit headers; denied → keygate's own status, JSON body and
//! headers, exactly as the proxy answers them. Every answer carries
//! `x-keygate-status: <status>`, since nginx turns any `auth_request` status but 401 and
//! 403 into 500. Each decision is counted (`auth_decisions_total{mode="authorizer"}`,
//! `requests_total` by route) and access-logged (`listener: "authorizer"`) like a
//! proxied request.
//!
//! The same listener answers Envoy's `ext_authz` gRPC API ([`grpc`]): an HTTP/2 request
//! with a gRPC content type is a `Check` call, decided by [`decide`] as well.

pub mod grpc;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, Logged};
use crate::admission::{Denial, RateOutcome};
use crate::body::{self, ProxyBody};
use crate::connection::ConnectionInfo;
use crate::error::Refusal;
use crate::keys::Principal;
use crate::pipeline::{self, Routed};
use crate::policy::Policy;
use crate::settings::Authorizer;
use crate::state::App;

/// On every answer: the status keygate decided, for proxies that cannot pass it through.
pub const X_KEYGATE_STATUS: HeaderName = HeaderName::from_static("x-keygate-status");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
const X_KEYGATE_TENANT: HeaderName = HeaderName::from_static("x-keygate-tenant");
const X_KEYGATE_PLAN: HeaderName = HeaderName::from_static("x-keygate-plan");
const X_KEYGATE_SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");

/// Envoy (HTTP mode) removes the headers an allowed answer names here from the request it
/// forwards.
const X_ENVOY_AUTH_HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// nginx `auth_request`'s original method and target.
const X_ORIGINAL_METHOD: &str = "x-original-method";
const X_ORIGINAL_URI: &str = "x-original-uri";
/// Traefik ForwardAuth's.
const X_FORWARDED_METHOD: &str = "x-forwarded-method";
const X_FORWARDED_URI: &str = "x-forwarded-uri";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// The request to decide on, as the fronting proxy received it.
pub struct Original {
    /// Method, target (path and query), `Host` and the client's headers; no body.
    pub request: Request<()>,
    /// The client's address, for the per-address budgets.
    pub client: IpAddr,
}

/// What a decision allowed: whose request it is (none on a public route or a
/// preflight) and the rate decision for the answer's headers.
pub struct Allowed {
    pub principal: Option<Principal>,
    pub rate: Option<RateOutcome>,
}

/// Answers one request on the authorizer listener. Never fails: every outcome is an
/// answer.
pub async fn handle(app: Arc<App>, connection: ConnectionInfo, request: Request<Incoming>) -> Response<ProxyBody> {
    if grpc::is_grpc(&request) {
        return grpc::handle(app, connection, request).await;
    }
    let started = Instant::now();
    let policy = app.policy();
    let no_settings = Authorizer::default();
    let settings = app.settings().authorizer.as_ref().unwrap_or(&no_settings);
    let original = original_request(settings, connection.peer.ip(), &request);
    let method = original.as_ref().map_or(request.method(), |o| o.request.method()).clone();
    let mut record = AccessLog::new(pipeline::request_id(request.headers()), method, started, app.metrics().clone());
    record.authorizer = true;
    record.protocol = Some("http");
    record.usage = app.usage().cloned();
    drop(request);

    let (decided, original) = match original {
        Ok(original) => (decide(&app, &policy, &original, &mut record).await, Some(original)),
        Err(refusal) => (Err(refusal.into()), None),
    };
    match decided {
        Ok(Allowed { principal, rate }) => {
            let mut response = Response::new(body::empty());
            if let Some(principal) = &principal {
                write_identity(principal, response.headers_mut());
            }
            if let Some(original) = &original {
                let to_remove = headers_to_remove(original.request.headers(), response.headers());
                response.headers_mut().insert(X_ENVOY_AUTH_HEADERS_TO_REMOVE, to_remove);
            }
            record.principal = principal;
            answer(response, rate, StatusCode::OK, record)
        }
        Err(denial) => {
            let Denial { refusal, principal, rate } = *denial;
            note_denial(&mut record, &refusal, principal);
            let status = refusal.status();
            // Never gRPC-shaped: the fronting proxy reads an HTTP status.
            let response = refusal.into_response(&record.request_id, false);
            answer(response, rate, status, record)
        }
    }
}

/// A refusal decided before [`handle`] (the server's 431): the proxy's, plus
/// `x-keygate-status`.
pub fn refuse<B>(app: &App, request: &Request<B>, refusal: Refusal) -> Response<ProxyBody> {
    let status = refusal.status();
    let mut response = pipeline::refuse(app, request, refusal);
    response.headers_mut().insert(X_KEYGATE_STATUS, status_value(status));
    response
}

/// Notes a refused decision in its access line: why, which limit refused, and who asked
/// (when the key was known).
pub(crate) fn note_denial(record: &mut AccessLog, refusal: &Refusal, principal: Option<Principal>) {
    record.decision = refusal.decision();
    if let Some(limit) = refusal.limit_name() {
        record.limit = Some(limit.to_string());
    }
    if principal.is_some() {
        record.principal = principal;
    }
}

/// The decision on `original`: the proxy's phases 1–7, exactly. The admission is
/// dropped here, once decided (a concurrency slot cannot be held across a request
/// another proxy forwards). Meant for every authorizer protocol: the HTTP listener
/// here, and any other that can rebuild an [`Original`].
pub async fn decide(
    app: &App,
    policy: &Policy,
    original: &Original,
    record: &mut AccessLog,
) -> Result<Allowed, Box<Denial>> {
    // The body is never seen: the fronting proxy keeps it.
    let Routed { route, preflight, .. } = pipeline::route_request(app, policy, &original.request, false, record)?;
    let mut admission =
        app.gate().admit(policy, route, original.request.headers(), original.client, preflight, record).await?;
    // A plan's concurrency slot is given back at once: the request it would cover is
    // forwarded by another proxy, whose end keygate never sees.
    drop(admission.take_slot());
    let (principal, rate) = admission.into_parts();
    // Admitted: its usage counts the route's cost, as a forwarded request's does.
    if principal.is_some() && record.decision == "ok" {
        record.admitted_cost = Some(route.cost);
    }
    Ok(Allowed { principal, rate })
}

/// The request `request` (from `peer`) asks about: see the module doc. A forwarded
/// header from a peer not in `trusted_proxies`, or one that cannot be read, is a 400.
pub fn original_request<B>(settings: &Authorizer, peer: IpAddr, request: &Request<B>) -> Result<Original, Refusal> {
    let headers = request.headers();
    let trusted = crate::connection::is_trusted(&settings.trusted_proxies, peer);
    let forwarded = |name: &'static str| -> Result<Option<&HeaderValue>, Refusal> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if !trusted {
            return Err(Refusal::BadRequest(format!(
                "`{name}` is only read from a peer in authorizer.trusted_proxies; this peer is not one"
            )));
        }
        if values.next().is_some() {
            return Err(Refusal::BadRequest(format!("more than one `{name}` header")));
        }
        Ok(Some(value))
    };
    let method_header = match forwarded(X_ORIGINAL_METHOD)? {
        Some(value) => Some((X_ORIGINAL_METHOD, value)),
        None => forwarded(X_FORWARDED_METHOD)?.map(|value| (X_FORWARDED_METHOD, value)),
    };
    let uri_header = match forwarded(X_ORIGINAL_URI)? {
        Some(value) => Some((X_ORIGINAL_URI, value)),
        None => forwarded(X_FORWARDED_URI)?.map(|value| (X_FORWARDED_URI, value)),
    };
    let host_header = forwarded(X_FORWARDED_HOST)?;

    let method = match method_header {
        Some((name, value)) => Method::from_bytes(value.as_bytes())
            .map_err(|_| Refusal::BadRequest(format!("`{name}` is not an HTTP method")))?,
        None => request.method().clone(),
    };
    let uri = match uri_header {
        Some((name, value)) => {
            let target = PathAndQuery::try_from(value.as_bytes())
                .ok()
                .filter(|target| target.as_str().starts_with('/'))
                .ok_or_else(|| Refusal::BadRequest(format!("`{name}` is not a path and query starting with `/`")))?;
            Uri::from(target)
        }
        None => strip_prefix(request.uri(), settings.path_prefix.as_deref())?,
    };

    let mut view = Request::new(());
    *view.method_mut() = method;
    *view.uri_mut() = uri;
    *view.version_mut() = request.version();
    let mut copied = headers.clone();
    // The check request's own framing, not the original's: the body is not decided on.
    copied.remove(CONTENT_LENGTH);
    copied.remove(TRANSFER_ENCODING);
    if let Some(host) = host_header {
        copied.insert(HOST, host.clone());
    } else if !copied.contains_key(HOST) {
        // HTTP/2 carries the host as `:authority`.
        if let Some(authority) = request.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                copied.insert(HOST, host);
            }
        }
    }
    *view.headers_mut() = copied;
    let client = crate::address_budget::client_address(&settings.trusted_proxies, peer, headers);
    Ok(Original { request: view, client })
}

/// The request line's target (path and query), without `prefix` when one is set: a
/// path outside the prefix is not a check request (404).
fn strip_prefix(uri: &Uri, prefix: Option<&str>) -> Result<Uri, Refusal> {
    let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let target = match prefix {
        None => target.to_string(),
        Some(prefix) => match target.strip_prefix(prefix) {
            Some("") => "/".to_string(),
            Some(rest) if rest.starts_with('?') => format!("/{rest}"),
            Some(rest) if rest.starts_with('/') => rest.to_string(),
            _ => return Err(Refusal::NotFound),
        },
    };
    PathAndQuery::try_from(target).map(Uri::from).map_err(|_| Refusal::BadRequest("invalid request target".into()))
}

/// `x-keygate-key-id`, `-tenant`, `-plan`, `-scopes`: what the proxy writes upstream.
fn write_identity(principal: &Principal, headers: &mut HeaderMap) {
    let identity = principal.identity_headers();
    for (name, value) in [
        (X_KEYGATE_KEY_ID, &identity.key_id),
        (X_KEYGATE_TENANT, &identity.tenant),
        (X_KEYGATE_PLAN, &identity.plan),
        (X_KEYGATE_SCOPES, &identity.scopes),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
}

/// `x-envoy-auth-headers-to-remove`: `authorization` (the key stays between the client
/// and keygate, as when keygate forwards) and every `x-keygate-*` the client sent that
/// `answer` does not set, so that no client-made identity reaches the upstream.
fn headers_to_remove(client: &HeaderMap, answer: &HeaderMap) -> HeaderValue {
    let names = names_to_remove(client, answer);
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("authorization"))
}

/// The names [`headers_to_remove`] lists: `authorization` first, then the client's
/// `x-keygate-*` that `answer` does not set, sorted.
fn names_to_remove<'a>(client: &'a HeaderMap, answer: &HeaderMap) -> Vec<&'a str> {
    let mut names: Vec<&str> = client
        .keys()
        .map(HeaderName::as_str)
        .filter(|name| name.starts_with("x-keygate-") || name.starts_with("x_keygate_"))
        .filter(|name| !answer.contains_key(*name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names.insert(0, "authorization");
    names
}

/// The headers every answer gets, the request metrics, and the access line handed to
/// the (empty or JSON) body.
fn answer(
    mut response: Response<ProxyBody>,
    rate: Option<RateOutcome>,
    status: StatusCode,
    mut record: AccessLog,
) -> Response<ProxyBody> {
    if let Some(rate) = &rate {
        rate.write_headers(response.headers_mut());
    }
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID, record.request_id.header_value().clone());
    headers.insert(X_KEYGATE_STATUS, status_value(status));
    record.record_request(status.as_u16());
    record.status = Some(status.as_u16());
    response.map(|body| body::boxed(Logged::new(body, record)))
}

fn status_value(status: StatusCode) -> HeaderValue {
    HeaderValue::from(status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str], prefix: Option<&str>) -> Authorizer {
        Authorizer {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            path_prefix: prefix.map(str::to_string),
            ..Authorizer::default()
        }
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const NGINX: &str = "10.0.0.5";

    #[test]
    fn the_request_line_is_the_original_without_forwarded_headers() {
        let r = request("POST", "/v1/calls?x=1", &[("host", "api.example"), ("content-length", "5")]);
        let o = original_request(&settings(&[], None), NGINX.parse().unwrap(), &r).unwrap();
        assert_eq!(o.request.method(), Method::POST);
        assert_eq!(o.request.uri(), "/v1/calls?x=1");
        assert_eq!(o.request.headers()[HOST], "api.example");
        assert!(!o.request.headers().contains_key(CONTENT_LENGTH));
        assert_eq!(o.client, NGINX.parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_peer_names_method_target_host_and_client() {
        let s = settings(&["10.0.0.0/8"], None);
        let nginx = request(
            "GET",
            "/_auth",
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/v1/calls/7?a=b"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        let o = original_request(&s, NGINX.parse().unwrap(), &nginx).unwrap();
        assert_eq!((o.request.method().as_str(), o.request.uri().to_string()), ("DELETE", "/v1/calls/7?a=b".into()));
        assert_eq!(o.client, "203.0.113.9".parse::<IpAddr>().unwrap());
        let traefik = request(
            "GET",
            "/",
            &[("x-forwarded-method", "PUT"), ("x-forwarded-uri", "/v1/any"), ("x-forwarded-host", "api.example")],
        );
        let o = original_request(&s, NGINX.parse().unwrap(), &traefik).unwrap();
        assert_eq!((o.request.method().as_str(), o.request.uri().to_string()), ("PUT", "/v1/any".into()));
        assert_eq!(o.request.headers()[HOST], "api.example");
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_refused() {
        let s = settings(&["10.0.0.0/8"], None);
        for name in [X_ORIGINAL_URI, X_ORIGINAL_METHOD, X_FORWARDED_URI, X_FORWARDED_METHOD, X_FORWARDED_HOST] {
            let r = request("GET", "/v1/any", &[(name, "/v1/calls")]);
            let refused = original_request(&s, "192.0.2.1".parse().unwrap(), &r).err().unwrap();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{name}");
        }
    }

    #[test]
    fn unreadable_forwarded_headers_are_refused() {
        let s = settings(&["10.0.0.0/8"], None);
        let peer: IpAddr = NGINX.parse().unwrap();
        for headers in [
            vec![("x-original-uri", "v1/calls")],
            vec![("x-original-method", "GE T")],
            vec![("x-original-uri", "/a"), ("x-original-uri", "/b")],
        ] {
            let r = request("GET", "/", &headers);
            assert_eq!(original_request(&s, peer, &r).err().unwrap().status(), StatusCode::BAD_REQUEST, "{headers:?}");
        }
    }

    #[test]
    fn the_path_prefix_is_stripped_from_the_request_line_only() {
        let s = settings(&[], Some("/authz"));
        let peer: IpAddr = NGINX.parse().unwrap();
        for (target, want) in [("/authz/v1/calls?x=1", "/v1/calls?x=1"), ("/authz", "/"), ("/authz?q", "/?q")] {
            let o = original_request(&s, peer, &request("GET", target, &[])).unwrap();
            assert_eq!(o.request.uri(), want);
        }
        for target in ["/authzv1/calls", "/v1/calls"] {
            let refused = original_request(&s, peer, &request("GET", target, &[])).err().unwrap();
            assert_eq!(refused.status(), StatusCode::NOT_FOUND, "{target}");
        }
    }
}
