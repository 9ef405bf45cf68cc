//! The HTTP/1.1 upstream fast path: a request with no body that is not an upgrade is
//! written, and its response read, by keygate itself, with no hyper connection task.
//!
//! hyper's connection-level client ([`super::http1`]) runs every upstream connection as a
//! task of its own: the request goes to it through a channel, it writes the head, parses
//! the response head and hands it back, then feeds the body through another channel, each
//! hand-off a wake-up of another task. Here the task that sends the request writes its
//! head on the socket and parses the response head ([`httparse`], as hyper does), and
//! the response body ([`FastBody`]) reads the upstream socket directly when it is polled
//! — by the task that sends the body to the client (the server's connection task), so
//! a request to an upstream costs no other task at all.
//!
//! It serves what most API traffic is, a request with no body (its body ended and neither
//! `Content-Length` nor `Transfer-Encoding` is set) and no `Upgrade` ([`eligible`]). A
//! request with a body, a WebSocket handshake and every h2c request keep hyper's clients;
//! the two HTTP/1.1 paths keep separate idle connections, per worker and upstream.
//!
//! What the hyper path guarantees holds here, the same way:
//! - **reuse**: a worker's requests take the connection returned last (LIFO) or open one
//!   (the upstream's `connect_timeout`, `TCP_NODELAY` and name resolution: the same
//!   [`Connector`]). A connection goes back only when its response body ended cleanly
//!   and its response allowed it: HTTP/1.1 without `Connection: close`, framed by
//!   `Content-Length` or chunked (a body delimited by the connection's close ends it), a
//!   head [`super::response_check`] judged sound, and no byte beyond the body read;
//!   one still streaming is not in the list;
//! - **stale connections**: before a request is written on a connection taken from the
//!   list, the kernel is asked whether bytes or the end of the stream wait on it (the
//!   [`super::connector`] check, once); if so, it is closed and the next one taken;
//! - **retry**: a request whose write failed on a reused connection (so no byte of any
//!   response was read, and the upstream never had all of the request) is sent again
//!   once, on another connection or a new one; never after it was written, nor from a new
//!   connection;
//! - **idle timeout**: a connection unused for [`IDLE_TIMEOUT`] (checked every
//!   [`IDLE_SWEEP`]) is closed;
//! - **response heads**: at most 16 KiB ([`BUF_SIZE`], hyper's `max_buf_size` on the
//!   other path) and 100 header lines, parsed as strictly as hyper parses them (no
//!   obs-fold, no space before a colon, a status of three digits from 100); interim
//!   (1xx) responses are skipped and counted for [`super::response_check::judge`], at
//!   most [`MAX_INTERIM`] of them; a 101 (nothing here asked to upgrade) is refused;
//! - **framing**, as hyper's client frames: `HEAD`, 204 and 304 have no body;
//!   `Transfer-Encoding` in an HTTP/1.0 response is refused, one whose last coding is
//!   `chunked` frames the body by chunks (extensions ignored, at most 16 KiB of them;
//!   trailers, at most 16 KiB and 100 lines, become a trailers frame), any other is read
//!   to the connection's end (and refused by the judge); else every `Content-Length`
//!   value must be the same number of digits, or the response is refused; else the body
//!   is read to the connection's end. A body that ends before its framing says is an
//!   error, so the client's response is aborted and never looks complete;
//! - **backpressure**: the body reads only when it is polled, at most 16 KiB at a time
//!   into one buffer per connection, whose data frames are slices of it;
//! - the response-header `timeout` (504) and the errors are [`super::pool`]'s, as on the
//!   other path; a request dropped before its response ended (the client went away)
//!   drops, and so closes, its connection.
//!
//! The request head is written as hyper writes it: the method, the origin-form target and
//! `HTTP/1.1`, then each header as `name: value` in the map's order, with `Host` from the
//! upstream's authority last when the request has none.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::connector::{Connector, FreshReads};
use super::http1::{error_chain, IDLE_SWEEP, IDLE_TIMEOUT};
use super::pool::UpstreamError;
use super::response_check::{self, Verdict, MAX_INTERIM};
use crate::body::{BoxError, ProxyBody};

/// A connection's read buffer, and the most a response head may take.
pub(super) const BUF_SIZE: usize = 16 * 1024;
/// The most header lines in a response head (hyper's limit on the other path).
const MAX_HEADERS: usize = 100;
/// The most bytes of chunked trailers, and of chunk extensions in one body (hyper's).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
/// Headers keygate may add to a response after it left the upstream: the six rate-limit
/// headers and `x-request-id`.
const RESPONSE_HEADERS_ADDED: usize = 7;
/// Looks (of [`IDLE_SWEEP`]) a connection must have stayed idle through to be closed.
const IDLE_SWEEPS: u64 = IDLE_TIMEOUT.as_secs().div_ceil(IDLE_SWEEP.as_secs());

