//! Every metric keygate exports (docs/reference.md §5.1), registered in one place on an explicit
//! registry, with bounded labels only.
//!
//! Callers cannot invent label values: the fixed sets are enums, and the open ones are
//! bounded by construction (`route` is a configured prefix or `none`, `method` a standard
//! method or `OTHER`, `status` an HTTP status, `upstream` a configured name). No key,
//! tenant or raw path is ever a label: one tenant with a million keys must not take
//! Prometheus down.
//!
//! The fixed sets' children are made once, at start-up. A route's children
//! ([`RouteMetrics`]) are resolved once per route and kept on it, so that a request
//! counts without hashing labels; they are made the first time they are used, so what is
//! exported is what labelled lookups would have made.

mod usage;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::AuthResult;
use crate::policy::RouteMode;
use crate::settings::OnStoreError;

/// Every metric name starts with `keygate_`.
const NAMESPACE: &str = "keygate";

/// Latency buckets for a proxy, in seconds: 100 µs (a cached-key decision) to 10 s (a
/// slow upstream).
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Declares a label enum: its variants, their label values, and `ALL` in order.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order (the order of the cached children).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Position in `ALL` (the declaration order): where its cached child is.
            const fn index(self) -> usize {
                self as usize
            }

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// The `mode` label of `auth_decisions_total`: the route's mode for a proxied request,
    /// `authorizer` for every decision answered on the authorizer listener (whatever the
    /// route's mode; its access line keeps the route's).
    DecisionMode {
        Enforce => "enforce",
        Shadow => "shadow",
        Authorizer => "authorizer",
    }
}

impl From<RouteMode> for DecisionMode {
    fn from(mode: RouteMode) -> Self {
        match mode {
            RouteMode::Enforce => DecisionMode::Enforce,
            RouteMode::Shadow => DecisionMode::Shadow,
        }
    }
}

/// `ratelimit_store_fallback_total{action}`: the `on_store_error` applied to a decision
/// taken without the store, labelled with its configuration name. The limiter passes the
/// setting itself: one type, no mirror enum to keep in step.
const STORE_FALLBACK_ACTIONS: &[OnStoreError] = &[OnStoreError::Local, OnStoreError::Allow, OnStoreError::Deny];

/// The `action` label of `action`, and its position in [`STORE_FALLBACK_ACTIONS`].
const fn store_fallback_label(action: OnStoreError) -> (&'static str, usize) {
    match action {
        OnStoreError::Local => ("local", 0),
        OnStoreError::Allow => ("allow", 1),
        OnStoreError::Deny => ("deny", 2),
    }
}

label_enum! {
    /// `key_cache_lookups_total{result}`.
    CacheResult {
        Hit => "hit",
        Miss => "miss",
        /// A cached "no such key".
        NegativeHit => "negative_hit",
        /// Expired entry served because the store is unreachable (`stale_if_error`).
        Stale => "stale",
    }
}

label_enum! {
    /// `store_errors_total{op}`: what keygate was doing when the store failed.
    StoreOp {
        Lookup => "lookup",
        Limit => "limit",
        Write => "write",
        Subscribe => "subscribe",
    }
}

label_enum! {
    /// `config_reloads_total{result}`.
    ReloadResult {
        Success => "success",
        Failure => "failure",
    }
}

/// The values of the `method` label, in [`method_index`] order.
const METHOD_LABELS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER"];

/// The `method` label: the standard methods (RFC 9110 9.3, and PATCH) as themselves,
/// anything else `OTHER` so that a client cannot mint label values.
pub fn method_label(method: &http::Method) -> &'static str {
    METHOD_LABELS[method_index(method)]
}

/// The position of `method`'s label in [`METHOD_LABELS`].
fn method_index(method: &http::Method) -> usize {
    use http::Method;
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// The statuses whose `requests_total` children a [`RouteMetrics`] keeps at hand; others
/// are looked up by label.
const COMMON_STATUSES: [u16; 29] = [
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431,
    499, 500, 501, 502, 503, 504,
];

/// The position of `status` in [`COMMON_STATUSES`].
fn status_index(status: u16) -> Option<usize> {
    COMMON_STATUSES.iter().position(|&s| s == status)
}

/// All metrics, registered on their own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    /// Requests answered 503 `upstream_busy` (the upstream's `max_connections` all in use
    /// for its `queue_timeout`), by upstream.
    upstream_busy: IntCounterVec,
    /// `[result][mode]`, in `AuthResult::ALL` × `DecisionMode::ALL` order.
    auth_decisions: Vec<[IntCounter; 3]>,
    store_fallback: Vec<IntCounter>,
    cache_lookups: Vec<IntCounter>,
    store_errors: Vec<IntCounter>,
    config_reloads: Vec<IntCounter>,
    store_up: IntGauge,
    last_reload_success: Gauge,
    config: ConfigState,
    cert_expiry: Gauge,
    connections_active: IntGauge,
    failed_auth_limited: IntCounter,
    preflights_limited: IntCounter,
    /// Requests refused with 429 by their plan's `concurrency`.
    concurrency_refused: IntCounter,
    /// Concurrency slots this replica's requests hold now.
    concurrency_slots: IntGauge,
    usage: usage::UsageMetrics,
}

