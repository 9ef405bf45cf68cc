//! The admin listeners: the health listener of docs/reference.md §5.1 (`/metrics`, `/healthz`,
//! `/readyz`; never proxied), and the connection loop it shares with the key and tenant
//! API ([`crate::admin_api`]).
//!
//! The admin listeners are bounded like the proxy's: at most `admin.max_connections`
//! connections each (more wait in the kernel's backlog), and the proxy's per-connection
//! watchdog (`crate::server`'s): the first request head within `header_read_timeout`, an
//! idle connection (HTTP/1.1 or HTTP/2) closed after `idle_timeout`, a request in flight
//! closed after `body_timeout` without progress.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

use crate::body::Holding;
use crate::io::ObservedIo;
use crate::server::{watched, Activity, InFlight};
use crate::settings::Server;
use crate::state::App;

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
            let activity = Arc::new(Activity::new());
            let requests = activity.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let in_flight = InFlight::start(&requests, request.version());
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(request, peer).await.map(|body| Holding::new(body, in_flight))) }
            });
            let io = TokioIo::new(ObservedIo::new(stream, activity.clone()));
            let connection = watcher.watch(builder.serve_connection(io, service).into_owned());
            if let Err(why) = watched(connection, &activity, &timeouts).await {
                tracing::debug!(peer = %peer, listener = what, reason = why, "closing connection");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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

/// 200 once listeners are bound and a policy is loaded, until shutdown begins, provided
/// the Redis keygate uses (if any) has been reached once since start. The body says what
/// was checked, and `reason` why it is not ready. A store outage after that does not
/// make keygate unready.
fn readyz(app: &App) -> Response<Full<Bytes>> {
    let draining = app.is_draining();
    let started = app.is_started();
    let never_reached = app.redis().and_then(|client| client.never_reached());
    let ready = started && !draining && never_reached.is_none();
    let reason = if draining {
        Some("shutting down".to_string())
    } else if !started {
        Some("starting: listeners not bound yet".to_string())
    } else {
        never_reached.clone()
    };
    let policy = app.policy();
    let reload = app.reload_state();
    let body = serde_json::json!({
        "ready": ready,
        "reason": reason,
        "draining": draining,
        "listeners_bound": started,
        "policy": {
            "loaded": true,
            "hash": policy.hash,
            "routes": policy.routes.len(),
            "serving_sha256": policy.hash,
            "disk_sha256": reload.disk_sha256,
            "last_reload_successful": reload.successful,
            "last_reload_error": reload.error,
        },
        "store": store_state(app, never_reached.as_deref()),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "application/json", body.to_string())
}

/// What `/readyz` says of the store: its kind and, for Redis, whether the breaker is
/// closed, whether it has been reached since start and, if not, why.
fn store_state(app: &App, never_reached: Option<&str>) -> serde_json::Value {
    let keys = app.keys().store().kind();
    match app.redis() {
        None => serde_json::json!({"keys": keys, "limits": "local", "state": "up"}),
        Some(client) => serde_json::json!({
            "keys": keys,
            "limits": if app.settings().limits.backend == crate::settings::LimitBackend::Redis { "redis" } else { "local" },
            "redis": if client.is_cluster() { "cluster" } else { "single" },
            "state": if client.is_up() { "up" } else { "down" },
            "reached_since_start": never_reached.is_none(),
            "error": never_reached,
        }),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
