//! Request ids (`x-request-id`): a client's is kept when it is a short token, else a new
//! random one is made. Every response carries one, and so does every access line.

/// Whether a client-sent `x-request-id` may be kept: 1–128 characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn valid(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh request id: 32 hex characters of randomness (lower case).
pub fn new() -> String {
    crate::encoding::lower_hex(&rand::random::<u128>().to_be_bytes())
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
    fn request_ids_are_lower_case_hex() {
        let (a, b) = (new(), new());
        assert!(a.len() == 32 && a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{a}");
        assert_ne!(a, b);
    }
}
