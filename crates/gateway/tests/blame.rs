//! Blame goes where the fault is (issue #15): the client's broken request body is a 4xx and
//! never an endpoint failure; an endpoint's "shared dependency unavailable" answer ejects
//! nobody and is not retried; an ejection that ended reports healthy with no traffic; and error
//! bodies never carry an endpoint's address. Real axum backends and a real hyper front server
//! on 127.0.0.1, raw TCP clients for malformed bodies; metrics read from a recorder installed
//! for this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use herd_gateway::http::{ClientAddr, HttpActiveHealth, HttpUpstream, HttpUpstreamConfig};
use herd_lb_core::{EndpointConfig, EndpointInfo, EndpointStatus, OutlierDetection};
use http::uri::Authority;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::ServiceExt;

const DEPENDENCY_HEADER: &str = "x-herd-dependency-unavailable";

// ---- metrics: one recorder for the whole test binary -------------------------------------

/// Every counter and gauge registered, by `name{label=value,...}` (labels sorted).
#[derive(Default)]
struct Recorded {
    values: Mutex<HashMap<String, Arc<Value>>>,
}

/// A counter's count, or a gauge's `f64` bits.
#[derive(Default)]
struct Value(AtomicU64);

impl metrics::CounterFn for Value {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl metrics::GaugeFn for Value {
    fn increment(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + value).to_bits())
            });
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl metrics::HistogramFn for Value {
    fn record(&self, _: f64) {}
}

struct Recorder(Arc<Recorded>);

impl Recorded {
    fn value(&self, key: &metrics::Key) -> Arc<Value> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        Arc::clone(self.values.lock().unwrap().entry(name).or_default())
    }

    fn raw(&self, name: &str) -> Option<u64> {
        let values = self.values.lock().unwrap();
        values.get(name).map(|v| v.0.load(Ordering::Relaxed))
    }

    /// A counter's value (0 when never registered).
    fn counter(&self, name: &str) -> u64 {
        self.raw(name).unwrap_or(0)
    }

    /// A gauge's value.
    fn gauge(&self, name: &str) -> Option<f64> {
        self.raw(name).map(f64::from_bits)
    }
}

impl metrics::Recorder for Recorder {
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
        metrics::Counter::from_arc(self.0.value(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.0.value(key))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.0.value(key))
    }
}

/// The recorder, installed on first use (before any upstream of these tests is built).
fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Arc<Recorded>> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded = Arc::new(Recorded::default());
        metrics::set_global_recorder(Recorder(Arc::clone(&recorded)))
            .expect("no other recorder in this test binary");
        recorded
    })
}

/// `herd_lb_requests_total` of `endpoint` with `outcome`.
fn requests(endpoint: SocketAddr, outcome: &str) -> u64 {
    recorded().counter(&format!(
        "herd_lb_requests_total{{endpoint={endpoint},outcome={outcome}}}"
    ))
}

// ---- servers ------------------------------------------------------------------------------

/// A real HTTP/1.1 server (axum on hyper) whose connections all live inside its task.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// A gateway: `upstream` served over HTTP/1.1 by hyper, as a reverse proxy runs it.
    async fn gateway(upstream: HttpUpstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(upstream.clone().with_peer(peer));
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that takes uploads (reading the whole body) and counts the requests it gets.
fn uploads(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/upload",
            post(move |body: String| {
                hits.fetch_add(1, Ordering::SeqCst);
                async move { format!("got {}", body.len()) }
            }),
        )
        .route("/", get(|| async { "ok" }))
}

fn config(addrs: &[SocketAddr]) -> HttpUpstreamConfig {
    let mut config = HttpUpstreamConfig::default();
    config.balancer.endpoints = addrs
        .iter()
        .map(|a| EndpointConfig {
            address: a.to_string(),
            weight: 1.0,
            max_in_flight: None,
        })
        .collect();
    config.balancer.seed = Some(15);
    config
}

