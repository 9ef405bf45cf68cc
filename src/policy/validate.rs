//! Checks of single values of `routes.toml`: a positive integer, an upstream URL, a route
//! prefix in normal form, a method token. Each says why a value is refused, in words the
//! operator can act on.

use serde_spanned::Spanned;

use super::upstream::UpstreamProtocol;
use crate::toml_check::Checker;

/// A positive integer, or an error at the value.
pub(super) fn positive(check: &mut Checker<'_>, what: &str, value: &Spanned<i64>) -> Option<u64> {
    match u64::try_from(*value.get_ref()) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            check.error(value.span(), format!("{what} must be at least 1, not {}", value.get_ref()));
            None
        }
    }
}

/// `http://host[:port]` or `h2c://host[:port]`, with at most a `/` for a path: the
/// upstream gets exactly the path that was authorised, so the URL cannot add one.
pub(crate) fn parse_upstream_url(url: &str) -> Result<(UpstreamProtocol, http::uri::Authority), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("url `{url}` must look like `http://host:port` or `h2c://host:port`"))?;
    let protocol = match scheme {
        "http" => UpstreamProtocol::Http1,
        "h2c" => UpstreamProtocol::H2c,
        "https" => {
            return Err(format!(
                "url `{url}`: keygate speaks plain HTTP to its upstream (a sidecar's neighbour); \
                use `http://` or `h2c://`"
            ))
        }
        _ => return Err(format!("url `{url}` has the scheme `{scheme}`; use `http://` or `h2c://`")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err(format!("url `{url}` has a query or fragment; an upstream URL is only `scheme://host:port`"));
    }
    if !tail.is_empty() && tail != "/" {
        return Err(format!(
            "url `{url}` has the path `{tail}`; an upstream gets exactly the path that was \
            authorised, so its URL has none"
        ));
    }
    if authority.contains('@') {
        return Err(format!("url `{url}` carries credentials; an upstream URL is only `scheme://host:port`"));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("url `{url}` has no host"));
    }
    let parsed: http::uri::Authority = authority.parse().map_err(|e| format!("url `{url}`: bad host or port ({e})"))?;
    // `Authority` keeps a port it cannot read as a number (`app:99999`) as no port at
    // all; read what follows the host by hand so such a URL is refused, not defaulted.
    let port_text = authority.get(parsed.host().len()..).and_then(|rest| rest.strip_prefix(':'));
    match port_text {
        None => {
            let with_port = format!("{}:80", parsed.host());
            let parsed = with_port.parse().map_err(|e| format!("url `{url}`: bad host ({e})"))?;
            Ok((protocol, parsed))
        }
        Some("") => Err(format!("url `{url}` has an empty port")),
        Some(port) => match port.parse::<u16>() {
            Ok(0) => Err(format!("url `{url}` has port 0")),
            Ok(_) => Ok((protocol, parsed)),
            Err(_) => Err(format!("url `{url}`: bad port `{port}` (1 to 65535)")),
        },
    }
}

/// Characters a prefix may hold: those of a normalised path (RFC 3986 `pchar` and `/`),
/// less `%` and `;` (see [`prefix_problem`]).
fn prefix_char_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c)
}

/// Why `prefix` is not in the normal form the router matches against, or `None` if it is.
/// The normal form: starts with `/`, no empty, `.` or `..` segment, no trailing `/`
/// (except the root `/`), no `%`, `;`, `\`, `#`, `?`, nor any character a normalised path
/// does not hold.
pub(crate) fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return Some("a prefix cannot be empty; `/` matches every path".to_string());
    }
    if let Some(c) = prefix.chars().find(|c| ['%', ';', '\\', '#', '?'].contains(c)) {
        return Some(format!(
            "prefix `{prefix}` contains `{c}`; a prefix is matched against the normalised path, \
            without query or fragment, and may not hold `%`, `;`, `\\`, `#` or `?`"
        ));
    }
    if let Some(c) = prefix.chars().find(|c| !prefix_char_allowed(*c)) {
        return Some(format!(
            "prefix `{prefix}` contains {:?}, which a normalised path never holds (letters, \
            digits, `/` and `-._~!$&'()*+,=:@` only)",
            c
        ));
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in prefix.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let normal = format!("/{}", segments.join("/"));
    if normal == prefix {
        None
    } else {
        Some(format!(
            "prefix `{prefix}` is not in normal form: write `{normal}` (a prefix starts with \
            `/` and has no empty, `.` or `..` segment and no trailing `/`)"
        ))
    }
}

/// Whether `text` is an upper-case HTTP method token (RFC 9110 5.6.2 `tchar`, 9.1).
pub(super) fn method_problem(text: &str) -> Option<String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if text.is_empty() {
        return Some("a method cannot be empty".to_string());
    }
    if !text.chars().all(tchar) {
        return Some(format!("`{text}` is not an HTTP method token"));
    }
    if text == "CONNECT" {
        return Some(
            "CONNECT is not supported: its target is a host and port, not a path a route could authorise".to_string(),
        );
    }
    if text.chars().any(|c| c.is_ascii_lowercase()) {
        return Some(format!(
            "method `{text}` must be upper-case: write `{}` (methods are case-sensitive, RFC 9110 9.1)",
            text.to_ascii_uppercase()
        ));
    }
    None
}
