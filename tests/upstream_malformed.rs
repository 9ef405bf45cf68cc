//! An upstream that answers malformed HTTP (docs/reference.md §4.2, §4.3): a corpus of
//! broken responses from raw-socket upstreams, through the real binary with one worker
//! thread (so every request of a case shares one connection pool). For each case: the
//! status the client gets (502 for garbage; where hyper legitimately recovers, what it
//! relays), the access line's decision and the metric; then a second, well-behaved
//! request from another client to the same upstream must get its own clean answer —
//! never a byte of the broken one — and, wherever the first answer gave any doubt, on a
//! new upstream connection.
//!
//! Then the case that matters most, surplus bytes after a body as long as declared, when
//! they arrive later, on an idle pooled connection.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::process::Served;
use support::raw_upstream::{clean_body, Act, RawUpstream};
use support::*;
use tokio::sync::Notify;

/// What the client must get for the broken answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// 502 `bad_gateway` (access-log decision `bad_gateway`).
    BadGateway,
    /// This status and body, relayed (the response was parseable and framed).
    Relayed(u16, &'static str),
    /// Either 502 or this answer relayed, depending on whether keygate saw the bytes
    /// before it wrote the request (see the case).
    BadGatewayOr(u16, &'static str),
    /// The head (200) is sent, if at all, with a body that then fails: the client never
    /// sees a complete response (the access line says 200, `complete: false`). When the
    /// body fails before its first byte, the head was not flushed yet and the client sees
    /// the connection close instead.
    Aborted,
}

struct Case {
    name: &'static str,
    script: Vec<Act>,
    outcome: Outcome,
    /// The well-behaved request after it must reach the upstream on a new connection
    /// (the first one was discarded).
    fresh: bool,
}

const SECRET: &str = "SECRET-OF-ANOTHER-CLIENT";

/// A second complete response, smuggled after the first.
fn smuggled() -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SECRET}", SECRET.len())
}

/// Reads one request, answers `reply`.
fn answer(name: &'static str, reply: impl Into<Vec<u8>>, outcome: Outcome) -> Case {
    Case { name, script: vec![Act::Read, Act::Write(reply.into())], outcome, fresh: true }
}

/// Reads one request, answers `reply`, closes.
fn answer_close(name: &'static str, reply: impl Into<Vec<u8>>, outcome: Outcome) -> Case {
    Case { name, script: vec![Act::Read, Act::Write(reply.into()), Act::Close], outcome, fresh: true }
}

