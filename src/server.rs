//! The proxy listener and the authorizer listener ([`Role`]): accept loop bounded by `max_connections`, the worker threads that
//! serve the connections ([`Workers`]), TLS (HTTP/1.1 and HTTP/2 by ALPN) or plain
//! (HTTP/1.1 and h2c by prior knowledge) through hyper-util's auto builder, the
//! protective timeouts of `[server]`, and graceful shutdown.
//!
//! The timeouts are enforced here, by a per-connection watchdog over an I/O wrapper that
//! notes every byte read and written (a flag, turned into a time at the watchdog's next
//! tick: [`Activity`]), rather than by hyper's own header timer: that timer
//! covers neither the TLS handshake nor the auto builder's HTTP/1-or-2 sniffing
//! (hyperium/hyper#3962), and for a keep-alive connection it also starts at once after a
//! response, so it cannot tell `idle_timeout` from `header_read_timeout`. The rules:
//! - until the first request head is complete (TLS handshake and sniffing included), and
//!   from the first byte of every later HTTP/1.1 head: `header_read_timeout`;
//! - no request in flight and nothing arriving: `idle_timeout`;
//! - a request in flight and no byte moving either way: `body_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::body::{Holding, ProxyBody};
use crate::connection::{ConnectionHold, ConnectionInfo};
use crate::error::Refusal;
use crate::io::{IoObserver, ObservedIo};
use crate::pipeline;
use crate::state::App;
use crate::tls::Tls;

/// HTTP/2: streams one client may have open at once on a connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2: reset streams a client may leave pending (the "rapid reset" attack).
const H2_MAX_PENDING_RESETS: usize = 50;
/// HTTP/2: streams keygate may reset for the client's protocol errors (a malformed
/// request, a bad window update) before it ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM, so that errors cannot make it do work forever.
const H2_MAX_ERROR_RESETS: usize = 256;
/// HTTP/2: response bytes one stream may have waiting for the client's flow-control
/// window (h2's default is 400 KiB). With the upstream's 16 KiB read buffer
/// (`upstream::pool`), this bounds what a stalled download holds.
const H2_MAX_SEND_BUFFER: usize = 16 * 1024;
/// How often each connection's watchdog looks at its clock.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// The proxy's workers: `server.workers` threads, each running a single-threaded Tokio
/// runtime of its own, like nginx's worker processes. A connection lives on one worker
/// from accept to close, with everything its requests wake: the HTTP connection, the
/// pooled upstream connections that worker opened ([`crate::upstream::Upstreams`] keeps
/// a pool per worker), timers. Nothing a request does hands work to another thread,
/// except the shared Redis connection's replies. A multi-threaded work-stealing runtime
/// moved each request's tasks between threads, and waking a sleeping thread costs more
/// than the request's own work (measured in docs/benchmarks.md).
///
/// One acceptor (the task running [`serve`]) hands each accepted connection to the
/// worker with the fewest open connections.
pub struct Workers {
    workers: Vec<Worker>,
    /// Connections closed so far, on every worker.
    closed: Arc<AtomicU64>,
}

struct Worker {
    runtime: tokio::runtime::Handle,
    queue: mpsc::UnboundedSender<Accepted>,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
    /// Closed when the worker's thread has finished (its connections drained).
    finished: oneshot::Receiver<()>,
}

/// An accepted connection on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    role: Role,
}

/// Which listener accepted a connection, hence which service answers its requests: the
/// same workers, bounds, timeouts and TLS machinery serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[listen]`: requests are decided and forwarded ([`pipeline::handle`]).
    Proxy,
    /// `[authorizer]`: requests are decided and the decision answered
    /// ([`crate::authorizer::handle`]).
    Authorizer,
}

/// Each listener's TLS (none: plain HTTP/1.1 and h2c).
#[derive(Clone, Default)]
pub struct ListenerTls {
    pub proxy: Option<Arc<Tls>>,
    pub authorizer: Option<Arc<Tls>>,
}

impl ListenerTls {
    fn of(&self, role: Role) -> Option<Arc<Tls>> {
        match role {
            Role::Proxy => self.proxy.clone(),
            Role::Authorizer => self.authorizer.clone(),
        }
    }
}

