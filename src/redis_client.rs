//! The shared Redis client used by the Redis key store and the Redis rate limiter: one
//! connection (single node or cluster) behind a circuit breaker, every call bounded by
//! a timeout, so that no request waits on a store known to be down (docs/reference.md §4.4).
//!
//! - `redis://`, `rediss://` (TLS, rustls; `ca_file` is then the root to trust, else the
//!   system's roots), `redis+cluster://h1:p1,h2:p2` and `rediss+cluster://…`.
//! - The password comes from `password_file` (trimmed), else `$KEYGATE_REDIS_PASSWORD`,
//!   else the URL. It is never logged nor shown in an error.
//! - [`RedisClient::connect`] tries to connect once (bounded), and does not fail when
//!   Redis is down: keygate starts and serves cached keys or local limits. Until a
//!   connection exists, the breaker is open and calls fail at once. A connection counts
//!   only once Redis has answered a PING on it: a server that accepts the connection but
//!   not the credentials (NOAUTH) is not reached.
//! - Until Redis has been reached once since start, the client says why not
//!   ([`RedisClient::never_reached`]: the exact failure, e.g. a refused password or a name
//!   that does not resolve, described by [`describe_failure`]), and logs it every
//!   [`UNREACHED_LOG_EVERY`]; `/readyz` is 503 meanwhile. Once reached, it logs one line
//!   and a later outage no longer concerns readiness (docs/reference.md §5.1).
//! - While the breaker is open, a background task PINGs every `probe_interval` (each
//!   bounded by `redis.timeout`) and closes it when Redis answers, so recovery does not
//!   wait for traffic. `store_up` mirrors the breaker: 0 exactly while it is not closed.
//! - A connection that stays silent for many probes (a blackholed peer, which TCP alone
//!   may never report) is replaced by a fresh one.
//!
//! Turning `[redis]` into node addresses, password and CA is `redis_client/url.rs`.

mod url;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::clock::{Clock, SystemClock};
use crate::metrics::{Metrics, StoreOp};
pub use url::RedisClientError;
use url::{parse, resolve_password};

// Both are shared across tasks and threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RedisClient>();
    send_sync::<RedisConnection>();
};

/// The environment variable read for the password when `redis.password_file` is unset.
pub const PASSWORD_ENV: &str = "KEYGATE_REDIS_PASSWORD";

/// The shortest bound on establishing a connection (TCP, TLS, AUTH), however short
/// `redis.timeout` is: connecting happens off the request path.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Consecutive failed probes after which the connection is rebuilt from scratch.
const REBUILD_AFTER_PROBES: u32 = 8;

/// How often a keygate that has never reached Redis since start logs why (each attempt,
/// every `probe_interval`, would flood the log).
pub const UNREACHED_LOG_EVERY: Duration = Duration::from_secs(3);

/// A connection to Redis, single node or cluster. Cheap to clone (both are handles to a
/// shared, multiplexed connection); implements [`ConnectionLike`], so commands,
/// pipelines and `Script::invoke_async` run on either.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnected automatically by redis-rs after a disconnection.
    Single(ConnectionManager),
    /// A Redis Cluster: commands are routed by the slot of their keys.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// Why one call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisCallError {
    /// Refused without trying: the breaker is open (Redis known to be down) or no
    /// connection was ever established.
    #[error("Redis is unavailable (circuit breaker open)")]
    Unavailable,
    /// The call took longer than its timeout and was abandoned.
    #[error("Redis call timed out")]
    Timeout,
    /// Redis, or the connection to it, answered with an error: e.g. WRONGTYPE, a
    /// refused connection, a conversion error.
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisCallError {
    /// The Redis error, if that is what this is.
    pub fn redis_error(&self) -> Option<&redis::RedisError> {
        match self {
            RedisCallError::Redis(e) => Some(e),
            _ => None,
        }
    }

    /// True for `Unavailable` and `Timeout`, and for Redis errors that say the store is
    /// unreachable or not serving (I/O, LOADING, CLUSTERDOWN, …) rather than that it
    /// refused this particular command.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisCallError::Unavailable | RedisCallError::Timeout => true,
            RedisCallError::Redis(e) => means_down(e),
        }
    }
}

