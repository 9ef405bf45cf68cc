//! The in-process limiter: one replica's sliding windows, kept in memory per tenant.

use std::sync::Arc;

use super::{Clock, Decision, Limit};

/// Sliding-window counters per tenant, in memory. Memory per tenant is bounded
/// (`SUB_WINDOWS` counters); idle tenants are dropped.
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
}

impl LocalLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        LocalLimiter { clock }
    }

    /// Admits `cost` requests for `tenant` under `limit`, or refuses them without counting
    /// them (a client that keeps retrying is not locked out).
    pub fn check(&self, tenant: &str, limit: &Limit, cost: u64) -> Decision {
        let _ = (tenant, limit, cost, &self.clock);
        todo!("ratelimit helper")
    }
}
