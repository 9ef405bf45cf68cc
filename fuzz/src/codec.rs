//! The Redis record codec (`keygate::keys::redis_store::codec`): a key or tenant record
//! built from the fuzzer's bytes comes back unchanged from its hash fields, both as a
//! map (`HGETALL`) and as a script's flat `ok, field, value, …` reply; and arbitrary
//! replies, fields and values never panic the decoder, and whatever it accepts it
//! writes back so that it reads the same again.

use keygate::keys::redis_store::codec::{
    digest_text, format_time, key_fields, parse_digest, parse_key, parse_tenant, parse_time, reply_fields,
    split_target, status, tenant_fields, Fields,
};
use keygate::keys::{valid_tenant_id, KeyDigest, KeyRecord, TenantRecord};
use time::{OffsetDateTime, UtcOffset};

use super::input::Input;

/// Every field name a record has, so that arbitrary replies hit them.
const FIELD_NAMES: [&str; 11] = [
    "id",
    "tenant",
    "name",
    "scopes",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "replaced_by",
    "digest",
    "plan",
];

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The first byte picks a key record, a tenant record, or an arbitrary reply.
pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => key_round_trip(&key_record(&mut input)),
        1 => tenant_round_trip(&tenant_record(&mut input)),
        _ => arbitrary_reply(&mut input),
    }
}

/// What the store writes (`HSET`) read back as `HGETALL` gives it, and as a script
/// returns it after its `ok`.
fn stored(fields: &[(&'static str, String)]) -> (Fields, Fields) {
    let map: Fields = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut reply = vec!["ok".to_string()];
    reply.extend(fields.iter().flat_map(|(k, v)| [k.to_string(), v.clone()]));
    assert_eq!(status(&reply), "ok");
    (map, reply_fields(&reply))
}

pub fn key_round_trip(record: &KeyRecord) {
    let (map, from_reply) = stored(&key_fields(record));
    assert_eq!(parse_key(&map), Ok(Some(record.clone())), "a key record does not come back from its hash");
    assert_eq!(parse_key(&from_reply), Ok(Some(record.clone())), "a key record does not come back from a reply");
}

pub fn tenant_round_trip(tenant: &TenantRecord) {
    let (map, from_reply) = stored(&tenant_fields(tenant));
    assert_eq!(parse_tenant(&map), Ok(Some(tenant.clone())), "a tenant does not come back from its hash");
    assert_eq!(parse_tenant(&from_reply), Ok(Some(tenant.clone())), "a tenant does not come back from a reply");
}

/// A time keygate can store: an instant in the years 0000–9999 UTC (the range of RFC
/// 3339), to the nanosecond, at some offset when that offset can show it.
fn time(input: &mut Input<'_>) -> OffsetDateTime {
    const FIRST: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let span = (LAST - FIRST + 1) as u64;
    let seconds = FIRST + (input.u64() % span) as i64;
    let nanos = if input.bool() { 0 } else { i128::from(input.u32() % 1_000_000_000) };
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(seconds) * 1_000_000_000 + nanos)
        .expect("inside time's range");
    let offset = UtcOffset::from_whole_seconds(i32::from(input.byte() as i8) * 900).unwrap_or(UtcOffset::UTC);
    t.checked_to_offset(offset).unwrap_or(t)
}

fn optional_time(input: &mut Input<'_>) -> Option<OffsetDateTime> {
    input.bool().then(|| time(input))
}

fn base62(input: &mut Input<'_>, len: usize) -> String {
    (0..len).map(|_| char::from(BASE62[usize::from(input.byte()) % 62])).collect()
}

fn key_id(input: &mut Input<'_>) -> String {
    format!("key_{}", base62(input, 16))
}

/// A tenant id: 1–63 of `a-z 0-9 _ -`, first a letter or digit.
fn tenant_id(input: &mut Input<'_>) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
    let len = 1 + usize::from(input.byte()) % 63;
    let id: String = (0..len)
        .map(|i| {
            let choices = if i == 0 { &CHARS[..36] } else { CHARS };
            char::from(choices[usize::from(input.byte()) % choices.len()])
        })
        .collect();
    assert!(valid_tenant_id(&id), "{id:?}");
    id
}

fn digest(input: &mut Input<'_>) -> KeyDigest {
    const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let len = 1 + usize::from(input.byte()) % 16;
    let pepper_id = (0..len).map(|_| char::from(ID_CHARS[usize::from(input.byte()) % ID_CHARS.len()])).collect();
    let hex = input.bytes(32).iter().map(|b| format!("{b:02x}")).collect::<String>();
    KeyDigest { pepper_id, hex: format!("{hex:0<64}") }
}

pub fn key_record(input: &mut Input<'_>) -> KeyRecord {
    let id = key_id(input);
    let tenant = tenant_id(input);
    let name = input.text();
    let scopes = (0..input.byte() % 5).map(|_| input.text()).collect();
    let created_at = time(input);
    let expires_at = optional_time(input);
    let revoked_at = optional_time(input);
    let last_used_at = optional_time(input);
    let replaced_by = input.bool().then(|| key_id(input));
    let digest = digest(input);
    KeyRecord {
        id,
        tenant,
        name,
        scopes,
        created_at,
        expires_at,
        revoked_at,
        last_used_at,
        replaced_by,
        digest,
        overrides: Default::default(),
    }
}

pub fn tenant_record(input: &mut Input<'_>) -> TenantRecord {
    TenantRecord { id: tenant_id(input), plan: input.text(), created_at: time(input), overrides: Default::default() }
}

/// A reply of arbitrary strings (field names among them): nothing panics, and what is
/// accepted is written back so that it reads the same again.
pub fn arbitrary_reply(input: &mut Input<'_>) {
    let mut reply = Vec::new();
    while reply.len() < 40 {
        let tag = input.byte();
        if tag == 0 && reply.len() > 1 {
            break;
        }
        match FIELD_NAMES.get(usize::from(tag)) {
            Some(name) => reply.push(name.to_string()),
            None => reply.push(input.text()),
        }
    }
    assert_eq!(status(&reply), reply.first().map_or("", String::as_str));
    let fields = reply_fields(&reply);
    if let Ok(Some(record)) = parse_key(&fields) {
        let again = parse_key(&stored(&key_fields(&record)).0);
        assert_eq!(again, Ok(Some(record)), "an accepted key record reads differently once written back");
    }
    if let Ok(Some(tenant)) = parse_tenant(&fields) {
        let again = parse_tenant(&stored(&tenant_fields(&tenant)).0);
        assert_eq!(again, Ok(Some(tenant)), "an accepted tenant reads differently once written back");
    }
    for text in &reply {
        if let Ok(t) = parse_time("t", text) {
            assert_eq!(parse_time("t", &format_time(t)), Ok(t), "the time {text:?} does not survive a write");
        }
        if let Some(digest) = parse_digest(text) {
            assert_eq!(parse_digest(&digest_text(&digest)), Some(digest), "the digest {text:?}");
        }
        if let Some((tenant, key_id)) = split_target(text) {
            assert!(!tenant.is_empty() && !key_id.is_empty() && !tenant.contains('/'), "{text:?}");
            assert_eq!(format!("{tenant}/{key_id}"), *text);
        }
    }
}
