//! The compiled policy: the types request code reads ([`Policy`], [`Plan`], [`Upstream`]),
//! whose invariants hold by construction (only `compile` builds them from a checked file).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::limit::PlanLimit;
use super::rate_headers::PlanHeaders;
use super::routes::RouteTable;
use super::upstream::Upstream;
use crate::path::PathOptions;

/// One compiled policy: routes, plans, upstreams and scopes. Requests load it once
/// (one `Arc`) and keep it to the end, so a reload never changes a request midway.
#[derive(Debug)]
pub struct Policy {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Hex SHA-256 of the file's bytes: reported by `/readyz`, and compared to skip
    /// reloads that change nothing.
    pub hash: String,
    /// `forward_preflight` (default false): CORS preflights go upstream without a key.
    pub forward_preflight: bool,
    /// `[paths]`.
    pub paths: PathOptions,
    /// `[scopes]`: every scope a key may hold → its description.
    pub scopes: BTreeMap<String, String>,
    /// `[plans.NAME]` by name.
    pub plans: HashMap<String, Plan>,
    /// `[upstreams.NAME]` by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub routes: RouteTable,
}

/// A plan: whether it may use the API, its rate limit, and its cap on keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    /// `api_access` (default true).
    pub api_access: bool,
    /// `limits = [...]` in order, or the one limit of `requests_per_minute = N` or
    /// `requests` per `window` (named [`super::LEGACY_LIMIT_NAME`]). Empty: no rate limit
    /// (allowed, with a warning from `check`, for plans that have API access).
    pub limits: Vec<PlanLimit>,
    /// `max_keys`; `None` is unlimited.
    pub max_keys: Option<u32>,
    /// `concurrency`: the most requests (and WebSocket tunnels) of a tenant in flight at
    /// once; `None` is no cap.
    pub concurrency: Option<u32>,
    /// The rate-limit response headers that are the same for every request under
    /// `limits`, built here once, with the limits themselves (`None` without a limit).
    pub rate_headers: Option<Arc<PlanHeaders>>,
}
