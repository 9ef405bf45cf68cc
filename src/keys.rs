//! API keys (SPEC 3): the `kg_` format and its checksum, the redacting [`Secret`] type,
//! HMAC-SHA-256 digests under versioned peppers, the stored records and the
//! [`Principal`] that authentication yields.

pub mod audit;
pub mod cache;
pub mod data;
pub mod file_store;
pub mod json;
pub mod manage;
pub mod redis_store;
pub mod store;

/// The old path of [`store`].
// MERGE: re-export for callers outside this area: `keys::lifecycle` is now `keys::store`
// (the file holding `Store`).
pub mod lifecycle {
    pub use super::store::{now, Store};
}

use std::fmt;
use std::path::Path;

use time::OffsetDateTime;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "kg_";

/// A key secret. `Debug` and `Display` show only its first 8 characters (SPEC 3: no more
/// may ever be logged); [`Secret::expose`] is the one way to the whole value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The whole secret: for the digest, and for printing once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let visible: String = self.0.chars().take(8).collect();
        write!(f, "{visible}…")
    }
}

/// Why a presented key is malformed: rejected before any store is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the key does not start with `kg_`")]
    Prefix,
    #[error("the key has the wrong length")]
    Length,
    #[error("the key contains a character outside base62")]
    Charset,
    #[error("the key's checksum does not match (mistyped or truncated?)")]
    Checksum,
}

/// The base62 alphabet of keys and key ids.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Base62 characters of randomness in a key: 62^22 ≈ 2^131, above SPEC 3's 128 bits.
pub const KEY_RANDOM_LEN: usize = 22;

/// Base62 characters of the checksum: 62^6 > 2^32, so every CRC32 value fits.
pub const KEY_CHECKSUM_LEN: usize = 6;

/// The exact length of a key: `kg_` + randomness + checksum (31 characters).
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_RANDOM_LEN + KEY_CHECKSUM_LEN;

/// Every key id starts with this.
pub const KEY_ID_PREFIX: &str = "key_";

/// Base62 characters after `key_` in a key id (≈ 95 bits: ids are public, but unique).
const KEY_ID_RANDOM_LEN: usize = 16;

/// `len` random base62 characters from the thread-local CSPRNG (ChaCha12, seeded and
/// periodically reseeded from the OS). `random_range` samples without modulo bias.
fn random_base62(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())])).collect()
}

