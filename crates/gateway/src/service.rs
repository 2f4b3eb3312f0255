//! The gateway as one HTTP service: its own pages (`/lb-health`, `/admin`, and the cached paths
//! when the proxy cache is on) from an axum router, and every other request straight to the
//! [`HttpUpstream`], without a routing table between: a proxy's requests are nearly all of the
//! second kind. [`spawn`] serves it with one single-threaded runtime per core.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ConnectInfo;
use herd_lb_core::Error;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::Deserialize;
use tower::{Layer as _, Service, ServiceExt as _};

#[cfg(feature = "proxy-cache")]
use crate::cache::ProxyCacheConfig;
use crate::http::future::ResponseFuture as ProxyFuture;
use crate::http::{HttpUpstream, HttpUpstreamConfig, ProxyBody, TrustedProxies};
use crate::rate_limit::{RateLimit, RateLimitConfig, RateLimitLayer};
use crate::server::{App, ServerLimits, ServerThread, Threads, WithConnectInfo};

/// The whole gateway: the upstream, rate limits, operators' pages, proxy cache and listener.
///
/// ```
/// # use herd_gateway::GatewayConfig;
/// let config: GatewayConfig = toml::from_str(r#"
///     workers = 2
///     [upstream]
///     endpoints = [{ address = "127.0.0.1:3001" }, { address = "127.0.0.1:3002" }]
///     [rate_limits]
///     routes = [{ path_prefix = "/login", requests = 5, per = "1m" }]
///     [admin]
///     networks = ["10.0.0.0/8"]
/// "#).unwrap();
/// assert_eq!(config.upstream.balancer.endpoints.len(), 2);
/// assert_eq!(config.admin.health_path, "/lb-health");
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// The instances and how to reach and balance over them.
    pub upstream: HttpUpstreamConfig,
    /// Per-client rate limits; `None` (the default): none.
    pub rate_limits: Option<RateLimitConfig>,
    /// Who reaches the operators' paths, and where the gateway's own pages are.
    pub admin: AdminConfig,
    /// The proxy cache; `None` (the default): nothing is cached.
    #[cfg(feature = "proxy-cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "proxy-cache")))]
    pub proxy_cache: Option<ProxyCacheConfig>,
    /// Bounds on what clients may hold open.
    pub server: ServerLimits,
    /// Accepting threads (single-threaded runtimes on one `SO_REUSEPORT` port, nginx's
    /// `worker_processes`). Default 0: one per core.
    pub workers: usize,
}

/// The operators' side of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Networks (IPs or CIDRs) whose connections may reach the operators' paths: the gateway's
    /// pages and [`paths`](Self::paths). Others get a 404 there. Judged by the connection's peer
    /// address, which a client cannot forge with a header. Default: loopback only
    /// (`127.0.0.0/8`, `::1`).
    pub networks: TrustedProxies,
    /// Path prefixes of the instances that only admin networks reach through the gateway, each
    /// matched as a whole segment (`/health` covers `/health/ready`, not `/healthz`) on the raw
    /// path (no percent-decoding, case-sensitive, as the instances' routers match), so
    /// `/%68ealth` reaches no health endpoint either. Default `/metrics`, `/health`.
    pub paths: Vec<String>,
    /// The gateway's own health (200 while a backend is healthy). Default `/lb-health`.
    pub health_path: String,
    /// The page listing the backends and their state. Default `/admin`.
    pub page_path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            networks: loopback(),
            paths: vec!["/metrics".to_owned(), "/health".to_owned()],
            health_path: "/lb-health".to_owned(),
            page_path: "/admin".to_owned(),
        }
    }
}

fn loopback() -> TrustedProxies {
    // Two valid literals: the parse cannot fail.
    TrustedProxies::new(["127.0.0.0/8", "::1/128"]).unwrap_or_default()
}

/// A running gateway.
#[derive(Debug)]
pub struct RunningGateway {
    /// Its server (threads named `gateway-w`).
    pub server: ServerThread,
}

