//! The test harness: real servers on ephemeral ports. `upstream()` records what it
//! receives; `Keygate::builder()` writes a config into a temporary folder and starts the
//! real proxy in-process (`replica()`: one on a shared Redis); `Http` sends requests.
//! Readiness and every other wait for something to happen is `eventually()`, a poll
//! with a deadline, never a sleep. Also the shared file and log helpers
//! (`rename_over()`, `FileReads`, `access_lines()`).

#![allow(dead_code)]

pub mod h2_frames;
pub mod process;
pub mod raw_upstream;
pub mod redis;
pub mod strict;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::clock::Clock;
use keygate::keys::file_store::FileStore;
use keygate::keys::manage::{self, NewKey};
use keygate::keys::{Peppers, Secret};
use keygate::policy::Policy;
use keygate::{Options, Polls, Running, Settings};
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// The most admissions certainly decided within one `window`-long span, of admissions
/// given as (sent, received) times sorted by sent time: a span [a, a + window] certainly
/// holds admission j iff sent_j >= a and received_j <= a + window, and the best a is one
/// of the sent times. The exactness tests compare it with the limit.
pub fn most_in_one_window(admitted: &[(Instant, Instant)], window: Duration) -> usize {
    admitted
        .iter()
        .map(|&(a, _)| admitted.iter().filter(|&&(sent, received)| sent >= a && received <= a + window).count())
        .max()
        .unwrap_or(0)
}

/// Polls `check` (every 20 ms) until it is true or `deadline` passes; tells whether it
/// became true. The one way tests wait for something to happen.
pub async fn eventually(deadline: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`eventually`] for synchronous code (the Redis harness starts servers outside any
/// runtime work): the same polling, blocking the thread between checks.
pub fn eventually_blocking(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// How often [`eventually`] and [`eventually_blocking`] look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// Upstream

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub trailers: Option<HeaderMap>,
    pub at: Instant,
}

/// A test upstream. Behaviour by path:
/// `/slow/<ms>…` waits before answering; `/trailers…` answers with a trailer;
/// `/hop…` answers with hop-by-hop headers; everything else answers 200 `ok`, with the
/// received target in `x-upstream-target`. It counts request bodies without keeping them.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let record = record.clone();
                    async move { Ok::<_, Infallible>(answer(request, record).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(request: Request<Incoming>, record: Arc<Mutex<Vec<Seen>>>) -> Response<TestBody> {
    let (parts, mut body) = request.into_parts();
    let target = parts.uri.path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
    let mut body_len = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(data) => body_len += data.len() as u64,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body_len,
        trailers,
        at: Instant::now(),
    });
    let path = parts.uri.path();
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|rest| rest.split('/').next()?.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut builder = Response::builder().status(StatusCode::OK).header("x-upstream-target", target.as_str());
    if path.starts_with("/hop") {
        builder = builder
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic");
    }
    if path.starts_with("/trailers") {
        builder = builder.header("trailer", "x-checksum");
    }
    if path.starts_with("/trailers") {
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc".parse().unwrap());
                t
            })),
        ];
        let stream = futures_stream(frames);
        return builder.body(StreamBody::new(stream).boxed()).unwrap();
    }
    builder.body(Full::new(Bytes::from_static(b"ok")).boxed()).unwrap()
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    tokio_stream::iter(items)
}

/// An upstream that answers every request with `response`, byte for byte, then closes the
/// connection: for upstreams that speak broken HTTP.
pub async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// An address where nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------
// keygate

/// A standard policy for tests: `{upstream}` is replaced by the upstream's URL.
pub const ROUTES: &str = r#"
default = "deny"

[scopes]
"calls:read" = "View calls"
"calls:write" = "Make calls"
"agents:write" = "Change agents"
"webhooks:manage" = "Manage webhooks"
"analytics:read" = "View analytics"

[plans.trial]
api_access = false

[plans.pro]
requests_per_minute = 300
max_keys = 5

[plans.tiny]
requests = 3
window = "10s"

[plans.unlimited]

[plans.twenty]
requests = 20
window = "2s"

[upstreams.app]
url = "{upstream}"
timeout = "1s"
connect_timeout = "1s"

[[routes]]
prefix = "/v1/calls"
methods = ["GET", "HEAD"]
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/v1/calls"
methods = ["POST"]
scopes = ["calls:write"]
upstream = "app"
max_body_bytes = 1024

[[routes]]
prefix = "/v1/webhooks"
scopes = ["webhooks:manage"]
upstream = "app"
cost = 2

[[routes]]
prefix = "/v1/analytics"
scopes = ["analytics:read"]
upstream = "app"
mode = "shadow"

[[routes]]
prefix = "/v1/any"
upstream = "app"

[[routes]]
prefix = "/v1/upload"
scopes = ["calls:write"]
upstream = "app"

