//! The key format (docs/reference.md §3): `kg_` + 128+ bits of base62 randomness + a base62 CRC-32
//! checksum, the redacting [`Secret`] type, parsing a presented key ([`Malformed`] when it
//! is not one), and key ids.

use std::fmt;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "kg_";

/// A key secret. `Debug` and `Display` show only its first 8 characters (docs/reference.md §3: no more
/// may ever be logged); [`Secret::expose`] is the one way to the whole value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from raw text, unchecked: for the key module's tests only.
    #[cfg(test)]
    pub(super) fn from_raw(text: &str) -> Secret {
        Secret(text.to_string())
    }

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

/// Base62 characters of randomness in a key: 62^22 ≈ 2^131, above docs/reference.md §3's 128 bits.
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
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC32_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The checksum of a key's random part: its CRC-32 in base62, left-padded with `0` to
/// [`KEY_CHECKSUM_LEN`] characters.
pub(super) fn checksum(random: &[u8]) -> [u8; KEY_CHECKSUM_LEN] {
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
