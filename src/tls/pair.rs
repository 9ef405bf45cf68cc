//! Reading and checking one certificate/key pair: both files read (symlinks resolved
//! anew) and fingerprinted, the PEM parsed, the key loaded and matched to the leaf
//! certificate. Errors name the files, never their content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::der::not_after;

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

/// Identifies what a read of the two files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fingerprint {
    /// SHA-256 over both files' contents.
    Content([u8; 32]),
    /// A file could not be read; the error's text.
    Unreadable(String),
}

/// Both files as read, and their hash.
pub(super) struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    pub(super) fingerprint: Fingerprint,
}

/// A pair ready to serve.
pub(super) struct Loaded {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) not_after: i64,
}

/// Reads both files (resolving symlinks anew) and hashes them.
pub(super) fn read_files(files: &crate::settings::Tls) -> Result<Contents, TlsError> {
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
pub(super) fn build(
    files: &crate::settings::Tls,
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
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
