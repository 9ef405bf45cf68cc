//! Start-up and shutdown: everything is loaded and built in the order that makes a bad
//! config fatal only at start, the listeners are bound and the watchers started; then the
//! shutdown sequence of docs/reference.md §6. The shared state it builds is [`App`] (`crate::state`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admission::Gate;
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::diag::Diagnostic;
use crate::keys::file_store::FileStore;
use crate::keys::redis_store::RedisStore;
use crate::keys::store::Store;
use crate::keys::Peppers;
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::Policy;
use crate::ratelimit::concurrency::{Concurrency, RedisSlots};
use crate::ratelimit::front::Limiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::redis_client::RedisClient;
use crate::reload::{self, WatchHandle};
use crate::settings::{KeySource, LimitBackend, Settings};
use crate::state::{unix_now, App};
use crate::usage::{Usage, UsageStore};
use crate::{admin, admin_api, server};

/// Why keygate could not start (exit 78 for a config problem).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(Vec<Diagnostic>),
    #[error("{0}")]
    Other(String),
}

/// Injectable parts, for tests; `Default` is production.
#[derive(Clone)]
pub struct Options {
    /// What the limiter's windows and key expiry read as "now".
    pub clock: Arc<dyn Clock>,
    /// How often the watched files are read even without a filesystem event.
    pub polls: Polls,
    /// `serve --allow-orphaned-plans`: a reload may drop a plan that tenants are on
    /// (`crate::reload::orphans`). Off by default.
    pub allow_orphaned_plans: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { clock: Arc::new(SystemClock), polls: Polls::default(), allow_orphaned_plans: false }
    }
}

/// The poll backstops of the file watches: each watched file is also read this often, in
/// case a filesystem event was missed. Events make changes live at once; a test of a
/// watch sets these long ([`Polls::events_only`]), so that only the watch can pass it.
#[derive(Debug, Clone, Copy)]
pub struct Polls {
    /// The policy file.
    pub policy: Duration,
    /// The keys file (docs/reference.md promises a change seen within 1 s).
    pub keys: Duration,
    /// The TLS certificate and key.
    pub tls: Duration,
}

impl Default for Polls {
    fn default() -> Self {
        Polls { policy: POLICY_POLL, keys: KEYS_POLL, tls: crate::tls::POLL }
    }
}

impl Polls {
    /// No backstop worth the name (an hour): changes are seen by the filesystem watches or
    /// not at all.
    pub fn events_only() -> Self {
        let hour = Duration::from_secs(3600);
        Polls { policy: hour, keys: hour, tls: hour }
    }
}

/// Loads the policy and the peppers named by `settings`: what `serve`, `check` and the
/// CLI all need. Warnings are returned, errors are fatal.
pub fn load_parts(settings: &Settings) -> Result<(Policy, Peppers, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (policy, mut warnings) = Policy::load(&settings.policy_file)?;
    let (peppers, pepper_warnings) = load_peppers(settings)?;
    warnings.extend(pepper_warnings);
    Ok((policy, peppers, warnings))
}

/// The peppers of `keys.pepper_file` or `$KEYGATE_PEPPER`, checked (see
/// [`Peppers::check`]), with a warning when there are none (plain SHA-256 digests).
pub fn load_peppers(settings: &Settings) -> Result<(Peppers, Vec<Diagnostic>), Vec<Diagnostic>> {
    Peppers::check(settings, std::env::var("KEYGATE_PEPPER").ok())
}

/// Opens the key store named in `[keys]`: the file, or Redis (whose client connects in
/// the background: keygate starts, and serves what it can, while Redis is down).
/// `timeout` overrides `redis.timeout` (the CLI's calls use seconds, not the request
/// path's milliseconds).
pub async fn open_store(
    settings: &Settings,
    metrics: Arc<Metrics>,
    timeout: Option<std::time::Duration>,
) -> Result<Store, String> {
    match &settings.keys.source {
        KeySource::File(path) => Ok(Store::File(Arc::new(FileStore::open(path).map_err(|e| e.to_string())?))),
        KeySource::Redis => {
            let client = redis_client(settings, metrics, timeout).await?;
            Ok(Store::Redis(RedisStore::new(client)))
        }
    }
}

