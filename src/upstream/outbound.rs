//! The request as it goes upstream (docs/reference.md §4.3): made only from an [`Admission`], it is the
//! client's request with hop-by-hop headers, `Authorization` and every spelling of
//! `x-keygate-*` removed, and keygate's own headers added last — the identity headers
//! from the admission's principal, then `x-request-id` and the forwarding headers.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::request::Parts;
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};

use super::hop_by_hop::remove_hop_by_hop;
use crate::admission::Admission;
use crate::body::ProxyBody;
use crate::keys::{IdentityHeaders, Principal};

/// An admitted request, rewritten for the upstream. Only [`Outbound::new`] makes one, from
/// an [`Admission`]; [`super::Upstreams::send`] takes nothing else.
///
/// The client's headers are stripped when it is made; the headers keygate writes
/// ([`Written`]) are kept apart until the request goes out: the HTTP/1.1 fast path writes
/// them straight into the request head, hyper's paths get them inserted into the map
/// ([`Outbound::into_request`]). Inserting them into the map only to encode it costs a
/// hash, a probe and, past the map's first capacity, a rehash each.
pub struct Outbound {
    request: Request<ProxyBody>,
    /// `None` once they are in the map.
    written: Option<Written>,
}

impl Outbound {
    /// Rewrites the request's headers for the upstream from `admission` (its principal's
    /// identity headers) and `context`; `keep_upgrade` for an admitted WebSocket
    /// handshake. A forwarded CORS preflight goes with no body and only the CORS request
    /// headers, `Host` and keygate's own ([`PREFLIGHT_HEADERS`]).
    pub fn new(
        admission: &Admission,
        mut parts: Parts,
        mut body: ProxyBody,
        context: &ForwardContext<'_>,
        keep_upgrade: bool,
    ) -> Outbound {
        let mut written = Some(strip_request_headers(&mut parts.headers, context, admission.principal(), keep_upgrade));
        if admission.is_preflight() {
            if let Some(written) = written.take() {
                written.insert_into(&mut parts.headers);
            }
            keep_only(&mut parts.headers, &PREFLIGHT_HEADERS);
            body = crate::body::empty();
        }
        Outbound { request: Request::from_parts(parts, body), written }
    }

    /// The headers as they will go upstream, keygate's own included (they are written
    /// into the map here, if they were not yet).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Some(written) = self.written.take() {
            written.insert_into(self.request.headers_mut());
        }
        self.request.headers_mut()
    }

    /// The request, and keygate's headers when they are not in its map yet (for a writer
    /// of its own head: [`Written::for_each`]).
    pub(super) fn into_parts(self) -> (Request<ProxyBody>, Option<Written>) {
        (self.request, self.written)
    }

    /// The parts of [`Outbound::into_parts`] as one request with every header in its map
    /// (for hyper's clients).
    pub(super) fn into_request_with(mut request: Request<ProxyBody>, written: Option<Written>) -> Request<ProxyBody> {
        if let Some(written) = written {
            written.insert_into(request.headers_mut());
        }
        request
    }
}

/// The headers keygate writes on a request to the upstream, in the order they go: the
/// principal's identity headers, `x-request-id`, `x-forwarded-for`, `x-forwarded-proto`,
/// `x-forwarded-host`, and `Host` when the client sent none (HTTP/2's `:authority`). The
/// client's own of these names were removed from its map ([`strip_request_headers`]), so
/// they replace them wherever they are written.
pub struct Written {
    identity: Option<Arc<IdentityHeaders>>,
    request_id: HeaderValue,
    forwarded_for: Option<HeaderValue>,
    tls: bool,
    /// The original `Host` (or `:authority`), for `x-forwarded-host`.
    forwarded_host: Option<HeaderValue>,
    /// Whether the client's map has no `Host`: then `forwarded_host` is the `Host` too.
    host_missing: bool,
}

impl Written {
    /// Calls `write` with each header, in order.
    pub(super) fn for_each(&self, mut write: impl FnMut(&HeaderName, &HeaderValue)) {
        if let Some(identity) = &self.identity {
            let values = [
                (&X_KEYGATE_KEY_ID, &identity.key_id),
                (&X_KEYGATE_TENANT, &identity.tenant),
                (&X_KEYGATE_PLAN, &identity.plan),
                (&X_KEYGATE_SCOPES, &identity.scopes),
            ];
            for (name, value) in values {
                if let Some(value) = value {
                    write(name, value);
                }
            }
        }
        write(&X_REQUEST_ID, &self.request_id);
        if let Some(forwarded_for) = &self.forwarded_for {
            write(&X_FORWARDED_FOR, forwarded_for);
        }
        let proto = HeaderValue::from_static(if self.tls { "https" } else { "http" });
        write(&X_FORWARDED_PROTO, &proto);
        if let Some(host) = &self.forwarded_host {
            write(&X_FORWARDED_HOST, host);
            if self.host_missing {
                write(&HOST, host);
            }
        }
    }

    /// Whether a `Host` is among them (the client sent none, and there was one to give).
    pub(super) fn writes_host(&self) -> bool {
        self.host_missing && self.forwarded_host.is_some()
    }

