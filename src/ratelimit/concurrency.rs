//! Concurrency caps (docs/reference.md §4.4): a plan's `concurrency = N` lets at most `N`
//! requests of a tenant be in flight at once. A request holds a [`Slot`] from its
//! admission until its response body ends or is dropped (the client went away), or, for
//! a WebSocket, until its tunnel closes: the slot lives in the request's access-log
//! record, which lives exactly that long. Dropping the slot gives it back.
//!
//! - `limits.backend = "local"`: one count per tenant in this process, behind one lock.
//!   A tenant already counted costs a lookup and no allocation; a tenant with no slot
//!   held is forgotten, so memory follows the tenants in flight, not every tenant seen.
//! - `limits.backend = "redis"`: the slots are shared by every replica ([`redis`]): a
//!   sorted set per tenant whose members expire unless this replica renews them, so a
//!   replica that dies leaks its slots for at most `limits.concurrency_ttl`.
//!
//! When Redis cannot decide, the route's `on_store_error` applies as for the rate limits:
//! `local`, a count of this process alone with a cap of `ceil(N / limits.replicas)`;
//! `allow`, admitted without a slot; `deny`, the caller answers 503.
//!
//! A plan without `concurrency` never reaches this module: no lock, no Redis call.

pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::Metrics;
use crate::redis_client::RedisCallError;
use crate::settings::{LimitBackend, Limits, OnStoreError};

pub use self::redis::RedisSlots;

/// What [`Concurrency::acquire`] decided.
#[derive(Debug)]
pub enum Acquired {
    /// Within the cap: the request holds this slot until it is dropped. `None` when the
    /// store was down and `on_store_error = "allow"` admitted it without one.
    Admitted(Option<Slot>),
    /// The tenant has its cap of requests in flight: 429.
    Refused,
    /// The store was down and `on_store_error = "deny"`: 503.
    Unavailable,
}

/// The concurrency caps of one replica: the configured backend and the fallback of
/// `on_store_error = "local"`.
#[derive(Debug)]
pub struct Concurrency {
    backend: LimitBackend,
    /// `limits.replicas`, at least 1.
    replicas: u32,
    /// `backend = "redis"`.
    redis: Option<RedisSlots>,
    /// `backend = "local"`, and the fallback while Redis cannot decide (separate counts).
    local: Arc<Counts>,
    fallback: Arc<Counts>,
    metrics: Arc<Metrics>,
}

impl Concurrency {
    /// In-process caps of this replica alone (`backend = "local"`).
    pub fn local(metrics: Arc<Metrics>) -> Concurrency {
        Concurrency {
            backend: LimitBackend::Local,
            replicas: 1,
            redis: None,
            local: Arc::new(Counts::default()),
            fallback: Arc::new(Counts::default()),
            metrics,
        }
    }

    /// The caps for `limits`: shared through `redis` with `backend = "redis"` (without
    /// one, every acquire is a store failure), else in-process.
    pub fn new(limits: &Limits, redis: Option<RedisSlots>, metrics: Arc<Metrics>) -> Concurrency {
        Concurrency {
            backend: limits.backend,
            replicas: limits.replicas.max(1),
            redis: if limits.backend == LimitBackend::Redis { redis } else { None },
            ..Concurrency::local(metrics)
        }
    }

    /// Takes one of `tenant`'s `cap` slots, or says why not. With Redis: one round trip,
    /// bounded by `redis.timeout` (none while its breaker is open), then
    /// `on_store_error` if it failed.
    pub async fn acquire(&self, tenant: &str, cap: u32, on_store_error: OnStoreError) -> Acquired {
        let shared = match (self.backend, &self.redis) {
            (LimitBackend::Local, _) => None,
            (LimitBackend::Redis, Some(redis)) => Some(redis.acquire(tenant, cap).await),
            (LimitBackend::Redis, None) => Some(Err(RedisCallError::Unavailable)),
        };
        let acquired = match shared {
            None => self.take_local(&self.local, tenant, cap),
            Some(shared) => match shared {
                Ok(Some(slot)) => Acquired::Admitted(Some(slot.into())),
                Ok(None) => Acquired::Refused,
                Err(e) => {
                    tracing::debug!(error = %e, "concurrency store failed; applying on_store_error");
                    self.metrics.store_fallback(on_store_error);
                    match on_store_error {
                        OnStoreError::Local => self.take_local(&self.fallback, tenant, cap.div_ceil(self.replicas)),
                        OnStoreError::Allow => Acquired::Admitted(None),
                        OnStoreError::Deny => Acquired::Unavailable,
                    }
                }
            },
        };
        if matches!(acquired, Acquired::Refused) {
            self.metrics.concurrency_refused();
        }
        acquired
    }

    fn take_local(&self, counts: &Arc<Counts>, tenant: &str, cap: u32) -> Acquired {
        match counts.take(tenant, cap) {
            Some(tenant) => {
                self.metrics.concurrency_slot_taken();
                Acquired::Admitted(Some(Slot(Held::Local {
                    counts: counts.clone(),
                    tenant,
                    metrics: self.metrics.clone(),
                })))
            }
            None => Acquired::Refused,
        }
    }

