//! Envoy `ext_authz` over gRPC: `envoy.service.auth.v3.Authorization/Check`, served on
//! the `[authorizer]` listener beside the HTTP conventions of [`super::handle`]. A request
//! there that is HTTP/2 with a gRPC content type is a Check call ([`handle`]); every
//! other request is an HTTP check.
//!
//! The decision is [`super::decide`]'s, on an [`Original`] rebuilt from
//! `CheckRequest.attributes.request.http` ([`original_request`]): its method, its path
//! (the request target, query included, normalised and refused by keygate's own rules
//! like every other), its host and its headers (the `headers` map, or `header_map` when
//! Envoy sends raw headers), and the body's declared length (its `content-length`, or
//! else `size`), which a route's `max_body_bytes` refuses with 413 as the proxy does; the
//! body itself stays Envoy's. The client address is `attributes.source.address` when the
//! peer (Envoy) is in `authorizer.trusted_proxies`, else the peer's own address.
//!
//! The answer ([`check_response`]) carries the decision in the shapes Envoy applies:
//! - allowed: `status` OK and an `OkHttpResponse` whose `headers` are the identity
//!   headers (`x-keygate-*`) and `x-request-id` to set on the request Envoy forwards,
//!   whose `headers_to_remove` are `authorization` and every client-sent `x-keygate-*`
//!   not set, and whose `response_headers_to_add` are the rate-limit headers;
//! - denied: `status` UNAUTHENTICATED for a 401, PERMISSION_DENIED for every other
//!   refusal (Envoy denies on any status but OK), and a `DeniedHttpResponse` with the
//!   proxy's own status, JSON body and headers (`WWW-Authenticate`, `Allow`,
//!   `Retry-After`, `RateLimit*`, `x-request-id`, `x-keygate-status`).
//!
//! Each Check is one decision, counted (`auth_decisions_total{mode="authorizer"}`,
//! `requests_total` by route, with keygate's HTTP status) and access-logged
//! (`listener: "authorizer"`, `protocol: "grpc"`) as an HTTP check is.
//!
//! The call is served directly on hyper's HTTP/2 request (the `wire` module), with
//! envoy-types' prost messages decoded and encoded here: no gRPC server framework sits in
//! between.
//! The message is read with a bound (5 bytes + [`max_message_bytes`]); the answer is one
//! DATA frame then the trailers `grpc-status: 0`. A malformed call is a trailers-only
//! gRPC error and no decision: a method other than POST HTTP 405 with `INTERNAL` (13),
//! another path `UNIMPLEMENTED` (12), a compressed message `UNIMPLEMENTED` (12), a
//! message declared over the limit `RESOURCE_EXHAUSTED` (8, from its prefix, the rest
//! unread), and no message, a truncated one, more than one, or one that is no
//! `CheckRequest` `INTERNAL` (13).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Address, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue as EnvoyHeader,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;

use super::{Allowed, Original, X_KEYGATE_STATUS, X_REQUEST_ID};
use crate::access_log::AccessLog;
use crate::admission::Denial;
use crate::body::ProxyBody;
use crate::connection::ConnectionInfo;
use crate::error::Refusal;
use crate::pipeline;
use crate::settings::Authorizer;
use crate::state::App;

mod wire;

/// gRPC status codes (google.rpc.Code) a CheckResponse carries.
const RPC_OK: i32 = 0;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAUTHENTICATED: i32 = 16;

/// Whether `request` on the authorizer listener is a gRPC call (HTTP/2, gRPC content
/// type), answered by [`handle`].
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    pipeline::is_grpc(request)
}

/// The largest CheckRequest read (tonic's default was 4 MiB): the headers it carries are
/// held to `server.max_header_bytes` anyway, so a few times that leaves room for the rest
/// of the attributes without letting a call make keygate buffer megabytes.
fn max_message_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).max(64 * 1024)
}

