//! `keygate.toml`: the static settings read at start (SPEC 2.1), parsed into `Raw*`
//! structs and validated into [`Settings`], whose invariants hold by construction.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::diag::Diagnostic;

/// The validated static settings. Relative paths are already resolved against the
/// directory of the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file these settings came from.
    pub file: PathBuf,
    /// The hot-reloaded policy file (`policy = "routes.toml"`).
    pub policy_file: PathBuf,
    pub listen: Listen,
    pub admin: Admin,
    pub server: Server,
    pub keys: Keys,
    pub limits: Limits,
    /// Present whenever `keys.source` or `limits.backend` is `redis` (validation enforces it).
    pub redis: Option<Redis>,
}

/// `[listen]`: the proxy listener.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Default `0.0.0.0:8443`.
    pub address: SocketAddr,
    pub tls: Option<Tls>,
    /// Peers whose `X-Forwarded-For` is kept and appended to (SPEC 4.3). Default: none.
    pub trusted_proxies: Vec<IpNet>,
}

/// `[listen] tls = { cert, key }`: PEM files, watched and reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[admin]`: metrics, health and the key/tenant API.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Default `0.0.0.0:9090`.
    pub address: SocketAddr,
    /// Default `127.0.0.1:9091`; only served when a token is configured.
    pub api_address: SocketAddr,
    pub token_file: Option<PathBuf>,
}

/// `[server]`: protective limits, with the SPEC's defaults.
#[derive(Debug, Clone)]
pub struct Server {
    /// Default 10s.
    pub header_read_timeout: Duration,
    /// Default 60s.
    pub idle_timeout: Duration,
    /// Default 60s.
    pub body_timeout: Duration,
    /// Default 10000.
    pub max_connections: usize,
    /// Default 16384.
    pub max_header_bytes: usize,
    /// Default 30s.
    pub shutdown_grace: Duration,
    /// Default 0s.
    pub drain_delay: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 16_384,
            shutdown_grace: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
        }
    }
}

/// `[keys]`: where keys and tenants live.
#[derive(Debug, Clone)]
pub struct Keys {
    pub source: KeySource,
    /// Default 30s.
    pub cache_ttl: Duration,
    /// Default 5m.
    pub stale_if_error: Duration,
    pub pepper_file: Option<PathBuf>,
}

/// `keys.source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The embedded store: one JSON file (`keys.file`, default `keys.json`).
    File(PathBuf),
    Redis,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Default local.
    pub backend: LimitBackend,
    /// Default local.
    pub on_store_error: OnStoreError,
    /// Default 1; at least 1.
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    Local,
    Redis,
}

/// What the limiter does when the store is unreachable (SPEC 4.4); a route may override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Each replica limits alone to `ceil(limit / replicas)`.
    Local,
    Allow,
    Deny,
}

/// `[redis]`.
#[derive(Debug, Clone)]
pub struct Redis {
    /// `redis://…`, `rediss://…` or `redis+cluster://host1:port,host2:port`.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Default 50ms: per call on the request path.
    pub timeout: Duration,
}

impl Settings {
    /// Reads and validates `path`. On success also returns warnings.
    pub fn load(path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as the content of `path` (used to resolve relative paths
    /// and to name the file in diagnostics).
    pub fn parse(text: &str, path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let _ = (text, path);
        todo!("settings helper")
    }
}
