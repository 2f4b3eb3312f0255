//! The gateway: herd-gateway's HTTP upstream in front of the instances, with active health checks
//! on `/health/ready`, retries, per-IP rate limits, a response cache for the cacheable route,
//! `/lb-health` and an admin page.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use herd_cache_cluster::http::HttpCacheLayer;
use herd_cache_cluster::{Backend, Cache};
use herd_gateway::http::future::ResponseFuture as ProxyFuture;
use herd_gateway::http::{
    HttpActiveHealth, HttpUpstream, HttpUpstreamConfig, ProxyBody, TrustedProxies,
};
use herd_gateway::rate_limit::{
    QuotaConfig, RateLimit, RateLimitConfig, RateLimitLayer, RouteLimit,
};
use herd_lb_core::health::ActiveHealthConfig;
use herd_lb_core::{EndpointConfig, PolicyConfig};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tower::{Layer as _, Service, ServiceExt as _};

use herd_gateway::server::{App, ServerLimits, ServerThread, Threads, WithConnectInfo};

/// The gateway's balancing policy (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Power of two choices over least outstanding requests (the default).
    P2c,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Weighted,
    /// Least outstanding requests.
    LeastOutstanding,
    /// Peak-EWMA latency.
    Ewma,
    /// Consistent hashing on the client IP, with bounded load.
    IpHash,
}

impl Policy {
    fn config(self) -> PolicyConfig {
        match self {
            Policy::P2c => PolicyConfig::P2c,
            Policy::RoundRobin => PolicyConfig::RoundRobin,
            Policy::Weighted => PolicyConfig::WeightedRandom,
            Policy::LeastOutstanding => PolicyConfig::LeastOutstanding,
            Policy::Ewma => PolicyConfig::PeakEwma,
            Policy::IpHash => PolicyConfig::ConsistentHash {
                balance_factor: 1.25,
            },
        }
    }
}

/// What the gateway balances over and how.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    backends: Vec<String>,
    policy: Policy,
    trusted_proxies: Vec<String>,
    admin_networks: Vec<String>,
    server_limits: ServerLimits,
    client_body_timeout: Duration,
    rate_limits: bool,
    response_cache: bool,
}

impl GatewayConfig {
    /// Backends as base URLs (`http://127.0.0.1:3001`) or `host:port`; P2C, rate limits and the
    /// response cache on, no trusted proxies.
    pub fn new(backends: Vec<String>) -> Self {
        GatewayConfig {
            backends,
            policy: Policy::P2c,
            trusted_proxies: Vec::new(),
            admin_networks: vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
            server_limits: ServerLimits::default(),
            client_body_timeout: Duration::from_secs(60),
            rate_limits: true,
            response_cache: true,
        }
    }