/// Answers one gRPC call on the authorizer listener: a Check call read off hyper's
/// request (the `wire` module), decided, and its CheckResponse framed; a malformed call
/// is a gRPC error and no decision.
pub async fn handle(app: Arc<App>, connection: ConnectionInfo, request: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    if let Err(refused) = wire::check_call(&request) {
        return refused.into_response();
    }
    let limit = max_message_bytes(app.settings().server.max_header_bytes);
    let (head, mut body) = request.into_parts();
    let check = match wire::read_message(&mut body, &head.headers, limit).await {
        Ok(message) => CheckRequest::decode(message),
        Err(refused) => return refused.into_response(),
    };
    drop(body);
    let check = match check {
        Ok(check) => check,
        Err(error) => {
            return wire::CallError::internal(format!("the message is not a CheckRequest: {error}")).into_response();
        }
    };
    let answer = decide_check(&app, connection.peer.ip(), started, &check).await;
    wire::message_response(&answer)
}

/// The decision on `check` from `peer`, as the CheckResponse Envoy applies.
async fn decide_check(app: &App, peer: IpAddr, started: Instant, check: &CheckRequest) -> CheckResponse {
    let policy = app.policy();
    let no_settings = Authorizer::default();
    let settings = app.settings().authorizer.as_ref().unwrap_or(&no_settings);
    let original = original_request(settings, peer, check, app.settings().server.max_header_bytes);
    let (request_id, method) = match &original {
        Ok(original) => (pipeline::request_id(original.request.headers()), original.request.method().clone()),
        Err(_) => (pipeline::request_id(&HeaderMap::new()), Method::GET),
    };
    let mut record = AccessLog::new(request_id, method, started, app.metrics().clone());
    record.authorizer = true;
    record.protocol = Some("grpc");
    record.usage = app.usage().cloned();
    let (decided, original) = match original {
        Ok(original) => (super::decide(app, &policy, &original, &mut record).await, Some(original)),
        Err(refusal) => (Err(refusal.into()), None),
    };
    check_response(decided, original.as_ref(), record).await
}

/// The request `check` asks about (see the module doc); a field keygate cannot read is
/// a 400, a head over `max_header_bytes` a 431, as the proxy answers them.
pub fn original_request(
    settings: &Authorizer,
    peer: IpAddr,
    check: &CheckRequest,
    max_header_bytes: usize,
) -> Result<Original, Refusal> {
    let attributes = check.attributes.as_ref();
    let http = attributes
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| Refusal::BadRequest("the Check request has no attributes.request.http".into()))?;
    let method = Method::from_bytes(http.method.as_bytes())
        .map_err(|_| Refusal::BadRequest("attributes.request.http.method is not an HTTP method".into()))?;
    let target =
        PathAndQuery::try_from(http.path.as_str()).ok().filter(|target| target.as_str().starts_with('/')).ok_or_else(
            || Refusal::BadRequest("attributes.request.http.path is not a path and query starting with `/`".into()),
        )?;

    let mut headers = HeaderMap::with_capacity(http.headers.len() + 1);
    let mut head_bytes = method.as_str().len() + target.as_str().len() + 12;
    let mut add = |name: &str, value: &[u8]| -> Result<(), Refusal> {
        // Envoy's pseudo-headers (`:authority`, `:path`, ...) are the fields read here.
        if name.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Refusal::BadRequest(format!("invalid header name in the Check request: {name:?}")))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| Refusal::BadRequest(format!("invalid value of header `{name}` in the Check request")))?;
        head_bytes += name.as_str().len() + value.len() + 4;
        headers.append(name, value);
        Ok(())
    };
    match &http.header_map {
        Some(raw) if http.headers.is_empty() => {
            for EnvoyHeader { key, value, raw_value } in &raw.headers {
                add(key, if raw_value.is_empty() { value.as_bytes() } else { raw_value })?;
            }
        }
        _ => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    if head_bytes > max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    // The body is Envoy's to keep: only its declared length is part of the decision (a
    // route's `max_body_bytes`, checked as the proxy checks a declared Content-Length).
    let declared = declared_length(&headers, http.size)?;
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    if let Some(length) = declared {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    if !http.host.is_empty() {
        let host = HeaderValue::from_str(&http.host)
            .map_err(|_| Refusal::BadRequest("attributes.request.http.host is not a host".into()))?;
        headers.insert(HOST, host);
    }

    let mut view = Request::new(());
    *view.method_mut() = method;
    *view.uri_mut() = Uri::from(target);
    *view.version_mut() = version(http);
    *view.headers_mut() = headers;
    let trusted = crate::connection::is_trusted(&settings.trusted_proxies, peer);
    let source = attributes.and_then(|a| a.source.as_ref()).and_then(|s| s.address.as_ref());
    let client = match source.and_then(|a| a.address.as_ref()) {
        Some(Address::SocketAddress(socket)) if trusted => socket.address.parse().unwrap_or(peer),
        _ => peer,
    };
    Ok(Original { request: view, client })
}

/// The original body's declared length: its `content-length` header (every value the
/// same number, as the proxy's HTTP parser requires; else a 400), or else
/// `attributes.request.http.size` when Envoy knows it (it is -1 when not). `None` for a
/// body of unknown length (chunked), which no decision here can measure.
fn declared_length(headers: &HeaderMap, size: i64) -> Result<Option<u64>, Refusal> {
    let mut declared = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let length = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        match (length, declared) {
            (Some(length), None) => declared = Some(length),
            (Some(length), Some(seen)) if length == seen => {}
            _ => return Err(Refusal::BadRequest("the Check request's content-length is not one length".into())),
        }
    }
    Ok(declared.or_else(|| u64::try_from(size).ok().filter(|&size| size > 0)))
}

