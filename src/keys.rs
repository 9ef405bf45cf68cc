//! API keys (SPEC 3): the `kg_` format and its checksum, the redacting [`Secret`] type,
//! HMAC-SHA-256 digests under versioned peppers, the stored records and the
//! [`Principal`] that authentication yields.

pub mod manage;
pub mod store;

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

/// A new random key: `kg_` + 128+ bits of randomness in base62 + a base62 CRC32 checksum.
pub fn generate_secret() -> Secret {
    todo!("keys helper")
}

/// Checks prefix, length, charset and checksum; no store is involved.
pub fn parse_secret(text: &str) -> Result<Secret, Malformed> {
    let _ = text;
    todo!("keys helper")
}

/// A new key id: `key_` + base62, safe to log.
pub fn generate_key_id() -> String {
    todo!("keys helper")
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
        let _ = (pepper_file, env_value);
        todo!("keys helper")
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
        let _ = secret;
        todo!("keys helper")
    }

    /// The digest under every listed pepper, current first (plain SHA-256 when none).
    pub fn all(&self, secret: &Secret) -> Vec<KeyDigest> {
        let _ = secret;
        todo!("keys helper")
    }
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
        let (pepper_id, hex) = text
            .rsplit_once(':')
            .ok_or_else(|| serde::de::Error::custom("a digest is `pepper_id:hex`"))?;
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