/// Outlier detection as strict as it gets: any one failure ejects, even the only endpoint.
fn eject_on_any_failure() -> OutlierDetection {
    OutlierDetection {
        consecutive_failures: Some(1),
        max_ejection_percent: 100,
        jitter: 0.0,
        ..OutlierDetection::default()
    }
}

fn endpoint(upstream: &HttpUpstream, addr: SocketAddr) -> EndpointInfo<Authority> {
    upstream
        .endpoints()
        .into_iter()
        .find(|e| e.key.as_str() == addr.to_string())
        .unwrap()
}

fn get_request(path: &str) -> Request<Body> {
    let mut req = Request::get(path)
        .header("host", "gateway.example")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.7:4000".parse().unwrap()));
    req
}

async fn text(res: http::Response<herd_gateway::http::ProxyBody>) -> (StatusCode, String) {
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

// ---- raw clients -------------------------------------------------------------------------

/// What a raw client does after writing its bytes.
#[derive(Clone, Copy)]
enum Then {
    /// Waits for the answer (with the connection open).
    Wait,
    /// Closes the connection at once.
    Close,
}

/// Writes `bytes` on a new connection to `addr`, then waits for the response (status and body)
/// or closes. `None` when no complete response came within 5 s.
async fn raw(addr: SocketAddr, bytes: &[u8], then: Then) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if let Then::Close = then {
        drop(stream);
        return None;
    }
    tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .ok()
        .flatten()
}

async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, String::from_utf8_lossy(&buf[end..]).into_owned()))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5 s: {what}");
}

// ---- 1. the client's faults ---------------------------------------------------------------

const CHUNKED_HEAD: &str =
    "POST /upload HTTP/1.1\r\nhost: gateway.example\r\ntransfer-encoding: chunked\r\n\r\n";

#[tokio::test]
async fn malformed_chunked_request_bodies_are_400_and_no_endpoint_failure() {
    recorded();
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = Server::start(uploads(Arc::clone(&hits))).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = eject_on_any_failure();
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let gateway = Server::gateway(upstream.clone()).await;

    let bad_size = format!("{CHUNKED_HEAD}5\r\nhello\r\nzz\r\n");
    let no_crlf_after_data = format!("{CHUNKED_HEAD}5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n");
    let bad_last_chunk = format!("{CHUNKED_HEAD}5\r\nhello\r\n0\r\nbad trailer line\r\n\r\n");
    let mut answered = 0;
    for _ in 0..10 {
        for bad in [&bad_size, &no_crlf_after_data, &bad_last_chunk] {
            let (status, body) = raw(gateway.addr, bad.as_bytes(), Then::Wait)
                .await
                .unwrap_or_else(|| panic!("no answer to {bad:?}"));
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert!(!body.contains("127.0.0.1"), "{body}");
            answered += 1;
        }
    }
    // A short chunk and a client that goes away: nobody to answer, and nobody to blame but it.
    let cut_short = format!("{CHUNKED_HEAD}a\r\nhello");
    for _ in 0..10 {
        assert!(
            raw(gateway.addr, cut_short.as_bytes(), Then::Close)
                .await
                .is_none()
        );
    }
    wait_for("the cut-short bodies counted as client errors", || {
        requests(backend.addr, "client_error") == answered + 10
    })
    .await;

    let state = endpoint(&upstream, backend.addr);
    assert_eq!(state.status, EndpointStatus::Healthy, "{state:?}");
    assert_eq!(state.failures, 0, "{state:?}");
    assert_eq!(requests(backend.addr, "failure"), 0);
    assert!(
        recorded().counter("herd_lb_client_errors_total{reason=body_invalid}") >= answered + 10
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no broken upload reached the handler"
    );

    // The endpoint still takes a good upload.
    let good = format!("{CHUNKED_HEAD}5\r\nhello\r\n0\r\n\r\n");
    let (status, body) = raw(gateway.addr, good.as_bytes(), Then::Wait)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "got 5"));
}

