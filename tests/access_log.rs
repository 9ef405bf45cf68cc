//! The access log (docs/reference.md §6): the real binary, `keygate serve`, writes one JSON line per
//! request on stdout (target `access`) with time, request id, method, route prefix,
//! status, decision, key id, tenant, upstream, duration and body bytes in and out; the
//! line comes once the response body is sent, so streamed bodies are counted too.
//! `RUST_LOG` sets the level: at `warn` there are no access lines.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::process::{Served, PROBE};
use support::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[tokio::test]
async fn one_access_line_per_request_with_every_field_and_the_bytes() {
    let upstream = upstream().await;
    let kg = Keygate::builder(&upstream.url()).start().await;
    let (writer_id, writer) = kg.key("acme", "pro", &["calls:read", "calls:write"]);
    let (reader_id, reader) = kg.key("globex", "unlimited", &["calls:read"]);
    let (_, tiny) = kg.key("initech", "tiny", &["calls:read"]);
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
    // A 429: the tiny plan's one limit (3 requests in 10 s) refuses the fourth.
    let tiny_bearer = format!("Bearer {}", tiny.expose());
    for (n, id) in ["al-tiny-1", "al-tiny-2", "al-tiny-3", "al-429"].into_iter().enumerate() {
        let headers = [("authorization", tiny_bearer.as_str()), ("x-request-id", id)];
        let answer = http.send("GET", &served.url("/v1/calls"), &headers, Bytes::new()).await;
        assert_eq!(answer.status, if n < 3 { 200 } else { 429 }, "{id}");
        answers.insert(id, answer);
    }
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
    let (stdout, _) = served.stop().await;
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
    assert_eq!((f["route"].as_str(), f["decision"].as_str()), (Some("/slow"), Some("client_closed")), "{f}");
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

    let f = field("al-429");
    assert_eq!((f["status"].as_u64(), f["decision"].as_str()), (Some(429), Some("rate_limited")), "{f}");
    assert_eq!(f["limit"], "default", "the refusing limit is named: {f}");
    assert!(field("al-tiny-3").get("limit").is_none(), "an admitted request names no limit");

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
    let (stdout, _) = served.stop().await;
    assert!(access_lines(&stdout).is_empty(), "{stdout}");
    assert!(!stdout.contains("\"access\""), "{stdout}");
}
