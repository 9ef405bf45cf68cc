//! The TLS listener over loopback: real handshakes against `keygate::tls`, certificates
//! made by the `openssl` command line at test time. ALPN, ECDSA and RSA pairs, chains,
//! protocol versions, and rotation (in-place write, rename over, the Kubernetes `..data`
//! symlink swap, a mismatched pair refused) with the expiry gauge following.

mod support;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keygate::metrics::Metrics;
use keygate::tls::{handshake, Tls};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use support::{eventually, rename_over};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// What the test server writes after the handshake: `hello <alpn>\n`.
const GREETING: &str = "hello";

/// How soon a rotated pair must be served (docs/reference.md: files watched and reloaded).
const ROTATION_DEADLINE: Duration = Duration::from_secs(2);
/// The watches' poll backstop in these tests: an hour, so that a rotation seen within
/// [`ROTATION_DEADLINE`] was seen by the filesystem watch, and a broken watch fails them.
const EVENTS_ONLY: Duration = Duration::from_secs(3600);

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[leaf]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = critical,CA:FALSE
extendedKeyUsage = serverAuth
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

#[derive(Clone, Copy, Debug)]
enum KeyKind {
    Ecdsa,
    Rsa,
}

impl KeyKind {
    fn newkey(self) -> &'static [&'static str] {
        match self {
            KeyKind::Ecdsa => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            KeyKind::Rsa => &["-newkey", "rsa:2048"],
        }
    }
}

/// A certificate file and key file made by openssl.
#[derive(Clone, Debug)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    /// The certificates in the cert file, leaf first.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(&self.cert).unwrap().map(Result::unwrap).collect()
    }

    fn leaf(&self) -> CertificateDer<'static> {
        self.chain().remove(0)
    }

    /// notAfter as `openssl x509 -enddate` reads it, in Unix seconds.
    fn not_after(&self) -> i64 {
        let out = openssl(&["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in", path(&self.cert)]);
        let text = String::from_utf8(out).unwrap();
        let value = text.trim().strip_prefix("notAfter=").unwrap();
        let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        time::PrimitiveDateTime::parse(value, &format).unwrap().assume_utc().unix_timestamp()
    }

    fn settings(&self) -> keygate::settings::Tls {
        keygate::settings::Tls { cert: self.cert.clone(), key: self.key.clone() }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("the openssl command line");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn config_file(dir: &Path) -> PathBuf {
    let config = dir.join("openssl.cnf");
    if !config.exists() {
        std::fs::write(&config, OPENSSL_CONFIG).unwrap();
    }
    config
}

/// A self-signed server certificate for localhost / 127.0.0.1, valid `days`.
fn self_signed(dir: &Path, name: &str, kind: KeyKind, days: u32) -> Pair {
    let config = config_file(dir);
    let pair = Pair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    let days = days.to_string();
    let mut args = vec!["req", "-x509", "-nodes", "-config", path(&config), "-extensions", "leaf", "-days", &days];
    args.extend_from_slice(kind.newkey());
    args.extend_from_slice(&["-keyout", path(&pair.key), "-out", path(&pair.cert)]);
    openssl(&args);
    pair
}

/// A root CA, an intermediate and a leaf signed by it; the pair's cert file holds the leaf
/// then the intermediate. Returns the pair and the root.
fn chain(dir: &Path) -> (Pair, CertificateDer<'static>) {
    let config = config_file(dir);
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ec = KeyKind::Ecdsa.newkey();
    let mut root = vec!["req", "-x509", "-nodes", "-config", path(&config), "-extensions", "ca", "-days", "2"];
    root.extend_from_slice(ec);
    let (root_key, root_crt) = (file("root.key"), file("root.crt"));
    root.extend_from_slice(&["-subj", "/CN=keygate test root", "-keyout", &root_key, "-out", &root_crt]);
    openssl(&root);
    let issue = |name: &str, subject: &str, ca_crt: &str, ca_key: &str, extensions: &str, serial: &str| {
        let (key, csr, crt) =
            (file(&format!("{name}.key")), file(&format!("{name}.csr")), file(&format!("{name}.crt")));
        let mut request = vec!["req", "-new", "-nodes", "-config", path(&config), "-subj", subject];
        request.extend_from_slice(ec);
        request.extend_from_slice(&["-keyout", &key, "-out", &csr]);
        openssl(&request);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_crt,
            "-CAkey",
            ca_key,
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            path(&config),
            "-extensions",
            extensions,
            "-out",
            &crt,
        ]);
        (crt, key)
    };
    let (int_crt, int_key) = issue("intermediate", "/CN=keygate test intermediate", &root_crt, &root_key, "ca", "2");
    let (leaf_crt, leaf_key) = issue("leaf", "/CN=localhost", &int_crt, &int_key, "leaf", "3");
    let bundle = dir.join("chain.crt");
    let text = std::fs::read_to_string(&leaf_crt).unwrap() + &std::fs::read_to_string(&int_crt).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let root = CertificateDer::from_pem_file(&root_crt).unwrap();
    (Pair { cert: bundle, key: leaf_key.into() }, root)
}

