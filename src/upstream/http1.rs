//! HTTP/1.1 upstream connections, kept per worker thread: hyper's connection-level client
//! (`hyper::client::conn::http1`) and a plain list of idle connections, in place of the
//! general pooled client, which h2c upstreams keep ([`super::pool`]).
//!
//! A worker's requests to one upstream take the connection returned last that is ready
//! for another request (LIFO: the warmest), else open one. What the general client did
//! and keygate relies on is done here too:
//! - **retry**: a request whose reused connection closed before the request was written
//!   (hyper hands the request back unsent) is tried again on another, or a new one; a
//!   request is never retried once any of it may have been written, nor on a new
//!   connection;
//! - **idle timeout**: a connection unused for [`idle::IDLE_TIMEOUT`] (checked every
//!   [`idle::IDLE_SWEEP`], so 90–135 s) is closed;
//! - **upgrades**: every connection runs with hyper's upgrade support, so an upstream 101
//!   can become a WebSocket tunnel; an upgraded connection never serves another request;
//! - `connect_timeout`, `TCP_NODELAY` and name resolution: the same connector
//!   ([`super::connector`]);
//! - the 16 KiB read buffer (`max_buf_size`), `Host` from the upstream's authority when
//!   the request has none, the origin-form request target.
//!
//! A connection goes back to the list when its response head has been judged sound
//! ([`Http1Pool::keep`]); one that is still streaming its body is not ready and is
//! skipped until it is. A connection whose response was refused or doubtful, timed out,
//! or whose request was cancelled is dropped instead, and hyper closes it once its
//! response (if any) is done.
//!
//! Because the pool knows when a request is about to be written on a connection that
//! served one before, the connection's reads ask the kernel for bytes the runtime has not
//! seen yet only then, once, instead of every time a read would wait (see
//! [`super::connector`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};

use super::connector::Connector;
use super::idle::{self, IdleList, Pick, Seen};
use crate::body::ProxyBody;

/// One worker's HTTP/1.1 connections to one upstream.
pub(super) struct Http1Pool {
    connector: Connector,
    builder: Builder,
    /// `http://authority/`: what the connector connects to.
    target: Uri,
    /// `Host` for a request that has none (HTTP/1.0 clients), as the general client wrote it.
    host: Option<HeaderValue>,
    /// Kept connections: idle, or still streaming a response body.
    idle: IdleList<Lease>,
}

/// A connection taken for one request. Dropped, it is closed once its response is done;
/// [`Http1Pool::keep`] puts it back.
pub(super) struct Lease {
    sender: SendRequest<ProxyBody>,
    check_reads: Arc<AtomicBool>,
}

impl Http1Pool {
    /// A pool for `authority`; spawns its idle sweep on the current runtime, if any (the
    /// sweep ends when the pool is dropped).
    pub(super) fn new(authority: &Authority, connector: Connector) -> Arc<Http1Pool> {
        let mut builder = Builder::new();
        // Slow readers (issue 12): an upstream connection reads ahead at most 16 KiB
        // (hyper's default grows to about 400 KiB). Each body chunk is a slice of that
        // buffer and a client that reads slowly holds its chunks, so this bounds what a
        // stalled download keeps (README, "Protective limits"); an upstream response head
        // must fit in it too, or it is a 502.
        builder.max_buf_size(16 * 1024);
        let target = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("an upstream authority makes a valid URI");
        let pool = Arc::new(Http1Pool {
            connector,
            builder,
            target,
            host: HeaderValue::from_str(authority.as_str()).ok(),
            idle: IdleList::new(),
        });
        idle::spawn_sweeps(&pool, Http1Pool::sweep);
        pool
    }

