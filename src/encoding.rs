//! Hex and percent-encoding, written once: key digests and request ids are lower-case
//! hex, paths and `grpc-message` percent-encode with upper-case digits (RFC 3986 2.1
//! prefers upper case). Each writes into one exactly sized buffer, because digests and
//! request ids are made on every request (`hex::encode` collects an iterator of `char`s:
//! about 1,700 instructions for 32 bytes, against about 200 here).

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Lower-case hex of `bytes`.
pub fn lower_hex(bytes: &[u8]) -> String {
    // Written in place (no capacity check per byte, as `push` makes).
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = LOWER[usize::from(b >> 4)];
        pair[1] = LOWER[usize::from(b & 0x0f)];
    }
    // Only ASCII digits and letters were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// The three bytes `%XY` that percent-encode `byte` (upper-case hex digits).
pub fn percent_encoded(byte: u8) -> [u8; 3] {
    [b'%', UPPER[usize::from(byte >> 4)], UPPER[usize::from(byte & 0x0f)]]
}

/// Appends `%XY` for `byte` to a string.
pub fn push_percent_encoded(out: &mut String, byte: u8) {
    for b in percent_encoded(byte) {
        out.push(char::from(b));
    }
}

/// A `grpc-message` value: printable ASCII but `%` as is, every other byte of the UTF-8
/// percent-encoded (gRPC over HTTP/2, "Responses").
pub fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            push_percent_encoded(&mut out, byte);
        }
    }
    out
}

/// The value of one hex digit (either case).
pub fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_hex_is_what_the_hex_crate_gives() {
        assert_eq!(lower_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(lower_hex(&[]), "");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b%é"), "a b%25%C3%A9");
    }

    #[test]
    fn percent_encoding_is_upper_case_and_round_trips() {
        let mut s = String::new();
        push_percent_encoded(&mut s, 0xe9);
        assert_eq!(s, "%E9");
        for b in 0..=255u8 {
            let [_, hi, lo] = percent_encoded(b);
            assert_eq!(hex_value(hi).unwrap() * 16 + hex_value(lo).unwrap(), b);
        }
        assert_eq!(hex_value(b'g'), None);
    }
}
