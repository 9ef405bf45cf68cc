//! Forwarding (SPEC 4.3): one pooled hyper-util client per upstream, hop-by-hop header
//! removal both ways (RFC 9110 7.6.1), the identity and forwarding headers keygate adds,
//! the connect and response-header timeouts that become 502 and 504, and the WebSocket
//! tunnel (SPEC 4.1).
//!
//! # WebSocket
//!
//! An HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket` (RFC 6455 4.1)
//! goes through every phase like any request; once admitted, and only to an `http://`
//! upstream, it is forwarded over HTTP/1.1 with `Upgrade: websocket` and
//! `Connection: upgrade` kept (every other hop-by-hop header still removed). Only when
//! the upstream answers `101 Switching Protocols` with `Upgrade: websocket` does keygate
//! answer 101 and copy bytes both ways ([`Tunnel`]) until either side closes; it never
//! parses frames. Any other answer is passed on as an ordinary response (the upgrade was
//! refused), and a 101 the request did not ask for is a 502: keygate never tunnels
//! because of what the client asked alone, so a backend that refuses the upgrade cannot
//! be made to carry smuggled requests. Other `Upgrade` tokens (`h2c`, …) are removed like
//! any hop-by-hop header: an `h2c` tunnel would let a client send requests for any path
//! past the route that admitted it.
//!
//! hyper-util's pooled client supports this: the 101 response yields the connection
//! through `hyper::upgrade::on`, and a connection that switched protocols is never put
//! back in the pool. To an `h2c://` upstream the handshake is forwarded as a plain
//! request (no `Upgrade`): HTTP/2 WebSocket (extended CONNECT, RFC 8441) is not
//! supported, from clients or to upstreams. The access line of a WebSocket request is
//! written when its tunnel closes, with the bytes copied each way.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{AccessLog, ProxyBody};
use crate::io::ObservedIo;
use crate::keys::Principal;
use crate::pipeline::ConnectionHold;
use crate::policy::{Upstream, UpstreamProtocol};

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable within `connect_timeout`, reset, or not HTTP: 502.
    #[error("upstream unreachable or broken: {0}")]
    Failed(String),
    /// Response headers later than the upstream's `timeout`: 504.
    #[error("upstream response headers timed out")]
    Timeout,
}

type HttpClient = Client<HttpConnector, ProxyBody>;

/// The identity of a pool: an upstream whose address, protocol and connect timeout are
/// unchanged keeps its pool across policy reloads.
#[derive(Debug, Clone)]
struct PoolKey {
    authority: Authority,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
}

impl PoolKey {
    fn of(upstream: &Upstream) -> PoolKey {
        PoolKey {
            authority: upstream.authority.clone(),
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout,
        }
    }

    /// Whether `upstream`'s pool is this one (the protocol first: cheapest to compare).
    fn serves(&self, upstream: &Upstream) -> bool {
        self.protocol == upstream.protocol
            && self.connect_timeout == upstream.connect_timeout
            && self.authority == upstream.authority
    }
}

/// The pooled clients: per worker thread (see [`crate::server::Workers`]), one per
/// upstream identity. A pooled connection's task runs on the worker that opened it, so a
/// worker that only uses its own pools never wakes another thread to forward a request.
pub struct Upstreams {
    /// One set per worker, and a last one for callers on no worker (tests). A list, not a
    /// map: a policy names a handful of upstreams, and comparing a few authorities costs
    /// less per request than hashing one.
    pools: Vec<Mutex<Pools>>,
}

/// One worker's clients, by upstream identity.
type Pools = Vec<(PoolKey, Arc<HttpClient>)>;