#[tokio::test]
async fn a_client_body_that_stalls_is_408_and_no_endpoint_failure() {
    recorded();
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = Server::start(uploads(Arc::clone(&hits))).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = eject_on_any_failure();
    // The client's stall is bounded by its own timeout; the endpoint's is far away.
    config.client_body_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(60);
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let gateway = Server::gateway(upstream.clone()).await;

    // Streamed (chunked, no length): the last chunk never comes.
    let streamed = format!("{CHUNKED_HEAD}5\r\nhello\r\n");
    // Buffered (a small length): half of it never comes.
    let buffered =
        "POST /upload HTTP/1.1\r\nhost: gateway.example\r\ncontent-length: 10\r\n\r\nhello";
    for stalled in [streamed.as_str(), buffered] {
        let started = std::time::Instant::now();
        let answer = raw(gateway.addr, stalled.as_bytes(), Then::Wait).await;
        let (status, body) = answer.unwrap_or_else(|| panic!("no answer to {stalled:?}"));
        assert_eq!(status, 408, "{stalled:?}: {body}");
        assert!(!body.contains("127.0.0.1"), "{body}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
    let state = endpoint(&upstream, backend.addr);
    assert_eq!(state.status, EndpointStatus::Healthy, "{state:?}");
    assert_eq!(state.failures, 0, "{state:?}");
    // Only the streamed one reached an endpoint; the buffered one failed before the pick.
    assert_eq!(requests(backend.addr, "client_error"), 1);
    assert!(recorded().counter("herd_lb_client_errors_total{reason=body_timeout}") >= 2);
}

/// Writes `head`, then each of `pieces` `gap` apart, on a new connection; the response (status
/// and body) within 10 s.
async fn paced(addr: SocketAddr, head: &str, pieces: &[&str], gap: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in pieces {
        tokio::time::sleep(gap).await;
        stream.write_all(piece.as_bytes()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
        .await
        .ok()
        .flatten()
        .expect("an answer within 10 s")
}

/// An upload that keeps coming is forwarded however long it takes in all: the client body
/// timeout is between two pieces (nginx's `client_body_timeout`), and the request timeout is
/// the endpoint's, not the client's. Streamed and buffered bodies alike.
#[tokio::test]
async fn a_slow_upload_that_keeps_coming_outlasts_the_request_timeout() {
    recorded();
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = Server::start(uploads(Arc::clone(&hits))).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = eject_on_any_failure();
    config.request_timeout = Duration::from_millis(300);
    config.client_body_timeout = Duration::from_secs(2);
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let gateway = Server::gateway(upstream.clone()).await;
    let gap = Duration::from_millis(150);

    // Streamed: eight chunks 150 ms apart, 1.2 s in all against a request timeout of 300 ms.
    let mut chunks = vec!["2\r\nab\r\n"; 8];
    chunks.push("0\r\n\r\n");
    let started = std::time::Instant::now();
    let (status, body) = paced(gateway.addr, CHUNKED_HEAD, &chunks, gap).await;
    assert_eq!((status, body.as_str()), (200, "got 16"));
    assert!(started.elapsed() >= Duration::from_millis(1200));

    // Buffered (a length under the retry buffer): the same pace.
    let head = "POST /upload HTTP/1.1\r\nhost: gateway.example\r\ncontent-length: 16\r\n\r\n";
    let (status, body) = paced(gateway.addr, head, &["ab"; 8], gap).await;
    assert_eq!((status, body.as_str()), (200, "got 16"));

    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let state = endpoint(&upstream, backend.addr);
    assert_eq!((state.status, state.failures), (EndpointStatus::Healthy, 0));
}

/// Once the upload is sent, the request timeout bounds the wait for the endpoint's answer: an
/// endpoint that reads the whole body and then says nothing is a 504, counted from the body's
/// end, not from the request's start.
#[tokio::test]
async fn the_request_timeout_bounds_the_answer_after_the_upload() {
    recorded();
    let slow = Router::new().route(
        "/upload",
        post(|body: String| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            format!("got {}", body.len())
        }),
    );
    let backend = Server::start(slow).await;
    let mut config = config(&[backend.addr]);
    config.request_timeout = Duration::from_millis(400);
    config.client_body_timeout = Duration::from_secs(2);
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let gateway = Server::gateway(upstream.clone()).await;

    let mut chunks = vec!["2\r\nab\r\n"; 4];
    chunks.push("0\r\n\r\n");
    let started = std::time::Instant::now();
    let (status, body) = paced(
        gateway.addr,
        CHUNKED_HEAD,
        &chunks,
        Duration::from_millis(150),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    // 5 gaps of 150 ms for the upload, then 400 ms for the answer; well before the 3 s.
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

// ---- 1b. the client's Host ---------------------------------------------------------------

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, a request with two, or one whose `Host`
/// is not a valid authority is answered 400 by the gateway itself: no endpoint is picked, so
/// none is blamed, and the refusal is counted by its reason.
#[tokio::test]
async fn a_missing_repeated_or_invalid_host_is_400_before_any_endpoint() {
    recorded();
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = Server::start(uploads(Arc::clone(&hits))).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = eject_on_any_failure();
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let gateway = Server::gateway(upstream.clone()).await;
    let before = |reason: &str| {
        recorded().counter(&format!("herd_lb_client_errors_total{{reason={reason}}}"))
    };
    let counts = ["host_missing", "host_repeated", "host_invalid"].map(before);

    let refused = [
        ("GET / HTTP/1.1\r\n\r\n", "missing Host header\n"),
        (
            "GET http://gateway.example/ HTTP/1.1\r\n\r\n",
            "missing Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: gateway.example\r\nhost: evil.example\r\n\r\n",
            "more than one Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: gateway.example\r\nHost: gateway.example\r\n\r\n",
            "more than one Host header\n",
        ),
        (
            "GET / HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n",
            "more than one Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: user@gateway.example\r\n\r\n",
            "invalid Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: gateway.example:99999\r\n\r\n",
            "invalid Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: gateway.example/x\r\n\r\n",
            "invalid Host header\n",
        ),
        (
            "GET / HTTP/1.1\r\nhost: a\"b\r\n\r\n",
            "invalid Host header\n",
        ),
        ("GET / HTTP/1.1\r\nhost:\r\n\r\n", "invalid Host header\n"),
        (
            "GET http://gateway.example/ HTTP/1.1\r\nhost: bad host\r\n\r\n",
            "invalid Host header\n",
        ),
    ];
    for (request, answer) in refused {
        let (status, body) = raw(gateway.addr, request.as_bytes(), Then::Wait)
            .await
            .unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!(status, 400, "{request:?}: {body}");
        assert_eq!(body, answer, "{request:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let after = ["host_missing", "host_repeated", "host_invalid"].map(before);
    assert!(after[0] >= counts[0] + 2, "{after:?}");
    assert!(after[1] >= counts[1] + 3, "{after:?}");
    assert!(after[2] >= counts[2] + 6, "{after:?}");

    // Served: a valid Host, an IPv6 literal, and HTTP/1.0 without one.
    for request in [
        "GET / HTTP/1.1\r\nhost: gateway.example:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: [::1]:3000\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let (status, body) = raw(gateway.addr, request.as_bytes(), Then::Wait)
            .await
            .unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!((status, body.as_str()), (200, "ok"), "{request:?}");
    }
    let state = endpoint(&upstream, backend.addr);
    assert_eq!((state.status, state.failures), (EndpointStatus::Healthy, 0));
    assert_eq!(requests(backend.addr, "failure"), 0);
    assert_eq!(requests(backend.addr, "client_error"), 0);
}

/// A streamed body of `n` pieces of 1 KiB each, of no announced size.
fn kib_pieces(n: usize) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static {
    let frames = (0..n)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 1024]))))
        .collect::<Vec<_>>();
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn a_body_over_its_limit_is_413_and_no_endpoint_failure() {
    recorded();
    let hits = Arc::new(AtomicUsize::new(0));
    let backend = Server::start(uploads(Arc::clone(&hits))).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = eject_on_any_failure();
    // A limit's size is the body's upper bound: above this it is streamed, not buffered.
    config.retry_buffer_limit = 1024;
    let upstream = HttpUpstream::from_config(&config).unwrap();

    let limited = |body, limit| {
        // As tower-http's `RequestBodyLimit` wraps a body of no announced length.
        let mut req = Request::post("/upload")
            .header("host", "gateway.example")
            .body(Limited::new(body, limit))
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("198.51.100.7:4000".parse().unwrap()));
        req
    };
    // Streamed to the endpoint, over the limit on the way; and buffered before the pick.
    for (pieces, limit) in [(4, 2048), (1, 512)] {
        let req = limited(kib_pieces(pieces), limit);
        let (status, body) = text(upstream.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(!body.contains("127.0.0.1"), "{body}");
    }
    // Under the limit it goes through.
    let res = upstream
        .clone()
        .oneshot(limited(kib_pieces(2), 2048))
        .await
        .unwrap();
    assert_eq!(text(res).await, (StatusCode::OK, "got 2048".to_string()));

    let state = endpoint(&upstream, backend.addr);
    assert_eq!(
        (state.status, state.failures),
        (EndpointStatus::Healthy, 0),
        "{state:?}"
    );
    // Only the streamed one reached an endpoint.
    assert_eq!(requests(backend.addr, "client_error"), 1);
    assert!(recorded().counter("herd_lb_client_errors_total{reason=body_too_large}") >= 2);
}

// ---- 2. a dependency every endpoint shares ------------------------------------------------

/// A backend whose `/notes` answers as an instance does while the database fails over; counts
/// its requests.
fn database_down(hits: Arc<AtomicUsize>, dependency: &'static str) -> Router {
    Router::new()
        .route(
            "/notes",
            get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async move {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(DEPENDENCY_HEADER, dependency), ("retry-after", "2")],
                        "the database is unavailable",
                    )
                }
            }),
        )
        .route(
            "/odd",
            get(|| async { ([(DEPENDENCY_HEADER, "postgres")], "fine") }),
        )
}

