//! `keygate.toml`: the static settings read at start (SPEC 2.1), parsed into `Raw*`
//! structs and validated into [`Settings`], whose invariants hold by construction.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde_spanned::Spanned;

use crate::diag::Diagnostic;
use crate::toml_check::{choice, duration_value, toml_error, Checker};

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
    /// Peers whose `X-Forwarded-For` is kept and appended to (SPEC 4.3). Default: none.
    pub trusted_proxies: Vec<IpNet>,
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
    /// Default `0.0.0.0:9090`.
    pub address: SocketAddr,
    /// Default `127.0.0.1:9091`; only served when a token is configured.
    pub api_address: SocketAddr,
    /// The key API's bearer token (else `$KEYGATE_ADMIN_TOKEN`). Default: none.
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
    /// Proxy worker threads, each with a single-threaded runtime of its own. Default: one
    /// per CPU the process may use (`std::thread::available_parallelism`).
    pub workers: usize,
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
}

/// `limits.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBackend {
    /// In-process: one replica.
    Local,
    /// In `[redis]`: shared by every replica.
    Redis,
}

/// What the limiter does when the store is unreachable (SPEC 4.4); a route may override it.
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

impl Settings {
    /// Reads and validates `path`. On success also returns warnings.
    pub fn load(path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file_error(path, format!("cannot read: {e}"))])?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as the content of `path` (used to resolve relative paths
    /// and to name the file in diagnostics).
    ///
    /// A syntax error, a value of the wrong type or an unknown field stops the parse and
    /// is the one error returned; every other finding is collected, sorted by position.
    pub fn parse(text: &str, path: &Path) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        let raw: raw::RawSettings = toml::from_str(text).map_err(|e| vec![toml_error(path, text, &e)])?;
        let mut check = Checker::new(path, text);
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        let settings = compile(raw, path, dir, &mut check);
        let (errors, warnings) = check.finish();
        if errors.is_empty() {
            Ok((settings, warnings))
        } else {
            Err(errors)
        }
    }
}

/// A path from the file, resolved against the config file's directory (SPEC conventions);
/// absolute paths are kept.
fn resolve_path(check: &mut Checker<'_>, dir: &Path, name: &str, value: &Spanned<String>) -> Option<PathBuf> {
    if value.get_ref().is_empty() {
        check.error(value.span(), format!("`{name}` cannot be empty"));
        return None;
    }
    Some(dir.join(value.get_ref()))
}

fn optional_path(check: &mut Checker<'_>, dir: &Path, name: &str, value: Option<&Spanned<String>>) -> Option<PathBuf> {
    value.and_then(|v| resolve_path(check, dir, name, v))
}

/// A socket address (`IP:port`), or its default when absent.
fn address(check: &mut Checker<'_>, name: &str, value: Option<&Spanned<String>>, default: SocketAddr) -> SocketAddr {
    let Some(value) = value else { return default };
    match value.get_ref().parse() {
        Ok(addr) => addr,
        Err(_) => {
            check.error(
                value.span(),
                format!(
                    "`{name}` is \"{}\"; write an IP address and a port, e.g. \"{default}\" \
                    (host names are not resolved)",
                    value.get_ref()
                ),
            );
            default
        }
    }
}

