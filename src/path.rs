//! Path normalisation (docs/reference.md §4.5, RFC 3986 2.3 and 5.2.4) and its refusals: the one
//! function that turns a request's raw path into the path that is matched and forwarded.
//!
//! # Why this exists
//!
//! Nearly every published authorisation bypass in a proxy (Envoy, Istio, Traefik,
//! nginx, Spring Security, Tomcat) is a *path confusion*: the proxy matches its rules
//! against one reading of the path and the backend serves another. `/public/%2e%2e/admin`
//! matches a `/public` rule but is served as `/admin`; `/public/..;/admin` is a literal
//! segment to the proxy but Tomcat strips `;…` and climbs; `/public%2F..%2Fadmin` is one
//! segment to the proxy but two to a backend that decodes `%2F`. keygate closes the gap
//! by computing **one** canonical path, matching routes against it, and forwarding
//! exactly that path, and by refusing (400) every input whose meaning backends disagree
//! on rather than guessing which reading the backend will take.
//!
//! # The rules, in the order they apply (a single left-to-right pass)
//!
//! * The path must start with `/` ([`PathError::NotAbsolute`]): `*`, an empty path or
//!   a relative reference is never matched.
//! * `%XX` must be two hex digits ([`PathError::InvalidPercentEncoding`]): `%`, `%2`,
//!   `%zz`, IIS's `%u002e` and the nested trick `%%32%65` are refused, so no backend can
//!   read them differently.
//! * A percent-encoded **unreserved** character (RFC 3986 2.3: `A-Z a-z 0-9 - . _ ~`) is
//!   decoded: `%2e` is `.`, `%61dmin` is `admin`. RFC 3986 6.2.2.2 says these are
//!   equivalent to their literal form, and backends treat them so; leaving them encoded
//!   would let `/%61dmin` slip past a rule on `/admin`.
//! * Every other percent-encoding is kept and its two hex digits are upper-cased
//!   (RFC 3986 6.2.2.1). It is decoded **once at most**: `%252e` stays `%252e` (the
//!   `2e` after `%25` is literal text), so a backend that decodes twice cannot turn it
//!   into a dot-segment the proxy never saw (the Spring and Tomcat double-decoding
//!   bypasses).
//! * `%2F` and `%5C` (any case) are refused ([`PathError::EncodedSlash`]): backends
//!   disagree on whether they separate segments (Envoy CVE-2019-9901, Istio
//!   CVE-2021-31920). With `[paths] encoded_slash = "keep"` they are kept, upper-cased,
//!   inside their segment, and never act as a separator *here*.
//! * A `;` is refused ([`PathError::Semicolon`]), because Tomcat, Jetty and Spring cut
//!   matrix parameters (`..;/`, `;jsessionid=`) out of a segment before they route.
//!   `%3B` is refused too: some backends decode the path first and parse matrix
//!   parameters after. With `[paths] semicolon = "keep"` both are ordinary characters
//!   (`%3B` stays encoded).
//! * A raw `\` is refused ([`PathError::Backslash`]): Windows backends, and some Java
//!   ones, treat it as `/`. `%5C` is an encoded slash, above.
//! * A control character (`0x00`–`0x1F`, `0x7F`), raw or percent-encoded (`%00`, `%0a`,
//!   `%7f`), is refused ([`PathError::ControlCharacter`]): NUL truncates paths in C
//!   backends; CR/LF splits headers and log lines.
//! * A raw `#` is refused ([`PathError::Fragment`]): a fragment is never sent on the
//!   wire, so one in the path means a client or proxy is confused. `%23` is kept.
//!   Through the server a `#` never gets here: the HTTP parser ends the path at it and
//!   drops the fragment, and what is matched is what is forwarded (`tests/decisions.rs`);
//!   the rule holds for paths given as text (`keygate explain`).
//! * A raw space, `"`, `<`, `>`, `?` or any non-ASCII byte is refused
//!   ([`PathError::InvalidCharacter`]): RFC 3986 does not allow them in a path, and
//!   non-ASCII (fullwidth dots, overlong forms) is a Unicode-normalisation bypass
//!   waiting to happen. Encoded non-ASCII (`%C3%A9`, `%C0%AE`) is kept encoded, so it
//!   is never a dot. hyper never yields a `?` in `uri.path()`; one here would split
//!   the forwarded target into path and query, so it is refused rather than kept.
//!   Every other printable ASCII character is kept as it is.
//! * Repeated slashes are merged (`//admin` is `/admin`, as Envoy's `merge_slashes`),
//!   **before** dot-segments are removed, so `//..` climbs exactly as `/..` does and
//!   `/a//../b` is `/b` (the backend that merges slashes reads it so).
//! * Dot-segments are removed as RFC 3986 5.2.4 does, **after** the decoding above, so
//!   `%2e%2e`, `.%2E` and `%2E.` are all `..`. A segment is a dot-segment only if it is
//!   exactly `.` or `..`: `/api..`, `/...`, `..;` (with `semicolon = "keep"`) and
//!   `..%2F` (with `encoded_slash = "keep"`) are literal segments.
//! * A `..` that would climb above the root is refused ([`PathError::AboveRoot`]),
//!   not clamped to `/` as a browser would: no honest client sends one.
//! * A trailing slash is kept (`/v1/calls/` stays), and a final `.` or `..` leaves one
//!   (`/v1/calls/.` is `/v1/calls/`, `/a/b/..` is `/a/`), as RFC 3986 5.2.4 does.
//!
//! The first refusal met from left to right is the one reported. The result is
//! idempotent: normalising an output again returns it unchanged.
//!
//! # Cost
//!
//! This runs on every request. A path that is already canonical (the usual case) is
//! recognised by one tight scan and copied; any other path is rewritten in one pass
//! into a single pre-sized buffer (the output is never longer than the input).

