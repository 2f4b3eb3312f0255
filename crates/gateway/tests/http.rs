//! The HTTP upstream and active health checks against real axum servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use herd_gateway::health::HttpProbe;
use herd_gateway::http::{ClientAddr, HttpUpstream, HttpUpstreamConfig};
use herd_lb_core::EndpointStatus;
use herd_lb_core::health::{ActiveHealthConfig, TcpProbe};
use herd_lb_core::{EndpointConfig, EndpointSet};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// A real HTTP/1.1 server whose connections all live inside its task: aborting the task closes
/// the listener and every open (keep-alive) connection, like killing the process.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            task,
            accepted,
        }
    }

    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn named(name: &'static str) -> Router {
    Router::new()
        .route("/", get(move || async move { name }))
        .route("/echo", post(echo).put(echo))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
}

async fn echo(headers: HeaderMap, body: String) -> String {
    let h = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    format!(
        "host={}|xff={}|real={}|proto={}|fhost={}|conn={}|secret={}|body={body}",
        h("host"),
        h("x-forwarded-for"),
        h("x-real-ip"),
        h("x-forwarded-proto"),
        h("x-forwarded-host"),
        h("connection"),
        h("x-secret"),
    )
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
    config.balancer.seed = Some(11);
    config
}

fn request(method: &str, path: &str, body: &'static str) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.example")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.20:4000".parse().unwrap()));
    req
}