/// Whether `e` says Redis is unreachable or not serving, so that it counts towards the
/// breaker. Errors in answer to a command (WRONGTYPE, NOSCRIPT, a script error, a reply
/// that did not convert) prove Redis is up.
fn means_down(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::Client
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
    )
}

/// Whether `e` is the expected NOSCRIPT of an EVALSHA whose script is not cached yet:
/// not a store error.
fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// How to (re)build a connection.
enum Target {
    Single { client: redis::Client, config: ConnectionManagerConfig },
    Cluster(redis::cluster::ClusterClient),
}

impl Target {
    async fn connect(&self) -> redis::RedisResult<RedisConnection> {
        match self {
            Target::Single { client, config } => {
                ConnectionManager::new_with_config(client.clone(), config.clone()).await.map(RedisConnection::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(RedisConnection::Cluster),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

struct Shared {
    target: Target,
    pubsub: redis::Client,
    connection: ArcSwapOption<RedisConnection>,
    /// Per proxy worker thread (see [`RedisClient::open_per_worker`]): a connection of its
    /// own, opened on that worker.
    per_worker: OnceLock<Box<[WorkerConnection]>>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    timeout: Duration,
    connect_timeout: Duration,
    /// Where Redis is, for messages: scheme and addresses, never the password.
    endpoint: String,
    /// The first node without credentials, and the credentials, to ask Redis itself why
    /// it refused them (redis-rs reports only "Password authentication failed").
    auth_probe: Option<AuthProbe>,
    /// Whether Redis has answered once since start.
    reached: AtomicBool,
    /// Until then: why the last attempt failed ([`describe_failure`]), and when that was
    /// last logged.
    unreached: Mutex<Unreached>,
}

struct AuthProbe {
    bare: redis::Client,
    username: Option<String>,
    password: String,
}

impl AuthProbe {
    /// Sends `AUTH` on a connection without credentials and returns Redis' error reply
    /// (e.g. `WRONGPASS: invalid username-password pair or user is disabled.`), which
    /// never holds the password.
    async fn refusal(&self, timeout: Duration) -> Option<String> {
        let ask = async {
            let mut connection = self.bare.get_multiplexed_async_connection().await.ok()?;
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = &self.username {
                auth.arg(username);
            }
            auth.arg(&self.password);
            auth.query_async::<()>(&mut connection).await.err().map(|e| e.to_string())
        };
        tokio::time::timeout(timeout, ask).await.ok().flatten()
    }
}

#[derive(Default)]
struct Unreached {
    why: Option<String>,
    logged_at: Option<Instant>,
}

/// A worker's own connection (single-node Redis only), opened lazily on the worker by
/// its first call and dropped whenever the shared connection is rebuilt.
#[derive(Default)]
struct WorkerConnection {
    connection: ArcSwapOption<RedisConnection>,
    opening: AtomicBool,
}

/// The shared Redis client: cheap to clone (an `Arc` inside). The background prober
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("cluster", &self.shared.target.is_cluster())
            .field("timeout", &self.shared.timeout)
            .field("breaker", &self.shared.breaker.state())
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// Builds the client from `[redis]` and tries to connect once (bounded by
    /// `max(redis.timeout, 1s)`). Redis being down is not an error: the client starts
    /// with its breaker open and connects in the background. Errors only for a bad URL
    /// or an unreadable password or CA file. Needs a Tokio runtime.
    pub async fn connect(
        settings: &crate::settings::Redis,
        metrics: Arc<Metrics>,
    ) -> Result<RedisClient, RedisClientError> {
        Self::connect_with(settings, metrics, BreakerConfig::default(), Arc::new(SystemClock)).await
    }

    /// [`RedisClient::connect`] with an explicit breaker configuration and clock.
    pub async fn connect_with(
        settings: &crate::settings::Redis,
        metrics: Arc<Metrics>,
        breaker: BreakerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<RedisClient, RedisClientError> {
        let env_password = std::env::var(PASSWORD_ENV).ok();
        let password = resolve_password(settings.password_file.as_deref(), env_password)?;
        let parsed = parse(&settings.url, password.as_deref(), settings.ca_file.as_deref())?;
        let timeout = settings.timeout;
        let connect_timeout = timeout.max(MIN_CONNECT_TIMEOUT);
        let config_error = |e: redis::RedisError| RedisClientError::Config(e.to_string());

        let endpoint = endpoint(&settings.url, &parsed.nodes);
        let first = parsed.nodes.first().cloned().ok_or_else(|| RedisClientError::Url("no host".into()))?;
        let auth_probe = first.redis_settings().password().and_then(|password| {
            let credentials = first.redis_settings();
            let bare = first.clone().set_redis_settings(redis::RedisConnectionInfo::default());
            let bare = match &parsed.certs {
                Some(certs) => redis::Client::build_with_tls(bare, certs.clone()),
                None => redis::Client::open(bare),
            };
            Some(AuthProbe {
                bare: bare.ok()?,
                username: credentials.username().map(str::to_string),
                password: password.to_string(),
            })
        });
        let pubsub = match &parsed.certs {
            Some(certs) => redis::Client::build_with_tls(first, certs.clone()),
            None => redis::Client::open(first),
        }
        .map_err(config_error)?;
        let target = if parsed.cluster {
            let mut builder = ClusterClientBuilder::new(parsed.nodes).connection_timeout(connect_timeout);
            if let Some(certs) = parsed.certs {
                builder = builder.certs(certs);
            }
            Target::Cluster(builder.build().map_err(config_error)?)
        } else {
            // One attempt per (re)connection: the prober retries at its own pace, and a
            // call never waits out a backoff.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(None);
            Target::Single { client: pubsub.clone(), config }
        };

        let observer_metrics = metrics.clone();
        // The observer is first called with the initial state; only changes are logged.
        let started = AtomicBool::new(false);
        let breaker = Breaker::with_observer(breaker, clock, BreakerState::Open, move |up| {
            observer_metrics.set_store_up(up);
            if !started.swap(true, Ordering::Relaxed) {
                return;
            }
            if up {
                tracing::info!("Redis is reachable: store circuit breaker closed");
            } else {
                tracing::warn!("Redis is unreachable: store circuit breaker open, calls fail fast until it answers");
            }
        });
        let shared = Arc::new(Shared {
            target,
            pubsub,
            connection: ArcSwapOption::empty(),
            per_worker: OnceLock::new(),
            breaker,
            metrics,
            timeout,
            connect_timeout,
            endpoint,
            auth_probe,
            reached: AtomicBool::new(false),
            unreached: Mutex::new(Unreached::default()),
        });
        let first = shared.establish(false).await;
        shared.note_attempt(first);
        tokio::spawn(probe_loop(Arc::downgrade(&shared)));
        Ok(RedisClient { shared })
    }

    /// One store call on the request path: refused at once (`Unavailable`) while the
    /// breaker is open; otherwise `call(connection)` bounded by `redis.timeout` (past
    /// it, the call's future is dropped and it counts as failed). Failures and timeouts
    /// count in `store_errors_total{op}` and towards the breaker; refusals do not (the
    /// caller records its fallback). A NOSCRIPT reply is not counted anywhere: it is the
    /// normal first answer to EVALSHA (see `Script::invoke_async`, which handles it).
    pub async fn run<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_with_timeout(op, self.shared.timeout, call).await
    }

    /// [`RedisClient::run`] with an explicit timeout (the CLI and background work use
    /// seconds, not the request path's `redis.timeout`). Also fails at once while the
    /// breaker is open; see [`RedisClient::wait_up`] to wait for it first.
    pub async fn run_with_timeout<T, F, Fut>(
        &self,
        op: StoreOp,
        timeout: Duration,
        call: F,
    ) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = &self.shared;
        let Some(connection) = shared.worker_connection().or_else(|| shared.connection.load_full()) else {
            return Err(RedisCallError::Unavailable);
        };
        if !shared.breaker.allow() {
            return Err(RedisCallError::Unavailable);
        }
        match tokio::time::timeout(timeout, call(RedisConnection::clone(&connection))).await {
            Ok(Ok(value)) => {
                shared.breaker.record_success();
                Ok(value)
            }
            Ok(Err(e)) => {
                if means_down(&e) {
                    shared.breaker.record_failure();
                } else {
                    shared.breaker.record_success();
                }
                if !is_noscript(&e) {
                    shared.metrics.store_error(op);
                }
                Err(RedisCallError::Redis(e))
            }
            Err(_elapsed) => {
                shared.breaker.record_failure();
                shared.metrics.store_error(op);
                Err(RedisCallError::Timeout)
            }
        }
    }

    /// Gives each proxy worker thread (one runtime handle each) a connection of its own
    /// (single-node Redis; a cluster connection stays shared), opened at once on that
    /// worker's runtime: a reply is then read by the thread whose request waits for it,
    /// instead of by another thread that must wake it. Until it is open (and again after
    /// the shared connection is rebuilt, when the worker's next call reopens it), and on
    /// any other thread, calls use the shared connection. The breaker, timeouts and
    /// metrics are the same for all.
    pub fn open_per_worker(&self, workers: &[tokio::runtime::Handle]) {
        if self.shared.target.is_cluster() {
            return;
        }
        let _ = self.shared.per_worker.set(workers.iter().map(|_| WorkerConnection::default()).collect());
        if self.shared.connection.load().is_none() {
            return; // Redis is down: opened by the workers' first calls once it is up
        }
        let slots = self.shared.per_worker.get().into_iter().flatten();
        for (index, (worker, slot)) in workers.iter().zip(slots).enumerate() {
            slot.opening.store(true, Ordering::Release);
            worker.spawn(open_worker_connection(Arc::downgrade(&self.shared), index));
        }
    }

    /// Whether the breaker is closed (Redis answering).
    pub fn is_up(&self) -> bool {
        !self.shared.breaker.is_open()
    }

    /// `None` once Redis has answered since start (whatever happened after); until then,
    /// why not: the last attempt's failure, as [`describe_failure`] puts it. A keygate
    /// whose Redis was never reached is not ready (a wrong password or host in a rolling
    /// update must not replace healthy pods); one whose Redis went away later is.
    pub fn never_reached(&self) -> Option<String> {
        if self.shared.reached.load(Ordering::Acquire) {
            return None;
        }
        let unreached = self.shared.unreached.lock().unwrap_or_else(PoisonError::into_inner);
        Some(unreached.why.clone().unwrap_or_else(|| format!("Redis at {} not reached yet", self.shared.endpoint)))
    }

    /// Where Redis is, for messages: `redis://host:port` (or the cluster's node list),
    /// never the password.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// Waits until the breaker is closed, at most `timeout`; returns whether it is. For
    /// callers off the request path (the CLI) that would rather wait for a Redis that
    /// is restarting than fail at once.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut up = self.shared.breaker.subscribe();
        tokio::time::timeout(timeout, up.wait_for(|up| *up)).await.is_ok_and(|r| r.is_ok())
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// A receiver holding `true` while the breaker is closed, notified on changes.
    pub fn subscribe_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.breaker.subscribe()
    }

    /// Whether this is a cluster client.
    pub fn is_cluster(&self) -> bool {
        self.shared.target.is_cluster()
    }

    /// A plain (non-cluster) client for one node, with the same auth and TLS, for
    /// SUBSCRIBE: in a cluster, PUBLISH reaches every node, so any node will do. Its
    /// connections are the caller's to bound and to re-establish.
    pub fn pubsub_client(&self) -> redis::Client {
        self.shared.pubsub.clone()
    }
}

impl Shared {
    /// Builds a fresh connection (bounded by `connect_timeout`), checks that Redis answers
    /// a PING on it (the credentials are accepted) and installs it; `replace`: even if one
    /// exists (it went silent). Closes the breaker on success. The error says what failed
    /// ([`describe_failure`]; it never holds the password).
    async fn establish(&self, replace: bool) -> Result<(), String> {
        if !replace && self.connection.load().is_some() {
            return Ok(());
        }
        let connect = async {
            let mut connection = self.target.connect().await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(connection)) => {
                self.connection.store(Some(Arc::new(connection)));
                // The workers' connections may be as stuck as the one replaced: they are
                // opened again, after this one, by their next calls.
                for worker in self.per_worker.get().into_iter().flatten() {
                    worker.connection.store(None);
                }
                self.breaker.record_success();
                Ok(())
            }
            Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
                // Redis' own words, which redis-rs drops: WRONGPASS, or no password set.
                let refusal = match &self.auth_probe {
                    Some(probe) => probe.refusal(self.connect_timeout).await,
                    None => None,
                };
                Err(match refusal {
                    Some(refusal) => describe_refusal(&self.endpoint, &refusal),
                    None => describe_failure(&self.endpoint, &e),
                })
            }
            Ok(Err(e)) => Err(describe_failure(&self.endpoint, &e)),
            Err(_) => Err(format!("Redis at {} did not answer within {:?}", self.endpoint, self.connect_timeout)),
        }
    }

