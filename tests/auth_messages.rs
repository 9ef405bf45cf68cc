//! 401s through the proxy say what is wrong with what was sent: a key without `Bearer`,
//! a key in quotes or with whitespace inside, another product's credential, another
//! scheme. The status, `type`, `WWW-Authenticate` and JSON shape stay those of the
//! contract, and the key itself is never echoed.

mod support;

use bytes::Bytes;
use support::*;

#[tokio::test]
async fn each_mistake_gets_a_401_naming_it_and_never_echoing_the_key() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, secret) = kg.key("acme", "pro", &["calls:read"]);
    let key = secret.expose();
    let http = Http::new();
    let url = kg.url("/v1/calls");
    assert_eq!(http.get(&url, Some(key)).await.status, 200, "the key itself is good");

    let spaced = format!("Bearer {} {}", &key[..12], &key[12..]);
    let cases: Vec<(String, &str, &[&str])> = vec![
        (key.to_string(), "malformed", &["no scheme", "send `Authorization: Bearer <key>`"]),
        (format!("Bearer \"{key}\""), "malformed", &["in quotes", "send it bare"]),
        (spaced, "malformed", &["whitespace"]),
        (format!("Bearer: {key}"), "malformed", &["misspelt", "send `Authorization: Bearer <key>`"]),
        (format!("Bearer Bearer {key}"), "malformed", &["written twice"]),
        ("Bearer sk_live_51H8abcdefghijklmnopqrstuv".into(), "malformed", &["a Stripe secret key", "`kg_`"]),
        ("Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789".into(), "malformed", &["a GitHub token"]),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".into(), "malformed", &["a JWT"]),
        (format!("Basic {key}"), "missing", &["Basic scheme", "send `Authorization: Bearer <key>`"]),
        (format!("Bearer {}", &key[..20]), "malformed", &["31 characters long, this one is 20"]),
    ];
    let mut messages = std::collections::HashSet::new();
    for (value, failure, fragments) in &cases {
        let answer = http.send("GET", &url, &[("authorization", value)], Bytes::new()).await;
        assert_eq!(answer.status, 401, "{value}: {}", answer.text());
        assert_eq!(answer.header("content-type"), "application/json");
        let json = answer.json();
        let error = json["error"].as_object().unwrap();
        let mut fields: Vec<&str> = error.keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(fields, ["message", "request_id", "type"], "{value}: the contract's shape");
        assert_eq!(answer.error_type(), "unauthorized");
        let message = answer.message();
        assert!(message.starts_with(&format!("API key {failure}: ")), "{value}: {message}");
        for fragment in *fragments {
            assert!(message.contains(fragment), "{value}: `{message}` should say `{fragment}`");
        }
        let www = answer.header("www-authenticate");
        if *failure == "missing" {
            assert_eq!(www, "Bearer realm=\"keygate\"", "{value}");
        } else {
            assert_eq!(www, "Bearer realm=\"keygate\", error=\"invalid_token\"", "{value}");
        }
        assert!(!answer.text().contains(&key[3..]), "{value}: the key is echoed: {}", answer.text());
        assert!(!answer.text().contains("abcdefghijklmnop"), "{value}: the credential is echoed");
        messages.insert(message);
    }
    assert_eq!(messages.len(), cases.len(), "one message per mistake: {messages:#?}");
    assert_eq!(upstream.count(), 1, "no refused request reaches the upstream");
    kg.stop().await;
}
