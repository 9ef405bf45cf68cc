//! What the server knows about the connection a request came on, and what keeps that
//! connection counted while a request or a WebSocket tunnel still uses it.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

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

/// Whether `peer` is one of `trusted` (`listen.trusted_proxies`). An IPv4 peer on a
/// dual-stack listener arrives as `::ffff:a.b.c.d`: it is matched as `a.b.c.d`.
pub fn is_trusted(trusted: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(is_trusted(&trusted, "10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&trusted, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(is_trusted(&trusted, "2001:db8::1".parse().unwrap()));
        assert!(!is_trusted(&trusted, "::ffff:11.1.2.3".parse().unwrap()));
        assert!(!is_trusted(&[], "10.1.2.3".parse().unwrap()));
    }
}
