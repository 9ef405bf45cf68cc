//! `Authorization: Bearer <token>` (RFC 6750 2.1; the scheme is case-insensitive,
//! RFC 9110 11.1): the one parser, for API keys on the proxy and the admin API's token.

use http::header::AUTHORIZATION;
use http::HeaderMap;

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
}
