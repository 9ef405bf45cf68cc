//! The access log (docs/reference.md §6): [`AccessLog`] is one request's line, written once when it is
//! dropped, and [`Counted`], [`Logged`] and [`crate::io::ObservedIo`] count the request's
//! bytes as they pass, so that the line carries them without anything being buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::keys::Principal;
use crate::metrics::{DecisionMode, Metrics, RouteMetrics};
use crate::policy::{RouteMode, Upstream};
use crate::ratelimit::concurrency::Slot;
use crate::request_id::RequestId;
use crate::usage::{Outcome, Usage};

/// One request's byte counts: body bytes received from the client (`received`) and body
/// bytes sent to it (`sent`); for a WebSocket tunnel, every byte copied each way.
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// The request body failed while it was read (malformed chunked framing, shorter than
    /// declared, a reset): the pipeline then blames the client, not the upstream.
    pub received_failed: AtomicBool,
    /// ... and the failure was the client going away (the connection closed before the
    /// declared length, or an HTTP/2 RST_STREAM): 499, not 400.
    pub received_aborted: AtomicBool,
}

/// One request's access-log line (target `access`), written exactly once: when it is
/// dropped. It lives in the response body ([`Logged`]) once the response head is sent, so
/// the line comes when the body has been sent whole (or dropped: client gone, upstream
/// reset), with the bytes counted on the way; for a WebSocket it lives in the tunnel
/// task, so the line comes when the tunnel closes. A request whose handler is dropped
/// before a response exists (the client went away: an HTTP/1.1 connection closed, an
/// HTTP/2 stream reset) is logged with status 499 and decision `client_closed`, as nginx
/// does, and counted in `keygate_requests_total` with status 499 then.
///
/// `duration_ms` runs from the request head to the line (last body byte or tunnel
/// closed). The `keygate_request_duration_seconds` histogram, by contrast, stays measured
/// at response-head time (time to first byte), so a long download or WebSocket session
/// does not distort it.
///
/// Only what is safe to log is held: the route's prefix (never the raw path), the key's
/// id and tenant (never the key).
pub struct AccessLog {
    pub request_id: RequestId,
    pub method: http::Method,
    /// The matched route's prefix (`none` when nothing matched).
    pub route: Option<Arc<str>>,
    /// The matched route's metric children (`None`: counted by the `route` label).
    pub route_metrics: Option<Arc<RouteMetrics>>,
    /// The response's status; `None` until a response exists.
    pub status: Option<u16>,
    pub decision: &'static str,
    /// For a 429: the name of the plan's limit that refused (`default` for a plan's one
    /// legacy limit).
    pub limit: Option<String>,
    pub mode: RouteMode,
    /// Answered on the authorizer listener: a decision, not a forwarded request (the
    /// line's `listener` is `authorizer`, the decision's metric mode `authorizer`).
    pub authorizer: bool,
    /// On the authorizer listener: the protocol of the check (`http` or `grpc`).
    pub protocol: Option<&'static str>,
    pub principal: Option<Principal>,
    /// The upstream's configured name.
    pub upstream: Option<Arc<Upstream>>,
    /// The request's concurrency slot (a plan with `concurrency`): held as long as this
    /// record lives, i.e. until the response body ends or the tunnel closes.
    pub concurrency: Option<Slot>,
    /// The route's `cost`, once the request was admitted and forwarded (its usage counts
    /// it then, whatever the upstream answered).
    pub admitted_cost: Option<u64>,
    /// Where the request's usage is counted when the line is written (a known tenant's
    /// requests only).
    pub usage: Option<Usage>,
    started: Instant,
    bytes: Arc<ByteCounts>,
    /// The response body (or tunnel) ran to its end.
    complete: bool,
    /// Counts the request as a 499 if it is dropped before a response exists.
    metrics: Arc<Metrics>,
}

impl AccessLog {
    pub fn new(request_id: RequestId, method: http::Method, started: Instant, metrics: Arc<Metrics>) -> Self {
        AccessLog {
            request_id,
            method,
            route: None,
            route_metrics: None,
            status: None,
            decision: "ok",
            limit: None,
            mode: RouteMode::Enforce,
            authorizer: false,
            protocol: None,
            principal: None,
            upstream: None,
            concurrency: None,
            admitted_cost: None,
            usage: None,
            started,
            bytes: Arc::new(ByteCounts::default()),
            complete: false,
            metrics,
        }
    }

    /// The counters the request's bodies (or tunnel) add to.
    pub fn bytes(&self) -> Arc<ByteCounts> {
        self.bytes.clone()
    }

    /// The time since the request head arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Counts the request in `requests_total` and `request_duration_seconds` with
    /// `status`, by its route.
    pub fn record_request(&self, status: u16) {
        let elapsed = self.started.elapsed();
        match &self.route_metrics {
            Some(route) => route.record_request(&self.method, status, elapsed),
            None => {
                let route = self.route.as_deref().unwrap_or("none");
                self.metrics.record_request(route, &self.method, status, elapsed);
            }
        }
    }

