//! The observation layers around a real upstream (issue #20): request ids set, kept or replaced
//! and returned; W3C `traceparent` passed through or started; the access log's line without
//! credentials or query strings; compression where configured. A real axum backend behind an
//! [`HttpUpstream`] in [`ObserveLayer`], served by hyper on 127.0.0.1, and a hyper client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use herd_gateway::http::{HttpUpstream, HttpUpstreamConfig};
use herd_gateway::observe::{ObserveConfig, ObserveLayer, valid_traceparent};
use herd_lb_core::EndpointConfig;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Layer;

/// Serves `make(peer)` per connection until dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S, B>(make: impl Fn(SocketAddr) -> S + Send + 'static) -> Server
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let service = make(peer);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// The instance: `/echo` answers with the ids it received (`request-id traceparent tracestate`,
/// `-` for a missing one); `/big` with 4 KiB of JSON; `/small` with 100 bytes of JSON.
async fn backend() -> Server {
    let app = Router::new()
        .route(
            "/echo",
            get(|req: Request| async move {
                let h = |name: &str| {
                    req.headers()
                        .get(name)
                        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
                };
                format!(
                    "{} {} {}",
                    h("x-request-id"),
                    h("traceparent"),
                    h("tracestate")
                )
            }),
        )
        .route(
            "/big",
            get(|| async {
                (
                    [("content-type", "application/json")],
                    format!("[{}0]", "1234567890,".repeat(372)),
                )
            }),
        )
        .route(
            "/small",
            get(|| async { ([("content-type", "application/json")], "0".repeat(100)) }),
        );
    serve(move |_| TowerToHyperService::new(app.clone())).await
}

/// A gateway: the upstream to `backend`, behind the layers `config` asks for.
async fn gateway(backend: SocketAddr, config: &ObserveConfig) -> Server {
    let mut upstream = HttpUpstreamConfig::default();
    upstream.balancer.endpoints = vec![EndpointConfig {
        address: backend.to_string(),
        weight: 1.0,
        max_in_flight: None,
    }];
    // The access log names the endpoint that answered (as the gateway sets it).
    upstream.record_endpoint = config.access_log;
    let upstream = HttpUpstream::from_config(&upstream).unwrap();
    let layer = ObserveLayer::new(config).unwrap();
    serve(move |peer| TowerToHyperService::new(layer.layer(upstream.clone().with_peer(peer)))).await
}

/// GETs `path` with `headers`: status, response headers, body.
async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = client
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn request_ids_are_set_kept_or_replaced_and_returned() {
    let backend = backend().await;
    let proxy = gateway(backend.addr, &ObserveConfig::default()).await;

    // None sent: one is made, the instance sees it, the client gets it back.
    let (status, headers, body) = get_with(proxy.addr, "/echo", &[]).await;
    assert_eq!(status, 200);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    let id = seen.split(' ').next().unwrap().to_owned();
    assert!(is_generated_id(&id), "{seen}");
    assert_eq!(headers["x-request-id"], id.as_str());

    // A client's valid id is kept.
    let (_, headers, body) = get_with(proxy.addr, "/echo", &[("x-request-id", "req-42.a:b")]).await;
    assert!(String::from_utf8_lossy(&body).starts_with("req-42.a:b "));
    assert_eq!(headers["x-request-id"], "req-42.a:b");

    // Too long, or characters that could break a log line: replaced.
    let long = "a".repeat(129);
    for bad in [long.as_str(), "two words", "quote\"d", "tab\there"] {
        let (_, headers, body) = get_with(proxy.addr, "/echo", &[("x-request-id", bad)]).await;
        let seen = String::from_utf8(body.to_vec()).unwrap();
        let id = seen.split(' ').next().unwrap();
        assert!(is_generated_id(id), "{bad:?} became {seen}");
        assert_eq!(headers["x-request-id"], id);
    }
    // Two ids: which one would the instance log? Neither: replaced.
    let (_, _, body) = get_with(
        proxy.addr,
        "/echo",
        &[("x-request-id", "one"), ("x-request-id", "two")],
    )
    .await;
    assert!(is_generated_id(
        String::from_utf8_lossy(&body).split(' ').next().unwrap()
    ));
}

