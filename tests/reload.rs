//! Policy hot reload (docs/reference.md §2.2 "Reload", issue 5): a file written in place, renamed over,
//! swapped the way the kubelet updates a ConfigMap, reloaded on SIGHUP; invalid files;
//! plans and upstreams changed by a reload; pooled upstream connections kept across one;
//! reloads under load; the reload metrics. Real servers on ephemeral ports; every wait
//! for something to happen is a poll with a deadline.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

/// How soon a change must be live. The watch reacts at once (after a 50 ms debounce); the
/// tests' poll backstop is an hour (`Polls::events_only`), so a change seen within this
/// bound was seen by the watch.
const PROMPTLY: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------
// Helpers

/// The harness's standard policy for `upstream`, plus `extra` (more tables).
fn policy(upstream: &str, extra: &str) -> String {
    format!("{}\n{extra}", ROUTES.replace("{upstream}", upstream))
}

/// A public route (no key, no limit) to upstream `app`.
fn public_route(prefix: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nauth = \"none\"\nupstream = \"app\"\n")
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// `keygate_config_reloads_total{result}` (`result` is "success" or "failure").
async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    metric(&metrics_text(admin).await, "keygate_config_reloads_total", &[("result", result)])
        .expect("keygate_config_reloads_total is always exported")
}

async fn last_success(admin: SocketAddr) -> f64 {
    metric(&metrics_text(admin).await, "keygate_config_last_reload_success_timestamp_seconds", &[])
        .expect("keygate_config_last_reload_success_timestamp_seconds is exported")
}

/// Polls until `keygate_config_reloads_total{result}` reaches `at_least`.
async fn reloads_reach(admin: SocketAddr, result: &str, at_least: f64, deadline: Duration) -> bool {
    eventually(deadline, async || reloads(admin, result).await >= at_least).await
}

async fn status_of(http: &Http, url: &str) -> u16 {
    http.get(url, None).await.status
}

/// Polls until GET `url` (no key) answers `want`.
async fn becomes(http: &Http, url: &str, want: u16, deadline: Duration) -> bool {
    eventually(deadline, async || status_of(http, url).await == want).await
}

/// `keygate_config_last_reload_successful`.
async fn reload_successful(admin: SocketAddr) -> f64 {
    metric(&metrics_text(admin).await, "keygate_config_last_reload_successful", &[])
        .expect("keygate_config_last_reload_successful is exported")
}

/// The labels of the one `keygate_config_info` series: (serving_sha256, disk_sha256).
async fn config_info(admin: SocketAddr) -> (String, String) {
    let text = metrics_text(admin).await;
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("keygate_config_info{")).collect();
    assert_eq!(series.len(), 1, "not one keygate_config_info series: {series:?}");
    let label = |name: &str| {
        let start = series[0].find(&format!("{name}=\"")).expect("the label") + name.len() + 2;
        series[0][start..].split('"').next().unwrap().to_string()
    };
    (label("serving_sha256"), label("disk_sha256"))
}

async fn readyz(admin: SocketAddr) -> serde_json::Value {
    Http::new().get(&format!("http://{admin}/readyz"), None).await.json()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A Kubernetes ConfigMap volume, written the way the kubelet's AtomicWriter writes it:
/// the payload in a timestamped directory, `..data` a symlink to it, and the file a user
/// sees (`routes.toml`) a symlink through `..data`. An update writes a new timestamped
/// directory, points `..data_tmp` at it, renames `..data_tmp` over `..data` (the one
/// atomic step) and removes the old directory.
struct ConfigMap {
    root: PathBuf,
    current: String,
    generation: u32,
}

impl ConfigMap {
    fn create(root: &Path, text: &str) -> ConfigMap {
        std::fs::create_dir_all(root).unwrap();
        let mut map = ConfigMap { root: root.to_path_buf(), current: String::new(), generation: 0 };
        map.current = map.write_payload(text);
        symlink(&map.current, root.join("..data")).unwrap();
        symlink("..data/routes.toml", root.join("routes.toml")).unwrap();
        map
    }

    fn write_payload(&mut self, text: &str) -> String {
        self.generation += 1;
        let name = format!("..2026_11_27_10_00_{:02}.{:09}", self.generation, 123_456_789 + self.generation);
        std::fs::create_dir(self.root.join(&name)).unwrap();
        std::fs::write(self.root.join(&name).join("routes.toml"), text).unwrap();
        name
    }

    fn update(&mut self, text: &str) {
        let old = std::mem::take(&mut self.current);
        self.current = self.write_payload(text);
        symlink(&self.current, self.root.join("..data_tmp")).unwrap();
        std::fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).unwrap();
        std::fs::remove_dir_all(self.root.join(old)).unwrap();
    }

    /// The path a pod's config names.
    fn file(&self) -> PathBuf {
        self.root.join("routes.toml")
    }
}

