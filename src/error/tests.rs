//! Unit tests of `error.rs`.

use super::*;

async fn body_json(response: Response<ProxyBody>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The one table: every variant with its status, JSON `type`, gRPC status, access-log
/// decision and `auth_decisions_total` label.
fn table() -> Vec<(Refusal, u16, &'static str, u32, &'static str, &'static str)> {
    vec![
        (Refusal::BadRequest("x".into()), 400, "bad_request", 3, "bad_request", "forbidden"),
        (Refusal::BadRequestBody, 400, "bad_request", 3, "bad_request_body", "forbidden"),
        (Refusal::Unauthorized(AuthFailure::Missing(NoKey::NoHeader)), 401, "unauthorized", 16, "missing", "missing"),
        (
            Refusal::Unauthorized(AuthFailure::Malformed(BadKey::Prefix)),
            401,
            "unauthorized",
            16,
            "malformed",
            "malformed",
        ),
        (Refusal::Unauthorized(AuthFailure::Unknown), 401, "unauthorized", 16, "unknown", "unknown"),
        (Refusal::Unauthorized(AuthFailure::Expired), 401, "unauthorized", 16, "expired", "expired"),
        (Refusal::Unauthorized(AuthFailure::Revoked), 401, "unauthorized", 16, "revoked", "revoked"),
        (Refusal::InsufficientScope { scope: "calls:write".into() }, 403, "forbidden", 7, "forbidden", "forbidden"),
        (Refusal::NoApiAccess { plan: "trial".into() }, 403, "forbidden", 7, "no_api_access", "no_api_access"),
        (Refusal::UnknownPlan { plan: "gold".into() }, 403, "forbidden", 7, "no_api_access", "no_api_access"),
        (Refusal::NotFound, 404, "not_found", 12, "not_found", "forbidden"),
        (
            Refusal::MethodNotAllowed { allow: vec![Method::GET] },
            405,
            "method_not_allowed",
            12,
            "method_not_allowed",
            "forbidden",
        ),
        (Refusal::PayloadTooLarge { limit: 10 }, 413, "payload_too_large", 3, "payload_too_large", "forbidden"),
        (
            Refusal::RateLimited {
                limit: "default".into(),
                requests: 300,
                per: LimitSpan::Window { secs: 60 },
                named: false,
                retry_after: 12,
            },
            429,
            "rate_limited",
            8,
            "rate_limited",
            "rate_limited",
        ),
        (Refusal::ConcurrencyLimited { cap: 5 }, 429, "rate_limited", 8, "rate_limited", "rate_limited"),
        (Refusal::HeadersTooLarge, 431, "headers_too_large", 3, "headers_too_large", "forbidden"),
        (Refusal::BadGateway, 502, "bad_gateway", 14, "bad_gateway", "forbidden"),
        (Refusal::Unavailable { retry_after: 1 }, 503, "unavailable", 14, "store_unavailable", "store_unavailable"),
        (Refusal::GatewayTimeout, 504, "gateway_timeout", 4, "gateway_timeout", "forbidden"),
        (Refusal::RequestTimeout, 408, "request_timeout", 4, "body_too_slow", "forbidden"),
        (Refusal::FailedAuthLimited { retry_after: 30 }, 429, "rate_limited", 8, "failed_auth_limited", "rate_limited"),
        (Refusal::PreflightLimited { retry_after: 30 }, 429, "rate_limited", 8, "preflight_limited", "forbidden"),
        (Refusal::UpstreamBusy, 503, "upstream_busy", 14, "upstream_busy", "forbidden"),
        (Refusal::ClientClosed, 499, "client_closed_request", 1, "client_closed", "forbidden"),
    ]
}

#[tokio::test]
async fn every_refusal_maps_to_its_status_json_grpc_decision_and_label() {
    let table = table();
    for (refusal, status, kind, grpc, decision, label) in table.clone() {
        assert_eq!(refusal.decision(), decision, "{refusal:?}");
        assert_eq!(refusal.auth_result().as_str(), label, "{refusal:?}");
        assert_eq!(refusal.grpc_status(), grpc, "{refusal:?}");
        let response = refusal.clone().into_response("req-1", false);
        assert_eq!(response.status().as_u16(), status, "{refusal:?}");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["error"]["type"], kind);
        assert_eq!(json["error"]["request_id"], "req-1");
        assert!(json["error"]["message"].as_str().unwrap().len() > 5);
        let grpc_response = refusal.clone().into_response("req-1", true);
        assert_eq!(grpc_response.status(), StatusCode::OK, "{refusal:?}");
        assert_eq!(grpc_response.headers()["grpc-status"], grpc.to_string().as_str());
    }
    // Every variant is in the table (a new one without a row fails here).
    let variants: std::collections::HashSet<_> = table.iter().map(|row| std::mem::discriminant(&row.0)).collect();
    assert_eq!(variants.len(), 20);
    let results: std::collections::HashSet<_> = table.iter().map(|row| row.0.auth_result()).collect();
    assert!(results.len() == AuthResult::ALL.len() - 1, "every label but ok is reachable from a refusal");
}

