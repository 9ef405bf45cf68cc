//! The file as written: serde structs that refuse unknown fields. Values checked by hand
//! are kept `Spanned` so that every problem is reported with its position.

use serde::Deserialize;
use serde_spanned::Spanned;

/// The whole `keygate.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub policy: Option<Spanned<String>>,
    pub listen: Option<RawListen>,
    pub authorizer: Option<Spanned<RawAuthorizer>>,
    pub admin: Option<RawAdmin>,
    pub server: Option<RawServer>,
    pub keys: Option<RawKeys>,
    pub limits: Option<RawLimits>,
    pub redis: Option<Spanned<RawRedis>>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub address: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

/// `[authorizer]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorizer {
    pub address: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub path_prefix: Option<Spanned<String>>,
}

/// `tls = { cert, key }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub address: Option<Spanned<String>>,
    pub api_address: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub drain_delay: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    pub failed_auth_per_minute: Option<Spanned<i64>>,
    pub preflights_per_minute: Option<Spanned<i64>>,
    pub min_body_rate: Option<Spanned<i64>>,
    pub min_body_rate_window: Option<Spanned<String>>,
}

/// `[keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeys {
    pub source: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub stale_if_error: Option<Spanned<String>>,
    pub pepper_file: Option<Spanned<String>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub backend: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
    pub replicas: Option<Spanned<i64>>,
    pub concurrency_ttl: Option<Spanned<String>>,
}

/// `[redis]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}
