//! A tiny raw HTTP/2 client for attack tests: frames written by hand (RFC 9113 §4.1: a
//! 9-byte header — 24-bit length, type, flags, 31-bit stream id — and the payload), so a
//! test can send what no well-behaved client library would (100,000 CONTINUATION
//! frames, a reset storm, a zero flow-control window), and a background reader that
//! collects what the server answers.
//!
//! HPACK (RFC 7541) is encoded with the literal forms only, never Huffman: "without
//! indexing" (0x00 with a new name, 0x0N with a static-table name) and "with incremental
//! indexing" (0x40, to fill the server's dynamic table), plus indexed fields (0x80 | i)
//! and table size updates (0x20 | n). Decoding is limited to what the tests need: a
//! response's `:status`. Every connection opened here announces
//! SETTINGS_HEADER_TABLE_SIZE = 0, so the server's encoder never indexes into a
//! dynamic table and `:status` is always the first field, either a static-table index
//! (0x88..0x8e: 200 204 206 304 400 404 500) or a literal with the static name `:status`
//! (index 8) whose value may be Huffman-coded digits.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::eventually;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// Error codes (RFC 9113 §7) the tests look for.
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: header fields and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        values.iter().flat_map(|(id, v)| [&id.to_be_bytes()[..], &v.to_be_bytes()[..]].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(payload: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &payload)
}

pub fn headers(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    frame(CONTINUATION, flags, stream, block)
}

pub fn data(stream: u32, bytes: &[u8], flags: u8) -> Vec<u8> {
    frame(DATA, flags, stream, bytes)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK header block, built field by field.
#[derive(Default, Clone)]
pub struct Block(pub Vec<u8>);

impl Block {
    pub fn new() -> Block {
        Block(Vec::new())
    }

    /// Literal without indexing, new name (0x00).
    pub fn literal(mut self, name: &[u8], value: &[u8]) -> Block {
        self.0.push(0x00);
        string(&mut self.0, name);
        string(&mut self.0, value);
        self
    }

    /// Literal without indexing, the name from the static table (0x0N, 4-bit prefix).
    pub fn literal_static_name(mut self, index: usize, value: &[u8]) -> Block {
        integer(&mut self.0, 0x00, 4, index);
        string(&mut self.0, value);
        self
    }

    /// Literal with incremental indexing, new name (0x40): the server adds it to its
    /// dynamic table (evicting older entries past the table's size).
    pub fn indexing(mut self, name: &[u8], value: &[u8]) -> Block {
        self.0.push(0x40);
        string(&mut self.0, name);
        string(&mut self.0, value);
        self
    }

    /// An indexed field (0x80 | index, 7-bit prefix): 1–61 static, 62+ dynamic.
    pub fn indexed(mut self, index: usize) -> Block {
        integer(&mut self.0, 0x80, 7, index);
        self
    }

    /// A dynamic table size update (0x20 | size, 5-bit prefix).
    pub fn size_update(mut self, size: usize) -> Block {
        integer(&mut self.0, 0x20, 5, size);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A request's header block: the four pseudo-headers (`:path` given verbatim, so a test
/// can send a malformed one), then `extra`.
pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Block {
    let mut block = Block::new()
        .literal(b":method", method.as_bytes())
        .literal(b":scheme", b"http")
        .literal(b":authority", b"keygate.test")
        .literal(b":path", path.as_bytes());
    for (name, value) in extra {
        block = block.literal(name.as_bytes(), value.as_bytes());
    }
    block
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix's other bits `first`.
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK string literal, never Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// A frame the server sent.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A HEADERS frame's `:status` (see the module doc for the forms understood).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = &self.payload[..];
        if self.flags & 0x8 != 0 {
            // PADDED: pad length first, padding last.
            let pad = *block.first()? as usize;
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            block = block.get(5..)?; // PRIORITY
        }
        // Dynamic table size updates (the answer to our table size of 0) come first.
        while block.first().is_some_and(|b| b & 0xe0 == 0x20) {
            block = &block[1..];
        }
        match *block.first()? {
            b @ 0x88..=0x8e => Some([200, 204, 206, 304, 400, 404, 500][(b - 0x88) as usize]),
            0x08 | 0x18 | 0x48 => {
                let len = (block.get(1)? & 0x7f) as usize;
                let value = block.get(2..2 + len)?;
                let text = if block[1] & 0x80 != 0 { huffman_digits(value)? } else { value.to_vec() };
                std::str::from_utf8(&text).ok()?.parse().ok()
            }
            _ => None,
        }
    }

    /// A GOAWAY's or RST_STREAM's error code.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        Some(u32::from_be_bytes(self.payload.get(at..at + 4)?.try_into().ok()?))
    }
}

/// Huffman-coded decimal digits (RFC 7541 Appendix B: '0'–'2' are 5-bit codes 0–2,
/// '3'–'9' 6-bit codes 25–31), ended by all-ones padding.
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let bits: Vec<u8> = bytes.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let read = |at: usize, n: usize| bits[at..at + n].iter().fold(0u8, |acc, &b| acc << 1 | b);
    let (mut at, mut out) = (0, Vec::new());
    while bits.len() - at >= 5 {
        if bits[at..].iter().all(|&b| b == 1) && bits.len() - at < 8 {
            break;
        }
        let five = read(at, 5);
        if five <= 2 {
            out.push(b'0' + five);
            at += 5;
        } else if bits.len() - at >= 6 && (25..=31).contains(&read(at, 6)) {
            out.push(b'0' + read(at, 6) - 22);
            at += 6;
        } else {
            return None;
        }
    }
    Some(out)
}