/// Registers `collector` on `registry`, at start-up, where a failure is a bug.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry.register(Box::new(collector.clone())).expect("metrics: fixed names and labels register once");
    collector
}

/// A counter vector with one label whose values are `values`, each created at 0.
fn fixed_counter<T: Copy>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[T],
    as_str: fn(T) -> &'static str,
) -> Vec<IntCounter> {
    let vec = register(
        registry,
        IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), &[label]).expect("metrics: valid counter"),
    );
    values.iter().map(|&v| vec.with_label_values(&[as_str(v)])).collect()
}

impl Metrics {
    /// Registers every metric of docs/reference.md §5.1 on a fresh registry, each fixed-set counter at
    /// 0 for each of its values, `build_info` at 1 and `store_up` at 1 (the breaker starts
    /// closed). Panics only if registration fails, which fixed names rule out.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        let requests = register(
            r,
            IntCounterVec::new(
                Opts::new("requests_total", "Requests answered, by route prefix, method and status.")
                    .namespace(NAMESPACE),
                &["route", "method", "status"],
            )
            .expect("metrics: valid requests_total"),
        );
        let request_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from request head to response head, by route prefix.",
                )
                .namespace(NAMESPACE)
                .buckets(DURATION_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("metrics: valid request_duration_seconds"),
        );
        let upstream_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "upstream_duration_seconds",
                    "Time the upstream took to send its response head, by upstream.",
                )
                .namespace(NAMESPACE)
                .buckets(DURATION_BUCKETS.to_vec()),
                &["upstream"],
            )
            .expect("metrics: valid upstream_duration_seconds"),
        );

        let upstream_busy = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "upstream_busy_total",
                    "Requests answered 503 because the upstream's max_connections were all in use for its \
                     queue_timeout, by upstream.",
                )
                .namespace(NAMESPACE),
                &["upstream"],
            )
            .expect("metrics: valid upstream_busy_total"),
        );

        let auth_vec = register(
            r,
            IntCounterVec::new(
                Opts::new("auth_decisions_total", "Authentication and authorisation outcomes.").namespace(NAMESPACE),
                &["result", "mode"],
            )
            .expect("metrics: valid auth_decisions_total"),
        );
        let auth_decisions = AuthResult::ALL
            .iter()
            .map(|res| {
                // Indexed by `DecisionMode::index`: Enforce, Shadow, Authorizer.
                [DecisionMode::Enforce, DecisionMode::Shadow, DecisionMode::Authorizer]
                    .map(|mode| auth_vec.with_label_values(&[res.as_str(), mode.as_str()]))
            })
            .collect();

        let store_fallback = fixed_counter(
            r,
            "ratelimit_store_fallback_total",
            "Rate-limit decisions taken without the store, by the action applied.",
            "action",
            STORE_FALLBACK_ACTIONS,
            |action| store_fallback_label(action).0,
        );
        let cache_lookups = fixed_counter(
            r,
            "key_cache_lookups_total",
            "Lookups in the in-process key cache.",
            "result",
            CacheResult::ALL,
            CacheResult::as_str,
        );
        let store_errors = fixed_counter(
            r,
            "store_errors_total",
            "Failed or timed-out store calls, by operation.",
            "op",
            StoreOp::ALL,
            StoreOp::as_str,
        );
        let config_reloads = fixed_counter(
            r,
            "config_reloads_total",
            "Policy reloads, by result.",
            "result",
            ReloadResult::ALL,
            ReloadResult::as_str,
        );

        let store_up = register(
            r,
            IntGauge::with_opts(
                Opts::new("store_up", "1 while the store's circuit breaker is closed.").namespace(NAMESPACE),
            )
            .expect("metrics: valid store_up"),
        );
        store_up.set(1);
        let last_reload_success = register(
            r,
            Gauge::with_opts(
                Opts::new(
                    "config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful policy load.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid config_last_reload_success_timestamp_seconds"),
        );
        let config = ConfigState::register(r);
        let cert_expiry = register(
            r,
            Gauge::with_opts(
                Opts::new(
                    "tls_cert_expiry_timestamp_seconds",
                    "Unix time at which the served TLS certificate expires.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid tls_cert_expiry_timestamp_seconds"),
        );
        let connections_active = register(
            r,
            IntGauge::with_opts(Opts::new("connections_active", "Client connections open now.").namespace(NAMESPACE))
                .expect("metrics: valid connections_active"),
        );
        let failed_auth_limited = register(
            r,
            IntCounter::with_opts(
                Opts::new(
                    "failed_auth_limited_total",
                    "Requests refused with 429 because their client address failed authentication too often.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid failed_auth_limited_total"),
        );
        let preflights_limited = register(
            r,
            IntCounter::with_opts(
                Opts::new(
                    "preflights_limited_total",
                    "CORS preflights refused with 429 because their client address sent too many.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid preflights_limited_total"),
        );
        let concurrency_refused = register(
            r,
            IntCounter::with_opts(
                Opts::new(
                    "concurrency_refused_total",
                    "Requests refused with 429 because their tenant had its plan's concurrency in flight.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid concurrency_refused_total"),
        );
        let concurrency_slots = register(
            r,
            IntGauge::with_opts(
                Opts::new("concurrency_slots_held", "Concurrency slots held by this replica's requests now.")
                    .namespace(NAMESPACE),
            )
            .expect("metrics: valid concurrency_slots_held"),
        );
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new("build_info", "Always 1; the version is the label.").namespace(NAMESPACE),
                &["version"],
            )
            .expect("metrics: valid build_info"),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let usage = usage::UsageMetrics::register(r);

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_busy,
            auth_decisions,
            store_fallback,
            cache_lookups,
            store_errors,
            config_reloads,
            store_up,
            last_reload_success,
            config,
            cert_expiry,
            connections_active,
            failed_auth_limited,
            preflights_limited,
            concurrency_refused,
            concurrency_slots,
            usage,
        }
    }

    /// The registry every metric is on (tests and `/metrics` read it).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything, in the Prometheus text format (`/metrics`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The children of one route's metrics, to be resolved once per route (the pipeline
    /// keeps it on the route) instead of by label on every request. `route` is the
    /// route's prefix, `upstream` its upstream's name.
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            upstream: upstream.to_string(),
            requests: self.requests.clone(),
            request_duration_vec: self.request_duration.clone(),
            upstream_duration_vec: self.upstream_duration.clone(),
            by_method: Default::default(),
            request_duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
        }
    }

    /// One answered request. `route` is the matched route's prefix, or `"none"` when no
    /// route matched: never the raw path.
    pub fn record_request(&self, route: &str, method: &http::Method, status: u16, duration: Duration) {
        let mut buf = [0u8; 5];
        self.requests.with_label_values(&[route, method_label(method), status_str(status, &mut buf)]).inc();
        self.request_duration.with_label_values(&[route]).observe(duration.as_secs_f64());
    }

    /// The time an upstream (by its configured name) took to answer.
    pub fn observe_upstream(&self, upstream: &str, duration: Duration) {
        self.upstream_duration.with_label_values(&[upstream]).observe(duration.as_secs_f64());
    }

    /// A request refused because `upstream`'s connections were all busy.
    pub fn upstream_busy(&self, upstream: &str) {
        self.upstream_busy.with_label_values(&[upstream]).inc();
    }

    /// How one request's authentication and authorisation ended, and whether the route
    /// enforced it (or the authorizer listener answered it).
    pub fn auth_decision(&self, result: AuthResult, mode: impl Into<DecisionMode>) {
        let mode = mode.into();
        if let Some(c) = self.auth_decisions.get(result.index()).and_then(|row| row.get(mode.index())) {
            c.inc();
        }
    }

    /// A rate-limit decision taken without the store.
    pub fn store_fallback(&self, action: OnStoreError) {
        inc(&self.store_fallback, store_fallback_label(action).1);
    }

    /// One lookup in the in-process key cache.
    pub fn cache_lookup(&self, result: CacheResult) {
        inc(&self.cache_lookups, result.index());
    }

    /// One failed or timed-out store call.
    pub fn store_error(&self, op: StoreOp) {
        inc(&self.store_errors, op.index());
    }

    /// A request refused because its client address is over `failed_auth_per_minute`.
    pub fn failed_auth_limited(&self) {
        self.failed_auth_limited.inc();
    }

    /// A CORS preflight refused because its client address is over `preflights_per_minute`.
    pub fn preflight_limited(&self) {
        self.preflights_limited.inc();
    }

    /// A request refused because its tenant had its plan's `concurrency` in flight.
    pub fn concurrency_refused(&self) {
        self.concurrency_refused.inc();
    }

    /// A concurrency slot taken by one of this replica's requests.
    pub fn concurrency_slot_taken(&self) {
        self.concurrency_slots.inc();
    }

    /// A concurrency slot given back.
    pub fn concurrency_slot_given_back(&self) {
        self.concurrency_slots.dec();
    }

    /// Whether the store's circuit breaker is closed.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// One policy (re)load. On success, `at_unix_secs` (when given) becomes
    /// `config_last_reload_success_timestamp_seconds`; a failure leaves it as it was.
    pub fn config_reload(&self, result: ReloadResult, at_unix_secs: Option<f64>) {
        inc(&self.config_reloads, result.index());
        if let (ReloadResult::Success, Some(at)) = (result, at_unix_secs) {
            self.last_reload_success.set(at);
        }
    }

    /// The policy's state after a load or reload attempt: the hash of the policy serving,
    /// that of the file on disk, and whether the last attempt succeeded (see
    /// [`ConfigState`]).
    pub fn set_config_state(&self, serving_sha256: &str, disk_sha256: &str, successful: bool) {
        self.config.set(serving_sha256, disk_sha256, successful);
    }

    /// When the certificate being served expires (set again on each certificate reload).
    pub fn set_cert_expiry(&self, unix_secs: f64) {
        self.cert_expiry.set(unix_secs);
    }

    /// Counts a connection as open until the guard is dropped: an early return or a panic
    /// in the connection task cannot leak the gauge.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.connections_active.inc();
        ConnectionGuard { gauge: self.connections_active.clone() }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// One route's metric children (see [`Metrics::route`]), each made the first time it is
