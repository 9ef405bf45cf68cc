//! Authentication: from a presented secret to a [`Principal`], through the key store —
//! directly for the embedded file (already in memory), through the in-process cache for
//! Redis. Tells unknown, expired and revoked apart, and never turns a store outage into
//! "unknown". Off the request's path it re-stores keys found under an old pepper, keeps
//! `last_used_at` (Redis, at most once a minute per key) and, with Redis, follows the
//! invalidation channel so revocations reach this replica within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::error::{AuthFailure, BadKey};
use crate::keys::cache::KeyCache;
use crate::keys::data::{Lookup, StoreError};
use crate::keys::redis_store::{Invalidation, INVALIDATION_CHANNEL};
use crate::keys::store::Store;
use crate::keys::{KeyDigest, KeyState, Malformed, Peppers, Principal, Secret, KEY_LEN};
use crate::metrics::{Metrics, StoreOp};
use crate::settings::Keys;

/// What authenticating a well-formed key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Principal),
    Invalid(AuthFailure),
    /// The cache could not answer, and the store was not asked: `may_ask` said no.
    NotAsked,
}

/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// How often pending `last_used_at` writes are flushed.
const LAST_USED_FLUSH: Duration = Duration::from_secs(2);
/// How often the invalidation subscription is checked with a PING, and how long the
/// answer may take.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(1);

#[derive(Default)]
struct LastUsed {
    /// key id → (tenant, last written, pending use time)
    keys: HashMap<String, (String, Option<Instant>, Option<OffsetDateTime>)>,
}

/// Authenticates presented secrets through the configured store (and, for Redis, the
/// in-process cache), and runs the background work that goes with it: re-storing keys
/// found under an old pepper, writing `last_used_at`, following invalidations.
pub struct Authenticator {
    store: Arc<Store>,
    peppers: Peppers,
    cache: Option<KeyCache>,
    metrics: Arc<Metrics>,
    last_used: Mutex<LastUsed>,
}

impl Authenticator {
    /// The cache is used in front of Redis only: the file store is already in memory.
    pub fn new(store: Arc<Store>, peppers: Peppers, settings: &Keys, metrics: Arc<Metrics>) -> Self {
        let cache = match &*store {
            Store::Redis(_) => Some(KeyCache::new(settings.cache_ttl, settings.stale_if_error)),
            Store::File(_) => None,
        };
        Authenticator { store, peppers, cache, metrics, last_used: Mutex::new(LastUsed::default()) }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn peppers(&self) -> &Peppers {
        &self.peppers
    }

    pub fn cache(&self) -> Option<&KeyCache> {
        self.cache.as_ref()
    }

    /// Authenticates a well-formed secret at `now`. `Err` only when the store is needed
    /// and unreachable (503, never 401).
    ///
    /// What is in memory answers first: the cache in front of Redis (a fresh entry, or a
    /// cached "no such key"), or the file store's probe under the current pepper (the whole
    /// file store is in memory; that probe stands for the cache). Only when that cannot
    /// answer is `may_ask` called, once, before the store is asked (Redis, or the file
    /// store's old peppers): when it says no, the store is not asked and the answer is
    /// [`Authentication::NotAsked`]. A key the cache holds never calls it.
    pub async fn authenticate(
        self: &Arc<Self>,
        secret: &Secret,
        now: OffsetDateTime,
        may_ask: impl FnOnce() -> bool,
    ) -> Result<Authentication, StoreError> {
        // Most keys are stored under the current pepper: its digest alone is computed on
        // the hit path (the cache key, or the file store's first probe); the old peppers'
        // (and plain SHA-256) only when that finds nothing.
        let current = self.peppers.current(secret);
        let lookup = match &self.cache {
            None => match self.store.lookup(std::slice::from_ref(&current)).await? {
                Lookup::NotFound => {
                    if !may_ask() {
                        return Ok(Authentication::NotAsked);
                    }
                    self.store.lookup(&self.peppers.all(secret)[1..]).await?
                }
                found => found,
            },
            Some(cache) => match cache.fresh(&current.hex) {
                Some((lookup, outcome)) => {
                    self.metrics.cache_lookup(outcome);
                    lookup
                }
                None => {
                    if !may_ask() {
                        return Ok(Authentication::NotAsked);
                    }
                    let store = self.store.clone();
                    let digests = self.peppers.all(secret);
                    let (result, outcome) =
                        cache.get(&current.hex, || async move { store.lookup(&digests).await }).await;
                    self.metrics.cache_lookup(outcome);
                    result?
                }
            },
        };
        let Lookup::Found { key, tenant, matched, identity } = lookup else {
            return Ok(Authentication::Invalid(AuthFailure::Unknown));
        };
        if matched != current {
            self.restore_under_current_pepper(key.id.clone(), current);
        }
        Ok(match (key.state(now), tenant) {
            (KeyState::Revoked, _) | (_, None) => Authentication::Invalid(AuthFailure::Revoked),
            (KeyState::Expired, _) => Authentication::Invalid(AuthFailure::Expired),
            (KeyState::Active, Some(tenant)) => {
                self.note_use(&key.id, &tenant.id, now);
                Authentication::Valid(Principal::of(key, tenant, identity))
            }
        })
    }

    /// Re-stores a key's digest under the current pepper, in the background.
    fn restore_under_current_pepper(self: &Arc<Self>, key_id: String, current: KeyDigest) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let authenticator = self.clone();
        runtime.spawn(async move {
            match authenticator.store.restore_digest(&key_id, current.clone()).await {
                Ok(()) => {
                    if let Some(cache) = &authenticator.cache {
                        cache.invalidate_digest(&current.hex);
                    }
                    tracing::info!(target: "audit", action = "key.repepper", key_id = %key_id, "key re-stored under the current pepper");
                }
                Err(e) => tracing::warn!(key_id = %key_id, error = %e, "could not re-store a key under the current pepper"),
            }
        });
    }

