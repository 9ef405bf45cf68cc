//! The usage flusher's metrics (`crate::usage`): flushes by result, how far behind the
//! written usage is, and counts dropped at the bound of what may wait. No label names a
//! tenant or key.

use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};

use super::{register, Metrics, NAMESPACE};

/// The usage metrics, registered with the others.
pub(super) struct UsageMetrics {
    /// `usage_flushes_total{result}`: success, failure.
    flushes: [IntCounter; 2],
    lag: Gauge,
    dropped: IntCounter,
}

impl UsageMetrics {
    pub(super) fn register(r: &Registry) -> UsageMetrics {
        let flushes = register(
            r,
            IntCounterVec::new(
                Opts::new("usage_flushes_total", "Writes of the counted usage to the store, by result.")
                    .namespace(NAMESPACE),
                &["result"],
            )
            .expect("metrics: valid usage_flushes_total"),
        );
        let lag = register(
            r,
            Gauge::with_opts(
                Opts::new(
                    "usage_flush_lag_seconds",
                    "Age of the oldest usage count not yet written (0 when all is written).",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid usage_flush_lag_seconds"),
        );
        let dropped = register(
            r,
            IntCounter::with_opts(
                Opts::new(
                    "usage_dropped_total",
                    "Requests left out of the usage because the unwritten usage was at its bound.",
                )
                .namespace(NAMESPACE),
            )
            .expect("metrics: valid usage_dropped_total"),
        );
        UsageMetrics {
            flushes: [flushes.with_label_values(&["success"]), flushes.with_label_values(&["failure"])],
            lag,
            dropped,
        }
    }
}

impl Metrics {
    /// One write of the usage to the store.
    pub fn usage_flush(&self, ok: bool) {
        self.usage.flushes[usize::from(!ok)].inc();
    }

    /// The age of the oldest unwritten usage count.
    pub fn usage_lag(&self, lag: Duration) {
        self.usage.lag.set(lag.as_secs_f64());
    }

    /// `requests` left out of the usage.
    pub fn usage_dropped(&self, requests: u64) {
        self.usage.dropped.inc_by(requests);
    }
}