/// used, so that what is exported is exactly what labelled lookups would have made.
pub struct RouteMetrics {
    route: String,
    upstream: String,
    requests: IntCounterVec,
    request_duration_vec: HistogramVec,
    upstream_duration_vec: HistogramVec,
    /// `requests_total{route, method, status}` by method ([`method_index`]), then by
    /// status ([`COMMON_STATUSES`]).
    by_method: [OnceLock<Box<[OnceLock<IntCounter>; COMMON_STATUSES.len()]>>; METHOD_LABELS.len()],
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    /// One answered request on this route (as [`Metrics::record_request`]).
    pub fn record_request(&self, method: &http::Method, status: u16, duration: Duration) {
        let method = method_index(method);
        match status_index(status) {
            Some(at) => {
                let statuses = self.by_method[method].get_or_init(Default::default);
                statuses[at].get_or_init(|| self.requests_child(method, status)).inc();
            }
            None => self.requests_child(method, status).inc(),
        }
        let histogram =
            self.request_duration.get_or_init(|| self.request_duration_vec.with_label_values(&[self.route.as_str()]));
        histogram.observe(duration.as_secs_f64());
    }

    /// The time this route's upstream took to answer (as [`Metrics::observe_upstream`]).
    pub fn observe_upstream(&self, duration: Duration) {
        let histogram = self
            .upstream_duration
            .get_or_init(|| self.upstream_duration_vec.with_label_values(&[self.upstream.as_str()]));
        histogram.observe(duration.as_secs_f64());
    }

