//! The key and tenant API (SPEC 5.2): JSON in and out on `[admin] api_address`, for a
//! dashboard backend that manages tenants and keys without shelling out to the CLI.
//!
//! Served only when a token is configured ([`load_token`]); every call needs
//! `Authorization: Bearer <token>` (RFC 6750 2.1), compared in constant time. The
//! operations, rules and errors are the CLI's: the same [`Store`] operations (file or
//! Redis), the same [`ManageError`]s mapped to a status here, the same JSON objects
//! ([`crate::keys::json`]) and the same audit lines ([`crate::keys::audit`]).
//!
//! | call | answer |
//! |---|---|
//! | `POST /admin/v1/tenants` `{id, plan}` | 201, the tenant |
//! | `GET /admin/v1/tenants` | 200, every tenant with `active_keys` |
//! | `GET /admin/v1/tenants/ID` | 200, the tenant with `active_keys` |
//! | `PATCH /admin/v1/tenants/ID` `{plan}` | 200, the tenant |
//! | `DELETE /admin/v1/tenants/ID` | 200, the tenant and `revoked_keys` |
//! | `POST /admin/v1/keys` `{tenant, name, scopes, expires_in?}` | 201, the key with its secret, once |
//! | `GET /admin/v1/keys[?tenant=T]` | 200, the keys (never a secret) |
//! | `GET /admin/v1/keys/ID` | 200, the key |
//! | `DELETE /admin/v1/keys/ID` | 200, the revoked key |
//! | `POST /admin/v1/keys/ID/rotate` `{grace?}` | 201, the new key with its secret, once |
//!
//! Errors are `{"error": {"type", "code", "message"}}`: 400 bad input, 401 no or wrong
//! token, 404 unknown tenant or key (or path), 405, 409 a conflict with the stored state
//! (exists, cap reached, revoked…), 413 a body over 64 KiB, 503 the store unreachable.
//! `docs/admin-api.md` is the operator's guide.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::keys::audit::{self, Via};
use crate::keys::json::{self, Replaced};
use crate::keys::lifecycle::{self, Store};
use crate::keys::manage::{ManageError, NewKey};
use crate::keys::store::StoreError;
use crate::settings::Settings;

/// The largest request body, in bytes: the biggest legitimate one (a key with every
/// scope) is far smaller. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `realm` of the API's `WWW-Authenticate` challenge (RFC 6750 3).
pub const REALM: &str = "keygate-admin";

/// The grace of a rotation that names none, as for `keygate keys rotate`.
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// A token shorter than this is accepted, with a warning: it could be guessed.
const SHORT_TOKEN_CHARS: usize = 16;

/// The API's state: the running keygate (its store, current policy and peppers) and the
/// token. Only the token's SHA-256 is kept, so a presented token is compared with it in
/// constant time and in fixed length (no early exit on a length mismatch).
pub struct AdminApi {
    app: Arc<App>,
    token_digest: [u8; 32],
}

