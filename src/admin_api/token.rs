//! The admin API's token: loaded from `admin.token_file` or `$KEYGATE_ADMIN_TOKEN`, kept
//! only as its SHA-256, and compared with a presented one in constant time.

use http::HeaderMap;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::bearer::{self, BearerError};
use crate::settings::Settings;

/// A token shorter than this is accepted, with a warning: it could be guessed.
const SHORT_TOKEN_CHARS: usize = 16;
/// The API token: the trimmed content of `admin.token_file`, else `$KEYGATE_ADMIN_TOKEN`.
/// `None` (neither set) leaves the API off. An unreadable or empty file, or a variable
/// that is set but empty or not UTF-8, is an error: the operator asked for the API.
pub fn load_token(settings: &Settings) -> Result<Option<String>, String> {
    let token = match &settings.admin.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("admin.token_file {}: cannot read it: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("admin.token_file {} is empty", path.display()));
            }
            token.to_string()
        }
        None => match std::env::var("KEYGATE_ADMIN_TOKEN") {
            Ok(text) if text.trim().is_empty() => {
                return Err("$KEYGATE_ADMIN_TOKEN is set but empty (unset it to turn the admin API off)".to_string())
            }
            Ok(text) => text.trim().to_string(),
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => return Err("$KEYGATE_ADMIN_TOKEN is not UTF-8".to_string()),
        },
    };
    if token.chars().count() < SHORT_TOKEN_CHARS {
        tracing::warn!(
            "the admin API token is shorter than {SHORT_TOKEN_CHARS} characters and could be guessed; \
             use a long random one (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(Some(token))
}

/// The token's SHA-256: a presented token is compared with it in constant time and in
/// fixed length (no early exit on a length mismatch).
pub(super) struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(super) fn of(token: &str) -> TokenDigest {
        TokenDigest(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token: SHA-256 of both, compared in constant time.
    pub(super) fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// What a call presented as its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presented<'a> {
    /// The token of the one `Authorization: Bearer <token>` header.
    Token(&'a str),
    /// No credentials: no `Authorization` header, another scheme, or no scheme.
    Nothing,
    /// Something token-like that cannot be used: two headers, an empty token, a value
    /// that is not visible ASCII.
    Unusable,
}

/// What `headers` present (the 401's `error="invalid_token"` is for what was sent but
/// is wrong or unusable).
pub(super) fn presented(headers: &HeaderMap) -> Presented<'_> {
    match bearer::token(headers) {
        Ok(token) => Presented::Token(token),
        Err(BearerError::Missing | BearerError::OtherScheme | BearerError::NoScheme) => Presented::Nothing,
        Err(BearerError::Duplicated | BearerError::NotText | BearerError::EmptyToken) => Presented::Unusable,
    }
}