#[test]
fn auth_results_are_indexed_in_declaration_order_and_distinct() {
    for (i, result) in AuthResult::ALL.iter().enumerate() {
        assert_eq!(result.index(), i, "{result:?}");
    }
    let labels: std::collections::HashSet<_> = AuthResult::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), AuthResult::ALL.len());
}

#[tokio::test]
async fn rate_limited_carries_retry_after_in_body_and_header() {
    let minute = LimitSpan::Window { secs: 60 };
    let legacy =
        Refusal::RateLimited { limit: "default".into(), requests: 300, per: minute, named: false, retry_after: 12 };
    let response = legacy.into_response("r", false);
    assert_eq!(response.headers()[RETRY_AFTER], "12");
    let json = body_json(response).await;
    assert_eq!(json["error"]["retry_after"], 12);
    assert_eq!(json["error"]["limit"], "default");
    assert_eq!(json["error"]["message"], "Rate limit of 300 requests per minute exceeded");

    let burst = LimitSpan::Window { secs: 1 };
    let named = Refusal::RateLimited { limit: "burst".into(), requests: 10, per: burst, named: true, retry_after: 1 };
    let json = body_json(named.into_response("r", false)).await;
    assert_eq!(json["error"]["limit"], "burst");
    assert_eq!(json["error"]["message"], "Rate limit \"burst\" of 10 requests per second exceeded");

    let month = LimitSpan::Month;
    let quota =
        Refusal::RateLimited { limit: "month".into(), requests: 100_000, per: month, named: true, retry_after: 86_400 };
    let response = quota.into_response("r", false);
    assert_eq!(response.headers()[RETRY_AFTER], "86400");
    let json = body_json(response).await;
    assert_eq!(json["error"]["limit"], "month");
    assert_eq!(json["error"]["message"], "Quota \"month\" of 100000 requests per month exceeded");

    let response = Refusal::ConcurrencyLimited { cap: 5 }.into_response("r", false);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
    let json = body_json(response).await;
    assert_eq!(json["error"]["limit"], "concurrency");
    assert_eq!(json["error"]["retry_after"], 1);
    assert_eq!(
        json["error"]["message"],
        "Concurrency limit of 5 requests in flight exceeded; retry when one has finished"
    );
}

#[test]
fn www_authenticate_follows_rfc_6750() {
    let missing = Refusal::Unauthorized(AuthFailure::Missing(NoKey::NoHeader)).into_response("r", false);
    assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate\"");
    let bad = Refusal::Unauthorized(AuthFailure::Unknown).into_response("r", false);
    assert_eq!(bad.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate\", error=\"invalid_token\"");
    let scope = Refusal::InsufficientScope { scope: "calls:write".into() }.into_response("r", false);
    assert_eq!(
        scope.headers()[WWW_AUTHENTICATE],
        "Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"calls:write\""
    );
}