impl Workers {
    /// Starts `app.settings().server.workers` threads, idle until connections arrive.
    pub fn start(app: &Arc<App>, tls: ListenerTls) -> std::io::Result<Workers> {
        let count = app.settings().server.workers.max(1);
        let mut workers = Vec::with_capacity(count);
        let closed = Arc::new(AtomicU64::new(0));
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (queue, connections) = mpsc::unbounded_channel();
            let (done, finished) = oneshot::channel();
            let open = Arc::new(AtomicUsize::new(0));
            let handle = runtime.handle().clone();
            let (app, tls, worker_open, closed) = (app.clone(), tls.clone(), open.clone(), closed.clone());
            std::thread::Builder::new().name(format!("keygate-worker-{index}")).spawn(move || {
                crate::worker::enter(index);
                runtime.block_on(run_worker(connections, app, tls, worker_open, closed));
                // Dropping the runtime here ends what is left on it (a WebSocket tunnel).
                drop(runtime);
                let _ = done.send(());
            })?;
            workers.push(Worker { runtime: handle, queue, open, finished });
        }
        Ok(Workers { workers, closed })
    }

    /// Each worker's runtime, to start work that must live on a given worker.
    pub fn runtimes(&self) -> Vec<tokio::runtime::Handle> {
        self.workers.iter().map(|w| w.runtime.clone()).collect()
    }

    /// Hands a connection to the worker with the fewest open connections.
    fn dispatch(&self, accepted: Accepted) {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else {
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(_lost)) = worker.queue.send(accepted) {
            // The worker's thread is gone (it cannot be, short of a panic): the connection
            // is closed rather than left hanging.
            worker.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a proxy worker has stopped; connection closed");
        }
    }

    /// Stops handing out connections and waits until every worker has drained its own.
    async fn finish(self) {
        let mut finished = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.queue);
            finished.push(worker.finished);
        }
        for done in finished {
            let _ = done.await;
        }
    }
}

/// One worker's loop: serves the connections it is handed until the acceptor stops, then
/// lets them finish (HTTP/1.1 responses get `Connection: close`, HTTP/2 connections a
/// GOAWAY).
async fn run_worker(
    mut connections: mpsc::UnboundedReceiver<Accepted>,
    app: Arc<App>,
    tls: ListenerTls,
    open: Arc<AtomicUsize>,
    closed: Arc<AtomicU64>,
) {
    let builder = Arc::new(connection_builder(&app));
    let graceful = GracefulShutdown::new();
    while let Some(Accepted { stream, peer, permit, role }) = connections.recv().await {
        let open = OpenConnection { open: open.clone(), closed: closed.clone() };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register an accepted connection");
                continue;
            }
        };
        let (app, builder, watcher, tls) = (app.clone(), builder.clone(), graceful.watcher(), tls.of(role));
        tokio::spawn(async move {
            // Released when the connection ends, or its WebSocket tunnel if that is later.
            let hold: ConnectionHold = Arc::new((permit, open, app.metrics().connection_opened()));
            let info = ConnectionInfo { peer, tls: tls.is_some(), hold: Some(hold) };
            serve_connection(stream, info, role, app, builder, watcher, tls).await;
        });
    }
    graceful.shutdown().await;
}

/// Counts a connection as open on its worker until dropped, then as closed.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    closed: Arc<AtomicU64>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Accepts on the proxy listener and the authorizer listener (each optional) until
/// `stop` is cancelled, handing each connection to a worker; then waits until the workers
/// have let their open connections finish. `server.max_connections` bounds both
/// listeners' connections together.
pub async fn serve(
    proxy: Option<TcpListener>,
    authorizer: Option<TcpListener>,
    workers: Workers,
    app: Arc<App>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(app.settings().server.max_connections));
    let housekeeping = tokio::spawn(return_freed_memory(workers.closed.clone()));
    let accept = |listener: Option<TcpListener>, role: Role| {
        let (slots, workers, stop) = (slots.clone(), &workers, stop.clone());
        async move {
            if let Some(listener) = listener {
                accept_loop(listener, role, slots, workers, stop).await;
            }
        }
    };
    tokio::join!(accept(proxy, Role::Proxy), accept(authorizer, Role::Authorizer));
    workers.finish().await;
    housekeeping.abort();
}

/// One listener's accept loop, until `stop` is cancelled (the listener is closed then).
async fn accept_loop(
    listener: TcpListener,
    role: Role,
    slots: Arc<Semaphore>,
    workers: &Workers,
    stop: CancellationToken,
) {
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
        match stream.into_std() {
            Ok(stream) => workers.dispatch(Accepted { stream, peer, permit, role }),
            Err(e) => tracing::warn!(error = %e, "cannot hand an accepted connection to a worker"),
        }
    }
}

