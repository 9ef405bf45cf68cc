//! The file as written: serde structs that refuse unknown fields. Values whose position
//! a diagnostic may need are `Spanned`; values checked by hand (enums, durations,
//! integers that must be positive) are kept raw so that every problem is reported, not
//! just the first one serde meets.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

/// The whole `routes.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub default: Option<Spanned<String>>,
    pub forward_preflight: Option<bool>,
    pub paths: Option<RawPaths>,
    pub scopes: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    #[serde(default)]
    pub plans: BTreeMap<Spanned<String>, Spanned<RawPlan>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<RawUpstream>>,
    pub routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
}

/// `[paths]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPaths {
    pub encoded_slash: Option<Spanned<String>>,
    pub semicolon: Option<Spanned<String>>,
}

/// `[plans.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub api_access: Option<Spanned<bool>>,
    pub requests_per_minute: Option<Spanned<i64>>,
    pub requests: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub max_keys: Option<Spanned<i64>>,
    pub concurrency: Option<Spanned<i64>>,
    pub limits: Option<Spanned<Vec<Spanned<RawLimit>>>>,
}

/// One entry of a plan's `limits = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub name: Option<Spanned<String>>,
    pub requests: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub period: Option<Spanned<String>>,
    pub reset_day: Option<Spanned<i64>>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub url: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
}

/// One `[[routes]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub prefix: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream: Option<Spanned<String>>,
    pub cost: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub mode: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
}
