//! Validates a parsed `keygate.toml` table by table into [`Settings`], with the
//! defaults, and the checks across tables (the admin and proxy addresses, `[redis]`
//! needed or unused). Every finding goes to the [`Checker`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_spanned::Spanned;

use super::model::{
    Admin, Authorizer, KeySource, Keys, LimitBackend, Limits, Listen, OnStoreError, Redis, Server, Settings, Tls,
    ADMIN_MAX_CONNECTIONS, ON_STORE_ERROR,
};
use super::raw;
use super::values::{
    address, at_least, at_most, duration, one_of, optional_path, redis_url_problem, resolve_path, trusted_proxies,
};
use crate::body::MinRate;
use crate::toml_check::Checker;

/// The most `server.workers`: far more threads than any machine has CPUs only adds
/// context switches.
const MAX_WORKERS: usize = 1024;

/// `limits.concurrency_ttl` when unset.
const DEFAULT_CONCURRENCY_TTL: Duration = Duration::from_secs(10);

/// The most a per-address budget (`failed_auth_per_minute`, `preflights_per_minute`) may
/// allow: beyond it a budget protects nothing.
const MAX_PER_MINUTE: usize = 1_000_000;

/// Validates the raw settings. The result is only usable when `check` holds no error.
pub(super) fn compile(raw: raw::RawSettings, file: &Path, dir: &Path, check: &mut Checker<'_>) -> Settings {
    let policy_file = match &raw.policy {
        None => dir.join("routes.toml"),
        Some(p) => resolve_path(check, dir, "policy", p).unwrap_or_default(),
    };

    // Without `[listen]` but with `[authorizer]`, keygate is an authorizer only.
    let serve_proxy = raw.listen.is_some() || raw.authorizer.is_none();
    let raw_listen = raw.listen.unwrap_or_default();
    let listen_address = address(check, "address", raw_listen.address.as_ref(), SocketAddr::from(([0, 0, 0, 0], 8443)));
    let tls = raw_listen.tls.as_ref().and_then(|t| tls_files(check, dir, t));
    let listen = Listen {
        address: listen_address,
        tls,
        trusted_proxies: trusted_proxies(check, raw_listen.trusted_proxies.as_deref().unwrap_or_default()),
    };

    let authorizer = raw.authorizer.as_ref().map(|table| compile_authorizer(table, dir, check));
    if let (Some(authorizer), Some(table)) = (&authorizer, &raw.authorizer) {
        if serve_proxy && authorizer.address == listen.address && listen.address.port() != 0 {
            let at = table.get_ref().address.as_ref().map_or(table.span(), |a| a.span());
            check.error(at, format!("the authorizer cannot share the proxy's address {}", listen.address));
        }
    }

    let raw_admin = raw.admin.unwrap_or_default();
    let admin_address = address(check, "address", raw_admin.address.as_ref(), SocketAddr::from(([127, 0, 0, 1], 9090)));
    if admin_address == listen.address && admin_address.port() != 0 {
        // At the admin address when it is written; else the proxy took the admin default.
        match (&raw_admin.address, &raw_listen.address) {
            (Some(a), _) => {
                check.error(a.span(), format!("the admin listener cannot share the proxy's address {admin_address}"))
            }
            (None, Some(l)) => check.error(
                l.span(),
                format!(
                    "the proxy cannot share the admin listener's address {admin_address} (the default of \
                    `[admin] address`; set another there)"
                ),
            ),
            (None, None) => {}
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
    if let (Some(authorizer), Some(table)) = (&authorizer, &raw.authorizer) {
        if authorizer.address == admin_address && admin_address.port() != 0 {
            let at = table.get_ref().address.as_ref().map_or(table.span(), |a| a.span());
            check.error(at, format!("the authorizer cannot share the admin listener's address {admin_address}"));
        }
    }
    let admin = Admin {
        address: admin_address,
        api_address,
        token_file: optional_path(check, dir, "token_file", raw_admin.token_file.as_ref()),
        max_connections: at_least(
            check,
            "max_connections",
            raw_admin.max_connections.as_ref(),
            1,
            ADMIN_MAX_CONNECTIONS,
            "with 0 the admin listeners would accept no connection at all",
        ),
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
        failed_auth_per_minute: per_minute(
            check,
            "failed_auth_per_minute",
            s.failed_auth_per_minute.as_ref(),
            d.failed_auth_per_minute,
        ),
        preflights_per_minute: per_minute(
            check,
            "preflights_per_minute",
            s.preflights_per_minute.as_ref(),
            d.preflights_per_minute,
        ),
        min_body_rate: min_body_rate(check, &s),
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
        pepper_file_at: k.pepper_file.as_ref().map(|p| check.position(&p.span())),
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
        concurrency_ttl: duration(check, "concurrency_ttl", l.concurrency_ttl.as_ref(), DEFAULT_CONCURRENCY_TTL, true),
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

    Settings {
        file: file.to_path_buf(),
        policy_file,
        listen,
        serve_proxy,
        authorizer,
        admin,
        server,
        keys,
        limits,
        redis,
    }
}

/// `tls = { cert, key }` of `[listen]` or `[authorizer]`.
fn tls_files(check: &mut Checker<'_>, dir: &Path, t: &Spanned<raw::RawTls>) -> Option<Tls> {
    let (cert, key) = (t.get_ref().cert.as_ref(), t.get_ref().key.as_ref());
    if cert.is_none() || key.is_none() {
        check.error(t.span(), "`tls` needs both `cert` and `key` (PEM files)");
    }
    let cert = optional_path(check, dir, "cert", cert)?;
    let key = optional_path(check, dir, "key", key)?;
    Some(Tls { cert, key })
}

/// `[authorizer]`.
fn compile_authorizer(table: &Spanned<raw::RawAuthorizer>, dir: &Path, check: &mut Checker<'_>) -> Authorizer {
    let a = table.get_ref();
    let path_prefix = a.path_prefix.as_ref().and_then(|p| {
        let text = p.get_ref();
        let valid = text.starts_with('/')
            && text.len() > 1
            && !text.ends_with('/')
            && !text.contains(['?', '#', '%'])
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            check.error(
                p.span(),
                format!(
                    "`path_prefix` is \"{text}\"; write a path that starts with `/` and does not end \
                    with one, without `?`, `#`, `%` or spaces, e.g. \"/authz\""
                ),
            );
        }
        valid.then(|| text.clone())
    });
    Authorizer {
        address: address(check, "address", a.address.as_ref(), Authorizer::default().address),
        tls: a.tls.as_ref().and_then(|t| tls_files(check, dir, t)),
        trusted_proxies: trusted_proxies(check, a.trusted_proxies.as_deref().unwrap_or_default()),
        path_prefix,
    }
}

/// A per-address budget: 0 (no limit) to [`MAX_PER_MINUTE`].
fn per_minute(check: &mut Checker<'_>, name: &str, raw: Option<&Spanned<i64>>, default: u32) -> u32 {
    let value = at_least(check, name, raw, 0, default as usize, "write 0 for no limit");
    let value = at_most(check, name, raw, MAX_PER_MINUTE, value);
    u32::try_from(value).unwrap_or(default)
}

/// `min_body_rate` (bytes a second; 0: none) over `min_body_rate_window`.
fn min_body_rate(check: &mut Checker<'_>, s: &raw::RawServer) -> Option<MinRate> {
    const DEFAULT_RATE: usize = 1024;
    let window =
        duration(check, "min_body_rate_window", s.min_body_rate_window.as_ref(), Duration::from_secs(10), true);
    let rate = at_least(check, "min_body_rate", s.min_body_rate.as_ref(), 0, DEFAULT_RATE, "write 0 for no minimum");
    let rate = at_most(check, "min_body_rate", s.min_body_rate.as_ref(), 1 << 30, rate) as u64;
    let bytes = (rate as u128 * window.as_millis() / 1000).min(u64::MAX as u128) as u64;
    (rate > 0).then_some(MinRate { bytes: bytes.max(1), window })
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
