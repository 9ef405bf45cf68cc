//! Readers of one value of `keygate.toml` each: a path, an address, a duration, a bounded
//! integer, a word out of a set, the trusted proxies, a Redis URL. Each records its
//! problem in the [`Checker`] and falls back to the default, so every problem is found
//! in one pass.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde_spanned::Spanned;

use crate::toml_check::{choice, duration_value, Checker};

/// A path from the file, resolved against the config file's directory (docs/reference.md, conventions);
/// absolute paths are kept.
pub(super) fn resolve_path(
    check: &mut Checker<'_>,
    dir: &Path,
    name: &str,
    value: &Spanned<String>,
) -> Option<PathBuf> {
    if value.get_ref().is_empty() {
        check.error(value.span(), format!("`{name}` cannot be empty"));
        return None;
    }
    Some(dir.join(value.get_ref()))
}

pub(super) fn optional_path(
    check: &mut Checker<'_>,
    dir: &Path,
    name: &str,
    value: Option<&Spanned<String>>,
) -> Option<PathBuf> {
    value.and_then(|v| resolve_path(check, dir, name, v))
}

/// A socket address (`IP:port`), or its default when absent.
pub(super) fn address(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<String>>,
    default: SocketAddr,
) -> SocketAddr {
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
pub(super) fn duration(
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
pub(super) fn at_least<T: TryFrom<i64> + Copy>(
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

/// `value` (already checked by [`at_least`]), refused above `max`.
pub(super) fn at_most(
    check: &mut Checker<'_>,
    name: &str,
    raw: Option<&Spanned<i64>>,
    max: usize,
    value: usize,
) -> usize {
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
pub(super) fn one_of<T: Copy>(
    check: &mut Checker<'_>,
    name: &str,
    value: Option<&Spanned<String>>,
    choices: &[(&str, T)],
    default: T,
) -> T {
    value.and_then(|v| choice(check, name, v, choices)).unwrap_or(default)
}

/// `trusted_proxies`: CIDRs, or bare addresses (a host prefix, /32 or /128).
pub(super) fn trusted_proxies(check: &mut Checker<'_>, values: &[Spanned<String>]) -> Vec<IpNet> {
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
pub(super) fn redis_url_problem(url: &str) -> Option<String> {
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
