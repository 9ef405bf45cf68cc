//! Digests of keys (docs/reference.md §3): HMAC-SHA-256 under versioned peppers (or plain SHA-256
//! without one), the [`Peppers`] they come from, and the [`KeyDigest`] stored in place of
//! a secret.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};

use super::secret::Secret;
use crate::encoding::lower_hex;

/// A digest of a key under one pepper, as stored: `pepper_id` is `sha256` when no pepper
/// is configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyDigest {
    pub pepper_id: String,
    /// Lower-case hex of the 32 digest bytes.
    pub hex: String,
}

/// The peppers keys are digested under (docs/reference.md §3): from `$KEYGATE_PEPPER` (one, id `env`)
/// or a pepper file of `id=secret` lines, the first one current. Empty: plain SHA-256.
#[derive(Clone, Default)]
pub struct Peppers {
    /// Each pepper's id and its HMAC already keyed with it: a digest then clones the
    /// keyed state instead of keying it again (two SHA-256 blocks fewer per request).
    entries: Vec<(String, Hmac<sha2::Sha256>)>,
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
            Some(value) => Ok(Peppers::from_entries(vec![("env".to_string(), value.into_bytes())])),
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
        Ok(Peppers::from_entries(entries))
    }

    /// Peppers from explicit `(id, secret)` pairs, the first current (tests, demo).
    pub fn from_entries(entries: Vec<(String, Vec<u8>)>) -> Peppers {
        let entries = entries
            .into_iter()
            .map(|(id, pepper)| {
                // HMAC takes a key of any length, so this cannot fail.
                let mac = Hmac::<sha2::Sha256>::new_from_slice(&pepper).expect("HMAC takes keys of any length");
                (id, mac)
            })
            .collect();
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

/// HMAC-SHA-256 of the key under one pepper (`keyed`: the HMAC keyed with it).
fn hmac_digest(id: &str, keyed: &Hmac<sha2::Sha256>, secret: &Secret) -> KeyDigest {
    let mut mac = keyed.clone();
    mac.update(secret.expose().as_bytes());
    KeyDigest { pepper_id: id.to_string(), hex: lower_hex(&mac.finalize().into_bytes()) }
}

/// Plain SHA-256 of the key, when no pepper is configured.
fn sha256_digest(secret: &Secret) -> KeyDigest {
    use sha2::Digest;
    KeyDigest {
        pepper_id: SHA256_PEPPER_ID.to_string(),
        hex: lower_hex(&sha2::Sha256::digest(secret.expose().as_bytes())),
    }
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
