//! Path normalisation (SPEC 4.5, RFC 3986 2.3 and 5.2.4) and its refusals: the one
//! function that turns a request's raw path into the path that is matched and forwarded.

/// `[paths]` of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// `encoded_slash = "keep"`: `%2F`/`%5C` are forwarded encoded and never act as a
    /// separator. Default false: refused with 400.
    pub keep_encoded_slash: bool,
    /// `semicolon = "keep"`: `;` is an ordinary character. Default false: refused.
    pub keep_semicolon: bool,
}

/// Why a path was refused (400 `bad_request`); the message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the path contains a `;`")]
    Semicolon,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains a `#`")]
    Fragment,
    #[error("the path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path contains a character that is not allowed in a URL path")]
    InvalidCharacter,
}

/// Normalises the path part of a request target (no query).
pub fn normalize(raw: &str, options: PathOptions) -> Result<String, PathError> {
    let _ = (raw, options);
    todo!("path helper")
}
