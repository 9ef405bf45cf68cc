//! The key format (docs/reference.md §3) against a model written apart from
//! `keygate::keys`: `kg_`, 22 base62 characters, and 6 base62 characters of the CRC-32
//! of those 22 (a bitwise CRC here, where keygate uses a table). Arbitrary text is parsed
//! exactly as the model says; a key built from the fuzzer's bytes, and one from the key
//! generator, parses and round-trips and shows no more than its first 8 characters;
//! and a changed key never passes the checksum: CRC-32 catches every change within 32
//! consecutive bits of the random part, and the checksum's base62 form is one-to-one.

use keygate::keys::{generate_key_id, generate_secret, parse_secret, Malformed, KEY_LEN};

use super::input::Input;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 22;
const CHECK_LEN: usize = 6;

/// The whole input as text against the model; then the same bytes build a key that is
/// checked and mutated.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_text(&text);
    let mut input = Input::new(data);
    let key = build_key(&mut input);
    check_key(&key);
    check_mutations(&key, &mut input);
    let generated = generate_secret();
    assert_eq!(model_parse(generated.expose()), Ok(()), "the generator made {:?}", generated.expose());
    check_key(generated.expose());
    let id = generate_key_id();
    let random = id.strip_prefix("key_").unwrap_or_else(|| panic!("key id {id:?}"));
    assert!(random.len() == 16 && random.bytes().all(|b| BASE62.contains(&b)), "key id {id:?}");
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one bit at a time.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let low = crc & 1;
            crc >>= 1;
            if low == 1 {
                crc ^= 0xEDB8_8320;
            }
        }
    }
    !crc
}

/// The checksum of a random part: its CRC-32 written in base62 with 6 digits, most
/// significant first.
pub fn model_checksum(random: &[u8]) -> String {
    let mut value = u64::from(crc32(random));
    let mut digits = vec![b'0'; CHECK_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(digits).expect("base62 is ASCII")
}

/// What `parse_secret` must answer for `text`.
pub fn model_parse(text: &str) -> Result<(), Malformed> {
    let body = text.strip_prefix("kg_").ok_or(Malformed::Prefix)?;
    if body.chars().count() != RANDOM_LEN + CHECK_LEN {
        return Err(Malformed::Length);
    }
    if !body.bytes().all(|b| BASE62.contains(&b)) {
        return Err(Malformed::Charset);
    }
    let (random, check) = body.split_at(RANDOM_LEN);
    if model_checksum(random.as_bytes()) != check {
        return Err(Malformed::Checksum);
    }
    Ok(())
}

/// Whether `text` holds a well-formed key anywhere, by the model.
pub fn contains_key(text: &str) -> bool {
    let bytes = text.as_bytes();
    (0..bytes.len()).any(|i| {
        bytes.get(i..i + KEY_LEN).and_then(|w| std::str::from_utf8(w).ok()).is_some_and(|w| model_parse(w).is_ok())
    })
}

/// Arbitrary text: the same answer as the model, and an accepted key is the text itself.
pub fn check_text(text: &str) {
    let got = parse_secret(text);
    assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), model_parse(text), "parse_secret({text:?})");
    if let Ok(secret) = got {
        assert_eq!(secret.expose(), text);
    }
}

/// A well-formed key whose random part comes from the input.
pub fn build_key(input: &mut Input<'_>) -> String {
    let random: String = (0..RANDOM_LEN).map(|_| char::from(BASE62[usize::from(input.byte()) % 62])).collect();
    format!("kg_{random}{}", model_checksum(random.as_bytes()))
}

/// A well-formed key parses, is itself, and shows only its first 8 characters.
pub fn check_key(key: &str) {
    assert_eq!(key.len(), KEY_LEN, "{key:?}");
    let secret = parse_secret(key).unwrap_or_else(|e| panic!("{key:?} is well-formed but refused: {e}"));
    assert_eq!(secret.expose(), key);
    let shown = format!("{secret} {secret:?}");
    assert!(shown.contains(&key[..8]), "{shown:?}");
    for i in 0..=KEY_LEN - 9 {
        assert!(!shown.contains(&key[i..i + 9]), "{shown:?} shows more than 8 characters of the key");
    }
}

/// Changes that must be refused: a burst of up to 4 changed characters (32 bits) in the
/// random part, any change to the checksum, a swap of two different neighbours in
/// either, and any one character replaced by a byte outside base62 or dropped.
pub fn check_mutations(key: &str, input: &mut Input<'_>) {
    let (prefix, body) = key.split_at(3);
    let original: Vec<u8> = body.bytes().collect();

    // A burst inside the random part: the first character surely changes.
    let start = input.below(RANDOM_LEN as u32) as usize;
    let len = (1 + input.below(4) as usize).min(RANDOM_LEN - start);
    let mut burst = original.clone();
    for (k, c) in burst[start..start + len].iter_mut().enumerate() {
        let shift = if k == 0 { 1 + input.below(61) } else { input.below(62) } as usize;
        let index = BASE62.iter().position(|b| b == c).expect("a base62 character");
        *c = BASE62[(index + shift) % 62];
    }
    refused(prefix, &burst, Malformed::Checksum, "a burst in the random part");

    // Any change inside the checksum.
    let mut check = original.clone();
    let at = RANDOM_LEN + input.below(CHECK_LEN as u32) as usize;
    let index = BASE62.iter().position(|&b| b == check[at]).expect("a base62 character");
    check[at] = BASE62[(index + 1 + input.below(61) as usize) % 62];
    refused(prefix, &check, Malformed::Checksum, "a changed checksum");

    // Two neighbours swapped, within the random part or within the checksum.
    let at = input.below((RANDOM_LEN + CHECK_LEN - 1) as u32) as usize;
    if at != RANDOM_LEN - 1 && original[at] != original[at + 1] {
        let mut swapped = original.clone();
        swapped.swap(at, at + 1);
        refused(prefix, &swapped, Malformed::Checksum, "two characters swapped");
    }

    // One character replaced by a byte outside base62, or dropped.
    let at = input.below((RANDOM_LEN + CHECK_LEN) as u32) as usize;
    let byte = input.byte();
    if !BASE62.contains(&byte) && byte.is_ascii() {
        let mut outside = original.clone();
        outside[at] = byte;
        refused(prefix, &outside, Malformed::Charset, "a character outside base62");
    }
    let mut dropped = original.clone();
    dropped.remove(at);
    refused(prefix, &dropped, Malformed::Length, "a dropped character");
}

fn refused(prefix: &str, body: &[u8], expected: Malformed, what: &str) {
    let text = format!("{prefix}{}", String::from_utf8_lossy(body));
    assert_eq!(parse_secret(&text).map(|_| ()), Err(expected), "{what}: {text:?}");
}
