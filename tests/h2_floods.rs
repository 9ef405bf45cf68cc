//! HTTP/2 attacks against the real binary over h2c, each driven hard for a bounded amount
//! of work with the raw frame writer of `support::h2_frames`: keygate refuses or closes,
//! forwards nothing malformed, spends bounded CPU (utime + stime of its process) and
//! memory (RSS) on it, and a fresh connection is served normally afterwards.
//!
//! The CPU and memory bounds are generous (about ten times what a debug build uses on a
//! loaded 2-core machine): they exist to catch work or memory that grows with the attack,
//! not to time keygate.

mod support;

use std::time::Duration;

use support::h2_frames::*;
use support::process::{cpu_time, rss_kib, Served};
use support::*;

/// Short timeouts, so that a connection the watchdog must close is closed within seconds.
const TIMEOUTS: &str = "[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"3s\"\nbody_timeout = \"3s\"\n";

/// The most CPU any one attack may cost keygate.
const CPU_BOUND: Duration = Duration::from_secs(8);
/// The most keygate's RSS may grow during any one attack.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// keygate as a child process before an attack, with the recording upstream behind it.
struct Target {
    served: Served,
    upstream: Upstream,
    _dir: tempfile::TempDir,
    cpu_before: Duration,
    rss_before: u64,
}

impl Target {
    async fn start() -> Target {
        let upstream = upstream().await;
        let dir = Keygate::builder(&upstream.url()).settings(TIMEOUTS).write();
        let served = Served::start(&dir.path().join("keygate.toml"), "warn").await;
        // One ordinary request first, so that the baseline includes what serving costs once.
        assert_eq!(Http::h2c().get(&served.url("/status"), None).await.status, 200);
        let seen = upstream.count();
        assert_eq!(seen, 1);
        let pid = served.pid();
        Target { served, upstream, _dir: dir, cpu_before: cpu_time(pid), rss_before: rss_kib(pid) }
    }

    /// The attack's cost so far: CPU time and RSS growth (KiB), checked against the bounds.
    fn check_cost(&self, attack: &str) {
        let pid = self.served.pid();
        let cpu = cpu_time(pid).saturating_sub(self.cpu_before);
        let rss = rss_kib(pid).saturating_sub(self.rss_before);
        println!("{attack}: keygate used {cpu:?} of CPU, RSS +{rss} KiB");
        assert!(cpu < CPU_BOUND, "{attack}: keygate used {cpu:?} of CPU");
        assert!(rss < RSS_BOUND_KIB, "{attack}: keygate's RSS grew by {rss} KiB");
    }

    /// A normal request on a fresh connection still succeeds, and the upstream has seen
    /// only that one and the first.
    async fn still_serves(&self, forwarded_by_attack: usize) {
        assert_eq!(Http::h2c().get(&self.served.url("/status"), None).await.status, 200);
        assert_eq!(self.upstream.count(), 2 + forwarded_by_attack, "{:?}", self.upstream.seen());
    }
}

/// Waits until keygate has sent GOAWAY or closed `conn` (up to `deadline`).
async fn closed_or_goaway(conn: &H2Conn, deadline: Duration) -> bool {
    conn.wait(deadline, |r| r.closed || r.goaway().is_some()).await
}