use crate::encoding::{hex_value, percent_encoded};

/// `[paths]` of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// `encoded_slash = "keep"`: `%2F`/`%5C` are forwarded encoded and never act as a
    /// separator. Default false: refused with 400.
    pub keep_encoded_slash: bool,
    /// `semicolon = "keep"`: `;` is an ordinary character. Default false: refused.
    ///
    /// When refused, the encoded form `%3B` is refused as well: some backends
    /// percent-decode the path first and parse matrix parameters (`;jsessionid=…`,
    /// Tomcat's `..;/`) afterwards, so `%3B` would reach them as a `;`. When kept,
    /// `%3B` stays encoded (it is not an unreserved character).
    pub keep_semicolon: bool,
}

/// Why a path was refused (400 `bad_request`); the message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the path contains a `;`")]
    Semicolon,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains a `#`")]
    Fragment,
    #[error("the path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path contains a character that is not allowed in a URL path")]
    InvalidCharacter,
}

/// Normalises the path part of a request target (no query), as the module doc says:
/// decode encoded unreserved characters, upper-case other encodings, merge repeated
/// slashes, remove dot-segments (RFC 3986 5.2.4), and refuse what backends disagree on.
///
/// `raw` is `uri.path()` as hyper gives it. The `Ok` value is the path routes are
/// matched against and the upstream receives.
pub fn normalize(raw: &str, options: PathOptions) -> Result<String, PathError> {
    if is_canonical(raw.as_bytes(), options) {
        return Ok(raw.to_owned());
    }
    rewrite(raw.as_bytes(), options)
}

/// Raw bytes that are kept as they are and need no further thought: printable ASCII
/// except `%` (an escape), `/` (a separator), and the characters refused or
/// conditionally refused below (`;` `\` `#` `?` `"` `<` `>`; space is below `!`).
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'!';
    while b <= b'~' {
        table[b as usize] = !matches!(b, b'%' | b'/' | b';' | b'\\' | b'#' | b'?' | b'"' | b'<' | b'>');
        b += 1;
    }
    table
};

