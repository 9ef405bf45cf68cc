//! The fast path against real TCP upstreams on ephemeral ports: each guarantee of the
//! module doc, checked by which upstream connection served a request and which ones
//! keygate closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::AsyncWrite;

use std::pin::Pin;
use std::task::{Context, Waker};

use super::wire::MAX_HEADERS;
use super::*;
use crate::upstream::http1::Http1Pool;
use crate::upstream::idle::IDLE_SWEEPS;
use crate::upstream::response_check::MAX_INTERIM;

/// What a scripted upstream does with one request.
#[derive(Clone)]
enum Reply {
    /// Writes these bytes and reads the next request.
    Write(Vec<u8>),
    /// Writes these bytes, then closes the connection.
    WriteClose(Vec<u8>),
    /// Writes these bytes, waits until the test says go, writes the second ones, and
    /// reads on.
    WriteLater(Vec<u8>, Vec<u8>),
    /// Closes without answering.
    Close,
    /// Never answers (reads until keygate closes).
    Silent,
}

/// A request head the upstream read, and the connection it came on.
type Received = (usize, Vec<u8>);

/// A raw upstream: connection `c`'s request `r` gets `script(c, r)`. It records every
/// request head, the connections it accepted and those keygate closed.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<Received>>>,
    closed: mpsc::Receiver<usize>,
    go: mpsc::Sender<()>,
}

/// An answer with a `Content-Length`.
fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The clean answer connection `c` gives to its request `r` unless scripted otherwise.
fn clean(c: usize, r: usize) -> Reply {
    Reply::Write(ok(&format!("c{c} r{r}")))
}

/// Reads one request head, byte by byte (the fast path's requests have no body).
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