/// The original request's HTTP version, as Envoy names it.
fn version(http: &HttpRequest) -> Version {
    match http.protocol.as_str() {
        "HTTP/1.0" => Version::HTTP_10,
        "HTTP/2" => Version::HTTP_2,
        "HTTP/3" => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// The CheckResponse for a decision; counts and logs it (the line is written when
/// `record` is dropped, here).
async fn check_response(
    decided: Result<Allowed, Box<Denial>>,
    original: Option<&Original>,
    mut record: AccessLog,
) -> CheckResponse {
    match decided {
        Ok(Allowed { principal, rate }) => {
            let mut upstream = HeaderMap::new();
            if let Some(principal) = &principal {
                super::write_identity(principal, &mut upstream);
            }
            upstream.insert(X_REQUEST_ID, record.request_id.header_value().clone());
            let headers_to_remove = match original {
                Some(original) => super::names_to_remove(original.request.headers(), &upstream),
                None => vec!["authorization"],
            };
            let mut downstream = HeaderMap::new();
            if let Some(rate) = &rate {
                rate.write_headers(&mut downstream);
            }
            record.principal = principal;
            finish(&mut record, StatusCode::OK);
            CheckResponse {
                status: Some(RpcStatus { code: RPC_OK, ..RpcStatus::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: options(&upstream),
                    headers_to_remove: headers_to_remove.into_iter().map(str::to_string).collect(),
                    response_headers_to_add: options(&downstream),
                    ..OkHttpResponse::default()
                })),
                ..CheckResponse::default()
            }
        }
        Err(denial) => {
            let Denial { refusal, principal, rate } = *denial;
            super::note_denial(&mut record, &refusal, principal);
            let status = refusal.status();
            let message = refusal.message();
            let response = refusal.into_response(&record.request_id, false);
            let (mut head, answer) = response.into_parts();
            if let Some(rate) = &rate {
                rate.write_headers(&mut head.headers);
            }
            head.headers.insert(X_REQUEST_ID, record.request_id.header_value().clone());
            head.headers.insert(X_KEYGATE_STATUS, HeaderValue::from(status.as_u16()));
            // Envoy frames the body it sends itself.
            head.headers.remove(CONTENT_LENGTH);
            head.headers.remove(TRANSFER_ENCODING);
            // A JSON body in memory: collecting it cannot wait nor fail.
            let body = answer.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            finish(&mut record, status);
            let code = if status == StatusCode::UNAUTHORIZED { RPC_UNAUTHENTICATED } else { RPC_PERMISSION_DENIED };
            CheckResponse {
                status: Some(RpcStatus { code, message, ..RpcStatus::default() }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: i32::from(status.as_u16()) }),
                    headers: options(&head.headers),
                    body: String::from_utf8_lossy(&body).into_owned(),
                })),
                ..CheckResponse::default()
            }
        }
    }
}

