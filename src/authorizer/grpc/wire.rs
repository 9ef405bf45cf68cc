//! The wire of a unary gRPC call (gRPC over HTTP/2), served directly on hyper's request:
//! which calls are accepted ([`check_call`]), the one length-prefixed message read with a
//! bound ([`read_message`]), and the two shapes of answer: a message then
//! `grpc-status: 0` in the trailers ([`message_response`]), or an error in the headers of
//! a "trailers-only" answer ([`CallError::into_response`]).
//!
//! A message is a 1-byte compressed flag, a 4-byte big-endian length, and that many bytes
//! of protobuf. A call carries exactly one. The errors, none of them a decision:
//! - a method other than POST: HTTP 405 and `INTERNAL` (13), as grpc-go answers it;
//! - a path other than the Check method's: `UNIMPLEMENTED` (12), as tonic answers it;
//! - a compressed message (flag set): `UNIMPLEMENTED` (12), with
//!   `grpc-accept-encoding: identity` (keygate does not decompress);
//! - a declared length over the limit: `RESOURCE_EXHAUSTED` (8), answered as soon as the
//!   prefix arrives, without reading the rest;
//! - no message, a truncated one, bytes after it (a second message), a flag other than
//!   0 or 1, or bytes that do not decode: `INTERNAL` (13);
//! - a body that fails (the client reset the stream): `CANCELLED` (1), which the client
//!   has stopped waiting for.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{self, DataThenTrailers, ProxyBody};

/// The one method served.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// gRPC status codes (google.rpc.Code) of calls answered without a decision.
pub const CANCELLED: u32 = 1;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;

const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");

/// The length prefix of a message.
const PREFIX: usize = 5;

/// A call refused before any decision: its answer's HTTP status, gRPC code and message.
#[derive(Debug)]
pub struct CallError {
    pub http: StatusCode,
    pub code: u32,
    pub message: Cow<'static, str>,
    /// A compressed message: the answer names the encoding keygate reads.
    compressed: bool,
}

impl CallError {
    fn new(code: u32, message: impl Into<Cow<'static, str>>) -> Self {
        CallError { http: StatusCode::OK, code, message: message.into(), compressed: false }
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        CallError::new(INTERNAL, message)
    }

    /// The trailers-only answer: HTTP 200 (405 for a method other than POST),
    /// `content-type: application/grpc`, `grpc-status` and a percent-encoded
    /// `grpc-message` in the headers, no body.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = self.http;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, GRPC);
        headers.insert(GRPC_STATUS, HeaderValue::from(self.code));
        if let Ok(message) = HeaderValue::from_str(&crate::encoding::grpc_message(&self.message)) {
            headers.insert(GRPC_MESSAGE, message);
        }
        if self.compressed {
            headers.insert(GRPC_ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        response
    }
}

/// Whether `request` calls the Check method the way gRPC does (a POST of its path).
pub fn check_call<B>(request: &Request<B>) -> Result<(), CallError> {
    if request.method() != Method::POST {
        let message = format!("a gRPC call is a POST, not a {}", request.method());
        return Err(CallError { http: StatusCode::METHOD_NOT_ALLOWED, ..CallError::internal(message) });
    }
    if request.uri().path() != CHECK_PATH {
        let message = format!("unknown method {}: this server answers {CHECK_PATH} only", request.uri().path());
        return Err(CallError::new(UNIMPLEMENTED, message));
    }
    Ok(())
}

/// The bytes of the call's one message (prefix removed), reading at most `limit` + 5
/// bytes of `body` (see the module doc for the errors). `headers` are the call's, for
/// the encoding a compressed message names.
pub async fn read_message<B>(body: &mut B, headers: &HeaderMap, limit: usize) -> Result<Bytes, CallError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut held = Held::default();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(CallError::new(CANCELLED, "the request body failed"));
        };
        let Ok(data) = frame.into_data() else {
            // Request trailers carry nothing keygate reads.
            continue;
        };
        held.push(data, headers, limit)?;
    }
    held.into_message()
}

/// The answer to a decided call: HTTP 200, `content-type: application/grpc`, one data
/// frame (the prefix and `message`, encoded once into one buffer), then the trailers
/// `grpc-status: 0`.
pub fn message_response<M: prost::Message>(message: &M) -> Response<ProxyBody> {
    let len = message.encoded_len();
    let Ok(prefix) = u32::try_from(len) else {
        return CallError::internal("the answer is too large to frame").into_response();
    };
    let mut framed = Vec::with_capacity(PREFIX + len);
    framed.push(0);
    framed.extend_from_slice(&prefix.to_be_bytes());
    if message.encode(&mut framed).is_err() {
        // A Vec grows as needed: encoding into one cannot run out of room.
        return CallError::internal("the answer could not be encoded").into_response();
    }
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let mut response = Response::new(DataThenTrailers::new(Bytes::from(framed), trailers).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, GRPC);
    response
}

