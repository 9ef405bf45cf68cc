//! Unit tests of the key format, the query check, peppers and digests.

use super::secret::{checksum, crc32};
use super::*;
use crate::encoding::lower_hex;

/// Builds a key with a given random part and a correct checksum.
fn key_with(random: &str) -> String {
    let check = checksum(random.as_bytes());
    format!("kg_{random}{}", std::str::from_utf8(&check).unwrap())
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn generated_keys_round_trip() {
    for _ in 0..200 {
        let secret = generate_secret();
        let text = secret.expose();
        assert_eq!(text.len(), KEY_LEN);
        assert!(text.starts_with("kg_"));
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(parse_secret(text), Ok(secret.clone()));
    }
}

#[test]
fn generated_keys_differ() {
    let a = generate_secret();
    let b = generate_secret();
    assert_ne!(a, b);
}

#[test]
fn randomness_is_at_least_128_bits() {
    assert!((KEY_RANDOM_LEN as f64) * 62f64.log2() >= 128.0);
    assert!(62u64.pow(KEY_CHECKSUM_LEN as u32) > u64::from(u32::MAX));
}

#[test]
fn malformed_prefix() {
    let good = generate_secret();
    let body = &good.expose()[3..];
    assert_eq!(parse_secret(&format!("KG_{body}")), Err(Malformed::Prefix));
    assert_eq!(parse_secret(&format!("gh_{body}")), Err(Malformed::Prefix));
    assert_eq!(parse_secret(""), Err(Malformed::Prefix));
    assert_eq!(parse_secret(body), Err(Malformed::Prefix));
}

#[test]
fn malformed_length() {
    let good = generate_secret();
    let text = good.expose();
    assert_eq!(parse_secret(&text[..KEY_LEN - 1]), Err(Malformed::Length));
    assert_eq!(parse_secret(&format!("{text}A")), Err(Malformed::Length));
    assert_eq!(parse_secret("kg_"), Err(Malformed::Length));
    assert_eq!(parse_secret(&format!("{text} ")), Err(Malformed::Length));
}

#[test]
fn malformed_charset() {
    let good = generate_secret();
    let text = good.expose();
    for bad in ['-', '_', ' ', 'é', '\0'] {
        let mut chars: Vec<char> = text.chars().collect();
        chars[10] = bad;
        let bad_key: String = chars.into_iter().collect();
        assert_eq!(parse_secret(&bad_key), Err(Malformed::Charset), "{bad:?}");
    }
}

#[test]
fn malformed_checksum() {
    let good = generate_secret();
    let text = good.expose();
    // A typo in the random part.
    let mut typo: Vec<u8> = text.as_bytes().to_vec();
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(parse_secret(&typo), Err(Malformed::Checksum));
    // Two characters swapped.
    let mut swapped: Vec<u8> = key_with("ab00000000000000000000").into_bytes();
    swapped.swap(3, 4);
    assert_eq!(parse_secret(std::str::from_utf8(&swapped).unwrap()), Err(Malformed::Checksum));
    // A wrong checksum.
    let wrong = format!("{}000000", &text[..KEY_LEN - KEY_CHECKSUM_LEN]);
    if wrong != text {
        assert_eq!(parse_secret(&wrong), Err(Malformed::Checksum));
    }
}

#[test]
fn checksum_is_left_padded() {
    // A random part whose CRC is small still gives six characters.
    let key = key_with("0000000000000000000000");
    assert_eq!(key.len(), KEY_LEN);
    assert!(parse_secret(&key).is_ok());
}

#[test]
fn secret_debug_and_display_show_at_most_8_chars() {
    let secret = generate_secret();
    let text = secret.expose().to_string();
    let shown = [format!("{secret}"), format!("{secret:?}"), format!("{secret:#?}")];
    for out in shown {
        assert!(!out.contains(&text[..9]), "{out} shows more than 8 characters");
        assert!(out.contains(&text[..8]));
    }
    let digest_debug = format!("{:?}", Peppers::from_entries(vec![("a".into(), b"pepper-secret".to_vec())]));
    assert!(!digest_debug.contains("pepper-secret"));
}

#[test]
fn key_ids_have_the_format() {
    let id = generate_key_id();
    assert!(id.starts_with("key_"));
    assert_eq!(id.len(), 4 + 16);
    assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(id, generate_key_id());
}

#[test]
fn tenant_ids() {
    for good in ["acme", "a", "0day", "acme-corp_2", &"a".repeat(63)] {
        assert!(valid_tenant_id(good), "{good}");
    }
    for bad in ["", "-acme", "_acme", "Acme", "acme corp", "acmé", "a/b", &"a".repeat(64)] {
        assert!(!valid_tenant_id(bad), "{bad}");
    }
}

fn write_peppers(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peppers");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn pepper_file_first_line_is_current() {
    let (_dir, path) =
        write_peppers("# rotated 2025-01\n\nv2=new-secret-0f3a9c71e2b8\r\n  v1 = old-secret-5d1e77b0c4a2  \n");
    let peppers = Peppers::load(Some(&path), Some("ignored".into())).unwrap();
    assert_eq!(format!("{peppers:?}"), r#"Peppers { ids: ["v2", "v1"] }"#);
    assert_eq!(peppers.current_id(), "v2");
    let secret = generate_secret();
    let all = peppers.all(&secret);
    assert_eq!(all.len(), 3, "every pepper, then plain SHA-256 for keys stored before any pepper");
    assert_eq!(all[0], peppers.current(&secret));
    assert_eq!(all[0].pepper_id, "v2");
    assert_eq!(all[1].pepper_id, "v1");
    assert_eq!(all[2].pepper_id, SHA256_PEPPER_ID);
    assert_ne!(all[0].hex, all[1].hex);
}

#[test]
fn pepper_file_errors_name_file_line_and_column_never_the_secret() {
    let good = "v1=s3cr3t-9f1c2e7a4b6d0835\n";
    let cases = [
        (format!("{good}not-a-pair-s3cr3t\n"), ":2:1:"),
        (format!("{good}\nv 2=s3cr3t-9f1c2e7a4b6d0835\n"), ":3:1:"),
        (format!("{good}v1=s3cr3t-9f1c2e7a4b6d0835-again\n"), ":2:1:"),
        ("v1=\n".to_string(), ":1:4:"),
        ("=s3cr3t-9f1c2e7a4b6d0835\n".to_string(), ":1:1:"),
        ("sha256=s3cr3t-9f1c2e7a4b6d0835\n".to_string(), ":1:1:"),
        ("v1 = s3cr3t\n".to_string(), ":1:6:"),
    ];
    for (text, at) in cases {
        let (_dir, path) = write_peppers(&text);
        let err = Peppers::load(Some(&path), None).unwrap_err();
        assert!(err.contains(&format!("{}{at}", path.display())), "{err} should name {at}");
        assert!(!err.contains("s3cr3t"), "{err} leaks the secret");
    }
    let (_dir, path) = write_peppers("# only comments\n\n");
    assert!(Peppers::load(Some(&path), None).is_err());
    let missing = std::path::Path::new("/nonexistent/peppers");
    assert!(Peppers::load(Some(missing), None).unwrap_err().contains("/nonexistent/peppers"));
}

#[test]
fn every_pepper_error_is_reported_not_just_the_first() {
    let (_dir, path) = write_peppers("v1=abc\nnot a pair\nv1=9f1c2e7a4b6d0835ab\n");
    let err = Peppers::load(Some(&path), None).unwrap_err();
    for at in [":1:4:", ":2:1:", ":3:1:"] {
        assert!(err.contains(at), "{err} should name {at}");
    }
}

#[test]
fn short_peppers_are_refused_and_weak_ones_warned() {
    // The current pepper must have 16 bytes; an older one that short is kept, with a
    // warning, so that the keys stored under it can move to the current one.
    let (_dir, path) = write_peppers("v1=abc\n");
    let errors = Peppers::check(&settings(Some(&path)), None).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].column), (1, 4));
    assert!(errors[0].message.contains("3 byte(s)") && errors[0].message.contains("at least 16"), "{errors:?}");
    let (_dir, path) = write_peppers("v2=9f1c2e7a4b6d0835ab73c1e0\nv1=abc\n");
    let (peppers, warnings) = Peppers::check(&settings(Some(&path)), None).unwrap();
    assert_eq!(peppers.current_id(), "v2");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0].line, warnings[0].is_error()), (2, false));

    let errors = Peppers::check(&settings(None), Some("abc".into())).unwrap_err();
    assert_eq!(errors[0].file, std::path::Path::new("$KEYGATE_PEPPER"), "{errors:?}");
    assert!(errors[0].message.contains("3 byte(s)"), "{errors:?}");

    for (weak, why) in [
        ("aaaaaaaaaaaaaaaaaaaa", "one character repeated"),
        ("abababababababababab", "few distinct characters"),
        ("abcdefghijklmnopqrst", "consecutive"),
        ("changeme-changeme-2024", "placeholder"),
        ("REPLACE-ME-with-the-output-of-openssl-rand-hex-32", "placeholder"),
    ] {
        let (_, warnings) = Peppers::check(&settings(None), Some(weak.into())).unwrap();
        assert_eq!(warnings.len(), 1, "{weak}: {warnings:?}");
        assert!(warnings[0].message.contains(why), "{weak}: {warnings:?}");
        assert!(!warnings[0].message.contains(weak), "never quotes the pepper");
    }
    for strong in ["9f1c2e7a4b6d0835", "second-pepper-secret", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2Q="] {
        let (_, warnings) = Peppers::check(&settings(None), Some(strong.into())).unwrap();
        assert!(warnings.is_empty(), "{strong}: {warnings:?}");
    }
}

