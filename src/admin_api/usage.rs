//! `GET /admin/v1/usage?tenant=T[&key=ID][&from=DATE][&to=DATE]`: a tenant's usage per
//! UTC day and per key, and its plan's calendar quotas now — the JSON of
//! `keygate usage --json`. With the local limiter the quota counts are this process's.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::api_error::{json_response, ApiError};
use crate::clock::{Clock, SystemClock};
use crate::keys::manage::{self, ManageError};
use crate::policy::Rule;
use crate::settings::LimitBackend;
use crate::state::App;
use crate::usage::report::{self, QuotaSource};
use crate::usage::{day_of, UsageStore};

/// Answers the usage call; `query` holds only the allowed parameters, each once.
pub(super) async fn usage(app: &App, query: &[(&str, &str)]) -> Result<Response<Full<Bytes>>, ApiError> {
    let get = |name: &str| query.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let tenant = get("tenant")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_parameter", "query parameter `tenant` is required"))?;
    manage::check_tenant_id(tenant)?;
    let key = get("key").filter(|k| !k.is_empty());
    let now = match app.usage() {
        Some(usage) => usage.now_millis(),
        None => SystemClock.now_millis(),
    };
    let range = report::range(get("from"), get("to"), day_of(now))
        .map_err(|why| ApiError::bad_request("invalid_range", why))?;
    let store = app.keys().store();
    let data = store.tenant_data(tenant).await?;
    let policy = app.policy();
    let plan = match data.tenants.get(tenant) {
        None => Err(ManageError::UnknownTenant(tenant.to_string()).to_string()),
        Some(record) => report::tenant_limits(&policy, record),
    };
    let limiter = app.gate().limiter();
    let local = |rule: &Rule| limiter.local_quota_count(tenant, rule);
    let source = match (app.settings().limits.backend, app.redis()) {
        (LimitBackend::Redis, Some(client)) => QuotaSource::Redis(client),
        (LimitBackend::Redis, None) => QuotaSource::Offline,
        (LimitBackend::Local, _) => QuotaSource::Local(&local),
    };
    let usage_store = match app.usage() {
        Some(usage) => usage.store().clone(),
        None => UsageStore::of(app.settings(), store),
    };
    let report =
        report::tenant_report(&usage_store, tenant, key, range, plan.as_deref().map_err(Clone::clone), source, now)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "admin API: the usage could not be read");
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the usage store is unreachable; try again",
                );
                error.headers.push((http::header::RETRY_AFTER, "1".to_string()));
                error
            })?;
    Ok(json_response(StatusCode::OK, &report.to_json()))
}