/// How often [`return_freed_memory`] looks, and how many times it nudges after a close.
const NUDGE_EVERY: Duration = Duration::from_secs(1);
const NUDGES_AFTER_A_CLOSE: u32 = 4;

/// Lets the allocator give closed connections' memory back to the OS. mimalloc (the
/// binary's allocator) does that lazily: memory freed now is purged once its purge delay
/// (1 s) has passed, but only when some thread frees a page again after that. When
/// connections close and keygate goes quiet, nothing is freed any more, and what the
/// closed connections held would stay resident (100 stalled downloads left 100 MB
/// behind). So for a few seconds after connections close, this frees one block a second
/// larger than mimalloc's large objects (512 KiB): such a block goes back to the arena at
/// once, and that is when mimalloc purges what is due. The block is never written to, so
/// it costs address space, not memory; under another allocator it is a harmless
/// allocation.
async fn return_freed_memory(closed: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(NUDGE_EVERY);
    let (mut seen, mut nudges) = (0, 0);
    loop {
        tick.tick().await;
        let now = closed.load(Ordering::Relaxed);
        if now != seen {
            (seen, nudges) = (now, NUDGES_AFTER_A_CLOSE);
        }
        if nudges > 0 {
            nudges -= 1;
            drop(std::hint::black_box(Vec::<u8>::with_capacity(1 << 20)));
        }
    }
}

fn connection_builder(app: &App) -> auto::Builder<TokioExecutor> {
    let limits = &app.settings().server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses a buffer under 8 KiB; smaller `max_header_bytes` are enforced on the
    // parsed head in `respond` (431 either way).
    builder.http1().timer(TokioTimer::new()).max_buf_size(limits.max_header_bytes.max(8192));
    // The watchdog enforces `header_read_timeout` and `idle_timeout` (module doc). hyper's
    // own header timer (30 s unless set) would cost a timer per request, and since it
    // starts again as soon as a response is sent it would close every idle keep-alive
    // connection after 30 s, whatever `idle_timeout` says.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// One connection: TLS handshake (if any), then HTTP, under the watchdog.
async fn serve_connection(
    stream: TcpStream,
    info: ConnectionInfo,
    role: Role,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<Arc<Tls>>,
) {
    let activity = Arc::new(Activity::new());
    let limits = app.settings().server.clone();
    match tls {
        Some(tls) => {
            let acceptor = tls.acceptor();
            let handshake = crate::tls::handshake(&acceptor, stream);
            let stream = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok((stream, _alpn))) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %info.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %info.peer, "TLS handshake not finished within header_read_timeout");
                    return;
                }
            };
            run_http(ObservedIo::new(stream, activity.clone()), info, role, app, builder, watcher, activity).await;
        }
        None => run_http(ObservedIo::new(stream, activity.clone()), info, role, app, builder, watcher, activity).await,
    }
}

async fn run_http<IO>(
    io: Tracked<IO>,
    info: ConnectionInfo,
    role: Role,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    activity: Arc<Activity>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.settings().server.clone();
    let service_activity = activity.clone();
    let peer = info.peer;
    let service = service_fn(move |request: Request<Incoming>| {
        let guard = InFlight::start(&service_activity, request.version());
        let (app, info) = (app.clone(), info.clone());
        async move {
            let response = respond(app, info, role, request).await;
            // The request stays in flight until its response body is done.
            Ok::<_, std::convert::Infallible>(response.map(|body| Holding::new(body, guard)))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let connection = watcher.watch(connection.into_owned());
    match watched(connection, &activity, &limits).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "connection ended with an error"),
        Err(why) => tracing::debug!(peer = %peer, reason = why, "closing connection"),
    }
}

/// Runs `connection` under `activity`'s watchdog: its own outcome when it ends, or the
/// reason it had to be closed (dropping it closes it) when `limits` say so. The proxy's
/// connections and the admin listeners' run under the same rules.
pub(crate) async fn watched<F, T>(
    connection: F,
    activity: &Activity,
    limits: &crate::settings::Server,
) -> Result<T, &'static str>
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(WATCHDOG_TICK);
    loop {
        tokio::select! {
            outcome = &mut connection => return Ok(outcome),
            _ = tick.tick() => {
                if let Some(why) = activity.expired(limits) {
                    return Err(why);
                }
            }
        }
    }
}

