//! The proxy listener: accept loop bounded by `max_connections`, HTTP/1.1 and h2c (prior
//! knowledge) through hyper-util's auto builder, the protective timeouts, and graceful
//! shutdown of every open connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::pipeline::{self, ConnectionInfo};

/// HTTP/2: streams one client may have open at once on a connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2: reset streams a client may leave pending (the "rapid reset" attack).
const H2_MAX_PENDING_RESETS: usize = 50;

/// Serves the proxy listener until `stop` is cancelled, then lets open connections finish
/// (HTTP/1.1 responses get `Connection: close`, HTTP/2 connections a GOAWAY).
pub async fn serve(listener: TcpListener, app: Arc<App>, stop: CancellationToken) {
    let builder = Arc::new(connection_builder(&app));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(app.settings.server.max_connections));
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
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _active = app.metrics.connection_opened();
            serve_connection(stream, ConnectionInfo { peer, tls: false }, app, builder, watcher).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn connection_builder(app: &App) -> auto::Builder<TokioExecutor> {
    let limits = &app.settings.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer the header-read timeout does nothing.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One connection. hyper's header timer neither covers the wait for the first bytes nor
/// the auto builder's HTTP/1-or-2 sniffing (hyperium/hyper#3962), so until the first
/// request head is complete the whole connection is bounded by `header_read_timeout`.
async fn serve_connection(
    stream: TcpStream,
    info: ConnectionInfo,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let first_head = Arc::new(AtomicBool::new(false));
    let seen = first_head.clone();
    let handler_app = app.clone();
    let service = service_fn(move |request| {
        seen.store(true, Ordering::Relaxed);
        let app = handler_app.clone();
        async move { Ok::<_, std::convert::Infallible>(pipeline::handle(app, info, request).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let connection = watcher.watch(connection.into_owned());
    tokio::pin!(connection);
    tokio::select! {
        result = &mut connection => {
            log_connection_end(result);
            return;
        }
        _ = tokio::time::sleep(app.settings.server.header_read_timeout) => {}
    }
    if !first_head.load(Ordering::Relaxed) {
        tracing::debug!(peer = %info.peer, "no complete request head within header_read_timeout; closing");
        return;
    }
    log_connection_end(connection.await);
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
