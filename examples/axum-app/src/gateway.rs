//! The demo's gateway: a recipe for herd-gateway in front of the instances, with active health
//! checks on `/health/ready`, retries, per-IP rate limits, a response cache for the cacheable
//! route, `/lb-health` and an admin page. The gateway itself (its service, pages, rate-limit and
//! cache wiring, and server) is herd-gateway's; this file chooses its settings.

use std::net::SocketAddr;
use std::time::Duration;

use herd_cache_cluster::http::HttpCacheConfig;
use herd_gateway::cache::ProxyCacheConfig;
use herd_gateway::http::{HttpActiveHealth, HttpUpstreamConfig, TrustedProxies};
use herd_gateway::rate_limit::{QuotaConfig, RateLimitConfig, RouteLimit};
use herd_gateway::server::ServerLimits;
use herd_lb_core::health::ActiveHealthConfig;
use herd_lb_core::{EndpointConfig, PolicyConfig};

pub use herd_gateway::RunningGateway;

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

    fn upstream_config(
        &self,
        trusted_proxies: TrustedProxies,
    ) -> Result<HttpUpstreamConfig, String> {
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
        config.trusted_proxies = trusted_proxies;
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

    /// The gateway this recipe describes, as herd-gateway takes it.
    ///
    /// # Errors
    /// A message naming the configuration problem.
    pub fn gateway_config(&self) -> Result<herd_gateway::GatewayConfig, String> {
        let trusted_proxies = TrustedProxies::new(&self.trusted_proxies)
            .map_err(|e| format!("trusted proxies: {e}"))?;
        // The guides' nginx `limit_req` zones: 100 r/s per IP on the API (bursts served at
        // once), 5 r/min per IP on the login route; everything else unlimited.
        let rate_limits = self.rate_limits.then(|| RateLimitConfig {
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
            trusted_proxies: trusted_proxies.clone(),
            ..RateLimitConfig::default()
        });
        // The instances' cacheable route, for 5 s in the gateway's memory.
        let proxy_cache = self.response_cache.then(|| ProxyCacheConfig {
            paths: vec!["/api/stats".to_owned()],
            http: HttpCacheConfig {
                default_ttl: Duration::from_secs(5),
                ..HttpCacheConfig::default()
            },
        });
        let mut config = herd_gateway::GatewayConfig {
            upstream: self.upstream_config(trusted_proxies)?,
            rate_limits,
            proxy_cache,
            server: self.server_limits,
            // One accepting thread per core.
            workers: 0,
            ..herd_gateway::GatewayConfig::default()
        };
        config.admin.networks = TrustedProxies::new(&self.admin_networks)
            .map_err(|e| format!("admin networks: {e}"))?;
        Ok(config)
    }
}

/// `http://host:port/` -> `host:port`.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/').to_owned()
}

/// Builds the gateway and serves it on `bind` with one single-threaded runtime per CPU core
/// (see [`herd_gateway::spawn`]); its threads are named `gateway-w`.
///
/// # Errors
/// A message naming what failed.
pub async fn spawn(config: GatewayConfig, bind: SocketAddr) -> Result<RunningGateway, String> {
    herd_gateway::spawn(config.gateway_config()?, bind).await
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
    fn the_recipe_is_a_valid_gateway_config() {
        let config = GatewayConfig::new(vec!["http://127.0.0.1:3001".to_owned()])
            .gateway_config()
            .unwrap();
        assert_eq!(
            config.upstream.balancer.endpoints[0].address,
            "127.0.0.1:3001"
        );
        assert!(config.rate_limits.is_some());
        assert_eq!(config.proxy_cache.unwrap().paths, ["/api/stats"]);
    }
}
