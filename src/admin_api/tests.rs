//! Unit tests of the admin API's parts: paths, parameters, errors, bodies, the token.

use super::api_error::*;
use super::requests::*;
use super::resource::*;
use super::token::*;
use super::*;
use std::time::Duration;

use crate::keys::data::StoreError;
use crate::settings::Settings;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::HeaderMap;

fn headers(values: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
    }
    map
}

#[test]
fn bearer_tokens() {
    assert_eq!(presented(&headers(&["Bearer abc"])), Presented::Token("abc"));
    assert_eq!(presented(&headers(&["bearer  abc"])), Presented::Token("abc"));
    assert_eq!(presented(&headers(&["BEARER abc "])), Presented::Token("abc"));
    assert_eq!(presented(&headers(&[])), Presented::Nothing);
    assert_eq!(presented(&headers(&["Basic abc"])), Presented::Nothing);
    assert_eq!(presented(&headers(&["Bearer"])), Presented::Nothing);
    assert_eq!(presented(&headers(&["Bearer "])), Presented::Nothing);
    assert_eq!(presented(&headers(&["Bearer a", "Bearer a"])), Presented::Unusable);
}

#[test]
fn paths() {
    assert_eq!(Resource::parse("/admin/v1/tenants"), Some(Resource::Tenants));
    assert_eq!(Resource::parse("/admin/v1/tenants/acme"), Some(Resource::Tenant("acme".into())));
    assert_eq!(Resource::parse("/admin/v1/keys"), Some(Resource::Keys));
    assert_eq!(Resource::parse("/admin/v1/keys/key_1"), Some(Resource::Key("key_1".into())));
    assert_eq!(Resource::parse("/admin/v1/keys/key_1/rotate"), Some(Resource::Rotate("key_1".into())));
    for bad in ["/", "/admin/v1", "/admin/v1/", "/admin/v1/tenants/", "/admin/v1//tenants", "/admin/v2/keys"] {
        assert_eq!(Resource::parse(bad), None, "{bad}");
    }
    assert_eq!(Resource::parse("/admin/v1/tenants/acme/limits"), Some(Resource::TenantLimits("acme".into())));
    assert_eq!(Resource::parse("/admin/v1/keys/key_1/limits"), Some(Resource::KeyLimits("key_1".into())));
    assert_eq!(Resource::parse("/admin/v1/keys/key_1/revoke"), None);
    assert_eq!(Resource::parse("/admin/v1/tenants/acme/keys"), None);
}

#[test]
fn query_parameters_are_checked() {
    assert_eq!(query_parameters(Some("tenant=acme"), &["tenant"]).unwrap(), vec![("tenant", "acme")]);
    assert!(query_parameters(None, &["tenant"]).unwrap().is_empty());
    assert_eq!(query_parameters(Some("tenants=acme"), &["tenant"]).unwrap_err().code, "unknown_parameter");
    assert_eq!(query_parameters(Some("tenant=a&tenant=b"), &["tenant"]).unwrap_err().code, "repeated_parameter");
    assert_eq!(query_parameters(Some("x=1"), &[]).unwrap_err().status, StatusCode::BAD_REQUEST);
}

/// The one mapping of the CLI's refusals to statuses, pinned.
#[test]
fn manage_errors_map_to_statuses() {
    let cases: Vec<(ManageError, u16, &str)> = vec![
        (ManageError::InvalidTenantId("A".into()), 400, "invalid_tenant_id"),
        (ManageError::UnknownPlan { plan: "x".into(), known: "pro".into() }, 400, "unknown_plan"),
        (ManageError::UnknownScope { scope: "x".into(), known: "a".into() }, 400, "unknown_scope"),
        (ManageError::NoScopes, 400, "no_scopes"),
        (ManageError::InvalidName("".into()), 400, "invalid_name"),
        (ManageError::InvalidExpiry("".into()), 400, "invalid_expiry"),
        (ManageError::InvalidLimits("".into()), 422, "invalid_limits"),
        (ManageError::UnknownTenant("t".into()), 404, "unknown_tenant"),
        (ManageError::UnknownKey("k".into()), 404, "unknown_key"),
        (ManageError::TenantExists("t".into()), 409, "tenant_exists"),
        (ManageError::NoApiAccess("trial".into()), 409, "no_api_access"),
        (ManageError::CapReached { tenant: "t".into(), plan: "p".into(), max: 5 }, 409, "cap_reached"),
        (ManageError::Revoked("k".into()), 409, "key_revoked"),
        (ManageError::Expired("k".into()), 409, "key_expired"),
        (ManageError::Replaced { id: "k".into(), by: "k2".into() }, 409, "key_replaced"),
        (
            ManageError::Store(StoreError::Unavailable("redis 10.0.0.1:6379: timed out".into())),
            503,
            "store_unavailable",
        ),
        (
            ManageError::Store(StoreError::File { path: "/var/lib/keys.json".into(), message: "EIO".into() }),
            500,
            "store_error",
        ),
    ];
    for (error, status, code) in cases {
        let text = error.to_string();
        let api = ApiError::from(error);
        assert_eq!((api.status.as_u16(), api.code), (status, code), "{text}");
        if status < 500 {
            assert_eq!(api.message, text, "the CLI's message");
        } else {
            assert!(!api.message.contains("10.0.0.1") && !api.message.contains("/var/lib"), "no internal detail");
        }
    }
}

#[test]
fn unavailable_says_when_to_retry_and_unauthorized_challenges() {
    let response = ApiError::from(ManageError::Store(StoreError::Unavailable("down".into()))).into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
    let response = ApiError::unauthorized(false).into_response();
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate-admin\"");
    let response = ApiError::unauthorized(true).into_response();
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate-admin\", error=\"invalid_token\"");
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
}

#[test]
fn bodies() {
    let rotate: Rotate = parse_body(b"", true).unwrap();
    assert!(rotate.grace.is_none());
    assert_eq!(parse_body::<CreateTenant>(b"", false).unwrap_err().status, StatusCode::BAD_REQUEST);
    assert_eq!(parse_body::<CreateTenant>(b"{\"id\":", false).unwrap_err().code, "invalid_json");
    let unknown = parse_body::<SetPlan>(b"{\"plan\":\"pro\",\"x\":1}", false).unwrap_err();
    assert!(unknown.message.contains("unknown field"), "{}", unknown.message);
    let key: CreateKey =
        parse_body(br#"{"tenant":"acme","name":"ci","scopes":["calls:read"],"expires_in":null}"#, false).unwrap();
    assert!(key.expires_in.is_none());
}

#[tokio::test]
async fn bodies_are_bounded() {
    let small = Full::new(Bytes::from_static(b"{}"));
    assert_eq!(read_body(small, None, Duration::from_secs(1)).await.unwrap(), Bytes::from_static(b"{}"));
    let big = Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]));
    assert_eq!(read_body(big, None, Duration::from_secs(1)).await.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    let declared = Full::new(Bytes::new());
    let error = read_body(declared, Some(MAX_BODY_BYTES as u64 + 1), Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn tokens_load_trimmed_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "  s3cret-token-of-some-length\n").unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, "[admin]\ntoken_file = \"token\"\n").unwrap();
    let (settings, _) = Settings::load(&config).unwrap();
    assert_eq!(load_token(&settings).unwrap().as_deref(), Some("s3cret-token-of-some-length"));
    std::fs::write(&path, " \n").unwrap();
    assert!(load_token(&settings).unwrap_err().contains("empty"));
    std::fs::remove_file(&path).unwrap();
    assert!(load_token(&settings).unwrap_err().contains("token"));
}
