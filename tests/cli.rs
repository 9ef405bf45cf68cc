//! The command line as an operator uses it: the real binary against a real config.

mod support;

use std::time::Duration;

use support::*;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn create_use_revoke_is_401_within_a_second() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let config = kg.config_path();
    let (code, _, err) = cli(&config, &["tenants", "create", "acme", "--plan", "pro"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        cli(&config, &["keys", "create", "--tenant", "acme", "--name", "ci", "--scopes", "calls:read", "--json"]);
    assert_eq!(code, 0, "{err}");
    let created = json(&out);
    for field in ["id", "key", "tenant", "name", "scopes", "created_at", "expires_at"] {
        assert!(created.get(field).is_some(), "--json lacks {field}: {out}");
    }
    assert_eq!(created["scopes"], serde_json::json!(["calls:read"]));
    assert!(created["expires_at"].is_null());
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["key"].as_str().unwrap().to_string();

    let http = Http::new();
    let url = kg.url("/v1/calls");
    assert!(eventually(Duration::from_secs(2), async || http.get(&url, Some(&key)).await.status == 200).await);

    let (code, _, err) = cli(&config, &["keys", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let revoked_at = std::time::Instant::now();
    // The first request answered 401 must have been *sent* within a second of the revoke
    // (its answer may take longer on a loaded machine).
    let mut refused_sent_at = None;
    let seen = eventually(Duration::from_secs(5), async || {
        let sent = std::time::Instant::now();
        let refused = http.get(&url, Some(&key)).await.status == 401;
        if refused {
            refused_sent_at = Some(sent);
        }
        refused
    })
    .await;
    assert!(seen, "revocation never seen");
    let after = refused_sent_at.expect("a refused request").duration_since(revoked_at);
    assert!(after < Duration::from_secs(1), "revocation seen by a request sent {after:?} after it");
    let answer = http.get(&url, Some(&key)).await;
    assert!(answer.message().contains("revoked"));

    let (code, out, _) = cli(&config, &["keys", "show", &id, "--json"]);
    assert_eq!(code, 0);
    let shown = json(&out);
    assert!(shown.get("key").is_none(), "show never prints the secret");
    assert!(!out.contains(&key));
    assert!(shown["revoked_at"].is_string());
    assert!(shown.get("last_used_at").is_some());
    kg.stop().await;
}

#[tokio::test]
async fn concurrent_cli_writers_lose_no_write() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let config = kg.config_path();
    let children: Vec<_> = (0..12)
        .map(|i| {
            std::process::Command::new(keygate_bin())
                .args(["--config", config.to_str().unwrap(), "tenants", "create", &format!("t{i}"), "--plan", "pro"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (code, out, _) = cli(&config, &["tenants", "list", "--json"]);
    assert_eq!(code, 0);
    let tenants = json(&out);
    assert_eq!(tenants.as_array().unwrap().len(), 12, "{out}");
    kg.stop().await;
}

#[tokio::test]
async fn rules_are_enforced_with_one_line_errors() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let config = kg.config_path();
    let one_line_error = |args: &[&str], fragment: &str| {
        let (code, out, err) = cli(&config, args);
        assert_ne!(code, 0, "{args:?} should fail: {out}");
        let last = err.lines().filter(|l| l.starts_with("keygate:")).collect::<Vec<_>>();
        assert_eq!(last.len(), 1, "{args:?}: {err}");
        assert!(last[0].contains(fragment), "{args:?}: {err}");
    };
    one_line_error(&["tenants", "create", "Bad Name", "--plan", "pro"], "tenant");
    one_line_error(&["tenants", "create", "acme", "--plan", "platinum"], "platinum");
    assert_eq!(cli(&config, &["tenants", "create", "acme", "--plan", "pro"]).0, 0);
    assert_eq!(cli(&config, &["tenants", "create", "free", "--plan", "trial"]).0, 0);
    one_line_error(&["keys", "create", "--tenant", "nobody", "--name", "x", "--scopes", "calls:read"], "nobody");
    one_line_error(&["keys", "create", "--tenant", "acme", "--name", "x", "--scopes", "calls:delete"], "calls:delete");
    one_line_error(&["keys", "create", "--tenant", "free", "--name", "x", "--scopes", "calls:read"], "API access");
    for i in 0..5 {
        let (code, _, err) =
            cli(&config, &["keys", "create", "--tenant", "acme", "--name", &format!("k{i}"), "--scopes", "calls:read"]);
        assert_eq!(code, 0, "{err}");
    }
    one_line_error(&["keys", "create", "--tenant", "acme", "--name", "sixth", "--scopes", "calls:read"], "5");
    one_line_error(&["keys", "revoke", "key_doesnotexist"], "key_doesnotexist");
    one_line_error(
        &["keys", "create", "--tenant", "acme", "--name", "x", "--scopes", "calls:read", "--expires-in", "soon"],
        "soon",
    );
    kg.stop().await;
}

#[tokio::test]
async fn rotate_keeps_tenant_name_and_scopes_and_the_old_key_works_during_the_grace() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let config = kg.config_path();
    assert_eq!(cli(&config, &["tenants", "create", "acme", "--plan", "pro"]).0, 0);
    let (_, out, _) = cli(
        &config,
        &["keys", "create", "--tenant", "acme", "--name", "billing", "--scopes", "calls:read,calls:write", "--json"],
    );
    let old = json(&out);
    let (code, out, err) = cli(&config, &["keys", "rotate", old["id"].as_str().unwrap(), "--grace", "1h", "--json"]);
    assert_eq!(code, 0, "{err}");
    let new = json(&out);
    assert_ne!(new["id"], old["id"]);
    assert_ne!(new["key"], old["key"]);
    assert_eq!(new["tenant"], "acme");
    assert_eq!(new["name"], "billing");
    assert_eq!(new["scopes"], old["scopes"]);
    let (_, out, _) = cli(&config, &["keys", "show", old["id"].as_str().unwrap(), "--json"]);
    let old_now = json(&out);
    assert!(old_now["expires_at"].is_string(), "the old key expires after the grace: {out}");

    let http = Http::new();
    let url = kg.url("/v1/calls");
    for key in [&old["key"], &new["key"]] {
        let key = key.as_str().unwrap();
        assert!(eventually(Duration::from_secs(2), async || http.get(&url, Some(key)).await.status == 200).await);
    }
    kg.stop().await;
}

#[test]
fn check_reports_errors_with_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.toml"), "policy = \"routes.toml\"\n[keys]\nsource = \"file\"\n").unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[scopes]\n\"a:b\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/x\"\nscopes = [\"c:d\"]\nupstream = \"nope\"\n",
    )
    .unwrap();
    let (code, out, _) = cli(&dir.path().join("keygate.toml"), &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes.toml:7:"), "{out}");
    assert!(out.contains("c:d"), "{out}");
    assert!(out.contains("nope"), "{out}");
    assert!(out.contains("warning") && out.contains("pepper"), "check warns about the missing pepper: {out}");

    std::fs::write(
        dir.path().join("routes.toml"),
        "[scopes]\n\"a:b\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/x\"\nscopes = [\"a:b\"]\nupstream = \"app\"\n",
    )
    .unwrap();
    let (code, out, err) = cli(&dir.path().join("keygate.toml"), &["check"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn serve_with_an_invalid_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.toml"), "policy = \"routes.toml\"\nunknown_field = 1\n").unwrap();
    let (code, _, err) = cli(&dir.path().join("keygate.toml"), &["serve"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("keygate.toml:2:"), "{err}");
}

#[test]
fn the_example_config_is_valid() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let (code, out, err) = cli(&config, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn explain_shows_path_route_scopes_and_verdict() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let (code, out, err) = cli(&config, &["explain", "POST", "/v1/calls/../calls/%37", "--scopes", "calls:read"]);
    assert_eq!(code, 1, "a refusal exits 1: {err}");
    assert!(out.contains("/v1/calls/7"), "{out}");
    assert!(out.contains("calls:write"), "{out}");
    assert!(out.contains("403"), "{out}");
    let (code, out, _) = cli(&config, &["explain", "GET", "/v1/calls", "--scopes", "calls:read", "--json"]);
    assert_eq!(code, 0);
    let explained = json(&out);
    assert_eq!(explained["status"], 200);
    assert_eq!(explained["route"], "/v1/calls");
    let (_, out, _) = cli(&config, &["explain", "GET", "/nowhere"]);
    assert!(out.contains("404"), "{out}");
    let (_, out, _) = cli(&config, &["explain", "GET", "/v1/calls/..;/x"]);
    assert!(out.contains("400"), "{out}");
}

#[test]
fn check_loads_the_tls_pair_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("tls.key"), "not a key\n").unwrap();
    std::fs::write(
        dir.path().join("keygate.toml"),
        "policy = \"routes.toml\"\n[listen]\ntls = { cert = \"tls.crt\", key = \"tls.key\" }\n[keys]\nsource = \"file\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes.toml"),
        "[scopes]\n\"a:b\" = \"x\"\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nprefix = \"/x\"\nscopes = [\"a:b\"]\nupstream = \"app\"\n",
    )
    .unwrap();
    let (code, out, _) = cli(&dir.path().join("keygate.toml"), &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("listen.tls"), "{out}");
    let (cert, key) = tls_pair(dir.path());
    std::fs::rename(cert, dir.path().join("tls.crt")).unwrap();
    std::fs::rename(key, dir.path().join("tls.key")).unwrap();
    let (code, out, _) = cli(&dir.path().join("keygate.toml"), &["check"]);
    assert_eq!(code, 0, "{out}");
}