/// The Redis client of `[redis]` (validation guarantees the table where it is needed).
pub async fn redis_client(
    settings: &Settings,
    metrics: Arc<Metrics>,
    timeout: Option<std::time::Duration>,
) -> Result<RedisClient, String> {
    let mut redis =
        settings.redis.clone().ok_or("keys.source or limits.backend is \"redis\" but [redis] is missing")?;
    if let Some(timeout) = timeout {
        redis.timeout = timeout;
    }
    RedisClient::connect(&redis, metrics).await.map_err(|e| e.to_string())
}

/// A started keygate: its bound addresses and the handle to stop it.
pub struct Running {
    /// The proxy's address; `None` when keygate runs as an authorizer only.
    pub proxy_addr: Option<SocketAddr>,
    /// The authorizer's address, when `[authorizer]` is configured.
    pub authorizer_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The key/tenant API's address, when a token turned it on.
    pub admin_api_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    stop_accepting: CancellationToken,
    background: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// Writes the usage; after `background` is cancelled, once more, then ends.
    usage_flusher: Option<tokio::task::JoinHandle<()>>,
    _watches: Vec<WatchHandle>,
}

/// Starts keygate: loads everything (any error is fatal here, and only here), binds the
/// listeners, starts the watchers, and returns once it is ready.
pub async fn start(settings: Settings, options: Options) -> Result<Running, StartError> {
    let (policy, peppers, warnings) = load_parts(&settings).map_err(StartError::Config)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(open_store(&settings, metrics.clone(), None).await.map_err(StartError::Other)?);
    let api_token = admin_api::load_token(&settings).map_err(StartError::Other)?;
    metrics.config_reload(ReloadResult::Success, Some(unix_now()));
    // One client (one breaker, one `store_up`) when keys and limits both use Redis.
    let redis = match (&*store, settings.limits.backend) {
        (Store::Redis(redis), _) => Some(redis.client().clone()),
        (Store::File(_), LimitBackend::Redis) => {
            Some(redis_client(&settings, metrics.clone(), None).await.map_err(StartError::Other)?)
        }
        (Store::File(_), LimitBackend::Local) => None,
    };
    let redis_limiter = match settings.limits.backend {
        LimitBackend::Local => None,
        LimitBackend::Redis => redis.clone().map(RedisLimiter::new),
    };
    let redis_slots = match settings.limits.backend {
        LimitBackend::Local => None,
        LimitBackend::Redis => {
            redis.clone().map(|client| RedisSlots::start(client, settings.limits.concurrency_ttl, metrics.clone()))
        }
    };
    let concurrency = Concurrency::new(&settings.limits, redis_slots, metrics.clone());
    let limiter = Limiter::new(&settings.limits, redis_limiter, options.clock.clone(), metrics.clone());
    let usage = Usage::new(UsageStore::of(&settings, &store), options.clock.clone(), metrics.clone());
    let keys = Arc::new(Authenticator::new(store, peppers, &settings.keys, metrics.clone()));
    let gate = Gate::new(keys, limiter, options.clock, metrics.clone(), settings.limits.on_store_error)
        .with_concurrency(concurrency);
    let app = Arc::new(
        App::new(settings, policy, gate, redis, metrics)
            .allowing_orphaned_plans(options.allow_orphaned_plans)
            .with_usage(usage.clone()),
    );
    let settings = app.settings().clone();

    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr).await.map_err(|e| StartError::Other(format!("cannot listen on {addr} ({what}): {e}")))
    };
    let load_tls = |files: Option<&crate::settings::Tls>, what: &'static str| match files {
        Some(files) => crate::tls::Tls::load_and_watch(files, app.metrics().clone(), options.polls.tls)
            .map(Some)
            .map_err(|e| StartError::Config(vec![Diagnostic::file_error(&settings.file, format!("{what}: {e}"))])),
        None => Ok(None),
    };
    let tls = server::ListenerTls {
        proxy: if settings.serve_proxy { load_tls(settings.listen.tls.as_ref(), "listen.tls")? } else { None },
        authorizer: match &settings.authorizer {
            Some(authorizer) => load_tls(authorizer.tls.as_ref(), "authorizer.tls")?,
            None => None,
        },
    };
    let proxy_listener = match settings.serve_proxy {
        true => Some(bind(settings.listen.address, "listen.address").await?),
        false => None,
    };
    let authorizer_listener = match &settings.authorizer {
        Some(authorizer) => Some(bind(authorizer.address, "authorizer.address").await?),
        None => None,
    };
    let admin_listener = bind(settings.admin.address, "admin.address").await?;
    let proxy_addr = proxy_listener.as_ref().map(local_addr).transpose()?;
    let authorizer_addr = authorizer_listener.as_ref().map(local_addr).transpose()?;
    let admin_addr = local_addr(&admin_listener)?;

    let api_listener = match &api_token {
        Some(_) => Some(bind(settings.admin.api_address, "admin.api_address").await?),
        None => None,
    };
    let admin_api_addr = api_listener.as_ref().map(local_addr).transpose()?;

    let workers = server::Workers::start(&app, tls)
        .map_err(|e| StartError::Other(format!("cannot start the proxy's worker threads: {e}")))?;
    if let Some(redis) = app.redis() {
        redis.open_per_worker(&workers.runtimes());
    }
    let stop_accepting = CancellationToken::new();
    let mut servers = vec![
        tokio::spawn(server::serve(proxy_listener, authorizer_listener, workers, app.clone(), stop_accepting.clone())),
        tokio::spawn(admin::serve(admin_listener, app.clone(), stop_accepting.clone())),
    ];
    if let (Some(listener), Some(token)) = (api_listener, api_token) {
        servers.push(tokio::spawn(admin_api::serve(listener, app.clone(), token, stop_accepting.clone())));
    }
    let background = CancellationToken::new();
    app.keys().spawn_background(background.clone());
    let usage_flusher = Some(usage.spawn_flusher(background.clone()));
    let watches = start_watches(&app, options.polls);
    app.set_ready();
    tracing::info!(
        proxy = proxy_addr.map(tracing::field::display),
        authorizer = authorizer_addr.map(tracing::field::display),
        admin = %admin_addr,
        version = env!("CARGO_PKG_VERSION"),
        "keygate ready"
    );
    Ok(Running {
        proxy_addr,
        authorizer_addr,
        admin_addr,
        admin_api_addr,
        app,
        stop_accepting,
        background,
        servers,
        usage_flusher,
        _watches: watches,
    })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|e| StartError::Other(format!("cannot read a listener's address: {e}")))
}

