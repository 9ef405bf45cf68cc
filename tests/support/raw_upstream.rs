//! A raw-socket upstream that speaks exactly the bytes a test scripts, for upstreams that
//! answer malformed HTTP. Each accepted connection follows its own script of [`Act`]s
//! (connection 0 the first script, connection 1 the second, …) and keeps the connection
//! open, so keygate's connection pool is exercised: once a connection's script is done,
//! every further request read on it gets a clean answer naming the connection and the
//! request (`clean c1 r0`, see [`clean_body`]), so a test can tell which connection
//! served a request and whether anything else came with it. It records how many
//! connections it accepted, every request head it read, and which connections the peer
//! (keygate) closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One step of a connection's script.
#[derive(Clone)]
pub enum Act {
    /// Read one request (head, and a body by its `Content-Length`).
    Read,
    /// Write these bytes.
    Write(Vec<u8>),
    /// Close the connection (the script ends here).
    Close,
    /// Wait until the test calls `notify_one` on this.
    WaitFor(Arc<Notify>),
    /// Tell the test (`notify_one`) that every act before this one is done.
    Signal(Arc<Notify>),
}

/// One request head the upstream read, and the connection it came on.
#[derive(Debug, Clone)]
pub struct Received {
    pub connection: usize,
    pub head: String,
}

#[derive(Default)]
struct Record {
    accepted: AtomicUsize,
    received: Mutex<Vec<Received>>,
    closed_by_peer: Mutex<Vec<usize>>,
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    record: Arc<Record>,
}

/// The body of the clean answer to request `request` (0-based, counting every request
/// read on that connection, scripted or not) on connection `connection`.
pub fn clean_body(connection: usize, request: usize) -> String {
    format!("clean c{connection} r{request}")
}

impl RawUpstream {
    /// Starts an upstream whose connection `i` follows `scripts[i]` (connections past the
    /// list get only clean answers).
    pub async fn start(scripts: Vec<Vec<Act>>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let shared = record.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let connection = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let script = scripts.get(connection).cloned().unwrap_or_default();
                tokio::spawn(serve(stream, connection, script, shared.clone()));
            }
        });
        RawUpstream { addr, record }
    }

    /// Answers every request with `reply` on the first connection, clean answers after.
    pub async fn replying(reply: Vec<u8>) -> RawUpstream {
        RawUpstream::start(vec![vec![Act::Read, Act::Write(reply)]]).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.record.accepted.load(Ordering::SeqCst)
    }

    /// Every request head read, in order.
    pub fn received(&self) -> Vec<Received> {
        self.record.received.lock().unwrap().clone()
    }

    /// Whether the peer closed (or reset) connection `connection` while the upstream was
    /// reading from it.
    pub fn closed_by_peer(&self, connection: usize) -> bool {
        self.record.closed_by_peer.lock().unwrap().contains(&connection)
    }
}

async fn serve(mut stream: TcpStream, connection: usize, script: Vec<Act>, record: Arc<Record>) {
    let mut pending = Vec::new();
    let mut requests = 0;
    for act in script {
        match act {
            Act::Read => {
                if !read_request(&mut stream, &mut pending, connection, &record).await {
                    return;
                }
                requests += 1;
            }
            Act::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Act::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Act::WaitFor(notify) => notify.notified().await,
            Act::Signal(notify) => notify.notify_one(),
        }
    }
    loop {
        if !read_request(&mut stream, &mut pending, connection, &record).await {
            return;
        }
        let body = clean_body(connection, requests);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Clean: 1\r\n\r\n{body}", body.len());
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        requests += 1;
    }
}

/// Reads one request (its head, then as many body bytes as its `Content-Length` says);
/// false when the peer closed first.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>, connection: usize, record: &Record) -> bool {
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record.closed_by_peer.lock().unwrap().push(connection);
                return false;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while pending.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record.closed_by_peer.lock().unwrap().push(connection);
                return false;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    pending.drain(..length);
    record.received.lock().unwrap().push(Received { connection, head });
    true
}
