//! An I/O stream wrapper that reports every byte moved to an observer: the connection
//! watchdog's clock (`server.rs`) and a WebSocket tunnel's byte counts (`body.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told how many bytes each successful read and write moved (never zero).
pub trait IoObserver: Send + Sync {
    fn on_read(&self, bytes: usize);
    fn on_write(&self, bytes: usize);
}

/// `inner`, reporting to `observer`.
pub struct ObservedIo<T, O: ?Sized> {
    inner: T,
    observer: Arc<O>,
}

impl<T, O: ?Sized> ObservedIo<T, O> {
    pub fn new(inner: T, observer: Arc<O>) -> Self {
        ObservedIo { inner, observer }
    }
}

impl<T: AsyncRead + Unpin, O: IoObserver + ?Sized> AsyncRead for ObservedIo<T, O> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len().saturating_sub(before);
            if read > 0 {
                self.observer.on_read(read);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, O: IoObserver + ?Sized> AsyncWrite for ObservedIo<T, O> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.observer.on_write(n);
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.observer.on_write(n);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
