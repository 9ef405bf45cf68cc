//! The names of keygate's Redis keys, all prefixed `kg:`: the one implementation of the
//! layout documented for operators and dashboards in `docs/redis-layout.md`. A tenant's
//! records share the hash tag `{t:<tenant>}` (one Cluster slot); the digest index and the
//! key-id entries cannot, and live on slots of their own.

use crate::keys::KeyDigest;

/// Set of every tenant id (second step after the tenant's hash).
pub const TENANTS: &str = "kg:tenants";

/// Sorted set of deleted tenants, scored by the Unix time of deletion: their
/// tombstones are listed for 30 days.
pub const DELETED_TENANTS: &str = "kg:tenants:deleted";

/// Hash `id`, `plan`, `created_at`.
pub fn tenant(tenant: &str) -> String {
    format!("kg:{{t:{tenant}}}:tenant")
}

/// Set of the tenant's key ids.
pub fn keys(tenant: &str) -> String {
    format!("kg:{{t:{tenant}}}:keys")
}

/// Hash: the key record.
pub fn key(tenant: &str, key_id: &str) -> String {
    format!("{}{key_id}", key_prefix(tenant))
}

/// What [`key`] puts before the key id (the scripts build record names from it).
pub fn key_prefix(tenant: &str) -> String {
    format!("kg:{{t:{tenant}}}:key:")
}

/// String `<tenant>/<key_id>` (see [`digest_target`]): the digest index, on its
/// own slot.
pub fn digest(digest: &KeyDigest) -> String {
    format!("kg:digest:{}:{}", digest.pepper_id, digest.hex)
}

/// The value of a digest index entry.
pub fn digest_target(tenant: &str, key_id: &str) -> String {
    format!("{tenant}/{key_id}")
}

/// String: the tenant of a key id, so that commands by key id find its slot.
pub fn key_id(key_id: &str) -> String {
    format!("kg:keyid:{key_id}")
}
