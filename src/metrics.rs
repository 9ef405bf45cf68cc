//! Every metric keygate exports (docs/reference.md §5.1), registered in one place on an explicit
//! registry, with bounded labels only.
//!
//! Callers cannot invent label values: the fixed sets are enums, and the open ones are
//! bounded by construction (`route` is a configured prefix or `none`, `method` a standard
//! method or `OTHER`, `status` an HTTP status, `upstream` a configured name). No key,
//! tenant or raw path is ever a label: one tenant with a million keys must not take
//! Prometheus down.

use std::time::Duration;

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
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

/// The `method` label: the standard methods (RFC 9110 9.3, and PATCH) as themselves,
/// anything else `OTHER` so that a client cannot mint label values.
pub fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

/// All metrics, registered on their own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    /// `[result][mode]`, in `AuthResult::ALL` × `RouteMode::ALL` order.
    auth_decisions: Vec<[IntCounter; 2]>,
    store_fallback: Vec<IntCounter>,
    cache_lookups: Vec<IntCounter>,
    store_errors: Vec<IntCounter>,
    config_reloads: Vec<IntCounter>,
    store_up: IntGauge,
    last_reload_success: Gauge,
    cert_expiry: Gauge,
    connections_active: IntGauge,
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
                // Indexed by `RouteMode::index`: Enforce, Shadow.
                [RouteMode::Enforce, RouteMode::Shadow]
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
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new("build_info", "Always 1; the version is the label.").namespace(NAMESPACE),
                &["version"],
            )
            .expect("metrics: valid build_info"),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            auth_decisions,
            store_fallback,
            cache_lookups,
            store_errors,
            config_reloads,
            store_up,
            last_reload_success,
            cert_expiry,
            connections_active,
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

    /// How one request's authentication and authorisation ended, and whether the route
    /// enforced it.
    pub fn auth_decision(&self, result: AuthResult, mode: RouteMode) {
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
mod tests {
    use super::*;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn fixed_label_values_exported_at_zero_from_start() {
        let m = Metrics::new();
        let text = m.encode();
        for res in AuthResult::ALL {
            for mode in RouteMode::ALL {
                let line = format!("keygate_auth_decisions_total{{mode=\"{mode}\",result=\"{res}\"}} 0");
                assert!(has_line(&text, &line), "missing {line}\n{text}");
            }
        }
        for (name, label, values) in [
            (
                "ratelimit_store_fallback_total",
                "action",
                STORE_FALLBACK_ACTIONS.iter().map(|&v| store_fallback_label(v).0).collect::<Vec<_>>(),
            ),
            ("key_cache_lookups_total", "result", CacheResult::ALL.iter().map(|v| v.as_str()).collect()),
            ("store_errors_total", "op", StoreOp::ALL.iter().map(|v| v.as_str()).collect()),
            ("config_reloads_total", "result", ReloadResult::ALL.iter().map(|v| v.as_str()).collect()),
        ] {
            for v in values {
                let line = format!("keygate_{name}{{{label}=\"{v}\"}} 0");
                assert!(has_line(&text, &line), "missing {line}\n{text}");
            }
        }
        for line in [
            "keygate_store_up 1",
            "keygate_config_last_reload_success_timestamp_seconds 0",
            "keygate_tls_cert_expiry_timestamp_seconds 0",
            "keygate_connections_active 0",
            &format!("keygate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(has_line(&text, line), "missing {line}\n{text}");
        }
        // Exactly the label sets of docs/reference.md §5.1.
        assert_eq!(AuthResult::ALL.len(), 10);
        assert_eq!(text.lines().filter(|l| l.starts_with("keygate_auth_decisions_total{")).count(), 20);
    }

    #[test]
    fn every_metric_is_prefixed_and_of_its_type() {
        let m = Metrics::new();
        m.record_request("/v1", &http::Method::GET, 200, Duration::from_millis(3));
        m.observe_upstream("api", Duration::from_millis(2));
        let text = m.encode();
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        let mut expected = vec![
            "keygate_auth_decisions_total counter",
            "keygate_build_info gauge",
            "keygate_config_last_reload_success_timestamp_seconds gauge",
            "keygate_config_reloads_total counter",
            "keygate_connections_active gauge",
            "keygate_key_cache_lookups_total counter",
            "keygate_ratelimit_store_fallback_total counter",
            "keygate_request_duration_seconds histogram",
            "keygate_requests_total counter",
            "keygate_store_errors_total counter",
            "keygate_store_up gauge",
            "keygate_tls_cert_expiry_timestamp_seconds gauge",
            "keygate_upstream_duration_seconds histogram",
        ];
        expected.sort_unstable();
        let mut types = types;
        types.sort_unstable();
        assert_eq!(types, expected);
    }

    #[test]
    fn requests_and_methods() {
        let m = Metrics::new();
        let weird = http::Method::from_bytes(b"BREW").expect("extension method");
        m.record_request("/v1/", &weird, 404, Duration::from_millis(1));
        m.record_request("none", &http::Method::PATCH, 404, Duration::from_millis(1));
        m.record_request("none", &http::Method::PATCH, 404, Duration::from_millis(1));
        m.record_request("/v1/", &http::Method::GET, 7, Duration::from_millis(1));
        let text = m.encode();
        assert!(has_line(&text, r#"keygate_requests_total{method="OTHER",route="/v1/",status="404"} 1"#));
        assert!(has_line(&text, r#"keygate_requests_total{method="PATCH",route="none",status="404"} 2"#));
        assert!(has_line(&text, r#"keygate_requests_total{method="GET",route="/v1/",status="7"} 1"#));
        assert!(!text.contains("BREW"));
        for (method, label) in [
            (http::Method::GET, "GET"),
            (http::Method::HEAD, "HEAD"),
            (http::Method::POST, "POST"),
            (http::Method::PUT, "PUT"),
            (http::Method::DELETE, "DELETE"),
            (http::Method::CONNECT, "CONNECT"),
            (http::Method::OPTIONS, "OPTIONS"),
            (http::Method::TRACE, "TRACE"),
            (http::Method::PATCH, "PATCH"),
            (http::Method::from_bytes(b"get").expect("method"), "OTHER"),
            (http::Method::from_bytes(b"PROPFIND").expect("method"), "OTHER"),
        ] {
            assert_eq!(method_label(&method), label);
        }
    }

    #[test]
    fn status_rendering() {
        for s in [0u16, 7, 42, 200, 404, 599, 9_999, 65_535] {
            let mut buf = [0u8; 5];
            assert_eq!(status_str(s, &mut buf), s.to_string());
        }
    }

    #[test]
    fn histogram_buckets() {
        let m = Metrics::new();
        m.record_request("/a", &http::Method::GET, 200, Duration::from_micros(300));
        m.observe_upstream("billing", Duration::from_secs(20));
        let text = m.encode();
        for le in [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "10", "+Inf",
        ] {
            let line = format!("keygate_request_duration_seconds_bucket{{route=\"/a\",le=\"{le}\"}}");
            assert!(text.contains(&line), "missing {line}\n{text}");
            let line = format!("keygate_upstream_duration_seconds_bucket{{upstream=\"billing\",le=\"{le}\"}}");
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
        assert!(has_line(&text, r#"keygate_request_duration_seconds_bucket{route="/a",le="0.00025"} 0"#));
        assert!(has_line(&text, r#"keygate_request_duration_seconds_bucket{route="/a",le="0.0005"} 1"#));
        assert!(has_line(&text, r#"keygate_upstream_duration_seconds_bucket{upstream="billing",le="10"} 0"#));
        assert!(has_line(&text, r#"keygate_upstream_duration_seconds_bucket{upstream="billing",le="+Inf"} 1"#));
    }

    #[test]
    fn typed_recorders() {
        let m = Metrics::new();
        m.auth_decision(AuthResult::NoApiAccess, RouteMode::Shadow);
        m.auth_decision(AuthResult::Ok, RouteMode::Enforce);
        m.auth_decision(AuthResult::Ok, RouteMode::Enforce);
        m.store_fallback(OnStoreError::Deny);
        m.cache_lookup(CacheResult::NegativeHit);
        m.store_error(StoreOp::Subscribe);
        m.set_store_up(false);
        m.config_reload(ReloadResult::Success, Some(1_700_000_000.5));
        m.config_reload(ReloadResult::Failure, Some(1_800_000_000.0));
        m.set_cert_expiry(1_900_000_000.0);
        let text = m.encode();
        for line in [
            r#"keygate_auth_decisions_total{mode="shadow",result="no_api_access"} 1"#,
            r#"keygate_auth_decisions_total{mode="enforce",result="no_api_access"} 0"#,
            r#"keygate_auth_decisions_total{mode="enforce",result="ok"} 2"#,
            r#"keygate_ratelimit_store_fallback_total{action="deny"} 1"#,
            r#"keygate_key_cache_lookups_total{result="negative_hit"} 1"#,
            r#"keygate_store_errors_total{op="subscribe"} 1"#,
            r#"keygate_config_reloads_total{result="success"} 1"#,
            r#"keygate_config_reloads_total{result="failure"} 1"#,
            "keygate_store_up 0",
            "keygate_config_last_reload_success_timestamp_seconds 1700000000.5",
            "keygate_tls_cert_expiry_timestamp_seconds 1900000000",
        ] {
            assert!(has_line(&text, line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn connection_guard_decrements_on_drop() {
        let m = Metrics::new();
        let a = m.connection_opened();
        let b = m.connection_opened();
        assert!(has_line(&m.encode(), "keygate_connections_active 2"));
        drop(a);
        assert!(has_line(&m.encode(), "keygate_connections_active 1"));
        let handle = std::thread::spawn(move || drop(b));
        handle.join().expect("thread");
        assert!(has_line(&m.encode(), "keygate_connections_active 0"));
    }

    #[test]
    fn own_registry_not_the_global_one() {
        // Two instances in one process: registering either on the default registry twice
        // would have panicked.
        let a = Metrics::new();
        let b = Metrics::new();
        a.store_error(StoreOp::Lookup);
        assert!(has_line(&a.encode(), r#"keygate_store_errors_total{op="lookup"} 1"#));
        assert!(has_line(&b.encode(), r#"keygate_store_errors_total{op="lookup"} 0"#));
        assert!(prometheus::gather().iter().all(|family| !family.name().starts_with("keygate_")));
        assert!(!a.registry().gather().is_empty());
    }
}
