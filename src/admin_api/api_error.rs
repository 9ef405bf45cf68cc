//! The API's refusals (`{"error": {"type", "code", "message"}}`, with their headers) and
//! its JSON answers. Store details are logged, never returned.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::keys::data::StoreError;
use crate::keys::manage::ManageError;

/// The `realm` of the API's `WWW-Authenticate` challenge (RFC 6750 3).
pub const REALM: &str = "keygate-admin";

/// A refused call: its status, `type`, `code` and one-line message. Never a secret, and
/// no internal detail (store errors are logged, not returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Extra headers: `WWW-Authenticate`, `Allow`, `Retry-After`.
    pub(super) headers: Vec<(http::HeaderName, String)>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), headers: Vec::new() }
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with the RFC 6750 3 challenge; `error="invalid_token"` when a token was sent.
    pub(super) fn unauthorized(token_sent: bool) -> ApiError {
        let (code, message, challenge) = if token_sent {
            ("invalid_token", "admin API token invalid", format!("Bearer realm=\"{REALM}\", error=\"invalid_token\""))
        } else {
            (
                "missing_token",
                "admin API token missing: send it as `Authorization: Bearer <token>`",
                format!("Bearer realm=\"{REALM}\""),
            )
        };
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, code, message);
        error.headers.push((WWW_AUTHENTICATE, challenge));
        error
    }

    pub(super) fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_path",
            "no such path: the API serves /admin/v1/tenants[/ID[/limits]], /admin/v1/keys[/ID[/rotate|/limits]] and /admin/v1/usage",
        )
    }

    pub(super) fn method_not_allowed(allow: &[Method]) -> ApiError {
        let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this path takes {}", allow.join(", ")),
        );
        error.headers.push((ALLOW, allow.join(", ")));
        error
    }

    pub(super) fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// The `type` of the error body, from the status.
    fn error_type(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal_error",
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let body = json!({"error": {"type": self.error_type(), "code": self.code, "message": self.message}});
        let mut response = json_response(self.status, &body);
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The CLI's refusals as HTTP: bad input 400, unknown tenant or key 404, a conflict with
/// what is stored 409, the store unreachable 503 (with `Retry-After`). Store details are
/// logged here and never returned.
impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> ApiError {
        let (status, code) = match &e {
            ManageError::InvalidTenantId(_) => (StatusCode::BAD_REQUEST, "invalid_tenant_id"),
            ManageError::UnknownPlan { .. } => (StatusCode::BAD_REQUEST, "unknown_plan"),
            ManageError::UnknownScope { .. } => (StatusCode::BAD_REQUEST, "unknown_scope"),
            ManageError::NoScopes => (StatusCode::BAD_REQUEST, "no_scopes"),
            ManageError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            ManageError::InvalidExpiry(_) => (StatusCode::BAD_REQUEST, "invalid_expiry"),
            ManageError::InvalidLimits(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_limits"),
            ManageError::UnknownTenant(_) => (StatusCode::NOT_FOUND, "unknown_tenant"),
            ManageError::UnknownKey(_) => (StatusCode::NOT_FOUND, "unknown_key"),
            ManageError::TenantExists(_) => (StatusCode::CONFLICT, "tenant_exists"),
            ManageError::NoApiAccess(_) => (StatusCode::CONFLICT, "no_api_access"),
            ManageError::CapReached { .. } => (StatusCode::CONFLICT, "cap_reached"),
            ManageError::Revoked(_) => (StatusCode::CONFLICT, "key_revoked"),
            ManageError::Expired(_) => (StatusCode::CONFLICT, "key_expired"),
            ManageError::Replaced { .. } => (StatusCode::CONFLICT, "key_replaced"),
            ManageError::Store(StoreError::Unavailable(detail) | StoreError::Corrupt(detail)) => {
                tracing::warn!(error = %detail, "admin API: the key store is unreachable");
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the key store is unreachable; nothing was changed, try again",
                );
                error.headers.push((RETRY_AFTER, "1".to_string()));
                return error;
            }
            ManageError::Store(store_error @ StoreError::File { .. }) => {
                tracing::error!(error = %store_error, "admin API: the key store failed");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "store_error",
                    "the key store failed; see the log",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A JSON answer; nothing the API says may be cached (some of it is a secret).
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 201 with the new resource's `Location`.
pub(super) fn created(location: &str, body: &Value) -> Response<Full<Bytes>> {
    let mut response = json_response(StatusCode::CREATED, body);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}
