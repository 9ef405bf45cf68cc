//! `Authorization: Bearer <token>` (RFC 6750 2.1; the scheme is case-insensitive,
//! RFC 9110 11.1): the one parser, for API keys on the proxy and the admin API's token;
//! and, when it yields no API key, what was wrong with what was sent (for the 401).

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::{AuthFailure, BadKey, NoKey};

/// Why no bearer token could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization` header.
    Missing,
    /// More than one `Authorization` header.
    Duplicated,
    /// A value that is not visible ASCII.
    NotText,
    /// A value without a space: no scheme, or no credentials after it.
    NoScheme,
    /// Credentials of another scheme (`Basic …`).
    OtherScheme,
    /// `Bearer` followed by nothing usable.
    EmptyToken,
}

/// The token of the one `Authorization: Bearer <token>` header, without surrounding
/// whitespace.
pub fn token(headers: &HeaderMap) -> Result<&str, BearerError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(BearerError::Missing)?;
    if values.next().is_some() {
        return Err(BearerError::Duplicated);
    }
    let text = value.to_str().map_err(|_| BearerError::NotText)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(BearerError::NoScheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::OtherScheme);
    }
    match token.trim() {
        "" => Err(BearerError::EmptyToken),
        token => Ok(token),
    }
}

/// Why `headers` carry no usable API key, `error` being what [`token`] said: told as
/// precisely as the header allows, for the 401 message. A missing header or another
/// scheme is a missing key; anything else sent is a malformed one, with what is wrong
/// with it (a key without `Bearer `, another product's credential, …).
pub fn why_no_key(headers: &HeaderMap, error: BearerError) -> AuthFailure {
    let text = || headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    match error {
        BearerError::Missing => AuthFailure::Missing(NoKey::NoHeader),
        BearerError::Duplicated => AuthFailure::Malformed(BadKey::Duplicated),
        BearerError::NotText => AuthFailure::Malformed(BadKey::NotText),
        BearerError::EmptyToken => AuthFailure::Malformed(BadKey::EmptyBearer),
        BearerError::NoScheme => {
            let text = text();
            if text.eq_ignore_ascii_case("bearer") {
                AuthFailure::Malformed(BadKey::EmptyBearer)
            } else if let Some(scheme) = known_scheme(text) {
                AuthFailure::Missing(NoKey::OtherScheme(Some(scheme)))
            } else {
                AuthFailure::Malformed(foreign(text).map_or(BadKey::NoScheme, BadKey::Foreign))
            }
        }
        BearerError::OtherScheme => {
            let text = text();
            let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
            if let Some(name) = known_scheme(scheme) {
                return AuthFailure::Missing(NoKey::OtherScheme(Some(name)));
            }
            let letters: String = scheme.chars().filter(char::is_ascii_alphabetic).collect();
            if letters.eq_ignore_ascii_case("bearer") || is_near_bearer(&letters) {
                // `Bearer:`, `Baerer`: a misspelt scheme, then (probably) a key.
                return AuthFailure::Malformed(match rest.trim() {
                    "" => BadKey::EmptyBearer,
                    _ => BadKey::SchemeMisspelt,
                });
            }
            if let Some(what) = foreign(scheme) {
                return AuthFailure::Malformed(BadKey::Foreign(what));
            }
            if scheme.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("kg_")) {
                // A keygate key without a scheme, and something after it.
                return AuthFailure::Malformed(BadKey::NoScheme);
            }
            AuthFailure::Missing(NoKey::OtherScheme(None))
        }
    }
}

/// The mistakes people make first with the token after `Bearer `, whatever the key
/// format: `Bearer` twice, quotes, angle brackets, whitespace inside, another product's
/// credential. `None`: nothing of the kind (the key parser says what else is wrong).
pub fn token_mistake(token: &str) -> Option<BadKey> {
    let first = token.chars().next().unwrap_or(' ');
    let last = token.chars().last().unwrap_or(' ');
    let quotes = ['"', '\'', '`', '\u{201c}', '\u{201d}', '\u{2018}', '\u{2019}'];
    if token.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer ")) {
        Some(BadKey::SchemeTwice)
    } else if quotes.contains(&first) || quotes.contains(&last) {
        Some(BadKey::Quoted)
    } else if first == '<' && last == '>' {
        Some(BadKey::Bracketed)
    } else if token.chars().any(char::is_whitespace) {
        Some(BadKey::Whitespace)
    } else {
        foreign(token).map(BadKey::Foreign)
    }
}

