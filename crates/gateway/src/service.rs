//! The gateway as one HTTP service: its own pages (`/lb-health`, `/admin`, and the cached paths
//! when the proxy cache is on) from an axum router, and every other request to an
//! [`HttpUpstream`]: with [`GatewayConfig`] straight to its one upstream, and with a
//! [`config`](crate::config) file to the upstream group of the route whose path prefix matches
//! (the longest), after that route's header rules and body size limit. A proxy's requests are
//! nearly all of the second kind: a request whose route has no rules goes to the upstream with
//! no allocation and one prefix comparison per route. [`spawn`] serves it with one
//! single-threaded runtime per core.

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
    /// The gateway's own health (200 while some upstream group has a healthy backend, with each
    /// group's state in the JSON). Default `/lb-health`.
    pub health_path: String,
    /// The page listing the backends and their state. Default `/admin`.
    pub page_path: String,
    /// The gateway's own metrics in Prometheus' text format (`herd_lb_*`, `herd_gateway_*`),
    /// served when the gateway is given a way to render them
    /// ([`Gateway::start_with_metrics`](crate::config::Gateway::start_with_metrics); the
    /// `herd-gateway` binary always is). Not `/metrics`, which [`paths`](Self::paths) sends
    /// to the instances. Default `/gateway/metrics`.
    pub metrics_path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            networks: loopback(),
            paths: vec!["/metrics".to_owned(), "/health".to_owned()],
            health_path: "/lb-health".to_owned(),
            page_path: "/admin".to_owned(),
            metrics_path: "/gateway/metrics".to_owned(),
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

/// Header rules of a route (nginx `proxy_set_header`, `add_header`, `proxy_hide_header`):
/// names removed, then values set (replacing any), then values added (beside any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeaderRules {
    pub(crate) remove: Vec<http::HeaderName>,
    pub(crate) set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub(crate) add: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeaderRules {
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A fixed answer (nginx `return`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FixedResponse {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: bytes::Bytes,
}

impl FixedResponse {
    fn response(&self) -> Response<ProxyBody> {
        let mut res = Response::new(ProxyBody::full(self.body.clone()));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

/// What a route does with its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteAction {
    /// Proxy to the upstream group of this index.
    Proxy(usize),
    /// Answer this.
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    Respond(FixedResponse),
}

/// A path prefix and what its requests get.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Matched as a plain string prefix of the raw path, as nginx's prefix `location`s are.
    pub(crate) prefix: Box<str>,
    pub(crate) action: RouteAction,
    /// Largest request body, in bytes (nginx `client_max_body_size`): a longer declared
    /// `Content-Length` is answered 413 before any instance is picked, a longer streamed body
    /// ends the exchange with 413.
    pub(crate) max_body: Option<u64>,
    pub(crate) request_headers: Option<HeaderRules>,
    pub(crate) response_headers: Option<Arc<HeaderRules>>,
}

impl Route {
    /// Everything to its group, untouched.
    pub(crate) fn catch_all(group: usize) -> Self {
        Self {
            prefix: "".into(),
            action: RouteAction::Proxy(group),
            max_body: None,
            request_headers: None,
            response_headers: None,
        }
    }

    /// Whether a proxied request goes straight to the upstream.
    fn is_plain(&self) -> bool {
        self.max_body.is_none() && self.request_headers.is_none()
    }
}

/// Per listener: how its connections' requests are served beyond the config's routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ListenerMode {
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    /// Answer every request with a 308 to `https://` on this port, as
    /// [`HttpsRedirect`](crate::tls::HttpsRedirect) does (nginx `return 308
    /// https://$host$request_uri`); the pages and admin paths too.
    pub(crate) redirect_https: Option<u16>,
}

/// The gateway as one HTTP service (see the [module](self)). Make one with [`app`] or from a
/// [`config`](crate::config) file.
#[derive(Clone)]
pub struct GatewayService {
    pages: Router,
    /// The paths the pages' router serves: the gateway's own, then the proxy cache's.
    page_paths: Arc<[String]>,
    /// How many of `page_paths` are the gateway's own pages.
    own_pages: usize,
    /// The path prefixes only admin networks reach (the pages' paths among them).
    admin_paths: Arc<[String]>,
    /// Upstream group 0, the only one of a [`GatewayConfig`].
    upstream: HttpUpstream,
    /// Groups 1.. (empty for one group: no allocation per connection then).
    more_upstreams: Box<[HttpUpstream]>,
    /// Longest prefix first; never empty.
    routes: Arc<[Route]>,
    /// Who may reach the operators' paths.
    admin_networks: TrustedProxies,
    /// The client, when this copy serves one connection (see [`GatewayService::connection`]).
    peer: Option<SocketAddr>,
    /// Whether that client is on an admin network (decided once per connection).
    admin: bool,
    /// Redirect every request to HTTPS on this port.
    redirect_https: Option<u16>,
}

/// The route of `path`: the first (longest) whose prefix it starts with.
#[inline]
fn find_route<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().find(|r| path.starts_with(&*r.prefix))
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
        self.connection_on(peer, ListenerMode::default())
    }

    /// [`connection`](Self::connection) on a listener with its own mode.
    pub(crate) fn connection_on(&self, peer: SocketAddr, mode: ListenerMode) -> Self {
        let per_peer =
            |upstream: &HttpUpstream| upstream.clone().with_peer(peer).with_tls(mode.tls);
        Self {
            pages: self.pages.clone(),
            page_paths: Arc::clone(&self.page_paths),
            own_pages: self.own_pages,
            admin_paths: Arc::clone(&self.admin_paths),
            upstream: per_peer(&self.upstream),
            more_upstreams: self.more_upstreams.iter().map(per_peer).collect(),
            routes: Arc::clone(&self.routes),
            admin: self.admin_networks.contains(peer.ip()),
            admin_networks: self.admin_networks.clone(),
            peer: Some(peer),
            redirect_https: mode.redirect_https,
        }
    }

    /// The upstream every request but the pages' goes to (with a config file's several
    /// groups: the first, by name).
    pub fn upstream(&self) -> &HttpUpstream {
        &self.upstream
    }

    fn is_admin_path(&self, path: &str) -> bool {
        self.admin_paths.iter().any(|p| under(path, p))
    }

    fn group(&mut self, index: usize) -> Option<&mut HttpUpstream> {
        match index.checked_sub(1) {
            None => Some(&mut self.upstream),
            Some(i) => self.more_upstreams.get_mut(i),
        }
    }
}

