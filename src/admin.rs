//! The admin listeners: the health listener of docs/reference.md §5.1 (`/metrics`, `/healthz`,
//! `/readyz`; never proxied), and the connection loop it shares with the key and tenant
//! API ([`crate::admin_api`]).
//!
//! The admin listeners are bounded like the proxy's: at most `admin.max_connections`
//! connections each (more wait in the kernel's backlog), and a watchdog per connection
//! over the bytes it moves ([`Watch`]): the first request head within
//! `header_read_timeout`, an idle connection (HTTP/1.1 or HTTP/2: no request in flight and
//! nothing moving) closed after `idle_timeout`, a request in flight closed after
//! `body_timeout` without progress. hyper's own HTTP/1 header timer bounds later heads.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::io::{IoObserver, ObservedIo};
use crate::settings::Server;
use crate::state::App;

/// How often each admin connection's watchdog looks at its clock.
const WATCHDOG_TICK: Duration = Duration::from_millis(250);

/// Serves the health endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: CancellationToken) {
    let limits = AdminLimits::of(&app);
    serve_connections(listener, limits, stop, "admin", move |request, _peer| {
        let app = app.clone();
        async move { respond(&app, &request) }
    })
    .await;
}

/// What bounds an admin listener: `[server]`'s timeouts and `admin.max_connections`.
#[derive(Clone)]
pub(crate) struct AdminLimits {
    pub timeouts: Server,
    pub max_connections: usize,
}

impl AdminLimits {
    pub fn of(app: &App) -> AdminLimits {
        let settings = app.settings();
        AdminLimits { timeouts: settings.server.clone(), max_connections: settings.admin.max_connections }
    }
}

/// The connection loop of an admin listener: HTTP/1.1 and h2c, at most
/// `max_connections` at once, each under a [`Watch`], each request answered by `answer`
/// with the peer's address; on `stop`, no new connections, and those in flight finish.
pub(crate) async fn serve_connections<F, Fut>(
    listener: TcpListener,
    limits: AdminLimits,
    stop: CancellationToken,
    what: &'static str,
    answer: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.timeouts.header_read_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let timeouts = Arc::new(limits.timeouts);
    loop {
        // Past `max_connections`, new connections wait in the kernel's accept queue.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let answer = answer.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timeouts = timeouts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let watch = Arc::new(Watch::new());
            let requests = watch.clone();
            let service = service_fn(move |request| {
                let in_flight = requests.request_started();
                let answer = answer.clone();
                async move {
                    let response = answer(request, peer).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(response)
                }
            });
            let io = TokioIo::new(ObservedIo::new(stream, watch.clone()));
            let connection = watcher.watch(builder.serve_connection(io, service).into_owned());
            tokio::pin!(connection);
            let mut tick = tokio::time::interval(WATCHDOG_TICK);
            loop {
                tokio::select! {
                    _ = &mut connection => return,
                    _ = tick.tick() => if let Some(why) = watch.expired(&timeouts) {
                        tracing::debug!(peer = %peer, listener = what, reason = why, "closing connection");
                        return;
                    },
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One admin connection's watchdog: when it last moved a byte, whether a request head has
/// been seen, and how many requests are in flight. Admin answers are small and quick, so
/// one rule per state is enough (the proxy's watchdog in `server.rs` also tells a head
/// in progress from an idle HTTP/1.1 connection; here hyper's header timer does that).
struct Watch {
    born: Instant,
    /// Milliseconds since `born` (plus one) of the last byte read or written.
    last_progress: AtomicU64,
    /// Requests whose answer is not ready yet.
    in_flight: AtomicUsize,
    /// Milliseconds since `born` (plus one) of the first complete request head; 0 = none yet.
    served: AtomicU64,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            born: Instant::now(),
            last_progress: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _ = self.served.compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, limits: &Server) -> Option<&'static str> {
        let now = self.now();
        let since = |at: u64| Duration::from_millis(now.saturating_sub(at));
        if self.served.load(Ordering::Acquire) == 0 {
            // Protocol sniffing and the first head: a connection that never asks anything.
            return (since(1) > limits.header_read_timeout).then_some("header_read_timeout");
        }
        let quiet = since(self.last_progress.load(Ordering::Relaxed));
        if self.in_flight.load(Ordering::Acquire) > 0 {
            (quiet > limits.body_timeout).then_some("body_timeout")
        } else {
            (quiet > limits.idle_timeout).then_some("idle_timeout")
        }
    }
}

/// A request of an admin connection in flight, until its answer is ready.
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let watch = &self.0;
        watch.last_progress.store(watch.now(), Ordering::Relaxed);
        watch.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl IoObserver for Watch {
    fn on_read(&self, _bytes: usize) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
    }

    fn on_write(&self, _bytes: usize) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
    }
}

fn respond(app: &App, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", app.metrics().encode()),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => readyz(app),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics, /healthz, /readyz\n".into()),
    }
}

/// 200 once listeners are bound and a policy is loaded, until shutdown begins. The body
/// says what was checked. A store outage does not make keygate unready.
fn readyz(app: &App) -> Response<Full<Bytes>> {
    let draining = app.is_draining();
    let started = app.is_started();
    let ready = started && !draining;
    let policy = app.policy();
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "listeners_bound": started,
        "policy": {"loaded": true, "hash": policy.hash, "routes": policy.routes.len()},
        "store": store_state(app),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "application/json", body.to_string())
}

/// What `/readyz` says of the store: its kind and, for Redis, whether the breaker is closed.
fn store_state(app: &App) -> serde_json::Value {
    let keys = app.keys().store().kind();
    match app.redis() {
        None => serde_json::json!({"keys": keys, "limits": "local", "state": "up"}),
        Some(client) => serde_json::json!({
            "keys": keys,
            "limits": if app.settings().limits.backend == crate::settings::LimitBackend::Redis { "redis" } else { "local" },
            "redis": if client.is_cluster() { "cluster" } else { "single" },
            "state": if client.is_up() { "up" } else { "down" },
        }),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