/// Well-known HTTP authentication schemes other than Bearer (IANA's registry, and the
/// `Token`/`ApiKey` some APIs use), by their usual spelling.
fn known_scheme(word: &str) -> Option<&'static str> {
    const SCHEMES: &[&str] = &[
        "Basic",
        "Digest",
        "Token",
        "ApiKey",
        "Api-Key",
        "Key",
        "Negotiate",
        "NTLM",
        "HOBA",
        "Mutual",
        "OAuth",
        "DPoP",
    ];
    SCHEMES.iter().find(|s| s.eq_ignore_ascii_case(word)).copied()
}

/// A one-letter slip of `bearer` (a letter dropped, added, changed, or two swapped).
fn is_near_bearer(word: &str) -> bool {
    let (a, b) = (word.to_ascii_lowercase().into_bytes(), b"bearer".as_slice());
    if a.len().abs_diff(b.len()) > 1 || a.len() < 5 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    let swapped = a.len() == b.len()
        && prefix + 2 <= a.len()
        && a[prefix] == b[prefix + 1]
        && a[prefix + 1] == b[prefix]
        && a[prefix + 2..] == b[prefix + 2..];
    swapped || prefix + suffix + 1 >= a.len().max(b.len())
}

/// Another product's credential, by its documented prefix: what it looks like.
fn foreign(token: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, &str)] = &[
        ("sk_live_", "a Stripe secret key"),
        ("sk_test_", "a Stripe secret key"),
        ("rk_live_", "a Stripe restricted key"),
        ("rk_test_", "a Stripe restricted key"),
        ("pk_live_", "a Stripe publishable key"),
        ("pk_test_", "a Stripe publishable key"),
        ("whsec_", "a Stripe webhook secret"),
        ("github_pat_", "a GitHub token"),
        ("ghp_", "a GitHub token"),
        ("gho_", "a GitHub token"),
        ("ghu_", "a GitHub token"),
        ("ghs_", "a GitHub token"),
        ("ghr_", "a GitHub token"),
        ("glpat-", "a GitLab token"),
        ("xoxb-", "a Slack token"),
        ("xoxp-", "a Slack token"),
        ("xoxa-", "a Slack token"),
        ("xapp-", "a Slack token"),
        ("sk-ant-", "an Anthropic API key"),
        ("sk-", "an OpenAI-style API key"),
        ("AIza", "a Google API key"),
        ("AKIA", "an AWS access key id"),
        ("ASIA", "an AWS access key id"),
        ("SG.", "a SendGrid API key"),
        ("npm_", "an npm token"),
        ("pypi-", "a PyPI token"),
    ];
    if token.starts_with("eyJ") && token.matches('.').count() == 2 {
        return Some("a JWT (a signed token)");
    }
    PREFIXES.iter().find(|(prefix, _)| token.starts_with(prefix)).map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_and_why_there_is_none() {
        assert_eq!(token(&headers(&[b"Bearer abc"])), Ok("abc"));
        assert_eq!(token(&headers(&[b"bearer  abc"])), Ok("abc"));
        assert_eq!(token(&headers(&[b"BEARER abc "])), Ok("abc"));
        assert_eq!(token(&headers(&[b" Bearer \tabc"])), Ok("abc"));
        assert_eq!(token(&headers(&[])), Err(BearerError::Missing));
        assert_eq!(token(&headers(&[b"Basic abc"])), Err(BearerError::OtherScheme));
        assert_eq!(token(&headers(&[b"Bearer"])), Err(BearerError::NoScheme));
        assert_eq!(token(&headers(&[b"Bearer "])), Err(BearerError::NoScheme));
        assert_eq!(token(&headers(&[b"kg_abc"])), Err(BearerError::NoScheme));
        assert_eq!(token(&headers(&[b"Bearer a", b"Bearer a"])), Err(BearerError::Duplicated));
        assert_eq!(token(&headers(&[b"Bearer \xff"])), Err(BearerError::NotText));
    }

    /// What a 401 says about each mistake: the detail the classifier gives.
    fn why(value: &str) -> AuthFailure {
        let headers = headers(&[value.as_bytes()]);
        match token(&headers) {
            Err(e) => why_no_key(&headers, e),
            Ok(t) => match crate::keys::parse_secret(t) {
                Err(e) => AuthFailure::Malformed(crate::auth::why_not_a_key(t, e)),
                Ok(_) => panic!("{value} is a key"),
            },
        }
    }

    #[test]
    fn what_is_wrong_with_what_was_sent() {
        let key = crate::keys::generate_secret();
        let key = key.expose();
        let cases: Vec<(String, AuthFailure)> = vec![
            (key.to_string(), AuthFailure::Malformed(BadKey::NoScheme)),
            (format!("{key} trailing"), AuthFailure::Malformed(BadKey::NoScheme)),
            (format!("Bearer \"{key}\""), AuthFailure::Malformed(BadKey::Quoted)),
            (format!("Bearer '{key}'"), AuthFailure::Malformed(BadKey::Quoted)),
            (format!("Bearer <{key}>"), AuthFailure::Malformed(BadKey::Bracketed)),
            (format!("Bearer {} {}", &key[..10], &key[10..]), AuthFailure::Malformed(BadKey::Whitespace)),
            (format!("Bearer Bearer {key}"), AuthFailure::Malformed(BadKey::SchemeTwice)),
            (format!("Bearer: {key}"), AuthFailure::Malformed(BadKey::SchemeMisspelt)),
            (format!("Baerer {key}"), AuthFailure::Malformed(BadKey::SchemeMisspelt)),
            (format!("Bearer {}", key.to_uppercase()), AuthFailure::Malformed(BadKey::PrefixCase)),
            (format!("Bearer {}", &key[..20]), AuthFailure::Malformed(BadKey::Length { sent: 20, expected: 31 })),
            ("Bearer".to_string(), AuthFailure::Malformed(BadKey::EmptyBearer)),
            ("Bearer not-a-key".to_string(), AuthFailure::Malformed(BadKey::Prefix)),
            (
                "Bearer sk_live_51H8abcdefghijklmnop".to_string(),
                AuthFailure::Malformed(BadKey::Foreign("a Stripe secret key")),
            ),
            (
                "sk_live_51H8abcdefghijklmnop".to_string(),
                AuthFailure::Malformed(BadKey::Foreign("a Stripe secret key")),
            ),
            (
                "Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_string(),
                AuthFailure::Malformed(BadKey::Foreign("a GitHub token")),
            ),
            (
                "token ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_string(),
                AuthFailure::Missing(NoKey::OtherScheme(Some("Token"))),
            ),
            (
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".to_string(),
                AuthFailure::Malformed(BadKey::Foreign("a JWT (a signed token)")),
            ),
            ("Basic dXNlcjpwYXNz".to_string(), AuthFailure::Missing(NoKey::OtherScheme(Some("Basic")))),
            ("Frobnicate abc".to_string(), AuthFailure::Missing(NoKey::OtherScheme(None))),
        ];
        for (value, expected) in cases {
            assert_eq!(why(&value), expected, "{value}");
        }
        let mut typo = key.to_string();
        let last = typo.pop().unwrap();
        typo.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(why(&format!("Bearer {typo}")), AuthFailure::Malformed(BadKey::Checksum));
        assert_eq!(why(&format!("Bearer kg_{}", "-".repeat(28))), AuthFailure::Malformed(BadKey::Charset));
        let two = headers(&[b"Bearer a", b"Bearer b"]);
        assert_eq!(why_no_key(&two, BearerError::Duplicated), AuthFailure::Malformed(BadKey::Duplicated));
        assert_eq!(why_no_key(&headers(&[]), BearerError::Missing), AuthFailure::Missing(NoKey::NoHeader));
    }

    #[test]
    fn near_bearer_is_one_slip_away() {
        for near in ["bearer", "Beare", "Bearrer", "Baerer", "Bearor", "bearre"] {
            assert!(is_near_bearer(near), "{near}");
        }
        for far in ["Basic", "Token", "Bear", "Brr", "Digest", "bearerbearer"] {
            assert!(!is_near_bearer(far), "{far}");
        }
    }
}