    /// Sends `request` (origin-form target written here) on an idle connection or a new
    /// one; the response head, and the connection to [`Http1Pool::keep`] or drop.
    pub(super) async fn send(&self, mut request: Request<ProxyBody>) -> Result<(Response<Incoming>, Lease), String> {
        if !request.headers().contains_key(HOST) {
            if let Some(host) = &self.host {
                request.headers_mut().insert(HOST, host.clone());
            }
        }
        loop {
            let (mut lease, reused) = match self.checkout() {
                Some(lease) => (lease, true),
                // Boxed: connecting (name resolution, the connector's timeout, the
                // handshake) is a large future and the rare case; inline, it would make
                // every request's future that large, copied on every move.
                None => (Box::pin(self.connect()).await?, false),
            };
            match lease.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, lease)),
                Err(mut failed) => match failed.take_message() {
                    // Not written: the idle connection had closed. Another one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(format!("client error (SendRequest): {}", error_chain(&failed.into_error()))),
                },
            }
        }
    }

    /// Puts a connection back after a sound response head (it serves the next request
    /// once its body is done).
    pub(super) fn keep(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        self.idle.put(lease);
    }

    /// The last-returned connection that is ready, with its next reads set to ask the
    /// kernel; closed ones are dropped on the way, busy ones (still streaming) skipped.
    fn checkout(&self) -> Option<Lease> {
        let lease = self.idle.take(|lease| {
            if lease.sender.is_closed() {
                Pick::Close
            } else if lease.sender.is_ready() {
                Pick::Take
            } else {
                Pick::Skip
            }
        })?;
        lease.check_reads.store(true, Ordering::Release);
        Some(lease)
    }

    /// A new connection: connected within the upstream's `connect_timeout`, its hyper
    /// connection task spawned on this worker.
    async fn connect(&self) -> Result<Lease, String> {
        let (io, check_reads) = self
            .connector
            .connect_http1(self.target.clone())
            .await
            .map_err(|e| format!("client error (Connect): {}", error_chain(&*e)))?;
        let (sender, connection) = self
            .builder
            .handshake::<_, ProxyBody>(io)
            .await
            .map_err(|e| format!("client error (Connect): {}", error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection error");
            }
        });
        Ok(Lease { sender, check_reads })
    }

    /// Closes the connections that stayed idle through [`idle::IDLE_SWEEPS`] sweeps.
    fn sweep(&self) {
        self.idle.sweep(|lease| {
            if lease.sender.is_closed() {
                Seen::Closed
            } else if lease.sender.is_ready() {
                Seen::Idle
            } else {
                Seen::Busy
            }
        });
    }

    /// Connections in the list now (tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

/// Why a client call failed, with every cause in the chain (hyper's errors say little on
/// their own).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;

    use super::*;
    use crate::upstream::connector::tests::read_head;
    use crate::upstream::idle::IDLE_SWEEPS;

    /// An upstream whose connection `n` answers `c<n>` to each request; with `close_first`,
    /// connection 0 closes after its first answer once told to. Every close is reported.
    fn upstream(
        close_first: Option<std::sync::mpsc::Receiver<()>>,
    ) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, closes) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut close_first = close_first;
            for n in 0.. {
                let Ok((mut stream, _)) = listener.accept() else { return };
                let closed = closed.clone();
                let close = if n == 0 { close_first.take() } else { None };
                std::thread::spawn(move || {
                    while read_head(&mut stream) {
                        let body = format!("c{n}");
                        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(answer.as_bytes()).is_err() {
                            break;
                        }
                        if let Some(go) = &close {
                            let _ = go.recv();
                            break;
                        }
                    }
                    drop(stream);
                    let _ = closed.send(n);
                });
            }
        });
        (addr, closes)
    }

    fn pool(addr: std::net::SocketAddr) -> Arc<Http1Pool> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(true);
        Http1Pool::new(&addr.to_string().parse().unwrap(), Connector::new(connector))
    }

    async fn get(pool: &Http1Pool) -> String {
        let request = Request::get("/").body(crate::body::empty()).unwrap();
        let (response, lease) = pool.send(request).await.expect("a response");
        pool.keep(lease);
        let body = response.into_body().collect().await.expect("the body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_request_whose_idle_connection_closed_is_retried_on_a_new_one() {
        let (go, close) = std::sync::mpsc::channel();
        let (addr, closes) = upstream(Some(close));
        let pool = pool(addr);
        assert_eq!(get(&pool).await, "c0");
        assert_eq!(pool.idle_count(), 1, "the connection went back to the list");
        // Let the connection become ready for another request.
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        // The upstream closes it while this (single) thread blocks, so the runtime has not
        // seen the close when the next request takes the connection: hyper finds it
        // closed before writing and hands the request back, and it goes on a new one.
        go.send(()).unwrap();
        assert_eq!(closes.recv().unwrap(), 0);
        assert_eq!(get(&pool).await, "c1", "sent again, on a new connection");
        assert_eq!(get(&pool).await, "c1", "which is reused");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_idle_sweeps() {
        let (addr, closes) = upstream(None);
        let pool = pool(addr);
        assert_eq!(get(&pool).await, "c0");
        assert_eq!(pool.idle_count(), 1);
        // Let the connection become ready for another request (a ready one is idle).
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        // The sweeps the pool's task runs every IDLE_SWEEP.
        for sweep in 1..=IDLE_SWEEPS + 1 {
            pool.sweep();
            let expected = usize::from(sweep <= IDLE_SWEEPS);
            assert_eq!(pool.idle_count(), expected, "after {sweep} sweeps");
        }
        // Dropped from the list, the connection is closed.
        assert_eq!(tokio::task::spawn_blocking(move || closes.recv().unwrap()).await.unwrap(), 0);
    }
}
