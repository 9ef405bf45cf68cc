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
//! - **idle timeout**: a connection unused for [`super::idle::IDLE_TIMEOUT`] (checked
//!   every [`super::idle::IDLE_SWEEP`]) is closed;
//! - **response heads**: at most 16 KiB ([`BUF_SIZE`], hyper's `max_buf_size` on the
//!   other path) and 100 header lines, parsed as strictly as hyper parses them (no
//!   obs-fold, no space before a colon, a status of three digits from 100); interim
//!   (1xx) responses are skipped and counted for [`super::response_check::judge`], at
//!   most [`MAX_INTERIM`](super::response_check::MAX_INTERIM) of them; a 101 (nothing here asked to upgrade) is refused; a
//!   reason phrase other than the status's usual one is kept for the client, as hyper
//!   keeps it ([`hyper::ext::ReasonPhrase`]);
//! - **framing**, as hyper's client frames: `HEAD`, 204 and 304 have no body;
//!   `Transfer-Encoding` in an HTTP/1.0 response is refused, one whose last coding is
//!   `chunked` frames the body by chunks (extensions ignored, at most 16 KiB of them;
//!   trailers, at most 16 KiB and 100 lines, become a trailers frame), any other is read
//!   to the connection's end (and refused by the judge); else every `Content-Length`
//!   value (and every item of a comma-separated one) must be the same number, in digits
//!   only, or the response is refused; else the body is read to the connection's end. A body that ends before its framing says is an
//!   error, so the client's response is aborted and never looks complete;
//! - **backpressure**: the body reads only when it is polled, at most 16 KiB at a time
//!   into one buffer per connection, whose data frames are slices of it;
//! - the response-header `timeout` (504) and the errors are [`super::pool`]'s, as on the
//!   other path; a request dropped before its response ended (the client went away)
//!   drops, and so closes, its connection.
//!
//! The wire format (the connection and its buffer, both heads, the framing, the chunked
//! decoding) is [`wire`]'s; this module keeps the connections and the response body.
//!
//! The request head is written as hyper writes it: the method, the origin-form target and
//! `HTTP/1.1`, then each header as `name: value` in the map's order, with `Host` from the
//! upstream's authority last when the request has none.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use wire::{parse_trailers, step, Chunk, Conn, Framing, Head, BUF_SIZE};

use super::connector::Connector;
use super::http1::error_chain;
use super::idle::{self, IdleList, Pick};
use super::outbound::Written;
use super::response_check::{self, Verdict};
use crate::body::{BoxError, ProxyBody};

mod wire;

/// Why an exchange failed: the pool answers 502 for the one, 504 for the other (its
/// `UpstreamError`s).
#[derive(Debug)]
pub(super) enum Failure {
    /// Unreachable, broken, or a response head keygate refuses.
    Failed(String),
    /// No response head within the upstream's `timeout`.
    Timeout,
}

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
    idle: IdleList<Conn>,
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
            idle: IdleList::new(),
        });
        idle::spawn_sweeps(&pool, FastPool::sweep);
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
        written: Option<&Written>,
        timeout: Duration,
    ) -> Result<Response<FastBody>, Failure> {
        let Exchanged { mut response, interim } =
            match tokio::time::timeout(timeout, self.send(method, target, headers, written)).await {
                Ok(Ok(exchanged)) => exchanged,
                Ok(Err(why)) => return Err(Failure::Failed(why)),
                Err(_) => return Err(Failure::Timeout),
            };
        match response_check::judge(response.status(), response.headers_mut(), interim) {
            Verdict::Sound => {}
            Verdict::Doubtful => response.body_mut().discard_connection(),
            Verdict::Refused(why) => return Err(Failure::Failed(why.to_string())),
        }
        response.body_mut().settle();
        Ok(response)
    }

    /// Writes a request with no body on an idle connection or a new one, and reads its
    /// final response head.
    async fn send(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        written: Option<&Written>,
    ) -> Result<Exchanged, String> {
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting is a large future and the rare case.
                None => (Box::pin(self.connect()).await?, false),
            };
            conn.encode_head(method, target, headers, written, self.host.as_ref());
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
        self.idle.take(|conn| if conn.is_stale() { Pick::Close } else { Pick::Take })
    }

    /// Puts a connection whose response ended cleanly back in the list.
    fn put(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            return; // bytes beyond the response: closed
        }
        self.idle.put(conn);
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

    /// Closes the connections that stayed idle through [`idle::IDLE_SWEEPS`] sweeps (a
    /// listed connection is never busy: it goes back only once its body ended).
    fn sweep(&self) {
        self.idle.sweep(|_| idle::Seen::Idle);
    }

    /// Connections in the list now (tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// The sweep, as the pool's task runs it every [`idle::IDLE_SWEEP`] (tests).
    #[cfg(test)]
    pub(super) fn sweep_now(&self) {
        self.sweep();
    }
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
        if let Err(e) = ready!(conn.poll_more(cx)) {
            return self.fail(e);
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
        match ready!(conn.poll_bytes(cx)) {
            Ok(true) => {}
            Ok(false) => {
                self.finish();
                return Poll::Ready(None);
            }
            Err(e) => return self.fail(e),
        }
        Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))))
    }

    fn poll_chunked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Framing::Chunked(mut state) = self.framing else { return Poll::Ready(None) };
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            if let Err(e) = ready!(conn.poll_more(cx)) {
                return self.fail(e);
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