/// A duration, or its default when absent; `positive` refuses `0s`.
fn duration(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<String>>,
    default: Duration,
    positive: bool,
) -> Duration {
    let Some(value) = value else { return default };
    match duration_value(check, name, value) {
        Some(d) if positive && d.is_zero() => {
            check.error(value.span(), format!("`{name}` must be longer than 0s"));
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// An integer of at least `min`, or its default when absent; `why` says what a smaller
/// value would break.
fn at_least<T: TryFrom<i64> + Copy>(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<i64>>,
    min: i64,
    default: T,
    why: &str,
) -> T {
    let Some(value) = value else { return default };
    let n = *value.get_ref();
    if n < min {
        check.error(value.span(), format!("`{name}` is {n}; it must be at least {min}: {why}"));
        return default;
    }
    match T::try_from(n) {
        Ok(v) => v,
        Err(_) => {
            check.error(value.span(), format!("`{name}` is {n}, which is too large"));
            default
        }
    }
}

/// The most `server.workers`: far more threads than any machine has CPUs only adds
/// context switches.
const MAX_WORKERS: usize = 1024;

/// `value` (already checked by [`at_least`]), refused above `max`.
fn at_most(check: &mut Checker<'_>, name: &str, raw: Option<&Spanned<i64>>, max: usize, value: usize) -> usize {
    match raw {
        Some(raw) if value > max => {
            check.error(raw.span(), format!("`{name}` is {value}; it must be at most {max}"));
            max
        }
        _ => value,
    }
}

/// One of a fixed set of words, or its default when absent (or wrong: the error is
/// recorded).
fn one_of<T: Copy>(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<String>>,
    choices: &[(&str, T)],
    default: T,
) -> T {
    value.and_then(|v| choice(check, name, v, choices)).unwrap_or(default)
}

/// `trusted_proxies`: CIDRs, or bare addresses (a host prefix, /32 or /128).
fn trusted_proxies(check: &mut Checker<'_>, values: &[Spanned<String>]) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for value in values {
        let text = value.get_ref();
        if let Ok(ip) = text.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else if let Ok(net) = text.parse::<IpNet>() {
            if net.trunc() != net {
                check.warning(value.span(), format!("`{text}` has host bits set; it means {}", net.trunc()));
            }
            nets.push(net.trunc());
        } else {
            check.error(
                value.span(),
                format!(
                    "`{text}` in `trusted_proxies` is neither an IP address nor a CIDR such \
                    as \"10.0.0.0/8\""
                ),
            );
        }
    }
    nets
}

/// `redis://`, `rediss://` or `redis+cluster://`, with something after the scheme.
fn redis_url_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("`url` is \"{url}\"; write e.g. \"redis://127.0.0.1:6379/0\""));
    };
    if !["redis", "rediss", "redis+cluster"].contains(&scheme) {
        return Some(format!(
            "`url` has the scheme `{scheme}`; use `redis://`, `rediss://` (TLS) or \
            `redis+cluster://host1:port,host2:port`"
        ));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if host.is_empty() || host.starts_with(['/', ':', ',']) {
        return Some(format!("`url` \"{url}\" names no host"));
    }
    None
}