/// How long an idle pooled connection to an upstream is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl Upstreams {
    /// Pools for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Upstreams { pools: (0..=workers).map(|_| Mutex::new(Vec::new())).collect() }
    }

    fn client(&self, upstream: &Upstream) -> Arc<HttpClient> {
        let last = self.pools.len() - 1;
        let pools = &self.pools[crate::worker::current().map_or(last, |worker| worker.min(last))];
        let mut clients = pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, client)) = clients.iter().find(|(key, _)| key.serves(upstream)) {
            return client.clone();
        }
        let key = PoolKey::of(upstream);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        // Without the timer the pool's idle timeout does nothing.
        builder.pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if upstream.protocol == UpstreamProtocol::H2c {
            builder.http2_only(true).timer(TokioTimer::new());
        }
        let client = Arc::new(builder.build(connector));
        clients.push((key, client.clone()));
        client
    }

    /// Drops the pools of upstreams no longer in `current` (after a reload).
    pub fn retain(&self, current: &[Arc<Upstream>]) {
        for pools in &self.pools {
            let mut clients = pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            clients.retain(|(key, _)| current.iter().any(|u| key.serves(u)));
        }
    }

    /// Sends `request` (already rewritten) to `upstream`, waiting at most its `timeout` for
    /// the response headers. The body streams on after this returns.
    pub async fn send(
        &self,
        upstream: &Upstream,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError::Failed(format!("cannot build upstream URI: {e}")))?;
        *request.uri_mut() = uri;
        *request.version_mut() = match upstream.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        let client = self.client(upstream);
        match tokio::time::timeout(upstream.timeout, client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::Failed(error_chain(&e))),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that apply to one connection only (RFC 9110 7.6.1), removed both ways, in this
/// order. A `static`: a `const` array would be built and dropped wherever it is used.
static HOP_BY_HOP: [HeaderName; 7] =
    [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING];

/// Bits of [`hop_by_hop_present`]: bit `i` is `HOP_BY_HOP[i]`, bit 7 is `Upgrade`.
const CONNECTION_BIT: u8 = 1 << 0;
const TE_BIT: u8 = 1 << 5;
const UPGRADE_BIT: u8 = 1 << 7;

/// Which hop-by-hop headers and `Upgrade` `headers` has, in one pass over its names.
fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        // Cheaper than comparing `HeaderName`s (a standard name's text is a table lookup).
        present |= match name.as_str() {
            "connection" => CONNECTION_BIT,
            "keep-alive" => 1 << 1,
            "proxy-connection" => 1 << 2,
            "proxy-authenticate" => 1 << 3,
            "proxy-authorization" => 1 << 4,
            "te" => TE_BIT,
            "transfer-encoding" => 1 << 6,
            "upgrade" => UPGRADE_BIT,
            _ => 0,
        };
    }
    present
}

/// Removes hop-by-hop headers, and those named in `Connection`. `TE: trailers` is kept
/// (gRPC needs it). `Upgrade` is removed unless `keep_upgrade` (an authorised WebSocket
/// handshake or its 101): then it is kept and `Connection: upgrade` is set, since this
/// hop's `Connection` must name it (RFC 9110 7.8).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return; // the common response: nothing to remove, and no `Connection` naming any
    }
    let te_trailers = present & TE_BIT != 0 && lists_token(headers, TE, "trailers");
    if present & CONNECTION_BIT != 0 {
        remove_connection_named(headers, keep_upgrade);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if !keep_upgrade {
        if present & UPGRADE_BIT != 0 {
            headers.remove(UPGRADE);
        }
    } else if headers.contains_key(UPGRADE) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the headers named in `Connection` (all of its values, in order), except
/// `Upgrade` when `keep_upgrade`. A name is removed by `&str`: it is lower-cased and
/// looked up on the stack, without the allocation a custom `HeaderName` would cost, and
/// text that is not a header name removes nothing.
fn remove_connection_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Clones share the bytes; a second `Connection` header is rare.
    let mut values = headers.get_all(CONNECTION).iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim();
            if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            headers.remove(name);
        }
    }
}

/// Whether `headers` has a `name` header listing `token` (comma-separated, any case).
fn lists_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        let bytes = value.as_bytes();
        // Only values `to_str` accepts (visible ASCII and tab, so `trim_ascii` is `str::trim`).
        bytes.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            && bytes.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `request` is a WebSocket opening handshake (RFC 6455 4.1): HTTP/1.1, `GET`,
/// `Connection` naming `upgrade` and `Upgrade` naming `websocket`. HTTP/2 requests never
/// are (extended CONNECT, RFC 8441, is not supported).
pub fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.method() == Method::GET
        && lists_token(request.headers(), CONNECTION, "upgrade")
        && lists_token(request.headers(), UPGRADE, "websocket")
}

/// Whether an upstream's 101 switched to WebSocket (the only protocol keygate asks for).
pub fn switched_to_websocket(headers: &HeaderMap) -> bool {
    lists_token(headers, UPGRADE, "websocket")
}

/// Both ends of an accepted WebSocket upgrade: the client's connection (once keygate's
/// 101 is written) and the upstream's (once its 101 is read), and the client
/// connection's hold: an open tunnel still counts as an open connection.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    _hold: Option<ConnectionHold>,
}

