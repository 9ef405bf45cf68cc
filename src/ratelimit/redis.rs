//! The shared limiter: every replica decides against one sliding window per tenant kept
//! in Redis, with one atomic Lua script per round trip (`limits.backend = "redis"`).
//!
//! # The script
//!
//! The algorithm is the parent module's (see [`super`]), run inside Redis so that every
//! replica applies it to the same counters, atomically (`redis/sliding_window.lua`, loaded
//! into [`LUA`]). [`SCRIPT`] is sent with EVALSHA
//! (redis-rs' [`Script`] re-loads it and retries once on `NOSCRIPT`, and a second `NOSCRIPT`
//! sends it whole with EVAL, so a Redis restart or `SCRIPT FLUSH`es cost extra round trips
//! and no failed request). It:
//!
//! 1. reads the time from Redis (`TIME`), so the replicas' clocks, skewed or not, never
//!    matter: every decision about one tenant uses one clock. If that clock steps back
//!    (a failover to a replica whose clock lags) the script acts as if it were the start
//!    of the newest sub-window it holds, as the local limiter does: it only refuses more;
//! 2. reads the tenant's hash: sub-window index → count, plus a summary in three fields
//!    with negative names (never a sub-window's index): `-1` the sum of the counters
//!    held, `-2` an index no held counter is older than, `-3` the newest index held. One
//!    `HMGET` of the summary and the current sub-window's counter gives the count, so a
//!    call reads four fields, not the whole hash. When sub-windows have left the window
//!    it subtracts their counters from the sum and deletes their fields, so the hash
//!    never holds more than `SUB_WINDOWS + 1` counters and the summary (memory per tenant
//!    bounded whatever the limit: a plan of 100,000 requests a minute costs what a plan
//!    of 10 costs). A hash without a summary (new, or written by a keygate before the
//!    summary, whose script deletes the negative fields as stale) is summed once with
//!    `HGETALL`; replicas of both versions can therefore share a window during a rolling
//!    upgrade and stay exact;
//! 3. decides each cost it was given, in order: admitted iff `count + cost ≤ requests`;
//!    an admitted cost is added to the current sub-window, a refused one adds nothing.
//!    The other sub-windows' counters are read (`HMGET` of the window's fields) only
//!    when a request is refused (its `retry_after`) or the current sub-window is empty
//!    (the reset);
//! 4. writes the current counter and the summary with one `HSET` and sets `PEXPIRE` to
//!    one window plus one sub-window (the longest any counter can still count);
//! 5. returns, per cost, `allowed, remaining, reset_ms, retry_after_ms` (`-1`: none), the
//!    fields of a [`Decision`], computed exactly as the local limiter computes them. The
//!    headers therefore come from the script's answer and agree across replicas:
//!    `remaining` counts down by one per request whichever replica asked.
//!
//! Calling `TIME` before writing needs effect replication, the default since Redis 5.
//!
//! The key is `kg:rl:{<tenant>}:<requests>:<window seconds>`: one per (tenant, limit), so
//! a change of plan starts a fresh window (docs/reference.md §4.4 leaves that case out of the
//! guarantee). The `{tenant}` hash tag keeps all of a tenant's keys on one slot of a Redis
//! Cluster.
//!
//! Redis holds integers exactly up to 2^63 but Lua numbers are doubles: limits and costs
//! are capped at 2^53 (far above any plan; a cost above a plan's limit is refused anyway).
//!
//! # Coalescing
//!
//! Under load, concurrent checks of one (tenant, limit) on one proxy worker thread of one
//! replica (each worker coalesces its own checks: see [`BatchKey`]) do not each cost a
//! round trip. The first check finds nothing in flight for its key and calls the script
//! at once (no timer, so an idle tenant pays no added latency). Checks that arrive while
//! that call is in flight queue behind it; when it returns, *all* the queued checks go to
//! Redis as one script call carrying their costs in arrival order, which decides each of
//! them atomically (admitted in order while they fit, a refused one adding nothing) and
//! returns one answer each. Checks arriving meanwhile queue for the next call, and so on
//! until the queue is empty. Exactness is untouched: the script still decides every
//! request against the shared counters, atomically; only the round trips are shared. At
//! most [`MAX_BATCH`] checks go in one call.
//!
//! When a call fails (timeout, error, breaker open), the checks queued behind it fail at
//! once with the same error instead of trying again: the store has just shown it is not
//! answering, and a queued check must not wait for a second timeout. A queued check
//! waits for at most the rest of the call in flight and then its own call, each bounded
//! by `redis.timeout` through [`RedisClient::run`]. A check whose caller has gone away
//! (its future dropped) before its batch is sent is left out of the batch, so it
//! counts nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::{ErrorKind, RedisError, Script};
use tokio::sync::oneshot;

use super::decision::Decision;
use crate::metrics::StoreOp;
use crate::policy::Limit;
use crate::redis_client::{RedisCallError, RedisClient};

