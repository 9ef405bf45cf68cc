//! The access log (SPEC 6): the real binary, `keygate serve`, writes one JSON line per
//! request on stdout (target `access`) with time, request id, method, route prefix,
//! status, decision, key id, tenant, upstream, duration and body bytes in and out; the
//! line comes once the response body is sent, so streamed bodies are counted too.
//! `RUST_LOG` sets the level: at `warn` there are no access lines.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The request id of the probe that tells the proxy port from the admin port.
const PROBE: &str = "probe";

/// `keygate serve` on `config` as a child process, its stdout captured.
struct Served {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    proxy: String,
}

impl Served {
    async fn start(config: &Path, rust_log: &str) -> Served {
        let mut child = Command::new(keygate_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let ports = wait_for_listening_ports(child.id()).await;
        assert_eq!(ports.len(), 2, "proxy and admin ports: {ports:?}");
        let proxy = proxy_of(&ports).await;
        Served { child, stdout: Some(reader), proxy }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// SIGTERM, a clean exit, and everything it wrote on stdout.
    async fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let child = &mut self.child;
        let exited = eventually(Duration::from_secs(10), async || matches!(child.try_wait(), Ok(Some(_)))).await;
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().unwrap();
        assert!(exited && status.success(), "keygate did not exit 0 on SIGTERM: {status:?}");
        self.stdout.take().unwrap().join().unwrap()
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

/// Every access line in `stdout`, whole (with `timestamp`, `level`, `target`, `fields`).
fn access_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .filter(|v| v["target"] == "access")
        .collect()
}

#[tokio::test]
async fn one_access_line_per_request_with_every_field_and_the_bytes() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (writer_id, writer) = kg.key("acme", "pro", &["calls:read", "calls:write"]);
    let (reader_id, reader) = kg.key("globex", "unlimited", &["calls:read"]);
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;
    let began = OffsetDateTime::now_utc();
    let served = Served::start(&config, "info").await;

    let http = Http::new();
    let write_bearer = format!("Bearer {}", writer.expose());
    let read_bearer = format!("Bearer {}", reader.expose());
    let mut answers = HashMap::new();

    // 1000 bytes up, the upstream's 2-byte `ok` down.
    let body = Bytes::from(vec![b'x'; 1000]);
    let answer = http
        .send(
            "POST",
            &served.url("/v1/calls/private-path-abc?q=1"),
            &[("authorization", &write_bearer), ("x-request-id", "al-post")],
            body,
        )
        .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
    assert_eq!(upstream.last().body_len, 1000);
    answers.insert("al-post", answer);

    // A chunked request body of unknown length, counted as it streams.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
        (0..3).map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 500])))).collect();
    let request = Request::builder()
        .method("POST")
        .uri(served.url("/v1/upload"))
        .header("authorization", &write_bearer)
        .header("x-request-id", "al-chunked")
        .body(StreamBody::new(tokio_stream::iter(chunks)).boxed())
        .unwrap();
    let answer = http.request(request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last().body_len, 1500);
    answers.insert("al-chunked", answer);

    // A streamed response (data frame, then trailers), and a slow one, over h2c.
    let h2 = Http::h2c();
    let answer = h2
        .send(
            "GET",
            &served.url("/trailers"),
            &[("authorization", &read_bearer), ("x-request-id", "al-h2")],
            Bytes::new(),
        )
        .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "body"));
    answers.insert("al-h2", answer);
    let answer = http
        .send(
            "GET",
            &served.url("/slow/300"),
            &[("authorization", &read_bearer), ("x-request-id", "al-slow")],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 200);
    answers.insert("al-slow", answer);

    // Refusals: no key (401), a key without the scope (403), no route (404).
    let answer = http.send("GET", &served.url("/v1/calls"), &[("x-request-id", "al-401")], Bytes::new()).await;
    assert_eq!(answer.status, 401);
    answers.insert("al-401", answer);
    let answer = http
        .send(
            "POST",
            &served.url("/v1/calls"),
            &[("authorization", &read_bearer), ("x-request-id", "al-403")],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, 403);
    answers.insert("al-403", answer);
    let answer = http.send("GET", &served.url("/nowhere/at-all"), &[("x-request-id", "al-404")], Bytes::new()).await;
    assert_eq!(answer.status, 404);
    answers.insert("al-404", answer);

    // A client that gives up while keygate waits for the upstream: logged as 499.
    let seen_before = upstream.count();
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&served.proxy).await.unwrap();
        let head = format!(
            "GET /slow/900 HTTP/1.1\r\nHost: x\r\n{}: {read_bearer}\r\nx-request-id: al-gone\r\n\r\n",
            "Authorization"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        assert!(eventually(Duration::from_secs(3), async || upstream.count() > seen_before).await);
    }

    drop((http, h2));
    let stdout = served.stop().await;
    let ended = OffsetDateTime::now_utc();
    let lines = access_lines(&stdout);

    // Exactly one line per request, and no others.
    let mut by_id: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for line in &lines {
        let id = line["fields"]["request_id"].as_str().unwrap_or_else(|| panic!("no request_id: {line}"));
        by_id.entry(id.to_string()).or_default().push(line);
    }
    let gone = by_id.remove("al-gone").unwrap_or_default();
    assert_eq!(gone.len(), 1, "{lines:#?}");
    let f = &gone[0]["fields"];
    assert_eq!((f["status"].as_u64(), f["complete"].as_bool()), (Some(499), Some(false)), "{f}");
    assert_eq!((f["route"].as_str(), f["decision"].as_str()), (Some("/slow"), Some("ok")), "{f}");
    assert!(f["duration_ms"].as_f64().unwrap() < 800.0, "logged when the client left: {f}");
    if let Some(probe) = by_id.remove(PROBE) {
        assert_eq!(probe.len(), 1, "the port probe: {probe:?}");
        assert_eq!(probe[0]["fields"]["status"], 404);
    }
    assert_eq!(by_id.len(), answers.len(), "{lines:#?}");
    for (id, answer) in &answers {
        let found = by_id.get(*id).map_or(0, Vec::len);
        assert_eq!(found, 1, "access lines for {id}: {lines:#?}");
        let line = by_id[*id][0];
        assert_eq!(line["level"], "INFO");
        let at = OffsetDateTime::parse(line["timestamp"].as_str().unwrap(), &Rfc3339).unwrap();
        assert!(began <= at && at <= ended, "the line's time {at} is within the test");
        let f = &line["fields"];
        assert_eq!(f["status"], answer.status, "{id}: {f}");
        assert_eq!(f["bytes_out"], answer.body.len() as u64, "{id}: bytes_out is the body sent: {f}");
        assert_eq!(f["complete"], true, "{id}: {f}");
        let duration = f["duration_ms"].as_f64().unwrap_or_else(|| panic!("{id}: duration_ms: {f}"));
        assert!((0.0..10_000.0).contains(&duration), "{id}: {duration}");
    }
    let field = |id: &str| by_id[id][0]["fields"].clone();

    let f = field("al-post");
    assert_eq!(f["method"], "POST");
    assert_eq!(f["route"], "/v1/calls", "the prefix, never the path");
    assert_eq!(f["decision"], "ok");
    assert_eq!(f["mode"], "enforce");
    assert_eq!(f["key_id"], writer_id.as_str());
    assert_eq!(f["tenant"], "acme");
    assert_eq!(f["upstream"], "app");
    assert_eq!(f["bytes_in"], 1000);
    assert_eq!(f["bytes_out"], 2);

    let f = field("al-chunked");
    assert_eq!(
        (f["route"].as_str(), f["bytes_in"].as_u64(), f["bytes_out"].as_u64()),
        (Some("/v1/upload"), Some(1500), Some(2))
    );

    let f = field("al-h2");
    assert_eq!((f["method"].as_str(), f["route"].as_str()), (Some("GET"), Some("/trailers")));
    assert_eq!((f["key_id"].as_str(), f["tenant"].as_str()), (Some(reader_id.as_str()), Some("globex")));
    assert_eq!((f["bytes_in"].as_u64(), f["bytes_out"].as_u64()), (Some(0), Some(4)));

    let f = field("al-slow");
    assert!(f["duration_ms"].as_f64().unwrap() >= 300.0, "the duration covers the upstream's wait: {f}");

    let f = field("al-401");
    assert_eq!(f["decision"], "missing");
    assert_eq!(f["route"], "/v1/calls");
    assert_eq!(f["upstream"], "app");
    assert!(f.get("key_id").is_none() && f.get("tenant").is_none(), "no key, no id: {f}");
    assert_eq!(f["bytes_in"], 0);
    assert!(f["bytes_out"].as_u64().unwrap() > 50, "the JSON error body: {f}");

    let f = field("al-403");
    assert_eq!(f["decision"], "forbidden");
    assert_eq!((f["key_id"].as_str(), f["tenant"].as_str()), (Some(reader_id.as_str()), Some("globex")));

    let f = field("al-404");
    assert_eq!((f["route"].as_str(), f["decision"].as_str()), (Some("none"), Some("not_found")));
    assert!(f.get("upstream").is_none(), "{f}");

    // Never a key, never a raw path.
    let access_text: String = lines.iter().map(|l| l.to_string()).collect();
    for secret in [writer.expose(), reader.expose()] {
        assert!(!stdout.contains(&secret[8..]), "a key in the logs");
    }
    for path in ["private-path-abc", "q=1", "at-all", "/slow/300"] {
        assert!(!access_text.contains(path), "the raw path {path:?} in an access line");
    }
}