#[tokio::test]
async fn dependency_unavailable_answers_eject_nobody_and_are_not_retried() {
    recorded();
    let hits: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut backends = Vec::new();
    for h in &hits {
        backends.push(Server::start(database_down(Arc::clone(h), "Postgres")).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut config = config(&addrs);
    config.balancer.outlier_detection = OutlierDetection {
        consecutive_failures: Some(2),
        max_fails: Some(2),
        jitter: 0.0,
        ..OutlierDetection::default()
    };
    let upstream = HttpUpstream::from_config(&config).unwrap();

    for _ in 0..30 {
        let res = upstream
            .clone()
            .oneshot(get_request("/notes"))
            .await
            .unwrap();
        assert!(
            !res.headers().contains_key(DEPENDENCY_HEADER),
            "internal detail removed: {:?}",
            res.headers()
        );
        assert_eq!(res.headers()["retry-after"], "2");
        let (status, body) = text(res).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body, "the database is unavailable",
            "the instance's own answer"
        );
    }
    let total: usize = hits.iter().map(|h| h.load(Ordering::SeqCst)).sum();
    assert_eq!(
        total, 30,
        "a GET answered so is not retried on another instance"
    );
    let mut dependency_unavailable = 0;
    for addr in &addrs {
        let state = endpoint(&upstream, *addr);
        assert_eq!(state.status, EndpointStatus::Healthy, "{state:?}");
        assert_eq!(state.failures, 0, "{state:?}");
        assert_eq!(requests(*addr, "failure"), 0);
        dependency_unavailable += requests(*addr, "dependency_unavailable");
    }
    assert_eq!(dependency_unavailable, 30);
    assert_eq!(
        recorded().counter("herd_lb_dependency_unavailable_total{dependency=postgres}"),
        30
    );

    // The header means nothing on a success, and is never passed on either.
    let res = upstream.clone().oneshot(get_request("/odd")).await.unwrap();
    assert!(!res.headers().contains_key(DEPENDENCY_HEADER));
    assert_eq!(text(res).await, (StatusCode::OK, "fine".to_string()));
}

#[tokio::test]
async fn an_instance_failing_while_its_peers_succeed_is_still_ejected() {
    recorded();
    let broken = Server::start(Router::new().route(
        "/notes",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "broken") }),
    ))
    .await;
    let fine = Server::start(Router::new().route("/notes", get(|| async { "notes" }))).await;
    let mut config = config(&[broken.addr, fine.addr]);
    config.balancer.outlier_detection = OutlierDetection {
        consecutive_failures: Some(3),
        jitter: 0.0,
        ..OutlierDetection::default()
    };
    let upstream = HttpUpstream::from_config(&config).unwrap();
    for _ in 0..20 {
        let res = upstream
            .clone()
            .oneshot(get_request("/notes"))
            .await
            .unwrap();
        // Retried on the peer, which answers.
        assert_eq!(text(res).await, (StatusCode::OK, "notes".to_string()));
    }
    assert_eq!(
        endpoint(&upstream, broken.addr).status,
        EndpointStatus::Ejected
    );
    assert_eq!(
        endpoint(&upstream, fine.addr).status,
        EndpointStatus::Healthy
    );
}