/// The CRC-32 (IEEE 802.3, as in zlib and GitHub's tokens) lookup table, built at
/// compile time.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC32_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The checksum of a key's random part: its CRC-32 in base62, left-padded with `0` to
/// [`KEY_CHECKSUM_LEN`] characters.
fn checksum(random: &[u8]) -> [u8; KEY_CHECKSUM_LEN] {
    let mut value = crc32(random);
    let mut out = [b'0'; KEY_CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// A new random key: `kg_` + 128+ bits of randomness in base62 + a base62 CRC32 checksum.
pub fn generate_secret() -> Secret {
    let random = random_base62(KEY_RANDOM_LEN);
    let check = checksum(random.as_bytes());
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    key.push_str(&random);
    key.extend(check.iter().map(|&b| char::from(b)));
    Secret(key)
}

/// Checks prefix, length, charset and checksum; no store is involved.
pub fn parse_secret(text: &str) -> Result<Secret, Malformed> {
    let body = text.strip_prefix(KEY_PREFIX).ok_or(Malformed::Prefix)?;
    // Length in characters, so that a non-ASCII character is reported as such.
    if body.chars().count() != KEY_RANDOM_LEN + KEY_CHECKSUM_LEN {
        return Err(Malformed::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Malformed::Charset);
    }
    let (random, check) = body.as_bytes().split_at(KEY_RANDOM_LEN);
    if checksum(random) != check {
        return Err(Malformed::Checksum);
    }
    Ok(Secret(text.to_string()))
}

/// A new key id: `key_` + base62, safe to log.
pub fn generate_key_id() -> String {
    format!("{KEY_ID_PREFIX}{}", random_base62(KEY_ID_RANDOM_LEN))
}

/// Whether `id` is a tenant id (SPEC conventions): 1–63 characters of `a-z 0-9 _ -`,
/// starting with a letter or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether a query string carries a well-formed key (right prefix, length and checksum)
/// anywhere in a parameter name or value, after percent-decoding (and `+` as a space):
/// such a request is refused with 400 so that the key does not travel on into access
/// logs (SPEC 4.1). `&` and `;` both separate parameters.
///
/// A key embedded in a longer value (`token=Bearer+kg_…`) counts too: the checksum
/// makes a false positive on ordinary data negligible (about 1 in 62^6).
///
/// On every request's path, so it returns at once for the common query that holds
/// neither `kg_` nor any percent-encoding (which could spell `kg_` in disguise).
pub fn query_carries_key(query: &str) -> bool {
    let raw = query.as_bytes();
    let has_plain = contains(raw, KEY_PREFIX.as_bytes());
    if !has_plain && !raw.contains(&b'%') {
        return false;
    }
    if has_plain && contains_key(raw) {
        return true;
    }
    if !raw.contains(&b'%') {
        return false;
    }
    raw.split(|&b| b == b'&' || b == b';').any(|param| {
        let decoded = percent_decode(param);
        contains_key(&decoded)
    })
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether some `kg_` in `bytes` starts a well-formed key.
fn contains_key(bytes: &[u8]) -> bool {
    let prefix = KEY_PREFIX.as_bytes();
    (0..bytes.len().saturating_sub(KEY_LEN - 1)).any(|i| {
        bytes[i..].starts_with(prefix)
            && std::str::from_utf8(&bytes[i..i + KEY_LEN]).is_ok_and(|k| parse_secret(k).is_ok())
    })
}

/// Percent-decodes (once) a query parameter, `+` as a space; an invalid escape is kept
/// as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    use crate::path::hex_value;
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A digest of a key under one pepper, as stored: `pepper_id` is `sha256` when no pepper
/// is configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyDigest {
    pub pepper_id: String,
    /// Lower-case hex of the 32 digest bytes.
    pub hex: String,
}

/// The peppers keys are digested under (SPEC 3): from `$KEYGATE_PEPPER` (one, id `env`)
/// or a pepper file of `id=secret` lines, the first one current. Empty: plain SHA-256.
#[derive(Clone, Default)]
pub struct Peppers {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for Peppers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.entries.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Peppers").field("ids", &ids).finish()
    }
}

impl Peppers {
    /// Loads from `pepper_file` if given, else from `env_value` (the value of
    /// `$KEYGATE_PEPPER`), else none. A file that is unreadable, empty or has a malformed
    /// line is an error naming the file and line (never the secret).
    pub fn load(pepper_file: Option<&Path>, env_value: Option<String>) -> Result<Peppers, String> {
        if let Some(path) = pepper_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("pepper file {}: cannot read: {e}", path.display()))?;
            return Self::parse_file(&text, path);
        }
        match env_value {
            None => Ok(Peppers::default()),
            Some(value) if value.is_empty() => {
                Err("$KEYGATE_PEPPER is set but empty: give it a secret value, or unset it".to_string())
            }
            Some(value) => Ok(Peppers { entries: vec![("env".to_string(), value.into_bytes())] }),
        }
    }

    /// Parses the content of a pepper file: `id=secret` lines, the first current; blank
    /// lines and `#` comments are ignored. Errors name the file and line, never a secret.
    fn parse_file(text: &str, path: &Path) -> Result<Peppers, String> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = || format!("pepper file {}:{}", path.display(), index + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((id, secret)) = line.split_once('=') else {
                return Err(format!("{}: expected `id=secret`", at()));
            };
            let id = id.trim();
            let secret = secret.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(format!("{}: a pepper id is made of A-Z a-z 0-9 _ -", at()));
            }
            if id == SHA256_PEPPER_ID {
                return Err(format!("{}: `{SHA256_PEPPER_ID}` is reserved for digests without a pepper", at()));
            }
            if secret.is_empty() {
                return Err(format!("{}: pepper `{id}` has an empty secret", at()));
            }
            if entries.iter().any(|(known, _)| known == id) {
                return Err(format!("{}: pepper id `{id}` is listed twice", at()));
            }
            entries.push((id.to_string(), secret.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(format!("pepper file {}: no `id=secret` line", path.display()));
        }
        Ok(Peppers { entries })
    }

    /// Peppers from explicit `(id, secret)` pairs, the first current (tests, demo).
    pub fn from_entries(entries: Vec<(String, Vec<u8>)>) -> Peppers {
        Peppers { entries }
    }

    /// True when keys are digested with plain SHA-256 (keygate warns about it).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest new and re-stored keys get.
    pub fn current(&self, secret: &Secret) -> KeyDigest {
        match self.entries.first() {
            Some((id, pepper)) => hmac_digest(id, pepper, secret),
            None => sha256_digest(secret),
        }
    }

    /// The id of the current pepper (`sha256` when none): a stored digest under another
    /// id is re-stored on its next successful lookup.
    pub fn current_id(&self) -> &str {
        self.entries.first().map_or(SHA256_PEPPER_ID, |(id, _)| id.as_str())
    }

    /// The digest under every listed pepper, current first, then plain SHA-256: a key
    /// stored before any pepper was configured still authenticates, and is then re-stored
    /// under the current pepper like any key found under an old one. Without peppers:
    /// plain SHA-256 alone.
    pub fn all(&self, secret: &Secret) -> Vec<KeyDigest> {
        let mut digests: Vec<KeyDigest> =
            self.entries.iter().map(|(id, pepper)| hmac_digest(id, pepper, secret)).collect();
        digests.push(sha256_digest(secret));
        digests
    }
}