[[routes]]
prefix = "/slow"
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/trailers"
scopes = ["calls:read"]
upstream = "app"

[[routes]]
prefix = "/hop"
auth = "none"
upstream = "app"

[[routes]]
prefix = "/status"
auth = "none"
upstream = "app"
"#;

/// Builds a keygate config in a temporary folder.
pub struct Builder {
    routes: String,
    settings_extra: String,
    listen_extra: String,
    admin_extra: String,
    keys_table: String,
    clock: Option<Arc<dyn Clock>>,
    polls: Polls,
}

/// A running in-process keygate and its folder.
pub struct Keygate {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The key/tenant API, when `[admin]` configures a token.
    pub api: Option<SocketAddr>,
    pub store: FileStore,
    pub peppers: Peppers,
}

impl Keygate {
    pub fn builder(upstream_url: &str) -> Builder {
        Builder {
            routes: ROUTES.replace("{upstream}", upstream_url),
            settings_extra: String::new(),
            listen_extra: String::new(),
            admin_extra: String::new(),
            keys_table: "[keys]\nsource = \"file\"\nfile = \"keys.json\"\npepper_file = \"peppers\"\n".to_string(),
            clock: None,
            // Tests see file changes through the watches alone: a broken watch fails them
            // instead of passing through the poll. A test of the poll asks for it.
            polls: Polls::events_only(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    pub fn routes_path(&self) -> PathBuf {
        self.dir.path().join("routes.toml")
    }

    pub fn policy(&self) -> Policy {
        Policy::load(&self.routes_path()).expect("test policy is valid").0
    }

    pub fn app(&self) -> &Arc<keygate::state::App> {
        &self.running.as_ref().unwrap().app
    }

    /// The running proxy's own file store (file-store keygates only).
    pub fn proxy_store(&self) -> &Arc<FileStore> {
        self.app().keys().store().file().expect("a file-store keygate")
    }

    /// Creates tenant `tenant` on `plan` (if new) and a key with `scopes`.
    pub fn key(&self, tenant: &str, plan: &str, scopes: &[&str]) -> (String, Secret) {
        self.key_with(tenant, plan, scopes, None)
    }

    pub fn key_with(
        &self,
        tenant: &str,
        plan: &str,
        scopes: &[&str],
        expires_in: Option<Duration>,
    ) -> (String, Secret) {
        let policy = self.policy();
        let created = self
            .store
            .update(|data| {
                let now = OffsetDateTime::now_utc();
                if !data.tenants.contains_key(tenant) {
                    manage::create_tenant(data, &policy, tenant, plan, now)?;
                }
                let new = NewKey {
                    tenant: tenant.to_string(),
                    name: format!("{tenant} test key"),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    expires_in,
                };
                manage::create_key(data, &policy, &self.peppers, &new, now)
            })
            .expect("create key");
        self.refresh_proxy_store();
        (created.record.id, created.secret)
    }

    /// Creates tenant `tenant` on `plan` (if new) and a key, through the running proxy's
    /// own store (file or Redis), as the CLI and the admin API do.
    pub async fn store_key(&self, tenant: &str, plan: &str, scopes: &[&str]) -> (String, Secret) {
        let app = self.app();
        let policy = app.policy();
        let store = app.keys().store();
        match store.create_tenant(&policy, tenant, plan).await {
            Ok(_) | Err(manage::ManageError::TenantExists(_)) => {}
            Err(e) => panic!("create tenant: {e}"),
        }
        let new = NewKey {
            tenant: tenant.to_string(),
            name: format!("{tenant} test key"),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_in: None,
        };
        let created = store.create_key(&policy, app.keys().peppers(), &new).await.expect("create key");
        (created.record.id, created.secret)
    }

    /// Changes the store directly (bypassing the rules), e.g. to put a tenant on a plan
    /// the policy lacks.
    pub fn edit_store(&self, change: impl FnOnce(&mut keygate::keys::data::KeysData)) {
        self.store
            .update(|data| {
                change(data);
                Ok::<_, keygate::keys::data::StoreError>(())
            })
            .unwrap();
        self.refresh_proxy_store();
    }

    /// Makes the running proxy re-read the key store now, as its file watcher would
    /// within 250 ms (the CLI tests exercise the watcher itself).
    fn refresh_proxy_store(&self) {
        if let Some(running) = &self.running {
            if let Some(store) = running.app.keys().store().file() {
                store.refresh().expect("the proxy re-reads the key store");
            }
        }
    }

    /// Waits until the running proxy has seen the store's latest content.
    pub async fn sync_store(&self) {
        let want = self.store.snapshot();
        let app = self.app().clone();
        let store = app.keys().store().file().expect("a file-store keygate").clone();
        let ok = eventually(Duration::from_secs(3), async || *store.snapshot() == *want).await;
        assert!(ok, "the proxy did not pick up the key store change within 3 s");
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Stops the in-process proxy but keeps its folder (config, keys), e.g. to run the
    /// real binary on it.
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.dir
    }
}

impl Builder {
    pub fn routes(mut self, routes: &str) -> Self {
        self.routes = routes.to_string();
        self
    }

    /// Extra TOML appended to keygate.toml (whole tables).
    pub fn settings(mut self, extra: &str) -> Self {
        self.settings_extra.push_str(extra);
        self.settings_extra.push('\n');
        self
    }

    /// Extra lines inside `[listen]`.
    pub fn listen(mut self, extra: &str) -> Self {
        self.listen_extra.push_str(extra);
        self.listen_extra.push('\n');
        self
    }

    /// Extra lines inside `[admin]`.
    pub fn admin(mut self, extra: &str) -> Self {
        self.admin_extra.push_str(extra);
        self.admin_extra.push('\n');
        self
    }

    /// Keys in Redis at `url` (adds the `[redis]` table; `timeout` is the request path's).
    pub fn redis_keys(mut self, url: &str, timeout: &str) -> Self {
        self.keys_table =
            "[keys]\nsource = \"redis\"\npepper_file = \"peppers\"\ncache_ttl = \"30s\"\nstale_if_error = \"5m\"\n"
                .into();
        self.settings_extra.push_str(&format!("[redis]\nurl = \"{url}\"\ntimeout = \"{timeout}\"\n"));
        self
    }

    /// The watches' poll backstops (production's are [`Polls::default`]).
    pub fn polls(mut self, polls: Polls) -> Self {
        self.polls = polls;
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Writes the files into a new temporary folder.
    pub fn write(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.toml"), &self.routes).unwrap();
        std::fs::write(dir.path().join("peppers"), "p2=second-pepper-secret\np1=first-pepper-secret\n").unwrap();
        let config = format!(
            "policy = \"routes.toml\"\n\n[listen]\naddress = \"127.0.0.1:0\"\n{}\n[admin]\naddress = \"127.0.0.1:0\"\n{}\n{}\n{}",
            self.listen_extra, self.admin_extra, self.keys_table, self.settings_extra
        );
        std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
        dir
    }

    pub async fn start(self) -> Keygate {
        let dir = self.write();
        let (settings, _) = Settings::load(&dir.path().join("keygate.toml")).expect("test config is valid");
        let peppers = Peppers::load(settings.keys.pepper_file.as_deref(), None).unwrap();
        let store = FileStore::open(&dir.path().join("keys.json")).unwrap();
        let mut options = Options { polls: self.polls, ..Options::default() };
        if let Some(clock) = self.clock {
            options.clock = clock;
        }
        let running = keygate::start(settings, options).await.expect("keygate starts");
        Keygate {
            addr: running.proxy_addr.expect("the test config has [listen]"),
            admin: running.admin_addr,
            api: running.admin_api_addr,
            running: Some(running),
            dir,
            store,
            peppers,
        }
    }
}

/// A keygate replica with its keys in the Redis at `redis_url` (`timeout`: the request
/// path's `redis.timeout`), plus `settings` (extra TOML tables, e.g. a `[limits]` with
/// `backend = "redis"`): several of these on one Redis are replicas of one deployment.
pub async fn replica(upstream: &Upstream, redis_url: &str, timeout: &str, settings: &str) -> Keygate {
    Keygate::builder(&upstream.url()).redis_keys(redis_url, timeout).settings(settings).start().await
}

// ---------------------------------------------------------------------------------------
// Files and logs

/// Writes `contents` to a temporary file next to `path` and renames it over `path`, as
/// editors and config-management tools do (the watchers must see a new inode).
pub fn rename_over(path: &Path, contents: impl AsRef<[u8]>) {
    let name = path.file_name().expect("a file path").to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.swp"));
    std::fs::write(&temp, contents).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Counts the times anyone opens one file, from inotify events on its directory: how a
/// test sees that a watcher's poll (which reads the file and may do nothing else
/// observable) has run. Start it after the test's own reads.
pub struct FileReads {
    opens: Arc<std::sync::atomic::AtomicUsize>,
    _watcher: notify::RecommendedWatcher,
}

impl FileReads {
    pub fn watch(path: &Path) -> FileReads {
        use notify::event::{AccessKind, EventKind};
        use notify::Watcher;
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = opens.clone();
        let name = path.file_name().expect("a file path").to_os_string();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let ours = event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()));
            if ours && matches!(event.kind, EventKind::Access(AccessKind::Open(_))) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .expect("an inotify watcher");
        let directory = path.parent().expect("a file in a directory");
        watcher.watch(directory, notify::RecursiveMode::NonRecursive).expect("watch the directory");
        FileReads { opens, _watcher: watcher }
    }

    /// Opens seen since `watch`.
    pub fn count(&self) -> usize {
        self.opens.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Every access line (target `access`) among JSON log lines, whole (with `timestamp`,
/// `level`, `target`, `fields`). Every line must be JSON.
pub fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .filter(|v| v["target"] == "access")
        .collect()
}

// ---------------------------------------------------------------------------------------
// Client

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn error_type(&self) -> String {
        self.json()["error"]["type"].as_str().unwrap_or_default().to_string()
    }

    pub fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_string()
    }
}

/// A small HTTP client over hyper, HTTP/1.1 by default.
#[derive(Clone)]
pub struct Http {
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        Http { client }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http();
        Http { client }
    }

    pub async fn get(&self, url: &str, key: Option<&str>) -> Answer {
        let mut headers = vec![];
        let bearer;
        if let Some(key) = key {
            bearer = format!("Bearer {key}");
            headers.push(("authorization", bearer.as_str()));
        }
        self.send("GET", url, &headers, Bytes::new()).await
    }

    pub async fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body).boxed()).unwrap();
        self.request(request).await
    }

    pub async fn request(&self, request: Request<TestBody>) -> Answer {
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("response within 20 s")
            .expect("request sent");
        read(response).await
    }
}