// ---- 3. health state is current ------------------------------------------------------------

#[tokio::test]
async fn an_ended_ejection_reports_healthy_at_once_and_in_metrics_at_the_next_check() {
    recorded();
    let app = Router::new()
        .route(
            "/work",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failed") }),
        )
        .route("/health", get(|| async { "ok" }));
    let backend = Server::start(app).await;
    let mut config = config(&[backend.addr]);
    config.balancer.outlier_detection = OutlierDetection {
        base_ejection: Duration::from_millis(400),
        ..eject_on_any_failure()
    };
    let interval = Duration::from_millis(100);
    config.active_health = Some(HttpActiveHealth {
        path: Some("/health".into()),
        check: herd_lb_core::health::ActiveHealthConfig {
            interval,
            jitter: 0.0,
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        },
    });
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let healthy_gauge = format!("herd_lb_endpoint_healthy{{endpoint={}}}", backend.addr);

    let res = upstream
        .clone()
        .oneshot(get_request("/work"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let state = endpoint(&upstream, backend.addr);
    assert_eq!(state.status, EndpointStatus::Ejected);
    assert!(!state.healthy);
    assert_eq!(recorded().gauge(&healthy_gauge), Some(0.0));
    let until = state.ejected_until.unwrap();

    // No traffic from here on. Just before the end it is still ejected; just after, healthy.
    tokio::time::sleep_until(until - Duration::from_millis(100)).await;
    assert_eq!(
        endpoint(&upstream, backend.addr).status,
        EndpointStatus::Ejected
    );
    tokio::time::sleep_until(until + Duration::from_millis(5)).await;
    let state = endpoint(&upstream, backend.addr);
    assert_eq!(state.status, EndpointStatus::Healthy, "{state:?}");
    assert!(state.healthy && state.ejected_until.is_none(), "{state:?}");

    // The next passing active check returns it for good: the gauge dashboards read says so.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert_eq!(recorded().gauge(&healthy_gauge), Some(1.0));
    assert_eq!(
        endpoint(&upstream, backend.addr).status,
        EndpointStatus::Healthy
    );
}
