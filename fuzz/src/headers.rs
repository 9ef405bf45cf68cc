//! `Authorization: Bearer <token>` (docs/reference.md §4.1, RFC 6750 2.1) and
//! `x-request-id` against models of their grammar.
//!
//! - `bearer::token` answers what the model answers for one to three header values: a
//!   token only from exactly one value that is visible ASCII, whose first word is
//!   `Bearer` in any case, and the token is the rest without surrounding blanks; a key
//!   in such a header, in any spelling of the scheme and any padding, comes back whole.
//! - `request_id::valid` is exactly "1–128 of `A-Z a-z 0-9 . _ : -`", a fresh id is 32
//!   lower-case hex digits, and the id the proxy keeps for a request is the client's only
//!   when valid, and never one that carries a well-formed key (request ids are logged;
//!   keys never are, docs/reference.md §3).

use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use keygate::bearer::{token, BearerError};
use keygate::{pipeline, request_id};

use super::input::Input;
use super::key::{build_key, contains_key};

/// The first byte picks how many `Authorization` values the rest holds (split at `\n`,
/// which no header value can hold); the same bytes are also read as an `x-request-id`,
/// and build a key that is sent in a Bearer header.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(first % 4);
    let values: Vec<&[u8]> = rest.split(|&b| b == b'\n').take(count).collect();
    check_bearer(&values);
    check_request_id(rest);
    let mut input = Input::new(rest);
    let key = build_key(&mut input);
    check_key_in_header(&key, &mut input);
}

/// What `bearer::token` must answer for these `Authorization` values.
pub fn model_bearer(values: &[&[u8]]) -> Result<String, BearerError> {
    let value = match values {
        [] => return Err(BearerError::Missing),
        [one] => *one,
        _ => return Err(BearerError::Duplicated),
    };
    if !value.iter().all(|&b| b == b'\t' || (0x20..0x7F).contains(&b)) {
        return Err(BearerError::NotText);
    }
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
    let value = &value[start..end];
    let space = value.iter().position(|&b| b == b' ').ok_or(BearerError::NoScheme)?;
    if !value[..space].eq_ignore_ascii_case(b"bearer") {
        return Err(BearerError::OtherScheme);
    }
    let rest = &value[space + 1..];
    let start = rest.iter().position(|b| !blank(b)).ok_or(BearerError::EmptyToken)?;
    Ok(String::from_utf8(rest[start..].to_vec()).expect("checked ASCII"))
}

/// The values that are header values on the wire go in; then the answer must be the
/// model's, and an accepted token is visible ASCII (blanks only inside), never empty.
pub fn check_bearer(values: &[&[u8]]) {
    let values: Vec<&[u8]> = values.iter().copied().filter(|v| HeaderValue::from_bytes(v).is_ok()).collect();
    let mut headers = HeaderMap::new();
    headers.append("x-other", HeaderValue::from_static("Bearer not-this-one"));
    for v in &values {
        headers.append(AUTHORIZATION, HeaderValue::from_bytes(v).expect("filtered"));
    }
    let got = token(&headers);
    assert_eq!(got.map(str::to_string), model_bearer(&values), "Authorization values {values:?}");
    if let Ok(t) = got {
        let bytes = t.as_bytes();
        let visible = |b: &u8| (0x21..0x7F).contains(b);
        assert!(bytes.first().is_some_and(visible) && bytes.last().is_some_and(visible), "token {t:?}");
        assert!(bytes.iter().all(|b| visible(b) || *b == b' ' || *b == b'\t'), "token {t:?}");
    }
}

/// A key after `Bearer` in any letter case and with any blank padding comes back whole.
pub fn check_key_in_header(key: &str, input: &mut Input<'_>) {
    let scheme: String = "bearer".chars().map(|c| if input.bool() { c.to_ascii_uppercase() } else { c }).collect();
    let mut blanks =
        |n: u8| -> String { (0..input.byte() % n).map(|_| if input.bool() { ' ' } else { '\t' }).collect() };
    let value = format!("{}{scheme} {}{key}{}", blanks(3), blanks(3), blanks(3));
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&value).expect("a valid header value"));
    assert_eq!(token(&headers), Ok(key), "Authorization {value:?}");
}

/// The grammar of a kept request id.
pub fn model_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|&b| matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-'))
}

fn fresh(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub fn check_request_id(value: &[u8]) {
    assert_eq!(request_id::valid(value), model_request_id(value), "x-request-id {value:?}");
    let new = request_id::new();
    assert!(fresh(&new) && request_id::valid(new.as_bytes()), "a fresh request id {new:?}");
    let mut headers = HeaderMap::new();
    let sent = HeaderValue::from_bytes(value).ok();
    if let Some(v) = &sent {
        headers.insert("x-request-id", v.clone());
    }
    let chosen = pipeline::request_id(&headers);
    assert!(!contains_key(&chosen), "the request id {chosen:?} carries a key into the logs");
    if chosen.as_bytes() == value {
        assert!(model_request_id(value), "the invalid request id {value:?} was kept");
    } else {
        assert!(fresh(&chosen), "{chosen:?} is neither the client's id nor a fresh one");
        let keyless = sent.is_some() && !contains_key(&String::from_utf8_lossy(value));
        assert!(!(model_request_id(value) && keyless), "the valid request id {value:?} was replaced");
    }
}
