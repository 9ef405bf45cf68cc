//! Clients that read their responses slowly or not at all, against the real binary and an
//! upstream that streams 1 GiB as fast as it is read: keygate buffers a small, bounded
//! amount per download (README, "Protective limits"), gives the memory back when the
//! clients go, and closes a client that makes no progress for `body_timeout`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::h2_frames::{self, H2Conn};
use support::process::{rss_kib, Served};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The response every download gets: 1 GiB.
const BODY_BYTES: u64 = 1 << 30;
/// The upstream writes it in chunks of this size, all views of one static buffer (the test
/// process never holds more than one chunk per connection).
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// An upstream that answers every request with [`BODY_BYTES`] of zeros, streamed as fast as
/// keygate takes them; it counts the bytes handed to hyper and the downloads begun.
struct BigUpstream {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
    requests: Arc<AtomicUsize>,
}

async fn big_upstream() -> BigUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (counter, begun) = (sent.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (counter, begun) = (counter.clone(), begun.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    begun.fetch_add(1, Ordering::SeqCst);
                    let counter = counter.clone();
                    let chunks = (0..BODY_BYTES / CHUNK as u64).map(move |_| {
                        counter.fetch_add(CHUNK as u64, Ordering::Relaxed);
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS)))
                    });
                    let body = StreamBody::new(tokio_stream::iter(chunks));
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder().header("content-length", BODY_BYTES.to_string()).body(body).unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    BigUpstream { addr, sent, requests }
}

/// The test policy plus a public `/big` route to `upstream`, whose connections and
/// response headers may take 20 s: 200 downloads start at once, beside an upstream in
/// this test process that is busy streaming, and on a loaded machine some of the 200
/// connects took longer than the test policy's 1 s `connect_timeout` (seen as 502s with
/// "tcp connect error: deadline has elapsed" in keygate's log).
fn routes(upstream: SocketAddr) -> String {
    let routes = ROUTES
        .replace("{upstream}", &format!("http://{upstream}"))
        .replace("timeout = \"1s\"\nconnect_timeout = \"1s\"", "timeout = \"20s\"\nconnect_timeout = \"20s\"");
    assert!(routes.contains("connect_timeout = \"20s\""));
    routes + "\n[[routes]]\nprefix = \"/big\"\nauth = \"none\"\nupstream = \"app\"\n"
}

/// The real binary with `settings` (whole TOML tables), on `upstream`.
async fn serve(upstream: SocketAddr, settings: &str) -> (Served, tempfile::TempDir) {
    let url = format!("http://{upstream}");
    let dir = Keygate::builder(&url).routes(&routes(upstream)).settings(settings).write();
    let served = Served::start(&dir.path().join("keygate.toml"), "warn").await;
    (served, dir)
}

