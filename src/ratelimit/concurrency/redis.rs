//! Concurrency slots shared by every replica through Redis (`limits.backend = "redis"`).
//!
//! A tenant's slots are one sorted set on the tenant's hash slot, `kg:cc:{<tenant>}`
//! ([`key`]): a member per slot held, named `<replica id>:<counter>` (the replica id is
//! random, drawn at start), whose score is when the slot expires (ms, Redis's clock).
//!
//! - **Acquire**: one script call ([`ACQUIRE_LUA`], sent with EVALSHA), on the request
//!   path: it reads `TIME`, drops the expired members, and adds the new one with an
//!   expiry `limits.concurrency_ttl` from now if fewer than the cap remain; else it
//!   refuses and adds nothing. The replicas' clocks never matter.
//! - **Renew**: one background task per replica re-scores, every third of the ttl, every
//!   slot this replica holds, in one pipelined call (one [`RENEW_LUA`] per tenant with
//!   slots here, `ZADD XX`: a slot already released or removed is not added back; on a
//!   Redis Cluster, whose pipelines cannot cross hash slots, one call per tenant, sent
//!   together).
//! - **Release**: dropping a [`RedisSlot`] queues a `ZREM` (never awaited on the request
//!   path); one background task sends what has queued as one pipeline, at once, so
//!   releases that arrive while one is in flight go together in the next. The queue is
//!   bounded ([`RELEASE_QUEUE`]); a release that does not fit, or whose call fails, is
//!   left to expire.
//!
//! The bound: a slot whose holder stopped renewing it (the replica died, or lost Redis)
//! is free again at most `limits.concurrency_ttl` after its last renewal. A live replica
//! renews well within that; a request that outlives an outage of Redis longer than the
//! ttl may lose its slot (others are admitted in its place), which only ever admits more.
//! The set itself expires a ttl after its last write, so an idle tenant leaves nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::{ErrorKind, RedisError, Script};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::metrics::{Metrics, StoreOp};
use crate::redis_client::{RedisCallError, RedisClient};

/// The acquire script: `KEYS[1]` the tenant's set; `ARGV` the cap, the slot's id, its
/// ttl (ms). Returns `{1, held}` when taken, `{0, held}` at the cap.
pub const ACQUIRE_LUA: &str = include_str!("acquire.lua");

/// The renewal script: `KEYS[1]` the tenant's set; `ARGV` the ttl (ms), then the ids of
/// the slots this replica holds there.
pub const RENEW_LUA: &str = include_str!("renew.lua");

/// The acquire script, with its SHA1 computed once.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// How many releases may wait to be sent; past it a release is left to expire.
pub const RELEASE_QUEUE: usize = 65_536;

/// The most releases sent in one pipeline.
const RELEASE_BATCH: usize = 1024;

/// The bound on one pipeline of releases (off the request path).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis key of `tenant`'s slots: `kg:cc:{<tenant>}`.
pub fn key(tenant: &str) -> String {
    format!("kg:cc:{{{tenant}}}")
}

/// This replica's shared slots: the acquire call, and the renewal and release tasks
/// (stopped when this is dropped: its slots are then neither renewed nor released, and
/// expire, as a dead replica's do).
pub struct RedisSlots {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl fmt::Debug for RedisSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSlots").field("replica", &self.shared.replica).finish_non_exhaustive()
    }
}

struct Shared {
    client: RedisClient,
    /// This replica's id, the first half of its slots' names.
    replica: String,
    next: AtomicU64,
    ttl: Duration,
    /// The slots this replica holds (or is acquiring), by tenant: what renewal re-scores.
    held: Mutex<HashMap<Arc<str>, Holder>>,
    releases: mpsc::Sender<Release>,
    metrics: Arc<Metrics>,
}

struct Holder {
    key: Arc<str>,
    tenant: Arc<str>,
    ids: Vec<u64>,
}

struct Release {
    key: Arc<str>,
    id: u64,
}

