//! The Redis key store: tenants and key records shared by every replica, looked up by
//! key digest, with the lifecycle rules of [`super::manage`] enforced atomically on the
//! tenant's Redis Cluster slot. The layout of keys in Redis is documented for operators
//! and dashboards in `docs/redis-layout.md`; [`layout`] is its one implementation.
//!
//! # Why the writes come in two steps
//!
//! A tenant's records (its hash, the set of its key ids, each key's hash) share the hash
//! tag `{t:<tenant>}`, so that one Lua script can check and change them atomically on a
//! Redis Cluster, where a script may only touch keys of one slot. The digest index is
//! read before the tenant is known, so it cannot carry the tenant's tag and lives on its
//! own slot. Every write therefore changes the tenant's records first, in one script
//! (this is where `max_keys` and the rotation rules hold under concurrency), and then
//! writes the index entries as a second, idempotent step. Readers always go through the
//! key record, which is the truth: an index entry that points at a missing record, or at
//! a record whose digest is another, finds nothing; a revocation marks the record first,
//! so it takes effect before its index entry's TTL is even set. Only after both steps a
//! new key's secret is returned, and only after a change is durable is it published on
//! [`INVALIDATION_CHANNEL`] for the replicas' caches.
//!
//! Times are stored as RFC 3339 in UTC (`Z`); the scripts compare them as strings after
//! padding the fractional seconds to nine digits, which orders them correctly.

#[doc(hidden)]
pub mod codec;
mod invalidation;
mod key_writes;
pub mod layout;
mod limit_writes;
mod reads;
mod scripts;
mod tenant_writes;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

use super::data::StoreError;
use super::manage::ManageError;
use crate::metrics::StoreOp;
use crate::redis_client::{RedisCallError, RedisClient, RedisConnection};

pub use invalidation::{Invalidation, INVALIDATION_CHANNEL};

/// A Redis call that failed (unreachable, timed out, refused by the breaker) is the store
/// being unavailable: the proxy answers 503, never 401.
impl From<RedisCallError> for StoreError {
    fn from(e: RedisCallError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The bound on each Redis call of a management operation (CLI, admin API), which are
/// not on a request's path and may wait longer than `redis.timeout`.
pub const MANAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on each Redis call of the proxy's background work (re-storing a digest,
/// flushing `last_used_at`): off the request path, but never left hanging.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a write is retried when its optimistic check lost a race (a rotation whose
/// key changed between read and write) or a fresh key id was already taken.
const MAX_ATTEMPTS: usize = 5;

/// The tenants, their plans and their keys, in Redis.
pub struct RedisStore {
    client: RedisClient,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The store over `client`, whose `redis.timeout` bounds [`RedisStore::lookup`];
    /// management calls are bounded by [`MANAGE_TIMEOUT`].
    pub fn new(client: RedisClient) -> Self {
        RedisStore { client }
    }

    /// The client: the proxy subscribes to invalidations through it.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// A management call: bounded by [`MANAGE_TIMEOUT`], errors as [`ManageError`].
    async fn manage<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, ManageError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.client.run_with_timeout(op, MANAGE_TIMEOUT, call).await.map_err(unavailable)
    }

    /// A background call: bounded by [`BACKGROUND_TIMEOUT`].
    async fn background<T, F, Fut>(&self, op: StoreOp, call: F) -> Result<T, RedisCallError>
    where
        F: FnOnce(RedisConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.client.run_with_timeout(op, BACKGROUND_TIMEOUT, call).await
    }
}

/// Sends independent commands, which may be on different slots, concurrently over the
/// multiplexed connection: in effect a pipeline, one round trip on a single server, but
/// one that a Redis Cluster accepts (redis-rs sends a cluster pipeline to one slot only).
async fn query_each<T: redis::FromRedisValue>(
    con: &RedisConnection,
    commands: Vec<redis::Cmd>,
) -> redis::RedisResult<Vec<T>> {
    let calls: Vec<_> = commands
        .into_iter()
        .map(|command| {
            let mut con = con.clone();
            async move { command.query_async::<T>(&mut con).await }
        })
        .collect();
    futures_util::future::join_all(calls).await.into_iter().collect()
}

/// A management call that failed to reach Redis.
fn unavailable(e: RedisCallError) -> ManageError {
    ManageError::Store(StoreError::Unavailable(e.to_string()))
}

/// Data in Redis that keygate cannot read (see [`StoreError::Corrupt`]).
fn corrupt(message: impl Into<String>) -> ManageError {
    ManageError::Store(StoreError::Corrupt(format!("unreadable data in Redis: {}", message.into())))
}

/// A script reply keygate does not know: unreadable data too.
fn unexpected(reply: &[String]) -> ManageError {
    corrupt(format!("unexpected script reply `{}`", codec::status(reply)))
}
