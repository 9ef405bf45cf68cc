//! The API's request bodies: their JSON shapes (unknown fields refused), and reading them
//! bounded in size and time.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::api_error::ApiError;

/// The largest request body, in bytes: the biggest legitimate one (a key with every
/// scope) is far smaller. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /admin/v1/tenants`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTenant {
    pub(super) id: String,
    pub(super) plan: String,
}

/// `PATCH /admin/v1/tenants/ID`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetPlan {
    pub(super) plan: String,
}

/// `POST /admin/v1/keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) scopes: Vec<String>,
    /// A duration (`90d`); absent or null: the key never expires.
    #[serde(default)]
    pub(super) expires_in: Option<String>,
}

/// `POST /admin/v1/keys/ID/rotate`; the body may be empty.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rotate {
    /// A duration (`1h`, the default): how long the old key keeps working.
    #[serde(default)]
    pub(super) grace: Option<String>,
}

/// Reads a body of at most [`MAX_BODY_BYTES`], within `timeout`.
pub(super) async fn read_body<B>(body: B, declared: Option<u64>, timeout: Duration) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body came too slowly")),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::payload_too_large(MAX_BODY_BYTES))
        }
        Ok(Err(_)) => Err(ApiError::bad_request("body_unreadable", "the request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A JSON body of type `T`; an empty body is `{}` when `empty_ok`.
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return serde_json::from_str("{}").map_err(|e| ApiError::bad_request("invalid_json", e.to_string()));
        }
        return Err(ApiError::bad_request("invalid_json", "this call needs a JSON object body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

/// A duration field (`90d`, `1h`), named in the error as the CLI names its flag.
pub(super) fn parse_duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    crate::duration::parse(text).map_err(|e| ApiError::bad_request("invalid_duration", format!("{field}: {e}")))
}
