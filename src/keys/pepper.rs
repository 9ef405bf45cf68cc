//! Digests of keys (docs/reference.md §3): HMAC-SHA-256 under versioned peppers (or plain SHA-256
//! without one), the [`Peppers`] they come from, and the [`KeyDigest`] stored in place of
//! a secret.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};

use super::secret::Secret;
use crate::diag::Diagnostic;
use crate::encoding::lower_hex;
use crate::settings::Settings;

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

/// The fewest bytes a pepper may have: an HMAC key much shorter than the digest adds
/// little against someone who holds a dump of the store and guesses peppers.
pub const MIN_PEPPER_BYTES: usize = 16;

/// How to make a good pepper, for the messages.
const PEPPER_ADVICE: &str = "use a random value, e.g. the output of `openssl rand -hex 32`";

/// Where `$KEYGATE_PEPPER`'s findings are reported (it has no file).
const ENV_NAME: &str = "$KEYGATE_PEPPER";

impl Peppers {
    /// Loads from `pepper_file` if given, else from `env_value` (the value of
    /// `$KEYGATE_PEPPER`), else none; every error in one message (see [`Peppers::check`]).
    pub fn load(pepper_file: Option<&Path>, env_value: Option<String>) -> Result<Peppers, String> {
        let text = match pepper_file {
            Some(path) => {
                Some(std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?)
            }
            None => None,
        };
        let source = match (pepper_file, &text) {
            (Some(path), Some(text)) => Source::File { path, text },
            _ => Source::Env(env_value),
        };
        Self::read(source)
            .map(|(peppers, _)| peppers)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    /// The peppers `settings` name (`keys.pepper_file`, else `env_value`, the value of
    /// `$KEYGATE_PEPPER`), checked as `serve` and `check` check them. Every problem is a
    /// diagnostic: a pepper file's at its line and column (never quoting a secret),
    /// `$KEYGATE_PEPPER`'s under that name, a pepper file that cannot be read at
    /// `keys.pepper_file` in the config. Refused: a malformed line, a repeated or
    /// reserved id, an empty file, a current pepper (the first line, or
    /// `$KEYGATE_PEPPER`) shorter than [`MIN_PEPPER_BYTES`]. Warned: an older pepper that
    /// short (it is kept so that keys stored under it are re-stored under the current
    /// one), a weak pepper (one character repeated, few distinct characters, a run of
    /// consecutive ones, a placeholder such as `changeme`), and no pepper at all.
    pub fn check(
        settings: &Settings,
        env_value: Option<String>,
    ) -> Result<(Peppers, Vec<Diagnostic>), Vec<Diagnostic>> {
        let Some(path) = &settings.keys.pepper_file else {
            let (peppers, mut warnings) = Self::read(Source::Env(env_value))?;
            if peppers.is_empty() {
                warnings.push(Diagnostic::file_warning(
                    &settings.file,
                    "no pepper configured (keys.pepper_file or $KEYGATE_PEPPER): key digests are plain SHA-256, \
                     so a dump of the key store lets anyone test guessed keys",
                ));
            }
            return Ok((peppers, warnings));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            let message = format!("`pepper_file` {}: cannot read: {e}", path.display());
            let diagnostic = match settings.keys.pepper_file_at {
                Some((line, column)) => Diagnostic {
                    severity: crate::diag::Severity::Error,
                    file: settings.file.clone(),
                    line,
                    column,
                    message,
                },
                None => Diagnostic::file_error(&settings.file, message),
            };
            vec![diagnostic]
        })?;
        Self::read(Source::File { path, text: &text })
    }

