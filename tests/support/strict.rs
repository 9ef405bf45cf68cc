//! Strict HTTP/1.1 on raw TCP, for the smuggling corpus (`tests/smuggling.rs`): a
//! recording upstream that accepts only what every backend would read the same way, and
//! a client-side response reader. Both parse with `httparse` (a second parser: keygate
//! reads requests with hyper) plus their own body framing, so that what keygate sent is
//! re-parsed independently of what keygate believes it sent.
//!
//! The upstream keeps the exact bytes of every request on every connection, and answers
//! each complete request with a fixed `200` and a `Content-Length` (no body for `HEAD`).
//! Anything it cannot parse strictly is a *violation*: keygate forwarded something a
//! backend could read in more than one way (a bare LF, a respelled framing header, a
//! `Content-Length` beside a `Transfer-Encoding`, a chunk extension, a leaked
//! hop-by-hop field, a client-sent identity header, ...). A connection that closes in the
//! middle of a request leaves an *aborted* request (keygate cut a body that failed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A header field as received: the name as spelled on the wire, the raw value.
pub type Field = (String, Vec<u8>);

/// One complete request as the strict upstream parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which upstream connection (in accept order) carried it.
    pub connection: usize,
    /// Its exact bytes, head and body.
    pub raw: Vec<u8>,
    pub method: String,
    /// The request target, exactly as sent.
    pub target: String,
    pub headers: Vec<Field>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    pub trailers: Vec<Field>,
    /// A label the test set when the request arrived (the payload being sent).
    pub during: String,
}

impl Received {
    /// Every value of header `name` (any case), as text.
    pub fn values(&self, name: &str) -> Vec<String> {
        values(&self.headers, name)
    }

    /// The single value of `name`, if there is exactly one.
    pub fn one(&self, name: &str) -> Option<String> {
        let values = self.values(name);
        (values.len() == 1).then(|| values[0].clone())
    }
}

fn values(fields: &[Field], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Bytes a connection held when it closed in the middle of a request.
#[derive(Debug, Clone)]
pub struct Aborted {
    pub connection: usize,
    pub bytes: Vec<u8>,
    pub during: String,
}

/// Something keygate sent that a strict parser refuses.
#[derive(Debug, Clone)]
pub struct Violation {
    pub connection: usize,
    pub why: String,
    pub bytes: Vec<u8>,
    pub during: String,
}

#[derive(Default)]
struct State {
    requests: Vec<Received>,
    aborted: Vec<Aborted>,
    violations: Vec<Violation>,
    accepted: usize,
    open: usize,
    during: String,
}

/// The strict recording upstream (see the module doc).
pub struct StrictUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// What the upstream saw, taken whole.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: Vec<Received>,
    pub aborted: Vec<Aborted>,
    pub violations: Vec<Violation>,
    /// Connections keygate opened.
    pub connections: usize,
}