/// The request head's size (request line and headers), as `max_header_bytes` counts it.
fn head_bytes<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + uri.authority().map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + line
}

async fn respond(app: Arc<App>, info: ConnectionInfo, role: Role, request: Request<Incoming>) -> Response<ProxyBody> {
    if role == Role::Authorizer {
        if head_bytes(&request) > app.settings().server.max_header_bytes {
            return crate::authorizer::refuse(&app, &request, Refusal::HeadersTooLarge);
        }
        return Box::pin(crate::authorizer::handle(app, info, request)).await;
    }
    if head_bytes(&request) > app.settings().server.max_header_bytes {
        return pipeline::refuse(&app, &request, Refusal::HeadersTooLarge);
    }
    // Boxed: the pipeline's future is large (every phase's state), and hyper moves the
    // service's future around; a box makes each move a pointer copy.
    Box::pin(pipeline::handle(app, info, request)).await
}

/// What the watchdog knows of one connection, in milliseconds since it was accepted
/// (0 meaning "not yet").
///
/// The request path reads no clock for it: a read, a write or the end of a request only
/// raises a flag, and the watchdog turns the flags into times when it next looks
/// ([`Activity::expired`], every [`WATCHDOG_TICK`]). Each time it keeps is therefore up to
/// one tick late, so each timeout holds to within a tick (100 ms, against timeouts of
/// seconds), and a request costs no clock read here (it cost three).
pub(crate) struct Activity {
    born: Instant,
    /// Last tick that saw a byte read or written.
    last_progress: AtomicU64,
    /// When the connection last became idle (no request in flight), as a tick saw it.
    idle_since: AtomicU64,
    /// First byte of a request head read while idle (HTTP/1.1), as a tick saw it;
    /// cleared when the head completes.
    head_started: AtomicU64,
    /// A byte was read or written since the last tick.
    moved: AtomicBool,
    /// A byte was read while idle since the last tick (a head has started).
    head_seen: AtomicBool,
    /// The last request in flight ended since the last tick.
    went_idle: AtomicBool,
    in_flight: AtomicUsize,
    /// A first request head has completed.
    served: AtomicBool,
    /// HTTP/2: heads are frames, not a byte stream between requests.
    h2: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            born: Instant::now(),
            last_progress: AtomicU64::new(1),
            idle_since: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            moved: AtomicBool::new(false),
            head_seen: AtomicBool::new(false),
            went_idle: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn on_bytes_read(&self) {
        self.moved.store(true, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.h2.load(Ordering::Relaxed) {
            self.head_seen.store(true, Ordering::Relaxed);
        }
    }

    fn on_bytes_written(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Turns the flags raised since the last look into times: `now`.
    fn note(&self, now: u64) {
        if self.moved.swap(false, Ordering::Relaxed) {
            self.last_progress.store(now, Ordering::Relaxed);
        }
        if self.head_seen.swap(false, Ordering::AcqRel) && self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
        }
        if self.went_idle.swap(false, Ordering::Relaxed) {
            self.idle_since.store(now, Ordering::Relaxed);
        }
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, limits: &crate::settings::Server) -> Option<&'static str> {
        self.expired_at(self.now(), limits)
    }

    /// [`Activity::expired`] at `now` (ms since the connection was accepted, plus 1).
    fn expired_at(&self, now: u64, limits: &crate::settings::Server) -> Option<&'static str> {
        self.note(now);
        let since = |at: u64| Duration::from_millis(now.saturating_sub(at));
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (since(self.last_progress.load(Ordering::Relaxed)) > limits.body_timeout).then_some("body_timeout");
        }
        if !self.served.load(Ordering::Acquire) {
            // Accept → complete first head, handshake and sniffing included.
            return (since(1) > limits.header_read_timeout).then_some("header_read_timeout");
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 && since(head) > limits.header_read_timeout {
            return Some("header_read_timeout");
        }
        // HTTP/2 frames that carry no request (PING, SETTINGS, WINDOW_UPDATE) move bytes
        // too, but they must not hold an idle connection open: its idle time runs from
        // the end of its last request.
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        let idle_from = match self.h2.load(Ordering::Relaxed) {
            true => idle_since,
            false => idle_since.max(self.last_progress.load(Ordering::Relaxed)),
        };
        (head == 0 && since(idle_from) > limits.idle_timeout).then_some("idle_timeout")
    }
}