#[tokio::test]
async fn traceparent_is_passed_through_or_started() {
    let backend = backend().await;
    let proxy = gateway(backend.addr, &ObserveConfig::default()).await;
    let ids = |body: Bytes| {
        String::from_utf8(body.to_vec())
            .unwrap()
            .split(' ')
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // Missing: started, sampled, valid.
    let (_, _, body) = get_with(proxy.addr, "/echo", &[]).await;
    let seen = ids(body);
    assert!(valid_traceparent(seen[1].as_bytes()), "{seen:?}");
    assert!(
        seen[1].starts_with("00-") && seen[1].ends_with("-01"),
        "{seen:?}"
    );

    // Valid, with its trace state: both passed on unchanged.
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, _, body) = get_with(
        proxy.addr,
        "/echo",
        &[("traceparent", valid), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    let seen = ids(body);
    assert_eq!(seen[1], valid);
    assert_eq!(seen[2], "congo=t61rcWkgMzE");

    // Invalid (upper case, an all-zero trace id, version ff, garbage): replaced by a new trace,
    // and the trace state that belonged to it dropped.
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "hello",
    ] {
        let (_, _, body) = get_with(
            proxy.addr,
            "/echo",
            &[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let seen = ids(body);
        assert_ne!(seen[1], bad);
        assert!(
            valid_traceparent(seen[1].as_bytes()),
            "{bad} became {seen:?}"
        );
        assert_eq!(seen[2], "-", "{bad}: the trace state went with it");
    }

    // Off: the gateway leaves the header alone.
    let off = gateway(
        backend.addr,
        &ObserveConfig {
            traceparent: false,
            ..ObserveConfig::default()
        },
    )
    .await;
    let (_, _, body) = get_with(off.addr, "/echo", &[("traceparent", "hello")]).await;
    assert_eq!(ids(body)[1], "hello");
}

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_without_credentials_or_queries() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test's runtime is single-threaded: the gateway's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let backend = backend().await;
    let logging = gateway(
        backend.addr,
        &ObserveConfig {
            access_log: true,
            ..ObserveConfig::default()
        },
    )
    .await;
    let (status, headers, _) = get_with(
        logging.addr,
        "/echo?token=s3cr3t-query",
        &[
            ("cookie", "session=hunter2"),
            ("authorization", "Bearer t0ken-value"),
            ("x-request-id", "log-me-1"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let length = headers["content-length"].to_str().unwrap().to_owned();
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("herd_gateway::access") && l.contains("access"))
        .unwrap_or_else(|| panic!("no access line in:\n{text}"));
    for field in [
        "method=GET",
        "path=\"/echo\"",
        "status=200",
        "request_id=log-me-1",
        &format!("bytes={length}"),
        "latency_ms=",
        "trace_id=",
        &format!("upstream={}", backend.addr),
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }
    for secret in ["hunter2", "t0ken-value", "s3cr3t-query"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }

    // Off (the default): nothing logged for a request.
    log.0.lock().unwrap().clear();
    let quiet = gateway_default(backend.addr).await;
    get_with(quiet.addr, "/echo", &[]).await;
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("herd_gateway::access"), "{text}");
}

async fn gateway_default(backend: SocketAddr) -> Server {
    gateway(backend, &ObserveConfig::default()).await
}

#[tokio::test]
async fn responses_are_compressed_where_configured() {
    let backend = backend().await;
    let on = gateway(backend.addr, &toml::from_str("compression = {}").unwrap()).await;
    let off = gateway_default(backend.addr).await;

    // Large JSON, client accepts gzip: compressed (gzip's magic bytes, smaller than 4 KiB).
    let (status, headers, body) = get_with(on.addr, "/big", &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(&body[..2], &[0x1f, 0x8b]);
    assert!(body.len() < 1000, "{} bytes", body.len());

    // Brotli when preferred.
    let (_, headers, _) = get_with(on.addr, "/big", &[("accept-encoding", "br")]).await;
    assert_eq!(headers["content-encoding"], "br");

    // Below the size, not accepted, or compression off: as the instance sent it.
    for (addr, path, accept) in [
        (on.addr, "/small", "gzip"),
        (on.addr, "/big", "identity"),
        (off.addr, "/big", "gzip"),
    ] {
        let (_, headers, body) = get_with(addr, path, &[("accept-encoding", accept)]).await;
        assert!(headers.get("content-encoding").is_none(), "{path} {accept}");
        assert!(
            body.starts_with(b"[1234") || body.starts_with(b"000"),
            "{path}"
        );
    }
}
