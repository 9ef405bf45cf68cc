//! The TLS listener's configuration, with certificate rotation (docs/reference.md §2.1 `[listen] tls`).
//!
//! One rustls [`ServerConfig`] is built at start and never rebuilt: TLS 1.3 and 1.2 only
//! (rustls has no TLS 1.0/1.1), ALPN `h2` then `http/1.1`, the `ring` provider, no client
//! certificates. Its certificate comes from a [`ReloadingResolver`], which hands every new
//! handshake the [`CertifiedKey`] currently in an [`ArcSwap`]: a load, never a lock, on the
//! handshake path. Connections already established keep the certificate they started with.
//!
//! [`Tls::reload`] re-reads both PEM files. It swaps in the new pair only when the
//! certificate chain parses, the key parses (PKCS#8, SEC1 or PKCS#1; RSA, ECDSA or Ed25519)
//! and the key belongs to the leaf certificate; anything else is refused, logged at error
//! level with the file names (never key material), counted in [`Tls::reload_failures`],
//! and the previous pair goes on being served. Content identical to what is served is a
//! no-op (the two files are hashed), and a refused pair is counted and logged once, not at
//! every poll.
//!
//! [`Tls::watch`] reloads whenever something changes in the directory of either file (see
//! [`crate::reload::watch`]: an in-place write, a rename over the file and the Kubernetes
//! Secret `..data` symlink swap are all seen, since each read resolves the path anew), and
//! polls every [`POLL`] as a backstop, so that a new pair is served within two seconds.
//! The watcher lets files that are half-written settle before it refuses them: a
//! certificate written a moment before its key is not a failure.
//!
//! `tls_cert_expiry_timestamp_seconds` (docs/reference.md §5.1) is set to the leaf certificate's
//! `notAfter` at load and at every successful reload; [`not_after`] reads it from the DER.
//!
//! Reading and checking a pair is `tls/pair.rs`; the DER walk to `notAfter`, `tls/der.rs`.

mod der;
mod pair;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

pub use der::not_after;
pub use pair::TlsError;
use pair::{build, read_files, Fingerprint};

use crate::metrics::Metrics;
use crate::reload::{self, WatchHandle};

/// How often the watcher re-reads the files even without a change notification.
pub const POLL: Duration = Duration::from_secs(1);

/// How long the watcher waits for a refused pair to stop changing before it counts it:
/// twice the single file's [`reload::SETTLE`], since a writer may be between two files.
/// Read again at most [`reload::SETTLE_ROUNDS`] times.
const SETTLE: Duration = Duration::from_millis(200);

