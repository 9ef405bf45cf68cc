//! The route table: normalised path + method → route (SPEC 2.2 "Matching").
//! Longest prefix on a segment boundary, case-sensitive; then method; no fall-back to
//! a shorter prefix. Lookup costs one hash probe per path segment, whatever the number
//! of routes.

use std::sync::Arc;

use http::Method;

use super::Upstream;
use crate::settings::OnStoreError;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Starts with `/`, no trailing `/` (except the root route `/`).
    pub prefix: String,
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
}

/// Whether a route needs a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    /// The default: a key holding every one of these scopes (possibly none).
    Key { scopes: Vec<String> },
    /// `auth = "none"`: public, no key, no limit.
    None,
}

/// `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    Enforce,
    /// Decide and record, but let every request through.
    Shadow,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    /// A route has the longest matching prefix but none takes this method; `allow`
    /// lists the methods that prefix takes, for the `Allow` header.
    MethodNotAllowed { prefix: &'a str, allow: Vec<Method> },
    NotFound,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table. The caller has already validated the routes (no two routes with
    /// the same prefix and an overlapping method).
    pub fn new(routes: Vec<Route>) -> Self {
        let _ = routes;
        todo!("policy helper")
    }

    /// Finds the route for an already normalised path.
    pub fn find(&self, path: &str, method: &Method) -> RouteMatch<'_> {
        let _ = (path, method);
        todo!("policy helper")
    }

    /// Every route, in the order of the file.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
