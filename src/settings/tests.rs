//! The settings' unit tests: every default, path resolution, every refusal with its
//! position, and the shipped example.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::*;

fn parse(text: &str) -> Result<(Settings, Vec<Diagnostic>), Vec<Diagnostic>> {
    Settings::parse(text, Path::new("/etc/keygate/keygate.toml"))
}

fn ok(text: &str) -> (Settings, Vec<Diagnostic>) {
    match parse(text) {
        Ok(x) => x,
        Err(errors) => panic!("unexpected errors: {errors:#?}"),
    }
}

fn assert_error(text: &str, line: usize, column: usize, fragment: &str) {
    let errors = match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(errors) => errors,
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert!(e.is_error());
    assert!(e.message.contains(fragment), "`{}` should contain `{fragment}`", e.message);
    assert_eq!((e.line, e.column), (line, column), "{}", e.message);
}

#[test]
fn an_empty_file_gives_every_default() {
    let (s, warnings) = ok("");
    assert!(warnings.is_empty());
    assert_eq!(s.file, Path::new("/etc/keygate/keygate.toml"));
    assert_eq!(s.policy_file, Path::new("/etc/keygate/routes.toml"));
    assert_eq!(s.listen.address, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(s.listen.tls, None);
    assert!(s.listen.trusted_proxies.is_empty());
    assert_eq!(s.admin.address, "127.0.0.1:9090".parse().unwrap(), "loopback unless set");
    assert_eq!(s.admin.api_address, "127.0.0.1:9091".parse().unwrap());
    assert_eq!(s.admin.token_file, None);
    let d = Server::default();
    assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.server.idle_timeout, d.idle_timeout);
    assert_eq!(s.server.body_timeout, Duration::from_secs(60));
    assert_eq!(s.server.max_connections, 10_000);
    assert_eq!(s.server.max_header_bytes, 16_384);
    assert_eq!(s.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.server.drain_delay, Duration::ZERO);
    assert_eq!(s.keys.source, KeySource::File("/etc/keygate/keys.json".into()));
    assert_eq!(s.keys.cache_ttl, Duration::from_secs(30));
    assert_eq!(s.keys.stale_if_error, Duration::from_secs(300));
    assert_eq!(s.keys.pepper_file, None);
    assert_eq!(s.limits.backend, LimitBackend::Local);
    assert_eq!(s.limits.on_store_error, OnStoreError::Local);
    assert_eq!(s.limits.replicas, 1);
    assert_eq!(s.limits.concurrency_ttl, Duration::from_secs(10));
    assert!(s.redis.is_none());
}

#[test]
fn relative_paths_are_resolved_against_the_config_directory() {
    let text = r#"
policy = "policy/routes.toml"
[listen]
tls = { cert = "tls/tls.crt", key = "/abs/tls.key" }
[admin]
token_file = "admin-token"
[keys]
file = "../data/keys.json"
pepper_file = "peppers"
[limits]
backend = "redis"
[redis]
url = "rediss://cache:6380"
password_file = "redis-password"
ca_file = "ca.pem"
"#;
    let (s, warnings) = ok(text);
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(s.policy_file, Path::new("/etc/keygate/policy/routes.toml"));
    assert_eq!(s.listen.tls, Some(Tls { cert: "/etc/keygate/tls/tls.crt".into(), key: "/abs/tls.key".into() }));
    assert_eq!(s.admin.token_file.as_deref(), Some(Path::new("/etc/keygate/admin-token")));
    assert_eq!(s.keys.source, KeySource::File("/etc/keygate/../data/keys.json".into()));
    assert_eq!(s.keys.pepper_file.as_deref(), Some(Path::new("/etc/keygate/peppers")));
    let redis = s.redis.unwrap();
    assert_eq!(redis.url, "rediss://cache:6380");
    assert_eq!(redis.password_file.as_deref(), Some(Path::new("/etc/keygate/redis-password")));
    assert_eq!(redis.ca_file.as_deref(), Some(Path::new("/etc/keygate/ca.pem")));
    assert_eq!(redis.timeout, Duration::from_millis(50));
}

#[test]
fn a_bare_file_name_resolves_to_a_bare_path() {
    let (s, _) = Settings::parse("", Path::new("keygate.toml")).unwrap();
    assert_eq!(s.policy_file, Path::new("routes.toml"));
    assert_eq!(s.keys.source, KeySource::File("keys.json".into()));
}