/// An upstream that answers 200 `ok` and counts the TCP connections it accepts.
struct CountingUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn counting_upstream() -> CountingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (accepted, answered) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    answered.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok")))) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    CountingUpstream { addr, connections, requests }
}

/// `keygate serve` as a child process, its JSON log lines collected as they come, and
/// the addresses it logged when ready.
struct Serve {
    logged: support::process::LoggedServe,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Serve {
    async fn start(config: &Path) -> Serve {
        let logged = support::process::LoggedServe::spawn(config);
        let mut serve = Serve { logged, proxy: ([0, 0, 0, 0], 0).into(), admin: ([0, 0, 0, 0], 0).into() };
        let ready = eventually(Duration::from_secs(20), async || serve.find_from(0, "keygate ready").is_some()).await;
        assert!(ready, "keygate serve did not become ready: {:#?}", serve.lines());
        let line = &serve.lines()[serve.find_from(0, "keygate ready").unwrap()];
        let fields = &serde_json::from_str::<serde_json::Value>(line).unwrap()["fields"];
        serve.proxy = fields["proxy"].as_str().unwrap().parse().unwrap();
        serve.admin = fields["admin"].as_str().unwrap().parse().unwrap();
        serve
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn lines(&self) -> Vec<String> {
        self.logged.lines()
    }

    /// The index of the first log line at or after `from` whose message is `message`.
    fn find_from(&self, from: usize, message: &str) -> Option<usize> {
        let lines = self.lines();
        (from..lines.len()).find(|&i| log_message(&lines[i]).as_deref() == Some(message))
    }

    async fn wait_for(&self, from: usize, message: &str) -> usize {
        let found = eventually(Duration::from_secs(5), async || self.find_from(from, message).is_some()).await;
        assert!(
            found,
            "no log line {message:?} after line {from}: {:#?}",
            &self.lines()[from.min(self.lines().len())..]
        );
        self.find_from(from, message).unwrap()
    }

    fn signal(&self, signal: &str) {
        support::process::signal(self.logged.child.id(), signal);
    }
}

/// The `message` of a JSON log line.
fn log_message(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(value["fields"]["message"].as_str()?.to_string())
}

/// `(line, column)` when `message` is `…routes.toml:LINE:COLUMN: error: …`.
fn position_in(message: &str, file_name: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find(&format!("{file_name}:"))? + file_name.len() + 1..];
    let mut parts = rest.splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let column = parts.next()?.parse().ok()?;
    parts.next()?.trim_start().starts_with("error").then_some((line, column))
}

// ---------------------------------------------------------------------------------------
// 1–3: every way a file changes in practice

#[tokio::test]
async fn a_file_written_in_place_is_reloaded_within_a_second() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    assert_eq!(status_of(&http, &kg.url("/v1/new")).await, 404);
    let successes = reloads(kg.admin, "success").await;
    let file = kg.routes_path();
    let before = inode(&file);

    // std::fs::write opens with O_TRUNC and writes: the same inode, edited in place.
    let started = Instant::now();
    std::fs::write(&file, policy(&up.url(), &public_route("/v1/new"))).unwrap();
    assert_eq!(inode(&file), before, "the file was not written in place");
    assert!(becomes(&http, &kg.url("/v1/new"), 200, PROMPTLY).await, "the new route did not appear");
    let took = started.elapsed();
    assert!(reloads_reach(kg.admin, "success", successes + 1.0, Duration::from_secs(2)).await);
    assert_eq!(reloads(kg.admin, "success").await, successes + 1.0, "one change, one reload");
    assert_eq!(reloads(kg.admin, "failure").await, 0.0);
    eprintln!("in-place write live after {took:?}");

