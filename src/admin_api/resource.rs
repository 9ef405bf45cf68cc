//! The API's resources: which path is which, the methods each takes, and the query
//! parameters each allows.

use http::Method;

use super::api_error::ApiError;

/// The resources of the API, from the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resource {
    Tenants,
    Tenant(String),
    Keys,
    Key(String),
    Rotate(String),
    /// `/admin/v1/usage`: a tenant's usage.
    Usage,
    /// `/admin/v1/tenants/{id}/limits`.
    TenantLimits(String),
    /// `/admin/v1/keys/{id}/limits`.
    KeyLimits(String),
}

impl Resource {
    /// `/admin/v1/…` → the resource; `None` for any other path. Ids are taken as they
    /// are: a valid tenant or key id needs no percent-encoding, so an encoded one is
    /// simply unknown.
    pub(super) fn parse(path: &str) -> Option<Resource> {
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
            ["usage"] => Some(Resource::Usage),
            ["tenants", id, "limits"] => Some(Resource::TenantLimits((*id).to_string())),
            ["keys", id, "limits"] => Some(Resource::KeyLimits((*id).to_string())),
            _ => None,
        }
    }

    /// The methods the resource takes (the `Allow` of a 405).
    pub(super) fn methods(&self) -> &'static [Method] {
        match self {
            Resource::Tenants | Resource::Keys => &[Method::GET, Method::POST],
            Resource::Tenant(_) => &[Method::GET, Method::PATCH, Method::DELETE],
            Resource::Key(_) => &[Method::GET, Method::DELETE],
            Resource::Rotate(_) => &[Method::POST],
            Resource::Usage => &[Method::GET],
            Resource::TenantLimits(_) | Resource::KeyLimits(_) => &[Method::GET, Method::PUT, Method::DELETE],
        }
    }

    /// The query parameters the resource takes; any other is refused, so that a typo
    /// (`?tenants=acme`) never lists every tenant's keys.
    pub(super) fn query_parameters(&self) -> &'static [&'static str] {
        match self {
            Resource::Keys => &["tenant"],
            Resource::Usage => &["tenant", "key", "from", "to"],
            _ => &[],
        }
    }
}

/// The query parameters, each allowed and given at most once.
pub(super) fn query_parameters<'q>(
    query: Option<&'q str>,
    allowed: &[&str],
) -> Result<Vec<(&'q str, &'q str)>, ApiError> {
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
