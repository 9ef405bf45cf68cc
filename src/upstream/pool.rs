//! The upstream clients: per worker thread, one per upstream identity — the worker's
//! own HTTP/1.1 connections (two lists: the fast path's, [`super::fast`], for requests
//! with no body that are not upgrades, and hyper's, [`super::http1`], for the others) or,
//! for an h2c upstream, a pooled hyper-util client — kept across policy reloads while the
//! upstream's address, protocol and connect timeout are unchanged; and the one call that
//! sends an admitted request. Its response body is [`UpstreamBody`]: hyper's, or the fast
//! path's.
//!
//! A connection is used again only when nothing about its last response was in doubt:
//! [`Upstreams::send`] judges every response head ([`super::response_check`]) and drops
//! the connection (HTTP/1.1: it is not put back; h2c: it is poisoned, and hyper-util's
//! pool drops it) when the response is refused or doubtful, and the connections' reads
//! see every byte that arrived on an idle connection before the next request is written
//! ([`super::connector`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;

use super::connector::Connector;
use super::fast::{self, FastBody, FastPool};
use super::http1::{error_chain, Http1Pool, Lease};
use super::limit::{ConnectionPermit, Slots};
use super::outbound::{Outbound, Written};
use super::response_check::{self, Verdict, MAX_INTERIM};
use crate::body::{BoxError, ProxyBody};
use crate::policy::{Upstream, UpstreamProtocol};

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable within `connect_timeout`, reset, not HTTP, or an answer
    /// keygate refuses (see [`super::response_check`]): 502.
    #[error("upstream unreachable or broken: {0}")]
    Failed(String),
    /// Response headers later than the upstream's `timeout`: 504.
    #[error("upstream response headers timed out")]
    Timeout,
    /// All of the upstream's `max_connections` busy for its `queue_timeout` (or its queue
    /// full): 503.
    #[error("upstream busy: max_connections in use")]
    Busy,
}

/// The pooled client of an h2c upstream.
type H2cClient = Client<Connector, ProxyBody>;

/// One worker's client for one upstream.
#[derive(Clone)]
pub(super) enum UpstreamClient {
    Http1(Arc<Http1Pool>),
    H2c(Arc<H2cClient>),
}

/// The identity of a pool: an upstream whose address, protocol and connect timeout are
/// unchanged keeps its pool across policy reloads.
#[derive(Debug, Clone)]
struct PoolKey {
    authority: Authority,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
}

impl PoolKey {
    fn of(upstream: &Upstream) -> PoolKey {
        PoolKey {
            authority: upstream.authority.clone(),
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout,
        }
    }

    /// Whether `upstream`'s pool is this one (the protocol first: cheapest to compare).
    fn serves(&self, upstream: &Upstream) -> bool {
        self.protocol == upstream.protocol
            && self.connect_timeout == upstream.connect_timeout
            && self.authority == upstream.authority
    }
}

/// The pooled clients: per worker thread (see the server's workers), one per
/// upstream identity. A pooled connection's task runs on the worker that opened it, so a
/// worker that only uses its own pools never wakes another thread to forward a request.
pub struct Upstreams {
    /// One set per worker, and a last one for callers on no worker (tests). A list, not a
    /// map: a policy names a handful of upstreams, and comparing a few authorities costs
    /// less per request than hashing one.
    pools: Vec<Mutex<Pools>>,
    /// The connection caps ([`super::limit`]), one per upstream address and protocol,
    /// shared by every worker; each worker's pool entry keeps its upstream's, so a
    /// request takes no lock beyond its worker's own.
    slots: Mutex<Vec<(SlotsKey, Arc<Slots>)>>,
}

/// One worker's clients, by upstream identity, with their upstream's connection cap.
type Pools = Vec<Pool>;

/// One worker's clients for one upstream.
struct Pool {
    key: PoolKey,
    client: UpstreamClient,
    /// HTTP/1.1: the fast path's connections ([`super::fast`]).
    fast: Option<Arc<FastPool>>,
    slots: Arc<Slots>,
}

/// Whose cap a [`Slots`] is: one upstream service, however many names point at it.
type SlotsKey = (Authority, UpstreamProtocol);

/// How long an idle pooled h2c connection to an upstream is kept (HTTP/1.1: see
/// [`super::idle::IDLE_TIMEOUT`]).
const POOL_IDLE_TIMEOUT: Duration = super::idle::IDLE_TIMEOUT;