/// The most checks one script call decides. A burst larger than this takes several calls
/// (in a row, each carrying up to this many); it bounds the size of one command and the
/// time the script holds Redis.
pub const MAX_BATCH: usize = 512;

/// Limits and costs above this are capped to it: Lua numbers are doubles, exact up to
/// 2^53.
const MAX_EXACT: u64 = 1 << 53;

/// The limiter script (`redis/sliding_window.lua`: its header lists `KEYS` and `ARGV`).
/// `KEYS[1]`: the tenant's hash; `ARGV`: `requests`, sub-window length (ms), window length
/// (ms), then one cost per request, in arrival order. Returns `allowed, remaining,
/// reset_ms, retry_after_ms` per cost, flattened (`retry_after_ms` is `-1` when admitted).
pub const LUA: &str = include_str!("redis/sliding_window.lua");

/// The script, with its SHA1 computed once.
pub static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA));

/// The Redis key of `tenant`'s window under `limit`: `kg:rl:{<tenant>}:<requests>:<window>`
/// with the window in whole seconds (`<n>ms` for a window that is not whole seconds).
pub fn key(tenant: &str, limit: &Limit) -> String {
    // Built by hand: this runs on every request, and `format!` costs several times more.
    let (mut requests, mut window) = (itoa::Buffer::new(), itoa::Buffer::new());
    let requests = requests.format(limit.requests);
    let whole_seconds = limit.window.subsec_nanos() == 0;
    let window =
        if whole_seconds { window.format(limit.window.as_secs()) } else { window.format(limit.window.as_millis()) };
    let mut key = String::with_capacity(10 + tenant.len() + requests.len() + window.len() + 2);
    for part in ["kg:rl:{", tenant, "}:", requests, ":", window, if whole_seconds { "" } else { "ms" }] {
        key.push_str(part);
    }
    key
}

/// The checks waiting behind the call in flight, per batch key.
type Queues = HashMap<BatchKey, Vec<Waiter>>;

/// A batch key: what checks coalesce on, the proxy worker thread they run on (see
/// [`crate::worker`]) and the Redis key (tenant and limit). Not a Redis Cluster slot.
/// Each worker batches its own checks, so a batch's answers wake tasks on the thread that
/// sent it, never another one; with N workers a tenant costs up to N script calls in
/// flight instead of one.
type BatchKey = (Option<usize>, String);

/// A queued check: its cost and where its answer goes.
struct Waiter {
    cost: u64,
    tx: oneshot::Sender<Result<Decision, RedisCallError>>,
}

struct Inner {
    client: RedisClient,
    /// A key is present exactly while a call for it is in flight (or about to be sent);
    /// its queue holds the checks that arrived meanwhile.
    queues: Mutex<Queues>,
}