fn is_plain(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The fast path: true when `raw` is already its own normal form, that is, it starts
/// with `/`, holds only plain bytes (and `;` when kept), no `%`, no empty segment
/// (`//`) and no `.` or `..` segment. One scan, no allocation.
fn is_canonical(raw: &[u8], options: PathOptions) -> bool {
    let Some((&b'/', rest)) = raw.split_first() else {
        return false;
    };
    // Length of the current segment and whether it is all dots so far. An empty
    // segment counts as "all dots", so one test catches `//`, `/./` and `/../`.
    let mut len = 0usize;
    let mut dots = true;
    for &b in rest {
        if b == b'/' {
            if dots && len <= 2 {
                return false;
            }
            len = 0;
            dots = true;
        } else if is_plain(b) || (b == b';' && options.keep_semicolon) {
            len += 1;
            dots &= b == b'.';
        } else {
            return false;
        }
    }
    // A final empty segment is a trailing slash (kept); a final `.`/`..` is not canonical.
    !(dots && (len == 1 || len == 2))
}

/// The general path: one left-to-right pass writing into one buffer. Invariant: at the
/// start of each segment `out` ends with `/`, and `seg_start` is where the segment's
/// (decoded) bytes begin.
fn rewrite(raw: &[u8], options: PathOptions) -> Result<String, PathError> {
    let Some((&b'/', _)) = raw.split_first() else {
        return Err(PathError::NotAbsolute);
    };
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    out.push(b'/');
    let mut seg_start = out.len();
    let mut i = 1;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if is_plain(b) {
            out.push(b);
        } else if b == b'/' {
            end_segment(&mut out, seg_start, true)?;
            seg_start = out.len();
        } else if b == b'%' {
            let hi = raw.get(i).copied().and_then(hex_value);
            let lo = raw.get(i + 1).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            i += 2;
            push_decoded(&mut out, (hi << 4) | lo, options)?;
        } else {
            check_raw(b, options)?;
            out.push(b);
        }
    }
    end_segment(&mut out, seg_start, false)?;
    // Only ASCII bytes are ever written, so this cannot fail; map rather than unwrap.
    String::from_utf8(out).map_err(|_| PathError::InvalidCharacter)
}

/// A raw byte that is neither plain, `/` nor `%`: refused, except `;` when kept.
fn check_raw(b: u8, options: PathOptions) -> Result<(), PathError> {
    match b {
        0x00..=0x1F | 0x7F => Err(PathError::ControlCharacter),
        b'\\' => Err(PathError::Backslash),
        b';' if options.keep_semicolon => Ok(()),
        b';' => Err(PathError::Semicolon),
        b'#' => Err(PathError::Fragment),
        // space, `"`, `<`, `>`, `?` and every non-ASCII byte
        _ => Err(PathError::InvalidCharacter),
    }
}

/// The byte `%XX` stands for: decoded if unreserved, else refused or kept upper-cased.
fn push_decoded(out: &mut Vec<u8>, value: u8, options: PathOptions) -> Result<(), PathError> {
    match value {
        v if is_unreserved(v) => {
            out.push(v);
            return Ok(());
        }
        b'/' | b'\\' if !options.keep_encoded_slash => return Err(PathError::EncodedSlash),
        0x00..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
        b';' if !options.keep_semicolon => return Err(PathError::Semicolon),
        _ => {}
    }
    out.extend_from_slice(&percent_encoded(value));
    Ok(())
}

/// Closes the segment that starts at `seg_start` (RFC 3986 5.2.4 on one segment).
/// `more` is true when a `/` follows it.
fn end_segment(out: &mut Vec<u8>, seg_start: usize, more: bool) -> Result<(), PathError> {
    match out.get(seg_start..).unwrap_or_default() {
        // An empty segment is a repeated (or trailing) slash: merged.
        b"" => {}
        b"." => out.truncate(seg_start),
        b".." => {
            out.truncate(seg_start);
            // `out` is `/` or `/…/parent/`; drop `parent/`, refuse to climb above `/`.
            let Some(without_slash) = out.len().checked_sub(1).filter(|&n| n > 0) else {
                return Err(PathError::AboveRoot);
            };
            let cut = out.get(..without_slash).and_then(|s| s.iter().rposition(|&c| c == b'/')).map_or(1, |p| p + 1);
            out.truncate(cut);
        }
        _ => {
            if more {
                out.push(b'/');
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