/// The ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Hands every new handshake the certificate currently in force.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ReloadingResolver {
    /// A resolver serving `initial` until [`ReloadingResolver::store`] replaces it.
    pub fn new(initial: Arc<CertifiedKey>) -> ReloadingResolver {
        ReloadingResolver { current: ArcSwap::new(initial) }
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Replaces the pair for handshakes that start from now on.
    pub fn store(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The TLS side of the proxy listener: an acceptor whose certificate follows the files.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<ReloadingResolver>,
    provider: Arc<CryptoProvider>,
    files: crate::settings::Tls,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    failures: AtomicU64,
    not_after: AtomicI64,
    watches: Mutex<Vec<WatchHandle>>,
}

/// What the last reads found, so that unchanged content is neither re-applied nor
/// re-refused.
struct State {
    /// The hash of the pair being served.
    current: Fingerprint,
    /// The last pair refused, and why.
    refused: Option<(Fingerprint, TlsError)>,
}

/// What one attempt to reload found.
enum Attempt {
    /// The files hold the pair being served.
    Unchanged,
    /// A new pair is being served.
    Swapped,
    /// The files hold a pair refused before (already counted and logged).
    RefusedBefore(TlsError),
    /// The files hold a pair refused now (not yet counted).
    Refused(Fingerprint, TlsError),
}

impl Tls {
    /// Reads the pair named in `[listen] tls` and builds the acceptor. At start an
    /// unreadable, invalid or mismatched pair is an error naming the files. Sets
    /// `tls_cert_expiry_timestamp_seconds`. Does not watch the files: see [`Tls::watch`].
    pub fn load(settings: &crate::settings::Tls, metrics: Arc<Metrics>) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let contents = read_files(settings)?;
        let loaded = build(settings, &contents, &provider)?;
        let resolver = Arc::new(ReloadingResolver::new(loaded.key));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        metrics.set_cert_expiry(loaded.not_after as f64);
        log_loaded(settings, loaded.not_after, "TLS certificate loaded");
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            provider,
            files: settings.clone(),
            metrics,
            state: Mutex::new(State { current: contents.fingerprint, refused: None }),
            failures: AtomicU64::new(0),
            not_after: AtomicI64::new(loaded.not_after),
            watches: Mutex::new(Vec::new()),
        })
    }

    /// [`Tls::load`], then [`Tls::watch`] with `poll` as the backstop ([`POLL`] in production).
    pub fn load_and_watch(
        settings: &crate::settings::Tls,
        metrics: Arc<Metrics>,
        poll: Duration,
    ) -> Result<Arc<Tls>, TlsError> {
        let tls = Arc::new(Tls::load(settings, metrics)?);
        tls.watch(poll);
        Ok(tls)
    }

    /// The acceptor for the proxy listener (a cheap clone; it always serves the current
    /// pair).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The certificate chain and key new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.resolver.current()
    }

    /// The served leaf certificate's `notAfter`, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// How many reloads were refused since start: each distinct refused content once,
    /// however often it is seen again.
    pub fn reload_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Re-reads both files now. `Ok(true)`: a new pair is served to new handshakes;
    /// `Ok(false)`: the files hold the pair already served. An error leaves the previous
    /// pair in force; it is logged and counted the first time this content is refused
    /// (asking again about the same refused content returns the error without counting
    /// it again).
    pub fn reload(&self) -> Result<bool, TlsError> {
        match self.attempt() {
            Attempt::Unchanged => Ok(false),
            Attempt::Swapped => Ok(true),
            Attempt::RefusedBefore(error) => Err(error),
            Attempt::Refused(fingerprint, error) => {
                self.refuse(fingerprint, &error);
                Err(error)
            }
        }
    }

    /// Reloads whenever the certificate or key file changes, and every `poll` ([`POLL`] in
    /// production; a test of the watch sets it long). The watches stop when the `Tls` is
    /// dropped; calling this twice watches once.
    pub fn watch(self: &Arc<Self>, poll: Duration) {
        let mut watches = lock(&self.watches);
        if !watches.is_empty() {
            return;
        }
        let mut directories: Vec<PathBuf> = Vec::new();
        for path in [&self.files.cert, &self.files.key] {
            let directory = reload::watched_directory(path);
            if directories.contains(&directory) {
                continue; // one watch sees both files
            }
            directories.push(directory);
            let tls: Weak<Tls> = Arc::downgrade(self);
            watches.push(reload::watch(path, poll, move || {
                if let Some(tls) = tls.upgrade() {
                    tls.reload_when_settled();
                }
            }));
        }
    }

    /// The watcher's reload: a refused pair is read again after [`SETTLE`], and refused
    /// only once it has stopped changing (a writer may be between the two files).
    fn reload_when_settled(&self) {
        for round in 0.. {
            let (fingerprint, error) = match self.attempt() {
                Attempt::Unchanged | Attempt::Swapped | Attempt::RefusedBefore(_) => return,
                Attempt::Refused(fingerprint, error) => (fingerprint, error),
            };
            std::thread::sleep(SETTLE);
            let now =
                read_files(&self.files).map_or_else(|e| Fingerprint::Unreadable(e.to_string()), |c| c.fingerprint);
            if now == fingerprint || round + 1 >= reload::SETTLE_ROUNDS {
                self.refuse(fingerprint, &error);
                return;
            }
            tracing::debug!(cert = %self.files.cert.display(), key = %self.files.key.display(), "TLS files still changing; reading them again");
        }
    }

    /// Reads both files and swaps in their pair if it is new and valid. Refusals are left
    /// to the caller to count.
    fn attempt(&self) -> Attempt {
        let mut state = lock(&self.state);
        let read = read_files(&self.files);
        let fingerprint = match &read {
            Ok(contents) => contents.fingerprint.clone(),
            Err(e) => Fingerprint::Unreadable(e.to_string()),
        };
        if fingerprint == state.current {
            return Attempt::Unchanged;
        }
        if let Some((refused, error)) = &state.refused {
            if *refused == fingerprint {
                return Attempt::RefusedBefore(error.clone());
            }
        }
        let loaded = match read.and_then(|contents| build(&self.files, &contents, &self.provider)) {
            Ok(loaded) => loaded,
            Err(error) => return Attempt::Refused(fingerprint, error),
        };
        self.resolver.store(loaded.key);
        self.not_after.store(loaded.not_after, Ordering::Relaxed);
        self.metrics.set_cert_expiry(loaded.not_after as f64);
        state.current = fingerprint;
        state.refused = None;
        log_loaded(&self.files, loaded.not_after, "TLS certificate reloaded; new handshakes get it");
        Attempt::Swapped
    }

    /// Counts and logs a refused pair, and remembers it so that it is not refused again.
    fn refuse(&self, fingerprint: Fingerprint, error: &TlsError) {
        let mut state = lock(&self.state);
        if state.refused.as_ref().is_some_and(|(refused, _)| *refused == fingerprint) {
            return; // another watcher got there first
        }
        state.refused = Some((fingerprint, error.clone()));
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            cert = %self.files.cert.display(),
            key = %self.files.key.display(),
            error = %error,
            "TLS certificate reload refused; still serving the previous certificate"
        );
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .field("not_after", &self.not_after())
            .field("reload_failures", &self.reload_failures())
            .finish_non_exhaustive()
    }
}

/// Runs the TLS handshake on an accepted connection and returns the stream with the
/// negotiated ALPN protocol (`None` when the client offered none: treat it as HTTP/1.1).
/// Not bounded in time: the caller bounds it with `header_read_timeout`.
pub async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
) -> io::Result<(tokio_rustls::server::TlsStream<IO>, Option<Vec<u8>>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(stream).await?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((stream, alpn))
}

/// Locks `mutex`, ignoring poisoning: the state stays consistent across a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs a pair that is now served, with its expiry; warns when it has expired.
fn log_loaded(files: &crate::settings::Tls, not_after: i64, message: &str) {
    let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| not_after.to_string());
    tracing::info!(cert = %files.cert.display(), key = %files.key.display(), not_after = %expires, "{message}");
    if not_after < time::OffsetDateTime::now_utc().unix_timestamp() {
        tracing::warn!(cert = %files.cert.display(), not_after = %expires, "the TLS certificate has expired");
    }
}

#[cfg(test)]
mod tests;
