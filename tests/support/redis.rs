//! Redis test servers: a real `redis-server` per test on a free port, in its own temporary
//! folder, so tests can pause, kill and restart it without touching any other Redis (in
//! particular never the one that may run on 127.0.0.1:6379). Also a three-master Redis
//! Cluster and a TCP relay that counts the commands clients send (round trips, not what
//! Lua scripts run inside — `INFO commandstats` counts those too).
//!
//! Readiness is polled with a deadline, never slept for. A missing `redis-server` is a
//! loud panic: these tests never skip. [`client`] connects keygate's own Redis client to
//! one of these servers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eventually_blocking;

/// `[redis]` settings for `url` with the request-path `timeout` (no password file, no CA).
pub fn redis_settings(url: &str, timeout: Duration) -> keygate::settings::Redis {
    keygate::settings::Redis { url: url.to_string(), password_file: None, ca_file: None, timeout }
}

/// keygate's shared Redis client on `url` (`timeout` per call), and the metrics it
/// reports into. Connecting never fails for a server that is down (it reconnects in the
/// background); it fails for invalid settings.
pub async fn client(
    url: &str,
    timeout: Duration,
) -> (keygate::redis_client::RedisClient, Arc<keygate::metrics::Metrics>) {
    let metrics = Arc::new(keygate::metrics::Metrics::new());
    let client = keygate::redis_client::RedisClient::connect(&redis_settings(url, timeout), metrics.clone())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    (client, metrics)
}

/// How long a server gets to answer after it was spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a cluster gets to agree that it is `cluster_state:ok`.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(20);

const NOT_INSTALLED: &str = "`redis-server` (and `redis-cli`) must be on PATH for the Redis tests, which never skip: \
     install them (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`)";

