//! `keygate demo`: one command for a newcomer. Starts an echo upstream and the proxy on
//! free local ports with the embedded store in a temporary folder, creates demo tenants
//! and keys, prints one ready-to-paste curl line per outcome (200, 401, 403, 429), then
//! serves, printing an access line per request, until Ctrl-C, SIGTERM or SIGHUP (the
//! terminal closed), and on each of them deletes the folder. The admin API is on too,
//! with a random token, and gets a curl line of its own. Everything it runs is the real
//! thing: the config files are written to the temporary folder and loaded as `serve`
//! would. The folder is the owner's alone (0700) and its secrets (admin token, peppers,
//! key file) are 0600.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::CliError;
use crate::app::{self, Options};
use crate::keys::manage::{self, NewKey};
use crate::keys::store::Store;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::settings::Settings;

pub fn run() -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::input(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(demo())
}

async fn demo() -> Result<(), CliError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| CliError::input(format!("demo: {what}: {e}"));
    // Before anything is written: a signal from now on stops the demo and deletes the
    // folder, instead of killing the process and leaving the secrets behind.
    let mut stop = Stop::install().map_err(|e| fail("signal handlers", &e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("keygate-demo-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    let folder = builder.tempdir().map_err(|e| fail("temporary folder", &e))?;
    let echo = TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail("echo upstream", &e))?;
    let echo_addr = echo.local_addr().map_err(|e| fail("echo upstream", &e))?;
    tokio::spawn(serve_echo(echo));

    let config = write_files(folder.path(), echo_addr).map_err(|e| fail("writing config", &e))?;
    let (settings, _) = Settings::load(&config).map_err(super::diagnostics_error)?;
    let (policy, peppers, _) = app::load_parts(&settings).map_err(super::diagnostics_error)?;
    let store = app::open_store(&settings, Arc::new(Metrics::new()), Some(super::STORE_TIMEOUT))
        .await
        .map_err(CliError::input)?;
    let (reader, limited) =
        create_demo_keys(&store, &Arc::new(policy), &peppers).await.map_err(|e| fail("creating keys", &e))?;
    drop(store);

    let running = app::start(settings, Options::default()).await.map_err(|e| fail("starting", &e))?;
    let proxy = running.proxy_addr.ok_or_else(|| CliError::input("the demo's config serves no proxy".to_string()))?;
    let base = format!("http://{proxy}");
    let health = format!("http://{}", running.admin_addr);
    println!("keygate demo");
    println!("  proxy:              {base}");
    println!("  metrics and health: {health}  (/metrics, /healthz, /readyz)");
    if let Some(api) = running.admin_api_addr {
        println!("  admin API:          http://{api}  (its token is in admin-token)");
    }
    println!("  echo upstream:      http://{echo_addr}");
    println!("config, secrets and key store in {} (deleted on exit)\n", folder.path().display());
    println!("# 200: a key with calls:read reads calls");
    println!("curl -i -H 'Authorization: Bearer {}' {base}/v1/calls", reader.expose());
    println!("# 401: no key");
    println!("curl -i {base}/v1/calls");
    println!("# 403: that key lacks calls:write");
    println!("curl -i -X POST -H 'Authorization: Bearer {}' {base}/v1/calls", reader.expose());
    println!("# 429: a plan of 1 request a minute (and 1,000 a month), asked twice: the second answer is the 429,");
    println!("# naming the limit that refused (\"limit\": \"minute\"); RateLimit-Policy lists both limits");
    println!("curl -si -H 'Authorization: Bearer {}' {base}/v1/calls {base}/v1/calls", limited.expose());
    println!("# metrics (on the metrics and health listener)");
    println!("curl -s {health}/metrics | grep keygate_auth_decisions_total");
    if let Some(api) = running.admin_api_addr {
        let token = std::fs::read_to_string(folder.path().join("admin-token")).unwrap_or_default();
        println!("# the admin API (docs/admin-api.md): every key, never a secret");
        println!("curl -s -H 'Authorization: Bearer {}' http://{api}/admin/v1/keys", token.trim());
    }
    println!("\nserving until Ctrl-C (or SIGTERM); one access line per request on stderr");

    let signal = stop.wait().await;
    // Not eprintln!: after SIGHUP the terminal may be gone, and a failed write must not
    // stop the clean-up.
    let _ = writeln!(std::io::stderr(), "keygate demo: {signal}: stopping and deleting {}", folder.path().display());
    running.shutdown().await;
    drop(folder);
    Ok(())
}

/// The signals that end the demo: SIGINT (Ctrl-C), SIGTERM, SIGHUP (its terminal closed).
struct Stop {
    #[cfg(unix)]
    signals: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl Stop {
    #[cfg(unix)]
    fn install() -> std::io::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            signals: [
                (signal(SignalKind::interrupt())?, "SIGINT"),
                (signal(SignalKind::terminate())?, "SIGTERM"),
                (signal(SignalKind::hangup())?, "SIGHUP"),
            ],
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Stop> {
        Ok(Stop {})
    }

    /// Waits for the first of the signals; returns its name.
    #[cfg(unix)]
    async fn wait(&mut self) -> &'static str {
        let [(int, a), (term, b), (hup, c)] = &mut self.signals;
        tokio::select! {
            _ = int.recv() => a,
            _ = term.recv() => b,
            _ = hup.recv() => c,
        }
    }

    #[cfg(not(unix))]
    async fn wait(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Writes `contents` to a new file only its owner can read and write (0600 on Unix).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}

/// Writes `keygate.toml`, `routes.toml` and a pepper file; returns the config's path.
fn write_files(folder: &Path, echo: SocketAddr) -> std::io::Result<std::path::PathBuf> {
    let routes = format!(
        r#"# The demo policy: a slice of a voice-agent API in front of an echo service.
default = "deny"

[scopes]
"calls:read" = "View call history and details"
"calls:write" = "Initiate outbound calls"

[plans.pro]
limits = [
  {{ name = "burst",  requests = 10,     window = "1s" }},
  {{ name = "minute", requests = 300,    window = "60s" }},
  {{ name = "month",  requests = 100000, period = "month" }},
]
concurrency = 5
max_keys = 5

[plans.demo-limited]
limits = [
  {{ name = "minute", requests = 1,    window = "60s" }},
  {{ name = "month",  requests = 1000, period = "month" }},
]

[upstreams.echo]
url = "http://{echo}"

[[routes]]
prefix = "/v1/calls"
methods = ["GET", "HEAD"]
scopes = ["calls:read"]
upstream = "echo"

[[routes]]
prefix = "/v1/calls"
methods = ["POST"]
scopes = ["calls:write"]
upstream = "echo"

[[routes]]
prefix = "/status"
auth = "none"
upstream = "echo"
"#
    );
    let config = r#"policy = "routes.toml"

[listen]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"
api_address = "127.0.0.1:0"
token_file = "admin-token"

[keys]
source = "file"
file = "keys.json"
pepper_file = "peppers"
"#;
    write_private(&folder.join("routes.toml"), &routes)?;
    write_private(&folder.join("keygate.toml"), config)?;
    let pepper: String = format!("demo={:032x}{:032x}\n", rand::random::<u128>(), rand::random::<u128>());
    write_private(&folder.join("peppers"), &pepper)?;
    write_private(&folder.join("admin-token"), &format!("{:032x}\n", rand::random::<u128>()))?;
    Ok(folder.join("keygate.toml"))
}

/// Tenant `acme` (pro) with a calls:read key, tenant `tiny` (1 request a minute).
async fn create_demo_keys(
    store: &Store,
    policy: &Arc<Policy>,
    peppers: &crate::keys::Peppers,
) -> Result<(crate::keys::Secret, crate::keys::Secret), manage::ManageError> {
    store.create_tenant(policy, "acme", "pro").await?;
    store.create_tenant(policy, "tiny", "demo-limited").await?;
    let key = |tenant: &str, name: &str| NewKey {
        tenant: tenant.to_string(),
        name: name.to_string(),
        scopes: vec!["calls:read".to_string()],
        expires_in: None,
    };
    let reader = store.create_key(policy, peppers, &key("acme", "demo reader")).await?;
    let limited = store.create_key(policy, peppers, &key("tiny", "demo limited")).await?;
    Ok((reader.secret, limited.secret))
}

/// The echo upstream: answers every request with a JSON description of what it received,
/// so the identity headers keygate adds are visible.
async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service =
                service_fn(|request: Request<Incoming>| async move { Ok::<_, Infallible>(echo(request).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let size = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> =
        parts.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())).collect();
    let body = serde_json::json!({
        "echo": "hello from the upstream",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": size,
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