impl fmt::Debug for GatewayService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayService")
            .field("pages", &self.page_paths)
            .field("upstream", &self.upstream)
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// Future of a page request or of a refused operators' path. Boxed: the pages' router's future
/// and the collecting of its body have no names, and these requests are rare next to the
/// proxied ones, whose future ([`ProxyFuture`]) is not boxed.
pub type PageFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// Future of [`GatewayService`]: the upstream's for proxied requests (with the route's
    /// response header rules applied to its head, when it has some), a ready answer (a route's
    /// `return`, a 413, a redirect), else a [`PageFuture`].
    pub struct GatewayFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind {
        Proxy {
            #[pin]
            inner: ProxyFuture,
            headers: Option<Arc<HeaderRules>>,
        },
        Ready {
            response: Option<Response<ProxyBody>>,
        },
        Page {
            inner: PageFuture,
        },
    }
}

impl fmt::Debug for GatewayFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Proxy { .. } => "GatewayFuture::Proxy",
            Kind::Ready { .. } => "GatewayFuture::Ready",
            Kind::Page { .. } => "GatewayFuture::Page",
        })
    }
}

impl GatewayFuture {
    fn proxy(inner: ProxyFuture, headers: Option<Arc<HeaderRules>>) -> Self {
        Self {
            kind: Kind::Proxy { inner, headers },
        }
    }

    fn ready(response: Response<ProxyBody>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    fn page(inner: PageFuture) -> Self {
        Self {
            kind: Kind::Page { inner },
        }
    }
}

impl Future for GatewayFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Proxy { inner, headers } => {
                let Ok(mut res) = std::task::ready!(inner.poll(cx));
                if let Some(rules) = headers {
                    rules.apply(res.headers_mut());
                }
                Poll::Ready(Ok(res))
            }
            KindProj::Ready { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Ready(Ok(status_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "polled after completion\n",
                ))),
            },
            KindProj::Page { inner } => inner.as_mut().poll(cx),
        }
    }
}

