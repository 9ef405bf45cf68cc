//! The gap [`super::FreshReads`] closes, reproduced without timing luck: keygate's own
//! upstream client on a single-threaded runtime (as each worker runs), surplus bytes
//! that reach the kernel while the runtime is not polling its I/O driver, and the next
//! request sent before the driver has run again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

use crate::body;
use crate::policy::{Upstream, UpstreamProtocol};
use crate::upstream::pool::{UpstreamClient, Upstreams};

const SECRET: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\nSECRET-OF-ANOTHER-CLIENT";

/// Reads one request head (the tests' requests have no body): false once the stream ends.
/// Shared with the HTTP/1.1 pool's tests.
pub(in crate::upstream) fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Answers every further request on `stream` with `clean c<connection>`.
fn answer_clean(mut stream: TcpStream, connection: usize) {
    while read_head(&mut stream) {
        let body = format!("clean c{connection}");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Bytes waiting in the receive queue of the established TCP connection from local port
/// `local` to remote port `remote` (from /proc/net/tcp), or None if there is none.
fn receive_queue(local: u16, remote: u16) -> Option<usize> {
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let ours = port(cols.get(1)?)? == local && port(cols.get(2)?)? == remote && *cols.get(3)? == "01";
        if !ours {
            return None;
        }
        usize::from_str_radix(cols.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

async fn get(client: &UpstreamClient, path: &str) -> Bytes {
    let UpstreamClient::Http1(pool) = client else { panic!("an HTTP/1.1 upstream") };
    let request = Request::get(path).header("host", "upstream").body(body::empty()).unwrap();
    let (response, lease) = tokio::time::timeout(Duration::from_secs(10), pool.send(request))
        .await
        .expect("a response head within 10 s")
        .expect("a response");
    pool.keep(lease);
    response.into_body().collect().await.expect("the whole body").to_bytes()
}

fn one_round() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, go_seen) = mpsc::channel::<()>();
    let (written, written_seen) = mpsc::channel::<u16>();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::spawn(move || {
        // Connection 0: one answer exactly as long as declared; more bytes when told.
        let (mut first, peer) = listener.accept().unwrap();
        assert!(read_head(&mut first));
        first.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        go_seen.recv().unwrap();
        first.write_all(SECRET).unwrap();
        written.send(peer.port()).unwrap();
        std::thread::spawn(move || answer_clean(first, 0));
        for connection in 1.. {
            let (stream, _) = listener.accept().unwrap();
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            std::thread::spawn(move || answer_clean(stream, connection));
        }
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = runtime.block_on(async {
        let upstreams = Upstreams::new(0);
        let upstream = Upstream {
            name: "app".into(),
            protocol: UpstreamProtocol::Http1,
            authority: addr.to_string().parse().unwrap(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_connections: 256,
            queue_timeout: Duration::from_secs(5),
        };
        let client = upstreams.client(&upstream);
        assert_eq!(get(&client, "/a").await, "hello");
        // Let the connection go back to the pool (each yield lets the driver run once).
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        // From here until the next request is written, this thread never lets the
        // runtime poll its driver: it blocks while the surplus is written, and until the
        // kernel holds it on the client's socket.
        go.send(()).unwrap();
        let port = written_seen.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while receive_queue(port, addr.port()).unwrap_or(0) < SECRET.len() {
            assert!(Instant::now() < deadline, "the surplus did not reach the client socket within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        get(&client, "/b").await
    });
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "clean c1",
        "the next request must get its own answer, on a new connection"
    );
}

#[test]
fn surplus_bytes_the_driver_has_not_seen_yet_are_never_the_next_response() {
    // Each round is deterministic; a few make a stray driver poll irrelevant.
    for _ in 0..5 {
        one_round();
    }
}