    fn requests_child(&self, method: usize, status: u16) -> IntCounter {
        let mut buf = [0u8; 5];
        self.requests.with_label_values(&[self.route.as_str(), METHOD_LABELS[method], status_str(status, &mut buf)])
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").field("route", &self.route).field("upstream", &self.upstream).finish()
    }
}

/// `config_last_reload_successful` (0/1: did the last load or reload attempt of the policy
/// succeed; a file that stays invalid keeps it at 0, as every poll tries it again) and
/// `config_info{serving_sha256, disk_sha256}` (always 1, one series: the hashes of the
/// policy serving and of the file on disk; they differ while a change is refused).
struct ConfigState {
    successful: IntGauge,
    info: IntGaugeVec,
    /// Keeps `info` to one series when two reloads report at once.
    lock: std::sync::Mutex<()>,
}

impl ConfigState {
    fn register(r: &Registry) -> ConfigState {
        let successful = register(
            r,
            IntGauge::with_opts(
                Opts::new(
                    "config_last_reload_successful",
                    "1 if the last load or reload attempt of the policy succeeded, 0 if it was refused.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid config_last_reload_successful"),
        );
        let info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "config_info",
                    "Always 1, one series: the SHA-256 of the policy serving and of the policy file on disk.",
                )
                .namespace(NAMESPACE),
                &["serving_sha256", "disk_sha256"],
            )
            .expect("metrics: valid config_info"),
        );
        ConfigState { successful, info, lock: std::sync::Mutex::new(()) }
    }

    fn set(&self, serving: &str, disk: &str, successful: bool) {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.info.reset();
        self.info.with_label_values(&[serving, disk]).set(1);
        self.successful.set(i64::from(successful));
    }
}

/// Keeps `connections_active` one higher while it lives; `'static`, so it moves into the
/// connection's task.
#[derive(Debug)]
#[must_use = "the connection counts as closed as soon as the guard is dropped"]
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn inc(counters: &[IntCounter], i: usize) {
    if let Some(c) = counters.get(i) {
        c.inc();
    }
}

/// `status` in decimal, written into `buf` (no allocation on the request path).
fn status_str(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests;
