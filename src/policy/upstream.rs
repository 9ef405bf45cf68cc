//! `[upstreams.NAME]` as compiled: where a route's requests go, and how.

use std::time::Duration;

/// The protocol keygate speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// `http://…`: HTTP/1.1.
    Http1,
    /// `h2c://…`: HTTP/2 with prior knowledge (gRPC services).
    H2c,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub name: String,
    pub protocol: UpstreamProtocol,
    /// `host:port` (port defaulted to 80 when the URL has none). The URL may carry no
    /// path other than `/`, no query and no credentials: the upstream gets exactly the
    /// path that was authorised.
    pub authority: http::uri::Authority,
    /// Default 2s: 502 when the upstream cannot be reached in time.
    pub connect_timeout: Duration,
    /// Default 30s: 504 when response headers take longer.
    pub timeout: Duration,
    /// Default [`MAX_CONNECTIONS`]: requests in flight to this upstream at once, across
    /// the process's workers (for HTTP/1.1 the connections it holds busy; for h2c the
    /// streams). Past it, requests wait in a queue.
    pub max_connections: usize,
    /// Default [`QUEUE_TIMEOUT`]: how long a request waits for one of `max_connections`
    /// before it is answered 503 `upstream_busy`.
    pub queue_timeout: Duration,
}

/// The default of `max_connections`: well under the default file-descriptor limits
/// (1,024 and up), so that one slow upstream cannot take every descriptor keygate has.
pub const MAX_CONNECTIONS: usize = 256;
/// The default of `queue_timeout`.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