/// One HTTP/1.1 connection kept open: all its requests reach the same keygate worker
/// thread (a connection stays on the worker it was given at accept).
pub struct KeptConnection {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl KeptConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to keygate");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        tokio::spawn(connection);
        KeptConnection { sender }
    }

    /// `GET path` with the bearer `key`, on this connection.
    pub async fn get(&mut self, path: &str, key: &str) -> Answer {
        let request = Request::builder()
            .uri(path)
            .header("host", "keygate")
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
        self.sender.ready().await.expect("the connection is still open");
        let response = tokio::time::timeout(Duration::from_secs(20), self.sender.send_request(request))
            .await
            .expect("response within 20 s")
            .expect("request sent");
        read(response).await
    }
}

pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body read");
    let trailers = collected.trailers().cloned();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body: collected.to_bytes(), trailers }
}

/// Sends raw bytes on a new connection and returns everything that came back until the
/// server closed it. Fails loudly if the server has not closed the connection within
/// `wait` (a test that needs a kept-alive connection reads it itself), showing what came.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            // A reset after the answer (the server closed with unread request bytes).
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            Ok(Err(e)) => panic!("reading the raw answer failed: {e}; got so far: {}", String::from_utf8_lossy(&out)),
            Err(_) => panic!(
                "the server did not close the connection within {wait:?}; got so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The admin listener's `/metrics` text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let answer = Http::new().get(&format!("http://{admin}/metrics"), None).await;
    assert_eq!(answer.status, 200);
    answer.text()
}