/// How often the keys file is checked even without a filesystem event: docs/reference.md promises a
/// change seen within 1 s.
const KEYS_POLL: Duration = Duration::from_millis(250);
/// How long a shutdown waits for the last usage flush.
const USAGE_LAST_FLUSH: Duration = Duration::from_secs(5);
/// The policy's poll backstop (events make reloads immediate).
const POLICY_POLL: Duration = Duration::from_secs(2);

fn start_watches(app: &Arc<App>, polls: Polls) -> Vec<WatchHandle> {
    let mut watches = Vec::new();
    let policy_app = Arc::downgrade(app);
    let policy_file = app.settings().policy_file.clone();
    // Every event and every poll tries the file again, refused content included: a file
    // that stays invalid stays reported (logged, counted, `config_last_reload_successful`
    // 0), and a policy refused for the store's tenants goes in once they have moved.
    watches.push(reload::watch(&policy_file, polls.policy, move || {
        if let Some(app) = policy_app.upgrade() {
            app.reload_policy();
        }
    }));
    if let Some(store) = app.keys().store().file().cloned() {
        let keys_path = store.path().to_path_buf();
        watches.push(reload::watch(&keys_path, polls.keys, move || match store.refresh() {
            Ok(true) => tracing::info!(file = %store.path().display(), "key store reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "key store not reloaded; the last good content keeps serving"),
        }));
    }
    watches
}

impl Running {
    /// docs/reference.md §6: `/readyz` turns 503 at once, listeners close after `drain_delay`, requests
    /// in flight get up to `shutdown_grace` to finish.
    pub async fn shutdown(self) {
        let settings = self.app.settings().clone();
        self.app.start_draining();
        tracing::info!(drain_delay = ?settings.server.drain_delay, "shutting down: draining");
        tokio::time::sleep(settings.server.drain_delay).await;
        self.stop_accepting.cancel();
        let all = futures_join(self.servers);
        if tokio::time::timeout(settings.server.shutdown_grace, all).await.is_err() {
            tracing::warn!("shutdown grace elapsed with requests in flight; exiting anyway");
        }
        self.background.cancel();
        // The last usage flush (bounded: a store that does not answer is not waited for).
        if let Some(flusher) = self.usage_flusher {
            if tokio::time::timeout(USAGE_LAST_FLUSH, flusher).await.is_err() {
                tracing::warn!("the last usage flush did not finish in time; its counts are lost");
            }
        }
        tracing::info!("keygate stopped");
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}