    /// The balancing policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` is believed for the client IP.
    pub fn trusted_proxies(mut self, proxies: Vec<String>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Networks (IPs or CIDRs) whose connections may reach the operators' pages: the gateway's
    /// `/admin` and `/lb-health`, and the instances' `/metrics` and `/health*` through it.
    /// Others get a 404 there. Judged by the connection's peer address, which a client cannot
    /// forge with a header. Default: loopback only (`127.0.0.0/8`, `::1`).
    pub fn admin_networks(mut self, networks: Vec<String>) -> Self {
        self.admin_networks = networks;
        self
    }

    /// Header read timeout and connection cap of the gateway's listener (default
    /// [`ServerLimits::default`]).
    pub fn server_limits(mut self, limits: ServerLimits) -> Self {
        self.server_limits = limits;
        self
    }

    /// Longest wait for the next piece of a client's request body (default 60 s, nginx's
    /// `client_body_timeout`): a stalled upload is answered 408.
    pub fn client_body_timeout(mut self, timeout: Duration) -> Self {
        self.client_body_timeout = timeout;
        self
    }

    /// Per-IP rate limits (100 r/s on `/api`, 5 r/min on `/api/auth/login` and on
    /// `/api/auth/signup`); on by default.
    pub fn rate_limits(mut self, on: bool) -> Self {
        self.rate_limits = on;
        self
    }

    /// The response cache on `/api/stats`; on by default.
    pub fn response_cache(mut self, on: bool) -> Self {
        self.response_cache = on;
        self
    }

    fn upstream_config(&self) -> Result<HttpUpstreamConfig, String> {
        let mut config = HttpUpstreamConfig::default();
        config.balancer.policy = self.policy.config();
        config.balancer.endpoints = self
            .backends
            .iter()
            .map(|b| EndpointConfig {
                address: authority(b),
                weight: 1.0,
                max_in_flight: None,
            })
            .collect();
        // The guides' `server ... max_fails=3 fail_timeout=30s`.
        config.balancer.outlier_detection.max_fails = Some(3);
        config.balancer.outlier_detection.fail_timeout = Duration::from_secs(30);
        config.connect_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(10);
        config.client_body_timeout = self.client_body_timeout;
        config.trusted_proxies = TrustedProxies::new(&self.trusted_proxies)
            .map_err(|e| format!("trusted proxies: {e}"))?;
        config.active_health = Some(HttpActiveHealth {
            path: Some("/health/ready".to_owned()),
            check: ActiveHealthConfig {
                interval: Duration::from_millis(500),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 2,
                ..ActiveHealthConfig::default()
            },
        });
        Ok(config)
    }
}

/// `http://host:port/` -> `host:port`.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/').to_owned()
}

/// A running gateway.
#[derive(Debug)]
pub struct RunningGateway {
    /// Its server thread.
    pub server: ServerThread,
}

/// The gateway's own pages, and the route it caches.
const LB_HEALTH: &str = "/lb-health";
const ADMIN: &str = "/admin";
const CACHED: &str = "/api/stats";

/// The gateway as one HTTP service: its own pages (`/lb-health`, `/admin`, and `/api/stats`
/// through the response cache when that is on) from an axum router, and every other request
/// straight to the upstream, without a routing table between: a proxy's requests are nearly all
/// of the second kind.
#[derive(Clone)]
pub struct GatewayService {
    pages: Router,
    page_paths: &'static [&'static str],
    upstream: HttpUpstream,
    /// Who may reach the operators' pages.
    admin_networks: TrustedProxies,
    /// The client, when this copy serves one connection (see [`GatewayService::connection`]).
    peer: Option<SocketAddr>,
    /// Whether that client is on an admin network (decided once per connection).
    admin: bool,
}