fn status_response(status: http::StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body.as_bytes()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

impl Service<Request<Incoming>> for GatewayService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pages' router is always ready (a clone serves each page request), and so is every
        // upstream (its balancer picks when called).
        Service::<Request<Incoming>>::poll_ready(&mut self.upstream, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(port) = self.redirect_https {
            let res = crate::tls::HttpsRedirect::to_port(port).respond(&req);
            return GatewayFuture::ready(res.map(ProxyBody::new));
        }
        if !self.admin && self.is_admin_path(req.uri().path()) {
            let mut res = Response::new(ProxyBody::full(&b"{\"error\":\"no such endpoint\"}"[..]));
            *res.status_mut() = http::StatusCode::NOT_FOUND;
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return GatewayFuture::ready(res);
        }
        let path = req.uri().path();
        if !self.page_paths.iter().any(|p| p == path) {
            let Some(route) = find_route(&self.routes, path) else {
                return GatewayFuture::ready(status_response(
                    http::StatusCode::NOT_FOUND,
                    "no route\n",
                ));
            };
            let group = match &route.action {
                RouteAction::Proxy(group) => *group,
                RouteAction::Respond(fixed) => return GatewayFuture::ready(fixed.response()),
            };
            if route.is_plain() && route.response_headers.is_none() && group == 0 {
                // The common case: one route, no rules.
                return GatewayFuture::proxy(self.upstream.call(req), None);
            }
            let max_body = route.max_body;
            let response_headers = route.response_headers.clone();
            if let Some(rules) = &route.request_headers {
                rules.apply(req.headers_mut());
            }
            if let Some(limit) = max_body {
                let declared = req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|len| len > limit) {
                    return GatewayFuture::ready(status_response(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large\n",
                    ));
                }
            }
            let Some(upstream) = self.group(group) else {
                return GatewayFuture::ready(status_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "route without upstream\n",
                ));
            };
            let inner = match max_body {
                None => upstream.call(req),
                Some(limit) => {
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                    upstream.call(req.map(|body| http_body_util::Limited::new(body, limit)))
                }
            };
            return GatewayFuture::proxy(inner, response_headers);
        }
        // A cached path (after the gateway's own pages) gets its route's header rules too.
        let mut response_rules = None;
        let mut request_rules = None;
        if self
            .page_paths
            .iter()
            .skip(self.own_pages)
            .any(|p| p == path)
            && let Some(route) = find_route(&self.routes, path)
            && matches!(route.action, RouteAction::Proxy(_))
        {
            response_rules = route.response_headers.clone();
            request_rules = route.request_headers.as_ref();
        }
        if let Some(rules) = request_rules {
            rules.apply(req.headers_mut());
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let pages = self.pages.clone();
        GatewayFuture::page(Box::pin(async move {
            let Ok(res) = pages.oneshot(req).await;
            // The pages are small: read them whole rather than box an unsynchronised stream.
            let (mut parts, body) = res.into_parts();
            if let Some(rules) = response_rules {
                rules.apply(&mut parts.headers);
            }
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

/// The service of one connection to a [`GatewayApp`].
pub type GatewayConnection =
    tower::util::Either<WithConnectInfo<RateLimit<GatewayService>>, GatewayService>;

/// `app`'s service for one connection from `peer` on a listener of `mode`.
pub(crate) fn connection_on(
    app: &GatewayApp,
    peer: SocketAddr,
    mode: ListenerMode,
) -> GatewayConnection {
    match app {
        tower::util::Either::Left(limited) => {
            let mut limited = limited.clone();
            *limited.get_mut() = limited.get_ref().connection_on(peer, mode);
            tower::util::Either::Left(WithConnectInfo::new(limited, peer))
        }
        tower::util::Either::Right(gateway) => {
            tower::util::Either::Right(gateway.connection_on(peer, mode))
        }
    }
}

/// Each connection gets its own [`GatewayService`] that knows the client. The rate limits read
/// the client from the request, so with them on every request carries it as `ConnectInfo`.
impl App for GatewayApp {
    type Service = GatewayConnection;
    type Body = ProxyBody;

    fn connection(&self, peer: SocketAddr) -> Self::Service {
        connection_on(self, peer, ListenerMode::default())
    }

    fn tls_connection(&self, peer: SocketAddr) -> Self::Service {
        let mode = ListenerMode {
            tls: true,
            redirect_https: None,
        };
        connection_on(self, peer, mode)
    }
}

/// A page or cached path as the pages' router takes it: absolute, and without the characters
/// axum reads as captures or wildcards.
pub(crate) fn check_path(field: &'static str, path: &str) -> Result<(), Error> {
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

/// Renders the gateway's own metrics page in Prometheus' text format, e.g.
/// `move || handle.render()` with a metrics-exporter-prometheus `PrometheusHandle`.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything [`build`] puts together.
pub(crate) struct Parts<'a> {
    pub(crate) admin: &'a AdminConfig,
    /// At least one.
    pub(crate) upstreams: Vec<HttpUpstream>,
    /// The groups' names, in the order of `upstreams` (the operators' pages show them; a
    /// group without one is named by its index).
    pub(crate) group_names: Vec<String>,
    pub(crate) routes: Vec<Route>,
    pub(crate) rate_limits: Option<&'a RateLimitConfig>,
    /// Cached paths and the group they go to.
    #[cfg(feature = "proxy-cache")]
    pub(crate) caches: Vec<(usize, ProxyCacheConfig)>,
    /// The operators' pages of an earlier build and the names of the groups kept from it (same
    /// settings, same upstream): the new pages' dashboard starts with their history, so it goes
    /// on across a reload. `None`: no history.
    pub(crate) pages: Option<(crate::pages::Pages, Vec<String>)>,
    /// The gateway's own metrics, served on `admin.metrics_path`. `None`: not served.
    pub(crate) metrics: Option<RenderMetrics>,
}

/// What [`build`] made: the app, and its operators' pages without the cached paths (to hand
/// to the next build as [`Parts::pages`]).
pub(crate) struct Built {
    pub(crate) app: GatewayApp,
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) pages: crate::pages::Pages,
}

/// Builds the gateway's service (call it inside the runtime that will serve it: the upstream's
/// connection pool and health checks run there).
///
/// # Errors
/// [`Error::InvalidConfig`] naming the field at fault.
pub async fn app(config: &GatewayConfig) -> Result<GatewayApp, Error> {
    let upstream = HttpUpstream::from_config(&config.upstream)?;
    build(Parts {
        admin: &config.admin,
        upstreams: vec![upstream],
        group_names: vec!["upstream".to_owned()],
        routes: vec![Route::catch_all(0)],
        rate_limits: config.rate_limits.as_ref(),
        #[cfg(feature = "proxy-cache")]
        caches: config
            .proxy_cache
            .iter()
            .map(|cache| (0, cache.clone()))
            .collect(),
        pages: None,
        metrics: None,
    })
    .await
    .map(|built| built.app)
}

/// The gateway of `parts`.
pub(crate) async fn build(parts: Parts<'_>) -> Result<Built, Error> {
    crate::metrics::describe();
    let admin = parts.admin;
    check_path("admin.health_path", &admin.health_path)?;
    check_path("admin.page_path", &admin.page_path)?;
    if admin.health_path == admin.page_path {
        return Err(Error::InvalidConfig {
            field: "admin.page_path",
            reason: format!("{} is also admin.health_path", admin.page_path),
        });
    }
    // The pages show every group by name.
    let groups: Vec<crate::dashboard::Group> = parts
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, upstream)| crate::dashboard::Group {
            name: parts
                .group_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("group {i}")),
            upstream: upstream.clone(),
        })
        .collect();
    let mut upstreams = parts.upstreams.into_iter();
    let Some(upstream) = upstreams.next() else {
        return Err(Error::InvalidConfig {
            field: "upstreams",
            reason: "no upstream group".into(),
        });
    };
    let more_upstreams: Box<[HttpUpstream]> = upstreams.collect();
    let mut routes = parts.routes;
    if routes.is_empty() {
        routes.push(Route::catch_all(0));
    }
    for route in &routes {
        if let RouteAction::Proxy(group) = route.action
            && group > more_upstreams.len()
        {
            return Err(Error::InvalidConfig {
                field: "routes.upstream",
                reason: format!("route {}: no upstream group {group}", route.prefix),
            });
        }
    }
    // Longest prefix first: the first match is the longest.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    #[allow(unused_mut)]
    let previous = parts
        .pages
        .as_ref()
        .map(|(pages, kept)| (pages, kept.as_slice()));
    let base_pages =
        crate::pages::Pages::new(groups, &admin.health_path, &admin.page_path, previous);
    let mut pages = base_pages.router();
    let mut page_paths = vec![admin.health_path.clone(), admin.page_path.clone()];
    if let Some(render) = parts.metrics {
        check_path("admin.metrics_path", &admin.metrics_path)?;
        if page_paths.contains(&admin.metrics_path) {
            return Err(Error::InvalidConfig {
                field: "admin.metrics_path",
                reason: format!("{} is also one of the gateway's pages", admin.metrics_path),
            });
        }
        pages = pages.route(
            &admin.metrics_path,
            axum::routing::get(move || async move {
                let content_type = "text/plain; version=0.0.4; charset=utf-8";
                ([(http::header::CONTENT_TYPE, content_type)], render())
            }),
        );
        page_paths.push(admin.metrics_path.clone());
    }
    // The gateway's own pages come first; the proxy cache's paths after them.
    let own_pages = page_paths.len();
    #[cfg(feature = "proxy-cache")]
    for (group, cache) in &parts.caches {
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
        let target = match group.checked_sub(1) {
            None => &upstream,
            Some(i) => more_upstreams.get(i).ok_or_else(|| Error::InvalidConfig {
                field: "proxy_cache",
                reason: format!("no upstream group {group}"),
            })?,
        };
        pages = pages.merge(crate::cache::routes(target, cache).await?);
    }
    let mut admin_paths = page_paths[..own_pages].to_vec();
    admin_paths.extend(admin.paths.iter().cloned());
    let gateway = GatewayService {
        pages,
        page_paths: page_paths.into(),
        own_pages,
        admin_paths: admin_paths.into(),
        upstream,
        more_upstreams,
        routes: routes.into(),
        admin_networks: admin.networks.clone(),
        peer: None,
        admin: false,
        redirect_https: None,
    };
    let app = match parts.rate_limits {
        None => tower::util::Either::Right(gateway),
        Some(limits) => tower::util::Either::Left(RateLimitLayer::new(limits)?.layer(gateway)),
    };
    Ok(Built {
        app,
        pages: base_pages,
    })
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
