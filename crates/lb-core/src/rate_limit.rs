//! Per-client rate limiting for HTTP services (nginx `limit_req`), using `governor`'s GCRA.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::http::{TrustedProxies, client_ip};

/// A rate: `requests` per `per`, with bursts of up to `burst` requests served without delay
/// (nginx `rate=100r/s burst=N nodelay`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuotaConfig {
    /// Requests allowed per period.
    pub requests: u32,
    /// The period. Default 1 s.
    #[serde(default = "one_second", with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once from a rested client. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl QuotaConfig {
    /// `requests` per second.
    pub fn per_second(requests: u32) -> Self {
        Self {
            requests,
            per: Duration::from_secs(1),
            burst: None,
        }
    }

    /// `requests` per minute.
    pub fn per_minute(requests: u32) -> Self {
        Self {
            requests,
            per: Duration::from_secs(60),
            burst: None,
        }
    }

    /// Sets the burst.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    fn quota(&self, field: &'static str) -> Result<Quota, Error> {
        let invalid = |reason: &str| Error::InvalidConfig {
            field,
            reason: reason.to_string(),
        };
        let requests =
            NonZeroU32::new(self.requests).ok_or_else(|| invalid("requests must be > 0"))?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.requests))
            .ok_or_else(|| invalid("burst must be > 0"))?;
        let period = self.per / requests.get();
        let quota = Quota::with_period(period).ok_or_else(|| invalid("period must be > 0"))?;
        Ok(quota.allow_burst(burst))
    }
}

/// A quota for requests whose path starts with `path_prefix` (the longest matching prefix wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RouteLimit {
    /// Path prefix, e.g. `/login`.
    pub path_prefix: String,
    /// The route's quota (each route has its own counters per client).
    #[serde(flatten)]
    pub quota: QuotaConfig,
}

/// Rate limits keyed by client IP.
///
/// ```
/// # use herd_lb_core::rate_limit::RateLimitConfig;
/// let c: RateLimitConfig = toml::from_str(r#"
///     default = { requests = 100, per = "1s", burst = 200 }
///     routes = [{ path_prefix = "/login", requests = 5, per = "1m" }]
///     trusted_proxies = ["10.0.0.0/8"]
/// "#).unwrap();
/// assert_eq!(c.routes[0].quota.requests, 5);
/// assert_eq!(c.max_tracked_clients, 100_000);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Quota of paths no route matches. Default 100 requests/s (burst 100); `None`: unlimited.
    pub default: Option<QuotaConfig>,
    /// Per-route quotas.
    pub routes: Vec<RouteLimit>,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client IP. Default none.
    pub trusted_proxies: TrustedProxies,
    /// When more clients than this are tracked, the state of every client that is back to a full
    /// burst is dropped (checked every 256 requests), so memory stays bounded under many distinct
    /// clients: at most this many plus the clients seen within one replenish interval of their
    /// quota. Default 100 000.
    pub max_tracked_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            default: Some(QuotaConfig::per_second(100)),
            routes: Vec::new(),
            trusted_proxies: TrustedProxies::none(),
            max_tracked_clients: 100_000,
        }
    }
}