/// One slot in Redis: released (`ZREM`, off the request path) when dropped.
pub struct RedisSlot {
    shared: Arc<Shared>,
    tenant: Arc<str>,
    key: Arc<str>,
    id: u64,
    /// May be in Redis: released when dropped (false once the script refused it).
    remote: bool,
    /// Counted in `concurrency_slots_held`.
    counted: bool,
}

impl fmt::Debug for RedisSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSlot").field("key", &self.key).field("id", &self.id).finish_non_exhaustive()
    }
}

impl RedisSlots {
    /// Slots through `client` with a time to live of `ttl`; starts the renewal and
    /// release tasks on the current Tokio runtime.
    pub fn start(client: RedisClient, ttl: Duration, metrics: Arc<Metrics>) -> RedisSlots {
        let (releases, queue) = mpsc::channel(RELEASE_QUEUE);
        let shared = Arc::new(Shared {
            client,
            replica: format!("{:016x}", rand::random::<u64>()),
            next: AtomicU64::new(0),
            ttl: ttl.max(Duration::from_millis(3)),
            held: Mutex::new(HashMap::new()),
            releases,
            metrics,
        });
        let stop = CancellationToken::new();
        tokio::spawn(renew(shared.clone(), stop.clone()));
        tokio::spawn(release(shared.client.clone(), shared.replica.clone(), queue, stop.clone()));
        RedisSlots { shared, _stop: stop.drop_guard() }
    }

    /// Takes one of `tenant`'s `cap` slots: `Ok(None)` at the cap. One script call,
    /// bounded by `redis.timeout`; an error means Redis did not decide (a slot it may
    /// have added anyway is released).
    pub async fn acquire(&self, tenant: &str, cap: u32) -> Result<Option<RedisSlot>, RedisCallError> {
        let shared = &self.shared;
        let id = shared.next.fetch_add(1, Ordering::Relaxed);
        let (tenant, key) = shared.register(tenant, id);
        // Made before the call: if this future is dropped mid-call, the slot is released.
        let mut slot = RedisSlot { shared: shared.clone(), tenant, key: key.clone(), id, remote: true, counted: false };
        let member = shared.member(id);
        let ttl = u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX);
        let reply: Vec<i64> = shared
            .client
            .run(StoreOp::Limit, move |mut connection| async move {
                let mut invocation = ACQUIRE.prepare_invoke();
                invocation.key(&*key).arg(cap).arg(&member).arg(ttl);
                match invocation.invoke_async(&mut connection).await {
                    // Flushed again between SCRIPT LOAD and the retried EVALSHA: sent whole.
                    Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        redis::cmd("EVAL")
                            .arg(ACQUIRE_LUA)
                            .arg(1)
                            .arg(&*key)
                            .arg(cap)
                            .arg(&member)
                            .arg(ttl)
                            .query_async(&mut connection)
                            .await
                    }
                    other => other,
                }
            })
            .await?;
        match reply.first() {
            Some(1) => {
                slot.counted = true;
                shared.metrics.concurrency_slot_taken();
                Ok(Some(slot))
            }
            Some(0) => {
                slot.remote = false;
                Ok(None)
            }
            _ => Err(RedisCallError::Redis(RedisError::from((
                ErrorKind::Client,
                "unexpected reply from the concurrency script",
            )))),
        }
    }

    /// Slots this replica holds now (taken or being taken).
    pub fn held(&self) -> usize {
        self.shared.lock().values().map(|holder| holder.ids.len()).sum()
    }

    /// This replica's id (the first half of its slots' names in Redis).
    pub fn replica_id(&self) -> &str {
        &self.shared.replica
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Holder>> {
        // Nothing panics while holding the lock, and the map stays consistent anyway.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn member(&self, id: u64) -> String {
        member(&self.replica, id)
    }

    /// Notes slot `id` of `tenant` as held here (renewal sees it from now on); returns
    /// the tenant's shared name and key.
    fn register(&self, tenant: &str, id: u64) -> (Arc<str>, Arc<str>) {
        let mut held = self.lock();
        if let Some(holder) = held.get_mut(tenant) {
            holder.ids.push(id);
            return (holder.tenant.clone(), holder.key.clone());
        }
        let name: Arc<str> = tenant.into();
        let key: Arc<str> = key(tenant).into();
        held.insert(name.clone(), Holder { key: key.clone(), tenant: name.clone(), ids: vec![id] });
        (name, key)
    }

    fn unregister(&self, tenant: &str, id: u64) {
        let mut held = self.lock();
        if let Some(holder) = held.get_mut(tenant) {
            if let Some(at) = holder.ids.iter().position(|&held| held == id) {
                holder.ids.swap_remove(at);
            }
            if holder.ids.is_empty() {
                held.remove(tenant);
            }
        }
    }
}