    /// Reads and checks the peppers of `source`: the peppers and their warnings, or
    /// every error.
    fn read(source: Source<'_>) -> Result<(Peppers, Vec<Diagnostic>), Vec<Diagnostic>> {
        let mut found = Found::default();
        match source {
            Source::File { path, text } => parse_file(text, path, &mut found),
            Source::Env(None) => {}
            Source::Env(Some(value)) => {
                let env = Path::new(ENV_NAME);
                if value.is_empty() {
                    found
                        .errors
                        .push(Diagnostic::file_error(env, "set but empty: give it a secret value, or unset it"));
                } else {
                    if let Some(problem) = strength(value.as_bytes(), true) {
                        found.push(problem.is_error(), Diagnostic::file_error(env, problem.message("the pepper")));
                    }
                    found.entries.push(("env".to_string(), value.into_bytes()));
                }
            }
        }
        if found.errors.is_empty() {
            Ok((Peppers::from_entries(found.entries), found.warnings))
        } else {
            Err(found.errors)
        }
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

/// Where peppers come from.
enum Source<'a> {
    /// A pepper file and its content.
    File { path: &'a Path, text: &'a str },
    /// The value of `$KEYGATE_PEPPER`, if set.
    Env(Option<String>),
}

/// What reading peppers found.
#[derive(Default)]
struct Found {
    entries: Vec<(String, Vec<u8>)>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Found {
    fn push(&mut self, error: bool, diagnostic: Diagnostic) {
        if error {
            self.errors.push(Diagnostic { severity: crate::diag::Severity::Error, ..diagnostic });
        } else {
            self.warnings.push(Diagnostic { severity: crate::diag::Severity::Warning, ..diagnostic });
        }
    }
}

/// Parses the content of a pepper file: `id=secret` lines, the first current; blank lines
/// and `#` comments are ignored. Every problem is reported at its line and column, never
/// quoting a secret.
fn parse_file(text: &str, path: &Path, found: &mut Found) {
    let mut offset = 0;
    for raw_line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += raw_line.len();
        let line = raw_line.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        let at = |column_offset: usize| line_start + column_offset;
        let indent = line.len() - trimmed.len();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut error =
            |offset: usize, message: String| found.errors.push(Diagnostic::error_at(path, text, offset, message));
        let Some((raw_id, raw_secret)) = trimmed.split_once('=') else {
            error(at(indent), "expected `id=secret`".to_string());
            continue;
        };
        let id = raw_id.trim();
        let id_at = at(indent + (raw_id.len() - raw_id.trim_start().len()));
        let secret = raw_secret.trim();
        let secret_at = at(indent + raw_id.len() + 1 + (raw_secret.len() - raw_secret.trim_start().len()));
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            error(id_at, "a pepper id is made of A-Z a-z 0-9 _ -".to_string());
            continue;
        }
        if id == SHA256_PEPPER_ID {
            error(id_at, format!("`{SHA256_PEPPER_ID}` is reserved for digests without a pepper"));
            continue;
        }
        if found.entries.iter().any(|(known, _)| known == id) {
            error(id_at, format!("pepper id `{id}` is listed twice"));
            continue;
        }
        if secret.is_empty() {
            error(secret_at, format!("pepper `{id}` has an empty secret"));
            continue;
        }
        let current = found.entries.is_empty() && found.errors.is_empty();
        if let Some(problem) = strength(secret.as_bytes(), current) {
            let what = if current { format!("pepper `{id}` (the current one)") } else { format!("pepper `{id}`") };
            found.push(problem.is_error(), Diagnostic::error_at(path, text, secret_at, problem.message(&what)));
        }
        found.entries.push((id.to_string(), secret.as_bytes().to_vec()));
    }
    if found.entries.is_empty() && found.errors.is_empty() {
        found.errors.push(Diagnostic::file_error(path, "no `id=secret` line"));
    }
}

/// What is wrong with a pepper's strength.
#[derive(Debug, PartialEq, Eq)]
enum Strength {
    /// Shorter than [`MIN_PEPPER_BYTES`]: an error for the current pepper, a warning for
    /// an older one (kept only to re-store the keys digested under it).
    Short { bytes: usize, current: bool },
    /// Long enough but guessable: a warning.
    Weak(&'static str),
}

impl Strength {
    fn is_error(&self) -> bool {
        matches!(self, Strength::Short { current: true, .. })
    }

    fn message(&self, what: &str) -> String {
        match self {
            Strength::Short { bytes, current: true } => format!(
                "{what} is {bytes} byte(s); a pepper must be at least {MIN_PEPPER_BYTES} bytes: {PEPPER_ADVICE}"
            ),
            Strength::Short { bytes, current: false } => format!(
                "{what} is {bytes} byte(s), shorter than {MIN_PEPPER_BYTES}: keep it only until the keys stored \
                 under it have been re-stored under the current pepper (on their next use), then remove it"
            ),
            Strength::Weak(why) => format!("{what} is weak ({why}): {PEPPER_ADVICE}"),
        }
    }
}

/// Placeholders people leave in config, lower-case letters and digits only (the pepper is
/// compared the same way).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "changethis",
    "replaceme",
    "replacethis",
    "placeholder",
    "example",
    "yourpepper",
    "yoursecret",
    "mypepper",
    "password",
    "passw0rd",
    "letmein",
    "qwerty",
    "default",
    "todo",
    "fixme",
    "xxxxxx",
];

/// Why `secret` is too short or weak to be a pepper, if it is.
fn strength(secret: &[u8], current: bool) -> Option<Strength> {
    if secret.len() < MIN_PEPPER_BYTES {
        return Some(Strength::Short { bytes: secret.len(), current });
    }
    let distinct = secret.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct == 1 {
        return Some(Strength::Weak("one character repeated"));
    }
    // Random hex of 16 characters has about 10 distinct ones; fewer than a third of the
    // length (at most 8) is a pattern, not randomness.
    if distinct < (secret.len() / 3).clamp(4, 8) {
        return Some(Strength::Weak("few distinct characters"));
    }
    let steps = secret.windows(2).filter(|w| w[0].abs_diff(w[1]) <= 1).count();
    if steps * 10 >= (secret.len() - 1) * 7 {
        return Some(Strength::Weak("mostly runs of consecutive or repeated characters"));
    }
    let folded: String =
        secret.iter().filter(|b| b.is_ascii_alphanumeric()).map(|b| char::from(b.to_ascii_lowercase())).collect();
    if PLACEHOLDERS.iter().any(|p| folded.contains(p)) {
        return Some(Strength::Weak("it looks like a placeholder"));
    }
    None
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
