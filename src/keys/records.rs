//! What is stored about tenants and keys ([`TenantRecord`], [`KeyRecord`] and a key's
//! [`KeyState`]), tenant ids, and the [`Principal`] that authentication yields.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use time::OffsetDateTime;

use super::pepper::KeyDigest;
use arc_swap::ArcSwapOption;

use crate::policy::overrides::{effective, LimitOverrides, LimitSource};
use crate::policy::{Plan, PlanHeaders, Policy, LEGACY_LIMIT_NAME};

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
    /// The tenant's own limits over its plan's (`tenants set-limits`); none for most.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub overrides: LimitOverrides,
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
    /// The key's own limits over its tenant's (`keys set-limits`); none for most.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub overrides: LimitOverrides,
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
    /// Present only when the key or its tenant has limit overrides: their effective
    /// rate-limit headers, built once per policy (see [`Principal::effective_limits`]).
    pub limits: Option<EffectiveCache>,
}

/// The effective limits (plan, then the tenant's overrides, then the key's) of one key
/// record and its tenant's record, as the [`PlanHeaders`] the limiter decides against:
/// built on the first request under a policy and shared by the key's later requests
/// until the policy changes (keyed by its hash), like the identity headers are per record.
/// A change of the overrides comes with new records, hence a new cache.
#[derive(Default)]
pub struct EffectiveCache(ArcSwapOption<Effective>);

/// One policy's effective limits of a principal.
struct Effective {
    policy_hash: Box<str>,
    headers: Option<Arc<PlanHeaders>>,
}

impl PartialEq for EffectiveCache {
    /// A cache is a cache: records are equal whatever it holds.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for EffectiveCache {}

impl std::fmt::Debug for EffectiveCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectiveCache").finish_non_exhaustive()
    }
}

impl IdentityHeaders {
    /// The header values of `key` of `tenant`.
    pub fn of(key: &KeyRecord, tenant: &TenantRecord) -> IdentityHeaders {
        IdentityHeaders {
            key_id: value(key.id.clone()),
            tenant: value(tenant.id.clone()),
            plan: value(tenant.plan.clone()),
            scopes: value(key.scopes.join(",")),
            limits: (!key.overrides.is_empty() || !tenant.overrides.is_empty()).then(EffectiveCache::default),
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
        let tenant =
            TenantRecord { id: tenant.to_string(), plan: plan.to_string(), created_at, overrides: Default::default() };
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
            overrides: Default::default(),
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

    /// Whether the key or its tenant carries limit overrides (most do not: they take the
    /// plan's precomputed headers, at no extra cost).
    pub fn has_overrides(&self) -> bool {
        self.identity.limits.is_some()
    }

    /// The tenant's and the key's limit overrides (empty for most).
    pub fn overrides(&self) -> (&LimitOverrides, &LimitOverrides) {
        (&self.tenant.overrides, &self.key.overrides)
    }

    /// The `concurrency` that replaces the plan's for this request: the key's override,
    /// else its tenant's, else `None` (the plan's applies).
    pub fn concurrency_override(&self) -> Option<u32> {
        self.key.overrides.concurrency.or(self.tenant.overrides.concurrency)
    }

    /// The effective limits' headers under `plan` of `policy` (the tenant's plan), for a
    /// principal with overrides ([`Principal::has_overrides`]); `None` without overrides,
    /// or when the effective set is empty. Built once per (records, policy) and cached.
    pub fn effective_limits(&self, policy: &Policy, plan: &Plan) -> Option<Arc<PlanHeaders>> {
        let cache = self.identity.limits.as_ref()?;
        if let Some(hit) = cache.0.load().as_ref().filter(|e| *e.policy_hash == *policy.hash) {
            return hit.headers.clone();
        }
        let headers = effective_headers(plan, &self.tenant.overrides, &self.key.overrides);
        cache.0.store(Some(Arc::new(Effective { policy_hash: policy.hash.as_str().into(), headers: headers.clone() })));
        headers
    }
}

/// The [`PlanHeaders`] of `plan`'s limits under `tenant`'s and `key`'s overrides (see
/// [`crate::policy::overrides::effective`]); `None` if there is no limit at all. A plan
/// written the legacy way keeps its legacy headers while its one limit is all there is.
pub fn effective_headers(plan: &Plan, tenant: &LimitOverrides, key: &LimitOverrides) -> Option<Arc<PlanHeaders>> {
    let layered = effective(&plan.limits, tenant, key);
    // A key's own limits count for it alone (bit i: limit i, of the first 64).
    let key_scoped = layered
        .iter()
        .enumerate()
        .filter(|(i, (_, source))| *i < 64 && *source == LimitSource::Key)
        .fold(0u64, |mask, (i, _)| mask | (1 << i));
    let limits: Vec<_> = layered.into_iter().map(|(limit, _)| limit).collect();
    if limits.is_empty() {
        return None;
    }
    let legacy = plan.rate_headers.as_ref().is_some_and(|h| h.legacy())
        && limits.len() == 1
        && limits[0].name == LEGACY_LIMIT_NAME;
    Some(Arc::new(PlanHeaders::with_limits(&plan.name, &limits, legacy).with_key_scoped(key_scoped)))
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
