//! The authorizer benchmark's load client (run by benches/authorizer/run.py, which starts
//! keygate, Redis and an upstream, and measures keygate's CPU): sends one kind of request
//! for a while, at a fixed rate or as fast as it is answered, and prints one JSON line
//! with the count, the statuses and the latency percentiles.
//!
//! ```text
//! cargo bench --bench authorizer_load -- --mode grpc --addr 127.0.0.1:9191 --key kg_... \
//!     --rate 500 --duration 5 --connections 2
//! ```
//!
//! - `--mode grpc`: Envoy's `Authorization/Check` (envoy-types' generated client, one
//!   HTTP/2 connection per `--connections`, as Envoy keeps them);
//! - `--mode grpc-h2`: the same Check as a bare HTTP/2 request (the h2 crate, the message
//!   encoded once with prost, the answer decoded): what the server takes, without tonic's
//!   client machinery in the latency;
//! - `--mode http`: an HTTP/1.1 `GET <path>` on kept-alive connections (the authorizer's
//!   HTTP mode, Envoy's `http_service` convention; or the proxy listener, forwarding);
//! - `--rate N`: N requests a second in all, spread over the connections, each sent at
//!   its scheduled time, or as soon as its connection's previous request is answered if
//!   that is later (one request at a time per connection, as Envoy's ext_authz client
//!   sends on a connection when not loaded). The times come from a pacer thread that
//!   sleeps to each one (to within the kernel's timer slack, about 50 µs), not from
//!   tokio's timer, whose 1 ms granularity would send a 0.4 ms schedule as bursts of
//!   back-to-back requests every millisecond;
//!   `--rate 0`: every connection sends its next request as soon as the last is answered
//!   (a closed loop: saturation).
//!
//! Latency runs from sending a request to its whole answer. Without `--addr` (as when
//! `cargo bench` runs every bench) it prints its usage and exits.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use http_body_util::{BodyExt, Empty};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tonic::transport::{Channel, Endpoint};

struct Args {
    mode: String,
    addr: SocketAddr,
    key: String,
    path: String,
    rate: u64,
    duration: Duration,
    connections: usize,
}

const USAGE: &str =
    "usage: authorizer_load --mode grpc|grpc-h2|http --addr HOST:PORT --key KEY [--path /bench/items/42] \
                     [--rate N (0: saturation)] [--duration SECONDS] [--connections N]";

fn args() -> Option<Args> {
    let mut given: HashMap<String, String> = HashMap::new();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        // `cargo bench` passes `--bench`.
        if flag == "--bench" {
            continue;
        }
        let value = argv.next().unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"));
        given.insert(flag.trim_start_matches("--").to_string(), value);
    }
    let addr = given.get("addr")?.parse().expect("--addr HOST:PORT");
    let number = |name: &str, default: u64| given.get(name).map_or(default, |v| v.parse().expect(name));
    Some(Args {
        mode: given.get("mode").cloned().unwrap_or_else(|| "grpc".into()),
        addr,
        key: given.get("key").cloned().expect("--key"),
        path: given.get("path").cloned().unwrap_or_else(|| "/bench/items/42".into()),
        rate: number("rate", 0),
        duration: Duration::from_secs(number("duration", 5)),
        connections: number("connections", 2) as usize,
    })
}

