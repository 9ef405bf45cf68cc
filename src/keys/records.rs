//! What is stored about tenants and keys ([`TenantRecord`], [`KeyRecord`] and a key's
//! [`KeyState`]), tenant ids, and the [`Principal`] that authentication yields.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use time::OffsetDateTime;

use super::pepper::KeyDigest;

/// Whether `id` is a tenant id (docs/reference.md, conventions): 1–63 characters of `a-z 0-9 _ -`,
/// starting with a letter or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A tenant: an account with one plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub plan: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A stored key: everything but the secret, which only its digest stands for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_used_at: Option<OffsetDateTime>,
    /// Set on the old key of a rotation: the id of the key that replaced it. Such a key
    /// does not count against `max_keys` during its grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    pub digest: KeyDigest,
}

/// Why a key that was found does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl KeyRecord {
    /// Whether the key works at `now`.
    pub fn state(&self, now: OffsetDateTime) -> KeyState {
        if self.revoked_at.is_some_and(|t| t <= now) {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// Who a request is: what authentication yields, safe to log (no secret; `Debug` shows
/// the four fields below only). It shares the store's records (the file store's
/// snapshot, the cache's entry) instead of copying their strings for each request.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    key: Arc<KeyRecord>,
    tenant: Arc<TenantRecord>,
    identity: Arc<IdentityHeaders>,
}

/// A principal's identity as the header values that go upstream (`x-keygate-key-id`,
/// `-tenant`, `-plan`, `-scopes`), made once per key record — when a store loads or
/// fetches it — and shared by every request of that key, which then copies and
/// validates no text to write them. A value that could not be a header value (validated
/// ids and plans cannot produce one) is `None`, and its header is left out.
#[derive(Debug, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub key_id: Option<HeaderValue>,
    pub tenant: Option<HeaderValue>,
    pub plan: Option<HeaderValue>,
    /// The scopes joined by `,` (empty for a key with none: the header is still sent).
    pub scopes: Option<HeaderValue>,
}

impl IdentityHeaders {
    /// The header values of `key` of `tenant`.
    pub fn of(key: &KeyRecord, tenant: &TenantRecord) -> IdentityHeaders {
        IdentityHeaders {
            key_id: value(key.id.clone()),
            tenant: value(tenant.id.clone()),
            plan: value(tenant.plan.clone()),
            scopes: value(key.scopes.join(",")),
        }
    }
}

/// `text` as a header value, taking over its buffer (no copy), if it is a valid one.
fn value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text.into_bytes())).ok()
}

impl Principal {
    /// The principal of a key of `tenant` (whose id the key's record names), with the
    /// identity headers its store made for it (made here when it made none).
    pub fn of(key: Arc<KeyRecord>, tenant: Arc<TenantRecord>, identity: Option<Arc<IdentityHeaders>>) -> Principal {
        let identity = identity.unwrap_or_else(|| Arc::new(IdentityHeaders::of(&key, &tenant)));
        Principal { key, tenant, identity }
    }

    /// A principal that comes from no store (tests, benchmarks): records with these
    /// values, created at the Unix epoch, with an empty digest.
    pub fn new(key_id: &str, tenant: &str, plan: &str, scopes: Vec<String>) -> Principal {
        let created_at = OffsetDateTime::UNIX_EPOCH;
        let tenant = TenantRecord { id: tenant.to_string(), plan: plan.to_string(), created_at };
        let key = KeyRecord {
            id: key_id.to_string(),
            tenant: tenant.id.clone(),
            name: String::new(),
            scopes,
            created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            replaced_by: None,
            digest: KeyDigest { pepper_id: String::new(), hex: String::new() },
        };
        Principal::of(Arc::new(key), Arc::new(tenant), None)
    }

    /// The identity as the header values that go upstream (shared: a request that writes
    /// them later keeps a reference, not a copy).
    pub fn identity_headers(&self) -> &Arc<IdentityHeaders> {
        &self.identity
    }

    pub fn key_id(&self) -> &str {
        &self.key.id
    }

    pub fn tenant(&self) -> &str {
        &self.tenant.id
    }

    pub fn plan(&self) -> &str {
        &self.tenant.plan
    }

    pub fn scopes(&self) -> &[String] {
        &self.key.scopes
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.key_id())
            .field("tenant", &self.tenant())
            .field("plan", &self.plan())
            .field("scopes", &self.scopes())
            .finish()
    }
}