impl Upstream {
    fn start(script: impl Fn(usize, usize) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (closes, closed) = mpsc::channel();
        let (go, went) = mpsc::channel::<()>();
        let went = Arc::new(Mutex::new(went));
        let script = Arc::new(script);
        let (counted, recorded) = (accepted.clone(), heads.clone());
        std::thread::spawn(move || loop {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let c = counted.fetch_add(1, Ordering::SeqCst);
            let (script, recorded, closes, went) = (script.clone(), recorded.clone(), closes.clone(), went.clone());
            std::thread::spawn(move || {
                for r in 0.. {
                    let Some(head) = read_head(&mut stream) else {
                        let _ = closes.send(c);
                        return;
                    };
                    recorded.lock().unwrap().push((c, head));
                    match script(c, r) {
                        Reply::Write(bytes) => drop(stream.write_all(&bytes)),
                        Reply::WriteClose(bytes) => {
                            let _ = stream.write_all(&bytes);
                            return;
                        }
                        Reply::WriteLater(first, then) => {
                            let _ = stream.write_all(&first);
                            let _ = went.lock().unwrap().recv();
                            let _ = stream.write_all(&then);
                        }
                        Reply::Close => return,
                        Reply::Silent => {
                            let mut sink = [0u8; 64];
                            while matches!(stream.read(&mut sink), Ok(1..)) {}
                            let _ = closes.send(c);
                            return;
                        }
                    }
                }
            });
        });
        Upstream { addr, accepted, heads, closed, go }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The connection that read the request with this path.
    fn served(&self, path: &str) -> usize {
        let line = format!("GET {path} ");
        let heads = self.heads.lock().unwrap();
        heads.iter().find(|(_, head)| head.starts_with(line.as_bytes())).map(|(c, _)| *c).expect("the request arrived")
    }

    /// The next connection keygate closed (waiting at most 10 s).
    async fn next_closed(&self) -> Option<usize> {
        for _ in 0..1000 {
            if let Ok(c) = self.closed.try_recv() {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

fn connector() -> Connector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Connector::new(connector)
}

fn pool(upstream: &Upstream) -> Arc<FastPool> {
    FastPool::new(&upstream.addr.to_string().parse().unwrap(), connector())
}

async fn request(pool: &Arc<FastPool>, method: Method, path: &str) -> Result<Response<FastBody>, Failure> {
    pool.exchange(&method, path, &HeaderMap::new(), None, Duration::from_secs(10)).await
}

/// `GET path`, the whole body as text (or the body's error).
async fn get(pool: &Arc<FastPool>, path: &str) -> Result<String, String> {
    let response = request(pool, Method::GET, path).await.map_err(|e| format!("{e:?}"))?;
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

#[tokio::test]
async fn the_last_returned_connection_is_reused_and_only_once_its_body_ended() {
    // Chunked, so that a body is not over until it is read.
    let upstream = Upstream::start(|c, r| {
        let body = format!("c{c} r{r}");
        let chunked =
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
        Reply::Write(chunked.into_bytes())
    });
    let pool = pool(&upstream);
    let first = request(&pool, Method::GET, "/a").await.unwrap();
    // The first body is still unread: its connection is not free.
    let second = request(&pool, Method::GET, "/b").await.unwrap();
    assert_eq!((upstream.served("/a"), upstream.served("/b")), (0, 1));
    assert_eq!(pool.idle_count(), 0);
    // Connection 1 ends first, then connection 0: 0 was returned last.
    assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "c1 r0");
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "c0 r0");
    assert_eq!(pool.idle_count(), 2);
    assert_eq!(get(&pool, "/c").await.unwrap(), "c0 r1", "last in, first out");
    assert_eq!(get(&pool, "/d").await.unwrap(), "c0 r2");
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn the_upstream_slot_is_held_until_the_streamed_body_is_done() {
    let upstream = Upstream::start(|c, r| {
        let chunked = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nc{c} r{r}\r\n");
        Reply::WriteLater(chunked.into_bytes(), b"0\r\n\r\n".to_vec())
    });
    let pool = pool(&upstream);
    let slots = crate::upstream::limit::Slots::new(1);
    let permit = slots.acquire(Duration::from_secs(1)).await.unwrap();
    let response = request(&pool, Method::GET, "/a").await.unwrap();
    // What the pipeline does with the body and the slot.
    let mut body = crate::body::Holding::new(response.into_body(), permit);
    assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "c0 r0");
    assert_eq!(slots.in_use(), 1, "held while the body streams");
    assert!(slots.acquire(Duration::from_millis(50)).await.is_none(), "busy");
    upstream.go.send(()).unwrap();
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    assert_eq!(pool.idle_count(), 1, "back once the body ended");
    drop(body);
    assert_eq!(slots.in_use(), 0);
}

#[tokio::test]
async fn a_response_that_does_not_allow_reuse_costs_its_connection() {
    let cases: [(&str, Vec<u8>, &str); 7] = [
        (
            "Connection: close",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "ok",
        ),
        ("HTTP/1.0", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok".to_vec(), "ok"),
        (
            "a repeated Content-Length (doubtful)",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "ok",
        ),
        (
            "bytes beyond the body",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok{}", String::from_utf8(ok("SECRET")).unwrap())
                .into_bytes(),
            "ok",
        ),
        ("bytes after a 204", b"HTTP/1.1 204 No Content\r\nContent-Length: 6\r\n\r\nSECRET".to_vec(), ""),
        (
            "bytes after the last chunk",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nSECRET".to_vec(),
            "ok",
        ),
        ("an answer framed by the connection's end", b"HTTP/1.1 200 OK\r\n\r\nok".to_vec(), "ok"),
    ];
    for (name, reply, body) in cases {
        let close_delimited = name.contains("connection's end");
        let upstream = Upstream::start(move |c, r| match (c, r) {
            (0, 0) if close_delimited => Reply::WriteClose(reply.clone()),
            (0, 0) => Reply::Write(reply.clone()),
            _ => clean(c, r),
        });
        let pool = pool(&upstream);
        assert_eq!(get(&pool, "/first").await.as_deref(), Ok(body), "{name}");
        assert_eq!(pool.idle_count(), 0, "{name}: not put back");
        assert_eq!(get(&pool, "/next").await.as_deref(), Ok("c1 r0"), "{name}: the next request on a new connection");
        if !close_delimited {
            assert_eq!(upstream.next_closed().await, Some(0), "{name}: keygate closed the connection");
        }
    }
}

#[tokio::test]
async fn responses_that_allow_reuse_keep_their_connection() {
    let cases: [(&str, Method, Vec<u8>, &str); 6] = [
        ("Content-Length", Method::GET, ok("hello"), "hello"),
        ("empty", Method::GET, ok(""), ""),
        (
            "chunked, with extensions",
            Method::GET,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2 ; x\r\nlo\r\n0\r\n\r\n".to_vec(),
            "hello",
        ),
        (
            "HEAD, with a length it does not send",
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n".to_vec(),
            "",
        ),
        ("304", Method::GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\n\r\n".to_vec(), ""),
        (
            "interim responses first",
            Method::GET,
            [&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"[..], &ok("hi")].concat(),
            "hi",
        ),
    ];
    for (name, method, reply, body) in cases {
        let upstream =
            Upstream::start(move |c, r| if (c, r) == (0, 0) { Reply::Write(reply.clone()) } else { clean(c, r) });
        let pool = pool(&upstream);
        let response = request(&pool, method, "/first").await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let got = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, body.as_bytes(), "{name}");
        assert_eq!(
            get(&pool, "/next").await.as_deref(),
            Ok("c0 r1"),
            "{name}: the next request on the same connection"
        );
    }
}

#[tokio::test]
async fn bytes_or_the_end_waiting_on_an_idle_connection_mean_another_connection() {
    // The upstream closes connection 0 once idle; then connection 1 gets bytes no request
    // asked for.
    let upstream = Upstream::start(|c, r| match (c, r) {
        (0, 0) => Reply::WriteClose(ok("c0 r0")),
        (1, 0) => Reply::WriteLater(ok("c1 r0"), ok("SECRET")),
        _ => clean(c, r),
    });
    let pool = pool(&upstream);
    assert_eq!(get(&pool, "/a").await.unwrap(), "c0 r0");
    assert_eq!(pool.idle_count(), 1);
    // Let the close reach this socket (the runtime is not told: the check asks the kernel).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&pool, "/b").await.unwrap(), "c1 r0", "not written on the closed connection");
    upstream.go.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&pool, "/c").await.unwrap(), "c2 r0", "the surplus is never an answer");
    assert_eq!(upstream.next_closed().await, Some(1));
}

#[tokio::test]
async fn a_written_request_is_never_sent_again_nor_one_on_a_new_connection() {
    // A new connection that closes without answering.
    let upstream = Upstream::start(|_, _| Reply::Close);
    let fresh = pool(&upstream);
    assert!(matches!(get(&fresh, "/a").await, Err(e) if e.starts_with("Failed")));
    assert_eq!(upstream.accepted(), 1, "not retried from a new connection");
    // A reused connection that reads the request, then closes without answering.
    let upstream = Upstream::start(|c, r| if r == 0 { clean(c, r) } else { Reply::Close });
    let reused = pool(&upstream);
    assert_eq!(get(&reused, "/a").await.unwrap(), "c0 r0");
    assert!(get(&reused, "/b").await.is_err());
    assert_eq!(upstream.accepted(), 1, "written, so not sent again");
}

#[tokio::test]
async fn a_request_whose_write_fails_on_a_reused_connection_is_sent_once_more() {
    // Each connection answers its first request (chunked: not over until read), then
    // neither reads nor closes.
    let upstream = || {
        Upstream::start(|c, r| {
            let chunked = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nc{c} r{r}\r\n0\r\n\r\n");
            Reply::WriteLater(chunked.into_bytes(), Vec::new())
        })
    };
    // Idle connections that take no request any more, and whose reads do not say so.
    let unwritable = |pool: &FastPool| {
        let mut cx = Context::from_waker(Waker::noop());
        pool.idle.for_each(|conn| assert!(Pin::new(&mut conn.io).poll_shutdown(&mut cx).is_ready()));
    };
    // One: the request goes on a new connection.
    let one = upstream();
    let single = pool(&one);
    assert_eq!(get(&single, "/a").await.unwrap(), "c0 r0");
    unwritable(&single);
    assert_eq!(get(&single, "/b").await.unwrap(), "c1 r0", "sent again, on a new connection");
    assert_eq!(one.accepted(), 2);
    // Two: sent again once, on the other, and not a third time.
    let two = upstream();
    let both = pool(&two);
    let (a, b) = (request(&both, Method::GET, "/a").await.unwrap(), request(&both, Method::GET, "/b").await.unwrap());
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    assert_eq!(both.idle_count(), 2);
    unwritable(&both);
    assert!(get(&both, "/c").await.is_err());
    assert_eq!(two.accepted(), 2, "no third attempt");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_sweeps() {
    let upstream = Upstream::start(clean);
    let pool = pool(&upstream);
    assert_eq!(get(&pool, "/a").await.unwrap(), "c0 r0");
    for sweep in 1..=IDLE_SWEEPS + 1 {
        pool.sweep_now();
        assert_eq!(pool.idle_count(), usize::from(sweep <= IDLE_SWEEPS), "after {sweep} sweeps");
    }
    assert_eq!(upstream.next_closed().await, Some(0));
}

#[tokio::test]
async fn response_heads_past_the_limits_or_malformed_are_refused_and_their_connection_closed() {
    let header = |len: usize| format!("X-Big: {}\r\n", "a".repeat(len));
    let near = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok", header(BUF_SIZE - 100));
    let storm =
        "HTTP/1.1 102 Processing\r\n\r\n".repeat(MAX_INTERIM + 1) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let accepted = [near, "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok".to_string()];
    for reply in accepted {
        let upstream = Upstream::start(move |_, _| Reply::Write(reply.clone().into_bytes()));
        assert_eq!(get(&pool(&upstream), "/a").await.as_deref(), Ok("ok"));
    }
    let refused = [
        format!("HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok", header(BUF_SIZE)),
        format!("HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok", "X: y\r\n".repeat(MAX_HEADERS + 1)),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_string(),
        storm,
        "HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_string(),
        "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok".to_string(),
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok".to_string(),
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_string(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok".to_string(),
        "HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok".to_string(),
    ];
    for reply in refused {
        let shown = reply.chars().take(60).collect::<String>();
        let upstream = Upstream::start(move |_, _| Reply::Write(reply.clone().into_bytes()));
        let pool = pool(&upstream);
        let got = request(&pool, Method::GET, "/a").await;
        assert!(matches!(got, Err(Failure::Failed(_))), "{shown:?}: {:?}", got.map(|r| r.status()));
        assert_eq!(upstream.next_closed().await, Some(0), "{shown:?}: closed");
        assert_eq!(pool.idle_count(), 0);
    }
}

#[tokio::test]
async fn an_unusual_reason_phrase_is_kept_and_the_usual_one_is_not_stored() {
    let upstream = Upstream::start(|c, r| match r {
        0 => Reply::Write(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n".to_vec()),
        _ => clean(c, r),
    });
    let pool = pool(&upstream);
    let unusual = request(&pool, Method::GET, "/a").await.unwrap();
    let reason = unusual.extensions().get::<hyper::ext::ReasonPhrase>().expect("kept");
    assert_eq!(reason.as_bytes(), b"Fine Thanks");
    let usual = request(&pool, Method::GET, "/b").await.unwrap();
    assert!(usual.extensions().get::<hyper::ext::ReasonPhrase>().is_none());
}

#[tokio::test]
async fn a_connection_keep_alive_is_not_kept_but_one_naming_other_headers_is() {
    let upstream = Upstream::start(|c, r| match r {
        0 => Reply::Write(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n".to_vec()),
        1 => Reply::Write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-trace\r\nX-Trace: 1\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        _ => clean(c, r),
    });
    let pool = pool(&upstream);
    let plain = request(&pool, Method::GET, "/a").await.unwrap();
    // Nothing left for the client's hop: the connection itself is still reused.
    assert!(!plain.headers().contains_key(http::header::CONNECTION));
    drop(plain.into_body().collect().await.unwrap());
    let naming = request(&pool, Method::GET, "/b").await.unwrap();
    // Kept, so that the hop-by-hop removal also removes the header it names.
    assert_eq!(naming.headers()[http::header::CONNECTION], "keep-alive, x-trace");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_trailers_become_a_trailers_frame() {
    let reply =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 42\r\nX-Two: a\r\n\r\n";
    let upstream = Upstream::start(move |c, r| if r == 0 { Reply::Write(reply.to_vec()) } else { clean(c, r) });
    let pool = pool(&upstream);
    let collected = request(&pool, Method::GET, "/a").await.unwrap().into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!((trailers["x-sum"].as_bytes(), trailers["x-two"].as_bytes()), (&b"42"[..], &b"a"[..]));
    assert_eq!(collected.to_bytes(), "hello");
    assert_eq!(get(&pool, "/b").await.unwrap(), "c0 r1", "reused after trailers");
}

#[tokio::test]
async fn a_body_cut_short_fails_and_never_looks_complete() {
    let cut = [
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ];
    for reply in cut {
        let upstream = Upstream::start(move |_, _| Reply::WriteClose(reply.as_bytes().to_vec()));
        let pool = pool(&upstream);
        let mut body = request(&pool, Method::GET, "/a").await.unwrap().into_body();
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "{reply:?}: the body fails");
        assert!(!body.is_end_stream(), "{reply:?}");
        assert_eq!(pool.idle_count(), 0);
    }
}

#[tokio::test]
async fn the_body_reads_at_most_16_kib_at_a_time_and_a_dropped_one_closes_its_connection() {
    let big = "x".repeat(200 * 1024);
    let upstream = Upstream::start(move |c, r| if r == 0 { Reply::Write(ok(&big)) } else { clean(c, r) });
    let pool = pool(&upstream);
    let mut body = request(&pool, Method::GET, "/a").await.unwrap().into_body();
    assert!(body.size_hint().exact().is_some_and(|left| left <= 200 * 1024));
    let mut total = 0;
    for _ in 0..3 {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(frame.len() <= BUF_SIZE);
        total += frame.len();
    }
    assert!(total < 200 * 1024);
    drop(body);
    assert_eq!(upstream.next_closed().await, Some(0), "closed, not returned, mid-body");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_response_head_later_than_the_timeout_is_a_timeout_and_closes_the_connection() {
    let upstream = Upstream::start(|_, _| Reply::Silent);
    let pool = pool(&upstream);
    let got = pool.exchange(&Method::GET, "/a", &HeaderMap::new(), None, Duration::from_millis(200)).await;
    assert!(matches!(got, Err(Failure::Timeout)));
    assert_eq!(upstream.next_closed().await, Some(0));
}

#[tokio::test]
async fn the_request_head_is_written_as_the_hyper_path_writes_it() {
    let upstream = Upstream::start(clean);
    let authority: http::uri::Authority = upstream.addr.to_string().parse().unwrap();
    let fast = FastPool::new(&authority, connector());
    let hyper = Http1Pool::new(&authority, connector());
    let mut headers = HeaderMap::new();
    headers.append("x-b", "2".parse().unwrap());
    headers.append("accept", "*/*".parse().unwrap());
    headers.append("x-b", "3".parse().unwrap());
    headers.append("x-keygate-tenant", "acme".parse().unwrap());
    for host in [None, Some("api.example.com")] {
        let mut headers = headers.clone();
        if let Some(host) = host {
            headers.insert("host", host.parse().unwrap());
        }
        for method in [Method::GET, Method::DELETE, Method::OPTIONS] {
            let target = "/p/a%20b?q=1&r";
            let response = fast.exchange(&method, target, &headers, None, Duration::from_secs(10)).await.unwrap();
            response.into_body().collect().await.unwrap();
            let mut request = Request::builder().method(method.clone()).uri(target).body(crate::body::empty()).unwrap();
            *request.headers_mut() = headers.clone();
            let (response, lease) = hyper.send(request).await.unwrap();
            hyper.keep(lease);
            response.into_body().collect().await.unwrap();
        }
    }
    let heads = upstream.heads.lock().unwrap();
    assert_eq!(heads.len(), 12);
    for pair in heads.chunks(2) {
        let (fast, hyper) = (&pair[0].1, &pair[1].1);
        assert_eq!(String::from_utf8_lossy(fast), String::from_utf8_lossy(hyper));
    }
    let expected = format!(
        "GET /p/a%20b?q=1&r HTTP/1.1\r\nx-b: 2\r\nx-b: 3\r\naccept: */*\r\nx-keygate-tenant: acme\r\nhost: {authority}\r\n\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&heads[0].1), expected);
}

#[test]
fn only_requests_without_a_body_or_an_upgrade_take_the_fast_path() {
    let request = |headers: &[(&'static str, &str)], body: ProxyBody| {
        let mut request = Request::get("/").body(body).unwrap();
        for &(name, value) in headers {
            request.headers_mut().append(name, value.parse().unwrap());
        }
        request
    };
    let some = || crate::body::boxed(http_body_util::Full::new(Bytes::from_static(b"x")));
    assert!(eligible(&request(&[("accept", "*/*")], crate::body::empty())));
    assert!(!eligible(&request(&[], some())));
    assert!(!eligible(&request(&[("content-length", "0")], crate::body::empty())));
    assert!(!eligible(&request(&[("transfer-encoding", "chunked")], crate::body::empty())));
    assert!(!eligible(&request(&[("upgrade", "websocket"), ("connection", "upgrade")], crate::body::empty())));
}

#[tokio::test]
async fn keygates_own_headers_are_written_into_the_head_as_hyper_sends_them_inserted() {
    use crate::keys::Principal;
    use crate::upstream::outbound::{strip_request_headers, ForwardContext, Outbound};
    let upstream = Upstream::start(clean);
    let authority: http::uri::Authority = upstream.addr.to_string().parse().unwrap();
    let fast = FastPool::new(&authority, connector());
    let hyper = Http1Pool::new(&authority, connector());
    let principal = Principal::new("key_abc", "acme", "pro", vec!["calls:read".into()]);
    let request_id = http::HeaderValue::from_static("rid-1");
    let context = ForwardContext {
        peer: "10.1.2.3".parse().unwrap(),
        tls: true,
        request_id: &request_id,
        peer_trusted: false,
        host: Some(http::HeaderValue::from_static("api.example.com")),
    };
    let mut client = HeaderMap::new();
    client.append("x-request-id", "client-id".parse().unwrap());
    client.append("authorization", "Bearer secret".parse().unwrap());
    client.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
    client.append("x-forwarded-proto", "gopher".parse().unwrap());
    client.append("x-forwarded-host", "evil.example".parse().unwrap());
    client.append("x-keygate-tenant", "someone-else".parse().unwrap());
    client.append("accept", "*/*".parse().unwrap());
    // With the client's Host (HTTP/1.1), then without one (HTTP/2's `:authority`).
    for host in [Some("api.example.com"), None] {
        let mut headers = client.clone();
        if let Some(host) = host {
            headers.insert("host", host.parse().unwrap());
        }
        let (mut for_fast, mut for_hyper) = (headers.clone(), headers);
        let written = strip_request_headers(&mut for_fast, &context, Some(&principal), false);
        let response =
            fast.exchange(&Method::GET, "/a", &for_fast, Some(&written), Duration::from_secs(10)).await.unwrap();
        response.into_body().collect().await.unwrap();
        let written = strip_request_headers(&mut for_hyper, &context, Some(&principal), false);
        let mut request = Request::builder().uri("/a").body(crate::body::empty()).unwrap();
        *request.headers_mut() = for_hyper;
        let (response, lease) = hyper.send(Outbound::into_request_with(request, Some(written))).await.unwrap();
        hyper.keep(lease);
        response.into_body().collect().await.unwrap();
    }
    let heads = upstream.heads.lock().unwrap();
    assert_eq!(heads.len(), 4);
    for pair in heads.chunks(2) {
        assert_eq!(String::from_utf8_lossy(&pair[0].1), String::from_utf8_lossy(&pair[1].1));
    }
    let own = "x-keygate-key-id: key_abc\r\nx-keygate-tenant: acme\r\nx-keygate-plan: pro\r\n\
               x-keygate-scopes: calls:read\r\nx-request-id: rid-1\r\nx-forwarded-for: 10.1.2.3\r\n\
               x-forwarded-proto: https\r\nx-forwarded-host: api.example.com\r\n";
    assert_eq!(
        String::from_utf8_lossy(&heads[0].1),
        format!("GET /a HTTP/1.1\r\naccept: */*\r\nhost: api.example.com\r\n{own}\r\n")
    );
    assert_eq!(
        String::from_utf8_lossy(&heads[2].1),
        format!("GET /a HTTP/1.1\r\naccept: */*\r\n{own}host: api.example.com\r\n\r\n")
    );
}