fn member(replica: &str, id: u64) -> String {
    format!("{replica}:{id}")
}

impl Drop for RedisSlot {
    fn drop(&mut self) {
        self.shared.unregister(&self.tenant, self.id);
        if self.counted {
            self.shared.metrics.concurrency_slot_given_back();
        }
        if self.remote {
            let release = Release { key: self.key.clone(), id: self.id };
            if self.shared.releases.try_send(release).is_err() {
                tracing::debug!("concurrency release queue full or closed; the slot expires instead");
            }
        }
    }
}

/// Sends `commands` (one per tenant's key) as one pipeline, bounded by `timeout`; on a
/// Redis Cluster, whose pipelines cannot cross hash slots, as one pipeline per command,
/// sent together.
async fn pipelined(client: &RedisClient, commands: Vec<redis::Cmd>, timeout: Duration) -> Result<(), RedisCallError> {
    let groups: Vec<Vec<redis::Cmd>> =
        if client.is_cluster() { commands.into_iter().map(|command| vec![command]).collect() } else { vec![commands] };
    let calls = groups.into_iter().map(|group| {
        let mut pipe = redis::pipe();
        for command in group {
            pipe.add_command(command).ignore();
        }
        client.run_with_timeout(StoreOp::Limit, timeout, move |mut connection| async move {
            pipe.query_async::<()>(&mut connection).await
        })
    });
    futures_util::future::join_all(calls).await.into_iter().collect()
}

/// Every third of the ttl, re-scores every slot held here, in one pipelined call.
async fn renew(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.ttl / 3;
    let ttl = u64::try_from(shared.ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let batch: Vec<(Arc<str>, Vec<u64>)> =
            shared.lock().values().map(|holder| (holder.key.clone(), holder.ids.clone())).collect();
        if batch.is_empty() {
            continue;
        }
        let commands = batch.iter().map(|(key, ids)| {
            let mut command = redis::cmd("EVAL");
            command.arg(RENEW_LUA).arg(1).arg(&**key).arg(ttl);
            for &id in ids {
                command.arg(shared.member(id));
            }
            command
        });
        if let Err(e) = pipelined(&shared.client, commands.collect(), every.max(Duration::from_millis(1))).await {
            tracing::debug!(error = %e, "renewing concurrency slots failed; retrying next round");
        }
    }
}

/// Sends queued releases, as one pipeline per batch, until stopped.
async fn release(client: RedisClient, replica: String, mut queue: mpsc::Receiver<Release>, stop: CancellationToken) {
    let mut batch = Vec::new();
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            n = queue.recv_many(&mut batch, RELEASE_BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let mut by_key: HashMap<&str, Vec<String>> = HashMap::new();
        for release in &batch {
            by_key.entry(&release.key).or_default().push(member(&replica, release.id));
        }
        let commands = by_key.into_iter().map(|(key, members)| {
            let mut command = redis::cmd("ZREM");
            command.arg(key).arg(members);
            command
        });
        let commands = commands.collect();
        batch.clear();
        if let Err(e) = pipelined(&client, commands, RELEASE_TIMEOUT).await {
            tracing::debug!(error = %e, "releasing concurrency slots failed; they expire instead");
        }
    }
}