async fn text(res: axum::http::Response<herd_gateway::http::ProxyBody>) -> (StatusCode, String) {
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn forwards_with_proxy_headers_and_body() {
    let server = Server::start(named("a")).await;
    let upstream = HttpUpstream::from_config(&config(&[server.addr])).unwrap();
    let (status, body) = text(
        upstream
            .clone()
            .oneshot(request("POST", "/echo", "hello"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let fields: Vec<&str> = body.split('|').collect();
    assert_eq!(
        fields[0],
        format!("host={}", server.addr),
        "Host set to the endpoint authority"
    );
    assert_eq!(
        fields[1], "xff=198.51.100.20",
        "untrusted peer: forged X-Forwarded-For replaced"
    );
    assert_eq!(fields[2], "real=198.51.100.20");
    assert_eq!(fields[3], "proto=http");
    assert_eq!(fields[4], "fhost=gateway.example");
    assert_eq!(fields[5], "conn=", "hop-by-hop Connection not forwarded");
    assert_eq!(
        fields[6], "secret=",
        "headers named in Connection not forwarded"
    );
    assert_eq!(fields[7], "body=hello");

    // A trusted proxy's X-Forwarded-For is kept and extended; a configured scheme is sent (TLS
    // ended in front of the upstream).
    let mut trusted = config(&[server.addr]);
    trusted.trusted_proxies = herd_gateway::http::TrustedProxies::new(["198.51.100.0/24"]).unwrap();
    trusted.forwarded_proto = Some("https".into());
    let upstream = HttpUpstream::from_config(&trusted).unwrap();
    let (_, body) = text(
        upstream
            .oneshot(request("POST", "/echo", "x"))
            .await
            .unwrap(),
    )
    .await;
    assert!(
        body.contains("xff=6.6.6.6, 198.51.100.20|real=6.6.6.6|proto=https|"),
        "{body}"
    );
}

#[tokio::test]
async fn the_peer_can_come_from_the_connection_instead_of_the_request() {
    let server = Server::start(named("a")).await;
    let upstream = HttpUpstream::from_config(&config(&[server.addr])).unwrap();
    let echo = |upstream: HttpUpstream, req: Request<Body>| async move {
        text(upstream.oneshot(req).await.unwrap()).await.1
    };
    let bare = || {
        let mut req = request("POST", "/echo", "x");
        req.extensions_mut().clear();
        req.headers_mut()
            .insert("x-real-ip", "6.6.6.6".parse().unwrap());
        req
    };
    // No peer anywhere: the client's X-Forwarded-For goes on as it came, its X-Real-IP not.
    let body = echo(upstream.clone(), bare()).await;
    assert!(body.contains("|xff=6.6.6.6|real=|"), "{body}");
    // The connection's peer, with no extension in the request.
    let peer: SocketAddr = "203.0.113.7:5000".parse().unwrap();
    let body = echo(upstream.clone().with_peer(peer), bare()).await;
    assert!(
        body.contains("|xff=203.0.113.7|real=203.0.113.7|"),
        "{body}"
    );
    // Behind a trusted proxy the client is still found in X-Forwarded-For.
    let mut trusted = config(&[server.addr]);
    trusted.trusted_proxies = herd_gateway::http::TrustedProxies::new(["203.0.113.0/24"]).unwrap();
    let upstream = HttpUpstream::from_config(&trusted).unwrap().with_peer(peer);
    let body = echo(upstream, bare()).await;
    assert!(
        body.contains("|xff=6.6.6.6, 203.0.113.7|real=6.6.6.6|"),
        "{body}"
    );
}

#[tokio::test]
async fn a_retried_request_carries_the_forwarding_headers() {
    let failing = Server::start(Router::new().fallback(|| async { StatusCode::BAD_GATEWAY })).await;
    let echo = Server::start(named("b")).await;
    let mut config = config(&[failing.addr, echo.addr]);
    config.balancer.policy = herd_lb_core::PolicyConfig::RoundRobin;
    let upstream = HttpUpstream::from_config(&config).unwrap();
    for _ in 0..4 {
        let mut req = request("POST", "/echo", "again");
        req.headers_mut()
            .insert("x-real-ip", "6.6.6.6".parse().unwrap());
        let (status, body) = text(upstream.clone().oneshot(req).await.unwrap()).await;
        // POST is not retried on a status; the 502 comes back as it is.
        if status == StatusCode::BAD_GATEWAY {
            continue;
        }
        assert!(
            body.contains(
                "|xff=198.51.100.20|real=198.51.100.20|proto=http|fhost=gateway.example|"
            ),
            "{body}"
        );
    }
    // Round robin: every other first attempt meets the failing endpoint and is retried.
    let mut retried = 0;
    for _ in 0..4 {
        let req = request("PUT", "/echo", "again");
        let (status, body) = text(upstream.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "PUT is idempotent: retried on 502");
        assert!(
            body.contains(
                "|xff=198.51.100.20|real=198.51.100.20|proto=http|fhost=gateway.example|"
            ),
            "{body}"
        );
        retried += 1;
    }
    assert_eq!(retried, 4);
}

#[tokio::test]
async fn client_ip_hashing_keeps_each_client_on_one_endpoint() {
    let servers = [
        Server::start(named("a")).await,
        Server::start(named("b")).await,
        Server::start(named("c")).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let mut config = config(&addrs);
    config.balancer.policy = herd_lb_core::PolicyConfig::ConsistentHash {
        balance_factor: 1.25,
    };
    config.hash_key = Some(herd_gateway::http::HashKeyConfig::ClientIp);
    let upstream = HttpUpstream::from_config(&config).unwrap();
    let mut seen = std::collections::HashSet::new();
    for client in 0..40 {
        let peer: SocketAddr = format!("198.51.100.{client}:4000").parse().unwrap();
        let mut served = std::collections::HashSet::new();
        for _ in 0..5 {
            let req = Request::get("/")
                .header("host", "gateway.example")
                .body(Body::empty())
                .unwrap();
            let (status, name) =
                text(upstream.clone().with_peer(peer).oneshot(req).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            served.insert(name);
        }
        assert_eq!(served.len(), 1, "client {peer} was served by {served:?}");
        seen.extend(served);
    }
    assert_eq!(
        seen.len(),
        3,
        "40 clients spread over all endpoints: {seen:?}"
    );
}

#[tokio::test]
async fn streams_large_bodies_and_reuses_connections() {
    let server = Server::start(named("a")).await;
    let upstream = HttpUpstream::from_config(&config(&[server.addr])).unwrap();
    let big = "x".repeat(200 * 1024);
    let chunks = futures_util::stream::iter(
        big.as_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let mut req = Request::post("/echo")
        .header("host", "gateway.example")
        .body(Body::from_stream(chunks))
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("127.0.0.1:1".parse().unwrap()));
    let (status, body) = text(upstream.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with(&format!("body={big}")));
    for _ in 0..20 {
        let (status, body) = text(
            upstream
                .clone()
                .oneshot(request("GET", "/", ""))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    }
}

#[tokio::test]
async fn preserve_host_sends_the_clients_host_also_from_the_uri() {
    let server = Server::start(named("a")).await;
    let mut config = config(&[server.addr]);
    config.preserve_host = true;
    let upstream = HttpUpstream::from_config(&config).unwrap();
    // With a Host header (HTTP/1.1).
    let (_, body) = text(
        upstream
            .clone()
            .oneshot(request("POST", "/echo", ""))
            .await
            .unwrap(),
    )
    .await;
    assert!(body.starts_with("host=gateway.example|"), "{body}");
    // HTTP/2 carries the host in the URI (`:authority`), not in a header.
    let mut req = Request::post("http://h2.example/echo")
        .version(http::Version::HTTP_2)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("127.0.0.1:1".parse().unwrap()));
    let (_, body) = text(upstream.oneshot(req).await.unwrap()).await;
    assert!(body.starts_with("host=h2.example|"), "{body}");
    assert!(body.contains("|fhost=h2.example|"), "{body}");
}

#[tokio::test]
async fn keeps_connections_alive_and_replaces_the_ones_the_server_closes() {
    // Every 5th response says `Connection: close`: 50 requests in a row need exactly 10
    // connections, and none of them fails.
    let served = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/",
        get(move || {
            let n = served.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let close = if n.is_multiple_of(5) {
                    "close"
                } else {
                    "keep-alive"
                };
                ([(http::header::CONNECTION, close)], "ok")
            }
        }),
    );
    let server = Server::start(app).await;
    let upstream = HttpUpstream::from_config(&config(&[server.addr])).unwrap();
    for i in 0..50 {
        let res = upstream
            .clone()
            .oneshot(request("GET", "/", ""))
            .await
            .unwrap();
        assert_eq!(
            text(res).await,
            (StatusCode::OK, "ok".to_owned()),
            "request {i}"
        );
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn reused_connections_keep_the_attempt_timeout() {
    // A connection keeps its timer between requests: the deadline must follow each request,
    // also after the timer fired while the connection sat idle.
    let server = Server::start(named("a")).await;
    let mut short = config(&[server.addr]);
    short.request_timeout = Duration::from_millis(200);
    short.balancer.retries.max_attempts = 1;
    let upstream = HttpUpstream::from_config(&short).unwrap();
    let get = |path: &'static str| {
        let upstream = upstream.clone();
        async move { text(upstream.oneshot(request("GET", path, "")).await.unwrap()).await }
    };
    assert_eq!(get("/").await, (StatusCode::OK, "a".to_string()));
    // Idle past the timeout: the timer fires with nobody waiting, then serves the next request.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get("/").await, (StatusCode::OK, "a".to_string()));
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "one reused connection"
    );
    // Back to back: each request's deadline starts with it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(get("/").await, (StatusCode::OK, "a".to_string()));
    }
    let started = std::time::Instant::now();
    let (status, _) = get("/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
}

#[tokio::test]
async fn failures_map_to_502_503_504() {
    // 503: no endpoints.
    let upstream = HttpUpstream::from_config(&config(&[])).unwrap();
    let res = upstream.oneshot(request("GET", "/", "")).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let (status, body) = text(res).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no upstream endpoint available\n");

    // 502: nothing listens (connect refused), and no other endpoint to retry on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let upstream = HttpUpstream::from_config(&config(&[closed])).unwrap();
    let (status, body) = text(upstream.oneshot(request("GET", "/", "")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // What happened, never the endpoint's address or the error's internals.
    assert_eq!(body, "upstream connect failed\n");

    // 504: the attempt timeout fires.
    let server = Server::start(named("a")).await;
    let mut slow = config(&[server.addr]);
    slow.request_timeout = Duration::from_millis(200);
    slow.balancer.retries.max_attempts = 1;
    let upstream = HttpUpstream::from_config(&slow).unwrap();
    let (status, body) = text(upstream.oneshot(request("GET", "/slow", "")).await.unwrap()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream timed out\n");

    // Bad settings are refused with the field named.
    let mut bad = config(&[server.addr]);
    bad.retry_statuses = vec![42];
    assert!(
        HttpUpstream::from_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("retry_statuses")
    );
    let mut bad = config(&[server.addr]);
    bad.balancer.endpoints[0].weight = 0.0;
    assert!(
        HttpUpstream::from_config(&bad)
            .unwrap_err()
            .to_string()
            .contains(&server.addr.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_servers_under_load_fails_no_get() {
    let servers = [
        Server::start(named("a")).await,
        Server::start(named("b")).await,
        Server::start(named("c")).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let upstream = HttpUpstream::from_config(&config(&addrs)).unwrap();

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for _ in 0..16 {
        let upstream = upstream.clone();
        let (ok, failed, stop) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
        workers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = upstream
                    .clone()
                    .oneshot(request("GET", "/", ""))
                    .await
                    .unwrap();
                let (status, body) = text(res).await;
                if status == StatusCode::OK && ["a", "b", "c"].contains(&body.as_str()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed GET: {status} {body}");
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    servers[1].kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let total = ok.load(Ordering::Relaxed);
    assert!(before_kill > 50, "load before the kill: {before_kill}");
    assert!(
        total > before_kill + 100,
        "load after the kill: {}",
        total - before_kill
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no GET may fail");
    let killed = upstream
        .endpoints()
        .into_iter()
        .find(|e| e.key.as_str() == addrs[1].to_string())
        .unwrap();
    assert_eq!(
        killed.status,
        EndpointStatus::Ejected,
        "the dead server was ejected"
    );
}

#[tokio::test]
async fn active_checks_mark_endpoints_down_and_up() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let app = named("a").route(
        "/health",
        get(move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let server = Server::start(app).await;
    let other = Server::start(named("b").route("/health", get(|| async { "ok" }))).await;
    let lb: EndpointSet<String> = EndpointSet::new();
    let _ = lb.insert(server.addr.to_string(), (), 1.0);
    let _ = lb.insert(other.addr.to_string(), (), 1.0);
    let check = ActiveHealthConfig {
        interval: Duration::from_millis(50),
        jitter: 0.0,
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    let task = lb
        .spawn_active_health(HttpProbe::new("/health"), check.clone())
        .unwrap();
    let status = |lb: &EndpointSet<String>| lb.endpoints()[0].status;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(status(&lb), EndpointStatus::Healthy);
    healthy.store(false, Ordering::SeqCst);
    wait_for(|| status(&lb) == EndpointStatus::Unhealthy).await;
    assert_eq!(lb.endpoints()[1].status, EndpointStatus::Healthy);
    healthy.store(true, Ordering::SeqCst);
    wait_for(|| status(&lb) == EndpointStatus::Healthy).await;

    // TCP check: a killed server goes down; dropping the balancer ends the task.
    let tcp = lb.spawn_active_health(TcpProbe, check).unwrap();
    other.kill();
    wait_for(|| lb.endpoints()[1].status == EndpointStatus::Unhealthy).await;
    drop(lb);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        task.is_finished() && tcp.is_finished(),
        "checks stop with the balancer"
    );
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}
