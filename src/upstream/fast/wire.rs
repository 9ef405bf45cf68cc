//! The fast path's HTTP/1.1 wire format: an upstream connection ([`Conn`]) with its read
//! buffer, the request head as hyper writes it, the response head parsed as strictly as
//! hyper parses it (interim responses skipped, the limits of the module doc of
//! [`crate::upstream::fast`]), the body's framing, and the chunked decoding. It knows no
//! pool: the parent module decides where a connection goes.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use tokio::io::{AsyncRead, ReadBuf};

use crate::upstream::connector::FreshReads;
use crate::upstream::outbound::Written;
use crate::upstream::response_check::MAX_INTERIM;

/// A connection's read buffer, and the most a response head may take.
pub(super) const BUF_SIZE: usize = 16 * 1024;
/// The most header lines in a response head (hyper's limit on the other path).
pub(super) const MAX_HEADERS: usize = 100;
/// The most bytes of chunked trailers, and of chunk extensions in one body (hyper's).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
/// Headers keygate may add to a response after it left the upstream: the six rate-limit
/// headers and `x-request-id`.
const RESPONSE_HEADERS_ADDED: usize = 7;
/// One upstream connection.
pub(super) struct Conn {
    pub(super) io: FreshReads,
    /// Set, the connection's reads ask the kernel (until the next write).
    pub(super) check_reads: Arc<AtomicBool>,
    /// What was read and not yet consumed.
    pub(super) buf: BytesMut,
    /// The request head being written (kept for the next request's).
    pub(super) head: Vec<u8>,
}
/// A final response head, parsed.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
    pub(super) framing: Framing,
    /// Whether the connection may serve another request once the body ended.
    pub(super) keep_alive: bool,
}

/// What one parse of the buffer found.
enum Parsed {
    /// An interim (1xx) response, consumed.
    Interim,
    Final(Head),
}

impl Conn {
    /// Whether bytes, the end of the stream or an error wait on this idle connection: one
    /// read that asks the kernel when the runtime has seen nothing, without waiting.
    pub(super) fn is_stale(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.check_reads.store(true, Ordering::Release);
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_ready()
    }

    /// The request head, as hyper's HTTP/1.1 client writes it.
    pub(super) fn encode_head(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        written: Option<&Written>,
        host: Option<&HeaderValue>,
    ) {
        fn line(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        let dst = &mut self.head;
        dst.clear();
        dst.extend_from_slice(method.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(target.as_bytes());
        dst.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            line(dst, name, value);
        }
        // keygate's own, after the client's, as they would be after inserting them.
        if let Some(written) = written {
            written.for_each(|name, value| line(dst, name, value));
        }
        let host_written = written.is_some_and(Written::writes_host);
        if let (false, false, Some(host)) = (host_written, headers.contains_key(HOST), host) {
            line(dst, &HOST, host);
        }
        dst.extend_from_slice(b"\r\n");
    }

    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = BUF_SIZE.saturating_sub(self.buf.len());
        self.buf.reserve(room);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut (&mut self.buf).limit(room))
    }

    /// Waits until the buffer holds bytes of a body, reading when it is empty:
    /// `Ok(false)` when the stream ended first.
    pub(super) fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.buf.is_empty() {
            return Poll::Ready(Ok(true));
        }
        self.poll_fill(cx).map_ok(|read| read > 0)
    }

    /// [`Conn::poll_bytes`] for a body whose framing says more comes: the stream's end is
    /// an error ([`incomplete`]).
    pub(super) fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_bytes(cx).map(|more| match more {
            Ok(true) => Ok(()),
            Ok(false) => Err(incomplete()),
            Err(e) => Err(e),
        })
    }

    /// Reads the final response head (skipping interim ones), and how many interim
    /// responses came before it.
    pub(super) async fn read_head(&mut self, head_request: bool) -> Result<(Head, usize), String> {
        let mut interim = 0;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_request)? {
                    Some(Parsed::Interim) => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Err(format!("more than {MAX_INTERIM} interim (1xx) responses"));
                        }
                        continue;
                    }
                    Some(Parsed::Final(head)) => return Ok((head, interim)),
                    None if self.buf.len() >= BUF_SIZE => {
                        return Err(format!("upstream response head larger than {BUF_SIZE} bytes"));
                    }
                    None => {}
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if self.buf.is_empty() && interim == 0 => {
                    return Err("upstream connection closed before a response".into());
                }
                Ok(0) => return Err("upstream connection closed before the response head was complete".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("upstream connection: reading the response failed: {e}")),
            }
        }
    }
}

