//! Budgets per client address (docs/reference.md §4.7): failed authentications
//! (`server.failed_auth_per_minute`) and forwarded CORS preflights
//! (`server.preflights_per_minute`), and which address a request counts against
//! ([`client_address`]).
//!
//! A budget of N a minute is a bucket of N that refills continuously at N a minute (GCRA:
//! one "theoretical arrival time" per address, one atomic word): N at once, N a minute
//! sustained. Time is read from the injected [`Clock`]. The addresses are kept in a
//! bounded map ([`MAX_ADDRESSES`] each, forgotten after a minute unseen, when their
//! bucket is full again), so a flood of distinct addresses cannot grow memory without
//! bound; when the map is full, the addresses seen least often are forgotten first.
//!
//! Nothing here runs for a request whose key the cache answers as valid: the caller asks
//! a budget only on the paths that would cost something.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;

use crate::clock::Clock;
use crate::connection::is_trusted;
use crate::settings::Server;

/// At most this many addresses are tracked by each budget.
pub const MAX_ADDRESSES: u64 = 100_000;

/// An address unseen this long has a full bucket again (a bucket refills whole within a
/// minute), so forgetting it loses nothing.
const IDLE: Duration = Duration::from_secs(60);

const MICROS_PER_MINUTE: u64 = 60_000_000;

/// The two budgets of `[server]`, and the trusted proxies that decide a request's address.
pub struct AddressBudgets {
    trusted_proxies: Vec<IpNet>,
    /// `failed_auth_per_minute`; `None` when 0.
    pub failed_auth: Option<Budget>,
    /// `preflights_per_minute`; `None` when 0.
    pub preflights: Option<Budget>,
}

impl AddressBudgets {
    pub fn new(server: &Server, trusted_proxies: &[IpNet], clock: Arc<dyn Clock>) -> AddressBudgets {
        let budget = |per_minute: u32| (per_minute > 0).then(|| Budget::new(per_minute, MAX_ADDRESSES, clock.clone()));
        AddressBudgets {
            trusted_proxies: trusted_proxies.to_vec(),
            failed_auth: budget(server.failed_auth_per_minute),
            preflights: budget(server.preflights_per_minute),
        }
    }

    /// No budget at all.
    pub fn off() -> AddressBudgets {
        AddressBudgets { trusted_proxies: Vec::new(), failed_auth: None, preflights: None }
    }

    /// The address a request from `peer` counts against: see [`client_address`].
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_address(&self.trusted_proxies, peer, headers)
    }
}

/// The client address of a request from `peer`: the peer, canonical (`::ffff:a.b.c.d` is
/// `a.b.c.d`). When the peer is in `trusted` (`listen.trusted_proxies`), its
/// `X-Forwarded-For` decides: read right to left (the last header line first), the first
/// entry that is not itself a trusted proxy; if every entry is one, the left-most; empty
/// entries are skipped. An entry that is not an IP address (`1.2.3.4`, `2001:db8::1`, or
/// with a port, `1.2.3.4:5678`, `[2001:db8::1]:5678`) met before that, or a value that is
/// not text, and the answer is the peer: a trusted proxy's header that cannot be read
/// names no one.
pub fn client_address(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let mut leftmost = None;
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else { return peer };
        for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some(address) = parse_entry(entry) else { return peer };
            if !is_trusted(trusted, address) {
                return address;
            }
            leftmost = Some(address);
        }
    }
    leftmost.unwrap_or(peer)
}

/// One `X-Forwarded-For` entry: an IP address, bare or with a port; canonical.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let address = match entry.parse::<IpAddr>() {
        Ok(address) => address,
        Err(_) => entry.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(address.to_canonical())
}

/// N a minute per address: a bucket of N refilled at N a minute.
pub struct Budget {
    per_minute: u32,
    /// Microseconds one spends (a minute / N).
    interval: u64,
    /// How far ahead of now an address's arrival time may run: N − 1 intervals.
    burst: u64,
    /// Address → theoretical arrival time, µs since the epoch.
    addresses: moka::sync::Cache<IpAddr, Arc<AtomicU64>>,
    clock: Arc<dyn Clock>,
}

impl Budget {
    /// `per_minute` (at least 1) for each of at most `capacity` addresses.
    pub fn new(per_minute: u32, capacity: u64, clock: Arc<dyn Clock>) -> Budget {
        let per_minute = per_minute.max(1);
        let interval = (MICROS_PER_MINUTE / u64::from(per_minute)).max(1);
        Budget {
            per_minute,
            interval,
            burst: interval * u64::from(per_minute - 1),
            addresses: moka::sync::Cache::builder().max_capacity(capacity).time_to_idle(IDLE).build(),
            clock,
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Spends one of `address`'s budget. `Err` with the whole seconds (at least 1) until
    /// one is back when it is spent; a refusal spends nothing.
    pub fn take(&self, address: IpAddr) -> Result<(), u64> {
        let now = self.clock.now_millis().saturating_mul(1_000);
        let arrival = self.addresses.get_with(address, || Arc::new(AtomicU64::new(0)));
        let mut seen = arrival.load(Ordering::Acquire);
        loop {
            let start = seen.max(now);
            let ahead = start - now;
            if ahead > self.burst {
                return Err((ahead - self.burst).div_ceil(1_000_000).max(1));
            }
            let next = start.saturating_add(self.interval);
            match arrival.compare_exchange_weak(seen, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => seen = actual,
            }
        }
    }

    /// Gives back one [`Budget::take`] spent for nothing (the key was valid after all, or
    /// the store could not answer).
    pub fn give_back(&self, address: IpAddr) {
        if let Some(arrival) = self.addresses.get(&address) {
            let interval = self.interval;
            let _ = arrival.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(interval)));
        }
    }

    /// Addresses tracked now (for tests of the bound).
    pub fn tracked(&self) -> u64 {
        self.addresses.run_pending_tasks();
        self.addresses.entry_count()
    }
}

#[cfg(test)]
mod tests;