/// Whether `request` takes the fast path: no body (it has ended, and no `Content-Length`
/// or `Transfer-Encoding` says one comes) and no `Upgrade`.
pub(super) fn eligible(request: &Request<ProxyBody>) -> bool {
    let headers = request.headers();
    request.body().is_end_stream()
        && !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key(TRANSFER_ENCODING)
        && !headers.contains_key(UPGRADE)
}

/// One worker's fast-path connections to one upstream.
pub(super) struct FastPool {
    connector: Connector,
    /// `http://authority/`: what the connector connects to.
    target: Uri,
    /// `Host` for a request that has none.
    host: Option<HeaderValue>,
    idle: Mutex<Vec<Idle>>,
    /// Idle sweeps so far (the idle connections' clock).
    sweeps: AtomicU64,
}

/// A connection in the list, since the sweep count when it was returned.
struct Idle {
    conn: Conn,
    since: u64,
}

/// One upstream connection.
struct Conn {
    io: FreshReads,
    /// Set, the connection's reads ask the kernel (until the next write).
    check_reads: Arc<AtomicBool>,
    /// What was read and not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept for the next request's).
    head: Vec<u8>,
}

/// A response head and the interim responses before it.
struct Exchanged {
    response: Response<FastBody>,
    interim: usize,
}