    /// The `mode` label of this request's `auth_decisions_total`.
    pub fn decision_mode(&self) -> DecisionMode {
        if self.authorizer {
            DecisionMode::Authorizer
        } else {
            self.mode.into()
        }
    }

    /// Marks the response as sent whole (or the tunnel as closed cleanly).
    pub fn set_complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if self.status.is_none() {
            // The handler was dropped before a response existed: the client went away.
            self.decision = "client_closed";
            self.record_request(CLIENT_CLOSED);
        }
        // The method is a client-chosen token: one that is a well-formed key is not logged.
        let method =
            if crate::keys::parse_secret(self.method.as_str()).is_ok() { "OTHER" } else { self.method.as_str() };
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            method = method,
            route = self.route.as_deref().unwrap_or("none"),
            status = self.status.unwrap_or(CLIENT_CLOSED),
            decision = self.decision,
            limit = self.limit.as_deref(),
            mode = self.mode.as_str(),
            listener = self.authorizer.then_some("authorizer"),
            protocol = self.protocol,
            key_id = self.principal.as_ref().map(Principal::key_id),
            tenant = self.principal.as_ref().map(Principal::tenant),
            upstream = self.upstream.as_ref().map(|upstream| upstream.name.as_str()),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_in = self.bytes.received.load(Ordering::Relaxed),
            bytes_out = self.bytes.sent.load(Ordering::Relaxed),
            complete = self.complete,
        );
        if let (Some(usage), Some(principal)) = (&self.usage, &self.principal) {
            let outcome = match self.admitted_cost {
                Some(cost) => Outcome::Admitted { cost },
                None => Outcome::Refused(self.decision),
            };
            usage.record(principal.tenant(), principal.key_id(), outcome);
        }
    }
}

/// nginx's "client closed request".
const CLIENT_CLOSED: u16 = 499;

/// Whether a request body's error is the client going away rather than a malformed body:
/// the connection ended before the declared length (hyper reports an unexpected EOF), was
/// reset, or the client reset the HTTP/2 stream (or the connection, with GOAWAY).
/// Malformed framing (a bad chunk size, a bare LF) is `InvalidData`/`InvalidInput`.
fn client_went_away(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe);
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote() && (h2.is_reset() || h2.is_go_away());
        }
        cause = e.source();
    }
    false
}

/// Streams a body through unchanged, adding the length of every data frame to `counter`.
pub struct Counted<B> {
    inner: B,
    counts: Arc<ByteCounts>,
}

impl<B> Counted<B> {
    /// Counts into `counts.received` (a request body, from the client).
    pub fn received(inner: B, counts: Arc<ByteCounts>) -> Self {
        Counted { inner, counts }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counts.received.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if client_went_away(e) {
                    self.counts.received_aborted.store(true, Ordering::Relaxed);
                }
                self.counts.received_failed.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts its data bytes into its [`AccessLog`] and owns it, so the
/// access line is written when the body is finished or dropped.
pub struct Logged<B: Body> {
    inner: B,
    log: AccessLog,
    ended: bool,
    failed: bool,
}

impl<B: Body> Logged<B> {
    pub fn new(inner: B, log: AccessLog) -> Self {
        Logged { inner, log, ended: false, failed: false }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Ready(None) => this.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Logged<B> {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so, so a body that ended may never
        // have returned `None`.
        if !self.failed && (self.ended || self.inner.is_end_stream()) {
            self.log.complete = true;
        }
        // `self.log` is dropped next, which writes the line.
    }
}

/// A WebSocket tunnel's client side counts into the request's [`ByteCounts`]: bytes read
/// from the client as received, bytes written to it as sent.
impl crate::io::IoObserver for ByteCounts {
    fn on_read(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn on_write(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn counted_and_logged_bodies_count_data_bytes_and_see_the_end() {
        let log =
            AccessLog::new(crate::request_id::new(), http::Method::POST, Instant::now(), Arc::new(Metrics::new()));
        let counts = log.bytes();
        let request = Counted::received(Full::new(Bytes::from_static(b"0123456789")), counts.clone());
        assert_eq!(request.size_hint().exact(), Some(10), "the size hint passes through");
        assert_eq!(&request.collect().await.unwrap().to_bytes()[..], b"0123456789");
        let response = Logged::new(Full::new(Bytes::from_static(b"abc")), log);
        assert_eq!(&response.collect().await.unwrap().to_bytes()[..], b"abc");
        assert_eq!(counts.received.load(Ordering::Relaxed), 10);
        assert_eq!(counts.sent.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn counting_io_counts_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counts = Arc::new(ByteCounts::default());
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = crate::io::ObservedIo::new(near, counts.clone());
        io.write_all(b"hello").await.unwrap();
        far.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(counts.sent.load(Ordering::Relaxed), 5);
        assert_eq!(counts.received.load(Ordering::Relaxed), 2);
    }
}