    // A second in-place edit removes it again.
    std::fs::write(&file, policy(&up.url(), "")).unwrap();
    assert!(becomes(&http, &kg.url("/v1/new"), 404, PROMPTLY).await, "the route was not removed");
    kg.stop().await;
}

#[tokio::test]
async fn a_file_renamed_over_is_reloaded_within_a_second() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    assert_eq!(status_of(&http, &kg.url("/v1/renamed")).await, 404);
    let file = kg.routes_path();
    let before = inode(&file);
    let successes = reloads(kg.admin, "success").await;

    let started = Instant::now();
    rename_over(&file, policy(&up.url(), &public_route("/v1/renamed")));
    assert_ne!(inode(&file), before, "the file was not replaced");
    assert!(becomes(&http, &kg.url("/v1/renamed"), 200, PROMPTLY).await, "the new route did not appear");
    eprintln!("rename over live after {:?}", started.elapsed());

    // And again: the watch follows the directory, so the replaced inode does not matter.
    rename_over(&file, policy(&up.url(), &public_route("/v1/renamed-again")));
    assert!(becomes(&http, &kg.url("/v1/renamed-again"), 200, PROMPTLY).await);
    assert_eq!(status_of(&http, &kg.url("/v1/renamed")).await, 404);
    assert!(reloads_reach(kg.admin, "success", successes + 2.0, Duration::from_secs(2)).await);
    assert_eq!(reloads(kg.admin, "success").await, successes + 2.0);
    kg.stop().await;
}

#[tokio::test]
async fn a_kubernetes_configmap_swap_is_reloaded_every_time() {
    let up = upstream().await;
    let dir = Keygate::builder(&up.url()).write();
    // The volume is a folder of its own; keygate.toml names the user-visible symlink.
    std::fs::remove_file(dir.path().join("routes.toml")).unwrap();
    let mut map = ConfigMap::create(&dir.path().join("config"), &policy(&up.url(), &public_route("/v1/swap0")));
    let config = dir.path().join("keygate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("policy = \"routes.toml\""));
    std::fs::write(&config, text.replace("policy = \"routes.toml\"", "policy = \"config/routes.toml\"")).unwrap();
    let (settings, _) = keygate::Settings::load(&config).unwrap();
    assert_eq!(settings.policy_file, map.file());
    let options = keygate::Options { polls: keygate::Polls::events_only(), ..keygate::Options::default() };
    let running = keygate::start(settings, options).await.expect("keygate starts");
    let proxy = running.proxy_addr.expect("the test config has [listen]");
    let url = |path: &str| format!("http://{proxy}{path}");
    let http = Http::new();
    assert_eq!(status_of(&http, &url("/v1/swap0")).await, 200);
    let successes = reloads(running.admin_addr, "success").await;

    for generation in 1..=4 {
        let started = Instant::now();
        map.update(&policy(&up.url(), &public_route(&format!("/v1/swap{generation}"))));
        assert!(
            becomes(&http, &url(&format!("/v1/swap{generation}")), 200, PROMPTLY).await,
            "swap {generation} was not picked up within {PROMPTLY:?}"
        );
        eprintln!("ConfigMap swap {generation} live after {:?}", started.elapsed());
        assert_eq!(status_of(&http, &url(&format!("/v1/swap{}", generation - 1))).await, 404);
        // The old timestamped folder is gone; only the current one is left.
        let payloads = std::fs::read_dir(&map.root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("..2026"))
            .count();
        assert_eq!(payloads, 1);
    }
    assert!(reloads_reach(running.admin_addr, "success", successes + 4.0, Duration::from_secs(2)).await);
    assert_eq!(reloads(running.admin_addr, "success").await, successes + 4.0, "one reload per swap");
    assert_eq!(reloads(running.admin_addr, "failure").await, 0.0, "no swap was seen half-done");
    running.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4: SIGHUP, and an invalid file, against the real binary