#[tokio::test]
async fn rust_log_warn_suppresses_access_lines() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (_, key) = kg.key("acme", "pro", &["calls:read"]);
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;
    let served = Served::start(&config, "warn").await;
    let http = Http::new();
    assert_eq!(http.get(&served.url("/v1/calls"), Some(key.expose())).await.status, 200);
    assert_eq!(http.get(&served.url("/v1/calls"), None).await.status, 401);
    drop(http);
    let stdout = served.stop().await;
    assert!(access_lines(&stdout).is_empty(), "{stdout}");
    assert!(!stdout.contains("\"access\""), "{stdout}");
}

/// The TCP ports a process listens on, from /proc/net/tcp and its fd links.
async fn wait_for_listening_ports(pid: u32) -> Vec<u16> {
    let mut ports = Vec::new();
    assert!(
        eventually(Duration::from_secs(20), async || {
            ports = listening_ports(pid);
            ports.len() >= 2
        })
        .await,
        "keygate did not start listening"
    );
    ports
}

fn listening_ports(pid: u32) -> Vec<u16> {
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

/// The proxy's address: the port that does not answer /healthz with `ok` (the admin one
/// does). If the probe hits the proxy, its access line has the request id `probe`.
async fn proxy_of(ports: &[u16]) -> String {
    let http = Http::new();
    let first = format!("127.0.0.1:{}", ports[0]);
    let second = format!("127.0.0.1:{}", ports[1]);
    let probe = http.send("GET", &format!("http://{first}/healthz"), &[("x-request-id", PROBE)], Bytes::new()).await;
    if probe.text() == "ok\n" {
        second
    } else {
        first
    }
}
