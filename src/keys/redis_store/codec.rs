//! How records are written into Redis hashes and read back, and how script replies are
//! read. Times are RFC 3339 in UTC (`Z`), fractional seconds only when non-zero, so that
//! the scripts can compare them as strings (see `scripts/norm.lua`).
//!
//! Public (and hidden from the docs) only so that the fuzz targets in `fuzz/` and their
//! corpus replay in `tests/fuzz_corpus.rs` can reach the decoder; nothing else outside
//! `redis_store` uses it.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::keys::{KeyDigest, KeyRecord, TenantRecord};
use crate::policy::overrides::LimitOverrides;
use crate::policy::Policy;

/// A hash's fields, as `HGETALL` returns them.
pub type Fields = HashMap<String, String>;

/// A time as stored: RFC 3339 in UTC (`Z`), fractional seconds only when non-zero.
pub fn format_time(t: OffsetDateTime) -> String {
    // Cannot fail for a time whose UTC form lies in the years 0000–9999, and [`parse_time`]
    // reads no other; checked all the same, so that no time can panic a write.
    t.checked_to_offset(UtcOffset::UTC).and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A stored time. One whose UTC form falls outside the years 0000–9999 (an offset
/// pushing `0000-01-01` or `9999-12-31` over the edge) is refused: it could not be
/// written back.
pub fn parse_time(field: &str, text: &str) -> Result<OffsetDateTime, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("`{field}` is not an RFC 3339 time: {e}"))?;
    match t.checked_to_offset(UtcOffset::UTC) {
        Some(utc) if (0..=9999).contains(&utc.year()) => Ok(t),
        _ => Err(format!("`{field}` is {text}, outside the years 0000–9999 in UTC")),
    }
}

/// `pepper_id:hex`, as the record's `digest` field holds it.
pub fn digest_text(digest: &KeyDigest) -> String {
    format!("{}:{}", digest.pepper_id, digest.hex)
}

pub fn parse_digest(text: &str) -> Option<KeyDigest> {
    let (pepper_id, hex) = text.rsplit_once(':')?;
    (!pepper_id.is_empty() && !hex.is_empty())
        .then(|| KeyDigest { pepper_id: pepper_id.to_string(), hex: hex.to_string() })
}

/// `<tenant>/<key_id>` → its parts.
pub fn split_target(text: &str) -> Option<(&str, &str)> {
    let (tenant, key_id) = text.split_once('/')?;
    (!tenant.is_empty() && !key_id.is_empty()).then_some((tenant, key_id))
}

/// A key record as hash fields; absent optional fields are not written.
pub fn key_fields(record: &KeyRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", record.id.clone()),
        ("tenant", record.tenant.clone()),
        ("name", record.name.clone()),
        ("scopes", serde_json::to_string(&record.scopes).unwrap_or_else(|_| "[]".to_string())),
        ("created_at", format_time(record.created_at)),
        ("digest", digest_text(&record.digest)),
    ];
    let optional =
        [("expires_at", record.expires_at), ("revoked_at", record.revoked_at), ("last_used_at", record.last_used_at)];
    fields.extend(optional.into_iter().filter_map(|(name, t)| t.map(|t| (name, format_time(t)))));
    if let Some(by) = &record.replaced_by {
        fields.push(("replaced_by", by.clone()));
    }
    if let Some(limits) = overrides_text(&record.overrides) {
        fields.push((LIMITS_FIELD, limits));
    }
    fields
}

pub fn tenant_fields(tenant: &TenantRecord) -> Vec<(&'static str, String)> {
    let mut fields =
        vec![("id", tenant.id.clone()), ("plan", tenant.plan.clone()), ("created_at", format_time(tenant.created_at))];
    if let Some(limits) = overrides_text(&tenant.overrides) {
        fields.push((LIMITS_FIELD, limits));
    }
    fields
}

/// The hash field that holds a tenant's or a key's limit overrides, as JSON in the
/// policy's shape (`{"limits":[...],"concurrency":N}`); absent when there are none, so
/// records without overrides are what they always were.
pub const LIMITS_FIELD: &str = "limits";

/// Overrides as [`LIMITS_FIELD`] holds them; `None` for none.
pub fn overrides_text(overrides: &LimitOverrides) -> Option<String> {
    (!overrides.is_empty()).then(|| serde_json::to_string(overrides).unwrap_or_default())
}

/// The overrides of a record's hash: none when the field is absent or empty.
fn parse_overrides(fields: &Fields) -> Result<LimitOverrides, String> {
    match fields.get(LIMITS_FIELD).filter(|v| !v.is_empty()) {
        None => Ok(LimitOverrides::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| format!("`{LIMITS_FIELD}` is not valid overrides: {e}")),
    }
}

/// A key record from its hash; `None` when the hash is empty (missing).
pub fn parse_key(fields: &Fields) -> Result<Option<KeyRecord>, String> {
    if fields.is_empty() {
        return Ok(None);
    }
    let required = |name: &str| fields.get(name).ok_or_else(|| format!("a key record has no `{name}`"));
    let optional_time =
        |name: &str| fields.get(name).filter(|v| !v.is_empty()).map(|v| parse_time(name, v)).transpose();
    let scopes: Vec<String> =
        serde_json::from_str(required("scopes")?).map_err(|e| format!("`scopes` is not a JSON list: {e}"))?;
    Ok(Some(KeyRecord {
        id: required("id")?.clone(),
        tenant: required("tenant")?.clone(),
        name: required("name")?.clone(),
        scopes,
        created_at: parse_time("created_at", required("created_at")?)?,
        expires_at: optional_time("expires_at")?,
        revoked_at: optional_time("revoked_at")?,
        last_used_at: optional_time("last_used_at")?,
        replaced_by: fields.get("replaced_by").filter(|v| !v.is_empty()).cloned(),
        digest: parse_digest(required("digest")?).ok_or("`digest` is not `pepper_id:hex`")?,
        overrides: parse_overrides(fields)?,
    }))
}

/// A tenant from its hash; `None` when the hash is empty (missing).
pub fn parse_tenant(fields: &Fields) -> Result<Option<TenantRecord>, String> {
    if fields.is_empty() {
        return Ok(None);
    }
    let required = |name: &str| fields.get(name).ok_or_else(|| format!("a tenant record has no `{name}`"));
    Ok(Some(TenantRecord {
        id: required("id")?.clone(),
        plan: required("plan")?.clone(),
        created_at: parse_time("created_at", required("created_at")?)?,
        overrides: parse_overrides(fields)?,
    }))
}

/// The policy's plans as the create script takes them: (name, max_keys or -1,
/// api_access 1/0) for each, flat.
pub(super) fn plan_args(policy: &Policy) -> Vec<String> {
    let mut plans: Vec<_> = policy.plans.values().collect();
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    plans
        .into_iter()
        .flat_map(|plan| {
            let max = plan.max_keys.map_or_else(|| "-1".to_string(), |m| m.to_string());
            [plan.name.clone(), max, if plan.api_access { "1" } else { "0" }.to_string()]
        })
        .collect()
}

/// A script's status, its first element.
pub fn status(reply: &[String]) -> &str {
    reply.first().map_or("", String::as_str)
}

/// The field/value pairs after a script's `ok`.
pub fn reply_fields(reply: &[String]) -> Fields {
    reply.get(1..).unwrap_or_default().chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}
