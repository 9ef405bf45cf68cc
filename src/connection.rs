//! What the server knows about the connection a request came on, and what keeps that
//! connection counted while a request or a WebSocket tunnel still uses it.

use std::sync::Arc;

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
    /// What keeps the connection counted (against `max_connections`, among its worker's
    /// open connections, in `keygate_connections_active`) while anything holds a clone:
    /// the connection's task, and a WebSocket tunnel that outlives it.
    pub hold: Option<ConnectionHold>,
}

/// See [`ConnectionInfo::hold`].
pub type ConnectionHold = Arc<dyn std::any::Any + Send + Sync>;