    /// Slots of `tenant` held in this process by the in-process counts (`backend =
    /// "local"` and the `on_store_error = "local"` fallback together).
    pub fn held_locally(&self, tenant: &str) -> u32 {
        self.local.held(tenant) + self.fallback.held(tenant)
    }

    /// Tenants with a slot held in the in-process counts (what their memory holds).
    pub fn tenants_held_locally(&self) -> usize {
        self.local.len() + self.fallback.len()
    }
}

/// One request's place under its tenant's cap, given back when dropped.
#[derive(Debug)]
pub struct Slot(Held);

#[derive(Debug)]
enum Held {
    Local { counts: Arc<Counts>, tenant: Arc<str>, metrics: Arc<Metrics> },
    Redis(redis::RedisSlot),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.0 {
            Held::Local { counts, tenant, metrics } => {
                counts.give_back(tenant);
                metrics.concurrency_slot_given_back();
            }
            // Its own Drop releases it, right after this.
            Held::Redis(slot) => tracing::trace!(?slot, "concurrency slot given back"),
        }
    }
}

impl From<redis::RedisSlot> for Slot {
    fn from(slot: redis::RedisSlot) -> Slot {
        Slot(Held::Redis(slot))
    }
}

/// In-process counts: slots held per tenant, only tenants with one held.
#[derive(Debug, Default)]
struct Counts {
    tenants: Mutex<HashMap<Arc<str>, Count>>,
}

#[derive(Debug)]
struct Count {
    /// The map's key, shared with each slot (so that a known tenant costs no allocation).
    tenant: Arc<str>,
    held: u32,
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Count>> {
        // Nothing panics while holding the lock, and a count stays consistent anyway.
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more slot of `tenant` if fewer than `cap` are held: the tenant's shared name.
    fn take(&self, tenant: &str, cap: u32) -> Option<Arc<str>> {
        let mut tenants = self.lock();
        if let Some(count) = tenants.get_mut(tenant) {
            if count.held >= cap {
                return None;
            }
            count.held += 1;
            return Some(count.tenant.clone());
        }
        if cap == 0 {
            return None;
        }
        let name: Arc<str> = tenant.into();
        tenants.insert(name.clone(), Count { tenant: name.clone(), held: 1 });
        Some(name)
    }

    fn give_back(&self, tenant: &str) {
        let mut tenants = self.lock();
        if let Some(count) = tenants.get_mut(tenant) {
            count.held = count.held.saturating_sub(1);
            if count.held == 0 {
                tenants.remove(tenant);
            }
        }
    }

    fn held(&self, tenant: &str) -> u32 {
        self.lock().get(tenant).map_or(0, |count| count.held)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Concurrency {
        Concurrency::local(Arc::new(Metrics::new()))
    }

    fn slot(acquired: Acquired) -> Slot {
        match acquired {
            Acquired::Admitted(Some(slot)) => slot,
            other => panic!("expected a slot, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn local_caps_each_tenant_and_forgets_idle_ones() {
        let c = local();
        let a1 = slot(c.acquire("a", 2, OnStoreError::Deny).await);
        let a2 = slot(c.acquire("a", 2, OnStoreError::Deny).await);
        assert!(matches!(c.acquire("a", 2, OnStoreError::Deny).await, Acquired::Refused));
        // Another tenant has its own cap.
        let b = slot(c.acquire("b", 1, OnStoreError::Deny).await);
        assert_eq!((c.held_locally("a"), c.held_locally("b")), (2, 1));
        drop(a1);
        let a3 = slot(c.acquire("a", 2, OnStoreError::Deny).await);
        drop((a2, a3, b));
        assert_eq!(c.held_locally("a"), 0);
        assert_eq!(c.tenants_held_locally(), 0, "tenants with nothing held are forgotten");
        let text = c.metrics.encode();
        assert!(text.contains("keygate_concurrency_refused_total 1"), "{text}");
        assert!(text.contains("keygate_concurrency_slots_held 0"), "{text}");
    }

    #[tokio::test]
    async fn redis_backend_without_a_store_applies_on_store_error() {
        let limits = Limits {
            backend: LimitBackend::Redis,
            on_store_error: OnStoreError::Local,
            replicas: 3,
            concurrency_ttl: std::time::Duration::from_secs(10),
        };
        let c = Concurrency::new(&limits, None, Arc::new(Metrics::new()));
        // ceil(5 / 3) = 2 of this replica's own.
        let s1 = slot(c.acquire("t", 5, OnStoreError::Local).await);
        let _s2 = slot(c.acquire("t", 5, OnStoreError::Local).await);
        assert!(matches!(c.acquire("t", 5, OnStoreError::Local).await, Acquired::Refused));
        assert!(matches!(c.acquire("t", 5, OnStoreError::Allow).await, Acquired::Admitted(None)));
        assert!(matches!(c.acquire("t", 5, OnStoreError::Deny).await, Acquired::Unavailable));
        drop(s1);
        assert_eq!(c.held_locally("t"), 1);
    }
}