/// Serves `tls` on a loopback port: after the handshake, writes `hello <alpn>\n` and
/// closes. The task ends with the test's runtime.
async fn serve(tls: Arc<Tls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = tls.acceptor();
            tokio::spawn(async move {
                let handshaken = tokio::time::timeout(Duration::from_secs(5), handshake(&acceptor, stream)).await;
                if let Ok(Ok((mut stream, alpn))) = handshaken {
                    let alpn = alpn.map_or_else(|| "none".to_owned(), |p| String::from_utf8_lossy(&p).into_owned());
                    let _ = stream.write_all(format!("{GREETING} {alpn}\n").as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    address
}

/// What a client saw of one connection.
#[derive(Debug)]
struct Session {
    chain: Vec<CertificateDer<'static>>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    greeting: String,
}

impl Session {
    fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Connects to `address` as `localhost` with a fresh client (no resumption), trusting
/// `roots`, offering `alpn`, allowing `versions`.
async fn connect_with(
    address: SocketAddr,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> io::Result<Session> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await?;
    let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let (_, connection) = stream.get_ref();
    let chain = connection.peer_certificates().unwrap_or_default().to_vec();
    let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
    let version = connection.protocol_version();
    let mut greeting = String::new();
    stream.read_to_string(&mut greeting).await?;
    Ok(Session { chain, alpn, version, greeting })
}

async fn connect(address: SocketAddr, roots: &[CertificateDer<'static>]) -> io::Result<Session> {
    connect_with(address, roots, &[b"h2", b"http/1.1"], rustls::ALL_VERSIONS).await
}

/// Handshakes until the server presents `leaf`, for at most [`ROTATION_DEADLINE`].
async fn wait_until_served(address: SocketAddr, roots: &[CertificateDer<'static>], leaf: &CertificateDer<'_>) {
    let served = eventually(ROTATION_DEADLINE, async || {
        connect(address, roots).await.is_ok_and(|session| session.leaf() == leaf)
    })
    .await;
    assert!(served, "the new certificate is not served after {ROTATION_DEADLINE:?}");
}

fn expiry_gauge(metrics: &Metrics) -> f64 {
    let text = metrics.encode();
    let line = text.lines().find(|l| l.starts_with("keygate_tls_cert_expiry_timestamp_seconds ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Writes `pair` over `target`'s files in place (truncate and write, as `cp` does).
fn overwrite(pair: &Pair, target: &Pair) {
    std::fs::write(&target.cert, std::fs::read(&pair.cert).unwrap()).unwrap();
    std::fs::write(&target.key, std::fs::read(&pair.key).unwrap()).unwrap();
}

/// Renames copies of `pair`'s files over `target`'s, the certificate first.
fn rename_pair_over(pair: &Pair, target: &Pair) {
    for (from, to) in [(&pair.cert, &target.cert), (&pair.key, &target.key)] {
        rename_over(to, std::fs::read(from).unwrap());
    }
}

/// Copies `pair` to `target` (the served file names), for a server to start from.
fn install(pair: &Pair, dir: &Path) -> Pair {
    let target = Pair { cert: dir.join("tls.crt"), key: dir.join("tls.key") };
    std::fs::copy(&pair.cert, &target.cert).unwrap();
    std::fs::copy(&pair.key, &target.key).unwrap();
    target
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_prefers_h2_and_falls_back_to_http1() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed(dir.path(), "a", KeyKind::Ecdsa, 1);
    let tls = Arc::new(Tls::load(&pair.settings(), Arc::new(Metrics::new())).unwrap());
    let address = serve(tls).await;
    let roots = [pair.leaf()];
    let all = rustls::ALL_VERSIONS;

    for (offered, negotiated) in [
        (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
        (&[b"http/1.1", b"h2"], Some(b"h2")), // the server's preference
        (&[b"http/1.1"], Some(b"http/1.1")),
        (&[b"h2"], Some(b"h2")),
        (&[], None),
    ] {
        let session = connect_with(address, &roots, offered, all).await.unwrap();
        assert_eq!(session.alpn.as_deref(), negotiated, "offered {offered:?}");
        let shown = negotiated.map_or("none".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
        assert_eq!(session.greeting, format!("{GREETING} {shown}\n"));
    }
    // A client that offers only protocols keygate does not speak is refused (RFC 7301).
    assert!(connect_with(address, &roots, &[b"spdy/3"], all).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_and_rsa_pairs_are_served_over_tls_1_2_and_1_3() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [KeyKind::Ecdsa, KeyKind::Rsa] {
        let pair = self_signed(dir.path(), &format!("{kind:?}"), kind, 1);
        let tls = Arc::new(Tls::load(&pair.settings(), Arc::new(Metrics::new())).unwrap());
        let address = serve(tls).await;
        let roots = [pair.leaf()];
        for (version, wire) in
            [(&rustls::version::TLS13, ProtocolVersion::TLSv1_3), (&rustls::version::TLS12, ProtocolVersion::TLSv1_2)]
        {
            let session = connect_with(address, &roots, &[b"h2", b"http/1.1"], &[version]).await.unwrap();
            assert_eq!(session.version, Some(wire), "{kind:?}");
            assert_eq!(session.leaf(), &pair.leaf(), "{kind:?}");
            assert_eq!(session.greeting, format!("{GREETING} h2\n"));
        }
        // Another server's certificate is not trusted: the client really verifies.
        let other = self_signed(dir.path(), "other", kind, 1);
        assert!(connect(address, &[other.leaf()]).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (pair, root) = chain(dir.path());
    assert_eq!(pair.chain().len(), 2);
    let metrics = Arc::new(Metrics::new());
    let tls = Arc::new(Tls::load(&pair.settings(), metrics.clone()).unwrap());
    let address = serve(tls).await;
    let session = connect(address, &[root]).await.unwrap();
    assert_eq!(session.chain, pair.chain());
    assert_eq!(expiry_gauge(&metrics), pair.not_after() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_1_and_1_0_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed(dir.path(), "a", KeyKind::Rsa, 1);
    let tls = Arc::new(Tls::load(&pair.settings(), Arc::new(Metrics::new())).unwrap());
    let address = serve(tls).await.to_string();
    let s_client = |version: &'static str| {
        let address = address.clone();
        let ca = pair.cert.clone();
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &address, "-servername", "localhost", version])
            // Let openssl itself offer the old protocols, so that the refusal is keygate's.
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", path(&ca), "-verify_return_error"])
            .args(["-alpn", "h2,http/1.1", "-ign_eof"])
            .stdin(std::process::Stdio::null())
            .output()
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let out = s_client(version).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{version}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("{GREETING} h2\n")), "{version}: {text}");
    }
    for version in ["-tls1_1", "-tls1"] {
        let out = s_client(version).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{version} was accepted");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(GREETING), "{version} was served");
        // An alert from the server (rustls answers handshake_failure): the client did offer.
        assert!(stderr.contains("alert"), "{version}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pair_written_in_place_is_served_within_two_seconds_and_the_gauge_follows() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyKind::Ecdsa, 30);
    let b = self_signed(dir.path(), "b", KeyKind::Rsa, 90);
    let served = tempfile::tempdir().unwrap();
    let target = install(&a, served.path());
    let metrics = Arc::new(Metrics::new());
    let tls = Tls::load_and_watch(&target.settings(), metrics.clone(), EVENTS_ONLY).unwrap();
    assert_eq!(expiry_gauge(&metrics), a.not_after() as f64);
    assert_eq!(tls.not_after(), a.not_after());
    let address = serve(tls.clone()).await;
    let roots = [a.leaf(), b.leaf()];
    assert_eq!(connect(address, &roots).await.unwrap().leaf(), &a.leaf());

    overwrite(&b, &target);
    wait_until_served(address, &roots, &b.leaf()).await;
    assert_eq!(expiry_gauge(&metrics), b.not_after() as f64);
    assert_eq!(tls.not_after(), b.not_after());

    overwrite(&a, &target);
    wait_until_served(address, &roots, &a.leaf()).await;
    assert_eq!(expiry_gauge(&metrics), a.not_after() as f64);
    // The moment between the certificate and the key is not a failure.
    assert_eq!(tls.reload_failures(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pair_renamed_over_is_served_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyKind::Rsa, 1);
    let b = self_signed(dir.path(), "b", KeyKind::Ecdsa, 2);
    let served = tempfile::tempdir().unwrap();
    let target = install(&a, served.path());
    let metrics = Arc::new(Metrics::new());
    let tls = Tls::load_and_watch(&target.settings(), metrics.clone(), EVENTS_ONLY).unwrap();
    let address = serve(tls.clone()).await;
    let roots = [a.leaf(), b.leaf()];

    rename_pair_over(&b, &target);
    wait_until_served(address, &roots, &b.leaf()).await;
    rename_pair_over(&a, &target);
    wait_until_served(address, &roots, &a.leaf()).await;
    assert_eq!(expiry_gauge(&metrics), a.not_after() as f64);
    assert_eq!(tls.reload_failures(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_secret_swap_is_served_within_two_seconds() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyKind::Ecdsa, 10);
    let b = self_signed(dir.path(), "b", KeyKind::Ecdsa, 20);
    // What the kubelet writes for a Secret volume.
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    let version = |name: &str, pair: &Pair| {
        std::fs::create_dir(m.join(name)).unwrap();
        std::fs::copy(&pair.cert, m.join(name).join("tls.crt")).unwrap();
        std::fs::copy(&pair.key, m.join(name).join("tls.key")).unwrap();
    };
    version("..2026_x", &a);
    symlink("..2026_x", m.join("..data")).unwrap();
    symlink("..data/tls.crt", m.join("tls.crt")).unwrap();
    symlink("..data/tls.key", m.join("tls.key")).unwrap();
    let target = Pair { cert: m.join("tls.crt"), key: m.join("tls.key") };
    let metrics = Arc::new(Metrics::new());
    let tls = Tls::load_and_watch(&target.settings(), metrics.clone(), EVENTS_ONLY).unwrap();
    let address = serve(tls.clone()).await;
    let roots = [a.leaf(), b.leaf()];
    assert_eq!(connect(address, &roots).await.unwrap().leaf(), &a.leaf());

    // The update: a new version directory, then one atomic rename of the `..data` link.
    version("..2026_y", &b);
    symlink("..2026_y", m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    std::fs::remove_dir_all(m.join("..2026_x")).unwrap();
    wait_until_served(address, &roots, &b.leaf()).await;
    assert_eq!(expiry_gauge(&metrics), b.not_after() as f64);
    assert_eq!(tls.reload_failures(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_pair_is_refused_and_counted_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyKind::Ecdsa, 10);
    let b = self_signed(dir.path(), "b", KeyKind::Ecdsa, 20);
    let c = self_signed(dir.path(), "c", KeyKind::Rsa, 30);
    let served = tempfile::tempdir().unwrap();
    let target = install(&a, served.path());
    let metrics = Arc::new(Metrics::new());
    let tls = Tls::load_and_watch(&target.settings(), metrics.clone(), EVENTS_ONLY).unwrap();
    let address = serve(tls.clone()).await;
    let roots = [a.leaf(), b.leaf(), c.leaf()];

    // B's certificate with C's key.
    rename_pair_over(&Pair { cert: b.cert.clone(), key: c.key.clone() }, &target);
    let counted = eventually(Duration::from_secs(4), async || tls.reload_failures() >= 1).await;
    assert!(counted, "the mismatch is not counted after 4 s");
    assert_eq!(tls.reload_failures(), 1);
    assert_eq!(connect(address, &roots).await.unwrap().leaf(), &a.leaf());
    assert_eq!(expiry_gauge(&metrics), a.not_after() as f64);
    assert!(matches!(tls.reload(), Err(keygate::tls::TlsError::Mismatch { .. })));
    assert_eq!(tls.reload_failures(), 1, "the same refused pair is counted once");

    // The right key arrives: B is served.
    rename_pair_over(&b, &target);
    wait_until_served(address, &roots, &b.leaf()).await;
    assert_eq!(expiry_gauge(&metrics), b.not_after() as f64);
    assert_eq!(tls.reload_failures(), 1);

    // A file that is not PEM at all is refused the same way.
    std::fs::write(&target.cert, "not a certificate\n").unwrap();
    let counted = eventually(Duration::from_secs(4), async || tls.reload_failures() >= 2).await;
    assert!(counted, "the bad file is not counted after 4 s");
    assert_eq!(connect(address, &roots).await.unwrap().leaf(), &b.leaf());
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_tls_stops_its_watch() {
    let dir = tempfile::tempdir().unwrap();
    let a = self_signed(dir.path(), "a", KeyKind::Ecdsa, 1);
    let served = tempfile::tempdir().unwrap();
    let target = install(&a, served.path());
    let tls = Tls::load_and_watch(&target.settings(), Arc::new(Metrics::new()), EVENTS_ONLY).unwrap();
    let weak = Arc::downgrade(&tls);
    drop(tls);
    // The watcher holds no strong reference: nothing keeps the acceptor alive.
    assert!(weak.upgrade().is_none());
}