/// The policy path is a symlink into a folder keygate does not watch, so that an edit
/// there is invisible to the watch and only the 2 s poll could see it: what makes the
/// change live within a moment of the signal is SIGHUP.
#[tokio::test]
async fn sighup_reloads_at_once_and_an_unchanged_file_counts_nothing() {
    let up = upstream().await;
    let dir = Keygate::builder(&up.url()).write();
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("routes.toml");
    std::fs::write(&real, policy(&up.url(), "")).unwrap();
    std::fs::remove_file(dir.path().join("routes.toml")).unwrap();
    symlink(&real, dir.path().join("routes.toml")).unwrap();
    let serve = Serve::start(&dir.path().join("keygate.toml")).await;
    let http = Http::new();
    assert_eq!(status_of(&http, &serve.url("/status")).await, 200);
    let successes = reloads(serve.admin, "success").await;

    // SIGHUP with nothing changed: handled (logged), but no reload and nothing counted.
    let mark = serve.lines().len();
    serve.signal("HUP");
    serve.wait_for(mark, "SIGHUP: reloading the policy").await;

    // Three changes made live by SIGHUP. The poll (every 2 s) could still land between
    // a write and its signal; such a round proves nothing and is done again.
    let (mut proven, mut changes) = (0, 0);
    for round in 1..=10 {
        if proven == 3 {
            break;
        }
        let route = format!("/v1/hup{round}");
        std::fs::write(&real, policy(&up.url(), &public_route(&route))).unwrap();
        changes += 1;
        let mark = serve.lines().len();
        serve.signal("HUP");
        let started = Instant::now();
        assert!(becomes(&http, &serve.url(&route), 200, Duration::from_secs(1)).await, "SIGHUP {round} did not reload");
        let took = started.elapsed();
        let hup = serve.wait_for(mark, "SIGHUP: reloading the policy").await;
        let reloaded = serve.wait_for(mark, "policy reloaded").await;
        if hup < reloaded {
            proven += 1;
            eprintln!("SIGHUP {round}: live after {took:?}");
        } else {
            eprintln!("SIGHUP {round}: the poll got there first; again");
        }
    }
    assert_eq!(proven, 3, "SIGHUP did not reload three times out of {changes}");
    // One success per change, whichever reload saw it first: a reload of unchanged
    // content (the first SIGHUP, or a SIGHUP after the poll got there) counts nothing.
    assert_eq!(reloads(serve.admin, "success").await, successes + changes as f64, "{:#?}", serve.lines());
    assert_eq!(reloads(serve.admin, "failure").await, 0.0, "{:#?}", serve.lines());
}

#[tokio::test]
async fn the_binary_logs_an_invalid_policy_with_its_position_and_keeps_serving() {
    let up = upstream().await;
    let dir = Keygate::builder(&up.url()).write();
    let file = dir.path().join("routes.toml");
    let serve = Serve::start(&dir.path().join("keygate.toml")).await;
    let http = Http::new();
    assert_eq!(status_of(&http, &serve.url("/status")).await, 200);
    let failures = reloads(serve.admin, "failure").await;

    // Line 3: a table header that never closes.
    let broken = "default = \"deny\"\n\n[scopes\n";
    let mark = serve.lines().len();
    rename_over(&file, broken);
    serve.wait_for(mark, "policy reload failed; the last good policy keeps serving").await;
    let errors: Vec<(usize, usize)> =
        serve.lines()[mark..].iter().filter_map(|l| position_in(&log_message(l)?, "routes.toml")).collect();
    assert!(!errors.is_empty(), "no file:line:column error logged: {:#?}", &serve.lines()[mark..]);
    assert!(errors.iter().all(|&(line, column)| line == 3 && column >= 1), "{errors:?}");
    assert!(reloads_reach(serve.admin, "failure", failures + 1.0, Duration::from_secs(2)).await);
    // The file stays broken: the poll (2 s) logs it again, with no change to the file.
    let first = serve.wait_for(mark, "policy reload failed; the last good policy keeps serving").await;
    serve.wait_for(first + 1, "policy reload failed; the last good policy keeps serving").await;
    let failures = reloads(serve.admin, "failure").await - 1.0;
    assert_eq!(status_of(&http, &serve.url("/status")).await, 200, "the last good policy stopped serving");

    // Semantically invalid: a route names an upstream that does not exist.
    let unknown = policy(&up.url(), &public_route("/v1/nowhere")).replace(
        "prefix = \"/v1/nowhere\"\nauth = \"none\"\nupstream = \"app\"",
        "prefix = \"/v1/nowhere\"\nauth = \"none\"\nupstream = \"missing\"",
    );
    let mark = serve.lines().len();
    rename_over(&file, &unknown);
    // The poll may report the old broken file once more first: wait for the new error.
    let missing_line = unknown.lines().position(|l| l == "upstream = \"missing\"").unwrap() + 1;
    let errors = || -> Vec<(usize, usize)> {
        serve.lines()[mark..].iter().filter_map(|l| position_in(&log_message(l)?, "routes.toml")).collect()
    };
    let logged =
        eventually(Duration::from_secs(5), async || errors().iter().any(|&(line, _)| line == missing_line)).await;
    assert!(logged, "{:?}, expected line {missing_line}: {:#?}", errors(), &serve.lines()[mark..]);
    assert!(reloads_reach(serve.admin, "failure", failures + 2.0, Duration::from_secs(2)).await);
    assert_eq!(status_of(&http, &serve.url("/v1/nowhere")).await, 404);
    assert_eq!(status_of(&http, &serve.url("/status")).await, 200);

    // A valid file after that is picked up.
    rename_over(&file, policy(&up.url(), &public_route("/v1/fixed")));
    assert!(becomes(&http, &serve.url("/v1/fixed"), 200, PROMPTLY).await);
}