impl FastPool {
    /// A pool for `authority`; spawns its idle sweep on the current runtime, if any (the
    /// sweep ends when the pool is dropped).
    pub(super) fn new(authority: &Authority, connector: Connector) -> Arc<FastPool> {
        let target = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("an upstream authority makes a valid URI");
        let pool = Arc::new(FastPool {
            connector,
            target,
            host: HeaderValue::from_str(authority.as_str()).ok(),
            idle: Mutex::new(Vec::new()),
            sweeps: AtomicU64::new(0),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep_idle(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends a request with no body (`target` in origin form) and reads its response head
    /// within `timeout`, judged like the other path's ([`response_check`]); the body then
    /// streams from the connection, which goes back to the list only if the head was
    /// sound. On a timeout the exchange is dropped, and with it the connection (closed).
    pub(super) async fn exchange(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<Response<FastBody>, UpstreamError> {
        let Exchanged { mut response, interim } =
            match tokio::time::timeout(timeout, self.send(method, target, headers)).await {
                Ok(Ok(exchanged)) => exchanged,
                Ok(Err(why)) => return Err(UpstreamError::Failed(why)),
                Err(_) => return Err(UpstreamError::Timeout),
            };
        match response_check::judge(response.status(), response.headers_mut(), interim) {
            Verdict::Sound => {}
            Verdict::Doubtful => response.body_mut().discard_connection(),
            Verdict::Refused(why) => return Err(UpstreamError::Failed(why.to_string())),
        }
        response.body_mut().settle();
        Ok(response)
    }

    /// Writes a request with no body on an idle connection or a new one, and reads its
    /// final response head.
    async fn send(self: &Arc<Self>, method: &Method, target: &str, headers: &HeaderMap) -> Result<Exchanged, String> {
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting is a large future and the rare case.
                None => (Box::pin(self.connect()).await?, false),
            };
            conn.encode_head(method, target, headers, self.host.as_ref());
            if let Err(e) = conn.io.write_all(&conn.head).await {
                // The upstream did not take the whole request: a reused connection that
                // closed meanwhile. Once, another.
                if reused && !retried {
                    retried = true;
                    continue;
                }
                return Err(format!("upstream connection: writing the request failed: {e}"));
            }
            let (head, interim) = conn.read_head(*method == Method::HEAD).await?;
            let Head { status, version, headers, reason, framing, keep_alive } = head;
            let mut body = FastBody {
                conn: Some(conn),
                pool: keep_alive.then(|| self.clone()),
                framing,
                extensions: 0,
                trailers: None,
                trailer_lines: 0,
            };
            if let Framing::Length(0) = body.framing {
                body.framing = Framing::Done;
            }
            let mut response = Response::new(body);
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            if let Some(reason) = reason {
                response.extensions_mut().insert(reason);
            }
            return Ok(Exchanged { response, interim });
        }
    }

    /// The last-returned connection on which nothing waits; the others on the way (bytes
    /// or the end of the stream wait on them) are closed.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(Idle { mut conn, .. }) = idle.pop() {
            if !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    /// Puts a connection whose response ended cleanly back in the list.
    fn put(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            return; // bytes beyond the response: closed
        }
        let since = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.push(Idle { conn, since });
    }

    /// A new connection, within the upstream's `connect_timeout`.
    async fn connect(&self) -> Result<Conn, String> {
        let (io, check_reads) = self
            .connector
            .connect_http1(self.target.clone())
            .await
            .map_err(|e| format!("client error (Connect): {}", error_chain(&*e)))?;
        Ok(Conn { io: io.into_inner(), check_reads, buf: BytesMut::with_capacity(BUF_SIZE), head: Vec::new() })
    }

    /// Closes the connections that stayed idle through [`IDLE_SWEEPS`] sweeps.
    fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.retain(|c| now - c.since <= IDLE_SWEEPS);
    }

    /// Connections in the list now (tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// The sweep, as the pool's task runs it every [`IDLE_SWEEP`] (tests).
    #[cfg(test)]
    pub(super) fn sweep_now(&self) {
        self.sweep();
    }
}

async fn sweep_idle(pool: Weak<FastPool>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_SWEEP, IDLE_SWEEP);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// A final response head, parsed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    reason: Option<hyper::ext::ReasonPhrase>,
    framing: Framing,
    /// Whether the connection may serve another request once the body ended.
    keep_alive: bool,
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
    fn is_stale(&mut self) -> bool {
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
    fn encode_head(&mut self, method: &Method, target: &str, headers: &HeaderMap, host: Option<&HeaderValue>) {
        let dst = &mut self.head;
        dst.clear();
        dst.extend_from_slice(method.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(target.as_bytes());
        dst.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        if let (false, Some(host)) = (headers.contains_key(HOST), host) {
            dst.extend_from_slice(b"host: ");
            dst.extend_from_slice(host.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
        dst.extend_from_slice(b"\r\n");
    }

    /// Reads into the buffer, at most up to [`BUF_SIZE`] in it: the bytes read (0 at the
    /// end of the stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = BUF_SIZE.saturating_sub(self.buf.len());
        self.buf.reserve(room);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut (&mut self.buf).limit(room))
    }

    /// Reads the final response head (skipping interim ones), and how many interim
    /// responses came before it.
    async fn read_head(&mut self, head_request: bool) -> Result<(Head, usize), String> {
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
        } else if name == CONNECTION && lists(&value, "close") {
            keep_alive = false;
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
enum Framing {
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
enum Chunk {
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

/// A fast-path response body: reads its connection when polled, and puts the connection
/// back once it ended cleanly, if its response allowed that.
pub struct FastBody {
    /// `None` once put back or closed.
    conn: Option<Conn>,
    /// Where the connection goes back when the body has ended; `None`: it is closed.
    pool: Option<Arc<FastPool>>,
    framing: Framing,
    /// Bytes of chunk extensions so far.
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

impl FastBody {
    /// The connection is closed, not put back, once the body has ended.
    fn discard_connection(&mut self) {
        self.pool = None;
    }

    /// Called once the head was judged: a body that has already ended (none, or all of it
    /// read with the head's bytes) hands its connection back now, since it may never be
    /// polled.
    fn settle(&mut self) {
        if self.framing == Framing::Done {
            self.finish();
        }
    }

    /// The body ended cleanly: the connection goes back, or is closed.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            pool.put(conn);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Failed;
        self.conn = None;
        self.pool = None;
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn poll_length(&mut self, cx: &mut Context<'_>, remaining: u64) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        if conn.buf.is_empty() {
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => return self.fail(incomplete()),
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
        let take = conn.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let data = conn.buf.split_to(take).freeze();
        let left = remaining - take as u64;
        if left == 0 {
            self.finish();
        } else {
            self.framing = Framing::Length(left);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        if conn.buf.is_empty() {
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
        Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))))
    }

    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Framing::Chunked(mut state) = self.framing else { return Poll::Ready(None) };
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            if conn.buf.is_empty() {
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) => return self.fail(incomplete()),
                    Ok(_) => {}
                    Err(e) => return self.fail(e),
                }
            }
            if let Chunk::Data(remaining) = state {
                let take = conn.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let data = conn.buf.split_to(take).freeze();
                let left = remaining - take as u64;
                self.framing = Framing::Chunked(if left == 0 { Chunk::DataCr } else { Chunk::Data(left) });
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let mut used = 0;
            let mut stepped = Ok(state);
            for &byte in conn.buf.iter() {
                used += 1;
                stepped = step(state, byte, &mut self.extensions, &mut self.trailers, &mut self.trailer_lines);
                match stepped {
                    Ok(next @ (Chunk::Data(_) | Chunk::End)) => {
                        state = next;
                        break;
                    }
                    Ok(next) => state = next,
                    Err(_) => break,
                }
            }
            conn.buf.advance(used);
            if let Err(e) = stepped {
                return self.fail(e);
            }
            self.framing = Framing::Chunked(state);
            if state == Chunk::End {
                let trailers = self.trailers.take();
                self.finish();
                return match trailers.map(|t| parse_trailers(&t, self.trailer_lines)) {
                    None => Poll::Ready(None),
                    Some(Ok(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Some(Err(e)) => self.fail(e),
                };
            }
        }
    }
}

/// One byte of a chunked body's framing (everything but the chunk data).
fn step(
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
fn parse_trailers(bytes: &[u8], lines: usize) -> io::Result<HeaderMap> {
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

fn incomplete() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "upstream connection closed before the body's end")
}

impl Body for FastBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.framing {
            Framing::Length(remaining) => this.poll_length(cx, remaining),
            Framing::Chunked(_) => this.poll_chunked(cx),
            Framing::Close => this.poll_close(cx),
            Framing::Done | Framing::Failed => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(remaining) => SizeHint::with_exact(remaining),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
