//! The key and tenant API (docs/reference.md §5.2): JSON in and out on `[admin] api_address`, for a
//! dashboard backend that manages tenants and keys without shelling out to the CLI.
//!
//! Served only when a token is configured ([`token::load_token`]); every call needs
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
//! | `GET /admin/v1/usage?tenant=T[&key=ID][&from=D][&to=D]` | 200, the tenant's usage per day and key, and its quotas |
//!
//! Errors are `{"error": {"type", "code", "message"}}`: 400 bad input, 401 no or wrong
//! token, 404 unknown tenant or key (or path), 405, 409 a conflict with the stored state
//! (exists, cap reached, revoked…), 413 a body over 64 KiB, 503 the store unreachable.
//! `docs/admin-api.md` is the operator's guide.
//!
//! The files: [`token`] (loading and checking the token), [`resource`] (paths, methods,
//! query parameters), [`requests`] (bodies), [`api_error`] (refusals and answers),
//! [`handlers`] (the changes); this file serves the listener and routes each call.

mod api_error;
mod handlers;
mod requests;
mod resource;
mod token;
mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::keys::audit::{self, Via};
use crate::keys::json;
use crate::keys::manage::ManageError;
use crate::keys::store::{self, Store};
use crate::state::App;
pub use api_error::REALM;
use api_error::{json_response, ApiError};
pub use requests::MAX_BODY_BYTES;
use requests::{parse_body, read_body};
use resource::{query_parameters, Resource};
pub use token::load_token;
use token::{Presented, TokenDigest};

/// The API's state: the running keygate (its store, current policy and peppers) and the
/// token. Only the token's SHA-256 is kept, so a presented token is compared with it in
/// constant time and in fixed length (no early exit on a length mismatch).
pub struct AdminApi {
    app: Arc<App>,
    token: TokenDigest,
}

/// Serves the API on `listener` until `stop` is cancelled; connections in flight finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, token: String, stop: CancellationToken) {
    let limits = crate::admin::AdminLimits::of(&app);
    let api = Arc::new(AdminApi::new(app, &token));
    drop(token);
    crate::admin::serve_connections(listener, limits, stop, "admin API", move |request, peer| {
        let api = api.clone();
        async move { api.handle(request, Some(peer)).await }
    })
    .await;
}

/// The peer's address for a log line, or `-`.
fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_string(), |p| p.to_string())
}

impl AdminApi {
    /// The API over `app`'s store, policy and peppers, answering to `token`.
    pub fn new(app: Arc<App>, token: &str) -> AdminApi {
        AdminApi { app, token: TokenDigest::of(token) }
    }

    /// Answers one call. Every call, whatever its path, must carry the token first, so
    /// that nothing about the API is learnt without it.
    pub async fn handle<B>(&self, request: Request<B>, peer: Option<SocketAddr>) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = request.method().clone();
        // A secret pasted where a key id belongs is never logged, at any level.
        let path = match crate::keys::query_carries_key(request.uri().path()) {
            true => "(a path holding an API key)".to_string(),
            false => request.uri().path().to_string(),
        };
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
        match token::presented(&parts.headers) {
            Presented::Token(token) if self.token.matches(token) => {}
            Presented::Token(_) | Presented::Unusable => {
                tracing::warn!(target: "audit", action = "admin_api.unauthorized", peer = %display_peer(peer), reason = "invalid token");
                return Err(ApiError::unauthorized(true));
            }
            Presented::Nothing => {
                tracing::warn!(target: "audit", action = "admin_api.unauthorized", peer = %display_peer(peer), reason = "no token");
                return Err(ApiError::unauthorized(false));
            }
        }
        // The API names keys by id (`key_…`); a secret in the URL is refused without
        // being echoed, before it could reach an error message.
        if crate::keys::query_carries_key(parts.uri.path())
            || parts.uri.query().is_some_and(crate::keys::query_carries_key)
        {
            return Err(ApiError::bad_request(
                "secret_in_url",
                "the URL holds an API key secret; name keys by their id (key_…), and revoke a secret that was exposed",
            ));
        }
        let resource = Resource::parse(parts.uri.path()).ok_or_else(ApiError::not_found)?;
        if !resource.methods().contains(&parts.method) {
            return Err(ApiError::method_not_allowed(resource.methods()));
        }
        let query = query_parameters(parts.uri.query(), resource.query_parameters())?;
        let body = if parts.method == Method::POST || parts.method == Method::PATCH || parts.method == Method::PUT {
            let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            read_body(body, declared, self.app.settings().server.body_timeout).await?
        } else {
            Bytes::new()
        };
        let store: &Store = self.app.keys().store();
        match (resource, parts.method) {
            (Resource::Tenants, Method::POST) => {
                handlers::create_tenant(&self.app, store, parse_body(&body, false)?).await
            }
            (Resource::Tenants, _) => {
                let data = store.data().await?;
                Ok(json_response(StatusCode::OK, &json::tenants(&data, store::now())))
            }
            (Resource::Tenant(id), Method::PATCH) => {
                handlers::set_plan(&self.app, store, &id, parse_body(&body, false)?).await
            }
            (Resource::Tenant(id), Method::DELETE) => handlers::delete_tenant(store, &id).await,
            (Resource::Tenant(id), _) => {
                let data = store.tenant_data(&id).await?;
                let tenant = data.tenants.get(&id).ok_or_else(|| ManageError::UnknownTenant(id.clone()))?;
                let active = json::active_keys(&data, &id, store::now());
                Ok(json_response(StatusCode::OK, &json::tenant(tenant, Some(active))))
            }
            (Resource::Keys, Method::POST) => handlers::create_key(&self.app, store, parse_body(&body, false)?).await,
            (Resource::Keys, _) => {
                let tenant = query.iter().find(|(name, _)| *name == "tenant").map(|(_, value)| *value);
                let data = match tenant {
                    Some(tenant) => store.tenant_data(tenant).await?,
                    None => store.data().await?,
                };
                let keys = json::listed_keys(&data, tenant)?;
                Ok(json_response(StatusCode::OK, &json::keys(&keys, store::now())))
            }
            (Resource::Key(id), Method::DELETE) => {
                let key = store.revoke_key(&id).await?;
                audit::key_revoked(Via::AdminApi, &key);
                Ok(json_response(StatusCode::OK, &json::key(&key, store::now())))
            }
            (Resource::Key(id), _) => {
                let data = store.key_data(&id).await?;
                let key = data.keys.get(&id).ok_or_else(|| ManageError::UnknownKey(id.clone()))?;
                Ok(json_response(StatusCode::OK, &json::key(key, store::now())))
            }
            (Resource::Usage, _) => usage::usage(&self.app, &query).await,
            (Resource::Rotate(id), _) => handlers::rotate_key(&self.app, store, &id, parse_body(&body, true)?).await,
            (Resource::TenantLimits(id), method) => {
                let put = (method == Method::PUT).then(|| parse_body(&body, true)).transpose()?;
                handlers::tenant_limits(&self.app, store, &id, method, put).await
            }
            (Resource::KeyLimits(id), method) => {
                let put = (method == Method::PUT).then(|| parse_body(&body, true)).transpose()?;
                handlers::key_limits(&self.app, store, &id, method, put).await
            }
        }
    }
}

#[cfg(test)]
mod tests;
