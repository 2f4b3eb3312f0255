//! HTTPS and HTTP/2 to the instances: real axum instances behind real TLS (a test CA made with
//! rcgen, tokio-rustls, hyper-util's server) and plain h2c, reached through `HttpUpstream` with
//! `scheme`, `protocol` and `tls` set. The instance reports the HTTP version it was spoken to
//! with and the forwarding headers it got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use herd_gateway::http::{
    ClientAddr, HttpUpstream, HttpUpstreamConfig, ProxyBody, UpstreamProtocol, UpstreamScheme,
};
use herd_lb_core::EndpointConfig;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// A test CA and a certificate it signed for `names` (DNS names or IP addresses).
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// A file removed when dropped (also when the test fails).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "herd-upstream-tls-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A real instance (HTTP/1.1 and HTTP/2 by hyper-util's auto server, over TLS when `tls` is
/// set, ALPN `h2` and `http/1.1`); every connection lives in its task, aborted on drop.
struct Instance {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Instance {
    async fn start(tls: Option<&Pki>) -> Self {
        let acceptor = tls.map(|pki| {
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                #[expect(deprecated, reason = "ring is the workspace's provider")]
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
            .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", get(report))
            .route("/echo", post(echo));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

/// What the instance saw: the version it was spoken to with and the forwarding headers.
async fn report(req: Request) -> String {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    format!(
        "version={:?}|host={}|xff={}|real={}|proto={}|fhost={}",
        req.version(),
        h("host"),
        h("x-forwarded-for"),
        h("x-real-ip"),
        h("x-forwarded-proto"),
        h("x-forwarded-host"),
    )
}

async fn echo(headers: HeaderMap, body: String) -> String {
    let proto = headers
        .get("x-forwarded-proto")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    format!("proto={proto}|len={}|body={body}", body.len())
}

fn config(
    addr: SocketAddr,
    scheme: UpstreamScheme,
    protocol: UpstreamProtocol,
) -> HttpUpstreamConfig {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = vec![EndpointConfig {
        address: addr.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    config.balancer.seed = Some(7);
    config.scheme = scheme;
    config.protocol = protocol;
    config
}

fn get_request(path: &str) -> Request<Body> {
    let mut req = Request::builder()
        .uri(path)
        .header("host", "gateway.example")
        .header("x-forwarded-proto", "forged")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.20:4000".parse().unwrap()));
    req
}

async fn text(res: axum::http::Response<ProxyBody>) -> (StatusCode, String) {
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn send(upstream: &HttpUpstream, req: Request<Body>) -> (StatusCode, String) {
    text(upstream.clone().oneshot(req).await.unwrap()).await
}

fn forwarded(addr: SocketAddr, version: &str) -> String {
    format!(
        "version={version}|host={addr}|xff=198.51.100.20|real=198.51.100.20|proto=http|fhost=gateway.example"
    )
}

#[tokio::test]
async fn https_instances_get_http1_or_h2_by_alpn_with_the_forwarding_headers() {
    let pki = pki(&["127.0.0.1", "localhost"]);
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let instance = Instance::start(Some(&pki)).await;
    for (protocol, version) in [
        (UpstreamProtocol::Http1, "HTTP/1.1"),
        (UpstreamProtocol::H2, "HTTP/2.0"),
        (UpstreamProtocol::Auto, "HTTP/2.0"),
    ] {
        let mut config = config(instance.addr, UpstreamScheme::Https, protocol);
        config.tls.ca_file = Some(ca.0.clone());
        let upstream = HttpUpstream::from_config(&config).unwrap();
        for _ in 0..3 {
            let (status, body) = send(&upstream, get_request("/")).await;
            assert_eq!(status, StatusCode::OK, "{protocol:?}: {body}");
            assert_eq!(body, forwarded(instance.addr, version), "{protocol:?}");
        }
        let info = &upstream.endpoints()[0];
        assert_eq!(
            (info.requests, info.failures, info.in_flight),
            (3, 0, 0),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn h2c_instances_get_http2_by_prior_knowledge() {
    let instance = Instance::start(None).await;
    let config = config(instance.addr, UpstreamScheme::Http, UpstreamProtocol::H2);
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let (status, body) = send(&upstream, get_request("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, forwarded(instance.addr, "HTTP/2.0"));
}

#[tokio::test]
async fn bodies_small_and_streamed_go_through_h2_over_tls() {
    let pki = pki(&["127.0.0.1"]);
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let instance = Instance::start(Some(&pki)).await;
    let mut config = config(instance.addr, UpstreamScheme::Https, UpstreamProtocol::H2);
    config.tls.ca_file = Some(ca.0.clone());
    config.retry_buffer_limit = 1024;
    let upstream = HttpUpstream::from_config(&config).unwrap().with_tls(true);
    let small = "x".repeat(100);
    // Larger than the retry buffer, in pieces: streamed to the instance.
    let large: String = "y".repeat(300_000);
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = large
        .as_bytes()
        .chunks(10_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    for (body, expected) in [
        (Body::from(small.clone()), small.clone()),
        (
            Body::from_stream(futures_util::stream::iter(pieces)),
            large.clone(),
        ),
    ] {
        let mut req = Request::builder()
            .method("POST")
            .uri("/echo")
            .header("host", "gateway.example")
            .body(body)
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("198.51.100.20:4000".parse().unwrap()));
        let (status, got) = send(&upstream, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            got,
            format!("proto=https|len={}|body={expected}", expected.len())
        );
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_naming_tls_counted_against_the_endpoint() {
    let served = pki(&["127.0.0.1"]);
    let other = pki(&["127.0.0.1"]);
    let wrong_ca = TempFile::new("wrong-ca.pem", &other.ca_pem);
    let instance = Instance::start(Some(&served)).await;
    let mut config = config(instance.addr, UpstreamScheme::Https, UpstreamProtocol::Auto);
    config.tls.ca_file = Some(wrong_ca.0.clone());
    config.balancer.retries.max_attempts = 1;
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let (status, body) = send(&upstream, get_request("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "upstream TLS handshake failed\n");
    let info = &upstream.endpoints()[0];
    assert_eq!(
        (info.requests, info.failures),
        (1, 1),
        "the endpoint's failure"
    );
}

#[tokio::test]
async fn the_server_name_checked_is_the_configured_one() {
    let pki = pki(&["api.internal"]);
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let instance = Instance::start(Some(&pki)).await;
    let mut config = config(
        instance.addr,
        UpstreamScheme::Https,
        UpstreamProtocol::Http1,
    );
    config.tls.ca_file = Some(ca.0.clone());
    config.balancer.retries.max_attempts = 1;
    // The certificate names api.internal, not 127.0.0.1.
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let (status, body) = send(&upstream, get_request("/")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream TLS handshake failed\n")
    );
    config.tls.server_name = Some("api.internal".into());
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let (status, body) = send(&upstream, get_request("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, forwarded(instance.addr, "HTTP/1.1"));
}

#[tokio::test]
async fn tls_settings_load_from_toml_and_bad_files_name_their_key() {
    let config: HttpUpstreamConfig = toml::from_str(
        r#"
        endpoints = [{ address = "127.0.0.1:9" }]
        scheme = "https"
        protocol = "h2"
        upgrade_idle_timeout = "5m"
        [tls]
        ca_file = "/nonexistent/ca.pem"
        "#,
    )
    .unwrap();
    assert_eq!(
        config.upgrade_idle_timeout,
        std::time::Duration::from_secs(300)
    );
    match HttpUpstream::from_config(&config) {
        Err(herd_lb_core::Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "tls.ca_file");
            assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}