struct Limits {
    default: Option<DefaultKeyedRateLimiter<IpAddr>>,
    routes: Vec<(String, DefaultKeyedRateLimiter<IpAddr>)>,
    trusted: TrustedProxies,
    max_tracked: usize,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl Limits {
    fn limiter_for(&self, path: &str) -> Option<&DefaultKeyedRateLimiter<IpAddr>> {
        self.routes
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, l)| l)
            .or(self.default.as_ref())
    }

    fn tracked(&self) -> usize {
        self.default.as_ref().map_or(0, |l| l.len())
            + self.routes.iter().map(|(_, l)| l.len()).sum::<usize>()
    }

    /// Every 256 checks: drop idle clients' state once too many are tracked.
    fn upkeep(&self) {
        if !self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
            || self.tracked() <= self.max_tracked
        {
            return;
        }
        for limiter in self
            .default
            .iter()
            .chain(self.routes.iter().map(|(_, l)| l))
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Layer answering 429 Too Many Requests (with `Retry-After`) to clients over their quota.
#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Arc<Limits>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field(
                "routes",
                &self
                    .limits
                    .routes
                    .iter()
                    .map(|(p, _)| p)
                    .collect::<Vec<_>>(),
            )
            .field("tracked_clients", &self.limits.tracked())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Builds the limiters; zero rates or bursts are refused with the field named.
    pub fn new(config: &RateLimitConfig) -> Result<Self, Error> {
        let default = config
            .default
            .as_ref()
            .map(|q| q.quota("rate_limit.default").map(RateLimiter::keyed))
            .transpose()?;
        let mut routes = Vec::new();
        for route in &config.routes {
            routes.push((
                route.path_prefix.clone(),
                RateLimiter::keyed(route.quota.quota("rate_limit.routes")?),
            ));
        }
        Ok(Self {
            limits: Arc::new(Limits {
                default,
                routes,
                trusted: config.trusted_proxies.clone(),
                max_tracked: config.max_tracked_clients,
                checks: AtomicU64::new(0),
                clock: DefaultClock::default(),
            }),
        })
    }

    /// Clients currently tracked over all routes (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        self.limits.tracked()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let limits = &self.limits;
        if let Some(limiter) = limits.limiter_for(req.uri().path()) {
            // Without a known peer all such requests share one bucket (fail closed, not open).
            let ip = client_ip(&req, &limits.trusted).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let verdict = limiter.check_key(&ip);
            limits.upkeep();
            if let Err(not_until) = verdict {
                let wait = not_until.wait_time_from(limits.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                metrics::counter!("herd_lb_rate_limited_total").increment(1);
                tracing::debug!(client = %ip, path = req.uri().path(), ?wait, "rate limited");
                let mut res = Response::new(ResBody::default());
                *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    res.headers_mut().insert(RETRY_AFTER, v);
                }
                return Box::pin(std::future::ready(Ok(res)));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ClientAddr;
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn req(ip: IpAddr, path: &str) -> Request<()> {
        let mut r = Request::get(path).body(()).unwrap();
        r.extensions_mut().insert(ClientAddr((ip, 5000).into()));
        r
    }

    fn ok_service()
    -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone {
        tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new("ok".to_string()))
        })
    }

    #[tokio::test]
    async fn per_route_quotas_per_client_with_retry_after() {
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_second(100).with_burst(100)),
            routes: vec![RouteLimit {
                path_prefix: "/login".into(),
                quota: QuotaConfig::per_minute(5),
            }],
            ..RateLimitConfig::default()
        };
        let svc = RateLimitLayer::new(&config).unwrap().layer(ok_service());
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(
                svc.clone()
                    .oneshot(req(a, "/login"))
                    .await
                    .unwrap()
                    .status(),
                StatusCode::OK
            );
        }
        let limited = svc.clone().oneshot(req(a, "/login/submit")).await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = limited.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=12).contains(&retry),
            "5/min replenishes one every 12 s: {retry}"
        );
        // Another client, and another route of the same client, are unaffected.
        assert_eq!(
            svc.clone()
                .oneshot(req(b, "/login"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let mut api_ok = 0;
        for _ in 0..150 {
            api_ok += usize::from(
                svc.clone()
                    .oneshot(req(a, "/api/x"))
                    .await
                    .unwrap()
                    .status()
                    == StatusCode::OK,
            );
        }
        assert!(
            (100..=105).contains(&api_ok),
            "burst of 100 then limited: {api_ok}"
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_many_clients() {
        // 1000/s: a client's state is droppable 1 ms after its request.
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_second(1_000)),
            max_tracked_clients: 1_000,
            ..RateLimitConfig::default()
        };
        let layer = RateLimitLayer::new(&config).unwrap();
        let svc = layer.layer(ok_service());
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i));
            let _ = svc.clone().oneshot(req(ip, "/")).await.unwrap();
        }
        // Without upkeep all 20 000 would stay.
        assert!(
            layer.tracked_clients() <= 2_000,
            "{}",
            layer.tracked_clients()
        );
    }

    #[test]
    fn zero_rates_are_refused() {
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_second(0)),
            ..RateLimitConfig::default()
        };
        let err = RateLimitLayer::new(&config).unwrap_err();
        assert!(err.to_string().contains("rate_limit.default"), "{err}");
    }
}
