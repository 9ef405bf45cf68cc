//! Unit tests of the TLS configuration: the DER walk against openssl, the pair checks,
//! and reloads that swap only new valid pairs.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::der::der_time;
use super::*;

/// Makes a self-signed certificate with openssl; returns (cert PEM path, key PEM path).
fn openssl_cert(dir: &Path, name: &str, days: u32, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-subj", "/CN=localhost", "-days", &days.to_string(), "-newkey"])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    (cert, key)
}

fn openssl_enddate(cert: &Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // notAfter=2026-05-01 12:00:00Z
    let text = String::from_utf8(out.stdout).unwrap();
    let value = text.trim().strip_prefix("notAfter=").unwrap();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(value, &format).unwrap().assume_utc().unix_timestamp()
}

fn leaf_der(cert: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(cert).unwrap().next().unwrap().unwrap().to_vec()
}

#[test]
fn not_after_matches_openssl_for_utc_time_and_generalized_time() {
    let dir = tempfile::tempdir().unwrap();
    // 30 days: a UTCTime; 36500 days: past 2049, a GeneralizedTime.
    for (name, days) in [("short", 30), ("long", 36500)] {
        let (cert, _) = openssl_cert(dir.path(), name, days, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        let der = leaf_der(&cert);
        let expected = openssl_enddate(&cert);
        assert_eq!(not_after(&der), Some(expected), "{name}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let wanted = now + i64::from(days) * 86_400;
        assert!((expected - wanted).abs() < 120, "{name}: {expected} vs {wanted}");
    }
}

#[test]
fn not_after_of_an_rsa_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = openssl_cert(dir.path(), "rsa", 400, &["rsa:2048"]);
    assert_eq!(not_after(&leaf_der(&cert)), Some(openssl_enddate(&cert)));
}

#[test]
fn der_times() {
    assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
    assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
    assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631_152_000));
    assert_eq!(der_time(0x18, b"20380119031408Z"), Some(2_147_483_648));
    assert_eq!(der_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
    // Not RFC 5280: no Z, fractions, offsets, wrong lengths, impossible dates.
    assert_eq!(der_time(0x17, b"700101000000"), None);
    assert_eq!(der_time(0x18, b"20380119031408.5Z"), None);
    assert_eq!(der_time(0x17, b"7001010000+0100"), None);
    assert_eq!(der_time(0x18, b"700101000000Z"), None);
    assert_eq!(der_time(0x17, b"701301000000Z"), None);
    assert_eq!(der_time(0x17, b"700230000000Z"), None);
    assert_eq!(der_time(0x04, b"700101000000Z"), None);
}

#[test]
fn not_after_refuses_what_is_not_a_certificate() {
    assert_eq!(not_after(&[]), None);
    assert_eq!(not_after(&[0x30]), None);
    assert_eq!(not_after(&[0x30, 0x80, 0x00, 0x00]), None);
    assert_eq!(not_after(&[0x30, 0x05, 0x30, 0x03, 0x02, 0x01]), None);
    assert_eq!(not_after(&[0x04, 0x02, 0x30, 0x00]), None);
    // Every truncation of a real certificate is refused, never a panic.
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = openssl_cert(dir.path(), "t", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    let der = leaf_der(&cert);
    for end in 0..der.len() {
        assert_eq!(not_after(&der[..end]), None, "truncated at {end}");
    }
}

#[test]
fn load_refuses_bad_pairs_naming_the_files_and_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = openssl_cert(dir.path(), "a", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    let (_, key_b) = openssl_cert(dir.path(), "b", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    let metrics = Arc::new(Metrics::new());
    let settings = |cert: &Path, key: &Path| crate::settings::Tls { cert: cert.into(), key: key.into() };
    let key_text = std::fs::read_to_string(&key_b).unwrap();
    let key_body: Vec<&str> = key_text.lines().filter(|l| !l.starts_with("-----")).collect();

    let missing = dir.path().join("missing.key");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n").unwrap();
    let cases = [
        (settings(&cert_a, &key_b), "does not match"),
        (settings(&cert_a, &missing), "cannot read"),
        (settings(&key_a, &key_a), "no CERTIFICATE"),
        (settings(&cert_a, &cert_a), "no unencrypted private key"),
        (settings(&cert_a, &garbage), "invalid base64"),
    ];
    for (pair, wanted) in cases {
        let error = Tls::load(&pair, metrics.clone()).unwrap_err().to_string();
        assert!(error.contains(wanted), "{error}");
        assert!(
            error.contains(&*pair.cert.to_string_lossy()) || error.contains(&*pair.key.to_string_lossy()),
            "{error}"
        );
        for line in &key_body {
            assert!(!error.contains(line), "{error}");
        }
    }
    Tls::load(&settings(&cert_a, &key_a), metrics).unwrap();
}

#[test]
fn reload_swaps_only_new_valid_pairs_and_counts_each_refusal_once() {
    let dir = tempfile::tempdir().unwrap();
    let ec = ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let (cert_a, key_a) = openssl_cert(dir.path(), "a", 10, &ec);
    let (cert_b, key_b) = openssl_cert(dir.path(), "b", 20, &ec);
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let metrics = Arc::new(Metrics::new());
    let tls = Tls::load(&crate::settings::Tls { cert: cert.clone(), key: key.clone() }, metrics).unwrap();
    assert_eq!(tls.not_after(), openssl_enddate(&cert_a));
    assert_eq!(tls.reload(), Ok(false));

    // A mismatched pair: refused, counted once however often it is read.
    std::fs::copy(&cert_b, &cert).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
    assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
    assert_eq!(tls.reload_failures(), 1);
    assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_a));
    assert_eq!(tls.not_after(), openssl_enddate(&cert_a));

    // The matching key arrives: swapped once.
    std::fs::copy(&key_b, &key).unwrap();
    assert_eq!(tls.reload(), Ok(true));
    assert_eq!(tls.reload(), Ok(false));
    assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_b));
    assert_eq!(tls.not_after(), openssl_enddate(&cert_b));

    // The same bad content again after a good one is a new failure.
    std::fs::copy(&cert_a, &cert).unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(tls.reload_failures(), 2);
    std::fs::remove_file(&key).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
    assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
    assert_eq!(tls.reload_failures(), 3);
    assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_b));
}

#[test]
fn keys_in_pkcs8_sec1_and_pkcs1_load() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (ec_cert, ec_key) = openssl_cert(dir.path(), "ec", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    let (rsa_cert, rsa_key) = openssl_cert(dir.path(), "rsa", 1, &["rsa:2048"]);
    let sec1 = dir.path().join("sec1.key");
    let pkcs1 = dir.path().join("pkcs1.key");
    let run = |args: &[&str], input: &Path, output: &Path| {
        let out = Command::new("openssl").args(args).arg("-in").arg(input).arg("-out").arg(output).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["ec"], &ec_key, &sec1);
    run(&["rsa", "-traditional"], &rsa_key, &pkcs1);
    assert!(std::fs::read_to_string(&sec1).unwrap().contains("BEGIN EC PRIVATE KEY"));
    assert!(std::fs::read_to_string(&pkcs1).unwrap().contains("BEGIN RSA PRIVATE KEY"));
    for (cert, key) in [(&ec_cert, &ec_key), (&ec_cert, &sec1), (&rsa_cert, &rsa_key), (&rsa_cert, &pkcs1)] {
        let settings = crate::settings::Tls { cert: cert.clone(), key: key.clone() };
        if let Err(e) = Tls::load(&settings, metrics.clone()) {
            panic!("{}: {e}", key.display());
        }
    }
}