    /// Inserts them into `headers`, the client's map after [`strip_request_headers`].
    fn insert_into(self, headers: &mut HeaderMap) {
        self.for_each(|name, value| {
            headers.insert(name.clone(), value.clone());
        });
    }
}

/// Whether `name` is `canonical` in some spelling a backend may fold into it: `http`
/// lower-cases names, and CGI, PHP and WSGI stacks turn `-`, `_` and `.` alike into `_`
/// (`x_keygate_tenant`, `x-keygate.tenant` and `X-Keygate-Tenant` all reach them as
/// `HTTP_X_KEYGATE_TENANT`).
fn spelled_as(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&b, &want)| b == want || (want == b'-' && matches!(b, b'_' | b'.')))
}

/// True for `x-keygate-*` in any spelling (see [`spelled_as`]): keygate's identity
/// headers, which only keygate may write.
pub(super) fn is_keygate_header(name: &HeaderName) -> bool {
    let bytes = name.as_str().as_bytes();
    bytes.len() > 10 && spelled_as(&bytes[..10], b"x-keygate-")
}

/// Headers with which a client could claim another address, scheme, port, prefix or URL,
/// and that backends and frameworks commonly believe: dropped unless the peer is in
/// `trusted_proxies` (then they are the trusted proxy's and pass on).
const CLIENT_OVERRIDES: [&[u8]; 16] = [
    b"forwarded",
    b"x-real-ip",
    b"true-client-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"cf-connecting-ip",
    b"fastly-client-ip",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
    b"x-forwarded-scheme",
    b"x-forwarded-ssl",
    b"x-forwarded-server",
    b"x-forwarded-uri",
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
];