/// Validates the raw settings. The result is only usable when `check` holds no error.
fn compile(raw: raw::RawSettings, file: &Path, dir: &Path, check: &mut Checker<'_>) -> Settings {
    let policy_file = match &raw.policy {
        None => dir.join("routes.toml"),
        Some(p) => resolve_path(check, dir, "policy", p).unwrap_or_default(),
    };

    let raw_listen = raw.listen.unwrap_or_default();
    let listen_address = address(check, "address", raw_listen.address.as_ref(), SocketAddr::from(([0, 0, 0, 0], 8443)));
    let tls = raw_listen.tls.as_ref().and_then(|t| {
        let (cert, key) = (t.get_ref().cert.as_ref(), t.get_ref().key.as_ref());
        if cert.is_none() || key.is_none() {
            check.error(t.span(), "`tls` needs both `cert` and `key` (PEM files)");
        }
        let cert = optional_path(check, dir, "cert", cert)?;
        let key = optional_path(check, dir, "key", key)?;
        Some(Tls { cert, key })
    });
    let listen = Listen {
        address: listen_address,
        tls,
        trusted_proxies: trusted_proxies(check, raw_listen.trusted_proxies.as_deref().unwrap_or_default()),
    };

    let raw_admin = raw.admin.unwrap_or_default();
    let admin_address = address(check, "address", raw_admin.address.as_ref(), SocketAddr::from(([0, 0, 0, 0], 9090)));
    if let Some(a) = &raw_admin.address {
        if admin_address == listen.address && admin_address.port() != 0 {
            check.error(a.span(), format!("the admin listener cannot share the proxy's address {admin_address}"));
        }
    }
    let api_address =
        address(check, "api_address", raw_admin.api_address.as_ref(), SocketAddr::from(([127, 0, 0, 1], 9091)));
    if let Some(a) = &raw_admin.api_address {
        if !api_address.ip().is_loopback() {
            check.warning(
                a.span(),
                format!(
                    "`api_address` {api_address} is not a loopback address: the key API \
                    hands out secrets, keep it off the network unless it is protected"
                ),
            );
        }
    }
    let admin = Admin {
        address: admin_address,
        api_address,
        token_file: optional_path(check, dir, "token_file", raw_admin.token_file.as_ref()),
    };

    let s = raw.server.unwrap_or_default();
    let d = Server::default();
    let workers = at_least(check, "workers", s.workers.as_ref(), 1, d.workers, "with 0 no request would be served");
    let workers = at_most(check, "workers", s.workers.as_ref(), MAX_WORKERS, workers);
    let server = Server {
        header_read_timeout: duration(
            check,
            "header_read_timeout",
            s.header_read_timeout.as_ref(),
            d.header_read_timeout,
            true,
        ),
        idle_timeout: duration(check, "idle_timeout", s.idle_timeout.as_ref(), d.idle_timeout, true),
        body_timeout: duration(check, "body_timeout", s.body_timeout.as_ref(), d.body_timeout, true),
        max_connections: at_least(
            check,
            "max_connections",
            s.max_connections.as_ref(),
            1,
            d.max_connections,
            "with 0 keygate would accept no connection at all",
        ),
        max_header_bytes: at_least(
            check,
            "max_header_bytes",
            s.max_header_bytes.as_ref(),
            1024,
            d.max_header_bytes,
            "a request head needs room for the request line, Host and Authorization, and below \
            1024 bytes ordinary requests would get 431",
        ),
        shutdown_grace: duration(check, "shutdown_grace", s.shutdown_grace.as_ref(), d.shutdown_grace, false),
        drain_delay: duration(check, "drain_delay", s.drain_delay.as_ref(), d.drain_delay, false),
        workers,
    };

    let k = raw.keys.unwrap_or_default();
    let file_keys = one_of(check, "source", k.source.as_ref(), &[("file", true), ("redis", false)], true);
    let source = if file_keys {
        let file = k.file.as_ref().and_then(|f| resolve_path(check, dir, "file", f));
        KeySource::File(file.unwrap_or_else(|| dir.join("keys.json")))
    } else {
        if let Some(f) = &k.file {
            check.warning(f.span(), "`file` is ignored with `source = \"redis\"`");
        }
        KeySource::Redis
    };
    let keys = Keys {
        source,
        cache_ttl: duration(check, "cache_ttl", k.cache_ttl.as_ref(), Duration::from_secs(30), false),
        stale_if_error: duration(check, "stale_if_error", k.stale_if_error.as_ref(), Duration::from_secs(300), false),
        pepper_file: optional_path(check, dir, "pepper_file", k.pepper_file.as_ref()),
    };

    let l = raw.limits.unwrap_or_default();
    let limits = Limits {
        backend: one_of(
            check,
            "backend",
            l.backend.as_ref(),
            &[("local", LimitBackend::Local), ("redis", LimitBackend::Redis)],
            LimitBackend::Local,
        ),
        on_store_error: one_of(check, "on_store_error", l.on_store_error.as_ref(), ON_STORE_ERROR, OnStoreError::Local),
        replicas: at_least(
            check,
            "replicas",
            l.replicas.as_ref(),
            1,
            1,
            "it divides each plan's limit among the replicas while the store is unreachable",
        ),
    };

    let redis_needed = keys.source == KeySource::Redis || limits.backend == LimitBackend::Redis;
    let redis = match &raw.redis {
        None => {
            for (field, value, used) in [
                ("keys.source", k.source.as_ref(), keys.source == KeySource::Redis),
                ("limits.backend", l.backend.as_ref(), limits.backend == LimitBackend::Redis),
            ] {
                if let (Some(value), true) = (value, used) {
                    check.error(
                        value.span(),
                        format!(
                            "`{field} = \"redis\"` needs a [redis] table with a `url`, e.g. \
                            url = \"redis://127.0.0.1:6379/0\""
                        ),
                    );
                }
            }
            None
        }
        Some(table) => {
            if !redis_needed {
                check.warning(
                    table.span(),
                    "[redis] is not used: neither `keys.source` nor `limits.backend` is \"redis\"",
                );
            }
            compile_redis(table, dir, check)
        }
    };

    Settings { file: file.to_path_buf(), policy_file, listen, admin, server, keys, limits, redis }
}

/// `[redis]`.
fn compile_redis(table: &Spanned<raw::RawRedis>, dir: &Path, check: &mut Checker<'_>) -> Option<Redis> {
    let r = table.get_ref();
    let url = match &r.url {
        None => {
            check.error(table.span(), "[redis] needs a `url`, e.g. url = \"redis://127.0.0.1:6379/0\"");
            None
        }
        Some(url) => match redis_url_problem(url.get_ref()) {
            Some(problem) => {
                check.error(url.span(), problem);
                None
            }
            None => Some(url),
        },
    };
    if let (Some(url), Some(ca)) = (url, &r.ca_file) {
        if url.get_ref().starts_with("redis://") {
            check.warning(ca.span(), "`ca_file` is only used with `rediss://` (TLS)");
        }
    }
    Some(Redis {
        url: url?.get_ref().clone(),
        password_file: optional_path(check, dir, "password_file", r.password_file.as_ref()),
        ca_file: optional_path(check, dir, "ca_file", r.ca_file.as_ref()),
        timeout: duration(check, "timeout", r.timeout.as_ref(), Duration::from_millis(50), true),
    })
}

