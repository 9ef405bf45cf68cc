//! Whether a query string carries a key (docs/reference.md §4.1): such a request is refused before the
//! key can travel on into access logs.

use super::secret::{parse_secret, KEY_LEN, KEY_PREFIX};

/// Whether a query string carries a well-formed key (right prefix, length and checksum)
/// anywhere in a parameter name or value, after percent-decoding (and `+` as a space):
/// such a request is refused with 400 so that the key does not travel on into access
/// logs (docs/reference.md §4.1). `&` and `;` both separate parameters.
///
/// A key embedded in a longer value (`token=Bearer+kg_…`) counts too: the checksum
/// makes a false positive on ordinary data negligible (about 1 in 62^6).
///
/// On every request's path, so it returns at once for the common query that holds
/// neither `kg_` nor any percent-encoding (which could spell `kg_` in disguise).
pub fn query_carries_key(query: &str) -> bool {
    let raw = query.as_bytes();
    let has_plain = contains(raw, KEY_PREFIX.as_bytes());
    if !has_plain && !raw.contains(&b'%') {
        return false;
    }
    if has_plain && contains_key(raw) {
        return true;
    }
    if !raw.contains(&b'%') {
        return false;
    }
    raw.split(|&b| b == b'&' || b == b';').any(|param| {
        let decoded = percent_decode(param);
        contains_key(&decoded)
    })
}

/// Whether `text`, as it is (no decoding), holds a well-formed key anywhere, alone or
/// inside longer text: a client's `x-request-id` that does is replaced, since request
/// ids are logged and keys never are (docs/reference.md §3).
pub fn text_carries_key(text: &str) -> bool {
    let raw = text.as_bytes();
    contains(raw, KEY_PREFIX.as_bytes()) && contains_key(raw)
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether some `kg_` in `bytes` starts a well-formed key.
fn contains_key(bytes: &[u8]) -> bool {
    let prefix = KEY_PREFIX.as_bytes();
    (0..bytes.len().saturating_sub(KEY_LEN - 1)).any(|i| {
        bytes[i..].starts_with(prefix)
            && std::str::from_utf8(&bytes[i..i + KEY_LEN]).is_ok_and(|k| parse_secret(k).is_ok())
    })
}

/// Percent-decodes (once) a query parameter, `+` as a space; an invalid escape is kept
/// as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    use crate::encoding::hex_value;
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}