/// The forwarding headers keygate writes itself (canonical spelling only: it replaces
/// those, or appends to a trusted peer's `X-Forwarded-For`).
const WRITTEN_BY_KEYGATE: [&[u8]; 4] = [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"];

/// Framing and connection-level fields whose name has a `-`: another spelling of one
/// (`transfer_encoding`, `content.length`) frames nothing for keygate's parser, but a
/// backend that folds `_` and `.` into `-` would frame the body by it — a request
/// smuggled past keygate on the pooled upstream connection. Dropped in those spellings.
const FRAMING: [&[u8]; 5] =
    [b"content-length", b"transfer-encoding", b"keep-alive", b"proxy-connection", b"proxy-authorization"];

/// Whether a client-sent header must not reach the upstream: `x-keygate-*` in any
/// spelling; another spelling of a header keygate writes (`x_forwarded_for` would sit
/// beside keygate's own and be read as it by a CGI stack) or of a framing field
/// ([`FRAMING`]); and, from a peer that is not trusted, the client-address and URL
/// override headers in any spelling.
pub(super) fn must_drop(name: &HeaderName, peer_trusted: bool) -> bool {
    let bytes = name.as_str().as_bytes();
    // Cheap exit for most names: every name below starts with one of these letters.
    if !matches!(bytes.first(), Some(b'x' | b'f' | b't' | b'c' | b'k' | b'p')) {
        return false;
    }
    if is_keygate_header(name) {
        return true;
    }
    let respelled = bytes.iter().any(|&b| matches!(b, b'_' | b'.'));
    let written_or_framing = || WRITTEN_BY_KEYGATE.iter().chain(&FRAMING).any(|canonical| spelled_as(bytes, canonical));
    if respelled && written_or_framing() {
        return true;
    }
    (respelled || !peer_trusted) && CLIENT_OVERRIDES.iter().any(|canonical| spelled_as(bytes, canonical))
}

/// Removes every field [`must_drop`] names (nothing is allocated when there is none).
fn remove_spoofed(fields: &mut HeaderMap, peer_trusted: bool) {
    if fields.keys().any(|name| must_drop(name, peer_trusted)) {
        let spoofed: Vec<HeaderName> = fields.keys().filter(|name| must_drop(name, peer_trusted)).cloned().collect();
        for name in spoofed {
            fields.remove(name);
        }
    }
}

/// All that a forwarded CORS preflight carries upstream: the CORS request headers, `Host`,
/// and the headers keygate writes (kept after [`rewrite_request_headers`], so a trusted
/// proxy's `X-Forwarded-For` chain is kept). `Content-Length` and `Transfer-Encoding`
/// go too: the body is dropped.
pub const PREFLIGHT_HEADERS: [HeaderName; 9] = [
    HOST,
    HeaderName::from_static("origin"),
    HeaderName::from_static("access-control-request-method"),
    HeaderName::from_static("access-control-request-headers"),
    HeaderName::from_static("access-control-request-private-network"),
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// Keeps only the fields named in `names` (every value of each, in order).
fn keep_only(headers: &mut HeaderMap, names: &[HeaderName]) {
    let mut kept = HeaderMap::with_capacity(names.len());
    for name in names {
        for value in headers.get_all(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    *headers = kept;
}

/// The facts about the connection and request that the forwarding headers need.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    pub peer: IpAddr,
    /// Whether the client connection is TLS (`x-forwarded-proto`).
    pub tls: bool,
    /// The request's `x-request-id`, as it goes upstream.
    pub request_id: &'a HeaderValue,
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

/// Rewrites a request's headers for the upstream (docs/reference.md §4.3), for [`Outbound::new`] (and
/// the benchmarks: rewriting a header map forwards nothing): hop-by-hop first, then
/// `Authorization`, every spelling of `x-keygate-*` and of the headers keygate writes,
/// and (from an untrusted peer) the client-address and URL override headers
/// ([`must_drop`]); then keygate's own headers last, so that no client header can make
/// keygate drop them.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    context: &ForwardContext<'_>,
    principal: Option<&Principal>,
    keep_upgrade: bool,
) {
    strip_request_headers(headers, context, principal, keep_upgrade).insert_into(headers);
}

/// The first half of [`rewrite_request_headers`]: removes what must not go upstream
/// (hop-by-hop, `Authorization`, what [`must_drop`] names, and the client's own
/// `x-request-id` and `x-forwarded-*`, which keygate's replace) and answers what keygate
/// writes in their place.
pub(super) fn strip_request_headers(
    headers: &mut HeaderMap,
    context: &ForwardContext<'_>,
    principal: Option<&Principal>,
    keep_upgrade: bool,
) -> Written {
    // Built before anything is removed: the client's value is read as it arrived.
    let forwarded_for = forwarded_for(headers, context);
    remove_hop_by_hop(headers, keep_upgrade);
    remove_client_fields(headers, context.peer_trusted);
    Written {
        // Made once per key record by its store: shared, not copied (see IdentityHeaders).
        identity: principal.map(|principal| principal.identity_headers().clone()),
        request_id: context.request_id.clone(),
        forwarded_for,
        tls: context.tls,
        forwarded_host: context.host.clone(),
        host_missing: !headers.contains_key(HOST),
    }
}

/// Removes `Authorization`, the client's `x-request-id` and `x-forwarded-{for,proto,host}`
/// (keygate writes its own), and every field [`must_drop`] names, after one look at the
/// names: nothing is hashed for a name that is not there, and nothing is allocated when
/// there is nothing to drop.
fn remove_client_fields(fields: &mut HeaderMap, peer_trusted: bool) {
    let mut present = 0u8;
    let mut spoofed = false;
    for name in fields.keys() {
        present |= match name.as_str() {
            "authorization" => 1,
            "x-request-id" => 2,
            "x-forwarded-for" => 4,
            "x-forwarded-proto" => 8,
            "x-forwarded-host" => 16,
            _ => {
                spoofed |= must_drop(name, peer_trusted);
                0
            }
        };
    }
    let canonical = [AUTHORIZATION, X_REQUEST_ID, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
    for (i, name) in canonical.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            fields.remove(name);
        }
    }
    if spoofed {
        remove_spoofed(fields, peer_trusted);
    }
}

/// `X-Forwarded-For` for the upstream: the client's values (each trimmed, empty ones and
/// those that are not visible ASCII left out) when the peer is trusted, then the peer,
/// joined by `", "`. Built in one exactly sized buffer that becomes the value.
pub(super) fn forwarded_for(headers: &HeaderMap, context: &ForwardContext<'_>) -> Option<HeaderValue> {
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

/// A header value that takes over `bytes` (validated, not copied: no allocation when the
/// buffer is exactly full), or `None` if they are not a valid header value.
fn into_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(bytes)).ok()
}

/// An IP address as `Display` writes it, on the stack.
pub(super) struct IpText {
    /// The longest text `Ipv6Addr` writes is 39 bytes.
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub(super) fn new(ip: IpAddr) -> IpText {
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

    pub(super) fn as_bytes(&self) -> &[u8] {
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

/// A request body whose trailers (HTTP/1.1 chunked trailers, HTTP/2 trailing HEADERS) are
/// filtered like its headers: a client must not slip `x-keygate-tenant`, `Authorization`,
/// a forwarding header or a connection-level field past the header rewriting by sending it
/// after the body. Data frames pass untouched.
pub struct FilteredTrailers<B> {
    inner: B,
    peer_trusted: bool,
}

impl<B> FilteredTrailers<B> {
    pub fn new(inner: B, peer_trusted: bool) -> Self {
        FilteredTrailers { inner, peer_trusted }
    }
}

impl<B> Body for FilteredTrailers<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let trusted = self.peer_trusted;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                filter_trailers(&mut trailers, trusted);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Removes from request trailers what the header rewriting removes from headers
/// ([`must_drop`], `Authorization`), the hop-by-hop fields, and the fields keygate writes
/// itself, which belong in the head only (RFC 9110 6.5.1).
pub(super) fn filter_trailers(trailers: &mut HeaderMap, peer_trusted: bool) {
    remove_hop_by_hop(trailers, false);
    trailers.remove(AUTHORIZATION);
    trailers.remove(HOST);
    for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REQUEST_ID] {
        trailers.remove(name);
    }
    remove_spoofed(trailers, peer_trusted);
}