/// What the reader has seen so far.
#[derive(Debug, Default)]
pub struct Received {
    /// Every frame except PING and SETTINGS acknowledgements, which are only counted
    /// (a flood's answers would fill memory).
    pub frames: Vec<Frame>,
    pub ping_acks: usize,
    pub settings_acks: usize,
    /// DATA payload bytes received, by every stream.
    pub data_bytes: u64,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
}

impl Received {
    pub fn goaway(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| f.kind == GOAWAY)
    }

    /// The `:status` of each stream's response HEADERS, in arrival order.
    pub fn statuses(&self) -> Vec<(u32, u16)> {
        self.frames.iter().filter_map(|f| Some((f.stream, f.status()?))).collect()
    }

    pub fn resets(&self) -> Vec<(u32, u32)> {
        self.frames.iter().filter(|f| f.kind == RST_STREAM).filter_map(|f| Some((f.stream, f.error_code()?))).collect()
    }
}

/// A raw HTTP/2 connection: writes are the test's; a background task reads and parses
/// everything the server sends (so that the server never blocks on a full socket while
/// the test floods it). The frames the server sends for flow control are read, never
/// answered: the test decides what to send.
pub struct H2Conn {
    writer: OwnedWriteHalf,
    pub received: Arc<Mutex<Received>>,
    /// Set by [`H2Conn::stop_reading`].
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl H2Conn {
    /// Connects, writes the preface and a SETTINGS frame with SETTINGS_HEADER_TABLE_SIZE
    /// = 0 and `settings`, and acknowledges the server's SETTINGS once it has arrived.
    pub async fn open(addr: SocketAddr, settings_values: &[(u16, u32)]) -> H2Conn {
        let stream = TcpStream::connect(addr).await.expect("connect to keygate");
        stream.set_nodelay(true).unwrap();
        let (mut reader, writer) = stream.into_split();
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = received.clone();
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pause = paused.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1 << 16);
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                if pause.load(std::sync::atomic::Ordering::SeqCst) {
                    // Keeps the socket open, unread, until the test drops the connection.
                    return std::future::pending::<()>().await;
                }
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let mut at = 0;
                while buf.len() - at >= 9 {
                    let len = (buf[at] as usize) << 16 | (buf[at + 1] as usize) << 8 | buf[at + 2] as usize;
                    if buf.len() - at < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[at + 3], buf[at + 4]);
                    let id = u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
                    let mut seen = sink.lock().unwrap();
                    match kind {
                        PING if flags & ACK != 0 => seen.ping_acks += 1,
                        SETTINGS if flags & ACK != 0 => seen.settings_acks += 1,
                        DATA => seen.data_bytes += len as u64,
                        _ => {}
                    }
                    let counted_only = matches!(kind, PING | DATA) || (kind == SETTINGS && flags & ACK != 0);
                    if !counted_only {
                        let payload = buf[at + 9..at + 9 + len].to_vec();
                        seen.frames.push(Frame { kind, flags, stream: id, payload });
                    }
                    at += 9 + len;
                }
                buf.drain(..at);
            }
            sink.lock().unwrap().closed = true;
        });
        let mut conn = H2Conn { writer, received, paused };
        let mut values = vec![(SETTINGS_HEADER_TABLE_SIZE, 0)];
        values.extend_from_slice(settings_values);
        assert!(conn.send(&[PREFACE, &settings(&values)].concat()).await, "keygate closed at the preface");
        let got_settings = conn.wait(Duration::from_secs(10), |r| r.frames.iter().any(|f| f.kind == SETTINGS)).await;
        assert!(got_settings, "keygate sent no SETTINGS within 10 s");
        assert!(conn.send(&settings_ack()).await, "keygate closed after its SETTINGS");
        conn
    }

    /// From the next read on, reads nothing more: the server's writes back up into the
    /// socket buffers, as with a client that stopped reading.
    pub fn stop_reading(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes `bytes`; false once the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    /// Waits (polling, up to `deadline`) until `check` holds for what was received.
    pub async fn wait(&self, deadline: Duration, check: impl Fn(&Received) -> bool) -> bool {
        let received = self.received.clone();
        eventually(deadline, async || check(&received.lock().unwrap())).await
    }

    pub fn closed(&self) -> bool {
        self.received.lock().unwrap().closed
    }

    /// Runs `f` on what was received so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.received.lock().unwrap())
    }
}
