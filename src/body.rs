//! Body types: the one boxed body type that flows through the proxy both ways, and the
//! wrapper that enforces a route's `max_body_bytes` while streaming (never buffering).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

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