/// One request in flight on a connection, from its complete head until its response body
/// is finished (or dropped).
pub(crate) struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    pub(crate) fn start(activity: &Arc<Activity>, version: Version) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        activity.head_seen.store(false, Ordering::Release);
        activity.served.store(true, Ordering::Release);
        if version == Version::HTTP_2 {
            activity.h2.store(true, Ordering::Relaxed);
        }
        InFlight { activity: activity.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.activity.went_idle.store(true, Ordering::Relaxed);
        }
    }
}

impl IoObserver for Activity {
    fn on_read(&self, _bytes: usize) {
        self.on_bytes_read();
    }

    fn on_write(&self, _bytes: usize) {
        self.on_bytes_written();
    }
}

/// A connection's stream, telling its [`Activity`] about every byte moved.
type Tracked<IO> = ObservedIo<IO, Activity>;

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> crate::settings::Server {
        crate::settings::Server {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            ..Default::default()
        }
    }

    /// A connection that served one request: its first head complete, then idle at `at`.
    fn served_and_idle(at: u64) -> Arc<Activity> {
        let activity = Arc::new(Activity::new());
        activity.on_bytes_read();
        drop(InFlight::start(&activity, Version::HTTP_11));
        assert_eq!(activity.expired_at(at, &limits()), None);
        activity
    }

    #[test]
    fn a_head_started_while_idle_is_timed_from_the_tick_that_saw_its_first_byte() {
        let limits = limits();
        let activity = served_and_idle(1_000);
        // Idle 5 s, then one byte of the next head.
        assert_eq!(activity.expired_at(6_000, &limits), None);
        activity.on_bytes_read();
        assert_eq!(activity.expired_at(6_100, &limits), None);
        assert_eq!(activity.expired_at(16_100, &limits), None, "10 s since the tick that saw it");
        assert_eq!(activity.expired_at(16_101, &limits), Some("header_read_timeout"));
        // Bytes that keep trickling in do not restart the head's clock.
        let activity = served_and_idle(1_000);
        activity.on_bytes_read();
        assert_eq!(activity.expired_at(1_100, &limits), None);
        for tick in 1..100 {
            activity.on_bytes_read();
            assert_eq!(activity.expired_at(1_100 + tick * 100, &limits), None);
        }
        assert_eq!(activity.expired_at(11_200, &limits), Some("header_read_timeout"));
    }

    #[test]
    fn a_completed_head_stops_the_head_clock_and_a_request_in_flight_needs_bytes_moving() {
        let limits = limits();
        let activity = served_and_idle(1_000);
        activity.on_bytes_read();
        let request = InFlight::start(&activity, Version::HTTP_11);
        // The head completed before the watchdog looked: no head is pending.
        assert_eq!(activity.expired_at(1_100, &limits), None);
        assert_eq!(activity.head_started.load(Ordering::Relaxed), 0);
        // In flight, bytes moving: alive however long.
        for tick in 1..=400 {
            activity.on_bytes_written();
            assert_eq!(activity.expired_at(1_100 + tick * 100, &limits), None);
        }
        // Nothing moving for longer than body_timeout.
        assert_eq!(activity.expired_at(41_100 + 30_000, &limits), None);
        assert_eq!(activity.expired_at(41_100 + 30_001, &limits), Some("body_timeout"));
        drop(request);
    }

    #[test]
    fn idle_time_runs_from_the_tick_after_the_last_request_ended() {
        let limits = limits();
        let activity = served_and_idle(1_000);
        let request = InFlight::start(&activity, Version::HTTP_11);
        activity.on_bytes_written();
        assert_eq!(activity.expired_at(50_000, &limits), None);
        drop(request);
        // The tick after the end notes it: idle from 50,100.
        assert_eq!(activity.expired_at(50_100, &limits), None);
        assert_eq!(activity.expired_at(110_100, &limits), None);
        assert_eq!(activity.expired_at(110_101, &limits), Some("idle_timeout"));
    }

    #[test]
    fn a_connection_that_never_completes_a_head_is_timed_from_its_accept() {
        let limits = limits();
        let activity = Activity::new();
        activity.on_bytes_read();
        assert_eq!(activity.expired_at(10_001, &limits), None);
        assert_eq!(activity.expired_at(10_002, &limits), Some("header_read_timeout"));
    }
}
