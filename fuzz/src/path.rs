//! Path normalisation (docs/reference.md §4.5) against a small model written apart from
//! `keygate::path`: the model splits the raw path at its `/`s first and then reads each
//! segment, where the real code makes one pass over bytes, so the two share no
//! structure. Beyond agreeing with the model, every accepted path must be idempotent,
//! no longer than its input, in canonical shape, accepted alike by the lenient options,
//! and free of dot-segments for a backend that percent-decodes it once more.

use keygate::path::{normalize, PathError, PathOptions};

/// The first byte picks the options (bit 0: `encoded_slash = "keep"`, bit 1:
/// `semicolon = "keep"`); the rest is the path, invalid UTF-8 replaced.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let options = PathOptions { keep_encoded_slash: flags & 1 == 1, keep_semicolon: flags & 2 == 2 };
    check_path(&String::from_utf8_lossy(rest), options);
}

/// Every property for one path under one set of options.
pub fn check_path(raw: &str, options: PathOptions) {
    let got = normalize(raw, options);
    let expected = model(raw.as_bytes(), options);
    assert_eq!(got, expected, "normalize({raw:?}, {options:?}) disagrees with the model");
    let Ok(out) = got else {
        return;
    };
    assert_eq!(normalize(&out, options), Ok(out.clone()), "normalising {raw:?} again changes {out:?}");
    assert!(out.len() <= raw.len(), "{raw:?} grew into {out:?}");
    canonical_shape(&out, options);
    once_decoded(&out, options);
    let lenient = PathOptions { keep_encoded_slash: true, keep_semicolon: true };
    assert_eq!(normalize(raw, lenient), Ok(out.clone()), "{raw:?}: keeping more changes an accepted path");
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// The model: split at raw `/`, read each segment into its normal form (or the first
/// refusal in it), then resolve dot-segments on a stack. A segment's refusals all come
/// before its `..` can climb, and a climb before the next segment's refusals, which is
/// the left-to-right order the rules are reported in.
pub fn model(raw: &[u8], options: PathOptions) -> Result<String, PathError> {
    let Some(rest) = raw.strip_prefix(b"/") else {
        return Err(PathError::NotAbsolute);
    };
    let segments: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let segment = model_segment(segment, options)?;
        match segment.as_slice() {
            b"" | b"." => trailing_slash = last,
            b".." => {
                stack.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            _ => {
                stack.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = b"/".to_vec();
    out.extend(stack.join(&b'/'));
    if trailing_slash && !stack.is_empty() {
        out.push(b'/');
    }
    Ok(String::from_utf8(out).expect("the model writes ASCII only"))
}

/// One segment (no `/` in it) in normal form.
fn model_segment(segment: &[u8], options: PathOptions) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < segment.len() {
        let b = segment[i];
        i += 1;
        if b == b'%' {
            let (Some(hi), Some(lo)) =
                (segment.get(i).copied().and_then(hex), segment.get(i + 1).copied().and_then(hex))
            else {
                return Err(PathError::InvalidPercentEncoding);
            };
            i += 2;
            let value = hi * 16 + lo;
            if unreserved(value) {
                out.push(value);
            } else if (value == b'/' || value == b'\\') && !options.keep_encoded_slash {
                return Err(PathError::EncodedSlash);
            } else if value < 0x20 || value == 0x7F {
                return Err(PathError::ControlCharacter);
            } else if value == b';' && !options.keep_semicolon {
                return Err(PathError::Semicolon);
            } else {
                out.extend(format!("%{value:02X}").bytes());
            }
            continue;
        }
        match b {
            0x00..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
            b'\\' => return Err(PathError::Backslash),
            b';' if !options.keep_semicolon => return Err(PathError::Semicolon),
            b'#' => return Err(PathError::Fragment),
            b' ' | b'"' | b'<' | b'>' | b'?' | 0x80..=0xFF => return Err(PathError::InvalidCharacter),
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// The shape of a normal path: `/` first, no empty, `.` or `..` segment except a
/// trailing slash, only printable ASCII that needs no refusal, and every `%XX` upper
/// case, never standing for an unreserved or control character, and standing for a
/// slash or `;` only where the options keep them.
fn canonical_shape(out: &str, options: PathOptions) {
    let bytes = out.as_bytes();
    assert_eq!(bytes.first(), Some(&b'/'), "{out:?} does not start with `/`");
    assert!(!out.contains("//"), "{out:?} holds `//`");
    let inner = out[1..].strip_suffix('/').unwrap_or(&out[1..]);
    for segment in inner.split('/').filter(|_| !inner.is_empty()) {
        assert!(!matches!(segment, "" | "." | ".."), "{out:?} holds the segment {segment:?}");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        assert!((0x21..=0x7E).contains(&b), "{out:?} holds the byte {b:#04x}");
        assert!(!b"\\#?\"<>".contains(&b), "{out:?} holds {:?}", char::from(b));
        assert!(b != b';' || options.keep_semicolon, "{out:?} holds `;`");
        if b == b'%' {
            let digits = &bytes[i + 1..i + 3];
            assert!(digits.iter().all(|d| d.is_ascii_digit() || (b'A'..=b'F').contains(d)), "{out:?}: {digits:?}");
            let value = hex(digits[0]).unwrap() * 16 + hex(digits[1]).unwrap();
            assert!(!unreserved(value) && value >= 0x20 && value != 0x7F, "{out:?} keeps %{value:02X} encoded");
            assert!(options.keep_encoded_slash || (value != b'/' && value != b'\\'), "{out:?} holds an encoded slash");
            assert!(options.keep_semicolon || value != b';', "{out:?} holds `%3B`");
            i += 3;
        } else {
            i += 1;
        }
    }
}

/// Without `encoded_slash = "keep"`, a backend that percent-decodes the path once more
/// sees the same segments, none of them a dot-segment (`%252e` decodes to `%2e`, which
/// is not a dot).
fn once_decoded(out: &str, options: PathOptions) {
    if options.keep_encoded_slash {
        return;
    }
    for segment in out.split('/') {
        let mut decoded = Vec::new();
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                decoded.push(hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap());
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        assert!(!decoded.contains(&b'/') && !decoded.contains(&b'\\'), "{out:?}: a decoded segment splits");
        assert!(decoded != b"." && decoded != b"..", "{out:?} decodes to a dot-segment");
    }
}