// ---------------------------------------------------------------------------------------
// 5: invalid files in-process

#[tokio::test]
async fn an_invalid_file_changes_nothing_stays_reported_on_every_poll_and_a_later_valid_one_is_picked_up() {
    let up = upstream().await;
    // The poll is part of what this test checks (a bad file it reads again is reported again).
    let kg = Keygate::builder(&up.url()).polls(keygate::Polls::default()).start().await;
    let http = Http::new();
    let file = kg.routes_path();
    rename_over(&file, policy(&up.url(), &public_route("/v1/good")));
    assert!(becomes(&http, &kg.url("/v1/good"), 200, PROMPTLY).await);
    let good_hash = kg.app().policy().hash.clone();
    let successes = reloads(kg.admin, "success").await;
    let failures = reloads(kg.admin, "failure").await;
    assert_eq!(reload_successful(kg.admin).await, 1.0);
    assert_eq!(config_info(kg.admin).await, (good_hash.clone(), good_hash.clone()));

    // A syntax error.
    let broken = policy(&up.url(), "[[routes]\nprefix = \"/v1/broken\"\n");
    let broken_hash = keygate::reload::content_hash(broken.as_bytes());
    rename_over(&file, &broken);
    assert!(reloads_reach(kg.admin, "failure", failures + 1.0, PROMPTLY).await, "the failure was not counted");
    assert_eq!(kg.app().policy().hash, good_hash, "an invalid file replaced the policy");
    assert_eq!(status_of(&http, &kg.url("/v1/good")).await, 200);
    assert_eq!(reload_successful(kg.admin).await, 0.0);
    assert_eq!(config_info(kg.admin).await, (good_hash.clone(), broken_hash.clone()));
    let ready = readyz(kg.admin).await;
    assert_eq!(ready["policy"]["serving_sha256"], good_hash.as_str(), "{ready}");
    assert_eq!(ready["policy"]["disk_sha256"], broken_hash.as_str(), "{ready}");
    assert_eq!(ready["policy"]["last_reload_successful"], false, "{ready}");
    assert!(ready["policy"]["last_reload_error"].as_str().is_some_and(|e| e.contains("routes.toml:")), "{ready}");
    let Err(errors) = keygate::policy::Policy::load(&file) else { panic!("the file is valid") };
    let broken_line = broken.lines().position(|l| l == "[[routes]").unwrap() + 1;
    assert_eq!((errors[0].line, errors[0].column > 0), (broken_line, true), "{errors:?}");
    assert!(errors[0].to_string().contains(&format!("routes.toml:{broken_line}:")), "{}", errors[0]);

    // The poll (every 2 s) tries the same bad content again, and reports it again: a file
    // that stays broken stays visible. Nothing else touches the file now.
    let reads = FileReads::watch(&file);
    let polled = eventually(Duration::from_secs(10), async || reads.count() >= 2).await;
    assert!(polled, "the poll did not read the file twice within 10 s");
    assert!(reloads_reach(kg.admin, "failure", failures + 2.0, Duration::from_secs(10)).await, "not reported again");
    assert_eq!(reload_successful(kg.admin).await, 0.0);
    assert_eq!(kg.app().policy().hash, good_hash);

    // Semantically invalid (an unknown upstream) is a failure too.
    let before = reloads(kg.admin, "failure").await;
    let unknown =
        policy(&up.url(), &public_route("/v1/nowhere")).replace("upstream = \"app\"\n\n", "upstream = \"nope\"\n\n");
    assert!(unknown.contains("\"nope\""));
    rename_over(&file, &unknown);
    let unknown_hash = keygate::reload::content_hash(unknown.as_bytes());
    let seen = eventually(PROMPTLY, async || config_info(kg.admin).await.1 == unknown_hash).await;
    assert!(seen, "the new invalid file was not tried");
    assert!(reloads(kg.admin, "failure").await > before);
    let Err(errors) = keygate::policy::Policy::load(&file) else { panic!("the file is valid") };
    assert!(errors.iter().all(|e| e.line > 0 && e.column > 0), "{errors:?}");
    assert!(errors.iter().any(|e| e.message.contains("nope")), "{errors:?}");
    assert_eq!(kg.app().policy().hash, good_hash);
    assert_eq!(status_of(&http, &kg.url("/v1/nowhere")).await, 404);
    assert_eq!(status_of(&http, &kg.url("/v1/good")).await, 200);

    // A later valid file is picked up, and the state is clear again.
    let better = policy(&up.url(), &public_route("/v1/better"));
    rename_over(&file, &better);
    assert!(becomes(&http, &kg.url("/v1/better"), 200, PROMPTLY).await);
    assert_eq!(status_of(&http, &kg.url("/v1/good")).await, 404);
    assert!(reloads_reach(kg.admin, "success", successes + 1.0, Duration::from_secs(2)).await);
    let better_hash = keygate::reload::content_hash(better.as_bytes());
    assert_eq!(reload_successful(kg.admin).await, 1.0);
    assert_eq!(config_info(kg.admin).await, (better_hash.clone(), better_hash));
    assert!(readyz(kg.admin).await["policy"]["last_reload_error"].is_null());

    // Back to content refused before: refused again.
    let before = reloads(kg.admin, "failure").await;
    rename_over(&file, &broken);
    assert!(reloads_reach(kg.admin, "failure", before + 1.0, PROMPTLY).await);
    assert_eq!(status_of(&http, &kg.url("/v1/better")).await, 200);
    kg.stop().await;
}

