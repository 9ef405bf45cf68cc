//! The API's changes: each is one operation of the store, with the CLI's rules, answered
//! with the CLI's JSON objects and logged as the CLI's audit lines.

use bytes::Bytes;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::api_error::{created, json_response, ApiError};
use super::requests::{parse_duration, CreateKey, CreateTenant, Rotate, SetPlan};
use crate::keys::audit::{self, Via};
use crate::keys::json::{self, Replaced};
use crate::keys::manage::{ManageError, NewKey};
use crate::keys::store::Store;
use crate::policy::overrides::{LimitOverrides, RawOverrides};
use crate::state::App;

/// The grace of a rotation that names none, as for `keygate keys rotate`.
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

pub(super) async fn create_tenant(
    app: &App,
    store: &Store,
    body: CreateTenant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let policy = app.policy();
    let tenant = store.create_tenant(&policy, &body.id, &body.plan).await?;
    audit::tenant_created(Via::AdminApi, &tenant);
    Ok(created(&format!("/admin/v1/tenants/{}", tenant.id), &json::tenant(&tenant, None)))
}

pub(super) async fn set_plan(
    app: &App,
    store: &Store,
    id: &str,
    body: SetPlan,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let policy = app.policy();
    // The plan before, for the audit line, as the CLI reads it.
    let previous = store.tenant_data(id).await?.tenants.get(id).map(|t| t.plan.clone());
    let tenant = store.set_plan(&policy, id, &body.plan).await?;
    audit::plan_set(Via::AdminApi, &tenant, previous.as_deref());
    Ok(json_response(StatusCode::OK, &json::tenant(&tenant, None)))
}

pub(super) async fn delete_tenant(store: &Store, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    // The record as it was, for the answer.
    let before = store.tenant_data(id).await?.tenants.get(id).cloned();
    let revoked = store.delete_tenant(id).await?;
    audit::tenant_deleted(Via::AdminApi, id, &revoked);
    Ok(json_response(StatusCode::OK, &json::deleted_tenant(id, before.as_ref(), &revoked)))
}

pub(super) async fn create_key(app: &App, store: &Store, body: CreateKey) -> Result<Response<Full<Bytes>>, ApiError> {
    let expires_in = body.expires_in.as_deref().map(|text| parse_duration("expires_in", text)).transpose()?;
    let new = NewKey {
        tenant: body.tenant,
        name: body.name,
        scopes: body.scopes.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        expires_in,
    };
    let policy = app.policy();
    let key = store.create_key(&policy, app.keys().peppers(), &new).await?;
    audit::key_created(Via::AdminApi, &key.record);
    Ok(created(&format!("/admin/v1/keys/{}", key.record.id), &json::created_key(&key, None)))
}

pub(super) async fn rotate_key(
    app: &App,
    store: &Store,
    id: &str,
    body: Rotate,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grace = body.grace.as_deref().map(|text| parse_duration("grace", text)).transpose()?.unwrap_or(DEFAULT_GRACE);
    let policy = app.policy();
    let key = store.rotate_key(&policy, app.keys().peppers(), id, grace).await?;
    audit::key_rotated(Via::AdminApi, &key.record, id, grace);
    let replaced = Replaced::after_rotation(id, &key, grace);
    Ok(created(&format!("/admin/v1/keys/{}", key.record.id), &json::created_key(&key, Some(&replaced))))
}

/// The overrides of a `PUT …/limits` body (the policy's shape; an empty body or
/// `{"limits":[]}` clears), or of a `DELETE` (cleared); `None` for a `GET`.
fn overrides_of(method: &Method, body: Option<RawOverrides>) -> Result<Option<LimitOverrides>, ApiError> {
    if *method == Method::DELETE {
        return Ok(Some(LimitOverrides::default()));
    }
    match body {
        None => Ok(None),
        Some(raw) => LimitOverrides::from_raw(raw).map(Some).map_err(|e| ManageError::InvalidLimits(e).into()),
    }
}

/// `GET|PUT|DELETE /admin/v1/tenants/{id}/limits`: the tenant's effective limits, after
/// the change for `PUT` and `DELETE`.
pub(super) async fn tenant_limits(
    app: &App,
    store: &Store,
    id: &str,
    method: Method,
    body: Option<RawOverrides>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let policy = app.policy();
    if let Some(overrides) = overrides_of(&method, body)? {
        let tenant = store.set_tenant_limits(&policy, id, &overrides).await?;
        audit::limits_set(Via::AdminApi, &tenant.id, None, &tenant.overrides);
    }
    let data = store.tenant_data(id).await?;
    let tenant = data.tenants.get(id).ok_or_else(|| ManageError::UnknownTenant(id.to_string()))?;
    Ok(json_response(StatusCode::OK, &json::effective_limits(&policy, tenant, None)))
}

/// `GET|PUT|DELETE /admin/v1/keys/{id}/limits`: the key's effective limits, after the
/// change for `PUT` and `DELETE`.
pub(super) async fn key_limits(
    app: &App,
    store: &Store,
    id: &str,
    method: Method,
    body: Option<RawOverrides>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let policy = app.policy();
    if let Some(overrides) = overrides_of(&method, body)? {
        let key = store.set_key_limits(&policy, id, &overrides).await?;
        audit::limits_set(Via::AdminApi, &key.tenant, Some(&key.id), &key.overrides);
    }
    let data = store.key_data(id).await?;
    let key = data.keys.get(id).ok_or_else(|| ManageError::UnknownKey(id.to_string()))?;
    let tenant = data.tenants.get(&key.tenant).ok_or_else(|| ManageError::UnknownTenant(key.tenant.clone()))?;
    Ok(json_response(StatusCode::OK, &json::effective_limits(&policy, tenant, Some(key))))
}