/// The pepper id recorded for plain SHA-256 digests (no pepper configured).
pub const SHA256_PEPPER_ID: &str = "sha256";

/// HMAC-SHA-256 of the key under one pepper.
fn hmac_digest(id: &str, pepper: &[u8], secret: &Secret) -> KeyDigest {
    use hmac::{Hmac, Mac};
    // HMAC takes a key of any length, so this cannot fail; the fallback (a digest that
    // matches nothing) keeps the request path free of panics all the same.
    let hex = match Hmac::<sha2::Sha256>::new_from_slice(pepper) {
        Ok(mut mac) => {
            mac.update(secret.expose().as_bytes());
            lower_hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    KeyDigest { pepper_id: id.to_string(), hex }
}

/// Plain SHA-256 of the key, when no pepper is configured.
fn sha256_digest(secret: &Secret) -> KeyDigest {
    use sha2::Digest;
    KeyDigest {
        pepper_id: SHA256_PEPPER_ID.to_string(),
        hex: lower_hex(&sha2::Sha256::digest(secret.expose().as_bytes())),
    }
}

/// Lower-case hex of `bytes`, what `hex::encode` gives, in one exactly sized buffer: the
/// digests are computed on every request, and `hex::encode` collects an iterator of
/// `char`s (about 1,700 instructions for 32 bytes, against about 200 here).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    // Only ASCII digits and letters were pushed.
    String::from_utf8(out).unwrap_or_default()
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

impl serde::Serialize for KeyDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", self.pepper_id, self.hex))
    }
}

impl<'de> serde::Deserialize<'de> for KeyDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (pepper_id, hex) =
            text.rsplit_once(':').ok_or_else(|| serde::de::Error::custom("a digest is `pepper_id:hex`"))?;
        Ok(KeyDigest { pepper_id: pepper_id.to_string(), hex: hex.to_string() })
    }
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

/// Who a request is: what authentication yields, safe to log (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub plan: String,
    pub scopes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (_dir, path) = write_peppers("# rotated 2025-01\n\nv2=new-secret\r\n  v1 = old-secret  \n");
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
    fn pepper_file_errors_name_file_and_line_never_the_secret() {
        let cases = [
            ("v1=ok\nnot-a-pair-s3cr3t\n", ":2:"),
            ("v1=ok\n\nv 2=s3cr3t\n", ":3:"),
            ("v1=s3cr3t\nv1=s3cr3t-again\n", ":2:"),
            ("v1=\n", ":1:"),
            ("=s3cr3t\n", ":1:"),
            ("sha256=s3cr3t\n", ":1:"),
        ];
        for (text, line) in cases {
            let (_dir, path) = write_peppers(text);
            let err = Peppers::load(Some(&path), None).unwrap_err();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(line), "{err} should name line {line}");
            assert!(!err.contains("s3cr3t"), "{err} leaks the secret");
        }
        let (_dir, path) = write_peppers("# only comments\n\n");
        assert!(Peppers::load(Some(&path), None).is_err());
        let missing = std::path::Path::new("/nonexistent/peppers");
        assert!(Peppers::load(Some(missing), None).unwrap_err().contains("/nonexistent/peppers"));
    }

    #[test]
    fn pepper_from_env_or_none() {
        let env = Peppers::load(None, Some("from-env".into())).unwrap();
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
        let vector = hmac_digest("x", b"Jefe", &Secret("what do ya want for nothing?".into()));
        assert_eq!(vector.hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
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
}