#[test]
fn every_value_can_be_set() {
    let text = r#"
[listen]
address = "[::1]:443"
trusted_proxies = ["10.0.0.0/8", "192.168.1.10", "fd00::/8", "::1"]
[admin]
address = "127.0.0.1:0"
api_address = "[::1]:9999"
[server]
header_read_timeout = "500ms"
idle_timeout = "2m"
body_timeout = "1h"
max_connections = 1
max_header_bytes = 1024
shutdown_grace = "0s"
drain_delay = "5s"
[keys]
source = "redis"
cache_ttl = "0s"
stale_if_error = "1d"
[limits]
backend = "redis"
on_store_error = "deny"
replicas = 3
concurrency_ttl = "4s"
[redis]
url = "redis+cluster://a:7000,b:7001"
timeout = "20ms"
"#;
    let (s, warnings) = ok(text);
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(s.listen.address, "[::1]:443".parse().unwrap());
    let nets: Vec<String> = s.listen.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8", "::1/128"]);
    assert_eq!(s.admin.address, "127.0.0.1:0".parse().unwrap());
    assert_eq!(s.server.header_read_timeout, Duration::from_millis(500));
    assert_eq!(s.server.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.server.body_timeout, Duration::from_secs(3600));
    assert_eq!((s.server.max_connections, s.server.max_header_bytes), (1, 1024));
    assert_eq!(s.server.shutdown_grace, Duration::ZERO);
    assert_eq!(s.server.drain_delay, Duration::from_secs(5));
    assert_eq!(s.keys.source, KeySource::Redis);
    assert_eq!(s.keys.cache_ttl, Duration::ZERO);
    assert_eq!(s.keys.stale_if_error, Duration::from_secs(86_400));
    assert_eq!(s.limits.backend, LimitBackend::Redis);
    assert_eq!(s.limits.on_store_error, OnStoreError::Deny);
    assert_eq!(s.limits.replicas, 3);
    assert_eq!(s.limits.concurrency_ttl, Duration::from_secs(4));
    let redis = s.redis.unwrap();
    assert_eq!(redis.url, "redis+cluster://a:7000,b:7001");
    assert_eq!(redis.timeout, Duration::from_millis(20));
}

#[test]
fn syntax_errors_and_unknown_fields() {
    assert_error("[listen]\nadress = \"0.0.0.0:1\"\n", 2, 1, "unknown field `adress`");
    assert_error("[listen\n", 1, 8, "");
    assert_error("[server]\nmax_connections = \"many\"\n", 2, 19, "invalid type");
    assert_error("[listen]\ntls = { cert = \"a\", key = \"b\", ca = \"c\" }\n", 2, 32, "unknown field `ca`");
}

#[test]
fn addresses() {
    assert_error("[listen]\naddress = \"localhost:8443\"\n", 2, 11, "IP address and a port");
    assert_error("[admin]\naddress = \"9090\"\n", 2, 11, "IP address and a port");
    assert_error("[listen]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:1\"\n", 4, 11, "cannot share");
    // Found by the `settings` fuzz target: a proxy address equal to the admin default
    // passed the check and failed only when the second listener was bound.
    assert_error("[listen]\naddress = \"127.0.0.1:9090\"\n", 2, 11, "cannot share the admin listener's address");
    ok("[listen]\naddress = \"127.0.0.1:9090\"\n[admin]\naddress = \"127.0.0.1:9095\"\n");
    ok("[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let (_, w) = ok("[admin]\napi_address = \"0.0.0.0:9091\"\n");
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].line, w[0].column), (2, 15));
    assert!(w[0].message.contains("not a loopback address"), "{}", w[0].message);
    assert!(!w[0].is_error());
    let (_, w) = ok("[admin]\napi_address = \"[::1]:9091\"\n");
    assert!(w.is_empty());
}

#[test]
fn trusted_proxies_are_checked() {
    assert_error(
        "[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
        2,
        34,
        "neither an IP address nor a CIDR",
    );
    assert_error("[listen]\ntrusted_proxies = [\"proxy.local\"]\n", 2, 20, "neither");
    let (s, w) = ok("[listen]\ntrusted_proxies = [\"10.1.2.3/8\"]\n");
    assert_eq!(s.listen.trusted_proxies, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("host bits"));
}