/// An in-place write with a pause in the middle (a slow writer) is read half-written by a
/// reload; that is not reported as a failure: the reload waits for the file to settle.
#[tokio::test]
async fn a_file_caught_half_written_is_not_reported_as_a_failure() {
    use std::io::Write;
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    let text = policy(&up.url(), &public_route("/v1/slowly"));
    // Cut inside a string: the first half alone is a syntax error.
    let cut = text.find("prefix = \"/slow\"").unwrap() + "prefix = \"/sl".len();
    let file = kg.routes_path();
    let mut writer = std::fs::OpenOptions::new().write(true).truncate(true).open(&file).unwrap();
    writer.write_all(&text.as_bytes()[..cut]).unwrap();
    // A slow writer, on purpose: longer than the watch's debounce (50 ms), shorter than
    // the settle time (100 ms).
    tokio::time::sleep(Duration::from_millis(80)).await;
    writer.write_all(&text.as_bytes()[cut..]).unwrap();
    drop(writer);
    assert!(becomes(&http, &kg.url("/v1/slowly"), 200, PROMPTLY).await);
    assert_eq!(reloads(kg.admin, "failure").await, 0.0, "a half-written file was reported");
    kg.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6–7: plans and upstreams

#[tokio::test]
async fn a_reload_changes_a_plans_limit_and_an_upstreams_address() {
    let first = upstream().await;
    let second = upstream().await;
    let kg = Keygate::builder(&first.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let http = Http::new();
    let call = async || http.get(&kg.url("/v1/calls"), Some(key.expose())).await;
    let answer = call().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit-policy"), "\"pro\";q=300;w=60");
    assert_eq!(answer.header("x-ratelimit-limit"), "300");

    // The plan's limit.
    let lower = policy(&first.url(), "").replace("requests_per_minute = 300", "requests_per_minute = 100");
    rename_over(&kg.routes_path(), &lower);
    let changed = eventually(PROMPTLY, async || {
        call().await.headers.get("ratelimit-policy").is_some_and(|v| v == "\"pro\";q=100;w=60")
    })
    .await;
    assert!(changed, "the new limit does not apply");
    assert_eq!(call().await.header("x-ratelimit-limit"), "100");

    // The upstream's address.
    let (at_first, at_second) = (first.count(), second.count());
    rename_over(&kg.routes_path(), lower.replace(&first.url(), &second.url()));
    assert!(eventually(PROMPTLY, async || call().await.status == 200 && second.count() > at_second).await);
    let first_settled = first.count();
    for _ in 0..5 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(first.count(), first_settled, "requests still reach the old upstream");
    assert!(second.count() >= at_second + 5);
    assert!(first_settled >= at_first);
    kg.stop().await;
}

#[tokio::test]
async fn the_pool_of_an_unchanged_upstream_survives_a_reload() {
    let up = counting_upstream().await;
    let url = format!("http://{}", up.addr);
    let kg = Keygate::builder(&url).start().await;
    let http = Http::new();
    for _ in 0..3 {
        assert_eq!(status_of(&http, &kg.url("/status")).await, 200);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "keygate does not keep upstream connections alive");

    // A reload that changes only a route.
    rename_over(&kg.routes_path(), policy(&url, &public_route("/v1/new")));
    assert!(becomes(&http, &kg.url("/v1/new"), 200, PROMPTLY).await);
    for _ in 0..5 {
        assert_eq!(status_of(&http, &kg.url("/status")).await, 200);
    }
    assert!(up.requests.load(Ordering::SeqCst) >= 9);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "the reload dropped the upstream's pooled connection");

    // A reload that changes the upstream's response timeout only (not how it is reached)
    // keeps its pool too.
    let longer =
        policy(&url, &public_route("/v1/new")).replace("timeout = \"1s\"\nconnect", "timeout = \"5s\"\nconnect");
    assert!(longer.contains("timeout = \"5s\""));
    let hash = keygate::reload::content_hash(longer.as_bytes());
    rename_over(&kg.routes_path(), &longer);
    assert!(eventually(PROMPTLY, async || kg.app().policy().hash == hash).await);
    for _ in 0..3 {
        assert_eq!(status_of(&http, &kg.url("/status")).await, 200);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "a timeout change dropped the pooled connection");
    kg.stop().await;
}