/// Serves the API on `listener` until `stop` is cancelled; connections in flight finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, token: String, stop: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(app.settings.server.header_read_timeout);
    let builder = Arc::new(builder);
    let deadline = app.settings.server.header_read_timeout;
    let api = Arc::new(AdminApi::new(app, &token));
    drop(token);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let api = api.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let first_head = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = first_head.clone();
            let service = service_fn(move |request| {
                seen.store(true, std::sync::atomic::Ordering::Release);
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(request, Some(peer)).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            crate::server::first_head_within(deadline, &first_head, watcher.watch(connection.into_owned())).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The API token: the trimmed content of `admin.token_file`, else `$KEYGATE_ADMIN_TOKEN`.
/// `None` (neither set) leaves the API off. An unreadable or empty file, or a variable
/// that is set but empty or not UTF-8, is an error: the operator asked for the API.
pub fn load_token(settings: &Settings) -> Result<Option<String>, String> {
    let token = match &settings.admin.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("admin.token_file {}: cannot read it: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("admin.token_file {} is empty", path.display()));
            }
            token.to_string()
        }
        None => match std::env::var("KEYGATE_ADMIN_TOKEN") {
            Ok(text) if text.trim().is_empty() => {
                return Err("$KEYGATE_ADMIN_TOKEN is set but empty (unset it to turn the admin API off)".to_string())
            }
            Ok(text) => text.trim().to_string(),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => return Err("$KEYGATE_ADMIN_TOKEN is not UTF-8".to_string()),
        },
    };
    if token.chars().count() < SHORT_TOKEN_CHARS {
        tracing::warn!(
            "the admin API token is shorter than {SHORT_TOKEN_CHARS} characters and could be guessed; \
             use a long random one (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(Some(token))
}

/// The resources of the API, from the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Tenants,
    Tenant(String),
    Keys,
    Key(String),
    Rotate(String),
}

impl Resource {
    /// `/admin/v1/…` → the resource; `None` for any other path. Ids are taken as they
    /// are: a valid tenant or key id needs no percent-encoding, so an encoded one is
    /// simply unknown.
    fn parse(path: &str) -> Option<Resource> {
        let rest = path.strip_prefix("/admin/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        match segments.as_slice() {
            ["tenants"] => Some(Resource::Tenants),
            ["tenants", id] => Some(Resource::Tenant((*id).to_string())),
            ["keys"] => Some(Resource::Keys),
            ["keys", id] => Some(Resource::Key((*id).to_string())),
            ["keys", id, "rotate"] => Some(Resource::Rotate((*id).to_string())),
            _ => None,
        }
    }

    /// The methods the resource takes (the `Allow` of a 405).
    fn methods(&self) -> &'static [Method] {
        match self {
            Resource::Tenants | Resource::Keys => &[Method::GET, Method::POST],
            Resource::Tenant(_) => &[Method::GET, Method::PATCH, Method::DELETE],
            Resource::Key(_) => &[Method::GET, Method::DELETE],
            Resource::Rotate(_) => &[Method::POST],
        }
    }

    /// The query parameters the resource takes; any other is refused, so that a typo
    /// (`?tenants=acme`) never lists every tenant's keys.
    fn query_parameters(&self) -> &'static [&'static str] {
        match self {
            Resource::Keys => &["tenant"],
            _ => &[],
        }
    }
}

/// `POST /admin/v1/tenants`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    id: String,
    plan: String,
}

/// `PATCH /admin/v1/tenants/ID`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPlan {
    plan: String,
}

/// `POST /admin/v1/keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    tenant: String,
    name: String,
    scopes: Vec<String>,
    /// A duration (`90d`); absent or null: the key never expires.
    #[serde(default)]
    expires_in: Option<String>,
}

/// `POST /admin/v1/keys/ID/rotate`; the body may be empty.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// A duration (`1h`, the default): how long the old key keeps working.
    #[serde(default)]
    grace: Option<String>,
}

/// A refused call: its status, `type`, `code` and one-line message. Never a secret, and
/// no internal detail (store errors are logged, not returned).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra headers: `WWW-Authenticate`, `Allow`, `Retry-After`.
    headers: Vec<(http::HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), headers: Vec::new() }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with the RFC 6750 3 challenge; `error="invalid_token"` when a token was sent.
    fn unauthorized(token_sent: bool) -> ApiError {
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

    fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_path",
            "no such path: the API serves /admin/v1/tenants[/ID] and /admin/v1/keys[/ID[/rotate]]",
        )
    }

    fn method_not_allowed(allow: &[Method]) -> ApiError {
        let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this path takes {}", allow.join(", ")),
        );
        error.headers.push((ALLOW, allow.join(", ")));
        error
    }

    fn payload_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
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
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal_error",
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
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

/// The peer's address for a log line, or `-`.
fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.to_string())
}

/// A JSON answer; nothing the API says may be cached (some of it is a secret).
fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 201 with the new resource's `Location`.
fn created(location: &str, body: &Value) -> Response<Full<Bytes>> {
    let mut response = json_response(StatusCode::CREATED, body);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// The token of the one `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235 2.1). `Err(false)`: no usable credentials were sent (no
/// header, another scheme); `Err(true)`: something token-like was sent but is unusable
/// (two headers, an empty token, not visible ASCII).
fn bearer(headers: &HeaderMap) -> Result<&str, bool> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(false)?;
    if values.next().is_some() {
        return Err(true);
    }
    let text = value.to_str().map_err(|_| true)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(false)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(false);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(true);
    }
    Ok(token)
}

/// The query parameters, each allowed and given at most once.
fn query_parameters<'q>(query: Option<&'q str>, allowed: &[&str]) -> Result<Vec<(&'q str, &'q str)>, ApiError> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&name) {
            let known = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!("unknown query parameter `{name}` (this path takes: {known})"),
            ));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request("repeated_parameter", format!("query parameter `{name}` given twice")));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Reads a body of at most [`MAX_BODY_BYTES`], within `timeout`.