/// Paths only admin networks reach: the gateway's own pages and the instances' operational
/// endpoints. Matched on the raw path as the instances' router matches it (no percent-decoding,
/// case-sensitive), so `/%68ealth` or `/Health` reach no health endpoint either.
fn is_admin_path(path: &str) -> bool {
    [LB_HEALTH, ADMIN, "/metrics", "/health"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

impl GatewayService {
    /// This service for the requests of one connection from `peer`: the upstream takes the
    /// client from here, and only page requests get it as `ConnectInfo<SocketAddr>`.
    pub fn connection(&self, peer: SocketAddr) -> Self {
        Self {
            pages: self.pages.clone(),
            page_paths: self.page_paths,
            upstream: self.upstream.clone().with_peer(peer),
            admin: self.admin_networks.contains(peer.ip()),
            admin_networks: self.admin_networks.clone(),
            peer: Some(peer),
        }
    }
}

impl fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayService")
            .field("pages", &self.page_paths)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Future of [`GatewayService`].
pub type GatewayFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for GatewayService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = futures_util::future::Either<ProxyFuture, GatewayFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pages' router is always ready (a clone serves each page request).
        Service::<Request<Incoming>>::poll_ready(&mut self.upstream, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if !self.admin && is_admin_path(req.uri().path()) {
            return futures_util::future::Either::Right(Box::pin(async {
                let body = ProxyBody::full(&b"{\"error\":\"no such endpoint\"}"[..]);
                let mut res = Response::new(body);
                *res.status_mut() = http::StatusCode::NOT_FOUND;
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok(res)
            }));
        }
        if !self.page_paths.contains(&req.uri().path()) {
            return futures_util::future::Either::Left(self.upstream.call(req));
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let pages = self.pages.clone();
        futures_util::future::Either::Right(Box::pin(async move {
            let Ok(res) = pages.oneshot(req).await;
            // The pages are small: read them whole rather than box an unsynchronised stream.
            let (mut parts, body) = res.into_parts();
            let body = match body.collect().await {
                Ok(collected) => ProxyBody::full(collected.to_bytes()),
                Err(e) => {
                    parts.status = http::StatusCode::INTERNAL_SERVER_ERROR;
                    ProxyBody::full(format!("gateway page failed: {e}\n"))
                }
            };
            Ok(Response::from_parts(parts, body))
        }))
    }
}

/// What a gateway serves: [`GatewayService`], behind the rate limits when they are on.
/// (A struct of the demo's own: `App` is herd-gateway's trait and `Either` tower's type.)
#[derive(Debug, Clone)]
pub struct GatewayApp(tower::util::Either<RateLimit<GatewayService>, GatewayService>);

/// Each connection gets its own [`GatewayService`] that knows the client. The rate limits read
/// the client from the request, so with them on every request carries it as `ConnectInfo`.
impl App for GatewayApp {
    type Service = tower::util::Either<WithConnectInfo<RateLimit<GatewayService>>, GatewayService>;
    type Body = ProxyBody;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        match &self.0 {
            tower::util::Either::Left(limited) => {
                let mut limited = limited.clone();
                *limited.get_mut() = limited.get_ref().connection(peer);
                tower::util::Either::Left(WithConnectInfo::new(limited, peer))
            }
            tower::util::Either::Right(gateway) => {
                tower::util::Either::Right(gateway.connection(peer))
            }
        }
    }
}

/// Builds the gateway's service (call inside the runtime that will serve it: the upstream's
/// connection pool and health checks run there).
///
/// # Errors
/// A message naming the configuration problem.
pub async fn app(config: &GatewayConfig) -> Result<GatewayApp, String> {
    let upstream = HttpUpstream::from_config(&config.upstream_config()?)
        .map_err(|e| format!("upstream: {e}"))?;
    let mut pages = Router::new()
        .route(LB_HEALTH, get(lb_health))
        .route(ADMIN, get(admin))
        .with_state(upstream.clone());
    let mut page_paths: &'static [&'static str] = &[LB_HEALTH, ADMIN];
    if config.response_cache {
        let cache = Cache::builder(Backend::memory())
            .namespace("gateway")
            .build()
            .await
            .map_err(|e| format!("response cache: {e}"))?;
        let proxy = upstream
            .clone()
            .map_request(|req: Request| req.map(Body::new));
        let cached = Router::new()
            .route_service(CACHED, proxy)
            .layer(HttpCacheLayer::new(cache).default_ttl(Duration::from_secs(5)));
        pages = pages.merge(cached);
        page_paths = &[LB_HEALTH, ADMIN, CACHED];
    }
    let gateway = GatewayService {
        pages,
        page_paths,
        upstream,
        admin_networks: TrustedProxies::new(&config.admin_networks)
            .map_err(|e| format!("admin networks: {e}"))?,
        peer: None,
        admin: false,
    };
    if !config.rate_limits {
        return Ok(GatewayApp(tower::util::Either::Right(gateway)));
    }
    // The guides' nginx `limit_req` zones: 100 r/s per IP on the API (bursts served at once),
    // 5 r/min per IP on the login route; everything else unlimited.
    let limits = RateLimitConfig {
        default: None,
        routes: vec![
            RouteLimit {
                path_prefix: "/api/".to_owned(),
                quota: QuotaConfig::per_second(100).with_burst(200),
            },
            RouteLimit {
                path_prefix: "/api/auth/login".to_owned(),
                quota: QuotaConfig::per_minute(5),
            },
            // Each sign-up costs a password hash (19 MiB, ~50 ms of a core).
            RouteLimit {
                path_prefix: "/api/auth/signup".to_owned(),
                quota: QuotaConfig::per_minute(5),
            },
        ],
        trusted_proxies: trusted_proxies(&config.trusted_proxies)?,
        ..RateLimitConfig::default()
    };
    let layer = RateLimitLayer::new(&limits).map_err(|e| format!("rate limits: {e}"))?;
    Ok(GatewayApp(tower::util::Either::Left(layer.layer(gateway))))
}