/// Parses one response head at the start of `buf`: `None` if it is not complete yet. An
/// interim one is consumed; a final one's bytes become its header values.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, String> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    // Where each name and value lies in the head (the head is at most BUF_SIZE bytes).
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let (len, code, http11, reason, count) =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                // `buf` holds at most BUF_SIZE bytes, so offsets fit in a u16.
                let at = |s: &[u8]| if s.is_empty() { 0 } else { (s.as_ptr() as usize - base) as u16 };
                for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
                    let (name, value) = (at(header.name.as_bytes()), at(header.value));
                    *span = (name, name + header.name.len() as u16, value, value + header.value.len() as u16);
                }
                let reason = parsed.reason.unwrap_or_default().as_bytes();
                let reason = (at(reason), at(reason) + reason.len() as u16);
                (len, parsed.code.unwrap_or_default(), parsed.version == Some(1), reason, parsed.headers.len())
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("invalid upstream response head: {e}")),
        };
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid upstream response status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the upstream switched protocols unasked".into());
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let bytes = buf.split_to(len).freeze();
    let span = |from: u16, to: u16| from as usize..to as usize;
    // Room for what keygate adds to every response (the rate-limit headers, x-request-id),
    // so that the map is not grown and rehashed on the way to the client.
    let mut headers = HeaderMap::with_capacity(count + RESPONSE_HEADERS_ADDED);
    let mut keep_alive = http11;
    // The framing fields, seen on the way (no lookups after).
    let mut transfer_encoding = false;
    let mut length = None;
    for &(name, name_end, value, value_end) in &spans[..count] {
        let name = HeaderName::from_bytes(&bytes[span(name, name_end)]).map_err(|e| format!("invalid header: {e}"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(span(value, value_end)))
            .map_err(|e| format!("invalid header: {e}"))?;
        if name == CONTENT_LENGTH {
            length = Some(fold_length(value.as_bytes(), length));
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if name == CONNECTION {
            if lists(&value, "close") {
                keep_alive = false;
            }
            // `Connection: keep-alive` (what nginx and most keep-alive upstreams send) is
            // this hop's alone, and the only header it names, `Keep-Alive`, is hop-by-hop
            // too: it would be appended only to be removed again on the way out. Any other
            // `Connection` is kept, so the headers it names are removed as usual.
            if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
        }
        headers.append(name, value);
    }
    let reason = &bytes[span(reason.0, reason.1)];
    let reason = match status.canonical_reason() {
        Some(canonical) if canonical.as_bytes() == reason => None,
        _ => hyper::ext::ReasonPhrase::try_from(reason).ok(),
    };
    let version = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    let framing = framing(status, version, &headers, head_request, transfer_encoding, length)?;
    let keep_alive = keep_alive && !matches!(framing, Framing::Close);
    Ok(Some(Parsed::Final(Head { status, version, headers, reason, framing, keep_alive })))
}

/// How the body of a final response is framed (RFC 9112 6.3, as hyper's client reads it),
/// given whether it has a `Transfer-Encoding` and what its `Content-Length`s say.
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
    transfer_encoding: bool,
    length: Option<Option<u64>>,
) -> Result<Framing, String> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    if transfer_encoding {
        if version == Version::HTTP_10 {
            return Err("Transfer-Encoding in an HTTP/1.0 response".into());
        }
        let last = headers.get_all(TRANSFER_ENCODING).iter().next_back();
        let chunked = last
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked { Framing::Chunked(Chunk::Start) } else { Framing::Close });
    }
    match length {
        None => Ok(Framing::Close),
        Some(Some(len)) if len <= u64::MAX - 2 => Ok(Framing::Length(len)),
        Some(_) => Err("invalid Content-Length in the upstream response".into()),
    }
}

