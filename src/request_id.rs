//! Request ids (`x-request-id`): a client's is kept when it is a short token, else a new
//! random one is made. Every response carries one, and so does every access line.
//!
//! A [`RequestId`] is held as the header value it is sent as: a client's shares the bytes
//! of its request's header, a fresh one is written once, and the upstream request and the
//! response carry it without copying or re-validating it.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use http::HeaderValue;

/// A request's id: 1–128 visible ASCII characters (see [`valid`]), or 32 hex digits when
/// fresh. Reads as a `&str` (`Deref`), and is the `x-request-id` value as it stands.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's value, kept as it arrived, when [`valid`] says it may be.
    pub fn kept(value: &HeaderValue) -> Option<RequestId> {
        valid(value.as_bytes()).then(|| RequestId(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever held (checked by `valid`, or hex digits), so this never fails.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the header value it is sent as (a cheap clone: the bytes are shared).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Whether a client-sent `x-request-id` may be kept: 1–128 characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn valid(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh request id: 32 hex characters of randomness (lower case), written once into
/// the buffer that becomes the header value.
pub fn new() -> RequestId {
    let hex = crate::encoding::lower_hex(&rand::random::<u128>().to_be_bytes());
    let value = HeaderValue::from_maybe_shared(Bytes::from(hex.into_bytes()));
    // Hex digits are always a valid header value.
    RequestId(value.unwrap_or_else(|_| HeaderValue::from_static("0")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_validated() {
        assert!(valid(b"abc-123_.:X"));
        assert!(valid(&[b'a'; 128]));
        assert!(!valid(&[b'a'; 129]));
        assert!(!valid(b""));
        assert!(!valid(b"a b"));
        assert!(!valid(b"a/b"));
        assert_eq!(new().len(), 32);
    }

    #[test]
    fn a_kept_id_is_the_clients_value_and_reads_as_text() {
        let sent = HeaderValue::from_static("abc-123_.:X");
        let kept = RequestId::kept(&sent).expect("a valid id is kept");
        assert_eq!(kept.header_value(), &sent);
        assert_eq!(&*kept, "abc-123_.:X");
        assert_eq!(kept.to_string(), "abc-123_.:X");
        assert_eq!(format!("{kept:?}"), "\"abc-123_.:X\"");
        assert!(RequestId::kept(&HeaderValue::from_static("a b")).is_none());
        let fresh = new();
        assert_eq!(fresh.header_value().as_bytes(), fresh.as_bytes());
    }

    #[test]
    fn request_ids_are_lower_case_hex() {
        let (a, b) = (new(), new());
        assert!(a.len() == 32 && a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{a}");
        assert_ne!(a, b);
    }
}
