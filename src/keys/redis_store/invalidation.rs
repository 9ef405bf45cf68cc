//! What a write announces to the replicas' caches: the [`Invalidation`] messages, their
//! channel, and publishing them once the change they announce is durable.

use super::{RedisStore, MANAGE_TIMEOUT};
use crate::metrics::StoreOp;

/// The pub/sub channel on which every write announces what changed (see
/// [`Invalidation`]); replicas subscribe to it to drop cached entries.
pub const INVALIDATION_CHANNEL: &str = "keygate:invalidate";

/// What a write changed, as published on [`INVALIDATION_CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The record of the key with this digest (lower-case hex) changed: revoked, rotated
    /// (the old key), re-stored under another pepper, or its tenant deleted.
    Digest(String),
    /// The tenant changed plan or limit overrides, or was deleted.
    Tenant(String),
}

impl Invalidation {
    /// The message: `digest:<hex>` or `tenant:<id>`.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Digest(hex) => format!("digest:{hex}"),
            Invalidation::Tenant(id) => format!("tenant:{id}"),
        }
    }

    /// The inverse of [`Invalidation::encode`]; `None` for anything else (a newer
    /// keygate's message, say), which a subscriber ignores.
    pub fn parse(text: &str) -> Option<Invalidation> {
        if let Some(hex) = text.strip_prefix("digest:") {
            return (!hex.is_empty()).then(|| Invalidation::Digest(hex.to_string()));
        }
        if let Some(id) = text.strip_prefix("tenant:") {
            return (!id.is_empty()).then(|| Invalidation::Tenant(id.to_string()));
        }
        None
    }
}

impl RedisStore {
    /// Publishes invalidations, after the change they announce is durable. A failure is
    /// logged, not returned: the change is made, and replicas that missed the message
    /// (their subscription is then down too, Redis being unreachable) revalidate their
    /// caches when they subscribe again.
    pub(super) async fn publish(&self, messages: Vec<Invalidation>) {
        if messages.is_empty() {
            return;
        }
        let payloads: Vec<String> = messages.iter().map(Invalidation::encode).collect();
        let result = self
            .client
            .run_with_timeout(StoreOp::Write, MANAGE_TIMEOUT, move |mut con| async move {
                // One pipeline of keyless commands, which a cluster sends to one node (and
                // the cluster bus to every other): in order, one round trip.
                let mut pipe = redis::pipe();
                for payload in &payloads {
                    pipe.cmd("PUBLISH").arg(INVALIDATION_CHANNEL).arg(payload).ignore();
                }
                pipe.query_async::<()>(&mut con).await
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "a key invalidation was not published; replicas revalidate when they resubscribe");
        }
    }
}