fn corpus() -> Vec<Case> {
    use Outcome::*;
    let ok2 = "Content-Length: 2\r\n\r\nok";
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge_header = format!("X-Huge: {}\r\n", "a".repeat(512 * 1024));
    let storm = "HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
    let mut cases = vec![
        // Status lines.
        answer("four-digit status", format!("HTTP/1.1 2000 OK\r\n{ok2}"), BadGateway),
        answer("two-digit status", format!("HTTP/1.1 20 OK\r\n{ok2}"), BadGateway),
        answer("HTTP/2.0 status line", format!("HTTP/2.0 200 OK\r\n{ok2}"), BadGateway),
        answer("ICY status line", format!("ICY 200 OK\r\n{ok2}"), BadGateway),
        answer("no reason, garbage", format!("HTTP/1.1 200\x01\x02garbage\r\n{ok2}"), BadGateway),
        answer("NUL in the reason", format!("HTTP/1.1 200 O\0K\r\n{ok2}"), BadGateway),
        answer("status under 100", format!("HTTP/1.1 099 Low\r\n{ok2}"), BadGateway),
        answer("status 600 and above", format!("HTTP/1.1 600 Beyond\r\n{ok2}"), BadGateway),
        answer("not HTTP at all", "hello, I am not a web server\r\n\r\n", BadGateway),
        // Header fields.
        answer("NUL in a header", format!("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n{ok2}"), BadGateway),
        answer("bare CR in a header", format!("HTTP/1.1 200 OK\r\nX-A: a\rb\r\n{ok2}"), BadGateway),
        answer("obs-fold", format!("HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\n{ok2}"), BadGateway),
        answer("space in a header name", format!("HTTP/1.1 200 OK\r\nBad Name: x\r\n{ok2}"), BadGateway),
        answer("space before the colon", format!("HTTP/1.1 200 OK\r\nX-A : x\r\n{ok2}"), BadGateway),
        answer("header line without colon", format!("HTTP/1.1 200 OK\r\nNoColon\r\n{ok2}"), BadGateway),
        answer("more headers than the limit", format!("HTTP/1.1 200 OK\r\n{many_headers}{ok2}"), BadGateway),
        answer("a head over the size limit", format!("HTTP/1.1 200 OK\r\n{huge_header}{ok2}"), BadGateway),
        // Lengths.
        answer(
            "conflicting Content-Length",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            BadGateway,
        ),
        answer("Content-Length list 5, 6", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", BadGateway),
        answer("negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", BadGateway),
        answer(
            "huge Content-Length",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
            BadGateway,
        ),
        answer("Content-Length +5", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", BadGateway),
        answer("Content-Length 0x5", "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", BadGateway),
        answer(
            "duplicate equal Content-Length",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            Relayed(200, "hello"),
        ),
        answer(
            "Content-Length list 5, 5",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            Relayed(200, "hello"),
        ),
        answer(
            "Content-Length beside Transfer-Encoding",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Relayed(200, "hello"),
        ),
        answer_close(
            "Transfer-Encoding not chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip",
            BadGateway,
        ),
        answer(
            "Transfer-Encoding gzip, chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            BadGateway,
        ),
        answer(
            "Transfer-Encoding in HTTP/1.0",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            BadGateway,
        ),
        answer(
            "malformed chunk size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            Aborted,
        ),
        answer(
            "overflowing chunk size",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            Aborted,
        ),
        answer(
            "body longer than declared",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{}", smuggled()),
            Relayed(200, "hello"),
        ),
        answer(
            "a body on a 204",
            format!("HTTP/1.1 204 No Content\r\nContent-Length: {}\r\n\r\n{}", smuggled().len(), smuggled()),
            Relayed(204, ""),
        ),
        // Interim and switching responses.
        answer(
            "a 101 nobody asked for",
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n{SECRET}"),
            BadGateway,
        ),
        answer("a storm of 1xx", format!("{storm}HTTP/1.1 200 OK\r\n{ok2}"), BadGateway),
        // Cut short.
        answer_close("closed mid-head", "HTTP/1.1 200 OK\r\nContent-Le", BadGateway),
        answer_close("closed before any answer", "", BadGateway),
        answer_close("closed mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", Aborted),
    ];
    // Where hyper legitimately recovers and nothing is in doubt, the connection may stay.
    cases.push(Case {
        fresh: false,
        ..answer("bare LF everywhere", "HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok", Relayed(200, "ok"))
    });
    cases.push(Case {
        fresh: false,
        ..answer(
            "a few interim responses",
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n{ok2}"
            ),
            Relayed(200, "ok"),
        )
    });
    // A response written as soon as the connection opens, before the request was read:
    // keygate either sees it before writing the request (a reply to nothing: 502) or
    // takes it as the reply. Either way the connection is not used again.
    cases.push(Case {
        name: "a response before the request",
        script: vec![Act::Write(format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{ok2}").into_bytes()), Act::Read],
        outcome: BadGatewayOr(200, "ok"),
        fresh: true,
    });
    cases
}

/// A response, the body read as far as it goes; status 0 when the connection closed
/// before a response head.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Got {
    fn text(&self) -> String {
        match &self.body {
            Ok(body) => String::from_utf8_lossy(body).into_owned(),
            Err(e) => format!("<body failed: {e}>"),
        }
    }
}

/// `GET path` with a request id, from a new client connection.
async fn fetch(addr: SocketAddr, path: &str, request_id: &str) -> Got {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to keygate");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let request =
        Request::get(path).header("host", "keygate").header("x-request-id", request_id).body(Empty::new()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{request_id}: no response head within 20 s"));
    let response = match response {
        Ok(response) => response,
        Err(e) => return Got { status: 0, headers: HeaderMap::new(), body: Err(e.to_string()) },
    };
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .unwrap_or_else(|_| panic!("{request_id}: body not ended within 20 s"))
        .map(|collected| collected.to_bytes())
        .map_err(|e| e.to_string());
    Got { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// Routes `/c<i>` (no key needed) to upstream `u<i>` at `urls[i]`.
fn routes(urls: &[String]) -> String {
    let mut text = String::from("default = \"deny\"\n");
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "\n[upstreams.u{i}]\nurl = \"{url}\"\ntimeout = \"15s\"\nconnect_timeout = \"5s\"\n\n\
             [[routes]]\nprefix = \"/c{i}\"\nauth = \"none\"\nupstream = \"u{i}\"\n"
        ));
    }
    text
}

/// The outcome `got` must match: for [`Outcome::BadGatewayOr`], the one it is closer to.
fn settle(outcome: Outcome, got: &Got) -> Outcome {
    match outcome {
        Outcome::BadGatewayOr(status, body) if got.status != 502 => Outcome::Relayed(status, body),
        Outcome::BadGatewayOr(..) => Outcome::BadGateway,
        other => other,
    }
}

/// Checks one case's first answer against its (settled) outcome.
fn check_outcome(outcome: Outcome, got: &Got) -> Result<(), String> {
    if got.text().contains(SECRET) {
        return Err(format!("the smuggled response reached the client: {:?}", got.text()));
    }
    match outcome {
        Outcome::BadGatewayOr(..) => unreachable!("settled first"),
        Outcome::BadGateway => {
            let typed = got.text().contains("\"bad_gateway\"");
            if got.status != 502 || !typed {
                return Err(format!("wanted 502 bad_gateway, got {} {:?}", got.status, got.text()));
            }
        }
        Outcome::Relayed(status, body) => {
            if (got.status, got.body.as_deref()) != (status, Ok(body.as_bytes())) {
                return Err(format!("wanted {status} {body:?}, got {} {:?}", got.status, got.text()));
            }
            let lengths: Vec<_> = got.headers.get_all("content-length").iter().collect();
            let framed_right = match lengths.as_slice() {
                [] => true,
                [one] => one.to_str().ok() == Some(body.len().to_string().as_str()),
                _ => false,
            };
            if !framed_right {
                return Err(format!("relayed Content-Length {lengths:?} for a {}-byte body", body.len()));
            }
        }
        Outcome::Aborted => {
            if !matches!(got.status, 0 | 200) || got.body.is_ok() {
                return Err(format!("wanted a 200 whose body fails, got {} {:?}", got.status, got.text()));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn malformed_upstream_answers_are_refused_or_framed_and_never_leak_into_the_next_answer() {
    let cases = corpus();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut upstreams = Vec::new();
    for case in &cases {
        upstreams.push(RawUpstream::start(vec![case.script.clone()]).await);
    }
    let urls: Vec<String> = upstreams.iter().map(RawUpstream::url).collect();
    let kg =
        Keygate::builder("http://127.0.0.1:9").routes(&routes(&urls)).settings("[server]\nworkers = 1\n").start().await;
    let config = kg.config_path();
    let _dir = kg.stop_keep_dir().await;
    let served = Served::start(&config, "info").await;

    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for (i, (case, upstream)) in cases.iter().zip(&upstreams).enumerate() {
        let got = fetch(served.proxy, &format!("/c{i}/x"), &format!("case-{i}")).await;
        let outcome = settle(case.outcome, &got);
        outcomes.push(outcome);
        if let Err(why) = check_outcome(outcome, &got) {
            failures.push(format!("{} (case {i}): {why}", case.name));
        }
        // Another client, the same upstream, the same worker (and pool).
        let follow = fetch(served.proxy, &format!("/c{i}/follow"), &format!("follow-{i}")).await;
        let served_by = upstream.received().last().map(|r| r.connection);
        let expected: Vec<String> =
            (0..upstream.connections()).flat_map(|c| (0..3).map(move |r| clean_body(c, r))).collect();
        let clean =
            follow.status == 200 && follow.body.as_ref().is_ok_and(|b| expected.iter().any(|e| e.as_bytes() == b));
        if !clean {
            failures.push(format!(
                "{} (case {i}): the next client got {} {:?}, not a clean answer",
                case.name,
                follow.status,
                follow.text()
            ));
        } else if case.fresh && served_by == Some(0) {
            failures.push(format!("{} (case {i}): the next request went on the doubtful connection", case.name));
        }
    }

    let metrics = metrics_text(served.admin).await;
    for (i, (case, outcome)) in cases.iter().zip(&outcomes).enumerate() {
        let route = format!("/c{i}");
        let bad = metric(&metrics, "keygate_requests_total", &[("route", &route), ("status", "502")]);
        let want = (*outcome == Outcome::BadGateway).then_some(1.0);
        if bad != want {
            failures.push(format!("{} (case {i}): keygate_requests_total 502 is {bad:?}, wanted {want:?}", case.name));
        }
    }

    let (stdout, _) = served.stop().await;
    let lines = access_lines(&stdout);
    let field = |id: &str| {
        let line = lines.iter().find(|l| l["fields"]["request_id"] == id);
        line.map(|l| l["fields"].clone()).unwrap_or_else(|| panic!("no access line for {id}"))
    };
    for (i, (case, outcome)) in cases.iter().zip(&outcomes).enumerate() {
        let f = field(&format!("case-{i}"));
        let (decision, complete) = match outcome {
            Outcome::BadGateway => ("bad_gateway", true),
            Outcome::Relayed(..) | Outcome::BadGatewayOr(..) => ("ok", true),
            Outcome::Aborted => ("ok", false),
        };
        if (f["decision"].as_str(), f["complete"].as_bool()) != (Some(decision), Some(complete)) {
            failures.push(format!("{} (case {i}): access line {f}, wanted {decision} complete={complete}", case.name));
        }
        let f = field(&format!("follow-{i}"));
        if (f["decision"].as_str(), f["status"].as_u64()) != (Some("ok"), Some(200)) {
            failures.push(format!("{} (case {i}): the next request's access line {f}", case.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Surplus bytes that arrive later, while the connection is idle in the pool (after a
/// body exactly as long as declared), are never read as the next request's response:
/// keygate discards the connection, and the next request goes on a new one.
#[tokio::test]
async fn surplus_bytes_on_an_idle_pooled_connection_discard_it() {
    let go = Arc::new(Notify::new());
    let written = Arc::new(Notify::new());
    let upstream = RawUpstream::start(vec![vec![
        Act::Read,
        Act::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        Act::WaitFor(go.clone()),
        Act::Write(smuggled().into_bytes()),
        Act::Signal(written.clone()),
    ]])
    .await;
    let kg = Keygate::builder(&upstream.url()).settings("[server]\nworkers = 1\n").start().await;

    let first = Http::new().get(&kg.url("/status/first"), None).await;
    assert_eq!((first.status, first.text().as_str()), (200, "hello"));
    // The connection is back in the pool; now the upstream sends more.
    go.notify_one();
    written.notified().await;
    for n in 0..3 {
        let next = Http::new().get(&kg.url(&format!("/status/next-{n}")), None).await;
        assert_eq!(next.status, 200, "{}", next.text());
        assert!(!next.text().contains(SECRET), "request {n} got the surplus: {}", next.text());
        assert_eq!(next.text(), clean_body(1, n), "request {n} went on a new connection");
    }
    let closed = eventually(Duration::from_secs(10), async || upstream.closed_by_peer(0)).await;
    assert!(closed, "keygate did not close the connection that carried surplus bytes");
    assert_eq!(upstream.connections(), 2);
    kg.stop().await;
}
