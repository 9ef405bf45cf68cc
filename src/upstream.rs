//! Forwarding (SPEC 4.3): one pooled hyper-util client per upstream, hop-by-hop header
//! removal both ways (RFC 9110 7.6.1), the identity and forwarding headers keygate adds,
//! and the connect and response-header timeouts that become 502 and 504.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE};
use http::{HeaderMap, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::keys::Principal;
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    authority: String,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
}

/// The pooled clients, one per upstream identity.
#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<PoolKey, HttpClient>>,
}

/// How long an idle pooled connection to an upstream is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl Upstreams {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, upstream: &Upstream) -> HttpClient {
        let key = PoolKey {
            authority: upstream.authority.to_string(),
            protocol: upstream.protocol,
            connect_timeout: upstream.connect_timeout,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clients
            .entry(key)
            .or_insert_with(|| {
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
                builder.build(connector)
            })
            .clone()
    }

    /// Drops the pools of upstreams no longer in `current` (after a reload).
    pub fn retain(&self, current: &[Arc<Upstream>]) {
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clients.retain(|key, _| {
            current.iter().any(|u| {
                u.authority.as_str() == key.authority
                    && u.protocol == key.protocol
                    && u.connect_timeout == key.connect_timeout
            })
        });
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

/// Headers that apply to one connection only (RFC 9110 7.6.1), removed both ways.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
];

/// Removes hop-by-hop headers, and those named in `Connection`. `TE: trailers` is kept
/// (gRPC needs it). `Upgrade` is removed unless `keep_upgrade` (an authorised WebSocket
/// handshake, which re-adds `Connection: upgrade` itself).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named {
        if keep_upgrade && name == http::header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(http::header::UPGRADE);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
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

/// Rewrites a request's headers for the upstream (SPEC 4.3): hop-by-hop first, then
/// `Authorization` and every spelling of `x-keygate-*`, then keygate's own headers last,
/// so that no client header can make keygate drop them.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    context: &ForwardContext<'_>,
    principal: Option<&Principal>,
    keep_upgrade: bool,
) {
    let client_xff: Vec<HeaderValue> =
        if context.peer_trusted { headers.get_all("x-forwarded-for").iter().cloned().collect() } else { Vec::new() };
    remove_hop_by_hop(headers, keep_upgrade);
    headers.remove(http::header::AUTHORIZATION);
    let spoofed: Vec<HeaderName> = headers.keys().filter(|n| is_keygate_header(n)).cloned().collect();
    for name in spoofed {
        headers.remove(name);
    }

    if let Some(principal) = principal {
        insert_text(headers, "x-keygate-key-id", &principal.key_id);
        insert_text(headers, "x-keygate-tenant", &principal.tenant);
        insert_text(headers, "x-keygate-plan", &principal.plan);
        insert_text(headers, "x-keygate-scopes", &principal.scopes.join(","));
    }
    insert_text(headers, "x-request-id", context.request_id);

    let peer = context.peer.to_string();
    let forwarded_for = client_xff
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .chain(std::iter::once(peer.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    insert_text(headers, "x-forwarded-for", &forwarded_for);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if context.tls { "https" } else { "http" }),
    );
    headers.remove("x-forwarded-host");
    if let Some(host) = &context.host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
    }
}

/// Sets a header from text keygate controls; a value that cannot be a header value (it
/// cannot happen with validated ids) is left out rather than panicking.
fn insert_text(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Whether a client-sent `x-request-id` may be kept: 1–128 characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh request id: 32 hex characters of randomness.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
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
    fn request_ids_are_validated() {
        assert!(valid_request_id(b"abc-123_.:X"));
        assert!(valid_request_id(&[b'a'; 128]));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a/b"));
        assert_eq!(new_request_id().len(), 32);
    }
}
