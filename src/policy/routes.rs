//! The route table: normalised path + method → route (docs/reference.md §2.2 "Matching").
//! Longest prefix on a segment boundary, case-sensitive; then method; no fall-back to
//! a shorter prefix. Lookup costs one hash probe per path segment, whatever the number
//! of routes.

use crate::hashing::{FastMap, FastState};
use std::sync::{Arc, OnceLock};

use http::Method;

use super::upstream::Upstream;
use crate::settings::OnStoreError;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Starts with `/`, no trailing `/` (except the root route `/`). Shared: the access
    /// line of each request keeps it without a copy.
    pub prefix: Arc<str>,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub auth: RouteAuth,
    pub upstream: Arc<Upstream>,
    /// What an admitted request counts against the plan's limit (default 1, positive).
    pub cost: u64,
    /// 413 past this many body bytes (default: no limit).
    pub max_body_bytes: Option<u64>,
    pub mode: RouteMode,
    /// Overrides `[limits] on_store_error` for this route.
    pub on_store_error: Option<OnStoreError>,
    /// What the request path resolves once per route and keeps with it (the pipeline:
    /// the route's metric children, so that a request counts without hashing labels).
    /// Typed by its user, above this floor: the policy only holds it.
    pub resolved: OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Whether a route needs a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    /// The default: a key holding every one of these scopes (possibly none).
    Key { scopes: Vec<String> },
    /// `auth = "none"`: public, no key, no limit.
    None,
}

/// `mode`: also the `mode` label of `auth_decisions_total` and the access log's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteMode {
    Enforce,
    /// Decide and record, but let every request through.
    Shadow,
}

impl RouteMode {
    /// Every mode, in declaration order.
    pub const ALL: [RouteMode; 2] = [RouteMode::Enforce, RouteMode::Shadow];

    /// Position in [`RouteMode::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label and log value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteMode::Enforce => "enforce",
            RouteMode::Shadow => "shadow",
        }
    }
}

impl std::fmt::Display for RouteMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    /// A route has the longest matching prefix but none takes this method; `allow`
    /// lists the methods that prefix takes, for the `Allow` header.
    MethodNotAllowed {
        prefix: &'a str,
        allow: Vec<Method>,
    },
    NotFound,
}

/// The routes that share one prefix: at most one of them takes a given method (the policy
/// validation guarantees it; should it not hold, the first in file order wins).
#[derive(Debug)]
struct Group {
    /// The shared prefix, kept so a 405 can name it.
    prefix: String,
    /// The group's routes, in the order of the file.
    routes: Vec<Arc<Route>>,
    /// The union of the group's methods, sorted and deduplicated: the `Allow` header of a
    /// 405. Empty, and never used, when a route of the group takes every method.
    allow: Vec<Method>,
}

impl Group {
    fn route_for(&self, method: &Method) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| match &route.methods {
            None => true,
            Some(methods) => methods.contains(method),
        })
    }
}

/// The compiled route table.
///
/// Routes are grouped by their exact prefix in a hash map. A lookup probes the path
/// itself and then each of its prefixes that ends just before a `/`, longest first, so
/// it costs one hash probe per path segment, however many routes there are; probes
/// longer than the longest prefix in the table are skipped without hashing.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Prefix → the routes with exactly that prefix.
    groups: FastMap<String, Group>,
    /// The length of the longest prefix: longer candidates cannot match.
    longest: usize,
}

impl RouteTable {
    /// Builds the table. The caller has already validated the routes (no two routes with
    /// the same prefix and an overlapping method); if two do overlap anyway, the first in
    /// file order takes the method.
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut groups: FastMap<String, Group> = FastMap::with_capacity_and_hasher(routes.len(), FastState::default());
        let mut longest = 0;
        for route in &routes {
            longest = longest.max(route.prefix.len());
            groups
                .entry(route.prefix.to_string())
                .or_insert_with(|| Group { prefix: route.prefix.to_string(), routes: Vec::new(), allow: Vec::new() })
                .routes
                .push(Arc::clone(route));
        }
        for group in groups.values_mut() {
            let takes_all = group.routes.iter().any(|r| r.methods.is_none());
            if !takes_all {
                let mut allow: Vec<Method> =
                    group.routes.iter().flat_map(|r| r.methods.iter().flatten().cloned()).collect();
                allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                allow.dedup();
                group.allow = allow;
            }
        }
        RouteTable { routes, groups, longest }
    }

    /// Finds the route for an already normalised path (docs/reference.md §2.2 "Matching"): the longest
    /// prefix that matches on a segment boundary, then the route of that prefix that takes
    /// `method`. There is no fall-back to a shorter prefix: a prefix that matches but
    /// does not take the method answers [`RouteMatch::MethodNotAllowed`].
    pub fn find(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let Some(group) = self.longest_group(path) else {
            return RouteMatch::NotFound;
        };
        match group.route_for(method) {
            Some(route) => RouteMatch::Found(route),
            None => RouteMatch::MethodNotAllowed { prefix: &group.prefix, allow: group.allow.clone() },
        }
    }

    /// The group of the longest prefix of `path` that ends at a segment boundary: the
    /// whole path, or the path up to (not including) one of its `/`; the root prefix `/`
    /// is the path up to its first `/`, kept.
    fn longest_group(&self, path: &str) -> Option<&Group> {
        if self.groups.is_empty() {
            return None;
        }
        if path.len() <= self.longest {
            if let Some(group) = self.groups.get(path) {
                return Some(group);
            }
        }
        for (i, _) in path.match_indices('/').rev() {
            let candidate = if i == 0 { "/" } else { &path[..i] };
            if candidate.len() > self.longest {
                continue;
            }
            if let Some(group) = self.groups.get(candidate) {
                return Some(group);
            }
        }
        None
    }

    /// Every route, in the order of the file.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table holds no route (a validated policy never does).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests;
