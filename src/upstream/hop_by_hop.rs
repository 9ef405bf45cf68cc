//! Hop-by-hop headers (RFC 9110 7.6.1): removed both ways, with those named in
//! `Connection`; `TE: trailers` kept, `Upgrade` kept only for an admitted WebSocket
//! handshake and its 101.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that apply to one connection only (RFC 9110 7.6.1), removed both ways, in this
/// order. A `static`: a `const` array would be built and dropped wherever it is used.
pub(super) static HOP_BY_HOP: [HeaderName; 7] =
    [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING];

/// Bits of [`hop_by_hop_present`]: bit `i` is `HOP_BY_HOP[i]`, bit 7 is `Upgrade`.
const CONNECTION_BIT: u8 = 1 << 0;
const TRANSFER_ENCODING_BIT: u8 = 1 << 6;
const TE_BIT: u8 = 1 << 5;
pub(super) const UPGRADE_BIT: u8 = 1 << 7;

/// Which hop-by-hop headers and `Upgrade` `headers` has, in one pass over its names.
pub(super) fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        // Cheaper than comparing `HeaderName`s (a standard name's text is a table lookup).
        present |= match name.as_str() {
            "connection" => CONNECTION_BIT,
            "keep-alive" => 1 << 1,
            "proxy-connection" => 1 << 2,
            "proxy-authenticate" => 1 << 3,
            "proxy-authorization" => 1 << 4,
            "te" => TE_BIT,
            "transfer-encoding" => TRANSFER_ENCODING_BIT,
            "upgrade" => UPGRADE_BIT,
            _ => 0,
        };
    }
    present
}

/// Removes hop-by-hop headers, and those named in `Connection` (and a `Content-Length`
/// that came with a `Transfer-Encoding`). `TE: trailers` is kept
/// (gRPC needs it). `Upgrade` is removed unless `keep_upgrade` (an authorised WebSocket
/// handshake or its 101): then it is kept and `Connection: upgrade` is set, since this
/// hop's `Connection` must name it (RFC 9110 7.8).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return; // the common response: nothing to remove, and no `Connection` naming any
    }
    let te_trailers = present & TE_BIT != 0 && lists_token(headers, TE, "trailers");
    if present & CONNECTION_BIT != 0 {
        remove_connection_named(headers, keep_upgrade);
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        // A message with both lengths was framed by `Transfer-Encoding` (RFC 9112 6.3);
        // its `Content-Length` is stale and must not be passed on, or the next hop would
        // frame the body by it (a truncated body, or a malformed HTTP/2 stream).
        headers.remove(CONTENT_LENGTH);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if !keep_upgrade {
        if present & UPGRADE_BIT != 0 {
            headers.remove(UPGRADE);
        }
    } else if headers.contains_key(UPGRADE) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the headers named in `Connection` (all of its values, in order), except
/// `Upgrade` when `keep_upgrade`. A name is removed by `&str`: it is lower-cased and
/// looked up on the stack, without the allocation a custom `HeaderName` would cost, and
/// text that is not a header name removes nothing.
fn remove_connection_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Clones share the bytes; a second `Connection` header is rare.
    let mut values = headers.get_all(CONNECTION).iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim();
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            headers.remove(name);
        }
    }
}

/// Whether `headers` has a `name` header listing `token` (comma-separated, any case).
pub(crate) fn lists_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        let bytes = value.as_bytes();
        // Only values `to_str` accepts (visible ASCII and tab, so `trim_ascii` is `str::trim`).
        bytes.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            && bytes.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