/// The one length that a `Content-Length` value (comma-separated) and the ones before it
/// (`prior`: none yet, or what they said, `None` if not one valid length) say, each in
/// digits only; `None` if they are not one valid length.
fn fold_length(value: &[u8], prior: Option<Option<u64>>) -> Option<u64> {
    let mut length = match prior {
        None => None,
        Some(None) => return None,
        Some(Some(n)) => Some(n),
    };
    for one in value.split(|&b| b == b',') {
        let one = one.trim_ascii();
        if one.is_empty() {
            return None;
        }
        let n = one.iter().try_fold(0u64, |n, &digit| {
            if !digit.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })?;
        if length.is_some_and(|length| length != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Whether a comma-separated header value lists `token` (any case).
fn lists(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}
/// Where a response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes to come.
    Length(u64),
    Chunked(Chunk),
    /// To the connection's end.
    Close,
    /// Ended cleanly.
    Done,
    /// Failed (an error was returned).
    Failed,
}

/// Where a chunked body is (hyper's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk-size line: a hex digit must come.
    Start,
    Size(u64),
    /// White space after the size.
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    /// This many bytes of chunk data to come.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: the end, or a trailer line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    End,
}
/// One byte of a chunked body's framing (everything but the chunk data).
pub(super) fn step(
    state: Chunk,
    byte: u8,
    extensions: &mut u64,
    trailers: &mut Option<BytesMut>,
    lines: &mut usize,
) -> io::Result<Chunk> {
    let invalid = |why: &'static str| Err(bad(why));
    let digit = |size: u64| {
        let value = (byte as char).to_digit(16).map(u64::from);
        value.and_then(|value| size.checked_mul(16)?.checked_add(value))
    };
    let put = |trailers: &mut BytesMut| {
        trailers.put_u8(byte);
        if trailers.len() >= MAX_TRAILER_BYTES {
            return Err(bad("chunk trailers over 16 KiB"));
        }
        Ok(())
    };
    match state {
        Chunk::Start => match (byte as char).is_ascii_hexdigit() {
            true => digit(0).map(Chunk::Size).map_or_else(|| invalid("invalid chunk size"), Ok),
            false => invalid("invalid chunk size line: missing size digit"),
        },
        Chunk::Size(size) => match byte {
            b'\t' | b' ' => Ok(Chunk::SizeLws(size)),
            b';' => Ok(Chunk::Extension(size)),
            b'\r' => Ok(Chunk::SizeLf(size)),
            _ if byte.is_ascii_hexdigit() => {
                digit(size).map(Chunk::Size).map_or_else(|| invalid("chunk size overflow"), Ok)
            }
            _ => invalid("invalid chunk size line"),
        },
        Chunk::SizeLws(size) => match byte {
            b'\t' | b' ' => Ok(Chunk::SizeLws(size)),
            b';' => Ok(Chunk::Extension(size)),
            b'\r' => Ok(Chunk::SizeLf(size)),
            _ => invalid("invalid chunk size linear white space"),
        },
        Chunk::Extension(size) => match byte {
            b'\r' => Ok(Chunk::SizeLf(size)),
            b'\n' => invalid("chunk extension contains a newline"),
            _ => {
                *extensions += 1;
                if *extensions >= MAX_EXTENSION_BYTES {
                    return invalid("chunk extensions over 16 KiB");
                }
                Ok(Chunk::Extension(size))
            }
        },
        Chunk::SizeLf(size) => match byte {
            b'\n' if size == 0 => Ok(Chunk::EndCr),
            b'\n' => Ok(Chunk::Data(size)),
            _ => invalid("invalid chunk size LF"),
        },
        Chunk::DataCr => match byte {
            b'\r' => Ok(Chunk::DataLf),
            _ => invalid("invalid chunk data CR"),
        },
        Chunk::DataLf => match byte {
            b'\n' => Ok(Chunk::Start),
            _ => invalid("invalid chunk data LF"),
        },
        Chunk::EndCr => {
            if byte == b'\r' {
                if let Some(trailers) = trailers {
                    put(trailers)?;
                }
                return Ok(Chunk::EndLf);
            }
            put(trailers.get_or_insert_with(|| BytesMut::with_capacity(64)))?;
            Ok(Chunk::Trailer)
        }
        Chunk::Trailer => {
            put(trailers.get_or_insert_with(BytesMut::new))?;
            Ok(if byte == b'\r' { Chunk::TrailerLf } else { Chunk::Trailer })
        }
        Chunk::TrailerLf => match byte {
            b'\n' => {
                if *lines >= MAX_HEADERS {
                    return invalid("more than 100 chunk trailer lines");
                }
                *lines += 1;
                put(trailers.get_or_insert_with(BytesMut::new))?;
                Ok(Chunk::EndCr)
            }
            _ => invalid("invalid trailer end LF"),
        },
        Chunk::EndLf => match byte {
            b'\n' => {
                if let Some(trailers) = trailers {
                    put(trailers)?;
                }
                Ok(Chunk::End)
            }
            _ => invalid("invalid chunk end LF"),
        },
        // Not stepped: the data is taken whole, and the end ends the body.
        Chunk::Data(_) | Chunk::End => Ok(state),
    }
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The trailer lines read after the last chunk, as hyper parses them.
pub(super) fn parse_trailers(bytes: &[u8], lines: usize) -> io::Result<HeaderMap> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut parsed = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(bytes, &mut parsed) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
                let value = HeaderValue::from_bytes(field.value).map_err(|e| invalid(e.to_string()))?;
                trailers.append(name, value);
            }
            Ok(trailers)
        }
        Ok(httparse::Status::Partial) => Err(invalid("partial chunk trailers".into())),
        Err(e) => Err(invalid(format!("invalid chunk trailers: {e}"))),
    }
}

pub(super) fn incomplete() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "upstream connection closed before the body's end")
}