async fn read_body<B>(body: B, declared: Option<u64>, timeout: Duration) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::payload_too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body came too slowly")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::payload_too_large()),
        Ok(Err(_)) => Err(ApiError::bad_request("body_unreadable", "the request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A JSON body of type `T`; an empty body is `{}` when `empty_ok`.
fn parse_body<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return serde_json::from_str("{}").map_err(|e| ApiError::bad_request("invalid_json", e.to_string()));
        }
        return Err(ApiError::bad_request("invalid_json", "this call needs a JSON object body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

/// A duration field (`90d`, `1h`), named in the error as the CLI names its flag.
fn parse_duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    crate::duration::parse(text).map_err(|e| ApiError::bad_request("invalid_duration", format!("{field}: {e}")))
}

impl AdminApi {
    /// The API over `app`'s store, policy and peppers, answering to `token`.
    pub fn new(app: Arc<App>, token: &str) -> AdminApi {
        AdminApi { app, token_digest: sha2::Sha256::digest(token.as_bytes()).into() }
    }

    /// Whether `presented` is the token: SHA-256 of both, compared in constant time.
    fn token_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.token_digest).into()
    }

    /// Answers one call. Every call, whatever its path, must carry the token first, so
    /// that nothing about the API is learnt without it.
    pub async fn handle<B>(&self, request: Request<B>, peer: Option<SocketAddr>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = match self.dispatch(request, peer).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        tracing::debug!(method = %method, path = %path, status = response.status().as_u16(), "admin API call");
        response
    }

    async fn dispatch<B>(
        &self,
        request: Request<B>,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        match bearer(&parts.headers) {
            Ok(token) if self.token_matches(token) => {}
            Ok(_) | Err(true) => {
                tracing::warn!(target: "audit", action = "admin_api.unauthorized", peer = %display_peer(peer), reason = "invalid token");
                return Err(ApiError::unauthorized(true));
            }
            Err(false) => {
                tracing::warn!(target: "audit", action = "admin_api.unauthorized", peer = %display_peer(peer), reason = "no token");
                return Err(ApiError::unauthorized(false));
            }
        }
        let resource = Resource::parse(parts.uri.path()).ok_or_else(ApiError::not_found)?;
        if !resource.methods().contains(&parts.method) {
            return Err(ApiError::method_not_allowed(resource.methods()));
        }
        let query = query_parameters(parts.uri.query(), resource.query_parameters())?;
        let body = if parts.method == Method::POST || parts.method == Method::PATCH {
            let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            read_body(body, declared, self.app.settings.server.body_timeout).await?
        } else {
            Bytes::new()
        };
        let store: &Store = self.app.keys.store();
        match (resource, parts.method) {
            (Resource::Tenants, Method::POST) => self.create_tenant(store, parse_body(&body, false)?).await,
            (Resource::Tenants, _) => {
                let data = store.data().await?;
                Ok(json_response(StatusCode::OK, &json::tenants(&data, lifecycle::now())))
            }
            (Resource::Tenant(id), Method::PATCH) => self.set_plan(store, &id, parse_body(&body, false)?).await,
            (Resource::Tenant(id), Method::DELETE) => self.delete_tenant(store, &id).await,
            (Resource::Tenant(id), _) => {
                let data = store.tenant_data(&id).await?;
                let tenant = data.tenants.get(&id).ok_or_else(|| ManageError::UnknownTenant(id.clone()))?;
                let active = json::active_keys(&data, &id, lifecycle::now());
                Ok(json_response(StatusCode::OK, &json::tenant(tenant, Some(active))))
            }
            (Resource::Keys, Method::POST) => self.create_key(store, parse_body(&body, false)?).await,
            (Resource::Keys, _) => {
                let tenant = query.iter().find(|(name, _)| *name == "tenant").map(|(_, value)| *value);
                let data = match tenant {
                    Some(tenant) => store.tenant_data(tenant).await?,
                    None => store.data().await?,
                };
                let keys = json::listed_keys(&data, tenant)?;
                Ok(json_response(StatusCode::OK, &json::keys(&keys, lifecycle::now())))
            }
            (Resource::Key(id), Method::DELETE) => {
                let key = store.revoke_key(&id).await?;
                audit::key_revoked(Via::AdminApi, &key);
                Ok(json_response(StatusCode::OK, &json::key(&key, lifecycle::now())))
            }
            (Resource::Key(id), _) => {
                let data = store.key_data(&id).await?;
                let key = data.keys.get(&id).ok_or_else(|| ManageError::UnknownKey(id.clone()))?;
                Ok(json_response(StatusCode::OK, &json::key(key, lifecycle::now())))
            }
            (Resource::Rotate(id), _) => self.rotate_key(store, &id, parse_body(&body, true)?).await,
        }
    }

    async fn create_tenant(&self, store: &Store, body: CreateTenant) -> Result<Response<Full<Bytes>>, ApiError> {
        let policy = self.app.policy.load_full();
        let tenant = store.create_tenant(&policy, &body.id, &body.plan).await?;
        audit::tenant_created(Via::AdminApi, &tenant);
        Ok(created(&format!("/admin/v1/tenants/{}", tenant.id), &json::tenant(&tenant, None)))
    }

    async fn set_plan(&self, store: &Store, id: &str, body: SetPlan) -> Result<Response<Full<Bytes>>, ApiError> {
        let policy = self.app.policy.load_full();
        // The plan before, for the audit line, as the CLI reads it.
        let previous = store.tenant_data(id).await?.tenants.get(id).map(|t| t.plan.clone());
        let tenant = store.set_plan(&policy, id, &body.plan).await?;
        audit::plan_set(Via::AdminApi, &tenant, previous.as_deref());
        Ok(json_response(StatusCode::OK, &json::tenant(&tenant, None)))
    }

    async fn delete_tenant(&self, store: &Store, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
        // The record as it was, for the answer.
        let before = store.tenant_data(id).await?.tenants.get(id).cloned();
        let revoked = store.delete_tenant(id).await?;
        audit::tenant_deleted(Via::AdminApi, id, &revoked);
        Ok(json_response(StatusCode::OK, &json::deleted_tenant(id, before.as_ref(), &revoked)))
    }

    async fn create_key(&self, store: &Store, body: CreateKey) -> Result<Response<Full<Bytes>>, ApiError> {
        let expires_in = body.expires_in.as_deref().map(|text| parse_duration("expires_in", text)).transpose()?;
        let new = NewKey {
            tenant: body.tenant,
            name: body.name,
            scopes: body.scopes.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            expires_in,
        };
        let policy = self.app.policy.load_full();
        let key = store.create_key(&policy, self.app.keys.peppers(), &new).await?;
        audit::key_created(Via::AdminApi, &key.record);
        Ok(created(&format!("/admin/v1/keys/{}", key.record.id), &json::created_key(&key, None)))
    }

    async fn rotate_key(&self, store: &Store, id: &str, body: Rotate) -> Result<Response<Full<Bytes>>, ApiError> {
        let grace =
            body.grace.as_deref().map(|text| parse_duration("grace", text)).transpose()?.unwrap_or(DEFAULT_GRACE);
        let policy = self.app.policy.load_full();
        let key = store.rotate_key(&policy, self.app.keys.peppers(), id, grace).await?;
        audit::key_rotated(Via::AdminApi, &key.record, id, grace);
        let replaced = Replaced::after_rotation(id, &key, grace);
        Ok(created(&format!("/admin/v1/keys/{}", key.record.id), &json::created_key(&key, Some(&replaced))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer(&headers(&["bearer  abc"])), Ok("abc"));
        assert_eq!(bearer(&headers(&["BEARER abc "])), Ok("abc"));
        assert_eq!(bearer(&headers(&[])), Err(false));
        assert_eq!(bearer(&headers(&["Basic abc"])), Err(false));
        assert_eq!(bearer(&headers(&["Bearer"])), Err(false));
        assert_eq!(bearer(&headers(&["Bearer "])), Err(false));
        assert_eq!(bearer(&headers(&["Bearer a", "Bearer a"])), Err(true));
    }

    #[test]
    fn paths() {
        assert_eq!(Resource::parse("/admin/v1/tenants"), Some(Resource::Tenants));
        assert_eq!(Resource::parse("/admin/v1/tenants/acme"), Some(Resource::Tenant("acme".into())));
        assert_eq!(Resource::parse("/admin/v1/keys"), Some(Resource::Keys));
        assert_eq!(Resource::parse("/admin/v1/keys/key_1"), Some(Resource::Key("key_1".into())));
        assert_eq!(Resource::parse("/admin/v1/keys/key_1/rotate"), Some(Resource::Rotate("key_1".into())));
        for bad in ["/", "/admin/v1", "/admin/v1/", "/admin/v1/tenants/", "/admin/v1//tenants", "/admin/v2/keys"] {
            assert_eq!(Resource::parse(bad), None, "{bad}");
        }
        assert_eq!(Resource::parse("/admin/v1/keys/key_1/revoke"), None);
        assert_eq!(Resource::parse("/admin/v1/tenants/acme/keys"), None);
    }

    #[test]
    fn query_parameters_are_checked() {
        assert_eq!(query_parameters(Some("tenant=acme"), &["tenant"]).unwrap(), vec![("tenant", "acme")]);
        assert!(query_parameters(None, &["tenant"]).unwrap().is_empty());
        assert_eq!(query_parameters(Some("tenants=acme"), &["tenant"]).unwrap_err().code, "unknown_parameter");
        assert_eq!(query_parameters(Some("tenant=a&tenant=b"), &["tenant"]).unwrap_err().code, "repeated_parameter");
        assert_eq!(query_parameters(Some("x=1"), &[]).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    /// The one mapping of the CLI's refusals to statuses, pinned.
    #[test]
    fn manage_errors_map_to_statuses() {
        let cases: Vec<(ManageError, u16, &str)> = vec![
            (ManageError::InvalidTenantId("A".into()), 400, "invalid_tenant_id"),
            (ManageError::UnknownPlan { plan: "x".into(), known: "pro".into() }, 400, "unknown_plan"),
            (ManageError::UnknownScope { scope: "x".into(), known: "a".into() }, 400, "unknown_scope"),
            (ManageError::NoScopes, 400, "no_scopes"),
            (ManageError::InvalidName("".into()), 400, "invalid_name"),
            (ManageError::InvalidExpiry("".into()), 400, "invalid_expiry"),
            (ManageError::UnknownTenant("t".into()), 404, "unknown_tenant"),
            (ManageError::UnknownKey("k".into()), 404, "unknown_key"),
            (ManageError::TenantExists("t".into()), 409, "tenant_exists"),
            (ManageError::NoApiAccess("trial".into()), 409, "no_api_access"),
            (ManageError::CapReached { tenant: "t".into(), plan: "p".into(), max: 5 }, 409, "cap_reached"),
            (ManageError::Revoked("k".into()), 409, "key_revoked"),
            (ManageError::Expired("k".into()), 409, "key_expired"),
            (ManageError::Replaced { id: "k".into(), by: "k2".into() }, 409, "key_replaced"),
            (
                ManageError::Store(StoreError::Unavailable("redis 10.0.0.1:6379: timed out".into())),
                503,
                "store_unavailable",
            ),
            (
                ManageError::Store(StoreError::File { path: "/var/lib/keys.json".into(), message: "EIO".into() }),
                500,
                "store_error",
            ),
        ];
        for (error, status, code) in cases {
            let text = error.to_string();
            let api = ApiError::from(error);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{text}");
            if status < 500 {
                assert_eq!(api.message, text, "the CLI's message");
            } else {
                assert!(!api.message.contains("10.0.0.1") && !api.message.contains("/var/lib"), "no internal detail");
            }
        }
    }

    #[test]
    fn unavailable_says_when_to_retry_and_unauthorized_challenges() {
        let response = ApiError::from(ManageError::Store(StoreError::Unavailable("down".into()))).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let response = ApiError::unauthorized(false).into_response();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate-admin\"");
        let response = ApiError::unauthorized(true).into_response();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate-admin\", error=\"invalid_token\"");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn bodies() {
        let rotate: Rotate = parse_body(b"", true).unwrap();
        assert!(rotate.grace.is_none());
        assert_eq!(parse_body::<CreateTenant>(b"", false).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_body::<CreateTenant>(b"{\"id\":", false).unwrap_err().code, "invalid_json");
        let unknown = parse_body::<SetPlan>(b"{\"plan\":\"pro\",\"x\":1}", false).unwrap_err();
        assert!(unknown.message.contains("unknown field"), "{}", unknown.message);
        let key: CreateKey =
            parse_body(br#"{"tenant":"acme","name":"ci","scopes":["calls:read"],"expires_in":null}"#, false).unwrap();
        assert!(key.expires_in.is_none());
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        let small = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(read_body(small, None, Duration::from_secs(1)).await.unwrap(), Bytes::from_static(b"{}"));
        let big = Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
        assert_eq!(
            read_body(big, None, Duration::from_secs(1)).await.unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let declared = Full::new(Bytes::new());
        let error = read_body(declared, Some(MAX_BODY_BYTES as u64 + 1), Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn tokens_load_trimmed_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret-token-of-some-length\n").unwrap();
        let config = dir.path().join("keygate.toml");
        std::fs::write(&config, "[admin]\ntoken_file = \"token\"\n").unwrap();
        let (settings, _) = Settings::load(&config).unwrap();
        assert_eq!(load_token(&settings).unwrap().as_deref(), Some("s3cret-token-of-some-length"));
        std::fs::write(&path, " \n").unwrap();
        assert!(load_token(&settings).unwrap_err().contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(load_token(&settings).unwrap_err().contains("token"));
    }
}
