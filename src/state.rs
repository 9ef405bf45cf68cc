//! The shared state every request reads ([`App`]): the settings, the one policy
//! snapshot and its reload, the admission [`Gate`], the upstream pools, the metrics and
//! the readiness flags. Built once at start-up (`crate::app`); its fields are private, so
//! what a module can do with it is what its methods offer.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::admission::Gate;
use crate::auth::Authenticator;
use crate::diag::Diagnostic;
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::Policy;
use crate::redis_client::RedisClient;
use crate::reload;
use crate::settings::Settings;
use crate::upstream::Upstreams;

/// Everything a request needs, shared by all connections.
pub struct App {
    settings: Arc<Settings>,
    /// The one policy snapshot; a request loads it once and keeps it to the end.
    policy: ArcSwap<Policy>,
    gate: Gate,
    /// The Redis client keys or limits use, if any (its breaker is the store's state).
    redis: Option<RedisClient>,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    /// True from the moment shutdown begins: `/readyz` answers 503.
    draining: AtomicBool,
    /// True once the listeners are bound and a policy is loaded.
    ready: AtomicBool,
}

impl App {
    /// The state of a keygate that is not ready yet (see [`App::set_ready`]).
    pub fn new(
        settings: Settings,
        policy: Policy,
        gate: Gate,
        redis: Option<RedisClient>,
        metrics: Arc<Metrics>,
    ) -> App {
        let gate = gate.with_address_budgets(&settings.server, &settings.listen.trusted_proxies);
        App {
            upstreams: Upstreams::new(settings.server.workers),
            settings: Arc::new(settings),
            policy: ArcSwap::from_pointee(policy),
            gate,
            redis,
            metrics,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The current policy snapshot: a request loads it once and keeps it to the end.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The admission rules.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The key service (the store behind it is what the admin API manages).
    pub fn keys(&self) -> &Arc<Authenticator> {
        self.gate.keys()
    }

    pub fn redis(&self) -> Option<&RedisClient> {
        self.redis.as_ref()
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether `peer` is in `listen.trusted_proxies` (its `X-Forwarded-For` and override
    /// headers are kept). An IPv4 peer on a dual-stack listener arrives as
    /// `::ffff:a.b.c.d`: it is matched as `a.b.c.d`.
    pub fn peer_trusted(&self, peer: IpAddr) -> bool {
        crate::connection::is_trusted(&self.settings.listen.trusted_proxies, peer)
    }

    /// Started: listeners bound, policy loaded (ready unless draining).
    pub fn is_started(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Re-reads the policy (SIGHUP does this); swaps it in when it is valid and its
    /// content changed. An invalid file changes nothing: it is logged with
    /// file:line:column and counted. Content whose hash is the one being served is not
    /// even parsed: nothing is logged or counted.
    pub fn reload_policy(&self) -> reload::Outcome {
        self.reload_policy_unless(None)
    }

    /// [`App::reload_policy`], except that content named by `refused` (the fingerprint of an
    /// earlier [`reload::Outcome::Refused`]) is not parsed, logged or counted again: the
    /// watcher's poll sees a bad file every time it looks.
    ///
    /// Content that does not parse is read again after [`reload::SETTLE`]: it is refused
    /// only once it has stopped changing (a slow in-place write is not an error).
    ///
    /// Safe to run concurrently (the watcher and SIGHUP): the swap is a compare-and-swap
    /// against the policy the content was compared with, so one change is one swap and
    /// one success, and a reload that lost the race reads the file again rather than
    /// putting back older content.
    pub fn reload_policy_unless(&self, refused: Option<&reload::Fingerprint>) -> reload::Outcome {
        let path: &Path = &self.settings.policy_file;
        let mut rounds = 0;
        loop {
            let current = self.policy.load_full();
            let content = reload::read(path);
            if content.fingerprint.is_hash(&current.hash) {
                return reload::Outcome::Unchanged;
            }
            if refused == Some(&content.fingerprint) {
                return reload::Outcome::Refused { fingerprint: content.fingerprint };
            }
            let parsed = match content.bytes {
                Err(e) => Err(vec![Diagnostic::file_error(path, format!("cannot read: {e}"))]),
                Ok(bytes) => String::from_utf8(bytes)
                    .map_err(|_| vec![Diagnostic::file_error(path, "not valid UTF-8")])
                    .and_then(|text| Policy::parse(&text, path)),
            };
            let (policy, warnings) = match parsed {
                Ok(parsed) => parsed,
                // A file caught half-written is read again once the writer is done.
                Err(_) if rounds < reload::SETTLE_ROUNDS && !reload::settled(path, &content.fingerprint) => {
                    rounds += 1;
                    continue;
                }
                Err(errors) => return self.refuse(path, content.fingerprint, &errors),
            };
            let previous = self.policy.compare_and_swap(&current, Arc::new(policy));
            if !Arc::ptr_eq(&previous, &current) {
                continue; // another reload swapped first: compare with what it put in
            }
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            let upstreams: Vec<_> = self.policy.load().upstreams.values().cloned().collect();
            self.upstreams.retain(&upstreams);
            self.metrics.config_reload(ReloadResult::Success, Some(unix_now()));
            tracing::info!(file = %path.display(), hash = %content.fingerprint, "policy reloaded");
            return reload::Outcome::Reloaded;
        }
    }

    fn refuse(&self, path: &Path, fingerprint: reload::Fingerprint, errors: &[Diagnostic]) -> reload::Outcome {
        for error in errors {
            tracing::error!("{error}");
        }
        self.metrics.config_reload(ReloadResult::Failure, None);
        tracing::error!(file = %path.display(), "policy reload failed; the last good policy keeps serving");
        reload::Outcome::Refused { fingerprint }
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