/// One `redis-server` child process on its own port and folder.
pub struct RedisServer {
    pub port: u16,
    /// Extra arguments it was started with (kept for `restart`).
    args: Vec<String>,
    /// `--requirepass`, if any: `cli` authenticates with it.
    password: Option<String>,
    cluster: bool,
    /// With `start_tls`: the TLS port (the plain `port` stays open too).
    tls_port: Option<u16>,
    child: Option<Child>,
    paused: AtomicBool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A fresh, empty server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A fresh server with extra `redis-server` arguments, e.g. `["--maxmemory", "1mb"]`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::spawn_on_free_port(args.iter().map(|a| a.to_string()).collect(), None, false)
    }

    /// A fresh server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::spawn_on_free_port(vec!["--requirepass".into(), password.into()], Some(password.to_string()), false)
    }

    /// A fresh server that also listens with TLS on `tls_port()`, with a certificate for
    /// IP 127.0.0.1 issued by a private CA (`tls_ca()`), made with the `openssl` tool.
    /// Clients need no certificate. The plain `port` stays open for `cli` and readiness.
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::Builder::new().prefix("keygate-redis-").tempdir().expect("create a temp dir for redis");
        make_certificates(dir.path());
        Self::spawn_in(dir, Vec::new(), None, false, true)
    }

    /// A calendar quota's count (`n` of the hash at `key`), 0 if it has none.
    pub fn quota_count(&self, key: &str) -> u64 {
        self.cli(&["HGET", key, "n"]).trim().parse().unwrap_or(0)
    }

    /// The TLS port, for `start_tls` servers.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The PEM file of the CA that issued the server's certificate (`start_tls`).
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls_port.map(|_| self.dir.path().join("ca.pem"))
    }

    fn spawn_on_free_port(args: Vec<String>, password: Option<String>, cluster: bool) -> RedisServer {
        let dir = tempfile::Builder::new().prefix("keygate-redis-").tempdir().expect("create a temp dir for redis");
        Self::spawn_in(dir, args, password, cluster, false)
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        args: Vec<String>,
        password: Option<String>,
        cluster: bool,
        tls: bool,
    ) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            args,
            password,
            cluster,
            tls_port: None,
            child: None,
            paused: AtomicBool::new(false),
            dir,
        };
        for _attempt in 0..20 {
            server.port = free_port(cluster);
            if tls {
                server.tls_port = Some(free_port(false));
            }
            match server.spawn() {
                Ok(()) => return server,
                Err(Clash) => continue,
            }
        }
        panic!("could not start redis-server on a free port after 20 attempts (every port clashed)");
    }

    /// Spawns on `self.port` and waits until it answers as this very process.
    fn spawn(&mut self) -> Result<(), Clash> {
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path).expect("create the redis log file");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ]);
        }
        if let Some(tls_port) = self.tls_port {
            let file = |name: &str| self.dir.path().join(name);
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(file("server.pem"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(file("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        command.args(&self.args);
        let log_err = log.try_clone().expect("clone the redis log file handle");
        command.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
            Err(e) => panic!("cannot spawn redis-server: {e}. {NOT_INSTALLED}"),
        };
        let pid = child.id();
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);
        // Until it answers as this very process (the pid is checked, so that another
        // server that took the port in a race is never mistaken for this one) or exits.
        let mut exited = None;
        let answered = eventually_blocking(READY_DEADLINE, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                exited = Some(status);
                return true;
            }
            info_field(self.port, self.password.as_deref(), "process_id").as_deref() == Some(&pid.to_string())
        });
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = exited {
            self.child = None;
            let log = log();
            if log.contains("Address already in use") || log.contains("Could not create server TCP listening") {
                return Err(Clash);
            }
            panic!("redis-server on port {} exited at start ({status}); its log:\n{log}", self.port);
        }
        if !answered {
            let log = log();
            self.kill();
            panic!("redis-server on port {} did not answer within {READY_DEADLINE:?}; its log:\n{log}", self.port);
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// `redis://127.0.0.1:PORT` (no password in it, even with `start_with_password`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the port still accepts connections (the kernel's backlog) but nothing
    /// answers — a blackhole, as a stalled server or a partition looks to a client.
    pub fn pause(&self) {
        self.signal("STOP");
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("CONT");
        self.paused.store(false, Ordering::SeqCst);
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("redis-server is not running");
        super::process::signal(pid, name);
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused.swap(false, Ordering::SeqCst) {
                super::process::signal(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port (kills the current one first if it
    /// still runs). Waits briefly if the port is still taken.
    pub fn restart(&mut self) {
        self.kill();
        let spawned = eventually_blocking(READY_DEADLINE, || self.spawn().is_ok());
        assert!(spawned, "port {} stayed taken for {READY_DEADLINE:?}; cannot restart redis", self.port);
    }

    /// Runs `redis-cli -p PORT args…` (authenticated if the server has a password) and
    /// returns its stdout. Fails loudly when the command fails: cannot connect, or an error
    /// reply (`-e` makes redis-cli exit non-zero for those).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.arg("-e");
        command.args(["-h", "127.0.0.1", "-p"]).arg(self.port.to_string());
        if let Some(password) = &self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        if self.cluster {
            command.arg("-c");
        }
        let output = match command.args(args).stdin(Stdio::null()).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "redis-cli {args:?} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `ca.pem`, `server.pem` (IP SAN 127.0.0.1) and `server.key` into `dir` with the
/// `openssl` tool.
fn make_certificates(dir: &std::path::Path) {
    // `clientAuth` too: a TLS cluster's nodes present it to each other on the bus.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write server.ext");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=keygate test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let output = match Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output() {
            Ok(output) => output,
            Err(e) => panic!("the TLS Redis tests need the `openssl` tool on PATH (apt-get install openssl): {e}"),
        };
        assert!(
            output.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The port was taken between choosing it and redis-server binding it.
struct Clash;

/// A port that was free a moment ago. For cluster nodes, below 55536 with port+10000
/// (the cluster bus) free too.
fn free_port(cluster: bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !cluster {
            return port;
        }
        if port < 55536 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port found (below 55536 with a free +10000 bus port)");
}

/// One field of `INFO server` from the server on `port`, over a raw connection with
/// short timeouts (so that a port taken by something else never hangs the harness).
fn info_field(port: u16, password: Option<&str>, field: &str) -> Option<String> {
    let reply = raw_command(port, password, &["INFO", "server"])?;
    let text = String::from_utf8_lossy(&reply);
    text.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// Sends one command (after AUTH if needed) and returns the last reply's raw bytes.
fn raw_command(port: u16, password: Option<&str>, args: &[&str]) -> Option<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut out = Vec::new();
    let mut expected = 1;
    if let Some(password) = password {
        out.extend(encode(&["AUTH", password]));
        expected += 1;
    }
    out.extend(encode(args));
    stream.write_all(&out).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut pos = 0;
        let mut replies = 0;
        while let Some(len) = resp_len(&buf[pos..]) {
            replies += 1;
            if replies == expected {
                return Some(buf[pos..pos + len].to_vec());
            }
            pos += len;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).into_bytes());
        out.extend(arg.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

/// The length of the first complete RESP value (RESP2 or RESP3) in `buf`, or of one
/// inline command line; `None` if `buf` does not hold a whole one yet.
fn resp_len(buf: &[u8]) -> Option<usize> {
    let line_end = |from: usize| buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p);
    let first = *buf.first()?;
    let end = line_end(0)?;
    let header = std::str::from_utf8(&buf[1..end]).ok();
    let after = end + 2;
    match first {
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => Some(after),
        b'$' | b'!' | b'=' => {
            let len: i64 = header?.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let total = after + len as usize + 2;
            (buf.len() >= total).then_some(total)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count: i64 = header?.parse().ok()?;
            let items = if first == b'%' || first == b'|' { count * 2 } else { count };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos += resp_len(&buf[pos..])?;
            }
            Some(pos)
        }
        // An inline command (`PING\r\n`), as telnet or old clients send.
        _ => Some(after),
    }
}

// ---------------------------------------------------------------------------------------
// Cluster

/// Three cluster masters (no replicas), slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::spawn_on_free_port(Vec::new(), None, true)).collect();
        Self::form(nodes)
    }

    /// Three masters that also listen with TLS (`tls-port`, one test CA for all, the
    /// cluster bus over TLS too): a client connected over TLS is told the nodes' TLS
    /// ports. The cluster is formed over the plain ports.
    pub fn start_tls() -> RedisCluster {
        let certificates = tempfile::Builder::new().prefix("keygate-redis-ca-").tempdir().expect("a temp dir");
        make_certificates(certificates.path());
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::Builder::new().prefix("keygate-redis-").tempdir().expect("a temp dir for redis");
                for name in ["ca.pem", "server.pem", "server.key"] {
                    std::fs::copy(certificates.path().join(name), dir.path().join(name)).expect("copy a certificate");
                }
                RedisServer::spawn_in(dir, vec!["--tls-cluster".into(), "yes".into()], None, true, true)
            })
            .collect();
        Self::form(nodes)
    }

    /// `rediss+cluster://127.0.0.1:t1,…` (the TLS ports), for `start_tls` clusters.
    pub fn tls_url(&self) -> String {
        let hosts: Vec<String> =
            self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.tls_port.expect("a start_tls cluster"))).collect();
        format!("rediss+cluster://{}", hosts.join(","))
    }

    /// Assigns the slots over `nodes` and waits until the cluster is ok.
    fn form(nodes: Vec<RedisServer>) -> RedisCluster {
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}. {NOT_INSTALLED}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        let ok = eventually_blocking(CLUSTER_DEADLINE, || {
            cluster.nodes.iter().all(|n| {
                raw_command(n.port, None, &["CLUSTER", "INFO"])
                    .is_some_and(|r| String::from_utf8_lossy(&r).contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the cluster did not reach cluster_state:ok within {CLUSTER_DEADLINE:?}");
        cluster
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

// ---------------------------------------------------------------------------------------
// Counting relay

/// A TCP relay in front of a Redis server that counts the commands clients send through
/// it: every RESP array (or inline command) from client to server is one, pipelined
/// commands each count, and an EVAL counts once however many commands its script runs.
pub struct CountingRelay {
    pub addr: SocketAddr,
    count: Arc<AtomicU64>,
    /// Of `count`, the PINGs (the invalidation subscription's keep-alive, once a second)
    /// and the usage writer's commands (its `MULTI`, `EXEC` and `kg:us:` writes, once a
    /// second at most): background traffic, not what requests cost.
    pings: Arc<AtomicU64>,
    /// One flag per connection relayed so far: set, that connection goes silent.
    silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    /// Listens on 127.0.0.1:0 and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> CountingRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay addr");
        let count = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let counter = (count.clone(), pings.clone());
        let silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let connections = silenced.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let counter = counter.clone();
                let silent = Arc::new(AtomicBool::new(false));
                connections.lock().unwrap().push(silent.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    relay(client, server, counter, silent).await;
                });
            }
        });
        CountingRelay { addr, count, pings, silenced, accept }
    }

    /// Every connection relayed so far goes silent, like a peer that vanished without a
    /// reset: it stays open and forwards nothing more either way. Connections made
    /// afterwards are relayed as usual.
    pub fn silence_existing(&self) {
        for silent in self.silenced.lock().unwrap().iter() {
            silent.store(true, Ordering::SeqCst);
        }
    }

    /// `redis://` + the relay's address.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Commands seen since start or the last `reset`.
    pub fn commands(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Commands seen other than PING and the usage writer's: what requests cost, whatever
    /// the keep-alives and the usage flushes did meanwhile (a loaded machine may fire
    /// several late PINGs at once).
    pub fn commands_but_pings(&self) -> u64 {
        self.commands() - self.pings.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.pings.store(0, Ordering::SeqCst);
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `read` to `write` chunk by chunk, showing each chunk to `inspect` first, until
/// either side ends (then shuts `write` down). Once `silent` is set it holds both halves
/// open and forwards nothing more, for good.
async fn forward(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    mut inspect: impl FnMut(&[u8]),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 16384];
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        inspect(&chunk[..n]);
        if write.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// A command of keygate's usage writer: `MULTI`, `EXEC`, or one naming a `kg:us:` key.
fn is_usage_write(command: &[u8]) -> bool {
    command.eq_ignore_ascii_case(b"*1\r\n$5\r\nMULTI\r\n")
        || command.eq_ignore_ascii_case(b"*1\r\n$4\r\nEXEC\r\n")
        || command.windows(6).any(|w| w == b"kg:us:")
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    (count, pings): (Arc<AtomicU64>, Arc<AtomicU64>),
    silent: Arc<AtomicBool>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut pending: Vec<u8> = Vec::new();
    // Counts before forwarding, so a reply can never be seen before its command was
    // counted.
    let upstream = forward(client_read, server_write, silent.clone(), move |chunk| {
        pending.extend_from_slice(chunk);
        let mut consumed = 0;
        while let Some(len) = resp_len(&pending[consumed..]) {
            let command = &pending[consumed..consumed + len];
            if command.eq_ignore_ascii_case(b"*1\r\n$4\r\nPING\r\n")
                || command.eq_ignore_ascii_case(b"PING\r\n")
                || is_usage_write(command)
            {
                pings.fetch_add(1, Ordering::SeqCst);
            }
            consumed += len;
            count.fetch_add(1, Ordering::SeqCst);
        }
        pending.drain(..consumed);
    });
    let downstream = forward(server_read, client_write, silent, |_| {});
    tokio::join!(upstream, downstream);
}

/// Waits (up to 10 s) until no replica holds leased units, then a little longer for the
/// hand-back calls, which run in tasks of their own, to land.
pub async fn leases_returned(replicas: &[keygate::ratelimit::redis::RedisLimiter]) {
    let held = || replicas.iter().map(|r| r.leased_units()).sum::<u64>();
    let returned = super::eventually(Duration::from_secs(10), async || held() == 0).await;
    assert!(returned, "leases still held");
    tokio::time::sleep(Duration::from_millis(300)).await;
}
