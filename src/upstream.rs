//! Forwarding (docs/reference.md §4.3): per worker, its own HTTP/1.1 connections to each
//! upstream — a request with no body that is not an upgrade (most API calls) on keygate's
//! own lean HTTP/1.1 exchange, whose response body reads the upstream socket from the
//! task that sends it to the client ([`fast`]), any other on hyper's connection-level
//! client ([`http1`]), each path with its own idle connections; h2c upstreams: a pooled
//! hyper-util client — chosen in [`pool`]; hop-by-hop
//! header removal both ways (RFC 9110 7.6.1, [`hop_by_hop`]), the request as it goes
//! upstream with the identity and forwarding headers keygate adds ([`outbound`]), the
//! connect and response-header timeouts that become 502 and 504, and the WebSocket
//! tunnel (docs/reference.md §4.1, [`tunnel`]). An upstream that answers malformed HTTP
//! gets its client a 502, and a connection whose answer gave any doubt is never used
//! again ([`response_check`], [`connector`]).
//!
//! Only an admitted request can be sent: [`Upstreams::send`] takes an [`Outbound`], and
//! an [`Outbound`] is made only from a [`crate::admission::Admission`], whose identity
//! headers it writes.

pub mod connector;
pub mod fast;
pub mod hop_by_hop;
pub mod http1;
mod idle;
pub mod limit;
pub mod outbound;
pub mod pool;
pub mod response_check;
pub mod tunnel;

pub use fast::FastBody;
pub use hop_by_hop::remove_hop_by_hop;
pub use limit::ConnectionPermit;
pub use outbound::{rewrite_request_headers, FilteredTrailers, ForwardContext, Outbound};
pub use pool::{UpstreamBody, UpstreamError, Upstreams};
pub use tunnel::{is_websocket_upgrade, switched_to_websocket, Tunnel};

#[cfg(test)]
mod tests;