impl Upstreams {
    /// Pools for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Upstreams { pools: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(), slots: Mutex::new(Vec::new()) }
    }

    /// This worker's client for `upstream` (the connector's tests drive it directly).
    #[cfg(test)]
    pub(super) fn client(&self, upstream: &Upstream) -> UpstreamClient {
        self.entry(upstream).0
    }

    /// The upstream's cap, shared by every worker: made anew when `max_connections`
    /// changed in a reload (requests in flight keep their slots of the old one).
    fn shared_slots(&self, upstream: &Upstream) -> Arc<Slots> {
        let mut all = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (upstream.authority.clone(), upstream.protocol);
        match all.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slots)) if slots.max == upstream.max_connections => slots.clone(),
            Some((_, slots)) => {
                *slots = Arc::new(Slots::new(upstream.max_connections));
                slots.clone()
            }
            None => {
                let slots = Arc::new(Slots::new(upstream.max_connections));
                all.push((key, slots.clone()));
                slots
            }
        }
    }

    /// This worker's client for `upstream`, its fast-path connections (HTTP/1.1), and the
    /// upstream's cap.
    fn entry(&self, upstream: &Upstream) -> (UpstreamClient, Option<Arc<FastPool>>, Arc<Slots>) {
        let last = self.pools.len() - 1;
        let pools = &self.pools[crate::worker::current().map_or(last, |worker| worker.min(last))];
        let mut clients = pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = clients.iter_mut().find(|pool| pool.key.serves(upstream)) {
            if pool.slots.max != upstream.max_connections {
                pool.slots = self.shared_slots(upstream);
            }
            return (pool.client.clone(), pool.fast.clone(), pool.slots.clone());
        }
        let key = PoolKey::of(upstream);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let connector = Connector::new(connector);
        let fast = (upstream.protocol == UpstreamProtocol::Http1)
            .then(|| FastPool::new(&upstream.authority, connector.clone()));
        let client = match upstream.protocol {
            UpstreamProtocol::Http1 => UpstreamClient::Http1(Http1Pool::new(&upstream.authority, connector)),
            UpstreamProtocol::H2c => {
                let mut builder = Client::builder(TokioExecutor::new());
                // Without the timer the pool's idle timeout does nothing.
                builder.pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT);
                builder.http2_only(true).timer(TokioTimer::new());
                UpstreamClient::H2c(Arc::new(builder.build(connector)))
            }
        };
        let slots = self.shared_slots(upstream);
        clients.push(Pool { key, client: client.clone(), fast: fast.clone(), slots: slots.clone() });
        (client, fast, slots)
    }

    /// Drops the pools of upstreams no longer in `current` (after a reload).
    pub fn retain(&self, current: &[Arc<Upstream>]) {
        for pools in &self.pools {
            let mut clients = pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            clients.retain(|pool| current.iter().any(|u| pool.key.serves(u)));
        }
        let mut all = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        all.retain(|((authority, protocol), _)| {
            current.iter().any(|u| u.authority == *authority && u.protocol == *protocol)
        });
    }

    /// Sends an admitted request (already rewritten) to `upstream` once one of its
    /// `max_connections` is free (waiting at most its `queue_timeout`), waiting at most its
    /// `timeout` for the response headers. The body streams on after this returns; the
    /// permit must live as long as it (or the tunnel) does.
    ///
    /// An HTTP/1.1 request with no body that is not an upgrade takes the fast path
    /// ([`super::fast`]); the others hyper's clients.
    pub async fn send(
        &self,
        upstream: &Upstream,
        outbound: Outbound,
    ) -> Result<(Response<UpstreamBody>, ConnectionPermit), UpstreamError> {
        let (client, fast, slots) = self.entry(upstream);
        let permit = slots.acquire(upstream.queue_timeout).await.ok_or(UpstreamError::Busy)?;
        let (request, written) = outbound.into_parts();
        if let Some(fast) = fast.filter(|_| fast::eligible(&request)) {
            let response = send_fast(&fast, upstream, request, written.as_ref()).await?;
            return Ok((response, permit));
        }
        let response = send_hyper(client, upstream, Outbound::into_request_with(request, written)).await?;
        Ok((response.map(UpstreamBody::Hyper), permit))
    }
}