/// The shared sliding-window limiter over Redis: one [`SCRIPT`] call per round trip, and
/// concurrent checks of one tenant coalesced into one round trip (see the module docs).
/// Cheap to clone; clones share the coalescing queues.
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter").finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter deciding through `client` (its timeout and circuit breaker bound every
    /// call).
    pub fn new(client: RedisClient) -> Self {
        RedisLimiter { inner: Arc::new(Inner { client, queues: Mutex::new(HashMap::new()) }) }
    }

    /// Admits `cost` requests for `tenant` under `limit`, or refuses them without counting
    /// them, against the window shared by every replica. The [`Decision`] is the script's
    /// (Redis's clock, every replica's admissions); it has the same fields, computed the
    /// same way, as the local limiter's.
    ///
    /// An error means the store did not decide (unreachable, slower than `redis.timeout`,
    /// breaker open, or a Redis error): the caller applies `on_store_error`. A check that
    /// failed may still have been counted by Redis (a reply lost in a timeout), which
    /// only ever refuses more.
    pub async fn check(&self, tenant: &str, limit: &Limit, cost: u64) -> Result<Decision, RedisCallError> {
        let batch_key: BatchKey = (crate::worker::current(), key(tenant, limit));
        let waiting = {
            let mut queues = self.inner.lock();
            match queues.get_mut(&batch_key) {
                Some(queue) => {
                    let (tx, rx) = oneshot::channel();
                    queue.push(Waiter { cost, tx });
                    Some(rx)
                }
                None => {
                    queues.insert(batch_key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            // The sender is only dropped without an answer if the task sending the batch
            // died (a panic, or the runtime shutting down).
            return rx.await.unwrap_or(Err(RedisCallError::Unavailable));
        }

        // Nothing was in flight: this check goes now, alone, and hands whatever queued
        // behind it to a batch when it is done (or dropped).
        let mut leader = Leader { inner: self.inner.clone(), batch_key, limit: *limit, failed: None };
        let result = self.inner.call(&leader.batch_key.1, limit, &[cost]).await.and_then(|mut decisions| {
            decisions.pop().ok_or_else(|| RedisCallError::Redis(unexpected("an empty reply")))
        });
        if let Err(e) = &result {
            leader.failed = Some(e.clone());
        }
        drop(leader);
        result
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // Nothing panics while holding the lock, and the queues stay consistent anyway.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One script call deciding `costs` in order: one decision each.
    async fn call(&self, key: &str, limit: &Limit, costs: &[u64]) -> Result<Vec<Decision>, RedisCallError> {
        let requests = limit.requests.min(MAX_EXACT);
        let sub = limit.sub_window_millis().min(MAX_EXACT);
        let window = limit.window_millis().min(MAX_EXACT);
        let mut args = vec![requests, sub, window];
        args.extend(costs.iter().map(|&cost| cost.min(MAX_EXACT)));
        let key = key.to_string();
        let reply: Vec<i64> = self
            .client
            .run(StoreOp::Limit, move |mut connection| async move {
                let mut invocation = SCRIPT.key(&key);
                invocation.arg(&args);
                match invocation.invoke_async(&mut connection).await {
                    // Flushed again between redis-rs' SCRIPT LOAD and its retried EVALSHA
                    // (two `SCRIPT FLUSH`es in a row): the script is sent whole, once.
                    Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        redis::cmd("EVAL").arg(LUA).arg(1).arg(&key).arg(&args).query_async(&mut connection).await
                    }
                    other => other,
                }
            })
            .await?;
        if reply.len() != costs.len() * 4 {
            return Err(RedisCallError::Redis(unexpected("a reply of the wrong length")));
        }
        let millis = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(reply
            .chunks_exact(4)
            .map(|d| Decision {
                allowed: d[0] == 1,
                limit: limit.requests,
                remaining: u64::try_from(d[1]).unwrap_or(0),
                reset: millis(d[2]),
                retry_after: (d[0] != 1).then(|| millis(d[3])),
            })
            .collect())
    }

    /// Sends the checks queued for `key`, batch after batch, until none is left; then
    /// forgets the key (the next check of it goes at once again).
    async fn drain(self: Arc<Self>, batch_key: BatchKey, limit: Limit) {
        loop {
            let batch: Vec<Waiter> = {
                let mut queues = self.lock();
                let Some(queue) = queues.get_mut(&batch_key) else { return };
                // A check whose caller has gone away would count for nothing served.
                queue.retain(|w| !w.tx.is_closed());
                if queue.is_empty() {
                    queues.remove(&batch_key);
                    return;
                }
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            let costs: Vec<u64> = batch.iter().map(|w| w.cost).collect();
            match self.call(&batch_key.1, &limit, &costs).await {
                Ok(decisions) => {
                    for (waiter, decision) in batch.into_iter().zip(decisions) {
                        let _ = waiter.tx.send(Ok(decision));
                    }
                }
                Err(e) => {
                    fail(batch, &e);
                    self.fail_queued(&batch_key, &e);
                    return;
                }
            }
        }
    }

    /// Fails every check queued for `batch_key` with `error`, and forgets the key.
    fn fail_queued(&self, batch_key: &BatchKey, error: &RedisCallError) {
        let queued = self.lock().remove(batch_key).unwrap_or_default();
        fail(queued, error);
    }
}

fn fail(waiters: Vec<Waiter>, error: &RedisCallError) {
    for waiter in waiters {
        let _ = waiter.tx.send(Err(error.clone()));
    }
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::UnexpectedReturnType, "the limiter script returned", what.to_string()))
}

/// The check that went alone. When it is done, or dropped half-way (its caller went
/// away), the checks that queued behind it are sent as one batch by a task of their own,
/// or failed at once if its call failed.
struct Leader {
    inner: Arc<Inner>,
    batch_key: BatchKey,
    limit: Limit,
    failed: Option<RedisCallError>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(error) = self.failed.take() {
            self.inner.fail_queued(&self.batch_key, &error);
            return;
        }
        {
            let mut queues = self.inner.lock();
            if queues.get(&self.batch_key).is_none_or(Vec::is_empty) {
                queues.remove(&self.batch_key);
                return;
            }
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.inner.clone().drain(std::mem::take(&mut self.batch_key), self.limit));
            }
            // No runtime to send them from (it is shutting down): they fail.
            Err(_) => self.inner.fail_queued(&self.batch_key, &RedisCallError::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_as_hash_tag_and_the_limit() {
        let per_minute = Limit { requests: 300, window: Duration::from_secs(60) };
        assert_eq!(key("acme", &per_minute), "kg:rl:{acme}:300:60");
        let odd = Limit { requests: 5, window: Duration::from_millis(1_500) };
        assert_eq!(key("acme", &odd), "kg:rl:{acme}:5:1500ms");
        // One key per (tenant, limit): a change of plan starts a fresh window.
        assert_ne!(key("acme", &per_minute), key("acme", &Limit { requests: 301, ..per_minute }));
    }

    #[test]
    fn the_script_is_sent_by_its_sha1() {
        assert_eq!(SCRIPT.get_hash().len(), 40);
        assert!(LUA.contains("redis.call('TIME')"));
    }
}