impl StrictUpstream {
    pub async fn start() -> StrictUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let connection = {
                    let mut state = shared.lock().unwrap();
                    state.accepted += 1;
                    state.open += 1;
                    state.accepted
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve(stream, connection, &shared).await;
                    shared.lock().unwrap().open -= 1;
                });
            }
        });
        StrictUpstream { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Labels what arrives from now on (the payload being sent), for the failure report.
    pub fn set_during(&self, label: &str) {
        self.state.lock().unwrap().during = label.to_string();
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap().open
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Seen {
        let state = self.state.lock().unwrap();
        Seen {
            requests: state.requests.clone(),
            aborted: state.aborted.clone(),
            violations: state.violations.clone(),
            connections: state.accepted,
        }
    }
}

/// Reads requests off one connection, strictly, until it closes or breaks a rule.
async fn serve(mut stream: TcpStream, connection: usize, state: &Mutex<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse_request(&buf) {
            Ok(Some((request, used))) => {
                let raw: Vec<u8> = buf.drain(..used).collect();
                let head = request.method == "HEAD";
                let close = request.values("connection").iter().any(|v| v.eq_ignore_ascii_case("close"));
                {
                    let mut state = state.lock().unwrap();
                    let during = state.during.clone();
                    state.requests.push(Received { connection, raw, during, ..request });
                }
                let answer: &[u8] = if head {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                if stream.write_all(answer).await.is_err() || close {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(why) => {
                let mut state = state.lock().unwrap();
                let during = state.during.clone();
                state.violations.push(Violation { connection, why, bytes: buf, during });
                return; // closed without an answer: keygate answers its client 502
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let mut state = state.lock().unwrap();
                    let during = state.during.clone();
                    state.aborted.push(Aborted { connection, bytes: buf, during });
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Header names that frame or route a message, or belong to one connection: a backend
/// that folds `_` and `.` into `-` (CGI, PHP, WSGI, some Java and Node stacks) reads
/// `transfer_encoding` as one of these, so no spelling but the canonical one may arrive.
const FRAMING: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "expect",
];

/// The identity headers keygate writes (only keygate, only these, each at most once).
pub const IDENTITY: [&str; 4] = ["x-keygate-key-id", "x-keygate-tenant", "x-keygate-plan", "x-keygate-scopes"];

/// A header name with `_` and `.` folded into `-`, lower-cased.
pub fn folded(name: &str) -> String {
    name.chars().map(|c| if c == '_' || c == '.' { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// The first line ending that is not CRLF (a bare LF, or a CR not followed by LF, except
/// a CR that may still be followed by its LF at the end of `bytes`).
fn bare_line_ending(bytes: &[u8]) -> Option<usize> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let bare = match b {
            b'\n' => i == 0 || bytes[i - 1] != b'\r',
            b'\r' => i + 1 < bytes.len() && bytes[i + 1] != b'\n',
            _ => false,
        };
        bare.then_some(i)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn fields(headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect()
}

/// Parses one request from the front of `buf`, strictly: `Ok(None)` when more bytes are
/// needed, `Err` for anything a backend could read in another way than keygate did.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Received, usize)>, String> {
    let head_end = find(buf, b"\r\n\r\n").map_or(buf.len(), |e| e + 4);
    if let Some(at) = bare_line_ending(&buf[..head_end]) {
        return Err(format!("a bare CR or LF in the head at byte {at}"));
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 { Err("a head over 64 KiB".into()) } else { Ok(None) };
    };
    if buf.starts_with(b"\r\n") {
        return Err("an empty line before the request line".into());
    }
    let head_len = end + 4;
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(status) => return Err(format!("httparse read the head differently: {status:?} of {head_len} bytes")),
        Err(e) => return Err(format!("httparse refuses the head: {e}")),
    }
    if request.version != Some(1) {
        return Err(format!("not HTTP/1.1: HTTP/1.{:?}", request.version));
    }
    let method = request.method.unwrap_or_default().to_string();
    let target = request.path.unwrap_or_default().to_string();
    if !target.starts_with('/') || target.contains('#') || !target.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(format!("not an origin-form target: {target:?}"));
    }
    let headers = fields(request.headers);
    check_fields(&headers, false)?;
    let count = |name: &str| values(&headers, name).len();
    if count("host") != 1 {
        return Err(format!("{} Host headers", count("host")));
    }
    if count("content-length") > 1 || count("transfer-encoding") > 1 {
        return Err("more than one Content-Length or Transfer-Encoding".into());
    }
    if count("content-length") == 1 && count("transfer-encoding") == 1 {
        return Err("Content-Length and Transfer-Encoding together".into());
    }
    if let Some(upgrade) = values(&headers, "upgrade").first() {
        let connection = values(&headers, "connection");
        if upgrade != "websocket" || connection != ["upgrade"] {
            return Err(format!("Upgrade: {upgrade:?} with Connection: {connection:?}"));
        }
    }
    let template = Received {
        connection: 0,
        raw: Vec::new(),
        method,
        target,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
        during: String::new(),
    };
    let rest = &buf[head_len..];
    if let Some(te) = values(&headers, "transfer-encoding").first() {
        if te != "chunked" {
            return Err(format!("Transfer-Encoding: {te:?}"));
        }
        return Ok(parse_chunked(rest, true)?
            .map(|(body, trailers, used)| (Received { body, trailers, ..template }, head_len + used)));
    }
    let length = match values(&headers, "content-length").first() {
        None => 0,
        Some(text) if !text.is_empty() && text.len() <= 12 && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<usize>().unwrap()
        }
        Some(text) => return Err(format!("Content-Length: {text:?}")),
    };
    if rest.len() < length {
        return Ok(None);
    }
    Ok(Some((Received { body: rest[..length].to_vec(), ..template }, head_len + length)))
}

/// The field rules for a request's headers (or trailers): names only in their canonical
/// spelling where a respelling could frame or route the message; no leaked hop-by-hop
/// field, no `Authorization`, and `x-keygate-*` only as keygate writes it.
fn check_fields(fields: &[Field], trailers: bool) -> Result<(), String> {
    for (name, value) in fields {
        let canonical = folded(name);
        if FRAMING.contains(&canonical.as_str()) && (canonical != name.to_ascii_lowercase() || trailers) {
            return Err(format!("{} field {name:?}", if trailers { "a framing trailer" } else { "a respelled" }));
        }
        if ["keep-alive", "proxy-connection", "http2-settings", "proxy-authorization"].contains(&canonical.as_str())
            || canonical == "authorization"
        {
            return Err(format!("{name:?} reached the upstream"));
        }
        if canonical.starts_with("x-keygate-") {
            let written = IDENTITY.contains(&name.as_str()) && !trailers;
            let once = values(fields, name).len() == 1;
            if !written || !once {
                return Err(format!("identity field {name:?}: {:?}", String::from_utf8_lossy(value)));
            }
        }
    }
    Ok(())
}

/// A de-chunked body, its trailers, and how many bytes the chunked framing took.
pub type Dechunked = (Vec<u8>, Vec<Field>, usize);

/// Parses a chunked body strictly: sizes in hex digits only (no extension, no sign, no
/// whitespace, at most 16 digits), each chunk's data followed by CRLF, then the trailer
/// section. Returns (body, trailers, bytes used); `check` applies the request field rules
/// to the trailers.
pub fn parse_chunked(buf: &[u8], check: bool) -> Result<Option<Dechunked>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else {
            if let Some(bare) = bare_line_ending(&buf[at..]) {
                return Err(format!("a bare CR or LF in the chunk size line at {bare}"));
            }
            return if buf.len() - at > 16 { Err("a chunk size line over 16 bytes".into()) } else { Ok(None) };
        };
        let line = &buf[at..at + line_end];
        if line.is_empty() || line.len() > 16 || !line.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size line {:?}", String::from_utf8_lossy(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(line).unwrap(), 16).unwrap();
        at += line_end + 2;
        if size == 0 {
            let Some(end) = find(&buf[at..], b"\r\n").map(|e| at + e) else { return Ok(None) };
            if end == at {
                return Ok(Some((body, Vec::new(), at + 2)));
            }
            let Some(section_end) = find(&buf[at..], b"\r\n\r\n").map(|e| at + e + 4) else { return Ok(None) };
            let section = &buf[at..section_end];
            if let Some(bare) = bare_line_ending(section) {
                return Err(format!("a bare CR or LF in the trailers at {bare}"));
            }
            let mut slots = [httparse::EMPTY_HEADER; 64];
            match httparse::parse_headers(section, &mut slots) {
                Ok(httparse::Status::Complete((n, parsed))) if n == section.len() => {
                    let trailers = fields(parsed);
                    if check {
                        check_fields(&trailers, true)?;
                    }
                    return Ok(Some((body, trailers, section_end)));
                }
                other => return Err(format!("httparse reads the trailers differently: {other:?}")),
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// A response as a client read it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<Field>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn request_id(&self) -> Option<String> {
        values(&self.headers, "x-request-id").first().cloned()
    }

    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses one response from the front of `buf` (`head_request`: it answers a `HEAD`, so
/// it has no body; `eof`: nothing more will come, so a body without a length ends here).
/// `Ok(None)` when more bytes are needed.
pub fn parse_response(buf: &[u8], head_request: bool, eof: bool) -> Result<Option<(Answer, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if eof && !buf.is_empty() { Err("a response head cut off".into()) } else { Ok(None) };
    };
    let head_len = end + 4;
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        other => return Err(format!("a response httparse reads differently: {other:?}")),
    }
    let status = response.code.unwrap_or_default();
    let headers = fields(response.headers);
    let answer = |body: Vec<u8>| Answer { status, headers: headers.clone(), body };
    let rest = &buf[head_len..];
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((answer(Vec::new()), head_len)));
    }
    if values(&headers, "transfer-encoding").first().is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        return match parse_chunked(rest, false)? {
            Some((body, _, used)) => Ok(Some((answer(body), head_len + used))),
            None if eof => Err("a chunked response cut off".into()),
            None => Ok(None),
        };
    }
    match values(&headers, "content-length").first() {
        Some(text) => {
            let length: usize = text.parse().map_err(|_| format!("response Content-Length {text:?}"))?;
            if rest.len() >= length {
                Ok(Some((answer(rest[..length].to_vec()), head_len + length)))
            } else if eof {
                Err("a response body cut off".into())
            } else {
                Ok(None)
            }
        }
        None if eof => Ok(Some((answer(rest.to_vec()), buf.len()))),
        None => Ok(None),
    }
}