// ---------------------------------------------------------------------------------------
// 8: reloads under load; requests in flight; concurrent reloads

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_reloads_under_load_fail_no_request() {
    const CLIENTS: usize = 8;
    const RELOADS: usize = 32;
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let (_, key) = kg.key("acme", "unlimited", &["calls:read"]);
    let key = key.expose().to_string();
    let versions = [policy(&up.url(), &public_route("/v1/a")), policy(&up.url(), &public_route("/v1/b"))];
    let file = kg.routes_path();
    let successes = reloads(kg.admin, "success").await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (stop, answered, failed, key) = (stop.clone(), answered.clone(), failed.clone(), key.clone());
        let (status_url, calls_url) = (kg.url("/status"), kg.url(&format!("/v1/calls/{client}")));
        clients.push(tokio::spawn(async move {
            let http = Http::new(); // a pool per client
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let (url, key) =
                    if n.is_multiple_of(2) { (&status_url, None) } else { (&calls_url, Some(key.as_str())) };
                let answer = http.get(url, key).await;
                if answer.status != 200 {
                    failed.lock().unwrap().push(format!("{url}: {} {}", answer.status, answer.text()));
                }
                answered.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        }));
    }
    assert!(eventually(Duration::from_secs(5), async || answered.load(Ordering::SeqCst) >= 100).await);

    for i in 0..RELOADS {
        let text = &versions[i % 2];
        if i % 3 == 0 {
            std::fs::write(&file, text).unwrap();
        } else {
            rename_over(&file, text);
        }
        let landed = reloads_reach(kg.admin, "success", successes + (i + 1) as f64, Duration::from_secs(3)).await;
        assert!(landed, "reload {} did not land", i + 1);
    }
    let during = answered.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client panicked (a request failed at the transport level)");
    }

    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), during, &failed[..failed.len().min(5)]);
    assert!(reloads(kg.admin, "success").await >= successes + RELOADS as f64);
    assert_eq!(reloads(kg.admin, "failure").await, 0.0);
    eprintln!("{RELOADS} reloads under load: {during} requests, all 200");
    assert!(during >= 500, "too little load to mean anything: {during} requests");
    kg.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_under_the_policy_it_started_with() {
    let up = upstream().await;
    // The harness's upstream timeout (1 s) is raised for a slower request.
    let routes = policy(&up.url(), "").replace("timeout = \"1s\"\nconnect", "timeout = \"10s\"\nconnect");
    let kg = Keygate::builder(&up.url()).routes(&routes).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let key = key.expose().to_string();
    let http = Http::new();
    let slow = {
        let (http, url, key) = (http.clone(), kg.url("/slow/2000"), key.clone());
        tokio::spawn(async move { http.get(&url, Some(&key)).await })
    };
    assert!(eventually(Duration::from_secs(3), async || up.count() >= 1).await, "the slow request never arrived");

    // The new policy has no /slow route at all.
    let without_slow =
        routes.replace("[[routes]]\nprefix = \"/slow\"\nscopes = [\"calls:read\"]\nupstream = \"app\"\n", "");
    assert!(!without_slow.contains("/slow"));
    rename_over(&kg.routes_path(), &without_slow);
    let gone = eventually(PROMPTLY, async || http.get(&kg.url("/slow/0"), Some(&key)).await.status == 404).await;
    assert!(gone, "the reload did not land");
    assert!(!slow.is_finished(), "the slow request was not in flight across the reload");
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    kg.stop().await;
}