/// The gateway as one HTTP service (see the [module](self)). Make one with [`app`].
#[derive(Clone)]
pub struct GatewayService {
    pages: Router,
    /// The paths the pages' router serves.
    page_paths: Arc<[String]>,
    /// The path prefixes only admin networks reach (the pages' paths among them).
    admin_paths: Arc<[String]>,
    upstream: HttpUpstream,
    /// Who may reach the operators' paths.
    admin_networks: TrustedProxies,
    /// The client, when this copy serves one connection (see [`GatewayService::connection`]).
    peer: Option<SocketAddr>,
    /// Whether that client is on an admin network (decided once per connection).
    admin: bool,
}

/// Whether `path` is `prefix` or below it, by whole segments.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl GatewayService {
    /// This service for the requests of one connection from `peer`: the upstream takes the
    /// client from here, and only page requests get it as `ConnectInfo<SocketAddr>`.
    pub fn connection(&self, peer: SocketAddr) -> Self {
        Self {
            pages: self.pages.clone(),
            page_paths: Arc::clone(&self.page_paths),
            admin_paths: Arc::clone(&self.admin_paths),
            upstream: self.upstream.clone().with_peer(peer),
            admin: self.admin_networks.contains(peer.ip()),
            admin_networks: self.admin_networks.clone(),
            peer: Some(peer),
        }
    }

    /// The upstream every request but the pages' goes to.
    pub fn upstream(&self) -> &HttpUpstream {
        &self.upstream
    }

    fn is_admin_path(&self, path: &str) -> bool {
        self.admin_paths.iter().any(|p| under(path, p))
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

/// Future of a page request or of a refused operators' path. Boxed: the pages' router's future
/// and the collecting of its body have no names, and these requests are rare next to the
/// proxied ones, whose future ([`ProxyFuture`]) is not boxed.
pub type PageFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// Future of [`GatewayService`]: the upstream's for proxied requests, else a [`PageFuture`].
pub type GatewayFuture = futures_util::future::Either<ProxyFuture, PageFuture>;

impl Service<Request<Incoming>> for GatewayService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pages' router is always ready (a clone serves each page request).
        Service::<Request<Incoming>>::poll_ready(&mut self.upstream, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        use futures_util::future::Either;
        if !self.admin && self.is_admin_path(req.uri().path()) {
            return Either::Right(Box::pin(async {
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
        let path = req.uri().path();
        if !self.page_paths.iter().any(|p| p == path) {
            return Either::Left(self.upstream.call(req));
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let pages = self.pages.clone();
        Either::Right(Box::pin(async move {
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
pub type GatewayApp = tower::util::Either<RateLimit<GatewayService>, GatewayService>;

/// Each connection gets its own [`GatewayService`] that knows the client. The rate limits read
/// the client from the request, so with them on every request carries it as `ConnectInfo`.
impl App for GatewayApp {
    type Service = tower::util::Either<WithConnectInfo<RateLimit<GatewayService>>, GatewayService>;
    type Body = ProxyBody;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        match self {
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

/// A page or cached path as the pages' router takes it: absolute, and without the characters
/// axum reads as captures or wildcards.
fn check_path(field: &'static str, path: &str) -> Result<(), Error> {
    let reason = if !path.starts_with('/') {
        "must start with `/`"
    } else if path.contains(['{', '}', '*', '?', '#']) {
        "must be a plain path (no `{`, `}`, `*`, `?` or `#`)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field,
        reason: format!("{path}: {reason}"),
    })
}

/// Builds the gateway's service (call it inside the runtime that will serve it: the upstream's
/// connection pool and health checks run there).
///
/// # Errors
/// [`Error::InvalidConfig`] naming the field at fault.
pub async fn app(config: &GatewayConfig) -> Result<GatewayApp, Error> {
    let admin = &config.admin;
    check_path("admin.health_path", &admin.health_path)?;
    check_path("admin.page_path", &admin.page_path)?;
    if admin.health_path == admin.page_path {
        return Err(Error::InvalidConfig {
            field: "admin.page_path",
            reason: format!("{} is also admin.health_path", admin.page_path),
        });
    }
    let upstream = HttpUpstream::from_config(&config.upstream)?;
    #[allow(unused_mut)]
    let mut pages = crate::pages::router(upstream.clone(), &admin.health_path, &admin.page_path);
    #[allow(unused_mut)]
    let mut page_paths = vec![admin.health_path.clone(), admin.page_path.clone()];
    #[cfg(feature = "proxy-cache")]
    if let Some(cache) = &config.proxy_cache {
        for path in &cache.paths {
            check_path("proxy_cache.paths", path)?;
            if page_paths.contains(path) {
                return Err(Error::InvalidConfig {
                    field: "proxy_cache.paths",
                    reason: format!("{path} is named twice, or is one of the gateway's pages"),
                });
            }
            page_paths.push(path.clone());
        }
        pages = pages.merge(crate::cache::routes(&upstream, cache).await?);
    }
    let mut admin_paths = vec![admin.health_path.clone(), admin.page_path.clone()];
    admin_paths.extend(admin.paths.iter().cloned());
    let gateway = GatewayService {
        pages,
        page_paths: page_paths.into(),
        admin_paths: admin_paths.into(),
        upstream,
        admin_networks: admin.networks.clone(),
        peer: None,
        admin: false,
    };
    match &config.rate_limits {
        None => Ok(tower::util::Either::Right(gateway)),
        Some(limits) => Ok(tower::util::Either::Left(
            RateLimitLayer::new(limits)?.layer(gateway),
        )),
    }
}

/// Builds the gateway and serves it on `bind` with [`workers`](GatewayConfig::workers)
/// single-threaded runtimes (one per core by default), each accepting its share of the
/// connections, as nginx runs one worker process per core: a proxied request and the connection
/// tasks it wakes stay on one thread. The balancer, its health checks and the upstream's
/// settings are shared by all of them (built on the first thread). The threads are named
/// `gateway-w`.
///
/// # Errors
/// A message naming what failed (the port, a thread, or the configuration's field).
pub async fn spawn(config: GatewayConfig, bind: SocketAddr) -> Result<RunningGateway, String> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let limits = config.server;
    let server = ServerThread::start_with_limits(
        "gateway",
        bind,
        Threads::PerCore(workers),
        limits,
        move || async move { app(&config).await.map_err(|e| e.to_string()) },
    )
    .await?;
    Ok(RunningGateway { server })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths_are_told_apart_from_the_api() {
        let admin = AdminConfig::default();
        let mut paths = vec![admin.health_path.clone(), admin.page_path.clone()];
        paths.extend(admin.paths.iter().cloned());
        let is_admin = |path: &str| paths.iter().any(|p| under(path, p));
        for path in [
            "/admin",
            "/lb-health",
            "/metrics",
            "/health",
            "/health/ready",
            "/health/replication",
        ] {
            assert!(is_admin(path), "{path}");
        }
        for path in [
            "/",
            "/api/whoami",
            "/healthz",
            "/metricsfoo",
            "/api/health",
            "/adminx",
        ] {
            assert!(!is_admin(path), "{path}");
        }
    }

    #[test]
    fn the_default_admin_networks_are_loopback() {
        let admin = AdminConfig::default();
        assert!(admin.networks.contains("127.0.0.1".parse().unwrap()));
        assert!(admin.networks.contains("::1".parse().unwrap()));
        assert!(!admin.networks.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn page_paths_are_checked() {
        assert!(check_path("admin.page_path", "/admin").is_ok());
        assert!(check_path("admin.page_path", "admin").is_err());
        assert!(check_path("admin.page_path", "/{x}").is_err());
    }
}