/// The CheckRequest Envoy would send for `GET path` with the key.
fn check_request(args: &Args) -> CheckRequest {
    let authorization = format!("Bearer {}", args.key);
    let headers = [
        (":authority", "api.example"),
        (":method", "GET"),
        (":path", args.path.as_str()),
        (":scheme", "http"),
        ("authorization", authorization.as_str()),
        ("user-agent", "authorizer-load"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "203.0.113.7".into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: args.path.clone(),
                    host: "api.example".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                    ..HttpRequest::default()
                }),
                ..AttrRequest::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

/// One connection's client.
enum Client {
    Grpc(AuthorizationClient<Channel>, Box<CheckRequest>),
    /// A bare HTTP/2 client and the gRPC-framed CheckRequest.
    GrpcH2(h2::client::SendRequest<Bytes>, http::Request<()>, Bytes),
    Http(hyper::client::conn::http1::SendRequest<Empty<Bytes>>, http::Request<()>),
}

impl Client {
    async fn open(args: &Args) -> Client {
        if args.mode == "grpc-h2" {
            let stream = tokio::net::TcpStream::connect(args.addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let (send, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
            tokio::spawn(connection);
            let head = http::Request::post(format!("http://{}/envoy.service.auth.v3.Authorization/Check", args.addr))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let message = prost::Message::encode_to_vec(&check_request(args));
            let mut framed = Vec::with_capacity(message.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            Client::GrpcH2(send, head, Bytes::from(framed))
        } else if args.mode == "grpc" {
            let channel = Endpoint::from_shared(format!("http://{}", args.addr))
                .unwrap()
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect");
            Client::Grpc(AuthorizationClient::new(channel), Box::new(check_request(args)))
        } else {
            let stream = tokio::net::TcpStream::connect(args.addr).await.expect("connect");
            stream.set_nodelay(true).unwrap();
            let (send, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(connection);
            let head = http::Request::get(args.path.as_str())
                .header("host", "api.example")
                .header("authorization", format!("Bearer {}", args.key))
                .body(())
                .unwrap();
            Client::Http(send, head)
        }
    }

    /// One request; the HTTP status keygate decided (200 for an allowed Check).
    async fn send(&mut self) -> u16 {
        match self {
            Client::Grpc(client, check) => {
                let answer = client.check((**check).clone()).await.expect("Check").into_inner();
                match answer.http_response {
                    Some(HttpResponse::DeniedResponse(denied)) => denied.status.map_or(403, |s| s.code as u16),
                    _ if answer.status.is_some_and(|s| s.code == 0) => 200,
                    _ => 403,
                }
            }
            Client::GrpcH2(send, head, framed) => {
                let mut request = http::Request::new(());
                *request.method_mut() = head.method().clone();
                *request.uri_mut() = head.uri().clone();
                *request.headers_mut() = head.headers().clone();
                let ready = send.clone().ready().await.expect("connection");
                *send = ready;
                let (response, mut body) = send.send_request(request, false).expect("request");
                body.send_data(framed.clone(), true).expect("body");
                let mut body = response.await.expect("response").into_body();
                let mut data = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("data");
                    let _ = body.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
                assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "{trailers:?}");
                let answer: envoy_types::ext_authz::v3::pb::CheckResponse =
                    prost::Message::decode(&data[5.min(data.len())..]).expect("a CheckResponse");
                match answer.http_response {
                    Some(HttpResponse::DeniedResponse(denied)) => denied.status.map_or(403, |s| s.code as u16),
                    _ if answer.status.is_some_and(|s| s.code == 0) => 200,
                    _ => 403,
                }
            }
            Client::Http(send, head) => {
                let mut request = http::Request::new(Empty::new());
                *request.method_mut() = head.method().clone();
                *request.uri_mut() = head.uri().clone();
                *request.headers_mut() = head.headers().clone();
                send.ready().await.expect("connection");
                let response = send.send_request(request).await.expect("request");
                let status = response.status().as_u16();
                response.into_body().collect().await.expect("body");
                status
            }
        }
    }
}

struct Outcome {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
}

/// One connection's requests: when `ticks` is given (a fixed rate), one per tick from
/// the pacer, else back to back (saturation) from `start` until `end`.
async fn connection(
    args: Arc<Args>,
    start: Instant,
    end: Instant,
    mut ticks: Option<UnboundedReceiver<()>>,
) -> Outcome {
    let mut client = Client::open(&args).await;
    let mut outcome = Outcome { latencies_us: Vec::new(), statuses: BTreeMap::new() };
    if ticks.is_none() {
        tokio::time::sleep_until(start.into()).await;
    }
    loop {
        if let Some(ticks) = ticks.as_mut() {
            if ticks.recv().await.is_none() {
                break;
            }
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let status = client.send().await;
        outcome.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        *outcome.statuses.entry(status).or_default() += 1;
    }
    outcome
}

/// The fixed rate's clock: a thread that sleeps to each connection's next scheduled time
/// and then tells it to send (its share of the rate, the connections offset so that they
/// interleave), from `start` until `end`.
fn pacer(rate: u64, start: Instant, end: Instant, connections: Vec<UnboundedSender<()>>) {
    let n = connections.len();
    let interval = Duration::from_secs_f64(n as f64 / rate as f64);
    let mut next: Vec<Instant> = (0..n).map(|i| start + interval.mul_f64(i as f64 / n as f64)).collect();
    loop {
        let (i, &at) = next.iter().enumerate().min_by_key(|(_, at)| **at).expect("a connection");
        if at >= end {
            return;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // A connection still waiting on its last answer gets the tick when it is done.
        let _ = connections[i].send(());
        next[i] += interval;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn main() {
    let Some(args) = args() else {
        eprintln!("{USAGE}");
        return;
    };
    // One thread: the client must leave the machine's other core to keygate.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let args = Arc::new(args);
        // Warm the connections up (and check the request is allowed) before the clock runs.
        // (A 503 is a Redis call that timed out on a loaded machine: try again.)
        let mut warm = Client::open(&args).await;
        let mut status = warm.send().await;
        for _ in 0..20 {
            if status != 503 {
                break;
            }
            status = warm.send().await;
        }
        assert_eq!(status, 200, "the benchmark request is not allowed");
        drop(warm);
        let start = Instant::now() + Duration::from_millis(200);
        let end = start + args.duration;
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            let ticks = (args.rate > 0).then(|| {
                let (tx, rx) = unbounded_channel();
                senders.push(tx);
                rx
            });
            tasks.push(tokio::spawn(connection(args.clone(), start, end, ticks)));
        }
        if args.rate > 0 {
            let rate = args.rate;
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pacer(rate, start, end, senders))
                .expect("the pacer thread");
        }
        let mut latencies = Vec::new();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for task in tasks {
            let outcome = task.await.unwrap();
            latencies.extend(outcome.latencies_us);
            for (status, n) in outcome.statuses {
                *statuses.entry(status).or_default() += n;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let mean = latencies.iter().map(|&l| l as f64).sum::<f64>() / latencies.len().max(1) as f64 / 1000.0;
        let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("\"{s}\":{n}")).collect();
        println!(
            "{{\"mode\":\"{}\",\"rate\":{},\"connections\":{},\"requests\":{},\"seconds\":{:.3},\"rps\":{:.1},\
             \"statuses\":{{{}}},\"mean_ms\":{:.4},\"p50_ms\":{:.4},\"p90_ms\":{:.4},\"p99_ms\":{:.4},\"max_ms\":{:.4}}}",
            args.mode,
            args.rate,
            args.connections,
            latencies.len(),
            elapsed,
            latencies.len() as f64 / elapsed,
            statuses.join(","),
            mean,
            percentile(&latencies, 50.0),
            percentile(&latencies, 90.0),
            percentile(&latencies, 99.0),
            percentile(&latencies, 100.0),
        );
    });
}