fn trusted_proxies(list: &[String]) -> Result<TrustedProxies, String> {
    TrustedProxies::new(list).map_err(|e| format!("trusted proxies: {e}"))
}

/// Builds the gateway and serves it on `bind` with one single-threaded runtime per CPU core, each
/// accepting its share of the connections, as nginx runs one worker process per core: a proxied
/// request and the connection tasks it wakes stay on one thread. The balancer, its health checks
/// and the connection pool are shared by all of them.
///
/// # Errors
/// A message naming what failed.
pub async fn spawn(config: GatewayConfig, bind: SocketAddr) -> Result<RunningGateway, String> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let limits = config.server_limits;
    let server = ServerThread::start_with_limits(
        "gateway",
        bind,
        Threads::PerCore(cores),
        limits,
        move || async move { app(&config).await },
    )
    .await?;
    Ok(RunningGateway { server })
}

#[derive(serde::Serialize)]
struct BackendState {
    address: String,
    healthy: bool,
    status: String,
    in_flight: usize,
    ewma_ms: f64,
    requests: u64,
    failures: u64,
    ejected_for_ms: Option<u128>,
}

fn backends(upstream: &HttpUpstream) -> Vec<BackendState> {
    let now = Instant::now();
    upstream
        .endpoints()
        .into_iter()
        .map(|e| BackendState {
            address: e.key.to_string(),
            healthy: e.healthy,
            status: format!("{:?}", e.status),
            in_flight: e.in_flight,
            ewma_ms: e.ewma.as_secs_f64() * 1000.0,
            requests: e.requests,
            failures: e.failures,
            ejected_for_ms: e
                .ejected_until
                .map(|t| t.saturating_duration_since(now).as_millis()),
        })
        .collect()
}

/// The gateway's own health: 200 while at least one backend is healthy.
async fn lb_health(State(upstream): State<HttpUpstream>) -> Response {
    let list = backends(&upstream);
    let healthy = list.iter().filter(|b| b.healthy).count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if healthy > 0 { "pass" } else { "fail" },
        "healthy": healthy,
        "backends": list,
    });
    (status, Json(body)).into_response()
}

/// A page listing the backends and their state.
async fn admin(State(upstream): State<HttpUpstream>) -> Html<String> {
    let mut rows = String::new();
    for b in backends(&upstream) {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            b.address,
            if b.healthy { "healthy" } else { "unhealthy" },
            b.status,
            b.in_flight,
            b.ewma_ms,
            b.requests,
            b.failures
        );
    }
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>herd gateway</title>\
         <meta http-equiv=refresh content=2>\
         <h1>Backends</h1><table border=1 cellpadding=4>\
         <tr><th>address</th><th>health</th><th>state</th><th>in flight</th><th>EWMA ms</th>\
         <th>requests</th><th>failures</th></tr>{rows}</table>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls_become_authorities() {
        assert_eq!(authority("http://127.0.0.1:3001"), "127.0.0.1:3001");
        assert_eq!(authority("http://127.0.0.1:3001/"), "127.0.0.1:3001");
        assert_eq!(authority("127.0.0.1:3001"), "127.0.0.1:3001");
    }

    #[test]
    fn operator_paths_are_told_apart_from_the_api() {
        for path in [
            "/admin",
            "/lb-health",
            "/metrics",
            "/health",
            "/health/ready",
            "/health/replication",
        ] {
            assert!(is_admin_path(path), "{path}");
        }
        for path in [
            "/",
            "/api/whoami",
            "/healthz",
            "/metricsfoo",
            "/api/health",
            "/adminx",
        ] {
            assert!(!is_admin_path(path), "{path}");
        }
    }
}