/// The file as written: serde structs that refuse unknown fields. Values checked by hand
/// are kept `Spanned` so that every problem is reported with its position.
mod raw {
    use serde::Deserialize;
    use serde_spanned::Spanned;

    /// The whole `keygate.toml`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawSettings {
        pub policy: Option<Spanned<String>>,
        pub listen: Option<RawListen>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
        Settings::parse(text, Path::new("/etc/keygate/keygate.toml"))
    }

    fn ok(text: &str) -> (Settings, Vec<Diagnostic>) {
        match parse(text) {
            Ok(x) => x,
            Err(errors) => panic!("unexpected errors: {errors:#?}"),
        }
    }

    fn assert_error(text: &str, line: usize, column: usize, fragment: &str) {
        let errors = match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(errors) => errors,
        };
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = &errors[0];
        assert!(e.is_error());
        assert!(e.message.contains(fragment), "`{}` should contain `{fragment}`", e.message);
        assert_eq!((e.line, e.column), (line, column), "{}", e.message);
    }

    #[test]
    fn an_empty_file_gives_every_default() {
        let (s, warnings) = ok("");
        assert!(warnings.is_empty());
        assert_eq!(s.file, Path::new("/etc/keygate/keygate.toml"));
        assert_eq!(s.policy_file, Path::new("/etc/keygate/routes.toml"));
        assert_eq!(s.listen.address, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(s.listen.tls, None);
        assert!(s.listen.trusted_proxies.is_empty());
        assert_eq!(s.admin.address, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.admin.api_address, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(s.admin.token_file, None);
        let d = Server::default();
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.server.idle_timeout, d.idle_timeout);
        assert_eq!(s.server.body_timeout, Duration::from_secs(60));
        assert_eq!(s.server.max_connections, 10_000);
        assert_eq!(s.server.max_header_bytes, 16_384);
        assert_eq!(s.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.server.drain_delay, Duration::ZERO);
        assert_eq!(s.keys.source, KeySource::File("/etc/keygate/keys.json".into()));
        assert_eq!(s.keys.cache_ttl, Duration::from_secs(30));
        assert_eq!(s.keys.stale_if_error, Duration::from_secs(300));
        assert_eq!(s.keys.pepper_file, None);
        assert_eq!(s.limits.backend, LimitBackend::Local);
        assert_eq!(s.limits.on_store_error, OnStoreError::Local);
        assert_eq!(s.limits.replicas, 1);
        assert!(s.redis.is_none());
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let text = r#"
policy = "policy/routes.toml"
[listen]
tls = { cert = "tls/tls.crt", key = "/abs/tls.key" }
[admin]
token_file = "admin-token"
[keys]
file = "../data/keys.json"
pepper_file = "peppers"
[limits]
backend = "redis"
[redis]
url = "rediss://cache:6380"
password_file = "redis-password"
ca_file = "ca.pem"
"#;
        let (s, warnings) = ok(text);
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(s.policy_file, Path::new("/etc/keygate/policy/routes.toml"));
        assert_eq!(s.listen.tls, Some(Tls { cert: "/etc/keygate/tls/tls.crt".into(), key: "/abs/tls.key".into() }));
        assert_eq!(s.admin.token_file.as_deref(), Some(Path::new("/etc/keygate/admin-token")));
        assert_eq!(s.keys.source, KeySource::File("/etc/keygate/../data/keys.json".into()));
        assert_eq!(s.keys.pepper_file.as_deref(), Some(Path::new("/etc/keygate/peppers")));
        let redis = s.redis.unwrap();
        assert_eq!(redis.url, "rediss://cache:6380");
        assert_eq!(redis.password_file.as_deref(), Some(Path::new("/etc/keygate/redis-password")));
        assert_eq!(redis.ca_file.as_deref(), Some(Path::new("/etc/keygate/ca.pem")));
        assert_eq!(redis.timeout, Duration::from_millis(50));
    }

    #[test]
    fn a_bare_file_name_resolves_to_a_bare_path() {
        let (s, _) = Settings::parse("", Path::new("keygate.toml")).unwrap();
        assert_eq!(s.policy_file, Path::new("routes.toml"));
        assert_eq!(s.keys.source, KeySource::File("keys.json".into()));
    }

    #[test]
    fn every_value_can_be_set() {
        let text = r#"
[listen]
address = "[::1]:443"
trusted_proxies = ["10.0.0.0/8", "192.168.1.10", "fd00::/8", "::1"]
[admin]
address = "127.0.0.1:0"
api_address = "[::1]:9999"
[server]
header_read_timeout = "500ms"
idle_timeout = "2m"
body_timeout = "1h"
max_connections = 1
max_header_bytes = 1024
shutdown_grace = "0s"
drain_delay = "5s"
[keys]
source = "redis"
cache_ttl = "0s"
stale_if_error = "1d"
[limits]
backend = "redis"
on_store_error = "deny"
replicas = 3
[redis]
url = "redis+cluster://a:7000,b:7001"
timeout = "20ms"
"#;
        let (s, warnings) = ok(text);
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(s.listen.address, "[::1]:443".parse().unwrap());
        let nets: Vec<String> = s.listen.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8", "::1/128"]);
        assert_eq!(s.admin.address, "127.0.0.1:0".parse().unwrap());
        assert_eq!(s.server.header_read_timeout, Duration::from_millis(500));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.server.body_timeout, Duration::from_secs(3600));
        assert_eq!((s.server.max_connections, s.server.max_header_bytes), (1, 1024));
        assert_eq!(s.server.shutdown_grace, Duration::ZERO);
        assert_eq!(s.server.drain_delay, Duration::from_secs(5));
        assert_eq!(s.keys.source, KeySource::Redis);
        assert_eq!(s.keys.cache_ttl, Duration::ZERO);
        assert_eq!(s.keys.stale_if_error, Duration::from_secs(86_400));
        assert_eq!(s.limits.backend, LimitBackend::Redis);
        assert_eq!(s.limits.on_store_error, OnStoreError::Deny);
        assert_eq!(s.limits.replicas, 3);
        let redis = s.redis.unwrap();
        assert_eq!(redis.url, "redis+cluster://a:7000,b:7001");
        assert_eq!(redis.timeout, Duration::from_millis(20));
    }

    #[test]
    fn syntax_errors_and_unknown_fields() {
        assert_error("[listen]\nadress = \"0.0.0.0:1\"\n", 2, 1, "unknown field `adress`");
        assert_error("[listen\n", 1, 8, "");
        assert_error("[server]\nmax_connections = \"many\"\n", 2, 19, "invalid type");
        assert_error("[listen]\ntls = { cert = \"a\", key = \"b\", ca = \"c\" }\n", 2, 32, "unknown field `ca`");
    }

    #[test]
    fn addresses() {
        assert_error("[listen]\naddress = \"localhost:8443\"\n", 2, 11, "IP address and a port");
        assert_error("[admin]\naddress = \"9090\"\n", 2, 11, "IP address and a port");
        assert_error(
            "[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:1\"\n",
            4,
            11,
            "cannot share",
        );
        let (_, w) = ok("[admin]\napi_address = \"0.0.0.0:9091\"\n");
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].line, w[0].column), (2, 15));
        assert!(w[0].message.contains("not a loopback address"), "{}", w[0].message);
        assert!(!w[0].is_error());
        let (_, w) = ok("[admin]\napi_address = \"[::1]:9091\"\n");
        assert!(w.is_empty());
    }

    #[test]
    fn trusted_proxies_are_checked() {
        assert_error(
            "[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            2,
            34,
            "neither an IP address nor a CIDR",
        );
        assert_error("[listen]\ntrusted_proxies = [\"proxy.local\"]\n", 2, 20, "neither");
        let (s, w) = ok("[listen]\ntrusted_proxies = [\"10.1.2.3/8\"]\n");
        assert_eq!(s.listen.trusted_proxies, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("host bits"));
    }

    #[test]
    fn server_limits() {
        assert_error("[server]\nmax_connections = 0\n", 2, 19, "with 0 keygate would accept no connection");
        assert_error("[server]\nmax_header_bytes = 512\n", 2, 20, "at least 1024");
        assert_error("[server]\nmax_header_bytes = -1\n", 2, 20, "431");
        assert_error("[server]\nheader_read_timeout = \"0s\"\n", 2, 23, "longer than 0s");
        assert_error("[server]\nidle_timeout = \"60\"\n", 2, 16, "no unit");
        assert_error("[server]\nbody_timeout = \"1w\"\n", 2, 16, "unknown unit");
        assert_error("[server]\ndrain_delay = \"soon\"\n", 2, 15, "drain_delay");
        assert_error("[server]\nworkers = 0\n", 2, 11, "no request would be served");
        assert_error("[server]\nworkers = 5000\n", 2, 11, "at most 1024");
        assert_eq!(ok("[server]\nworkers = 3\n").0.server.workers, 3);
        assert_eq!(ok("").0.server.workers, default_workers());
    }

    #[test]
    fn choices() {
        assert_error("[keys]\nsource = \"postgres\"\n", 2, 10, "\"file\" or \"redis\"");
        assert_error("[limits]\nbackend = \"memcached\"\n", 2, 11, "\"local\" or \"redis\"");
        assert_error("[limits]\non_store_error = \"retry\"\n", 2, 18, "\"local\" or \"allow\" or \"deny\"");
        assert_error("[limits]\nreplicas = 0\n", 2, 12, "at least 1");
        assert_error("[limits]\nreplicas = 5000000000\n", 2, 12, "too large");
        assert_error("policy = \"\"\n", 1, 10, "cannot be empty");
    }

    #[test]
    fn redis_is_required_where_used() {
        assert_error("[keys]\nsource = \"redis\"\n", 2, 10, "`keys.source = \"redis\"` needs a [redis] table");
        assert_error("[limits]\nbackend = \"redis\"\n", 2, 11, "`limits.backend = \"redis\"` needs a [redis]");
        let errors = parse("[keys]\nsource = \"redis\"\n[limits]\nbackend = \"redis\"\n").unwrap_err();
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 10), (4, 11)]);
    }

    #[test]
    fn redis_table() {
        let redis = |body: &str| format!("[limits]\nbackend = \"redis\"\n[redis]\n{body}\n");
        assert_error(&redis("timeout = \"50ms\""), 3, 1, "needs a `url`");
        assert_error(&redis("url = \"http://cache:6379\""), 4, 7, "scheme `http`");
        assert_error(&redis("url = \"127.0.0.1:6379\""), 4, 7, "redis://127.0.0.1:6379/0");
        assert_error(&redis("url = \"redis://\""), 4, 7, "names no host");
        assert_error(&redis("url = \"redis://:pw@\""), 4, 7, "names no host");
        assert_error(&redis("url = \"redis://a\"\ntimeout = \"0ms\""), 5, 11, "longer than 0s");
        let (s, _) = ok(&redis("url = \"redis://:secret@cache:6379/2\"\ntimeout = \"1s\""));
        assert_eq!(s.redis.unwrap().timeout, Duration::from_secs(1));
        let (_, w) = ok(&redis("url = \"redis://a\"\nca_file = \"ca.pem\""));
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("rediss://"));
    }

    #[test]
    fn unused_settings_are_warnings() {
        let (s, w) = ok("[redis]\nurl = \"redis://a\"\n");
        assert!(s.redis.is_some());
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].line, w[0].column), (1, 1));
        assert!(w[0].message.contains("[redis] is not used"));
        let (_, w) = ok("[keys]\nsource = \"redis\"\nfile = \"k.json\"\n[redis]\nurl = \"redis://a\"\n");
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].line, w[0].column), (3, 8));
    }

    #[test]
    fn tls_needs_cert_and_key() {
        assert_error("[listen]\ntls = { cert = \"a.crt\" }\n", 2, 7, "both `cert` and `key`");
        assert_error("[listen.tls]\nkey = \"a.key\"\n", 1, 1, "both `cert` and `key`");
    }

    #[test]
    fn all_errors_are_collected() {
        let text = "[listen]\naddress = \"x\"\n[server]\nmax_connections = 0\n[limits]\nreplicas = 0\n";
        let errors = parse(text).unwrap_err();
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(2, 11), (4, 19), (6, 12)]);
        assert!(errors.iter().all(|e| e.to_string().starts_with("/etc/keygate/keygate.toml:")));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
        let (s, warnings) = Settings::load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(s.listen.address, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(s.admin.address, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(s.policy_file, path.with_file_name("routes.toml"));
        assert_eq!(s.keys.source, KeySource::File(path.with_file_name("keys.json")));
        assert_eq!(s.limits.backend, LimitBackend::Local);
    }

    #[test]
    fn an_unreadable_file_is_a_file_error() {
        let errors = Settings::load(Path::new("/nonexistent/keygate.toml")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        assert!(errors[0].message.contains("cannot read"));
    }
}