#[test]
fn server_limits() {
    assert_error("[server]\nmax_connections = 0\n", 2, 19, "with 0 keygate would accept no connection");
    assert_error("[server]\nmax_header_bytes = 512\n", 2, 20, "at least 1024");
    assert_error("[server]\nmax_header_bytes = -1\n", 2, 20, "431");
    assert_error("[server]\nheader_read_timeout = \"0s\"\n", 2, 23, "longer than 0s");
    assert_error("[server]\nidle_timeout = \"60\"\n", 2, 16, "no unit");
    assert_error("[server]\nbody_timeout = \"1w\"\n", 2, 16, "unknown unit");
    assert_error("[server]\ndrain_delay = \"soon\"\n", 2, 15, "drain_delay");
    assert_error("[server]\nworkers = 0\n", 2, 11, "no request would be served");
    assert_error("[server]\nworkers = 5000\n", 2, 11, "at most 1024");
    assert_eq!(ok("[server]\nworkers = 3\n").0.server.workers, 3);
    assert_eq!(ok("").0.server.workers, default_workers());
}

#[test]
fn address_budgets() {
    let (s, _) = ok("");
    assert_eq!((s.server.failed_auth_per_minute, s.server.preflights_per_minute), (300, 600));
    let (s, _) = ok("[server]\nfailed_auth_per_minute = 0\npreflights_per_minute = 1000000\n");
    assert_eq!((s.server.failed_auth_per_minute, s.server.preflights_per_minute), (0, 1_000_000));
    assert_error("[server]\nfailed_auth_per_minute = -1\n", 2, 26, "0 for no limit");
    assert_error("[server]\npreflights_per_minute = 1000001\n", 2, 25, "at most 1000000");
}

#[test]
fn choices() {
    assert_error("[keys]\nsource = \"postgres\"\n", 2, 10, "\"file\" or \"redis\"");
    assert_error("[limits]\nbackend = \"memcached\"\n", 2, 11, "\"local\" or \"redis\"");
    assert_error("[limits]\non_store_error = \"retry\"\n", 2, 18, "\"local\" or \"allow\" or \"deny\"");
    assert_error("[limits]\nreplicas = 0\n", 2, 12, "at least 1");
    assert_error("[limits]\nconcurrency_ttl = \"0s\"\n", 2, 19, "longer than 0s");
    assert_error("[limits]\nreplicas = 5000000000\n", 2, 12, "too large");
    assert_error("policy = \"\"\n", 1, 10, "cannot be empty");
}

#[test]
fn redis_is_required_where_used() {
    assert_error("[keys]\nsource = \"redis\"\n", 2, 10, "`keys.source = \"redis\"` needs a [redis] table");
    assert_error("[limits]\nbackend = \"redis\"\n", 2, 11, "`limits.backend = \"redis\"` needs a [redis]");
    let errors = parse("[keys]\nsource = \"redis\"\n[limits]\nbackend = \"redis\"\n").unwrap_err();
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, [(2, 10), (4, 11)]);
}

#[test]
fn redis_table() {
    let redis = |body: &str| format!("[limits]\nbackend = \"redis\"\n[redis]\n{body}\n");
    assert_error(&redis("timeout = \"50ms\""), 3, 1, "needs a `url`");
    assert_error(&redis("url = \"http://cache:6379\""), 4, 7, "scheme `http`");
    assert_error(&redis("url = \"127.0.0.1:6379\""), 4, 7, "redis://127.0.0.1:6379/0");
    assert_error(&redis("url = \"redis://\""), 4, 7, "names no host");
    assert_error(&redis("url = \"redis://:pw@\""), 4, 7, "names no host");
    assert_error(&redis("url = \"redis://a\"\ntimeout = \"0ms\""), 5, 11, "longer than 0s");
    let (s, _) = ok(&redis("url = \"redis://:secret@cache:6379/2\"\ntimeout = \"1s\""));
    assert_eq!(s.redis.unwrap().timeout, Duration::from_secs(1));
    let (_, w) = ok(&redis("url = \"redis://a\"\nca_file = \"ca.pem\""));
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("rediss://"));
}

#[test]
fn unused_settings_are_warnings() {
    let (s, w) = ok("[redis]\nurl = \"redis://a\"\n");
    assert!(s.redis.is_some());
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].line, w[0].column), (1, 1));
    assert!(w[0].message.contains("[redis] is not used"));
    let (_, w) = ok("[keys]\nsource = \"redis\"\nfile = \"k.json\"\n[redis]\nurl = \"redis://a\"\n");
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].line, w[0].column), (3, 8));
}

#[test]
fn tls_needs_cert_and_key() {
    assert_error("[listen]\ntls = { cert = \"a.crt\" }\n", 2, 7, "both `cert` and `key`");
    assert_error("[listen.tls]\nkey = \"a.key\"\n", 1, 1, "both `cert` and `key`");
}