    /// Records a connection attempt's result: the first success since start is logged
    /// once; until then, a failure is kept (for `/readyz` and the CLI) and logged every
    /// [`UNREACHED_LOG_EVERY`]. Returns whether it succeeded.
    fn note_attempt(&self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                if !self.reached.swap(true, Ordering::AcqRel) {
                    self.unreached.lock().unwrap_or_else(PoisonError::into_inner).why = None;
                    tracing::info!(redis = %self.endpoint, "connected to Redis");
                }
                true
            }
            Err(why) if self.reached.load(Ordering::Acquire) => {
                tracing::debug!(error = %why, "Redis connection attempt failed");
                false
            }
            Err(why) => {
                let mut unreached = self.unreached.lock().unwrap_or_else(PoisonError::into_inner);
                let due = unreached.logged_at.is_none_or(|at| at.elapsed() >= UNREACHED_LOG_EVERY);
                if due {
                    unreached.logged_at = Some(Instant::now());
                    tracing::warn!(
                        error = %why,
                        "Redis not reached since start; retrying in the background"
                    );
                }
                unreached.why = Some(why);
                false
            }
        }
    }

    /// The calling worker's own connection, if it is open; else starts opening it (on this
    /// worker, so that its reader task runs here) while the shared one serves.
    fn worker_connection(self: &Arc<Self>) -> Option<Arc<RedisConnection>> {
        let index = crate::worker::current()?;
        let worker = self.per_worker.get()?.get(index)?;
        if let Some(connection) = worker.connection.load_full() {
            return Some(connection);
        }
        // Only while Redis answers: a worker does not add connection attempts to an outage.
        let up = self.connection.load().is_some() && !self.breaker.is_open();
        if up && !worker.opening.swap(true, Ordering::AcqRel) {
            tokio::spawn(open_worker_connection(Arc::downgrade(self), index));
        }
        None
    }

    /// One PING, bounded by the request-path timeout.
    async fn ping(&self) -> bool {
        let Some(connection) = self.connection.load_full() else {
            return false;
        };
        let mut connection = RedisConnection::clone(&connection);
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut connection).await };
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)))
    }
}

