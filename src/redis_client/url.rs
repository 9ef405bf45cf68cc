//! Reading `[redis]` into what to connect to: the node addresses of the URL (one node,
//! or a cluster's list), the password that applies (file, environment or URL) and the
//! CA to trust for `rediss://`. Errors never echo the URL: it may hold a password.

use std::path::{Path, PathBuf};

use redis::{ConnectionInfo, IntoConnectionInfo, TlsCertificates};

/// Why `RedisClient::connect` refused the configuration. Never includes the password
/// (nor the URL, which may hold one).
#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    /// The URL does not parse.
    #[error("redis.url is not a valid redis://, rediss://, redis+cluster:// or rediss+cluster:// URL: {0}")]
    Url(String),
    /// `password_file` cannot be read.
    #[error("cannot read redis.password_file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `ca_file` cannot be read or holds no PEM certificate.
    #[error("redis.ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    /// redis-rs refused the resulting configuration.
    #[error("invalid Redis client configuration: {0}")]
    Config(String),
}

/// The parsed `[redis]` settings.
pub(super) struct Parsed {
    pub(super) nodes: Vec<ConnectionInfo>,
    pub(super) cluster: bool,
    pub(super) certs: Option<TlsCertificates>,
}

/// `password_file` (trimmed), else `env` (if not empty), else none (the URL's).
pub(super) fn resolve_password(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, RedisClientError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RedisClientError::PasswordFile { path: path.to_path_buf(), source })?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(env.filter(|p| !p.is_empty()))
}

/// Splits `url` into node connection infos, with `password` (if any) replacing the
/// URL's, and the TLS roots from `ca_file`.
pub(super) fn parse(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<Parsed, RedisClientError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| RedisClientError::Url("no scheme".into()))?;
    let scheme = scheme.to_ascii_lowercase();
    let (node_scheme, cluster) = match scheme.as_str() {
        "redis" => ("redis", false),
        "rediss" => ("rediss", false),
        "redis+cluster" => ("redis", true),
        "rediss+cluster" => ("rediss", true),
        _ => return Err(RedisClientError::Url("unknown scheme".into())),
    };
    let node_urls: Vec<String> = if cluster {
        // `[user:pass@]h1:p1,h2:p2[/db]`: the credentials apply to every node.
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(RedisClientError::Url("empty host in the cluster node list".into()));
        }
        hosts.iter().map(|h| format!("{node_scheme}://{userinfo}{h}{path}")).collect()
    } else {
        vec![format!("{node_scheme}://{rest}")]
    };
    let mut nodes = Vec::with_capacity(node_urls.len());
    for node in node_urls {
        // redis-rs's message is generic; the URL itself is never echoed (it may hold a
        // password).
        let info = node.as_str().into_connection_info().map_err(|e| RedisClientError::Url(e.category().to_string()))?;
        let info = match password {
            Some(p) => {
                let redis = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(redis)
            }
            None => info,
        };
        nodes.push(info);
    }
    let tls = node_scheme == "rediss";
    let certs = match ca_file {
        Some(path) if tls => Some(TlsCertificates { client_tls: None, root_cert: Some(read_ca(path)?) }),
        _ => None,
    };
    Ok(Parsed { nodes, cluster, certs })
}

/// Reads `path` and checks it holds at least one PEM certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, RedisClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let ca_error = |message: String| RedisClientError::CaFile { path: path.to_path_buf(), message };
    let pem = std::fs::read(path).map_err(|e| ca_error(format!("cannot read: {e}")))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| ca_error(format!("invalid PEM: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    Ok(pem)
}
