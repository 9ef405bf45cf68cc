//! Unit tests of the Redis store's pure parts: invalidation messages, the layout, the
//! codec; the store against real servers is `tests/redis_store.rs`.

use time::macros::datetime;

use super::codec::{format_time, key_fields, parse_key, parse_tenant, parse_time, split_target, tenant_fields, Fields};
use super::{corrupt, layout, Invalidation};
use crate::keys::data::StoreError;
use crate::keys::manage::ManageError;
use crate::keys::{KeyDigest, KeyRecord, TenantRecord};

#[test]
fn invalidations_round_trip() {
    for message in [Invalidation::Digest("ab12".into()), Invalidation::Tenant("acme".into())] {
        assert_eq!(Invalidation::parse(&message.encode()), Some(message));
    }
    assert_eq!(Invalidation::parse("digest:"), None);
    assert_eq!(Invalidation::parse("other:x"), None);
}

#[test]
fn layout_keeps_a_tenant_on_one_slot() {
    let digest = KeyDigest { pepper_id: "v1".into(), hex: "ab".into() };
    assert_eq!(layout::tenant("acme"), "kg:{t:acme}:tenant");
    assert_eq!(layout::keys("acme"), "kg:{t:acme}:keys");
    assert_eq!(layout::key("acme", "key_1"), "kg:{t:acme}:key:key_1");
    assert_eq!(layout::digest(&digest), "kg:digest:v1:ab");
    assert_eq!(layout::key_id("key_1"), "kg:keyid:key_1");
    assert_eq!(split_target(&layout::digest_target("acme", "key_1")), Some(("acme", "key_1")));
    assert_eq!(split_target("nokey/"), None);
}

#[test]
fn records_round_trip_through_hash_fields() {
    let record = KeyRecord {
        id: "key_1".into(),
        tenant: "acme".into(),
        name: "billing, \"worker\"".into(),
        scopes: vec!["calls:read".into(), "calls:write".into()],
        created_at: datetime!(2025-06-01 12:00:00.5 UTC),
        expires_at: Some(datetime!(2025-06-02 12:00 +02:00)),
        revoked_at: None,
        last_used_at: Some(datetime!(2025-06-01 13:00 UTC)),
        replaced_by: Some("key_2".into()),
        digest: KeyDigest { pepper_id: "v1".into(), hex: "00ff".into() },
        overrides: Default::default(),
    };
    let fields: Fields = key_fields(&record).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(fields["created_at"], "2025-06-01T12:00:00.5Z");
    assert_eq!(fields["expires_at"], "2025-06-02T10:00:00Z");
    assert!(!fields.contains_key("revoked_at"));
    assert_eq!(parse_key(&fields).unwrap(), Some(record));
    assert_eq!(parse_key(&Fields::new()).unwrap(), None);
    let tenant = TenantRecord {
        id: "acme".into(),
        plan: "pro".into(),
        created_at: datetime!(2025-06-01 12:00 UTC),
        overrides: Default::default(),
    };
    let fields: Fields = tenant_fields(&tenant).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(parse_tenant(&fields).unwrap(), Some(tenant));
    let mut broken = fields.clone();
    broken.remove("plan");
    assert!(parse_tenant(&broken).is_err());
}

/// Limit overrides live in a `limits` field, written only when there are some: records
/// without them are written and read exactly as before.
#[test]
fn overrides_round_trip_and_are_absent_when_empty() {
    let mut tenant = TenantRecord {
        id: "acme".into(),
        plan: "pro".into(),
        created_at: datetime!(2025-06-01 12:00 UTC),
        overrides: Default::default(),
    };
    let fields =
        |t: &TenantRecord| -> Fields { tenant_fields(t).into_iter().map(|(k, v)| (k.to_string(), v)).collect() };
    assert_eq!(
        fields(&tenant).keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(),
        ["created_at", "id", "plan"].into()
    );
    tenant.overrides =
        serde_json::from_str(r#"{"limits":[{"name":"minute","requests":600,"window":"60s"}],"concurrency":20}"#)
            .unwrap();
    let written = fields(&tenant);
    assert_eq!(written["limits"], r#"{"limits":[{"name":"minute","requests":600,"window":"1m"}],"concurrency":20}"#);
    assert_eq!(parse_tenant(&written).unwrap(), Some(tenant));
    let mut broken = written.clone();
    broken.insert("limits".into(), r#"{"limits":[{"name":"m","requests":0,"window":"1s"}]}"#.into());
    assert!(parse_tenant(&broken).unwrap_err().contains("limits"));
}

#[test]
fn unreadable_data_is_corrupt_and_reads_as_before() {
    let ManageError::Store(error) = corrupt("a key record has no `id`") else { panic!("not a store error") };
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert_eq!(error.to_string(), "key store unavailable: unreadable data in Redis: a key record has no `id`");
}

/// Found with the `codec` fuzz target's check: a stored time whose offset puts its UTC
/// form in the year -1 or 10000 was read, and writing it back gave "" (read again as no
/// time at all) or panicked. Such a time is refused when read, and no time panics a write.
#[test]
fn times_that_cannot_be_written_back_are_refused() {
    for text in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"] {
        let error = parse_time("expires_at", text).unwrap_err();
        assert!(error.contains("outside the years 0000–9999"), "{error}");
    }
    for text in ["0000-01-01T00:00:00Z", "0000-01-01T01:00:00+01:00", "9999-12-31T23:59:59.999999999Z"] {
        let t = parse_time("t", text).unwrap();
        assert_eq!(parse_time("t", &format_time(t)), Ok(t), "{text}");
    }
    assert_eq!(format_time(datetime!(9999-12-31 23:30 -01:00)), "");
    let mut fields: Fields = tenant_fields(&TenantRecord {
        id: "acme".into(),
        plan: "pro".into(),
        created_at: datetime!(2025-06-01 12:00 UTC),
        overrides: Default::default(),
    })
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    fields.insert("created_at".into(), "9999-12-31T23:30:00-01:00".into());
    assert!(parse_tenant(&fields).is_err());
}
