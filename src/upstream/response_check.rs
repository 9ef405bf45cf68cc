//! What keygate refuses in an upstream's response head beyond what hyper's parser
//! refuses, and which responses cost their connection its place in the pool
//! (docs/reference.md §4.2, §4.3).
//!
//! hyper's HTTP/1.1 client already fails (and so keygate answers 502) on a status line
//! that is not `HTTP/1.x NNN`, a status under 100, a header line that is not a token, a
//! colon and a value of visible characters (NUL, a bare CR, a space in or after the name,
//! obs-fold), more than 100 header lines or a head over about 400 KiB, differing or
//! unparseable `Content-Length`s (`5, 6`, `-5`, `+5`, past `u64`), `Transfer-Encoding`
//! in an HTTP/1.0 response, and a connection closed before the head is complete. It
//! accepts, and so does keygate, bare LF line ends and interim (1xx) responses before the
//! final one.
//!
//! On top of that, [`judge`] refuses (502):
//! - a status of 600 or more, which RFC 9110 15 calls invalid (a client treats it as a
//!   server error; relayed, a browser or SDK would guess what it means);
//! - a `Transfer-Encoding` other than exactly `chunked`: hyper reads such a body to the
//!   connection's end still coded (`gzip`, or `gzip, chunked` with only the chunking
//!   undone), and since `Transfer-Encoding` is hop-by-hop and removed, the client would get
//!   coded bytes labelled as plain ones;
//! - more than [`MAX_INTERIM`] interim responses before the final one (hyper skips them
//!   without limit; an upstream that sends them forever is refused as soon as it passes
//!   the limit, not at its `timeout`).
//!
//! And it marks as doubtful — relayed, but its connection never used again — a response
//! that hyper framed but that a well-behaved server never sends: `Content-Length`
//! repeated (`5` twice, or `5, 5`; the client gets one), or beside a `Transfer-Encoding`
//! (framed by the latter; the stale length is removed with the hop-by-hop headers). A
//! server that frames one response oddly may frame the next one differently from hyper,
//! and then the next response read on that connection would be the wrong one.

use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};

/// The most interim (1xx) responses keygate skips before one final response.
pub const MAX_INTERIM: usize = 100;

/// What to do with an upstream's response head.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it; its connection may serve another request.
    Sound,
    /// Relay it, but discard its connection once it is done.
    Doubtful,
    /// Answer 502 instead (and discard the connection), for this reason.
    Refused(&'static str),
}

/// Judges a response head that hyper accepted, after `interim` interim responses, and
/// leaves one `Content-Length` where it repeated the same one.
pub fn judge(status: StatusCode, headers: &mut HeaderMap, interim: usize) -> Verdict {
    if status.as_u16() >= 600 {
        return Verdict::Refused("the upstream answered a status of 600 or more");
    }
    if interim > MAX_INTERIM {
        return Verdict::Refused("the upstream sent more than 100 interim (1xx) responses");
    }
    let mut verdict = Verdict::Sound;
    if headers.contains_key(TRANSFER_ENCODING) {
        if !only_chunked(headers) {
            return Verdict::Refused("the upstream used a transfer coding other than chunked");
        }
        if headers.contains_key(CONTENT_LENGTH) {
            verdict = Verdict::Doubtful;
        }
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let first = lengths.next();
    let repeated = lengths.next().is_some();
    if let Some(first) = first {
        if repeated || first.as_bytes().contains(&b',') {
            // hyper framed the body only because every value was the same number.
            let one = first.as_bytes().split(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            if let Ok(one) = HeaderValue::from_bytes(one) {
                headers.insert(CONTENT_LENGTH, one);
            }
            verdict = Verdict::Doubtful;
        }
    }
    verdict
}

/// Whether the `Transfer-Encoding` lines name exactly one coding, `chunked`.
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    codings.next().is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")) && codings.next().is_none()
}
