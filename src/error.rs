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
/// them apart, and for a missing or malformed key says what was wrong with what was sent
/// (never quoting it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No key was sent.
    Missing(NoKey),
    /// What was sent is not a well-formed keygate key.
    Malformed(BadKey),
    Unknown,
    Expired,
    Revoked,
}

/// Why no key was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoKey {
    /// No `Authorization` header.
    NoHeader,
    /// Credentials of another scheme: its name when it is a well-known one (`Basic`).
    OtherScheme(Option<&'static str>),
}

/// What is wrong with credentials that are not a well-formed keygate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadKey {
    /// More than one `Authorization` header.
    Duplicated,
    /// A header value that is not visible ASCII.
    NotText,
    /// A key without a scheme (`Authorization: kg_…`).
    NoScheme,
    /// A scheme that is almost `Bearer` (`Bearer:`, `Baerer`).
    SchemeMisspelt,
    /// `Bearer` with nothing after it.
    EmptyBearer,
    /// `Bearer Bearer kg_…`.
    SchemeTwice,
    /// `Bearer "kg_…"`.
    Quoted,
    /// `Bearer <kg_…>`: the placeholder's brackets kept.
    Bracketed,
    /// Whitespace inside the token.
    Whitespace,
    /// Another product's credential, named (`a Stripe secret key`, `a JWT`).
    Foreign(&'static str),
    /// Not starting with `kg_`.
    Prefix,
    /// `KG_` or `Kg_` instead of `kg_`.
    PrefixCase,
    /// `kg_…` of the wrong length (in characters), and the right one.
    Length { sent: usize, expected: usize },
    /// A character outside base62.
    Charset,
    /// The checksum does not match.
    Checksum,
}

/// The fix, for the messages that have one.
const SEND_BEARER: &str = "send `Authorization: Bearer <key>`";

impl AuthFailure {
    /// The failure's name: the access log's `decision` and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing(_) => "missing",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
        }
    }

    /// The failure without its detail: what the metric counts.
    pub const fn label(self) -> AuthFailure {
        match self {
            AuthFailure::Missing(_) => AuthFailure::Missing(NoKey::NoHeader),
            AuthFailure::Malformed(_) => AuthFailure::Malformed(BadKey::Prefix),
            other => other,
        }
    }

    fn message(self) -> String {
        match self {
            AuthFailure::Missing(NoKey::NoHeader) => format!("API key missing: {SEND_BEARER}"),
            AuthFailure::Missing(NoKey::OtherScheme(Some(scheme))) => {
                format!("API key missing: the `Authorization` header uses the {scheme} scheme; {SEND_BEARER}")
            }
            AuthFailure::Missing(NoKey::OtherScheme(None)) => {
                format!("API key missing: the `Authorization` header uses another scheme than Bearer; {SEND_BEARER}")
            }
            AuthFailure::Malformed(bad) => format!("API key malformed: {}", bad.message()),
            AuthFailure::Unknown => "API key unknown".to_string(),
            AuthFailure::Expired => "API key expired".to_string(),
            AuthFailure::Revoked => "API key revoked".to_string(),
        }
    }
}