/// Opens a download of `/big` over HTTP/1.1 and reads until the response head has arrived
/// (and whatever body came with it); returns the stream, never read again by the caller
/// unless it wants to.
async fn start_download(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: keygate.test\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("a response head within 30 s")
            .unwrap();
        assert!(n > 0, "keygate closed before the response head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Waits until the upstream has stopped sending (the same count twice, 500 ms apart):
/// every buffer between it and the stalled clients is full.
async fn upstream_settles(upstream: &BigUpstream) -> u64 {
    let mut last = u64::MAX;
    let settled = eventually(Duration::from_secs(60), async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = upstream.sent.load(Ordering::Relaxed);
        std::mem::replace(&mut last, now) == now
    })
    .await;
    assert!(settled, "the upstream kept sending for 60 s to clients that read nothing");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_stalled_downloads_cost_little_memory_and_give_it_back() {
    let upstream = big_upstream().await;
    let (served, _dir) = serve(upstream.addr, "").await;
    let pid = served.pid();
    // A few downloads first, so that the baseline includes what any download allocates
    // once (thread caches, the upstream pool's first connections).
    let warm: Vec<TcpStream> = futures_join(served.proxy, 4).await;
    upstream_settles(&upstream).await;
    drop(warm);
    assert!(eventually(Duration::from_secs(20), async || open_connections(&served).await == 0.0).await);
    let baseline = rss_kib(pid);

    let stalled = futures_join(served.proxy, 200).await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 204);
    upstream_settles(&upstream).await;
    let during = rss_kib(pid);
    let per_download = during.saturating_sub(baseline) / 200;
    println!("baseline {baseline} KiB, with 200 stalled downloads {during} KiB: {per_download} KiB each");

    drop(stalled);
    assert!(eventually(Duration::from_secs(20), async || open_connections(&served).await == 0.0).await);
    let mut after = 0;
    let returned = eventually(Duration::from_secs(20), async || {
        after = rss_kib(pid);
        after < baseline + 8 * 1024
    })
    .await;
    println!("after they closed: {after} KiB");
    // About 80 KiB each when measured (hyper's default read-ahead made it about 1 MiB).
    assert!(per_download < 128, "{per_download} KiB per stalled download");
    assert!(returned, "RSS {after} KiB once the clients closed, baseline {baseline} KiB");
}

/// `count` downloads opened concurrently, each up to its response head.
async fn futures_join(proxy: SocketAddr, count: usize) -> Vec<TcpStream> {
    let tasks: Vec<_> = (0..count).map(|_| tokio::spawn(start_download(proxy))).collect();
    let mut streams = Vec::with_capacity(count);
    for task in tasks {
        streams.push(task.await.unwrap());
    }
    streams
}

/// keygate's open proxy connections, from its metrics.
async fn open_connections(served: &Served) -> f64 {
    let text = metrics_text(served.admin).await;
    metric(&text, "keygate_connections_active", &[]).expect("keygate_connections_active")
}

/// A download nobody reads is closed after `body_timeout`; one read at 1 KiB/s costs
/// keygate little memory. (Whether the slow one counts as progress is the kernel's call:
/// on loopback, whose segments are 64 KiB, TCP reopens the window only once that much
/// was read, so keygate may see no byte move for a minute and close it too.) The two are
/// tried one after the other, so that the close the test waits for is the stalled one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_closed_after_body_timeout_and_a_slow_reader_costs_little() {
    let upstream = big_upstream().await;
    let (served, _dir) = serve(upstream.addr, "[server]\nbody_timeout = \"2s\"\n").await;
    let pid = served.pid();

    // Nobody reads: closed after body_timeout.
    let mut stalled = start_download(served.proxy).await;
    upstream_settles(&upstream).await;
    let started = Instant::now();
    let closed = eventually(Duration::from_secs(30), async || open_connections(&served).await == 0.0).await;
    let took = started.elapsed();
    assert!(closed, "the stalled download was not closed within 30 s");
    assert!(took < Duration::from_secs(15), "closed after {took:?}");
    // What the kernel already holds for the stalled client reads out, then EOF.
    let mut sink = vec![0u8; 1 << 16];
    let eof = tokio::time::timeout(Duration::from_secs(20), async {
        while stalled.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    assert!(eof.is_ok(), "the stalled download's connection is still open");

    // A reader at 1 KiB a second, in its own task, until told to stop or closed.
    let mut slow = start_download(served.proxy).await;
    upstream_settles(&upstream).await;
    let baseline = rss_kib(pid);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let mut read = 0u64;
        loop {
            let more = tokio::select! {
                _ = &mut stopped => break,
                n = slow.read(&mut buf) => n.unwrap_or(0),
            };
            if more == 0 {
                return (read, false);
            }
            read += more as u64;
            // The client is slow on purpose: this is its reading rate, not a wait.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (read, true)
    });
    // A few seconds of slow reading (pacing: no verdict waits on this).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = rss_kib(pid).saturating_sub(baseline);
    let _ = stop.send(());
    let (read, _open) = reader.await.unwrap();
    println!("slow reader read {read} bytes; keygate RSS +{more} KiB");
    assert!(read >= 1024, "the slow reader read {read} bytes");
    assert!(more < 8 * 1024, "keygate's RSS grew by {more} KiB with one slow reader");
}

/// HTTP/2 clients that let nothing through: 100 streams (the most one connection may
/// open) with a zero flow-control window, and 100 with the largest window on a connection
/// whose socket is never read, each asking for 1 GiB. keygate buffers a bounded amount per
/// stream, and closes both connections after `body_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_downloads_are_bounded_per_stream_and_closed_after_body_timeout() {
    let upstream = big_upstream().await;
    let (served, _dir) = serve(upstream.addr, "[server]\nbody_timeout = \"10s\"\n").await;
    let pid = served.pid();
    let baseline = rss_kib(pid);
    let block = h2_frames::request("GET", "/big", &[]);
    let streams: Vec<u8> = (0..100u32)
        .flat_map(|i| h2_frames::headers(2 * i + 1, block.bytes(), h2_frames::END_HEADERS | h2_frames::END_STREAM))
        .collect();
    let mut zero = H2Conn::open(served.proxy, &[(h2_frames::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    assert!(zero.send(&streams).await);
    let answered = zero.wait(Duration::from_secs(30), |r| r.statuses().len() == 100).await;
    assert!(answered, "{:?}", zero.seen(|r| r.statuses()));
    assert!(zero.seen(|r| r.statuses().iter().all(|&(_, s)| s == 200)));
    let max = (1u32 << 31) - 1;
    let mut unread = H2Conn::open(served.proxy, &[(h2_frames::SETTINGS_INITIAL_WINDOW_SIZE, max)]).await;
    unread.stop_reading();
    assert!(unread.send(&[h2_frames::window_update(0, max - 65_535), streams].concat()).await);
    let all = eventually(Duration::from_secs(30), async || upstream.requests.load(Ordering::SeqCst) == 200).await;
    assert!(all, "{} of 200 downloads reached the upstream", upstream.requests.load(Ordering::SeqCst));
    upstream_settles(&upstream).await;
    let grown = rss_kib(pid).saturating_sub(baseline);
    println!("200 stalled HTTP/2 streams: keygate RSS +{grown} KiB ({} KiB each)", grown / 200);
    assert!(grown / 200 < 128, "{} KiB per stalled HTTP/2 stream", grown / 200);
    assert_eq!(zero.seen(|r| r.data_bytes), 0, "data past a zero window");
    let closed = eventually(Duration::from_secs(40), async || open_connections(&served).await == 0.0).await;
    assert!(closed, "stalled HTTP/2 connections still open 40 s after body_timeout (10 s) began");
    assert!(zero.closed(), "the zero-window connection is still open");
}
