//! Every refusal keygate decides, and its ONE mapping: to status, headers and JSON body
//! (docs/reference.md §4.2), to a gRPC-shaped answer for gRPC requests, to the access log's `decision`
//! and to the `result` label of `keygate_auth_decisions_total`. Nothing else in the crate
//! matches on a [`Refusal`]; one table test pins every mapping of every variant.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;

/// Why a key did not authenticate; the 401 message names it, so API clients can tell
/// them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl AuthFailure {
    /// The failure's name: the access log's `decision` and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "API key missing: send it as `Authorization: Bearer <key>`",
            AuthFailure::Malformed => "API key malformed: it is not a keygate key (mistyped or truncated?)",
            AuthFailure::Unknown => "API key unknown",
            AuthFailure::Expired => "API key expired",
            AuthFailure::Revoked => "API key revoked",
        }
    }
}

/// How a request's admission ended: the `result` label of
/// `keygate_auth_decisions_total` (docs/reference.md §5.1). A key that did not authenticate is labelled
/// by its [`AuthFailure`], so the two never drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// Authenticated, authorised and within its limit.
    Ok,
    /// The key did not authenticate.
    Key(AuthFailure),
    /// The key lacks a scope of the route (or a declared body is over the route's limit).
    Forbidden,
    /// The tenant's plan has no API access (or is unknown).
    NoApiAccess,
    RateLimited,
    /// The store was needed and unreachable (503).
    StoreUnavailable,
}

impl AuthResult {
    /// Every value, in the order of the metric's cached children.
    pub const ALL: [AuthResult; 10] = [
        AuthResult::Ok,
        AuthResult::Key(AuthFailure::Missing),
        AuthResult::Key(AuthFailure::Malformed),
        AuthResult::Key(AuthFailure::Unknown),
        AuthResult::Key(AuthFailure::Expired),
        AuthResult::Key(AuthFailure::Revoked),
        AuthResult::Forbidden,
        AuthResult::NoApiAccess,
        AuthResult::RateLimited,
        AuthResult::StoreUnavailable,
    ];

    /// Position in [`AuthResult::ALL`].
    pub const fn index(self) -> usize {
        match self {
            AuthResult::Ok => 0,
            AuthResult::Key(failure) => 1 + failure as usize,
            AuthResult::Forbidden => 6,
            AuthResult::NoApiAccess => 7,
            AuthResult::RateLimited => 8,
            AuthResult::StoreUnavailable => 9,
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Key(failure) => failure.as_str(),
            AuthResult::Forbidden => "forbidden",
            AuthResult::NoApiAccess => "no_api_access",
            AuthResult::RateLimited => "rate_limited",
            AuthResult::StoreUnavailable => "store_unavailable",
        }
    }
}

impl std::fmt::Display for AuthResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision that ends a request without reaching the upstream (or after it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed request or path, or a key in the query. The message is safe to show.
    BadRequest(String),
    /// 400: the request body failed while it was streamed upstream (malformed chunked
    /// framing, shorter than declared, reset): the client's error, not the upstream's.
    BadRequestBody,
    /// 401.
    Unauthorized(AuthFailure),
    /// 403: the key lacks `scope`, the first missing one of the route's.
    InsufficientScope { scope: String },
    /// 403: the tenant's plan has `api_access = false`.
    NoApiAccess { plan: String },
    /// 403: the tenant's plan is not in the current policy.
    UnknownPlan { plan: String },
    /// 404: no route matches.
    NotFound,
    /// 405, with `Allow`.
    MethodNotAllowed { allow: Vec<Method> },
    /// 413: the body is larger than the route's `max_body_bytes`.
    PayloadTooLarge { limit: u64 },
    /// 429; the rate-limit headers are added by the caller, who has the decision.
    RateLimited { requests: u64, window_secs: u64, retry_after: u64 },
    /// 431: request head larger than `max_header_bytes`.
    HeadersTooLarge,
    /// 502: upstream refused, reset, or answered with something that is not HTTP.
    BadGateway,
    /// 503: the store is unreachable where the decision needs it.
    Unavailable { retry_after: u64 },
    /// 504: upstream response headers later than its `timeout`.
    GatewayTimeout,
    /// 408: the request body slowed below `server.min_body_rate` (or stalled).
    RequestTimeout,
    /// 429: this client address has failed authentication too often lately
    /// (`server.failed_auth_per_minute`); answered without a store lookup.
    FailedAuthLimited { retry_after: u64 },
    /// 429: this client address has sent too many CORS preflights lately
    /// (`server.preflights_per_minute`).
    PreflightLimited { retry_after: u64 },
    /// 503: the upstream's `max_connections` are all busy and the request waited its
    /// `queue_timeout` in vain.
    UpstreamBusy,
    /// 499 (nginx's "client closed request"): the client went away before its request
    /// was complete (closed mid-body, or reset the HTTP/2 stream). Rarely seen by anyone
    /// but the access log and the metrics: there is no one left to answer.
    ClientClosed,
}