/// Settings whose `[keys]` names `pepper_file` (or none).
fn settings(pepper_file: Option<&std::path::Path>) -> crate::settings::Settings {
    let text = match pepper_file {
        Some(path) => format!("[keys]\npepper_file = \"{}\"\n", path.display()),
        None => String::new(),
    };
    crate::settings::Settings::parse(&text, std::path::Path::new("/etc/keygate/keygate.toml")).unwrap().0
}

#[test]
fn pepper_from_env_or_none() {
    let env = Peppers::load(None, Some("from-env-9f1c2e7a4b6d".into())).unwrap();
    assert_eq!(env.current_id(), "env");
    assert!(!env.is_empty());
    let none = Peppers::load(None, None).unwrap();
    assert!(none.is_empty());
    assert_eq!(none.current_id(), "sha256");
    assert!(Peppers::load(None, Some(String::new())).is_err());
}

#[test]
fn lower_hex_is_what_hex_encode_gives() {
    let every_byte: Vec<u8> = (0..=255).collect();
    assert_eq!(lower_hex(&every_byte), hex::encode(&every_byte));
    assert_eq!(lower_hex(&[]), "");
}

#[test]
fn hmac_with_a_pepper_and_sha256_without() {
    let secret = parse_secret(&key_with("abcdefghijABCDEFGHIJ01")).unwrap();
    let plain = Peppers::default().current(&secret);
    assert_eq!(plain.pepper_id, "sha256");
    {
        use sha2::Digest;
        assert_eq!(plain.hex, hex::encode(sha2::Sha256::digest(secret.expose())));
    }
    let peppered = Peppers::from_entries(vec![("p1".into(), b"pepper".to_vec())]).current(&secret);
    assert_eq!(peppered.pepper_id, "p1");
    assert_eq!(peppered.hex.len(), 64);
    assert_ne!(peppered.hex, plain.hex);
    {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"pepper").unwrap();
        mac.update(secret.expose().as_bytes());
        assert_eq!(peppered.hex, hex::encode(mac.finalize().into_bytes()));
    }
    // RFC 4231 test case 2: HMAC-SHA-256(key "Jefe", "what do ya want for nothing?").
    let jefe = Peppers::from_entries(vec![("x".into(), b"Jefe".to_vec())]);
    let vector = jefe.current(&Secret::from_raw("what do ya want for nothing?"));
    assert_eq!(vector.hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    // RFC 4231 test case 6: a pepper longer than a SHA-256 block, which HMAC hashes first.
    let long = Peppers::from_entries(vec![("x".into(), vec![0xaa; 131])]);
    let vector = long.current(&Secret::from_raw("Test Using Larger Than Block-Size Key - Hash Key First"));
    assert_eq!(vector.hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    // The keyed state is cloned per digest, never updated in place: the same input twice
    // gives the same digest.
    assert_eq!(long.current(&Secret::from_raw("Test Using Larger Than Block-Size Key - Hash Key First")), vector);
    assert_eq!(Peppers::default().all(&secret), vec![plain]);
}

#[test]
fn digest_serialises_as_pepper_id_and_hex() {
    let digest = KeyDigest { pepper_id: "v1".into(), hex: "ab".repeat(32) };
    let json = serde_json::to_string(&digest).unwrap();
    assert_eq!(json, format!("\"v1:{}\"", "ab".repeat(32)));
    assert_eq!(serde_json::from_str::<KeyDigest>(&json).unwrap(), digest);
    assert!(serde_json::from_str::<KeyDigest>("\"nocolon\"").is_err());
}

#[test]
fn query_without_a_key() {
    for query in ["", "a=1&b=2", "api_key=kg_short", "q=kg_%20", "x=%41%42", "kg_", "name=kg_abc&page=2"] {
        assert!(!query_carries_key(query), "{query}");
    }
    // A key with a broken checksum is not a key.
    let good = generate_secret();
    let mut typo = good.expose().as_bytes().to_vec();
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert!(!query_carries_key(&format!("api_key={typo}")));
}

#[test]
fn query_with_a_key() {
    let key = generate_secret();
    let k = key.expose();
    let encoded_underscore = k.replacen('_', "%5F", 1);
    let encoded_lower = k.replacen('_', "%5f", 1);
    let all_encoded: String = k.bytes().map(|b| format!("%{b:02X}")).collect();
    for query in [
        format!("api_key={k}"),
        format!("a=1&token={k}&b=2"),
        k.to_string(),
        format!("{k}=1"),
        format!("a=1;key={k}"),
        format!("key={encoded_underscore}"),
        format!("key={encoded_lower}"),
        format!("key={all_encoded}"),
        format!("auth=Bearer+{k}"),
        format!("auth=Bearer%20{k}"),
    ] {
        assert!(query_carries_key(&query), "{query}");
    }
}

/// Found by the `headers` fuzz target: an `x-request-id` of a key with two characters
/// after it was kept, so the whole key reached the access log.
#[test]
fn text_carries_a_key_alone_or_inside_longer_text() {
    let key = generate_secret();
    let k = key.expose();
    for text in [k.to_string(), format!("{k}Ns"), format!("req-{k}"), format!("a:{k}.1")] {
        assert!(text_carries_key(&text), "{text}");
    }
    let mut typo = k.to_string();
    let last = typo.pop();
    // Another last character (one time in 62 a fixed `x` would have been the key's own).
    let other = if last == Some('x') { 'y' } else { 'x' };
    for text in
        [String::new(), "kg_".to_string(), typo.clone(), format!("{typo}{other}-1"), "abc-123:x.y_z".to_string()]
    {
        assert!(!text_carries_key(&text), "{text}");
    }
    // No decoding: `kg%5F…` is a query's business, not a request id's (whose grammar has no `%`).
    assert!(!text_carries_key(&k.replacen('_', "%5F", 1)));
}

/// A keys file written before overrides reads as records without them, and a record
/// without them is written exactly as before (no `overrides` field).
#[test]
fn records_without_overrides_serialize_as_before() {
    let old = r#"{"id":"acme","plan":"pro","created_at":"2025-06-01T12:00:00Z"}"#;
    let tenant: TenantRecord = serde_json::from_str(old).unwrap();
    assert!(tenant.overrides.is_empty());
    assert_eq!(serde_json::to_string(&tenant).unwrap(), old);
    let mut with = tenant.clone();
    with.overrides.concurrency = Some(3);
    let text = serde_json::to_string(&with).unwrap();
    assert!(text.ends_with(r#""overrides":{"limits":[],"concurrency":3}}"#), "{text}");
    assert_eq!(serde_json::from_str::<TenantRecord>(&text).unwrap(), with);
}

/// A principal with overrides decides against its effective limits, built once per
/// policy and then shared; one without takes none (the plan's precomputed headers).
#[test]
fn effective_limits_are_built_once_per_policy() {
    let text = "default = \"deny\"\n[scopes]\n\"a\" = \"A\"\n[plans.pro]\nrequests_per_minute = 300\n\
        [upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/v1\"\nupstream = \"app\"\nscopes = [\"a\"]\n";
    let (policy, _) = crate::policy::Policy::parse(text, std::path::Path::new("routes.toml")).expect("a valid policy");
    let plan = &policy.plans["pro"];
    let plain = Principal::new("key_a", "acme", "pro", vec![]);
    assert!(!plain.has_overrides());
    assert!(plain.effective_limits(&policy, plan).is_none());

    let created_at = time::OffsetDateTime::UNIX_EPOCH;
    let mut tenant = TenantRecord { id: "acme".into(), plan: "pro".into(), created_at, overrides: Default::default() };
    tenant.overrides =
        serde_json::from_str(r#"{"limits":[{"name":"default","requests":600,"window":"60s"}]}"#).unwrap();
    let key = KeyRecord {
        id: "key_b".into(),
        tenant: "acme".into(),
        name: String::new(),
        scopes: vec![],
        created_at,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        replaced_by: None,
        digest: KeyDigest { pepper_id: String::new(), hex: String::new() },
        overrides: Default::default(),
    };
    let principal = Principal::of(std::sync::Arc::new(key), std::sync::Arc::new(tenant), None);
    assert!(principal.has_overrides());
    let first = principal.effective_limits(&policy, plan).unwrap();
    assert_eq!(first.rules()[0].requests, 600);
    assert!(first.legacy(), "a legacy plan's `default` keeps its legacy headers");
    let again = principal.effective_limits(&policy, plan).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "built once, then shared");
    assert_eq!(principal.concurrency_override(), None);
}