    /// Notes a use for `last_used_at` (Redis only); the write happens in the flusher.
    fn note_use(&self, key_id: &str, tenant: &str, now: OffsetDateTime) {
        if !matches!(&*self.store, Store::Redis(_)) {
            return;
        }
        let mut last_used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        let entry = last_used.keys.entry(key_id.to_string()).or_insert_with(|| (tenant.to_string(), None, None));
        if entry.1.is_none_or(|written| written.elapsed() >= LAST_USED_EVERY) && entry.2.is_none() {
            entry.2 = Some(now);
        }
    }

    /// Writes pending `last_used_at` values (at most one per key a minute). Runs in the
    /// background every few seconds; never on a request's path.
    pub async fn flush_last_used(&self) {
        let Store::Redis(store) = &*self.store else { return };
        let pending: Vec<(String, String, OffsetDateTime)> = {
            let mut last_used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
            last_used.keys.retain(|_, (_, written, pending)| {
                pending.is_some() || written.is_some_and(|w| w.elapsed() < LAST_USED_EVERY)
            });
            last_used
                .keys
                .iter_mut()
                .filter_map(|(id, (tenant, written, pending))| {
                    let at = pending.take()?;
                    *written = Some(Instant::now());
                    Some((id.clone(), tenant.clone(), at))
                })
                .collect()
        };
        if pending.is_empty() {
            return;
        }
        if let Err(e) = store.record_last_used(&pending).await {
            tracing::debug!(error = %e, "last_used_at not written; will retry on the next use");
        }
    }

    /// The background work of a Redis-backed authenticator: the `last_used_at` flusher and the
    /// invalidation subscriber. Returns at once for the file store.
    pub fn spawn_background(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Store::Redis(store) = &*self.store else { return };
        let flusher = self.clone();
        let stop_flusher = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LAST_USED_FLUSH);
            loop {
                tokio::select! {
                    _ = stop_flusher.cancelled() => { flusher.flush_last_used().await; return; }
                    _ = tick.tick() => flusher.flush_last_used().await,
                }
            }
        });
        let client = store.client().pubsub_client();
        let subscriber = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = subscriber.follow_invalidations(client) => {}
            }
        });
    }

    /// Subscribes to the invalidation channel and applies what arrives. The subscription is
    /// PINGed every second; when it is lost or silent, it is re-made and every cached entry
    /// revalidated, because messages may have been missed meanwhile.
    async fn follow_invalidations(&self, client: redis::Client) {
        use tokio_stream::StreamExt;
        let Some(cache) = &self.cache else { return };
        loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(INVALIDATION_CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(SUBSCRIPTION_PING, subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                _ => {
                    self.metrics.store_error(StoreOp::Subscribe);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            cache.revalidate_all();
            tracing::info!("following key invalidations");
            let (mut sink, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Ok(text) = message.get_payload::<String>() else { continue };
                        match Invalidation::parse(&text) {
                            Some(Invalidation::Digest(hex)) => cache.invalidate_digest(&hex),
                            Some(Invalidation::Tenant(tenant)) => cache.invalidate_tenant(&tenant),
                            None => tracing::debug!("ignored an unknown invalidation message"),
                        }
                    }
                    _ = ping.tick() => {
                        let alive = tokio::time::timeout(SUBSCRIPTION_PING, sink.ping::<redis::Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) { break; }
                    }
                }
            }
            self.metrics.store_error(StoreOp::Subscribe);
            cache.revalidate_all();
            tracing::warn!("key invalidation subscription lost; cached keys are revalidated");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What is wrong with `token`, sent after `Bearer `, that `parse_secret` refused as
/// `malformed`, for the 401 message: the mistakes people make first
/// ([`crate::bearer::token_mistake`]), then what the key parser saw.
pub fn why_not_a_key(token: &str, malformed: Malformed) -> BadKey {
    crate::bearer::token_mistake(token).unwrap_or(match malformed {
        Malformed::Prefix if token.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("kg_")) => BadKey::PrefixCase,
        Malformed::Prefix => BadKey::Prefix,
        Malformed::Length => BadKey::Length { sent: token.chars().count(), expected: KEY_LEN },
        Malformed::Charset => BadKey::Charset,
        Malformed::Checksum => BadKey::Checksum,
    })
}