/// The response body of either path.
pub enum UpstreamBody {
    /// hyper's clients (a request with a body, an upgrade, an h2c upstream).
    Hyper(Incoming),
    /// The HTTP/1.1 fast path.
    Fast(FastBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Fast(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::Fast(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::Fast(body) => body.size_hint(),
        }
    }
}

/// The fast path's exchange ([`FastPool::exchange`]).
async fn send_fast(
    pool: &Arc<FastPool>,
    upstream: &Upstream,
    request: Request<ProxyBody>,
    written: Option<&Written>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let (parts, empty) = request.into_parts();
    drop(empty);
    let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let response = match pool.exchange(&parts.method, target, &parts.headers, written, upstream.timeout).await {
        Ok(response) => response,
        Err(fast::Failure::Failed(why)) => return Err(UpstreamError::Failed(why)),
        Err(fast::Failure::Timeout) => return Err(UpstreamError::Timeout),
    };
    Ok(response.map(UpstreamBody::Fast))
}

/// hyper's exchange (HTTP/1.1 connection-level client, or the h2c pool's).
async fn send_hyper(
    client: UpstreamClient,
    upstream: &Upstream,
    mut request: Request<ProxyBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let interim = Arc::new(Interim::default());
    let counted = interim.clone();
    hyper::ext::on_informational(&mut request, move |_| counted.add());
    let path_and_query = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    // What the exchange used: the HTTP/1.1 connection (put back or dropped below), or
    // the h2c pool's connection (poisoned if its answer is not sound).
    let mut h2c = None;
    let exchange = async {
        match &client {
            UpstreamClient::Http1(pool) => {
                // Origin form: the path and query only.
                *request.uri_mut() = Uri::from(path_and_query);
                *request.version_mut() = Version::HTTP_11;
                pool.send(request).await.map(|(response, lease)| (response, Some(lease)))
            }
            UpstreamClient::H2c(client) => {
                *request.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(upstream.authority.clone())
                    .path_and_query(path_and_query)
                    .build()
                    .map_err(|e| format!("cannot build upstream URI: {e}"))?;
                *request.version_mut() = Version::HTTP_2;
                h2c = Some(capture_connection(&mut request));
                // Boxed: the general client's future is large, and inline it would
                // make every HTTP/1.1 request's future as large (see `Http1Pool::send`).
                Box::pin(client.request(request)).await.map(|response| (response, None)).map_err(|e| error_chain(&e))
            }
        }
    };
    let response = async {
        tokio::select! {
            biased;
            result = exchange => Some(result),
            () = interim.storm.notified() => None,
        }
    };
    // On a timeout or an interim storm the exchange is dropped, and with it an
    // HTTP/1.1 connection (hyper closes it).
    let (mut response, lease) = match tokio::time::timeout(upstream.timeout, response).await {
        Ok(Some(Ok(exchanged))) => exchanged,
        Ok(Some(Err(why))) => return Err(UpstreamError::Failed(why)),
        Ok(None) => {
            poison(h2c.as_ref());
            return Err(UpstreamError::Failed(format!("more than {MAX_INTERIM} interim (1xx) responses")));
        }
        Err(_) => return Err(UpstreamError::Timeout),
    };
    let status = response.status();
    match response_check::judge(status, response.headers_mut(), interim.seen.load(Ordering::Relaxed)) {
        Verdict::Sound => {
            if let (UpstreamClient::Http1(pool), Some(lease)) = (&client, lease) {
                keep(pool, lease, status);
            }
            Ok(response)
        }
        Verdict::Doubtful => {
            poison(h2c.as_ref());
            Ok(response)
        }
        Verdict::Refused(why) => {
            poison(h2c.as_ref());
            Err(UpstreamError::Failed(why.to_string()))
        }
    }
}

/// Puts an HTTP/1.1 connection whose response was sound back in its worker's list,
/// unless it switched protocols (a tunnel now).
fn keep(pool: &Http1Pool, lease: Lease, status: StatusCode) {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        pool.keep(lease);
    }
}

/// The interim (1xx) responses one request got, and the signal that there were too many.
#[derive(Default)]
struct Interim {
    seen: AtomicUsize,
    storm: Notify,
}

impl Interim {
    fn add(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) == MAX_INTERIM {
            self.storm.notify_one();
        }
    }
}

/// Keeps the h2c connection that carried a request out of the pool from now on (an
/// HTTP/1.1 connection is kept out by not being put back).
fn poison(connection: Option<&CaptureConnection>) {
    if let Some(connected) = connection.map(CaptureConnection::connection_metadata) {
        if let Some(connected) = connected.as_ref() {
            connected.poison();
        }
    }
}