/// A distinct HPACK field of about 30 bytes (name and value literals).
fn filler(i: usize) -> Block {
    Block::new().literal(format!("x-filler-{i}").as_bytes(), b"0123456789abcdef")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_with_goaway() {
    let target = Target::start().await;
    let mut conn = H2Conn::open(target.served.proxy, &[]).await;
    let first = request("GET", "/status", &[]);
    assert!(conn.send(&headers(1, first.bytes(), 0)).await);
    // 100,000 CONTINUATION frames, never END_HEADERS: each adds a field to the list.
    let mut sent = 0;
    'flood: for batch in 0..1000 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            bytes.extend_from_slice(&continuation(1, filler(batch * 100 + i).bytes(), 0));
        }
        if !conn.send(&bytes).await {
            break 'flood;
        }
        sent += 100;
    }
    assert!(closed_or_goaway(&conn, Duration::from_secs(20)).await, "still open after {sent} CONTINUATION frames");
    if let Some(code) = conn.seen(|r| r.goaway().and_then(Frame::error_code)) {
        assert!(matches!(code, ENHANCE_YOUR_CALM | PROTOCOL_ERROR | COMPRESSION_ERROR), "GOAWAY {code:#x}");
    }
    println!("continuation flood: keygate stopped it after {sent} frames sent");
    target.check_cost("CONTINUATION flood");
    target.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_dynamic_table_bomb_is_refused_and_never_forwarded() {
    let target = Target::start().await;
    let mut conn = H2Conn::open(target.served.proxy, &[]).await;
    // One ~4 KB entry in keygate's decoder table (the default 4,096-byte table holds it),
    // then each one-byte reference to it (index 62) decodes to 4 KB: 10,000 of them in a
    // 10 KB header block are 40 MB of header list, on each of 100 streams.
    let big = "b".repeat(4000);
    let mut bytes = Vec::new();
    for stream in 0..100u32 {
        let id = 2 * stream + 1;
        let mut block = request("GET", "/status", &[]);
        if stream == 0 {
            block = block.indexing(b"x-bomb", big.as_bytes());
        }
        for _ in 0..10_000 {
            block = block.indexed(62);
        }
        // HEADERS up to 16 KiB (the default max frame size), then CONTINUATION frames.
        let chunks: Vec<&[u8]> = block.bytes().chunks(16_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let end = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
            let frame = if i == 0 { headers(id, chunk, end | END_STREAM) } else { continuation(id, chunk, end) };
            bytes.extend_from_slice(&frame);
        }
    }
    let _ = conn.send(&bytes).await;
    let answered = conn
        .wait(Duration::from_secs(20), |r| {
            r.closed || r.goaway().is_some() || r.resets().len() + r.statuses().len() >= 100
        })
        .await;
    assert!(answered, "keygate neither refused every stream nor closed: {:?}", conn.seen(|r| r.frames.clone()));
    for (stream, status) in conn.seen(|r| r.statuses()) {
        assert_eq!(status, 431, "stream {stream} got {status}");
    }
    target.check_cost("HPACK bomb");
    target.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_table_size_update_beyond_the_advertised_size_is_a_compression_error() {
    let target = Target::start().await;
    let mut conn = H2Conn::open(target.served.proxy, &[(SETTINGS_HEADER_TABLE_SIZE, u32::MAX)]).await;
    let block = Block::new().size_update(1 << 30).indexed(2).indexed(6).indexed(4).literal(b":authority", b"k");
    let _ = conn.send(&headers(1, block.bytes(), END_HEADERS | END_STREAM)).await;
    assert!(closed_or_goaway(&conn, Duration::from_secs(20)).await, "a 1 GiB table size update was accepted");
    if let Some(code) = conn.seen(|r| r.goaway().and_then(Frame::error_code)) {
        assert!(matches!(code, COMPRESSION_ERROR | PROTOCOL_ERROR), "GOAWAY {code:#x}");
    }
    target.check_cost("table size update");
    target.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_cost_little_and_never_keep_a_connection_open() {
    let target = Target::start().await;
    for (what, frame) in
        [("SETTINGS", settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)])), ("PING", ping(*b"flooding"))]
    {
        // Before any request: 100,000 frames, then the connection is closed within
        // header_read_timeout of its opening, flood or not.
        let mut conn = H2Conn::open(target.served.proxy, &[]).await;
        let mut sent = 0;
        for _ in 0..1000 {
            if !conn.send(&frame.repeat(100)).await {
                break;
            }
            sent += 100;
        }
        assert!(conn.wait(Duration::from_secs(20), |r| r.closed).await, "{what} flood: still open");
        println!("{what} flood before a request: {sent} frames sent before the close");

        // After a request: frames that carry no request do not keep the connection from
        // idle_timeout (3 s). Sent for up to 30 s, 1,000 every 50 ms.
        let mut conn = H2Conn::open(target.served.proxy, &[]).await;
        let block = request("GET", "/status", &[]);
        assert!(conn.send(&headers(1, block.bytes(), END_HEADERS | END_STREAM)).await);
        assert!(conn.wait(Duration::from_secs(20), |r| r.statuses() == [(1, 200)]).await, "the request was answered");
        let started = std::time::Instant::now();
        while !conn.closed() && started.elapsed() < Duration::from_secs(30) {
            let _ = conn.send(&frame.repeat(1000)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lasted = started.elapsed();
        assert!(conn.closed(), "{what}s kept an idle connection open for {lasted:?}");
        assert!(lasted >= Duration::from_millis(2500), "{what}: closed before idle_timeout: {lasted:?}");
    }
    target.check_cost("SETTINGS and PING floods");
    target.still_serves(2).await;
}

/// A malformed request: method, `:path`, extra fields.
type Malformed = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_never_forwarded_and_a_storm_of_them_ends_the_connection() {
    let target = Target::start().await;
    let cases: [Malformed; 9] = [
        ("GET", "v1/calls", &[]),
        ("GET", "*", &[]),
        ("GET", "", &[]),
        ("GET", "/status", &[("X-Upper", "1")]),
        ("GET", "/status", &[("connection", "keep-alive")]),
        ("GET", "/status", &[("transfer-encoding", "chunked")]),
        ("GET", "/status", &[("keep-alive", "timeout=5")]),
        ("GET", "/status", &[("upgrade", "h2c")]),
        ("GET", "/status", &[("te", "gzip")]),
    ];
    // One connection per case: each is refused (RST_STREAM, a 4xx, or GOAWAY).
    for (method, path, extra) in cases {
        let mut conn = H2Conn::open(target.served.proxy, &[]).await;
        let block = request(method, path, extra);
        assert!(conn.send(&headers(1, block.bytes(), END_HEADERS | END_STREAM)).await);
        let refused = conn
            .wait(Duration::from_secs(20), |r| {
                r.closed || r.goaway().is_some() || !r.resets().is_empty() || !r.statuses().is_empty()
            })
            .await;
        assert!(refused, "{path:?} {extra:?}: no answer");
        let statuses = conn.seen(|r| r.statuses());
        println!(
            "{path:?} {extra:?}: statuses {statuses:?} resets {:?} goaway {:?}",
            conn.seen(|r| r.resets()),
            conn.seen(|r| r.goaway().and_then(Frame::error_code))
        );
        assert!(statuses.iter().all(|(_, s)| (400..500).contains(s)), "{path:?} {extra:?}: {statuses:?}");
    }
    // 10,000 malformed streams on one connection: keygate ends the connection rather than
    // resetting streams forever.
    let mut conn = H2Conn::open(target.served.proxy, &[]).await;
    let block = request("GET", "/status", &[("connection", "keep-alive")]);
    let mut sent = 0;
    for batch in 0..100u32 {
        let bytes: Vec<u8> = (0..100u32)
            .flat_map(|i| headers(2 * (batch * 100 + i) + 1, block.bytes(), END_HEADERS | END_STREAM))
            .collect();
        if !conn.send(&bytes).await {
            break;
        }
        sent += 100;
    }
    assert!(closed_or_goaway(&conn, Duration::from_secs(20)).await, "{sent} malformed streams and still open");
    let resets = conn.seen(|r| r.resets().len());
    println!("malformed storm: {sent} streams sent, {resets} reset before the end");
    assert!(resets < 5_000, "{resets} streams reset before the connection ended");
    if let Some(code) = conn.seen(|r| r.goaway().and_then(Frame::error_code)) {
        assert_eq!(code, ENHANCE_YOUR_CALM);
    }
    target.check_cost("malformed requests");
    target.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_storm_is_cut_off_and_reaches_the_upstream_at_most_briefly() {
    let target = Target::start().await;
    let mut conn = H2Conn::open(target.served.proxy, &[]).await;
    let block = request("GET", "/status", &[]);
    // 10,000 streams, each opened and reset at once.
    let mut sent = 0;
    for batch in 0..100u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let id = 2 * (batch * 100 + i) + 1;
            bytes.extend_from_slice(&headers(id, block.bytes(), END_HEADERS | END_STREAM));
            bytes.extend_from_slice(&rst_stream(id, CANCEL));
        }
        if !conn.send(&bytes).await {
            break;
        }
        sent += 100;
    }
    assert!(closed_or_goaway(&conn, Duration::from_secs(20)).await, "{sent} reset streams and still open");
    if let Some(code) = conn.seen(|r| r.goaway().and_then(Frame::error_code)) {
        assert_eq!(code, ENHANCE_YOUR_CALM);
    }
    let forwarded = target.upstream.count() - 1;
    println!("rapid reset: {sent} streams sent, {forwarded} reached the upstream");
    assert!(forwarded < 1_000, "{forwarded} reset streams were forwarded");
    target.check_cost("rapid reset");
    // Every forwarded one is a well-formed GET /status.
    assert!(target.upstream.seen().iter().all(|s| s.method == "GET" && s.target == "/status"));
    assert_eq!(Http::h2c().get(&target.served.url("/status"), None).await.status, 200);
}
