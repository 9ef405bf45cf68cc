//! The TLS listener's configuration, with certificate rotation (SPEC 2.1 `[listen] tls`).
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
//! `tls_cert_expiry_timestamp_seconds` (SPEC 5.1) is set to the leaf certificate's
//! `notAfter` at load and at every successful reload; [`not_after`] reads it from the DER.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::reload::{self, WatchHandle};

/// How often the watcher re-reads the files even without a change notification.
pub const POLL: Duration = Duration::from_secs(1);

/// How long the watcher waits for a refused pair to stop changing before it counts it.
const SETTLE: Duration = Duration::from_millis(200);

/// How many times the watcher re-reads a pair that keeps changing before refusing it.
const SETTLE_ROUNDS: u32 = 5;

/// The ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate/key pair could not be loaded. The message names the file, never its
/// content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The certificate file holds no usable certificate chain.
    #[error("TLS certificate file {}: {reason}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("TLS key file {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("TLS key file {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the server configuration (a bug, not an operator error).
    #[error("TLS configuration: {0}")]
    Config(String),
}

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

/// Identifies what a read of the two files found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    /// SHA-256 over both files' contents.
    Content([u8; 32]),
    /// A file could not be read; the error's text.
    Unreadable(String),
}

/// Both files as read, and their hash.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    fingerprint: Fingerprint,
}

