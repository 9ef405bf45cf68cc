//! API keys (docs/reference.md §3): the module's root, naming its parts and re-exporting the key types
//! every caller uses as `crate::keys::…`: the `kg_` format and the redacting [`Secret`]
//! (`secret`), the check for keys in query strings (`query`), digests under versioned
//! peppers (`pepper`), the stored records and the [`Principal`] (`records`); then what is
//! built on them: the lifecycle rules (`manage`), the stores (`data`, `file_store`,
//! `redis_store`, `store`), the cache, and the JSON and audit forms.

mod pepper;
mod query;
mod records;
mod secret;

pub mod audit;
pub mod cache;
pub mod data;
pub mod file_store;
pub mod json;
pub mod manage;
pub mod redis_store;
pub mod store;

pub use pepper::{KeyDigest, Peppers, SHA256_PEPPER_ID};
pub use query::{query_carries_key, text_carries_key};
pub use records::{valid_tenant_id, IdentityHeaders, KeyRecord, KeyState, Principal, TenantRecord};
pub use secret::{
    generate_key_id, generate_secret, parse_secret, Malformed, Secret, KEY_CHECKSUM_LEN, KEY_ID_PREFIX, KEY_LEN,
    KEY_PREFIX, KEY_RANDOM_LEN,
};

#[cfg(test)]
mod tests;