impl Tunnel {
    pub fn new(client: OnUpgrade, upstream: OnUpgrade, hold: Option<ConnectionHold>) -> Self {
        Tunnel { client, upstream, _hold: hold }
    }

    /// Waits for both upgrades, then copies bytes both ways until either side closes
    /// (an end-of-stream is passed on as a write shutdown, then the other direction
    /// drains). `log` is written when the tunnel ends, with the bytes copied.
    pub async fn run(self, mut log: AccessLog) {
        let (client, upstream) = tokio::join!(self.client, self.upstream);
        let (client, upstream) = match (client, upstream) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(request_id = %log.request_id, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let mut client = ObservedIo::new(TokioIo::new(client), log.bytes());
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok(_) => log.set_complete(),
            Err(e) => tracing::debug!(request_id = %log.request_id, error = %e, "websocket tunnel ended with an error"),
        }
    }
}

/// True for `x-keygate-*` in any letter case and with `_` for `-` anywhere (a WSGI or PHP
/// backend maps `_` to `-`, so `x_keygate_tenant` would spoof `x-keygate-tenant`).
fn is_keygate_header(name: &HeaderName) -> bool {
    let bytes = name.as_str().as_bytes(); // http lower-cases names
    bytes.len() > 10
        && bytes[..10].iter().zip(b"x-keygate-").all(|(&b, &want)| b == want || (want == b'-' && b == b'_'))
}

/// The facts about the connection and request that the forwarding headers need.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    pub peer: IpAddr,
    /// Whether the client connection is TLS (`x-forwarded-proto`).
    pub tls: bool,
    pub request_id: &'a str,
    /// Whether the peer is in `trusted_proxies`: then its `X-Forwarded-For` is kept.
    pub peer_trusted: bool,
    /// The original `Host` (or HTTP/2 `:authority`), if any.
    pub host: Option<HeaderValue>,
}

const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
const X_KEYGATE_TENANT: HeaderName = HeaderName::from_static("x-keygate-tenant");
const X_KEYGATE_PLAN: HeaderName = HeaderName::from_static("x-keygate-plan");
const X_KEYGATE_SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Rewrites a request's headers for the upstream (SPEC 4.3): hop-by-hop first, then
/// `Authorization` and every spelling of `x-keygate-*`, then keygate's own headers last,
/// so that no client header can make keygate drop them.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    context: &ForwardContext<'_>,
    principal: Option<&Principal>,
    keep_upgrade: bool,
) {
    // Built before anything is removed: the client's value is read as it arrived.
    let forwarded_for = forwarded_for(headers, context);
    remove_hop_by_hop(headers, keep_upgrade);
    headers.remove(AUTHORIZATION);
    if headers.keys().any(is_keygate_header) {
        let spoofed: Vec<HeaderName> = headers.keys().filter(|n| is_keygate_header(n)).cloned().collect();
        for name in spoofed {
            headers.remove(name);
        }
    }

    if let Some(principal) = principal {
        insert_text(headers, X_KEYGATE_KEY_ID, &principal.key_id);
        insert_text(headers, X_KEYGATE_TENANT, &principal.tenant);
        insert_text(headers, X_KEYGATE_PLAN, &principal.plan);
        if let Some(scopes) = joined(&principal.scopes, b",") {
            headers.insert(X_KEYGATE_SCOPES, scopes);
        }
    }
    insert_text(headers, X_REQUEST_ID, context.request_id);
    if let Some(forwarded_for) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, forwarded_for);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if context.tls { "https" } else { "http" }));
    headers.remove(X_FORWARDED_HOST);
    if let Some(host) = &context.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
    }
}