/// The value of one sample in Prometheus text, e.g.
/// `metric(&text, "keygate_auth_decisions_total", &[("result","ok"),("mode","enforce")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            return None;
        }
        let present: HashMap<&str, &str> =
            label_text.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
        labels.iter().all(|(k, v)| present.get(k) == Some(v)).then(|| value.parse().ok())?
    })
}

/// The keygate binary built by cargo for integration tests.
pub fn keygate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keygate")
}

/// Runs the CLI against `config` and returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(keygate_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("KEYGATE_PEPPER")
        .output()
        .expect("run keygate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// TLS

/// A self-signed ECDSA certificate for localhost / 127.0.0.1 in `dir` (tls.crt, tls.key),
/// made with the `openssl` command line.
pub fn tls_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let config = dir.join("openssl.cnf");
    std::fs::write(
        &config,
        "[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = localhost\n[leaf]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .arg("-config")
        .arg(&config)
        .args(["-extensions", "leaf"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command line (Debian package openssl)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// A TLS client connection to `addr` trusting `cert`, offering `alpn`; returns the stream
/// and the negotiated protocol.
pub async fn tls_connect(
    addr: SocketAddr,
    cert: &Path,
    alpn: &[&[u8]],
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Option<Vec<u8>>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (stream, negotiated)
}

/// Sends one request over an established TLS stream with HTTP/2 (if `h2`) or HTTP/1.1.
pub async fn send_over<IO>(io: IO, h2: bool, request: Request<TestBody>) -> Answer
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    read(response).await
}

/// Waits until the server closes `stream` (EOF or reset), up to `deadline`; returns how
/// long that took, or None if it stayed open.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// The access lines (JSON) the in-process keygates of this test binary log, through a
/// subscriber installed on first use (one per binary: each test binary is a process).
pub fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("access=info")
            .with_writer(move || LogSink(sink.clone()))
            .try_init();
        logs
    })
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
