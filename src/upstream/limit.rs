//! The per-upstream connection cap (`max_connections`, `queue_timeout` on
//! `[upstreams.NAME]`): at most `max_connections` requests in flight to one upstream at
//! once, across every worker (for HTTP/1.1 that is the connections held busy: a pooled
//! connection serves one request at a time; for h2c the streams). A request holds its
//! slot ([`ConnectionPermit`]) from before it is sent until its response body has ended
//! (the pipeline wraps the body in [`crate::body::Holding`]) or its WebSocket tunnel has closed, whatever the client does meanwhile
//! (a slow reader keeps its slot, and its upstream connection, busy).
//!
//! Past the cap a request waits, in arrival order, at most `queue_timeout`; the queue
//! itself holds at most `max_connections` waiters. A request that finds the queue full or
//! waits in vain is answered 503 `upstream_busy` (`Retry-After: 1`) and counted in
//! `keygate_upstream_busy_total`. So a slow or stuck upstream, or clients that trickle
//! their bodies, cannot take every file descriptor keygate has: other upstreams, the
//! admin listeners and new connections keep theirs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One upstream's slots.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    /// `max_connections` as configured when these slots were made.
    pub(super) max: usize,
    /// Requests waiting for a slot now.
    waiting: AtomicUsize,
}

/// A request's slot among its upstream's `max_connections`, held until dropped.
pub struct ConnectionPermit {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub(super) fn new(max: usize) -> Slots {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Slots { semaphore: Arc::new(Semaphore::new(max)), max, waiting: AtomicUsize::new(0) }
    }

    /// A slot: at once when one is free, else after waiting at most `queue_timeout`
    /// behind at most `max` others. `None`: busy.
    pub(super) async fn acquire(&self, queue_timeout: Duration) -> Option<ConnectionPermit> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Some(ConnectionPermit { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let waited = tokio::time::timeout(queue_timeout, self.semaphore.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Some(ConnectionPermit { _permit: permit }),
            // Timed out, or the semaphore closed (never: it is not closed).
            _ => None,
        }
    }

    /// Slots in use now (for tests and diagnostics).
    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_a_request_waits_then_is_busy_and_the_queue_is_bounded() {
        let slots = Arc::new(Slots::new(2));
        let first = slots.acquire(Duration::from_secs(1)).await.expect("a free slot");
        let _second = slots.acquire(Duration::from_secs(1)).await.expect("a free slot");
        assert_eq!(slots.in_use(), 2);
        // Full: a third waits its queue_timeout and is busy.
        assert!(slots.acquire(Duration::from_millis(200)).await.is_none());
        // A waiter gets the slot a finished request frees.
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(Duration::from_secs(60)).await }
        });
        while slots.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        let _third = waiter.await.unwrap().expect("the freed slot went to the waiter");
        assert_eq!(slots.in_use(), 2);
        // The queue holds at most `max` waiters: the next one is busy at once, not after
        // its (hour-long) queue_timeout.
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.acquire(Duration::from_secs(3600)).await.is_some() })
            })
            .collect();
        while slots.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(30), slots.acquire(Duration::from_secs(3600))).await;
        assert!(matches!(refused, Ok(None)), "a full queue refuses at once");
        for waiter in waiters {
            waiter.abort();
        }
    }
}
