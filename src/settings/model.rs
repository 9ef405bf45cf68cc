//! The validated settings: the types start-up and request code read ([`Settings`] and
//! its tables), with the defaults of docs/reference.md. Relative paths in them are already resolved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::body::MinRate;

/// The validated static settings. Relative paths are already resolved against the
/// directory of the config file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file these settings came from.
    pub file: PathBuf,
    /// The hot-reloaded policy file (`policy = "routes.toml"`).
    pub policy_file: PathBuf,
    /// `[listen]`.
    pub listen: Listen,
    /// Whether the proxy listener is served: false only when the file has `[authorizer]`
    /// and no `[listen]` table (keygate then only answers decisions). `listen` still holds
    /// the defaults then, and its `trusted_proxies` (none) are what the budgets read.
    pub serve_proxy: bool,
    /// `[authorizer]`: the listener that answers decisions to another proxy. Default: none.
    pub authorizer: Option<Authorizer>,
    /// `[admin]`.
    pub admin: Admin,
    /// `[server]`.
    pub server: Server,
    /// `[keys]`.
    pub keys: Keys,
    /// `[limits]`.
    pub limits: Limits,
    /// Present whenever `keys.source` or `limits.backend` is `redis` (validation enforces it).
    pub redis: Option<Redis>,
}

/// `[listen]`: the proxy listener.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Default `0.0.0.0:8443`.
    pub address: SocketAddr,
    /// With TLS: HTTP/1.1 and HTTP/2 by ALPN. Default: none (plain HTTP/1.1 and h2c).
    pub tls: Option<Tls>,
    /// Peers whose `X-Forwarded-For` is kept and appended to (docs/reference.md §4.3). Default: none.
    pub trusted_proxies: Vec<IpNet>,
}

/// `[authorizer]`: keygate as the authorizer of another proxy (nginx `auth_request`,
/// Traefik ForwardAuth, Envoy `ext_authz` in HTTP mode), on a listener of its own.
#[derive(Debug, Clone)]
pub struct Authorizer {
    /// Default `0.0.0.0:9191`.
    pub address: SocketAddr,
    /// Like `[listen]`'s. Default: none (plain HTTP/1.1 and h2c).
    pub tls: Option<Tls>,
    /// Peers whose `X-Original-*` / `X-Forwarded-Method`, `-Uri`, `-Host` name the request
    /// to decide on, and whose `X-Forwarded-For` names the client. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// Stripped from the request line's path (Envoy's `path_prefix`). Default: none.
    pub path_prefix: Option<String>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer {
            address: SocketAddr::from(([0, 0, 0, 0], 9191)),
            tls: None,
            trusted_proxies: Vec::new(),
            path_prefix: None,
        }
    }
}

/// `[listen] tls = { cert, key }`: PEM files, watched and reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// `[admin]`: metrics, health and the key/tenant API.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Default `127.0.0.1:9090`: loopback, since `/metrics` and `/readyz` tell a caller
    /// about the service; a deployment that is scraped sets the pod address explicitly.
    pub address: SocketAddr,
    /// Default `127.0.0.1:9091`; only served when a token is configured.
    pub api_address: SocketAddr,
    /// The key API's bearer token (else `$KEYGATE_ADMIN_TOKEN`). Default: none.
    pub token_file: Option<PathBuf>,
    /// Connections each admin listener serves at once (more wait in the backlog).
    /// Default [`ADMIN_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

/// The default of `admin.max_connections`: probes, a scraper and a dashboard or two need a
/// handful; the bound keeps idle connections from eating the process's descriptors.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// `[server]`: protective limits, with the defaults of docs/reference.md.
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
    /// Proxy worker threads, each with a single-threaded runtime of its own. Default: one
    /// per CPU the process may use (`std::thread::available_parallelism`).
    pub workers: usize,
    /// Failed authentications (unknown, expired or revoked keys) per client address per
    /// minute; past it, 429 without a store lookup. 0: no limit. Default 300.
    pub failed_auth_per_minute: u32,
    /// Forwarded CORS preflights per client address per minute; past it, 429. 0: no
    /// limit. Default 600.
    pub preflights_per_minute: u32,
    /// The pace a request body must keep once started (`min_body_rate` bytes a second,
    /// over `min_body_rate_window` of waiting); past it, 408. `None` (rate 0): no pace.
    /// Default 1024 bytes a second over 10s.
    pub min_body_rate: Option<MinRate>,
}

/// The default of `server.workers`: one per CPU this process may run on (cgroup quota and
/// affinity included), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
            workers: default_workers(),
            failed_auth_per_minute: 300,
            preflights_per_minute: 600,
            min_body_rate: Some(MinRate { bytes: 10 * 1024, window: Duration::from_secs(10) }),
        }
    }
}

/// `[keys]`: where keys and tenants live.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Default: the file `keys.json` beside the config file.
    pub source: KeySource,
    /// Default 30s.
    pub cache_ttl: Duration,
    /// Default 5m.
    pub stale_if_error: Duration,
    /// Lines `id=secret`, the first the current pepper (else `$KEYGATE_PEPPER`). Default: none.
    pub pepper_file: Option<PathBuf>,
    /// Where `pepper_file` is written in the config (1-based line and column), so that a
    /// pepper file that cannot be read is reported there.
    pub pepper_file_at: Option<(usize, usize)>,
}

/// `keys.source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The embedded store: one JSON file (`keys.file`, default `keys.json`).
    File(PathBuf),
    /// Keys and tenants in `[redis]`, shared by every replica.
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
    /// Default 10s: how long a shared concurrency slot lives unless its replica renews
    /// it (every third of this); the bound on the slots a dead replica leaks.
    pub concurrency_ttl: Duration,
}

/// `limits.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    /// In-process: one replica.
    Local,
    /// In `[redis]`: shared by every replica.
    Redis,
}

/// What the limiter does when the store is unreachable (docs/reference.md §4.4); a route may override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Each replica limits alone to `ceil(limit / replicas)`.
    Local,
    /// Admits.
    Allow,
    /// Answers 503 with `Retry-After`.
    Deny,
}

/// The words of `on_store_error`, in `[limits]` and on a route (the policy reads the
/// same words, so they live beside the type).
pub(crate) const ON_STORE_ERROR: &[(&str, OnStoreError)] =
    &[("local", OnStoreError::Local), ("allow", OnStoreError::Allow), ("deny", OnStoreError::Deny)];

/// `[redis]`.
#[derive(Debug, Clone)]
pub struct Redis {
    /// `redis://…`, `rediss://…` or `redis+cluster://host1:port,host2:port`.
    pub url: String,
    /// Else `$KEYGATE_REDIS_PASSWORD`, or in the URL. Default: none.
    pub password_file: Option<PathBuf>,
    /// The CA to trust for `rediss://`. Default: none (the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Default 50ms: per call on the request path.
    pub timeout: Duration,
}
