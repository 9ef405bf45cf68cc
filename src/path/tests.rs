//! The path normaliser's unit tests: a table of inputs under each option set with the
//! expected path or refusal, long paths, client-safe error messages, and property tests
//! (no panic, fast path agrees with the rewrite, agrees with a slow reference,
//! idempotent, canonical output).

use super::*;
use proptest::prelude::*;
use PathError::*;

/// Defaults: encoded slashes and semicolons refused.
const D: PathOptions = PathOptions { keep_encoded_slash: false, keep_semicolon: false };
/// `encoded_slash = "keep"` only.
const KS: PathOptions = PathOptions { keep_encoded_slash: true, keep_semicolon: false };
/// `semicolon = "keep"` only.
const KC: PathOptions = PathOptions { keep_encoded_slash: false, keep_semicolon: true };
/// Both kept.
const K: PathOptions = PathOptions { keep_encoded_slash: true, keep_semicolon: true };

type Row = (&'static str, PathOptions, Result<&'static str, PathError>);

#[rustfmt::skip]
const CASES: &[Row] = &[
    // --- clean paths: the fast path, unchanged
    ("/", D, Ok("/")),
    ("/v1/calls", D, Ok("/v1/calls")),
    ("/v1/calls/7", D, Ok("/v1/calls/7")),
    // Trailing slash kept (Spring's `/admin/` vs `/admin` trailing-slash match confusion).
    ("/v1/calls/", D, Ok("/v1/calls/")),
    // Segment boundary: left for the matcher, never "fixed" here (prefix `/v1/calls`).
    ("/v1/callsign", D, Ok("/v1/callsign")),
    ("/v1/calls-sign/x.json", D, Ok("/v1/calls-sign/x.json")),
    // Sub-delims and other printable ASCII are kept as they are.
    ("/a:b@c!$&'()*+,=~_-", D, Ok("/a:b@c!$&'()*+,=~_-")),
    ("/x{y}|^`[z]", D, Ok("/x{y}|^`[z]")),

    // --- plain dot-segments (RFC 3986 5.2.4; the classic `../` traversal)
    ("/public/../admin", D, Ok("/admin")),
    ("/./admin", D, Ok("/admin")),
    ("/a/./b/../c", D, Ok("/a/c")),
    ("/v1/calls/.", D, Ok("/v1/calls/")),
    ("/a/b/..", D, Ok("/a/")),
    ("/a/b/../..", D, Ok("/")),
    ("/a/.", D, Ok("/a/")),
    ("/.", D, Ok("/")),
    // Above the root is refused, not clamped (nginx/Traefik clamp silently).
    ("/..", D, Err(AboveRoot)),
    ("/../admin", D, Err(AboveRoot)),
    ("/a/b/../../..", D, Err(AboveRoot)),
    ("/./..", D, Err(AboveRoot)),

    // --- encoded dots, decoded before dot removal (Envoy CVE-2019-9901 class,
    //     nginx/Spring `%2e%2e` traversal)
    ("/public/%2e%2e/admin", D, Ok("/admin")),
    ("/public/%2E%2E/admin", D, Ok("/admin")),
    ("/public/.%2E/admin", D, Ok("/admin")),
    ("/public/%2e./admin", D, Ok("/admin")),
    ("/public/%2e/admin", D, Ok("/public/admin")),
    ("/%2e/admin", D, Ok("/admin")),
    ("/%2e%2e", D, Err(AboveRoot)),
    ("/public/%2e%2e/%2E%2e/%2e%2E", D, Err(AboveRoot)),
    ("/a/b/%2e%2e/%2e%2e/", D, Ok("/")),
    // `...` and `.%2e.` are three dots: literal.
    ("/.../admin", D, Ok("/.../admin")),
    ("/.%2e./admin", D, Ok("/.../admin")),

    // --- encoded unreserved letters (rule on `/admin` bypassed by `/%61dmin`;
    //     Envoy/Istio and Spring `%`-letter prefix-match bypasses)
    ("/%61dmin", D, Ok("/admin")),
    ("/ad%6Din", D, Ok("/admin")),
    ("/%76%31/%63%61%6C%6c%73", D, Ok("/v1/calls")),
    ("/v1/calls/%7e%5F%2D", D, Ok("/v1/calls/~_-")),
    ("/v1/call%73ign", D, Ok("/v1/callsign")),

    // --- double encoding: decoded once at most (Spring/Tomcat double decode,
    //     IIS CVE-2001-0333)
    ("/public/%252e%252e/admin", D, Ok("/public/%252e%252e/admin")),
    ("/public/%252E", D, Ok("/public/%252E")),
    ("/public/%25%32%65", D, Ok("/public/%252e")),
    ("/public/%252f", D, Ok("/public/%252f")),
    // Other encodings kept, hex upper-cased (RFC 3986 6.2.2.1).
    ("/q/%20x%7cy%22", D, Ok("/q/%20x%7Cy%22")),
    ("/v1/admin%23x", D, Ok("/v1/admin%23x")),
    ("/public%23/../admin", D, Ok("/admin")),
    ("/%3f/x", D, Ok("/%3F/x")),

    // --- encoded slash / backslash (Envoy CVE-2019-9901, Istio CVE-2021-31920,
    //     Traefik and Spring `%2F` handling)
    ("/public%2F..%2Fadmin", D, Err(EncodedSlash)),
    ("/v1/calls%2f7", D, Err(EncodedSlash)),
    ("/public%5C..%5Cadmin", D, Err(EncodedSlash)),
    ("/public/%5c", D, Err(EncodedSlash)),
    ("/..%2f", D, Err(EncodedSlash)),
    ("/v1/calls/..%2f..%2fadmin", D, Err(EncodedSlash)),
    // Kept: upper-cased, inside its segment, never a separator, `..%2F` is literal.
    ("/public%2F..%2Fadmin", KS, Ok("/public%2F..%2Fadmin")),
    ("/v1/calls%2f7", KS, Ok("/v1/calls%2F7")),
    ("/public%5c..%5cadmin", KS, Ok("/public%5C..%5Cadmin")),
    ("/v1/calls/..%2f..%2fadmin", K, Ok("/v1/calls/..%2F..%2Fadmin")),
    ("/..%2F", KS, Ok("/..%2F")),
    ("/a/%2F/..", KS, Ok("/a/")),
    ("/a/%2e%2e%2F", KS, Ok("/a/..%2F")),

    // --- raw backslash (Istio/Envoy on Windows backends, Tomcat/Spring `\` as `/`)
    ("/public/..\\admin", D, Err(Backslash)),
    ("/public\\..\\admin", K, Err(Backslash)),
    ("\\admin", D, Err(NotAbsolute)),

    // --- repeated slashes merged before dot removal (Envoy `merge_slashes`,
    //     Istio/Traefik `//` ACL bypasses)
    ("//admin", D, Ok("/admin")),
    ("/v1///calls", D, Ok("/v1/calls")),
    ("/v1/calls//", D, Ok("/v1/calls/")),
    ("//", D, Ok("/")),
    ("//..", D, Err(AboveRoot)),
    ("/a//../b", D, Ok("/b")),
    ("/a/.//b", D, Ok("/a/b")),

    // --- semicolon (Tomcat/Spring `..;/` and `;jsessionid=` path parameters)
    ("/public/..;/admin", D, Err(Semicolon)),
    ("/admin;jsessionid=x", D, Err(Semicolon)),
    ("/admin%3bx", D, Err(Semicolon)),
    ("/admin%3B", KS, Err(Semicolon)),
    // Kept: `..;` is a literal segment, `%3B` stays encoded.
    ("/public/..;/admin", KC, Ok("/public/..;/admin")),
    ("/admin;jsessionid=x", K, Ok("/admin;jsessionid=x")),
    ("/admin%3bx", KC, Ok("/admin%3Bx")),
    ("/;/..", KC, Ok("/")),

    // --- control characters, raw or encoded (NUL truncation, CRLF injection)
    ("/admin%00.json", D, Err(ControlCharacter)),
    ("/admin\0", K, Err(ControlCharacter)),
    ("/admin%0d%0aX-Injected:%201", D, Err(ControlCharacter)),
    ("/admin%0A", D, Err(ControlCharacter)),
    ("/admin%7f", D, Err(ControlCharacter)),
    ("/admin\t", D, Err(ControlCharacter)),
    ("/admin\x7f", D, Err(ControlCharacter)),
    ("/.%00./", D, Err(ControlCharacter)),
    ("/%1F", K, Err(ControlCharacter)),

    // --- fragment (`#` confusion between proxies and backends)
    ("/public#/../admin", D, Err(Fragment)),
    ("/#", K, Err(Fragment)),

    // --- invalid percent-encoding (nested `%%32%65`, IIS `%u002e`)
    ("/%", D, Err(InvalidPercentEncoding)),
    ("/a%2", D, Err(InvalidPercentEncoding)),
    ("/%zz", D, Err(InvalidPercentEncoding)),
    ("/%2g", D, Err(InvalidPercentEncoding)),
    ("/%%32%65", D, Err(InvalidPercentEncoding)),
    ("/%u002e%u002e/admin", D, Err(InvalidPercentEncoding)),
    ("/%\u{e9}", D, Err(InvalidPercentEncoding)),

    // --- not absolute (asterisk-form, empty, relative, absolute-URI leftovers)
    ("*", D, Err(NotAbsolute)),
    ("", D, Err(NotAbsolute)),
    ("v1/calls", D, Err(NotAbsolute)),
    ("http://example.com/", D, Err(NotAbsolute)),
    ("%2Fadmin", K, Err(NotAbsolute)),

    // --- nginx alias off-by-slash `/api..`: a literal segment
    ("/api..", D, Ok("/api..")),
    ("/api../admin", D, Ok("/api../admin")),
    ("/api/..api", D, Ok("/api/..api")),

    // --- unicode and characters not allowed in a path (fullwidth-dot and
    //     overlong-UTF-8 traversal, Tomcat/IIS `%c0%ae`)
    ("/caf\u{e9}", D, Err(InvalidCharacter)),
    ("/\u{ff0e}\u{ff0e}/admin", D, Err(InvalidCharacter)),
    ("/%C3%A9", D, Ok("/%C3%A9")),
    ("/caf%c3%a9", D, Ok("/caf%C3%A9")),
    ("/public/%c0%ae%c0%ae/admin", D, Ok("/public/%C0%AE%C0%AE/admin")),
    ("/public/%EF%BC%8E%EF%BC%8E/admin", D, Ok("/public/%EF%BC%8E%EF%BC%8E/admin")),
    ("/a b", D, Err(InvalidCharacter)),
    ("/a\"b", D, Err(InvalidCharacter)),
    ("/<script>", D, Err(InvalidCharacter)),
    ("/status?/../v1/admin", K, Err(InvalidCharacter)),

    // --- the first refusal from the left is the one reported
    ("/../;", D, Err(AboveRoot)),
    ("/;/..", D, Err(Semicolon)),
    ("/%2f\\", D, Err(EncodedSlash)),
    ("/\\%2f", D, Err(Backslash)),
];