/// SIGHUP and the watcher may reload at the same moment: one change is still one swap
/// and one success, and the policy ends up as the file is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_of_one_change_count_once() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let app = kg.app().clone();
    for round in 0..5 {
        let successes = reloads(kg.admin, "success").await;
        let text = policy(&up.url(), &public_route(&format!("/v1/round{round}")));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        rename_over(&kg.routes_path(), &text);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (app, barrier) = (app.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    app.reload_policy();
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(app.policy().hash, keygate::reload::content_hash(text.as_bytes()));
        // The watcher's own reload of this change must count nothing either. Its thread
        // handles one change after another: once it has refused a later, invalid file
        // (counted as a failure), its reload of this one is over.
        let failures = reloads(kg.admin, "failure").await;
        rename_over(&kg.routes_path(), format!("{text}\n[[routes]\nprefix = \"/v1/round{round}-broken\"\n"));
        let refused = reloads_reach(kg.admin, "failure", failures + 1.0, Duration::from_secs(10)).await;
        assert!(refused, "round {round}: the watcher did not refuse the invalid file");
        assert_eq!(app.policy().hash, keygate::reload::content_hash(text.as_bytes()));
        assert_eq!(reloads(kg.admin, "success").await, successes + 1.0, "round {round}: one change, one success");
    }
    kg.stop().await;
}

// ---------------------------------------------------------------------------------------
// 9: the timestamp

#[tokio::test]
async fn the_last_success_timestamp_moves_forward_on_success_only() {
    let up = upstream().await;
    let kg = Keygate::builder(&up.url()).start().await;
    let http = Http::new();
    let at_start = last_success(kg.admin).await;
    assert!(at_start > 0.0 && at_start <= unix_now(), "set at start: {at_start}");

    let written = unix_now();
    rename_over(&kg.routes_path(), policy(&up.url(), &public_route("/v1/tick")));
    assert!(becomes(&http, &kg.url("/v1/tick"), 200, PROMPTLY).await);
    assert!(eventually(Duration::from_secs(2), async || last_success(kg.admin).await >= written).await);
    let after = last_success(kg.admin).await;
    assert!(after > at_start && after <= unix_now(), "{at_start} -> {after}");

    // A failed reload leaves it where it was.
    let failures = reloads(kg.admin, "failure").await;
    rename_over(&kg.routes_path(), "routes = 7\n");
    assert!(reloads_reach(kg.admin, "failure", failures + 1.0, PROMPTLY).await);
    assert_eq!(last_success(kg.admin).await, after);

    // A valid file moves it on; reloading an unchanged file (the poll, SIGHUP) does not.
    rename_over(&kg.routes_path(), policy(&up.url(), &public_route("/v1/tock")));
    assert!(eventually(Duration::from_secs(2), async || last_success(kg.admin).await > after).await);
    let latest = last_success(kg.admin).await;
    kg.app().reload_policy();
    assert_eq!(last_success(kg.admin).await, latest);
    kg.stop().await;
}