/// A pair ready to serve.
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
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

    /// [`Tls::load`], then [`Tls::watch`].
    pub fn load_and_watch(settings: &crate::settings::Tls, metrics: Arc<Metrics>) -> Result<Arc<Tls>, TlsError> {
        let tls = Arc::new(Tls::load(settings, metrics)?);
        tls.watch();
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

    /// Reloads whenever the certificate or key file changes, and every [`POLL`]. The
    /// watches stop when the `Tls` is dropped; calling this twice watches once.
    pub fn watch(self: &Arc<Self>) {
        let mut watches = lock(&self.watches);
        if !watches.is_empty() {
            return;
        }
        let mut directories: Vec<PathBuf> = Vec::new();
        for path in [&self.files.cert, &self.files.key] {
            let directory = directory_of(path);
            if directories.contains(&directory) {
                continue; // one watch sees both files
            }
            directories.push(directory);
            let tls: Weak<Tls> = Arc::downgrade(self);
            watches.push(reload::watch(path, POLL, move || {
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
            if now == fingerprint || round + 1 >= SETTLE_ROUNDS {
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

/// The directory [`reload::watch`] watches for `path`.
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads both files (resolving symlinks anew) and hashes them.
fn read_files(files: &crate::settings::Tls) -> Result<Contents, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read { path: path.to_path_buf(), reason: e.to_string() })
    };
    let cert = read(&files.cert)?;
    let key = read(&files.key)?;
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(&cert);
    hash.update(&key);
    let fingerprint = Fingerprint::Content(hash.finalize().into());
    Ok(Contents { cert, key, fingerprint })
}

/// Parses the pair and checks that the key belongs to the leaf certificate.
fn build(files: &crate::settings::Tls, contents: &Contents, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate { path: files.cert.clone(), reason };
    let key_error = |reason: String| TlsError::Key { path: files.key.clone(), reason };
    let chain = CertificateDer::pem_slice_iter(&contents.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(pem_reason(&e).to_owned()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE section in the PEM file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| match e {
        pem::Error::NoItemsFound => key_error(
            "no unencrypted private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY section) in the PEM file"
                .to_owned(),
        ),
        other => key_error(pem_reason(&other).to_owned()),
    })?;
    // rustls' messages here describe the key type, never the key.
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("not a private key rustls can use: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone() })
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(key_error("cannot check that the key belongs to the certificate".to_owned()))
        }
        Err(e) => return Err(cert_error(format!("the first certificate is not a valid X.509 certificate: {e}"))),
    }
    let leaf = certified.cert.first().ok_or_else(|| cert_error("no certificate".to_owned()))?;
    let expiry = not_after(leaf).ok_or_else(|| cert_error("cannot read the leaf certificate's notAfter".to_owned()))?;
    Ok(Loaded { key: Arc::new(certified), not_after: expiry })
}

/// A PEM error's description, without the bytes some variants carry.
fn pem_reason(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: invalid BEGIN line",
        pem::Error::Base64Decode(_) => "malformed PEM: invalid base64",
        pem::Error::NoItemsFound => "no PEM section of the expected type",
        pem::Error::SectionTooLarge => "malformed PEM: section too large",
        _ => "malformed PEM",
    }
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

/// The `notAfter` of an X.509 certificate in DER, in Unix seconds; `None` when the DER is
/// not shaped like a certificate. A minimal walk: Certificate → tbsCertificate → (version,
/// serialNumber, signature, issuer) → validity → notAfter, a UTCTime or GeneralizedTime.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    let (tag, certificate, _) = der_element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (mut tag, mut body, mut rest) = der_element(tbs)?;
    if tag == VERSION {
        (tag, body, rest) = der_element(rest)?;
    }
    let _serial = (tag == INTEGER).then_some(body)?;
    let (tag, _signature, rest) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _issuer, rest) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _not_before, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    der_time(tag, time)
}

/// Splits one DER element off `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur on this path
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None; // indefinite lengths are not DER; 4 GiB is plenty
        }
        let (bytes, rest) = rest.split_at(octets);
        (bytes.iter().fold(0usize, |length, &b| length << 8 | usize::from(b)), rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag
/// 0x18), as RFC 5280 requires them, in Unix seconds.
fn der_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let digits = contents.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| {
        digits.get(range).map(|d| d.iter().fold(0i32, |n, &b| n * 10 + i32::from(b - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2).and_then(|n| u8::try_from(n).ok());
    let month = time::Month::try_from(field(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, field(1)?).ok()?;
    let time = time::Time::from_hms(field(2)?, field(3)?, field(4)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Makes a self-signed certificate with openssl; returns (cert PEM path, key PEM path).
    fn openssl_cert(dir: &Path, name: &str, days: u32, key_args: &[&str]) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-subj", "/CN=localhost", "-days", &days.to_string(), "-newkey"])
            .args(key_args)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        (cert, key)
    }

    fn openssl_enddate(cert: &Path) -> i64 {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // notAfter=2026-05-01 12:00:00Z
        let text = String::from_utf8(out.stdout).unwrap();
        let value = text.trim().strip_prefix("notAfter=").unwrap();
        let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        time::PrimitiveDateTime::parse(value, &format).unwrap().assume_utc().unix_timestamp()
    }

    fn leaf_der(cert: &Path) -> Vec<u8> {
        CertificateDer::pem_file_iter(cert).unwrap().next().unwrap().unwrap().to_vec()
    }

    #[test]
    fn not_after_matches_openssl_for_utc_time_and_generalized_time() {
        let dir = tempfile::tempdir().unwrap();
        // 30 days: a UTCTime; 36500 days: past 2049, a GeneralizedTime.
        for (name, days) in [("short", 30), ("long", 36500)] {
            let (cert, _) = openssl_cert(dir.path(), name, days, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
            let der = leaf_der(&cert);
            let expected = openssl_enddate(&cert);
            assert_eq!(not_after(&der), Some(expected), "{name}");
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let wanted = now + i64::from(days) * 86_400;
            assert!((expected - wanted).abs() < 120, "{name}: {expected} vs {wanted}");
        }
    }

    #[test]
    fn not_after_of_an_rsa_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = openssl_cert(dir.path(), "rsa", 400, &["rsa:2048"]);
        assert_eq!(not_after(&leaf_der(&cert)), Some(openssl_enddate(&cert)));
    }

    #[test]
    fn der_times() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631_152_000));
        assert_eq!(der_time(0x18, b"20380119031408Z"), Some(2_147_483_648));
        assert_eq!(der_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        // Not RFC 5280: no Z, fractions, offsets, wrong lengths, impossible dates.
        assert_eq!(der_time(0x17, b"700101000000"), None);
        assert_eq!(der_time(0x18, b"20380119031408.5Z"), None);
        assert_eq!(der_time(0x17, b"7001010000+0100"), None);
        assert_eq!(der_time(0x18, b"700101000000Z"), None);
        assert_eq!(der_time(0x17, b"701301000000Z"), None);
        assert_eq!(der_time(0x17, b"700230000000Z"), None);
        assert_eq!(der_time(0x04, b"700101000000Z"), None);
    }

    #[test]
    fn not_after_refuses_what_is_not_a_certificate() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30]), None);
        assert_eq!(not_after(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(not_after(&[0x30, 0x05, 0x30, 0x03, 0x02, 0x01]), None);
        assert_eq!(not_after(&[0x04, 0x02, 0x30, 0x00]), None);
        // Every truncation of a real certificate is refused, never a panic.
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = openssl_cert(dir.path(), "t", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        let der = leaf_der(&cert);
        for end in 0..der.len() {
            assert_eq!(not_after(&der[..end]), None, "truncated at {end}");
        }
    }

    #[test]
    fn load_refuses_bad_pairs_naming_the_files_and_not_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = openssl_cert(dir.path(), "a", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        let (_, key_b) = openssl_cert(dir.path(), "b", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        let metrics = Arc::new(Metrics::new());
        let settings = |cert: &Path, key: &Path| crate::settings::Tls { cert: cert.into(), key: key.into() };
        let key_text = std::fs::read_to_string(&key_b).unwrap();
        let key_body: Vec<&str> = key_text.lines().filter(|l| !l.starts_with("-----")).collect();

        let missing = dir.path().join("missing.key");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n").unwrap();
        let cases = [
            (settings(&cert_a, &key_b), "does not match"),
            (settings(&cert_a, &missing), "cannot read"),
            (settings(&key_a, &key_a), "no CERTIFICATE"),
            (settings(&cert_a, &cert_a), "no unencrypted private key"),
            (settings(&cert_a, &garbage), "invalid base64"),
        ];
        for (pair, wanted) in cases {
            let error = Tls::load(&pair, metrics.clone()).unwrap_err().to_string();
            assert!(error.contains(wanted), "{error}");
            assert!(
                error.contains(&*pair.cert.to_string_lossy()) || error.contains(&*pair.key.to_string_lossy()),
                "{error}"
            );
            for line in &key_body {
                assert!(!error.contains(line), "{error}");
            }
        }
        Tls::load(&settings(&cert_a, &key_a), metrics).unwrap();
    }

    #[test]
    fn reload_swaps_only_new_valid_pairs_and_counts_each_refusal_once() {
        let dir = tempfile::tempdir().unwrap();
        let ec = ["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let (cert_a, key_a) = openssl_cert(dir.path(), "a", 10, &ec);
        let (cert_b, key_b) = openssl_cert(dir.path(), "b", 20, &ec);
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::copy(&cert_a, &cert).unwrap();
        std::fs::copy(&key_a, &key).unwrap();
        let metrics = Arc::new(Metrics::new());
        let tls = Tls::load(&crate::settings::Tls { cert: cert.clone(), key: key.clone() }, metrics).unwrap();
        assert_eq!(tls.not_after(), openssl_enddate(&cert_a));
        assert_eq!(tls.reload(), Ok(false));

        // A mismatched pair: refused, counted once however often it is read.
        std::fs::copy(&cert_b, &cert).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(tls.reload_failures(), 1);
        assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_a));
        assert_eq!(tls.not_after(), openssl_enddate(&cert_a));

        // The matching key arrives: swapped once.
        std::fs::copy(&key_b, &key).unwrap();
        assert_eq!(tls.reload(), Ok(true));
        assert_eq!(tls.reload(), Ok(false));
        assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_b));
        assert_eq!(tls.not_after(), openssl_enddate(&cert_b));

        // The same bad content again after a good one is a new failure.
        std::fs::copy(&cert_a, &cert).unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.reload_failures(), 2);
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
        assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
        assert_eq!(tls.reload_failures(), 3);
        assert_eq!(tls.current().cert[0].as_ref(), leaf_der(&cert_b));
    }

    #[test]
    fn keys_in_pkcs8_sec1_and_pkcs1_load() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (ec_cert, ec_key) = openssl_cert(dir.path(), "ec", 1, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        let (rsa_cert, rsa_key) = openssl_cert(dir.path(), "rsa", 1, &["rsa:2048"]);
        let sec1 = dir.path().join("sec1.key");
        let pkcs1 = dir.path().join("pkcs1.key");
        let run = |args: &[&str], input: &Path, output: &Path| {
            let out =
                Command::new("openssl").args(args).arg("-in").arg(input).arg("-out").arg(output).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["ec"], &ec_key, &sec1);
        run(&["rsa", "-traditional"], &rsa_key, &pkcs1);
        assert!(std::fs::read_to_string(&sec1).unwrap().contains("BEGIN EC PRIVATE KEY"));
        assert!(std::fs::read_to_string(&pkcs1).unwrap().contains("BEGIN RSA PRIVATE KEY"));
        for (cert, key) in [(&ec_cert, &ec_key), (&ec_cert, &sec1), (&rsa_cert, &rsa_key), (&rsa_cert, &pkcs1)] {
            let settings = crate::settings::Tls { cert: cert.clone(), key: key.clone() };
            if let Err(e) = Tls::load(&settings, metrics.clone()) {
                panic!("{}: {e}", key.display());
            }
        }
    }
}