/// The body read so far: most calls arrive in one DATA frame, held as it came (no copy);
/// a message in several frames is gathered into one buffer.
#[derive(Default)]
struct Held {
    first: Bytes,
    more: Option<BytesMut>,
    /// The message's length, once the prefix has arrived.
    declared: Option<usize>,
}

impl Held {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    /// Takes `data` in, failing as soon as the prefix says the call is refused or the
    /// bytes run past the message: never holds more than 5 bytes + the declared length,
    /// itself at most `limit`.
    fn push(&mut self, data: Bytes, headers: &HeaderMap, limit: usize) -> Result<(), CallError> {
        let total = self.len() + data.len();
        if self.declared.is_none() && total >= PREFIX {
            let mut prefix = [0u8; PREFIX];
            let held = self.more.as_deref().unwrap_or(&self.first);
            let from_held = held.len().min(PREFIX);
            prefix[..from_held].copy_from_slice(&held[..from_held]);
            prefix[from_held..].copy_from_slice(&data[..PREFIX - from_held]);
            self.declared = Some(check_prefix(prefix, headers, limit)?);
        }
        if let Some(declared) = self.declared {
            if total > PREFIX + declared {
                return Err(CallError::internal("more than one message in a unary call"));
            }
        }
        if let Some(more) = &mut self.more {
            more.extend_from_slice(&data);
        } else if self.first.is_empty() {
            self.first = data;
        } else {
            let mut more = BytesMut::with_capacity(self.declared.map_or(total, |d| PREFIX + d));
            more.extend_from_slice(&self.first);
            more.extend_from_slice(&data);
            self.first = Bytes::new();
            self.more = Some(more);
        }
        Ok(())
    }

    /// The message, once the body has ended.
    fn into_message(self) -> Result<Bytes, CallError> {
        let total = self.len();
        let Some(declared) = self.declared else {
            return Err(CallError::internal(if total == 0 {
                "no message in the call"
            } else {
                "the message's length prefix is truncated"
            }));
        };
        if total < PREFIX + declared {
            return Err(CallError::internal(format!(
                "the message is truncated: {} of {declared} bytes",
                total - PREFIX
            )));
        }
        let mut message = self.more.map_or(self.first, BytesMut::freeze);
        message.advance(PREFIX);
        Ok(message)
    }
}

/// The declared length of a message whose prefix is `prefix`, if keygate reads it.
fn check_prefix(prefix: [u8; PREFIX], headers: &HeaderMap, limit: usize) -> Result<usize, CallError> {
    match prefix[0] {
        0 => {}
        1 => {
            let encoding = headers.get(GRPC_ENCODING).map_or("none", |v| v.to_str().unwrap_or("?"));
            let message = format!("compressed messages are not read (grpc-encoding: {encoding}); send identity");
            return Err(CallError { compressed: true, ..CallError::new(UNIMPLEMENTED, message) });
        }
        flag => return Err(CallError::internal(format!("invalid compressed flag {flag}"))),
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared > limit {
        let message = format!("the message is {declared} bytes, over the limit of {limit}");
        return Err(CallError::new(RESOURCE_EXHAUSTED, message));
    }
    Ok(declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    async fn read(chunks: Vec<Vec<u8>>, limit: usize) -> Result<Bytes, CallError> {
        let frames =
            chunks.into_iter().map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c))));
        let mut body = StreamBody::new(futures_util::stream::iter(frames));
        read_message(&mut body, &HeaderMap::new(), limit).await
    }

    #[tokio::test]
    async fn a_message_split_anywhere_reads_whole() {
        let whole = framed(0, b"hello, keygate");
        for cut in 0..=whole.len() {
            for second in cut..=whole.len() {
                let chunks = vec![whole[..cut].to_vec(), whole[cut..second].to_vec(), whole[second..].to_vec()];
                assert_eq!(&read(chunks, 64).await.unwrap()[..], b"hello, keygate", "cut at {cut}, {second}");
            }
        }
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused_with_their_codes() {
        let code = |r: Result<Bytes, CallError>| r.unwrap_err().code;
        assert_eq!(code(read(vec![], 64).await), INTERNAL);
        assert_eq!(code(read(vec![vec![0, 0, 0]], 64).await), INTERNAL);
        assert_eq!(code(read(vec![framed(0, b"abc")[..6].to_vec()], 64).await), INTERNAL);
        let two = [framed(0, b"a"), framed(0, b"b")].concat();
        assert_eq!(code(read(vec![two], 64).await), INTERNAL);
        assert_eq!(code(read(vec![framed(2, b"a")], 64).await), INTERNAL);
        assert_eq!(code(read(vec![framed(1, b"a")], 64).await), UNIMPLEMENTED);
        assert_eq!(code(read(vec![framed(0, &[7; 65])], 64).await), RESOURCE_EXHAUSTED);
        assert_eq!(read(vec![framed(0, &[7; 64])], 64).await.unwrap().len(), 64);
        assert_eq!(read(vec![framed(0, b"")], 64).await.unwrap().len(), 0, "an empty message is a message");
    }
}