#[test]
fn table() {
    assert!(CASES.len() >= 40);
    for &(input, options, ref want) in CASES {
        let got = normalize(input, options);
        assert_eq!(got, want.clone().map(str::to_owned), "normalize({input:?}, {options:?})");
        // The general path agrees with the fast path on every row.
        assert_eq!(rewrite(input.as_bytes(), options), got, "rewrite({input:?}, {options:?})");
        if let Ok(out) = got {
            assert_eq!(normalize(&out, options), Ok(out.clone()), "not idempotent");
        }
    }
}

#[test]
fn long_paths() {
    let deep = "/a".repeat(10_000);
    assert_eq!(normalize(&deep, D), Ok(deep.clone()));

    let slashes = format!("{}x", "/".repeat(50_000));
    assert_eq!(normalize(&slashes, D), Ok("/x".to_owned()));

    let climb = format!("{}{}", "/a".repeat(5_000), "/..".repeat(5_000));
    assert_eq!(normalize(&climb, D), Ok("/".to_owned()));
    let too_far = format!("{climb}/..");
    assert_eq!(normalize(&too_far, D), Err(AboveRoot));

    let encoded_climb = format!("{}{}", "/%61".repeat(5_000), "/%2e%2E".repeat(5_000));
    assert_eq!(normalize(&encoded_climb, D), Ok("/".to_owned()));

    let big_segment = format!("/{}", "%41".repeat(30_000));
    assert_eq!(normalize(&big_segment, D), Ok(format!("/{}", "A".repeat(30_000))));
}