/// Opens worker `index`'s own connection; run on that worker's runtime, so that the
/// connection's reader task lives there.
async fn open_worker_connection(shared: Weak<Shared>, index: usize) {
    let Some(shared) = shared.upgrade() else { return };
    let opened = tokio::time::timeout(shared.connect_timeout, shared.target.connect()).await;
    let Some(worker) = shared.per_worker.get().and_then(|slots| slots.get(index)) else { return };
    let failed = match opened {
        Ok(Ok(connection)) => {
            worker.connection.store(Some(Arc::new(connection)));
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no connection within {:?}", shared.connect_timeout)),
    };
    if let Some(e) = failed {
        // The shared connection keeps serving this worker; it tries again later.
        tracing::debug!(error = %e, "a worker's own Redis connection did not open");
        tokio::time::sleep(MIN_CONNECT_TIMEOUT).await;
    }
    worker.opening.store(false, Ordering::Release);
}

/// While the breaker is open, probes every `probe_interval`; while it is closed, sleeps
/// until it opens. Stops when the client is dropped.
async fn probe_loop(shared: Weak<Shared>) {
    let (mut up, interval) = match shared.upgrade() {
        Some(s) => (s.breaker.subscribe(), s.breaker.config().probe_interval),
        None => return,
    };
    let mut failed_probes = 0u32;
    loop {
        while *up.borrow_and_update() {
            failed_probes = 0;
            if up.changed().await.is_err() {
                return;
            }
        }
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else { return };
        if !shared.breaker.is_open() {
            continue;
        }
        let ok = if shared.connection.load().is_none() {
            let attempt = shared.establish(false).await;
            shared.note_attempt(attempt)
        } else if shared.ping().await {
            shared.breaker.record_success();
            true
        } else {
            failed_probes += 1;
            // A connection that never answers may be stuck on a dead peer; the
            // connection manager only reconnects after an error it can see.
            failed_probes.is_multiple_of(REBUILD_AFTER_PROBES) && {
                let attempt = shared.establish(true).await;
                shared.note_attempt(attempt)
            }
        };
        if ok {
            failed_probes = 0;
        }
    }
}

/// `redis://host:port` for a single node, `redis+cluster://h1:p1,h2:p2` for a cluster
/// (`rediss` with TLS): what the URL names, without its credentials.
fn endpoint(url: &str, nodes: &[redis::ConnectionInfo]) -> String {
    let scheme = url.split_once("://").map_or("redis", |(scheme, _)| scheme).to_ascii_lowercase();
    let addresses: Vec<String> = nodes.iter().map(|node| node.addr().to_string()).collect();
    format!("{scheme}://{}", addresses.join(","))
}

/// Redis' refusal of `AUTH` (its error reply, never holding the password), for an
/// operator.
fn describe_refusal(endpoint: &str, refusal: &str) -> String {
    if refusal.to_ascii_lowercase().contains("without any password configured") {
        format!("Redis at {endpoint} has no password set but one was given ({refusal})")
    } else {
        format!("Redis at {endpoint} refused the password ({refusal})")
    }
}

/// What went wrong reaching Redis at `endpoint`, for an operator: a refused or missing
/// password, a name that does not resolve, a refused connection, TLS; with Redis' own
/// words (e.g. `WRONGPASS invalid username-password pair…`), never the password.
pub fn describe_failure(endpoint: &str, e: &redis::RedisError) -> String {
    let text = e.to_string();
    let code = e.code().unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    if code == "NOAUTH" || lower.contains("noauth") {
        return format!("Redis at {endpoint} requires a password and none was given ({text})");
    }
    if code == "WRONGPASS" || lower.contains("wrongpass") || e.kind() == redis::ErrorKind::AuthenticationFailed {
        return format!("Redis at {endpoint} refused the password ({text})");
    }
    if lower.contains("without any password configured") {
        return format!("Redis at {endpoint} has no password set but one was given ({text})");
    }
    if lower.contains("lookup address") || lower.contains("name or service not known") || lower.contains("resolve") {
        return format!("the name of Redis at {endpoint} does not resolve ({text})");
    }
    if e.is_connection_refusal() || lower.contains("connection refused") {
        return format!("Redis at {endpoint} refused the connection ({text})");
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return format!("TLS with Redis at {endpoint} failed ({text})");
    }
    format!("Redis at {endpoint} cannot be reached ({text})")
}

#[cfg(test)]
mod tests;