#[test]
fn all_errors_are_collected() {
    let text = "[listen]\naddress = \"x\"\n[server]\nmax_connections = 0\n[limits]\nreplicas = 0\n";
    let errors = parse(text).unwrap_err();
    let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, [(2, 11), (4, 19), (6, 12)]);
    assert!(errors.iter().all(|e| e.to_string().starts_with("/etc/keygate/keygate.toml:")));
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let (s, warnings) = Settings::load(&path).unwrap();
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(s.listen.address, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(s.admin.address, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(s.policy_file, path.with_file_name("routes.toml"));
    assert_eq!(s.keys.source, KeySource::File(path.with_file_name("keys.json")));
    assert_eq!(s.limits.backend, LimitBackend::Local);
}

#[test]
fn an_unreadable_file_is_a_file_error() {
    let errors = Settings::load(Path::new("/nonexistent/keygate.toml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].column), (0, 0));
    assert!(errors[0].message.contains("cannot read"));
}

#[test]
fn min_body_rate_is_bytes_a_second_over_its_window_and_zero_turns_it_off() {
    let parse =
        |server: &str| Settings::parse(&format!("[server]\n{server}\n"), Path::new("/etc/keygate/keygate.toml"));
    let (settings, _) = parse("").unwrap();
    assert_eq!(
        settings.server.min_body_rate,
        Some(crate::body::MinRate { bytes: 10 * 1024, window: Duration::from_secs(10) }),
        "the default: 1 KiB a second over 10 s"
    );
    let (settings, _) = parse("min_body_rate = 500\nmin_body_rate_window = \"4s\"").unwrap();
    assert_eq!(
        settings.server.min_body_rate,
        Some(crate::body::MinRate { bytes: 2000, window: Duration::from_secs(4) })
    );
    let (settings, _) = parse("min_body_rate = 0").unwrap();
    assert_eq!(settings.server.min_body_rate, None);
    assert!(parse("min_body_rate = -1").is_err());
    assert!(parse("min_body_rate_window = \"0s\"").is_err());
}

#[test]
fn the_authorizer_listener_is_optional_and_so_is_the_proxy_with_it() {
    let (s, _) = ok("");
    assert!(s.serve_proxy);
    assert!(s.authorizer.is_none());

    let (s, _) = ok("[authorizer]\n");
    assert!(!s.serve_proxy, "[authorizer] without [listen]: an authorizer only");
    let a = s.authorizer.unwrap();
    assert_eq!(a.address, "0.0.0.0:9191".parse().unwrap());
    assert!(a.tls.is_none() && a.trusted_proxies.is_empty() && a.path_prefix.is_none());

    let (s, _) = ok(concat!(
        "[listen]\naddress = \"127.0.0.1:8443\"\n",
        "[authorizer]\naddress = \"127.0.0.1:9000\"\ntls = { cert = \"a.crt\", key = \"a.key\" }\n",
        "trusted_proxies = [\"10.0.0.0/8\"]\npath_prefix = \"/authz\"\n",
    ));
    assert!(s.serve_proxy);
    let a = s.authorizer.unwrap();
    assert_eq!(a.address, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(a.tls, Some(Tls { cert: "/etc/keygate/a.crt".into(), key: "/etc/keygate/a.key".into() }));
    assert_eq!(a.trusted_proxies, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(a.path_prefix.as_deref(), Some("/authz"));
}

#[test]
fn authorizer_values_are_checked_with_their_position() {
    assert_error("[authorizer]\naddress = \"nowhere\"\n", 2, 11, "`address`");
    assert_error(
        "[listen]\naddress = \"127.0.0.1:80\"\n[authorizer]\naddress = \"127.0.0.1:80\"\n",
        4,
        11,
        "proxy's address",
    );
    assert_error("[authorizer]\naddress = \"127.0.0.1:9090\"\n", 2, 11, "admin listener's address");
    assert_error("[authorizer]\ntrusted_proxies = [\"ten\"]\n", 2, 20, "ten");
    assert_error("[authorizer]\npath_prefix = \"authz/\"\n", 2, 15, "path_prefix");
    assert_error("[authorizer]\ntls = { cert = \"a.crt\" }\n", 2, 7, "both `cert` and `key`");
    assert_error("[authorizer]\nadress = \"127.0.0.1:1\"\n", 2, 1, "adress");
}