impl BadKey {
    fn message(self) -> String {
        match self {
            BadKey::Duplicated => format!("more than one `Authorization` header; {SEND_BEARER} once"),
            BadKey::NotText => {
                "the `Authorization` header holds characters other than visible ASCII (a key is `kg_`, letters \
                 and digits)"
                    .to_string()
            }
            BadKey::NoScheme => format!("the `Authorization` header has no scheme: {SEND_BEARER}"),
            BadKey::SchemeMisspelt => format!("the scheme is misspelt: {SEND_BEARER}"),
            BadKey::EmptyBearer => format!("`Bearer` is followed by no key: {SEND_BEARER}"),
            BadKey::SchemeTwice => format!("`Bearer` is written twice: {SEND_BEARER}"),
            BadKey::Quoted => "the key is in quotes: send it bare, `Authorization: Bearer kg_…`".to_string(),
            BadKey::Bracketed => {
                "the key is in angle brackets: `<key>` stands for the key itself, send `Authorization: Bearer kg_…`"
                    .to_string()
            }
            BadKey::Whitespace => "the key contains whitespace (a space or line break pasted into it?)".to_string(),
            BadKey::Foreign(what) => {
                format!("this looks like {what}, not a keygate key (keygate keys start with `kg_`)")
            }
            BadKey::Prefix => "it is not a keygate key (keygate keys start with `kg_`)".to_string(),
            BadKey::PrefixCase => "keygate keys start with a lower-case `kg_`".to_string(),
            BadKey::Length { sent, expected } => format!(
                "a keygate key is {expected} characters long, this one is {sent} (truncated, or run into other text?)"
            ),
            BadKey::Charset => "the key contains a character that is not a letter or a digit after `kg_`".to_string(),
            BadKey::Checksum => "the key's checksum does not match (mistyped or truncated?)".to_string(),
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
        AuthResult::Key(AuthFailure::Missing(NoKey::NoHeader)),
        AuthResult::Key(AuthFailure::Malformed(BadKey::Prefix)),
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
            AuthResult::Key(AuthFailure::Missing(_)) => 1,
            AuthResult::Key(AuthFailure::Malformed(_)) => 2,
            AuthResult::Key(AuthFailure::Unknown) => 3,
            AuthResult::Key(AuthFailure::Expired) => 4,
            AuthResult::Key(AuthFailure::Revoked) => 5,
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

/// What a plan's limit counts over, as a 429's message words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSpan {
    /// A sliding window of this many seconds.
    Window { secs: u64 },
    /// A calendar day (UTC).
    Day,
    /// A calendar month (UTC).
    Month,
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
    /// 429 from one of the plan's limits (`limit`: its name, the body's `"limit"`); the
    /// rate-limit headers are added by the caller, who has the decision. `named`: the plan
    /// has `limits = [...]`, so the message names the limit (a legacy plan's message is
    /// what it always was).
    RateLimited { limit: String, requests: u64, per: LimitSpan, named: bool, retry_after: u64 },
    /// 429 from the plan's `concurrency`: the tenant has `cap` requests in flight. The
    /// body's `"limit"` is `concurrency`, and `Retry-After` 1.
    ConcurrencyLimited { cap: u32 },
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

/// The `limit` a concurrency refusal names.
pub const CONCURRENCY_LIMIT_NAME: &str = "concurrency";

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
            Refusal::RateLimited { .. } | Refusal::ConcurrencyLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            Refusal::RateLimited { .. } | Refusal::ConcurrencyLimited { .. } => "rate_limited",
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
            Refusal::Unauthorized(failure) => failure.message(),
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
            Refusal::RateLimited { limit, requests, per, named, .. } => {
                let noun = if *requests == 1 { "request" } else { "requests" };
                let phrase = match per {
                    LimitSpan::Window { secs } => window_phrase(*secs),
                    LimitSpan::Day => "day".to_string(),
                    LimitSpan::Month => "month".to_string(),
                };
                match (named, per) {
                    (false, _) => format!("Rate limit of {requests} {noun} per {phrase} exceeded"),
                    (true, LimitSpan::Window { .. }) => {
                        format!("Rate limit \"{limit}\" of {requests} {noun} per {phrase} exceeded")
                    }
                    (true, LimitSpan::Day | LimitSpan::Month) => {
                        format!("Quota \"{limit}\" of {requests} {noun} per {phrase} exceeded")
                    }
                }
            }
            Refusal::ConcurrencyLimited { cap } => {
                let noun = if *cap == 1 { "request" } else { "requests" };
                format!("Concurrency limit of {cap} {noun} in flight exceeded; retry when one has finished")
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

    /// The name of the plan's limit that refused a 429 (the body's and the access line's
    /// `limit`): a rate limit's name, or `concurrency`.
    pub fn limit_name(&self) -> Option<&str> {
        match self {
            Refusal::RateLimited { limit, .. } => Some(limit),
            Refusal::ConcurrencyLimited { .. } => Some(CONCURRENCY_LIMIT_NAME),
            _ => None,
        }
    }

    /// `Retry-After` in whole seconds, where the refusal has one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after, .. }
            | Refusal::Unavailable { retry_after }
            | Refusal::FailedAuthLimited { retry_after }
            | Refusal::PreflightLimited { retry_after } => Some((*retry_after).max(1)),
            Refusal::UpstreamBusy | Refusal::ConcurrencyLimited { .. } => Some(1),
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
            Refusal::RateLimited { .. } | Refusal::ConcurrencyLimited { .. } => 8, // RESOURCE_EXHAUSTED
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
            Refusal::RateLimited { .. } | Refusal::ConcurrencyLimited { .. } => "rate_limited",
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
            Refusal::Unauthorized(failure) => AuthResult::Key(failure.label()),
            Refusal::NoApiAccess { .. } | Refusal::UnknownPlan { .. } => AuthResult::NoApiAccess,
            Refusal::RateLimited { .. } | Refusal::ConcurrencyLimited { .. } => AuthResult::RateLimited,
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
                .header("grpc-message", crate::encoding::grpc_message(&self.message()))
                .body(empty_body())
        } else {
            let mut error = serde_json::json!({
                "type": self.error_type(),
                "message": self.message(),
                "request_id": request_id,
            });
            if let (Some(retry), Some(limit)) = (self.retry_after(), self.limit_name()) {
                error["limit"] = limit.into();
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
            Refusal::Unauthorized(AuthFailure::Missing(_)) => {
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

fn full_body(text: String) -> ProxyBody {
    Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync()
}

fn empty_body() -> ProxyBody {
    crate::body::empty()
}

#[cfg(test)]
mod tests;
