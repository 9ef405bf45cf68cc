//! `keygate serve` as a child process: the real binary, its output captured, its ports
//! found from /proc (whatever the log level), stopped with SIGTERM. Also the other
//! probes of /proc that let a test wait for an event it cannot otherwise see (a TCP
//! connection opened, a lock waited for).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use super::{eventually, keygate_bin, Http};

/// The request id of the probe that tells the proxy port from the admin port (tests that
/// read access lines skip it).
pub const PROBE: &str = "probe";

/// A running `keygate serve`.
pub struct Served {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn capture(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

impl Served {
    /// Starts `keygate serve --config CONFIG` with `RUST_LOG=rust_log` and waits until it
    /// listens on its proxy and admin ports.
    pub async fn start(config: &Path, rust_log: &str) -> Served {
        let mut child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env_remove("KEYGATE_PEPPER")
            .env_remove("KEYGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keygate serve");
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        let pid = child.id();
        let mut ports = Vec::new();
        let listening = eventually(Duration::from_secs(20), async || {
            ports = listening_ports(pid);
            ports.len() >= 2
        })
        .await;
        assert!(listening, "keygate serve did not start listening");
        let (proxy, admin) = identify(&ports).await;
        Served { child, proxy, admin, stdout: Some(stdout), stderr: Some(stderr) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (without blocking the runtime, whose client connections must be
    /// able to close) for the exit, up to 10 s.
    pub async fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let child = &mut self.child;
        let exited = eventually(Duration::from_secs(10), async || matches!(child.try_wait(), Ok(Some(_)))).await;
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        assert!(exited, "keygate did not exit within 10 s of SIGTERM");
        status
    }

    /// SIGTERM, a clean exit (0), and everything it wrote: (stdout, stderr).
    pub async fn stop(mut self) -> (String, String) {
        let status = self.terminate().await;
        assert!(status.success(), "keygate did not exit 0 on SIGTERM: {status:?}");
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (stdout, stderr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Of a keygate's listening ports, (proxy, admin): the admin port answers
/// `/healthz` with `ok`, the proxy with a 404 (no route); an admin API port, if any,
/// with a 401.
async fn identify(ports: &[u16]) -> (SocketAddr, SocketAddr) {
    let http = Http::new();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (mut proxy, mut admin) = (None, None);
    for &port in ports {
        let probe =
            http.send("GET", &format!("http://{}/healthz", addr(port)), &[("x-request-id", PROBE)], Bytes::new()).await;
        match probe.status {
            200 if probe.text() == "ok\n" => admin = Some(addr(port)),
            404 => proxy = Some(addr(port)),
            _ => {}
        }
    }
    match (proxy, admin) {
        (Some(proxy), Some(admin)) => (proxy, admin),
        _ => panic!("no proxy and admin ports among {ports:?}"),
    }
}

/// The TCP ports a process listens on, from its socket fds and /proc/net/tcp{,6}.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                if let Some(port) = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resident memory now (VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time a process has used so far, user and system (utime + stime of
/// /proc/<pid>/stat, in clock ticks of `getconf CLK_TCK`, usually 10 ms).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: the fields after it follow its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .expect("getconf CLK_TCK");
    Duration::from_millis(ticks * 1000 / per_second)
}

/// How many TCP connections on this host are established to 127.0.0.1:`port` (the
/// client ends, from /proc/net/tcp): a connection a client opens shows up here even
/// while the server is stopped (SIGSTOP), since the kernel completes the handshake.
pub fn established_to(port: u16) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
    text.lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3
                && cols[3] == "01"
                && cols[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
        })
        .count()
}

/// How many `flock` requests are blocked waiting on `path`'s lock (the `->` entries of
/// /proc/locks for its inode).
pub fn flock_waiters(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).unwrap().ino();
    let suffix = format!(":{inode}");
    let Ok(text) = std::fs::read_to_string("/proc/locks") else { return 0 };
    text.lines()
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.get(1) == Some(&"->")
                && cols.get(2) == Some(&"FLOCK")
                && cols.get(6).is_some_and(|d| d.ends_with(&suffix))
        })
        .count()
}

/// Sends `kill -NAME pid` and fails loudly if it cannot (no `kill` installed: CI installs
/// procps; the process gone). Tests that signal a process must know the signal arrived.
pub fn signal(pid: u32, name: &str) {
    let status = match Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status() {
        Ok(status) => status,
        Err(e) => panic!("cannot run `kill` (install procps): {e}"),
    };
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

/// `keygate serve --config CONFIG` with `RUST_LOG=info` and no pepper or Redis password
/// from the environment, its JSON log lines (stdout) collected as they come, for tests
/// that wait for what it logs; killed when dropped.
pub struct LoggedServe {
    pub child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LoggedServe {
    pub fn spawn(config: &Path) -> LoggedServe {
        use std::io::BufRead;
        let mut child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("KEYGATE_PEPPER")
            .env_remove("KEYGATE_REDIS_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keygate serve");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        LoggedServe { child, lines }
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
