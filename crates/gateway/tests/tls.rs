//! TLS termination (issue #20): a real gateway (`ServerThread::start_tls` serving the
//! `HttpUpstream`) in front of a real axum backend, certificates from an rcgen test CA written to
//! disk, and tokio-rustls clients speaking HTTP/1.1 or HTTP/2 (ALPN) with hyper's client
//! connections. Checks the forwarded scheme, certificate reloads (explicit and polled) without
//! dropping open connections, refused replacements, the handshake timeout, client certificates
//! and the plain listener's redirect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::any;
use bytes::Bytes;
use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
use herd_gateway::server::{ServerLimits, ServerThread, Threads};
use herd_gateway::tls::{
    HttpsRedirect, RedirectConfig, TLS_HANDSHAKE_FAILURES_TOTAL, TlsConfig, TlsTerminator,
};
use herd_lb_core::{EndpointConfig, Error};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        // A counter, not the clock: two tests of this process once got the same nanosecond
        // reading and wrote their certificates into one directory.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = format!(
            "herd-tls-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that signs certificates for `localhost`.
struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, PEM, and the certificate's DER to compare with what a client saw.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "herd test CA");
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost`, told apart from others by its common name.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Writes `leaf` where `config` reads it: the chain (leaf then CA, as a full chain is), the key.
fn install(config: &TlsConfig, leaf: &Leaf, pki: &Pki) {
    std::fs::write(&config.cert, format!("{}{}", leaf.cert_pem, pki.ca_pem)).unwrap();
    std::fs::write(&config.key, &leaf.key_pem).unwrap();
}

#[expect(deprecated, reason = "the workspace's rustls provider is ring")]
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting only the test CA, offering `alpn`, with a fresh session cache (so each
/// handshake is a full one and shows the server's certificate of the time).
fn client_config(pki: &Pki, alpn: &[&[u8]], identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate the server showed.
fn seen_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, connection) = stream.get_ref();
    connection.peer_certificates().unwrap()[0].clone()
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 client connection over `stream`, its I/O task spawned.
async fn h1(stream: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Status, version and body of `GET path` on `sender`.
async fn get_h1(sender: &mut H1, path: &str) -> (u16, http::Version, String) {
    sender.ready().await.unwrap();
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    collect(res).await
}

async fn collect(res: http::Response<hyper::body::Incoming>) -> (u16, http::Version, String) {
    let (status, version) = (res.status().as_u16(), res.version());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// The backend: answers `PROTO VERSION`, the `X-Forwarded-Proto` it received and the HTTP
/// version the gateway spoke to it. Served in the test's runtime; ends when dropped.
struct Backend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Self {
        let app = Router::new().fallback(any(|req: axum::extract::Request| async move {
            let proto = req
                .headers()
                .get("x-forwarded-proto")
                .map_or("-", |v| v.to_str().unwrap_or("?"))
                .to_owned();
            format!("{proto} {:?}", req.version())
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway on a free port proxying to `backend`, over TLS when `tls` is given.
async fn gateway(
    backend: &Backend,
    limits: ServerLimits,
    tls: Option<TlsTerminator>,
) -> ServerThread {
    gateway_on(Threads::WorkStealing(1), backend, limits, tls).await
}

/// [`gateway`] on `threads`.
async fn gateway_on(
    threads: Threads,
    backend: &Backend,
    limits: ServerLimits,
    tls: Option<TlsTerminator>,
) -> ServerThread {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = vec![EndpointConfig {
        address: backend.addr.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    let build =
        move || async move { HttpUpstream::from_config(&config).map_err(|e| e.to_string()) };
    let bind = "127.0.0.1:0".parse().unwrap();
    match tls {
        Some(tls) => ServerThread::start_tls("tls-gw", bind, threads, limits, tls, build).await,
        None => ServerThread::start_with_limits("plain-gw", bind, threads, limits, build).await,
    }
    .unwrap()
}

/// A test CA, a directory with `cert.pem`/`key.pem` holding the certificate `first`, and the
/// settings reading them (polling as `reload_interval` says).
fn setup(reload_interval: Duration) -> (Pki, TempDir, TlsConfig, Leaf) {
    let pki = Pki::new();
    let dir = TempDir::new("certs");
    let mut config = TlsConfig::new(dir.path("cert.pem"), dir.path("key.pem"));
    config.reload_interval = reload_interval;
    let first = pki.leaf("first");
    install(&config, &first, &pki);
    (pki, dir, config, first)
}

/// Waits (up to 10 s) until a new handshake shows `cert`.
async fn until_served(addr: SocketAddr, pki: &Pki, cert: &CertificateDer<'static>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = handshake(addr, client_config(pki, &[b"http/1.1"], None))
            .await
            .unwrap();
        if seen_cert(&stream) == *cert {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn https_over_http1_and_h2_reaches_the_backend_as_https() {
    let (pki, _dir, config, first) = setup(Duration::ZERO);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let gw = gateway(&backend, ServerLimits::default(), Some(tls)).await;
    assert_eq!(gw.url(), format!("https://{}", gw.addr()));

    // HTTP/1.1, chosen by ALPN.
    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(seen_cert(&stream), first.der);
    let mut sender = h1(stream).await;
    assert_eq!(
        get_h1(&mut sender, "/a").await,
        (200, http::Version::HTTP_11, "https HTTP/1.1".to_owned())
    );
    // Keep-alive: a second request on the same connection.
    assert_eq!(get_h1(&mut sender, "/b").await.2, "https HTTP/1.1");

    // HTTP/2, preferred by the client and chosen by ALPN; the gateway speaks HTTP/1.1 upstream.
    let stream = handshake(gw.addr(), client_config(&pki, &[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for path in ["/one", "/two"] {
        sender.ready().await.unwrap();
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(
            collect(res).await,
            (200, http::Version::HTTP_2, "https HTTP/1.1".to_owned())
        );
    }

    // A client without ALPN still gets HTTP/1.1.
    let stream = handshake(gw.addr(), client_config(&pki, &[], None))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_h1(&mut h1(stream).await, "/").await.2, "https HTTP/1.1");

    // The same upstream on a plain listener forwards `http`.
    let plain = gateway(&backend, ServerLimits::default(), None).await;
    let mut raw = TcpStream::connect(plain.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut raw).await;
    assert!(answer.ends_with("http HTTP/1.1"), "{answer:?}");
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_handshakes_and_keeps_open_connections() {
    let (pki, _dir, config, first) = setup(Duration::ZERO);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let gw = gateway(&backend, ServerLimits::default(), Some(tls.clone())).await;

    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(seen_cert(&stream), first.der);
    let mut open = h1(stream).await;
    assert_eq!(get_h1(&mut open, "/").await.0, 200);

    let second = pki.leaf("second");
    install(&config, &second, &pki);
    // Polling is off: nothing changes until the reload.
    let before = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(seen_cert(&before), first.der);
    tls.reload().unwrap();

    let after = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(seen_cert(&after), second.der);
    assert_eq!(
        get_h1(&mut h1(after).await, "/new").await.2,
        "https HTTP/1.1"
    );
    // The connections opened before the reload keep working.
    assert_eq!(get_h1(&mut open, "/again").await.2, "https HTTP/1.1");
    assert_eq!(get_h1(&mut h1(before).await, "/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_during_handshakes_and_requests_fail_none_of_them() {
    let (pki, _dir, config, first) = setup(Duration::ZERO);
    let pki = Arc::new(pki);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let gw = gateway(&backend, ServerLimits::default(), Some(tls.clone())).await;
    let second = pki.leaf("second");
    let known = [first.der.clone(), second.der.clone()];

    // Four clients, each handshaking and asking 25 times in a row, while the certificate is
    // swapped back and forth under them.
    let addr = gw.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (pki, known) = (Arc::clone(&pki), known.clone());
            tokio::spawn(async move {
                for i in 0..25 {
                    let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
                    let stream = handshake(addr, client_config(&pki, alpn, None))
                        .await
                        .expect("handshake during reloads");
                    assert!(known.contains(&seen_cert(&stream)));
                    if i % 2 == 1 {
                        let (status, _, body) = get_h1(&mut h1(stream).await, "/").await;
                        assert_eq!((status, body.as_str()), (200, "https HTTP/1.1"));
                    }
                }
            })
        })
        .collect();
    let reloads = {
        let (tls, config) = (tls.clone(), config.clone());
        let leaves = [first, second];
        let pki = Arc::clone(&pki);
        tokio::task::spawn_blocking(move || {
            for i in 0..40 {
                install(&config, &leaves[i % 2], &pki);
                tls.reload().expect("a whole pair of files");
            }
        })
    };
    for client in clients {
        client.await.unwrap();
    }
    reloads.await.unwrap();
}

#[tokio::test]
async fn the_poller_reloads_a_changed_certificate() {
    let (pki, _dir, config, first) = setup(Duration::from_millis(50));
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    // Two accepting threads on one port: the first polls, and both serve what it loaded.
    let limits = ServerLimits::default();
    let gw = gateway_on(Threads::PerCore(2), &backend, limits, Some(tls)).await;
    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(seen_cert(&stream), first.der);
    let mut open = h1(stream).await;
    assert_eq!(get_h1(&mut open, "/").await.0, 200);

    let second = pki.leaf("second");
    install(&config, &second, &pki);
    until_served(gw.addr(), &pki, &second.der).await;
    // Every new connection, whichever thread the kernel gives it to.
    for _ in 0..10 {
        let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
            .await
            .unwrap();
        assert_eq!(seen_cert(&stream), second.der);
    }
    assert_eq!(get_h1(&mut open, "/still").await.2, "https HTTP/1.1");

    // Replaced again (a renewal): picked up again.
    let third = pki.leaf("third");
    install(&config, &third, &pki);
    until_served(gw.addr(), &pki, &third.der).await;
}

/// The reload's error, which must name `field` and `file` and say `what`.
fn assert_refused(result: Result<(), Error>, field: &str, file: &Path, what: &str) {
    let error = result.expect_err("the replacement is refused");
    let Error::InvalidConfig { field: f, reason } = &error else {
        panic!("not a config error: {error}");
    };
    assert_eq!(*f, field, "{error}");
    assert!(reason.contains(&*file.to_string_lossy()), "{error}");
    assert!(reason.contains(what), "{error}");
}

#[tokio::test]
async fn a_bad_replacement_keeps_the_old_certificate_with_an_error_naming_the_file() {
    let (pki, _dir, config, first) = setup(Duration::ZERO);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let gw = gateway(&backend, ServerLimits::default(), Some(tls.clone())).await;
    let still_first = || async {
        let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
            .await
            .unwrap();
        assert_eq!(seen_cert(&stream), first.der);
        assert_eq!(get_h1(&mut h1(stream).await, "/").await.0, 200);
    };
    let other = pki.leaf("other");

    // A key that is not the certificate's (the new key written, the certificate not yet).
    std::fs::write(&config.key, &other.key_pem).unwrap();
    assert_refused(tls.reload(), "tls.key", &config.key, "does not match");
    still_first().await;

    // A certificate file that is not PEM.
    install(&config, &first, &pki);
    std::fs::write(&config.cert, "not a certificate\n").unwrap();
    assert_refused(tls.reload(), "tls.cert", &config.cert, "no certificate");
    still_first().await;

    // A key file that is gone, and one without a key in it.
    install(&config, &first, &pki);
    std::fs::remove_file(&config.key).unwrap();
    assert_refused(tls.reload(), "tls.key", &config.key, "No such file");
    std::fs::write(&config.key, &other.cert_pem).unwrap();
    assert_refused(tls.reload(), "tls.key", &config.key, "no private key");
    still_first().await;

    // A corrupt PEM block.
    std::fs::write(
        &config.cert,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert_refused(tls.reload(), "tls.cert", &config.cert, "not valid PEM");
    still_first().await;

    // Made whole again, it loads.
    install(&config, &other, &pki);
    tls.reload().unwrap();
    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(seen_cert(&stream), other.der);

    // The same checks at start: no terminator from a bad pair.
    std::fs::write(&config.key, pki.leaf("x").key_pem).unwrap();
    let start = TlsTerminator::from_config(&config).map(|_| ());
    assert_refused(start, "tls.key", &config.key, "does not match");
}

/// The counters recorded in this test binary, by `name{label=value,...}`: a recorder of the
/// `metrics` facade, as an application's exporter would be, installed once.
#[derive(Debug, Default)]
struct Counters(std::sync::Mutex<std::collections::HashMap<String, Arc<Count>>>);

#[derive(Debug, Default)]
struct Count(std::sync::atomic::AtomicU64);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0
            .fetch_add(value, std::sync::atomic::Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0
            .fetch_max(value, std::sync::atomic::Ordering::Relaxed);
    }
}

fn counter_key(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let mut map = self.0.lock().unwrap();
        let count = map.entry(counter_key(key.name(), &labels)).or_default();
        metrics::Counter::from_arc(Arc::clone(count))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

static COUNTERS: std::sync::OnceLock<&'static Counters> = std::sync::OnceLock::new();

/// The value of counter `name` with `labels` so far (0 if never incremented); the first call
/// installs the recorder.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let counters = COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(counters).expect("the only recorder of this test binary");
        counters
    });
    let map = counters.0.lock().unwrap();
    map.get(&counter_key(name, labels))
        .map_or(0, |c| c.0.load(std::sync::atomic::Ordering::Relaxed))
}

/// Reads until the server closes the connection (or 10 s pass); what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_silent_client_is_closed_within_the_header_timeout() {
    let (pki, _dir, config, _first) = setup(Duration::ZERO);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let gw = gateway(&backend, limits, Some(tls)).await;
    let failures = |reason| counter(TLS_HANDSHAKE_FAILURES_TOTAL, &[("reason", reason)]);
    let (timeouts, refused) = (failures("timeout"), failures("protocol"));

    // TCP open, no ClientHello: closed without a byte.
    let mut silent = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Half a ClientHello, then nothing.
    let mut partial = TcpStream::connect(gw.addr()).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut partial).await, "");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Both counted as timed-out handshakes (other tests of this binary may add more).
    assert!(failures("timeout") >= timeouts + 2);

    // Plain HTTP on the TLS port: refused, counted as a protocol failure.
    let answer = raw(gw.addr(), "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer:?}");
    assert!(failures("protocol") > refused);

    // A complete handshake, then no request: closed too.
    let mut quiet = handshake(gw.addr(), client_config(&pki, &[b"h2"], None))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the quiet connection was not closed");
    assert!(buf.is_empty(), "{buf:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The listener still serves others.
    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(get_h1(&mut h1(stream).await, "/").await.0, 200);
}

#[tokio::test]
async fn past_max_connections_a_tls_client_is_closed_without_a_plaintext_answer() {
    let (pki, _dir, config, _first) = setup(Duration::ZERO);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let gw = gateway(&backend, limits, Some(tls)).await;
    let stream = handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
        .await
        .unwrap();
    let mut held = h1(stream).await;
    assert_eq!(get_h1(&mut held, "/").await.0, 200);

    // The plain listener's 503 would be garbage to a TLS client: nothing is written.
    let mut extra = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(read_to_close(&mut extra).await, "");
    assert!(
        handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None))
            .await
            .is_err()
    );
    // The connection in place is still served.
    assert_eq!(get_h1(&mut held, "/again").await.0, 200);
}

#[tokio::test]
async fn client_certificates_from_the_client_ca_are_required_when_it_is_set() {
    let (pki, dir, mut config, _first) = setup(Duration::ZERO);
    let ca_path = dir.path("clients-ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    config.client_ca = Some(ca_path);
    let backend = Backend::start().await;
    let tls = TlsTerminator::from_config(&config).unwrap();
    let gw = gateway(&backend, ServerLimits::default(), Some(tls)).await;

    let client = pki.leaf("a client");
    let stream = handshake(
        gw.addr(),
        client_config(&pki, &[b"http/1.1"], Some(&client)),
    )
    .await
    .unwrap();
    assert_eq!(get_h1(&mut h1(stream).await, "/").await.2, "https HTTP/1.1");

    // Without a certificate: refused (in TLS 1.3 the client may finish its side first; the
    // refusal then ends the connection before any answer).
    let refused = match handshake(gw.addr(), client_config(&pki, &[b"http/1.1"], None)).await {
        Err(_) => true,
        Ok(stream) => {
            let mut sender = h1(stream).await;
            let req = http::Request::get("/")
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap();
            match sender.ready().await {
                Err(_) => true,
                Ok(()) => sender.send_request(req).await.is_err(),
            }
        }
    };
    assert!(refused, "a client without a certificate was served");
}

/// A raw HTTP/1.1 exchange on a new connection: the whole answer.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut stream).await
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_plain_listener_redirects_to_https_on_the_request_host_only() {
    let redirect = HttpsRedirect::from_config(&RedirectConfig {
        https_port: 8443,
        hosts: Vec::new(),
    })
    .unwrap();
    let server = ServerThread::start_with_limits(
        "redirect",
        "127.0.0.1:0".parse().unwrap(),
        Threads::WorkStealing(1),
        ServerLimits::default(),
        move || async move { Ok(redirect) },
    )
    .await
    .unwrap();
    let addr = server.addr();

    let answer = raw(
        addr,
        "GET /cart/items?id=7&x=%20 HTTP/1.1\r\nHost: Shop.Example:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer:?}");
    assert_eq!(
        header(&answer, "location"),
        Some("https://shop.example:8443/cart/items?id=7&x=%20")
    );
    // The method is kept by a 308: a POST is redirected as well.
    let answer = raw(
        addr,
        "POST /login HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer:?}");
    assert_eq!(
        header(&answer, "location"),
        Some("https://shop.example:8443/login")
    );
    // No host, or one that is not a host: no redirect anywhere.
    for bad in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: evil.example@shop.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: shop.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(addr, bad).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?}: {answer:?}");
        assert_eq!(header(&answer, "location"), None, "{bad:?}");
    }

    // With a list of hosts, only those are redirected.
    let only = HttpsRedirect::from_config(&RedirectConfig {
        https_port: 443,
        hosts: vec!["shop.example".to_owned()],
    })
    .unwrap();
    let listed = ServerThread::start_with_limits(
        "redirect-listed",
        "127.0.0.1:0".parse().unwrap(),
        Threads::WorkStealing(1),
        ServerLimits::default(),
        move || async move { Ok(only) },
    )
    .await
    .unwrap();
    let answer = raw(
        listed.addr(),
        "GET /x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(header(&answer, "location"), Some("https://shop.example/x"));
    let answer = raw(
        listed.addr(),
        "GET http://evil.example/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
}