/// Counts the decision with keygate's HTTP status; the line is written on drop.
fn finish(record: &mut AccessLog, status: StatusCode) {
    record.record_request(status.as_u16());
    record.status = Some(status.as_u16());
    record.set_complete();
}

/// `headers` as Envoy's header options, each replacing any header of that name.
fn options(headers: &HeaderMap) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(name, value)| HeaderValueOption {
            header: Some(EnvoyHeader {
                key: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..HeaderValueOption::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request as AttrRequest};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn check(method: &str, path: &str, headers: &[(&str, &str)], source: &str) -> CheckRequest {
        let http = HttpRequest {
            method: method.into(),
            path: path.into(),
            host: "api.example".into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            protocol: "HTTP/1.1".into(),
            ..HttpRequest::default()
        };
        let source = Peer {
            address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: source.into(),
                    ..SocketAddress::default()
                })),
            }),
            ..Peer::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(source),
                request: Some(AttrRequest { http: Some(http), ..AttrRequest::default() }),
                ..AttributeContext::default()
            }),
        }
    }

    fn trusting(nets: &[&str]) -> Authorizer {
        Authorizer { trusted_proxies: nets.iter().map(|n| n.parse().unwrap()).collect(), ..Authorizer::default() }
    }

    #[test]
    fn the_original_is_read_from_the_http_attributes() {
        let c = check(
            "POST",
            "/v1/calls?x=1",
            &[(":authority", "ignored"), ("authorization", "Bearer k"), ("content-length", "3")],
            "203.0.113.9",
        );
        let o = original_request(&trusting(&["10.0.0.0/8"]), "10.0.0.5".parse().unwrap(), &c, 32 * 1024).unwrap();
        assert_eq!(o.request.method(), Method::POST);
        assert_eq!(o.request.uri(), "/v1/calls?x=1");
        assert_eq!(o.request.headers()[HOST], "api.example");
        assert_eq!(o.request.headers()["authorization"], "Bearer k");
        assert_eq!(o.request.headers()[CONTENT_LENGTH], "3", "the declared length is decided on");
        assert_eq!(o.client, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_declared_length_is_the_header_or_else_envoys_size() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let s = trusting(&[]);
        let length = |headers: &[(&str, &str)], size: i64| {
            let mut c = check("POST", "/v1/calls", headers, "");
            c.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap().size = size;
            let o = original_request(&s, peer, &c, 32 * 1024).map_err(|r| r.status())?;
            Ok::<_, StatusCode>(o.request.headers().get(CONTENT_LENGTH).map(|v| v.to_str().unwrap().to_string()))
        };
        assert_eq!(length(&[("content-length", "2048")], -1), Ok(Some("2048".into())));
        assert_eq!(length(&[], 4096), Ok(Some("4096".into())), "Envoy's size when no header says it");
        assert_eq!(length(&[], -1), Ok(None), "unknown (chunked): nothing to decide on");
        assert_eq!(length(&[], 0), Ok(None));
        assert_eq!(length(&[("transfer-encoding", "chunked")], -1), Ok(None));
        assert_eq!(length(&[("content-length", "12x")], -1), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn the_source_address_is_read_from_trusted_peers_only() {
        let c = check("GET", "/", &[], "203.0.113.9");
        let o = original_request(&trusting(&["10.0.0.0/8"]), "192.0.2.1".parse().unwrap(), &c, 32 * 1024).unwrap();
        assert_eq!(o.client, "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn unreadable_attributes_are_refused() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let s = trusting(&[]);
        for c in [
            check("GE T", "/", &[], ""),
            check("GET", "v1/calls", &[], ""),
            check("GET", "/", &[("bad name", "x")], ""),
            CheckRequest::default(),
        ] {
            assert_eq!(original_request(&s, peer, &c, 32 * 1024).err().unwrap().status(), StatusCode::BAD_REQUEST);
        }
        let big = "x".repeat(2000);
        let c = check("GET", "/", &[("x-big", &big)], "");
        assert_eq!(
            original_request(&s, peer, &c, 1024).err().unwrap().status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
}
