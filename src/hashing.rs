//! The hash maps of the request path, with a fast seeded hasher ([`foldhash`]) in place of
//! the standard SipHash: a lookup hashes its key on every request (a plan's name, a route
//! prefix, a tenant id, a key's digest), and SipHash costs several times foldhash's on
//! such short keys. foldhash is seeded per process, as the standard hasher is; these maps
//! are filled from what keygate stores and loads (the policy, the key store, the tenants
//! it has counted), never with entries a client chooses, so there is nothing for a
//! client to collide on.

use std::collections::HashMap;

/// The hasher of [`FastMap`].
pub type FastState = foldhash::fast::RandomState;

/// A `HashMap` with [`FastState`]: build one with `FastMap::default()` or
/// `FastMap::with_capacity_and_hasher(n, FastState::default())`.
pub type FastMap<K, V> = HashMap<K, V, FastState>;
