//! The upstream connector: hyper-util's [`HttpConnector`], whose TCP streams are wrapped
//! in [`FreshReads`] so that an idle pooled connection's unexpected bytes are seen before
//! the connection carries another request.
//!
//! # Why
//!
//! hyper's HTTP/1.1 client ends a response at its declared length and puts the
//! connection back in the pool. Bytes after that length — a body longer than declared, a
//! second response smuggled after the first, anything an upstream writes while no
//! request is waiting — must never be read as the next request's response, which would
//! hand one client's data to another. hyper guards against this: between responses its
//! connection task keeps reading, and any byte read while no request is in flight is an
//! error that closes the connection (and a request that was about to be written on it is
//! retried on a new one). Its connection task always reads before it writes, so bytes
//! that arrived before the next request was written are seen first.
//!
//! That holds only if a read reports what the kernel holds. Tokio's reads report what
//! the runtime's I/O driver last saw: once a read found the socket empty, the socket
//! counts as empty until the driver polls the operating system again, which a busy
//! worker does between batches of tasks. Surplus bytes that arrive in that gap (say,
//! written by the upstream a moment after the body) are invisible to hyper's check; if a
//! request waiting for a pooled connection is handed this one in the same gap, it is
//! written, and the surplus is then read as its response.
//!
//! [`FreshReads`] closes the gap: when the tokio read finds nothing, it asks the kernel
//! itself (a non-blocking `MSG_PEEK` of one byte), and if bytes or the end of the stream
//! are there, reads them at once. So hyper's check before every write on a pooled
//! connection sees every byte that reached keygate before the write. What no HTTP/1.1
//! client can tell apart — bytes that reach keygate only after the next request was
//! written, which are that request's response as far as the protocol goes — is the one
//! residue; keygate also discards a connection whose response gave any doubt (see
//! `response_check`), so an upstream that frames oddly once is not trusted twice.
//!
//! Only the reads before a write on a connection that served a request before need the
//! kernel's answer: an HTTP/1.1 upstream connection ([`super::http1`]) asks it from when
//! its pool hands it another request until that request is written
//! ([`ReadCheck::BeforeNextWrite`]), one `recv` per reused connection; every other read
//! that would wait just waits for the runtime's wake-up. An h2c connection, whose pool
//! does not say when it writes, asks the kernel on every read that would wait
//! ([`ReadCheck::Always`]).

use std::future::Future;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much one read that bypasses the driver takes at most (the rest comes with the
/// next read).
const FRESH_READ_MAX: usize = 16 * 1024;

/// [`HttpConnector`] with [`FreshReads`] streams.
#[derive(Clone)]
pub struct Connector {
    inner: HttpConnector,
}

impl Connector {
    pub fn new(inner: HttpConnector) -> Self {
        Connector { inner }
    }

    /// Connects to `uri` for an HTTP/1.1 connection whose reads ask the kernel while the
    /// returned flag is set, until the next write clears it ([`ReadCheck::BeforeNextWrite`]).
    pub async fn connect_http1(&self, uri: Uri) -> Result<(TokioIo<FreshReads>, Arc<AtomicBool>), BoxError> {
        let stream = tower_service::Service::call(&mut self.inner.clone(), uri).await?;
        let armed = Arc::new(AtomicBool::new(false));
        let check = ReadCheck::BeforeNextWrite(armed.clone());
        Ok((TokioIo::new(FreshReads { stream: stream.into_inner(), check }), armed))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<FreshReads>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(TokioIo::new(FreshReads { stream: stream.into_inner(), check: ReadCheck::Always }))
        })
    }
}

/// A TCP stream whose reads never report "nothing yet" while the kernel holds bytes, when
/// it matters (see the module doc).
pub struct FreshReads {
    stream: TcpStream,
    check: ReadCheck,
}

/// When a read that would wait asks the kernel.
pub enum ReadCheck {
    /// Every time.
    Always,
    /// While the flag is set: the pool sets it when it hands the connection another
    /// request; the next write (of that request) clears it.
    BeforeNextWrite(Arc<AtomicBool>),
}

impl ReadCheck {
    fn wanted(&self) -> bool {
        match self {
            ReadCheck::Always => true,
            ReadCheck::BeforeNextWrite(armed) => armed.load(Ordering::Acquire),
        }
    }

    fn written(&self) {
        if let ReadCheck::BeforeNextWrite(armed) = self {
            armed.store(false, Ordering::Release);
        }
    }
}

impl FreshReads {
    /// Reads what the kernel holds, without waiting and without asking the driver:
    /// `Pending` when it holds nothing (the tokio read that came first has registered the
    /// wake-up), the end of the stream as an empty read.
    fn read_from_kernel(&self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(&self.stream);
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket.peek(&mut probe) {
            Ok(0) => return Poll::Ready(Ok(())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                return Poll::Pending
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
        let take = buf.remaining().min(FRESH_READ_MAX);
        match (&*socket).read(buf.initialize_unfilled_to(take)) {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for FreshReads {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if buf.remaining() > 0 && this.check.wanted() => this.read_from_kernel(buf),
            other => other,
        }
    }
}

impl AsyncWrite for FreshReads {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(1..)) = polled {
            this.check.written();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, data);
        if let Poll::Ready(Ok(1..)) = polled {
            this.check.written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connection for FreshReads {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

#[cfg(test)]
pub(super) mod tests;
