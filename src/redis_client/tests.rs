//! Unit tests of the Redis client's settings (password precedence, URLs, the CA file)
//! and of how it classifies errors.

use super::url::{parse, resolve_password};
use super::*;

#[test]
fn password_precedence() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("pw");
    std::fs::write(&file, "  from-file\n").unwrap_or_else(|e| panic!("{e}"));
    let got = resolve_password(Some(&file), Some("from-env".into())).ok().flatten();
    assert_eq!(got.as_deref(), Some("from-file"));
    let got = resolve_password(None, Some("from-env".into())).ok().flatten();
    assert_eq!(got.as_deref(), Some("from-env"));
    assert_eq!(resolve_password(None, Some(String::new())).ok().flatten(), None);
    let missing = resolve_password(Some(&dir.path().join("nope")), None);
    assert!(matches!(missing, Err(RedisClientError::PasswordFile { .. })));
}

#[test]
fn parses_single_and_cluster_urls() {
    let p = parse("redis://:urlpw@127.0.0.1:6380/2", None, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(!p.cluster);
    assert_eq!(p.nodes.len(), 1);
    assert_eq!(p.nodes[0].redis_settings().password(), Some("urlpw"));
    assert_eq!(p.nodes[0].redis_settings().db(), 2);

    let p = parse("redis://:urlpw@127.0.0.1:6380", Some("filepw"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.nodes[0].redis_settings().password(), Some("filepw"), "the file wins over the URL");

    let p = parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001, 10.0.0.3:7002", None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(p.cluster);
    assert_eq!(p.nodes.len(), 3);
    assert!(p.nodes.iter().all(|n| n.redis_settings().password() == Some("pw")));
    assert_eq!(p.nodes[2].addr().to_string(), "10.0.0.3:7002");

    let p = parse("rediss+cluster://a:1,b:2", None, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.cluster);
    assert!(matches!(p.nodes[0].addr(), redis::ConnectionAddr::TcpTls { .. }));

    assert!(parse("http://x", None, None).is_err());
    assert!(parse("redis+cluster://a:1,,b:2", None, None).is_err());
    assert!(parse("no-scheme", None, None).is_err());
}

#[test]
fn url_errors_never_echo_the_url() {
    let e = parse("redis://:sekrit@[bad", None, None).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(!e.is_empty());
    assert!(!e.contains("sekrit"), "{e}");
}

#[test]
fn ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, "not a pem").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(parse("rediss://h:1", None, Some(&file)), Err(RedisClientError::CaFile { .. })));
    assert!(matches!(
        parse("rediss://h:1", None, Some(&dir.path().join("missing"))),
        Err(RedisClientError::CaFile { .. })
    ));
    // Plain redis:// ignores the CA.
    assert!(parse("redis://h:1", None, Some(&file)).is_ok());
}

#[test]
fn classifies_errors() {
    let io: redis::RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
    assert!(means_down(&io));
    let wrongtype = redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "nope"));
    assert!(!means_down(&wrongtype));
}