/// nginx's 499 "client closed request" (no standard code exists for it).
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::BadRequestBody => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::InsufficientScope { .. } | Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => {
                StatusCode::FORBIDDEN
            }
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::FailedAuthLimited { .. } | Refusal::PreflightLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::ClientClosed => StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// The `type` of the JSON error body.
    pub fn error_type(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) | Refusal::BadRequestBody => "bad_request",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::InsufficientScope { .. } | Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => {
                "forbidden"
            }
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::BadGateway => "bad_gateway",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::FailedAuthLimited { .. } | Refusal::PreflightLimited { .. } => "rate_limited",
            Refusal::UpstreamBusy => "upstream_busy",
            Refusal::ClientClosed => "client_closed_request",
        }
    }

    /// A message for the API client. Never carries internal detail or a secret.
    pub fn message(&self) -> String {
        match self {
            Refusal::BadRequest(why) => format!("Bad request: {why}"),
            Refusal::BadRequestBody => "Bad request: the request body was malformed or ended early".to_string(),
            Refusal::Unauthorized(failure) => failure.message().to_string(),
            Refusal::InsufficientScope { scope } => {
                format!("This API key lacks the scope `{scope}` that this route requires")
            }
            Refusal::NoApiAccess { plan } => format!("The plan `{plan}` does not include API access"),
            Refusal::UnknownPlan { plan } => {
                format!("The plan `{plan}` of this account is not available; contact support")
            }
            Refusal::NotFound => "No route matches this path".to_string(),
            Refusal::MethodNotAllowed { .. } => "This method is not allowed on this route".to_string(),
            Refusal::PayloadTooLarge { limit } => {
                format!("The request body is larger than this route's limit of {limit} bytes")
            }
            Refusal::RateLimited { requests, window_secs, .. } => {
                let noun = if *requests == 1 { "request" } else { "requests" };
                format!("Rate limit of {requests} {noun} per {} exceeded", window_phrase(*window_secs))
            }
            Refusal::HeadersTooLarge => "The request headers are too large".to_string(),
            Refusal::BadGateway => "The upstream service could not be reached or answered badly".to_string(),
            Refusal::Unavailable { .. } => "The key store is temporarily unavailable; retry shortly".to_string(),
            Refusal::GatewayTimeout => "The upstream service did not answer in time".to_string(),
            Refusal::RequestTimeout => "The request body arrived too slowly".to_string(),
            Refusal::FailedAuthLimited { .. } => {
                "Too many failed authentication attempts from this address; retry later".to_string()
            }
            Refusal::PreflightLimited { .. } => "Too many CORS preflight requests from this address".to_string(),
            Refusal::UpstreamBusy => "The upstream service is busy; retry shortly".to_string(),
            Refusal::ClientClosed => "The client closed the request before it was complete".to_string(),
        }
    }

    /// `Retry-After` in whole seconds, where the refusal has one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after, .. }
            | Refusal::Unavailable { retry_after }
            | Refusal::FailedAuthLimited { retry_after }
            | Refusal::PreflightLimited { retry_after } => Some((*retry_after).max(1)),
            Refusal::UpstreamBusy => Some(1),
            _ => None,
        }
    }

    /// The gRPC status code a gRPC client expects for this refusal.
    pub fn grpc_status(&self) -> u32 {
        match self {
            Refusal::BadRequest(_)
            | Refusal::BadRequestBody
            | Refusal::PayloadTooLarge { .. }
            | Refusal::HeadersTooLarge => 3, // INVALID_ARGUMENT
            Refusal::Unauthorized(_) => 16, // UNAUTHENTICATED
            Refusal::InsufficientScope { .. } | Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => 7, // PERMISSION_DENIED
            Refusal::NotFound | Refusal::MethodNotAllowed { .. } => 12, // UNIMPLEMENTED
            Refusal::RateLimited { .. } => 8,                           // RESOURCE_EXHAUSTED
            Refusal::BadGateway | Refusal::Unavailable { .. } => 14,    // UNAVAILABLE
            Refusal::GatewayTimeout | Refusal::RequestTimeout => 4,     // DEADLINE_EXCEEDED
            Refusal::FailedAuthLimited { .. } | Refusal::PreflightLimited { .. } => 8, // RESOURCE_EXHAUSTED
            Refusal::UpstreamBusy => 14,                                // UNAVAILABLE
            Refusal::ClientClosed => 1,                                 // CANCELLED
        }
    }

    /// The `decision` field of the access log.
    pub fn decision(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(failure) => failure.as_str(),
            Refusal::InsufficientScope { .. } => "forbidden",
            Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => "no_api_access",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Unavailable { .. } => "store_unavailable",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::BadRequestBody => "bad_request_body",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::BadGateway => "bad_gateway",
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::RequestTimeout => "body_too_slow",
            Refusal::FailedAuthLimited { .. } => "failed_auth_limited",
            Refusal::PreflightLimited { .. } => "preflight_limited",
            Refusal::UpstreamBusy => "upstream_busy",
            Refusal::ClientClosed => "client_closed",
        }
    }

    /// The `result` label of `auth_decisions_total` for a refusal of the admission
    /// phases. A tenant whose plan is unknown counts as `no_api_access`; a declared body
    /// over the route's limit as `forbidden` (the other refusals never reach the count).
    pub fn auth_result(&self) -> AuthResult {
        match self {
            Refusal::Unauthorized(failure) => AuthResult::Key(*failure),
            Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => AuthResult::NoApiAccess,
            Refusal::RateLimited { .. } => AuthResult::RateLimited,
            Refusal::Unavailable { .. } => AuthResult::StoreUnavailable,
            Refusal::InsufficientScope { .. }
            | Refusal::PayloadTooLarge { .. }
            | Refusal::BadRequest(_)
            | Refusal::BadRequestBody
            | Refusal::NotFound
            | Refusal::MethodNotAllowed { .. }
            | Refusal::HeadersTooLarge
            | Refusal::BadGateway
            | Refusal::GatewayTimeout
            | Refusal::RequestTimeout
            | Refusal::PreflightLimited { .. }
            | Refusal::UpstreamBusy
            | Refusal::ClientClosed => AuthResult::Forbidden,
            Refusal::FailedAuthLimited { .. } => AuthResult::RateLimited,
        }
    }

    /// The response: JSON (docs/reference.md §4.2), or gRPC-shaped (HTTP 200, `grpc-status`,
    /// `grpc-message`) when the request was gRPC.
    pub fn into_response(self, request_id: &str, grpc: bool) -> Response<ProxyBody> {
        let mut builder = Response::builder();
        let headers = builder.headers_mut();
        if let Some(headers) = headers {
            self.add_headers(headers);
        }
        let response = if grpc {
            builder
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-status", self.grpc_status().to_string())
                .header("grpc-message", grpc_percent_encode(&self.message()))
                .body(empty_body())
        } else {
            let mut error = serde_json::json!({
                "type": self.error_type(),
                "message": self.message(),
                "request_id": request_id,
            });
            if let (Some(retry), Refusal::RateLimited { .. }) = (self.retry_after(), &self) {
                error["retry_after"] = retry.into();
            }
            let body = serde_json::json!({ "error": error }).to_string();
            builder.status(self.status()).header(CONTENT_TYPE, "application/json").body(full_body(body))
        };
        response.unwrap_or_else(|_| {
            // Unreachable with the fixed header names and values above; answer plainly.
            let mut fallback = Response::new(empty_body());
            *fallback.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }

    fn add_headers(&self, headers: &mut http::HeaderMap) {
        const REALM: &str = "Bearer realm=\"keygate\"";
        match self {
            Refusal::Unauthorized(AuthFailure::Missing) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
            }
            Refusal::Unauthorized(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate\", error=\"invalid_token\""),
                );
            }
            Refusal::InsufficientScope { scope } => {
                // Scope names are validated tokens (no quotes or whitespace).
                let value = format!("{REALM}, error=\"insufficient_scope\", scope=\"{scope}\"");
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, value);
                }
            }
            Refusal::MethodNotAllowed { allow } => {
                let list = allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                if let Ok(value) = HeaderValue::from_str(&list) {
                    headers.insert(ALLOW, value);
                }
            }
            _ => {}
        }
        if let Some(retry) = self.retry_after() {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry));
        }
    }
}

/// "minute" for 60 s, else "N seconds" (or "hour"/"day" when exact).
fn window_phrase(secs: u64) -> String {
    match secs {
        1 => "second".to_string(),
        60 => "minute".to_string(),
        3600 => "hour".to_string(),
        86_400 => "day".to_string(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// gRPC's `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            crate::encoding::push_percent_encoded(&mut out, byte);
        }
    }
    out
}

fn full_body(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync()
}

fn empty_body() -> ProxyBody {
    crate::body::empty()
}

#[cfg(test)]
mod tests;
