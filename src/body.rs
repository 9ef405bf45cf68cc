//! Body types: the one boxed body type that flows through the proxy both ways, the
//! wrapper that enforces a route's `max_body_bytes` while streaming (never buffering),
//! and the body of a unary gRPC answer (one data frame, then trailers).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response keygate builds or forwards.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body of at most one data frame and then trailers: a unary gRPC answer (the
/// length-prefixed message, then `grpc-status`), built once and never copied. Its size is
/// not announced (no `content-length`): gRPC answers carry none.
pub struct DataThenTrailers {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl DataThenTrailers {
    pub fn new(data: Bytes, trailers: http::HeaderMap) -> Self {
        DataThenTrailers { data: Some(data).filter(|d| !d.is_empty()), trailers: Some(trailers) }
    }
}

impl Body for DataThenTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(self.data.as_ref().map_or(0, |d| d.len() as u64));
        hint
    }
}

/// The error a [`Limited`] body fails with once more than its limit has arrived.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// Streams a body through, failing with [`TooLarge`] as soon as more than `limit` bytes
/// have passed, and raising `tripped` so the pipeline answers 413 rather than 502.
pub struct Limited<B> {
    inner: Pin<Box<B>>,
    remaining: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        Limited { inner: Box::pin(inner), remaining: limit, limit, tripped }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body passed through unchanged that keeps `T` alive until it is dropped: the server's
/// in-flight guard (a connection is busy until its response body is done), an upstream's
/// connection slot (held until the response body has ended).
pub struct Holding<B, T> {
    inner: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(inner: B, held: T) -> Self {
        Holding { inner, _held: held }
    }
}

impl<B, T> Body for Holding<B, T>
where
    B: Body + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that slowed below `server.min_body_rate` (see [`MinRate`]).
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {0} bytes a second")]
pub struct TooSlow(pub u64);

/// The pace a request body must keep once it has started: at least `bytes` bytes for
/// every `window` keygate spends waiting for it. Only the time spent waiting for the
/// client counts: while the upstream is not reading (its window full), keygate does not
/// ask the client for more, and that time is not the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per `window`.
    pub bytes: u64,
    pub window: Duration,
}

/// Streams a request body through, failing with [`TooSlow`] (and raising `tripped`, so
/// the pipeline answers 408 and releases the upstream connection) when fewer than
/// `rate.bytes` bytes arrive in `rate.window` of waiting. Each time `rate.bytes` have
/// arrived the count starts again: a body keeps the pace throughout, not on average.
pub struct RateChecked<B> {
    inner: Pin<Box<B>>,
    rate: MinRate,
    /// Bytes since the count last started.
    got: u64,
    /// Time spent waiting for the client since the count last started, before the
    /// current wait.
    waited: Duration,
    /// When the current wait began (the inner body said Pending), if it is waiting.
    waiting_since: Option<Instant>,
    /// The current wait's deadline timer, made on the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    tripped: Arc<AtomicBool>,
}

impl<B> RateChecked<B> {
    pub fn new(inner: B, rate: MinRate, tripped: Arc<AtomicBool>) -> Self {
        RateChecked {
            inner: Box::pin(inner),
            rate,
            got: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            tripped,
        }
    }

    fn too_slow(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tripped.store(true, Ordering::Relaxed);
        let per_second = self.rate.bytes.saturating_mul(1000) / (self.rate.window.as_millis().max(1) as u64);
        Poll::Ready(Some(Err(Box::new(TooSlow(per_second)))))
    }
}

impl<B> Body for RateChecked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.got += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.got >= this.rate.bytes {
                    (this.got, this.waited) = (0, Duration::ZERO);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let now = Instant::now();
        let since = *this.waiting_since.get_or_insert(now);
        let Some(left) = this.rate.window.checked_sub(this.waited) else {
            return this.too_slow();
        };
        let deadline = tokio::time::Instant::from_std(since + left);
        let timer = match &mut this.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => this.too_slow(),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn data_then_trailers_yields_one_data_frame_then_the_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut body = DataThenTrailers::new(Bytes::from_static(b"\0\0\0\0\x01x"), trailers);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), None, "no content-length");
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"\0\0\0\0\x01x");
        let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn limited_passes_bodies_within_the_limit() {
        let tripped = Arc::new(AtomicBool::new(false));
        let body = Limited::new(Full::new(Bytes::from_static(b"hello")), 5, tripped.clone());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(!tripped.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn limited_fails_past_the_limit_and_trips() {
        let tripped = Arc::new(AtomicBool::new(false));
        let body = Limited::new(Full::new(Bytes::from_static(b"hello!")), 5, tripped.clone());
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<TooLarge>());
        assert!(tripped.load(Ordering::Relaxed));
    }
}
