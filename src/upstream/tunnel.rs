//! The WebSocket tunnel (docs/reference.md §4.1): recognising a handshake, and copying bytes both ways
//! once the upstream switched protocols.
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

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, Method, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::hop_by_hop::lists_token;
use crate::access_log::AccessLog;
use crate::connection::ConnectionHold;
use crate::io::ObservedIo;

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