/// `X-Forwarded-For` for the upstream: the client's values (each trimmed, empty ones and
/// those that are not visible ASCII left out) when the peer is trusted, then the peer,
/// joined by `", "`. Built in one exactly sized buffer that becomes the value.
fn forwarded_for(headers: &HeaderMap, context: &ForwardContext<'_>) -> Option<HeaderValue> {
    let peer = IpText::new(context.peer);
    let client = context.peer_trusted.then(|| headers.get_all(X_FORWARDED_FOR));
    let client = || client.iter().flatten().filter_map(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let len = client().map(|v| v.len() + 2).sum::<usize>() + peer.as_bytes().len();
    let mut value = Vec::with_capacity(len);
    for v in client() {
        value.extend_from_slice(v.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(peer.as_bytes());
    into_value(value)
}

/// `parts` joined by `separator` as a header value (one exactly sized buffer), or `None`
/// if that is not a valid header value.
fn joined(parts: &[String], separator: &[u8]) -> Option<HeaderValue> {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + separator.len() * parts.len().saturating_sub(1);
    let mut value = Vec::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            value.extend_from_slice(separator);
        }
        value.extend_from_slice(part.as_bytes());
    }
    into_value(value)
}

/// A header value that takes over `bytes` (validated, not copied: no allocation when the
/// buffer is exactly full), or `None` if they are not a valid header value.
fn into_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

/// An IP address as `Display` writes it, on the stack.
struct IpText {
    /// The longest text `Ipv6Addr` writes is 39 bytes.
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut text = IpText { buf: [0; 48], len: 0 };
        match ip {
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b".");
                    }
                    text.push(digits.format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.buf.len() - self.len < s.len() {
            return Err(std::fmt::Error);
        }
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Sets a header from text keygate controls; a value that cannot be a header value (it
/// cannot happen with validated ids) is left out rather than panicking.
fn insert_text(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Whether a client-sent `x-request-id` may be kept: 1–128 characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh request id: 32 hex characters of randomness (lower case).
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::random::<u128>().to_be_bytes();
    let mut id = [0u8; 32];
    for (pair, byte) in id.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    String::from_utf8(id.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(trusted: bool) -> ForwardContext<'static> {
        ForwardContext {
            peer: "10.1.2.3".parse().unwrap(),
            tls: false,
            request_id: "rid-1",
            peer_trusted: trusted,
            host: Some(HeaderValue::from_static("api.example.com")),
        }
    }

    fn principal() -> Principal {
        Principal {
            key_id: "key_abc".into(),
            tenant: "acme".into(),
            plan: "pro".into(),
            scopes: vec!["calls:read".into(), "calls:write".into()],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed_but_te_trailers_kept() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn every_spelling_of_x_keygate_is_stripped() {
        let mut h = headers(&[
            ("X-Keygate-Tenant", "evil"),
            ("x_keygate_tenant", "evil"),
            ("x-keygate_plan", "evil"),
            ("X_KEYGATE-SCOPES", "evil"),
            ("x-keygate-anything", "evil"),
            ("x-keygatex", "kept"),
            ("authorization", "Bearer kg_secret"),
        ]);
        rewrite_request_headers(&mut h, &context(false), None, false);
        assert!(h.keys().all(|n| !is_keygate_header(n)), "{h:?}");
        assert_eq!(h["x-keygatex"], "kept");
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn identity_headers_survive_a_connection_header_naming_them() {
        let mut h = headers(&[("connection", "x-keygate-tenant, x-request-id, x-forwarded-for")]);
        rewrite_request_headers(&mut h, &context(false), Some(&principal()), false);
        assert_eq!(h["x-keygate-tenant"], "acme");
        assert_eq!(h["x-keygate-key-id"], "key_abc");
        assert_eq!(h["x-keygate-plan"], "pro");
        assert_eq!(h["x-keygate-scopes"], "calls:read,calls:write");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn forwarded_for_is_replaced_from_untrusted_and_appended_for_trusted_peers() {
        let mut h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        rewrite_request_headers(&mut h, &context(false), None, false);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");

        let mut h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")]);
        rewrite_request_headers(&mut h, &context(true), None, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn forwarded_proto_and_host_are_single_values() {
        let mut h = headers(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "evil"), ("x-forwarded-host", "x")]);
        rewrite_request_headers(&mut h, &context(false), None, false);
        assert_eq!(h.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), ["http"]);
        assert_eq!(h.get_all("x-forwarded-host").iter().collect::<Vec<_>>(), ["api.example.com"]);
    }

    #[test]
    fn an_authorised_upgrade_keeps_upgrade_and_says_so_in_connection() {
        let mut h = headers(&[
            ("connection", "Upgrade, keep-alive, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        rewrite_request_headers(&mut h, &context(false), Some(&principal()), true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h.get_all("connection").iter().collect::<Vec<_>>(), ["upgrade"]);
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(!h.contains_key("x-hop") && !h.contains_key("keep-alive"), "{h:?}");
        assert_eq!(h["x-keygate-tenant"], "acme");

        let mut h = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        remove_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn websocket_handshakes_are_recognised() {
        let request = |method: &str, version: Version, pairs: &[(&str, &str)]| {
            let mut builder = Request::builder().method(method).version(version).uri("/ws");
            for (k, v) in pairs {
                builder = builder.header(*k, *v);
            }
            builder.body(()).unwrap()
        };
        let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
        assert!(is_websocket_upgrade(&request("GET", Version::HTTP_11, &ws)));
        assert!(!is_websocket_upgrade(&request("POST", Version::HTTP_11, &ws)));
        assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_10, &ws)));
        assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_2, &ws)));
        assert!(!is_websocket_upgrade(&request("GET", Version::HTTP_11, &[("upgrade", "websocket")])));
        assert!(!is_websocket_upgrade(&request(
            "GET",
            Version::HTTP_11,
            &[("connection", "upgrade"), ("upgrade", "h2c")]
        )));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(valid_request_id(b"abc-123_.:X"));
        assert!(valid_request_id(&[b'a'; 128]));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a/b"));
        assert_eq!(new_request_id().len(), 32);
    }

    fn pairs(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn a_map_without_hop_by_hop_headers_is_left_as_it_is() {
        let original = headers(&[
            ("content-type", "application/json"),
            ("x-a", "1"),
            ("keep-alive-x", "x"),
            ("x-a", "2"),
            ("tee", "trailers"),
            ("server", "app"),
        ]);
        for keep_upgrade in [false, true] {
            let mut h = original.clone();
            remove_hop_by_hop(&mut h, keep_upgrade);
            assert_eq!(pairs(&h), pairs(&original));
        }
    }

    #[test]
    fn connection_close_alone_is_removed() {
        for keep_upgrade in [false, true] {
            let mut h = headers(&[("Connection", "close")]);
            remove_hop_by_hop(&mut h, keep_upgrade);
            assert!(h.is_empty(), "{h:?}");
        }
        // `close` is a name like any other token: a header so named goes too.
        let mut h = headers(&[("connection", "close"), ("close", "1"), ("x-kept", "yes")]);
        remove_hop_by_hop(&mut h, false);
        assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static("x-kept"), HeaderValue::from_static("yes"));
            h.insert(name.clone(), HeaderValue::from_static("x"));
            assert_eq!(hop_by_hop_present(&h), 1 << i, "{name}");
            remove_hop_by_hop(&mut h, false);
            assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])), "{name}");
        }

        let upgrade = headers(&[("x-kept", "yes"), ("Upgrade", "websocket")]);
        assert_eq!(hop_by_hop_present(&upgrade), UPGRADE_BIT);
        let mut h = upgrade.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(pairs(&h), pairs(&headers(&[("x-kept", "yes")])));
        // Kept for an authorised upgrade, and then this hop's `Connection` names it.
        let mut h = upgrade.clone();
        remove_hop_by_hop(&mut h, true);
        assert_eq!(
            pairs(&h),
            pairs(&headers(&[("x-kept", "yes"), ("upgrade", "websocket"), ("connection", "upgrade")]))
        );
    }

    #[test]
    fn forwarded_for_writes_every_peer_address_and_leaves_out_unusable_client_values() {
        let mut context = context(true);
        context.peer = "2001:db8::ffff:1".parse().unwrap();
        let mut h = HeaderMap::new();
        for value in [&b" 1.1.1.1 "[..], b"  ", b"caf\xe9", b"2.2.2.2,3.3.3.3"] {
            h.append("x-forwarded-for", HeaderValue::from_bytes(value).unwrap());
        }
        rewrite_request_headers(&mut h, &context, None, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2,3.3.3.3, 2001:db8::ffff:1");

        for peer in ["0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "::ffff:192.168.100.200", "2001:db8::1"] {
            let peer: IpAddr = peer.parse().unwrap();
            assert_eq!(IpText::new(peer).as_bytes(), peer.to_string().as_bytes());
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(IpText::new(longest).as_bytes(), longest.to_string().as_bytes());
    }

    #[test]
    fn scopes_are_joined_by_commas() {
        for (scopes, want) in [(&[][..], ""), (&["calls:read"][..], "calls:read"), (&["a", "b", "c"][..], "a,b,c")] {
            let principal = Principal { scopes: scopes.iter().map(|s| s.to_string()).collect(), ..principal() };
            let mut h = HeaderMap::new();
            rewrite_request_headers(&mut h, &context(false), Some(&principal), false);
            assert_eq!(h["x-keygate-scopes"], want);
        }
    }

    #[test]
    fn request_ids_are_lower_case_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert!(a.len() == 32 && a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{a}");
        assert_ne!(a, b);
    }
}