#[test]
fn unauthorized_messages_tell_the_failures_apart() {
    let failures = [
        AuthFailure::Missing(NoKey::NoHeader),
        AuthFailure::Malformed(BadKey::Prefix),
        AuthFailure::Unknown,
        AuthFailure::Expired,
        AuthFailure::Revoked,
    ];
    let messages: std::collections::HashSet<_> = failures.iter().map(|f| f.message()).collect();
    assert_eq!(messages.len(), failures.len());
    for f in failures {
        assert!(f.message().to_lowercase().contains(f.as_str()));
    }
}

#[test]
fn method_not_allowed_lists_allow() {
    let r = Refusal::MethodNotAllowed { allow: vec![Method::GET, Method::HEAD] }.into_response("r", false);
    assert_eq!(r.headers()[ALLOW], "GET, HEAD");
}

#[test]
fn unavailable_has_retry_after() {
    let r = Refusal::Unavailable { retry_after: 0 }.into_response("r", false);
    assert_eq!(r.headers()[RETRY_AFTER], "1");
}

#[test]
fn grpc_refusals_carry_a_message() {
    let r = Refusal::Unauthorized(AuthFailure::Missing(NoKey::NoHeader)).into_response("r", true);
    assert!(r.headers().contains_key("grpc-message"));
}

#[test]
fn the_detail_of_a_missing_or_malformed_key_changes_the_message_not_the_label() {
    let details = [
        AuthFailure::Missing(NoKey::NoHeader),
        AuthFailure::Missing(NoKey::OtherScheme(Some("Basic"))),
        AuthFailure::Missing(NoKey::OtherScheme(None)),
        AuthFailure::Malformed(BadKey::Duplicated),
        AuthFailure::Malformed(BadKey::NotText),
        AuthFailure::Malformed(BadKey::NoScheme),
        AuthFailure::Malformed(BadKey::SchemeMisspelt),
        AuthFailure::Malformed(BadKey::EmptyBearer),
        AuthFailure::Malformed(BadKey::SchemeTwice),
        AuthFailure::Malformed(BadKey::Quoted),
        AuthFailure::Malformed(BadKey::Bracketed),
        AuthFailure::Malformed(BadKey::Whitespace),
        AuthFailure::Malformed(BadKey::Foreign("a GitHub token")),
        AuthFailure::Malformed(BadKey::Prefix),
        AuthFailure::Malformed(BadKey::PrefixCase),
        AuthFailure::Malformed(BadKey::Length { sent: 30, expected: 31 }),
        AuthFailure::Malformed(BadKey::Charset),
        AuthFailure::Malformed(BadKey::Checksum),
    ];
    let messages: std::collections::HashSet<_> = details.iter().map(|f| f.message()).collect();
    assert_eq!(messages.len(), details.len(), "each detail has its own message");
    for failure in details {
        let refusal = Refusal::Unauthorized(failure);
        assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.error_type(), "unauthorized");
        assert_eq!(refusal.decision(), failure.as_str());
        assert_eq!(refusal.auth_result(), AuthResult::Key(failure.label()), "{failure:?}");
        assert!(AuthResult::ALL.contains(&refusal.auth_result()), "{failure:?}: a label of the metric");
        assert!(refusal.message().starts_with(&format!("API key {}: ", failure.as_str())), "{}", refusal.message());
    }
    let no_scheme = Refusal::Unauthorized(AuthFailure::Malformed(BadKey::NoScheme)).message();
    assert!(no_scheme.contains("no scheme") && no_scheme.contains("`Authorization: Bearer <key>`"), "{no_scheme}");
    let basic = Refusal::Unauthorized(AuthFailure::Missing(NoKey::OtherScheme(Some("Basic")))).message();
    assert!(basic.contains("Basic scheme"), "{basic}");
    let missing = Refusal::Unauthorized(AuthFailure::Missing(NoKey::OtherScheme(None))).into_response("r", false);
    assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer realm=\"keygate\"", "no token was sent");
}