#[test]
fn error_messages_are_client_safe() {
    for e in [
        NotAbsolute,
        EncodedSlash,
        Semicolon,
        Backslash,
        ControlCharacter,
        Fragment,
        InvalidPercentEncoding,
        AboveRoot,
        InvalidCharacter,
    ] {
        assert!(!e.to_string().is_empty());
    }
}

// ---- properties

/// A deliberately naive second implementation: validate and decode into a String,
/// split on `/`, then a stack of segments. Compared with `normalize` on Ok values
/// and on whether the input is refused (not which refusal: the order differs).
fn reference(raw: &str, o: PathOptions) -> Result<String, ()> {
    if !raw.starts_with('/') {
        return Err(());
    }
    let chars: Vec<char> = raw.chars().collect();
    let mut decoded = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '%' {
            let hex: String = chars.iter().skip(i + 1).take(2).collect();
            if hex.len() != 2 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                return Err(());
            }
            let v = u8::from_str_radix(&hex, 16).map_err(|_| ())?;
            let vc = char::from(v);
            if vc.is_ascii_alphanumeric() || "-._~".contains(vc) {
                decoded.push(vc);
            } else if vc == '/' || vc == '\\' {
                if !o.keep_encoded_slash {
                    return Err(());
                }
                decoded.push_str(&format!("%{v:02X}"));
            } else if vc.is_ascii_control() || (vc == ';' && !o.keep_semicolon) {
                return Err(());
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
            continue;
        }
        let ok = c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@{}|^`[]".contains(c) || (c == ';' && o.keep_semicolon);
        if !ok {
            return Err(());
        }
        decoded.push(c);
        i += 1;
    }
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut stack: Vec<&str> = Vec::new();
    for p in &parts {
        match *p {
            "" | "." => {}
            ".." => {
                stack.pop().ok_or(())?;
            }
            s => stack.push(s),
        }
    }
    let mut out = format!("/{}", stack.join("/"));
    let trailing = matches!(parts.last(), Some(&"" | &"." | &".."));
    if !stack.is_empty() && trailing {
        out.push('/');
    }
    Ok(out)
}

const TOKENS: &[&str] = &[
    "/", "/", "/", "/", ".", ".", "..", "a", "b", "v1", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%3b", "%3B", ";",
    "\\", "#", "%00", "%0a", "%7f", "%", "%z", "%4", "%41", "%61", "%7e", "~", "-", "_", "%c3%a9", "\u{e9}", " ", "?",
    "\0", "\t", "%23", "%20", "*", ":", "@",
];
const VALID_TOKENS: &[&str] = &[
    "/", "/", "/", "/", ".", ".", "..", "a", "b", "v1", "%2e", "%2E", "%2f", "%5C", "%25", "%3b", ";", "%41", "%61",
    "%7e", "~", "-", "%c3%a9", "%23", "%20", "*", ":",
];

fn from_tokens(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.95), prop::collection::vec(prop::sample::select(tokens), 0..24)).prop_map(
        |(absolute, parts)| {
            let mut s = String::from(if absolute { "/" } else { "" });
            parts.iter().for_each(|p| s.push_str(p));
            s
        },
    )
}

fn paths() -> impl Strategy<Value = String> {
    prop_oneof![
        from_tokens(TOKENS),
        from_tokens(VALID_TOKENS),
        from_tokens(VALID_TOKENS),
        "/[ -~]{0,40}",
        any::<String>(),
    ]
}

fn options() -> impl Strategy<Value = PathOptions> {
    (any::<bool>(), any::<bool>()).prop_map(|(s, c)| PathOptions { keep_encoded_slash: s, keep_semicolon: c })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn never_panics(raw in any::<String>(), o in options()) {
        let _ = normalize(&raw, o);
        let _ = rewrite(raw.as_bytes(), o);
    }

    #[test]
    fn fast_path_agrees_with_rewrite(raw in paths(), o in options()) {
        let rewritten = rewrite(raw.as_bytes(), o);
        prop_assert_eq!(normalize(&raw, o), rewritten.clone());
        if is_canonical(raw.as_bytes(), o) {
            prop_assert_eq!(rewritten, Ok(raw.clone()));
        }
    }

    #[test]
    fn agrees_with_reference(raw in paths(), o in options()) {
        prop_assert_eq!(normalize(&raw, o).map_err(|_| ()), reference(&raw, o));
    }

    #[test]
    fn idempotent(raw in paths(), o in options()) {
        if let Ok(out) = normalize(&raw, o) {
            prop_assert_eq!(normalize(&out, o), Ok(out.clone()));
            prop_assert!(is_canonical(out.as_bytes(), o) || out.contains('%'));
        }
    }

    #[test]
    fn output_is_canonical(raw in paths(), o in options()) {
        if let Ok(out) = normalize(&raw, o) {
            prop_assert!(out.starts_with('/'));
            prop_assert!(!out.contains("//"));
            prop_assert!(out.len() <= raw.len());
            for seg in out.split('/') {
                prop_assert!(seg != "." && seg != "..", "dot segment in {:?}", out);
            }
            let b = out.as_bytes();
            for (i, &c) in b.iter().enumerate() {
                prop_assert!(c.is_ascii_graphic(), "byte {:#x} in {:?}", c, out);
                prop_assert!(!matches!(c, b'\\' | b'#' | b'?' | b'"' | b'<' | b'>'));
                prop_assert!(c != b';' || o.keep_semicolon);
                if c == b'%' {
                    let hi = b.get(i + 1).copied().unwrap_or(b'x');
                    let lo = b.get(i + 2).copied().unwrap_or(b'x');
                    let upper = |h: u8| h.is_ascii_digit() || (b'A'..=b'F').contains(&h);
                    prop_assert!(upper(hi) && upper(lo), "bad escape in {:?}", out);
                    let v = (hex_value(hi).unwrap_or(0) << 4) | hex_value(lo).unwrap_or(0);
                    prop_assert!(!is_unreserved(v), "encoded unreserved in {:?}", out);
                    prop_assert!(!(v as char).is_ascii_control());
                    prop_assert!(v != b';' || o.keep_semicolon);
                    prop_assert!(!matches!(v, b'/' | b'\\') || o.keep_encoded_slash);
                }
            }
        }
    }
}
