//! The shared state every request reads ([`App`]): the settings, the one policy
//! snapshot and its reload, the admission [`Gate`], the upstream pools, the metrics and
//! the readiness flags. Built once at start-up (`crate::app`); its fields are private, so
//! what a module can do with it is what its methods offer.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
use crate::usage::Usage;

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
    /// `--allow-orphaned-plans`: a reload may drop a plan that tenants are on.
    allow_orphaned_plans: bool,
    /// The runtime the store lives on, for the reload's store reads (the watcher is a
    /// thread of its own).
    runtime: Option<tokio::runtime::Handle>,
    /// The last load or reload attempt, for `/readyz` and the metrics.
    reload_state: Mutex<ReloadState>,
    /// Usage per tenant and key (none: not counted).
    usage: Option<Usage>,
}

/// What the last load or reload attempt of the policy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadState {
    /// The SHA-256 of the policy file on disk as last read (`unreadable` when it could not
    /// be read); the serving policy's is `Policy::hash`.
    pub disk_sha256: String,
    /// Whether that attempt succeeded (or found the serving content).
    pub successful: bool,
    /// Why it was refused: the first error.
    pub error: Option<String>,
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
        metrics.set_config_state(&policy.hash, &policy.hash, true);
        let reload_state = ReloadState { disk_sha256: policy.hash.clone(), successful: true, error: None };
        App {
            upstreams: Upstreams::new(settings.server.workers),
            settings: Arc::new(settings),
            policy: ArcSwap::from_pointee(policy),
            gate,
            redis,
            metrics,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            allow_orphaned_plans: false,
            runtime: tokio::runtime::Handle::try_current().ok(),
            reload_state: Mutex::new(reload_state),
            usage: None,
        }
    }

    /// Counts each request's usage in `usage`.
    pub fn with_usage(mut self, usage: Usage) -> App {
        self.usage = Some(usage);
        self
    }

    /// Where requests' usage is counted.
    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// `--allow-orphaned-plans`: reloads may drop plans that tenants are on.
    pub fn allowing_orphaned_plans(mut self, allow: bool) -> App {
        self.allow_orphaned_plans = allow;
        self
    }

    /// The last load or reload attempt of the policy.
    pub fn reload_state(&self) -> ReloadState {
        self.reload_state.lock().unwrap_or_else(PoisonError::into_inner).clone()
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

    /// Re-reads the policy (SIGHUP, the watcher's events and its poll do this); swaps it in
    /// when it is valid and its content changed. An invalid file changes nothing: it is
    /// logged with file:line:column and counted, every time it is tried (a file that
    /// stays invalid stays reported: `config_last_reload_successful` 0, a log line per
    /// attempt). Content whose hash is the one being served is not even parsed: nothing
    /// is logged or counted, and the last attempt counts as successful.
    ///
    /// A policy that drops a plan tenants of the store are on is refused too (unless
    /// `--allow-orphaned-plans`): see [`reload::orphans`]. As that depends on the store,
    /// the poll tries it again even when the file has not changed.
    ///
    /// Content that does not parse is read again after [`reload::SETTLE`]: it is refused
    /// only once it has stopped changing (a slow in-place write is not an error).
    ///
    /// Safe to run concurrently (the watcher and SIGHUP): the swap is a compare-and-swap
    /// against the policy the content was compared with, so one change is one swap and
    /// one success, and a reload that lost the race reads the file again rather than
    /// putting back older content.
    pub fn reload_policy(&self) -> reload::Outcome {
        let path: &Path = &self.settings.policy_file;
        let mut rounds = 0;
        loop {
            let current = self.policy.load_full();
            let content = reload::read(path);
            if content.fingerprint.is_hash(&current.hash) {
                self.record_attempt(&current.hash, &content.fingerprint, None);
                return reload::Outcome::Unchanged;
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
                Err(errors) => return self.refuse(path, &current.hash, content.fingerprint, &errors),
            };
            if let Err(errors) = self.check_orphaned_plans(&current, &policy) {
                return self.refuse(path, &current.hash, content.fingerprint, &errors);
            }
            let new_hash = policy.hash.clone();
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
            self.record_attempt(&new_hash, &content.fingerprint, None);
            tracing::info!(file = %path.display(), hash = %content.fingerprint, "policy reloaded");
            return reload::Outcome::Reloaded;
        }
    }

    fn refuse(
        &self,
        path: &Path,
        serving: &str,
        fingerprint: reload::Fingerprint,
        errors: &[Diagnostic],
    ) -> reload::Outcome {
        for error in errors {
            tracing::error!("{error}");
        }
        self.metrics.config_reload(ReloadResult::Failure, None);
        let first = errors.first().map(ToString::to_string).unwrap_or_else(|| "refused".to_string());
        self.record_attempt(serving, &fingerprint, Some(first));
        tracing::error!(
            file = %path.display(),
            disk_sha256 = %disk_hash(&fingerprint),
            serving_sha256 = %serving,
            "policy reload failed; the last good policy keeps serving"
        );
        reload::Outcome::Refused { fingerprint }
    }

    /// Keeps what an attempt found for `/readyz` and the metrics.
    fn record_attempt(&self, serving: &str, disk: &reload::Fingerprint, error: Option<String>) {
        let mut state = self.reload_state.lock().unwrap_or_else(PoisonError::into_inner);
        let disk = disk_hash(disk);
        self.metrics.set_config_state(serving, &disk, error.is_none());
        *state = ReloadState { disk_sha256: disk, successful: error.is_none(), error };
    }

    /// Refuses `policy` when it drops a plan of `serving` that tenants of the store are
    /// on, unless orphaned plans are allowed. Reads the store only when a plan is dropped;
    /// a store that cannot be read then refuses the reload too (it is tried again on the
    /// next change or poll), since locking tenants out unseen is what this prevents.
    fn check_orphaned_plans(&self, serving: &Policy, policy: &Policy) -> Result<(), Vec<Diagnostic>> {
        let dropped = reload::orphans::dropped_plans(serving, policy);
        if self.allow_orphaned_plans || dropped.is_empty() {
            return Ok(());
        }
        let path = &self.settings.policy_file;
        let per_plan = self.tenants_per_plan().map_err(|e| {
            vec![Diagnostic::file_error(
                path,
                format!(
                    "the policy drops plan(s) {} but the key store cannot be read to check that no tenant is on them \
                     ({e}); tried again on the next change or poll",
                    dropped.join(", ")
                ),
            )]
        })?;
        let orphaned = reload::orphans::orphaned(&per_plan, policy, Some(serving));
        if orphaned.is_empty() {
            return Ok(());
        }
        Err(orphaned.iter().map(|o| Diagnostic::file_error(path, o.to_string())).collect())
    }

    /// The store's tenants per plan, read on the store's runtime from a thread of its own
    /// (a reload runs on the watcher's thread, SIGHUP's on the blocking pool, a test's
    /// maybe inside a runtime: none may block a runtime thread).
    fn tenants_per_plan(&self) -> Result<std::collections::BTreeMap<String, usize>, String> {
        let Some(runtime) = &self.runtime else {
            return Err("no runtime to read the store on".to_string());
        };
        let store = self.keys().store();
        std::thread::scope(|scope| {
            let read = scope.spawn(|| runtime.block_on(store.tenants_per_plan()));
            match read.join() {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("reading the store's tenants panicked".to_string()),
            }
        })
    }
}

/// The `disk_sha256` of what a reload read: the hash, or `unreadable`.
fn disk_hash(fingerprint: &reload::Fingerprint) -> String {
    match fingerprint {
        reload::Fingerprint::Hash(hash) => hash.clone(),
        reload::Fingerprint::Unreadable(_) => "unreadable".to_string(),
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
