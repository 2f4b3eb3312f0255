//! The file's tables, their checks, and what they become: [`HttpUpstreamConfig`]s, a
//! [`RateLimitConfig`], the service's routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_lb_core::{EndpointConfig, PolicyConfig};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::ConfigError;
use crate::http::{
    HashKeyConfig, HttpActiveHealth, HttpUpstreamConfig, TrustedProxies, UpstreamProtocol,
    UpstreamScheme, UpstreamTlsConfig,
};
use crate::observe::ObserveConfig;
use crate::rate_limit::{QuotaConfig, RateLimitConfig, RouteLimit, SharedLimitConfig};
use crate::server::ServerLimits;
use crate::service::{AdminConfig, FixedResponse, HeaderRules, Route, RouteAction};
use crate::tls::TlsConfig;

/// The proxy cache settings of a `[proxy_cache_zones.NAME]` table (herd-cache-cluster's HTTP
/// cache: TTLs, size bounds, key headers).
#[cfg(feature = "proxy-cache")]
pub type CacheZone = herd_cache_cluster::http::HttpCacheConfig;
/// Without the `proxy-cache` feature a cache zone is refused.
#[cfg(not(feature = "proxy-cache"))]
pub type CacheZone = toml::Table;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Accepting threads per listener (nginx `worker_processes`). Default 0: one per core.
    pub workers: usize,
    /// `[[listen]]`: where clients connect (nginx `listen`). At least one.
    pub listen: Vec<ListenConfig>,
    /// `[server]`: bounds on what clients may hold open (header timeout, connections, head size).
    pub server: ServerLimits,
    /// `[admin]`: who reaches the operators' paths, and where the gateway's pages are.
    pub admin: AdminSection,
    /// `[upstreams.NAME]`: the upstream groups (nginx `upstream NAME { ... }`). At least one.
    pub upstreams: BTreeMap<String, UpstreamGroup>,
    /// `[[routes]]`: path prefix -> group (nginx `location /prefix { proxy_pass ... }`). May be
    /// left out when there is one group: everything goes to it.
    pub routes: Vec<RouteConfig>,
    /// `[limit_req_zones.NAME]`: named rate limits routes refer to (nginx `limit_req_zone`).
    pub limit_req_zones: BTreeMap<String, LimitZone>,
    /// `[rate_limit]`: how clients are keyed for every zone.
    pub rate_limit: RateLimitSection,
    /// `[proxy_cache_zones.NAME]`: cache settings routes refer to (nginx `proxy_cache_path`).
    pub proxy_cache_zones: BTreeMap<String, CacheZone>,
    /// `[observe]`: request ids, `traceparent`, access log lines (nginx `access_log`), response
    /// compression (nginx `gzip`); see [`ObserveConfig`]. Default: none of them.
    pub observe: Option<ObserveConfig>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `ip:port` to bind (`0.0.0.0:80`, `[::]:443`).
    pub address: SocketAddr,
    /// TLS termination on this listener (nginx `listen 443 ssl` with `ssl_certificate`,
    /// `ssl_certificate_key`): `tls = { cert = "fullchain.pem", key = "privkey.pem" }`, see
    /// [`TlsConfig`] (client certificates, ALPN, reload on file change). Requests that came
    /// over it are forwarded with `X-Forwarded-Proto: https`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Answer every request with `308` to `https://HOST[:port]/same/target` (nginx `return 308
    /// https://$host$request_uri`; 308 keeps a `POST` a `POST`, where 301 lets clients turn it
    /// into a `GET`); the value is the HTTPS port (443 is left out of the URL). A missing or
    /// malformed host is answered `400`.
    #[serde(default)]
    pub redirect_https: Option<u16>,
}

/// `[admin]` (see [`AdminConfig`]; every key has its default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Networks whose connections may reach the operators' paths. Default loopback.
    pub networks: TrustedProxies,
    /// Instance paths only admin networks reach. Default `/metrics`, `/health`.
    pub paths: Vec<String>,
    /// The gateway's own health page. Default `/lb-health`.
    pub health_path: String,
    /// The endpoints' table. Default `/admin`.
    pub page_path: String,
    /// The gateway's own metrics (Prometheus text: balancing, ejections, retries, rate
    /// limits, TLS), served by the `herd-gateway` binary. Default `/gateway/metrics`.
    pub metrics_path: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        let AdminConfig {
            networks,
            paths,
            health_path,
            page_path,
            metrics_path,
        } = AdminConfig::default();
        Self {
            networks,
            paths,
            health_path,
            page_path,
            metrics_path,
        }
    }
}

impl AdminSection {
    pub(crate) fn to_admin(&self) -> AdminConfig {
        AdminConfig {
            networks: self.networks.clone(),
            paths: self.paths.clone(),
            health_path: self.health_path.clone(),
            page_path: self.page_path.clone(),
            metrics_path: self.metrics_path.clone(),
        }
    }
}

/// How a group picks a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupPolicy {
    /// In turn, by weight (nginx's default).
    #[default]
    RoundRobin,
    /// Fewest requests in flight (nginx `least_conn`).
    LeastConn,
    /// The same client IP to the same server while it is up (nginx `ip_hash`), by consistent
    /// hashing with bounded load.
    IpHash,
    /// Consistent hashing on [`hash_key`](UpstreamGroup::hash_key) (nginx `hash ... consistent`).
    Hash,
    /// Random by weight (nginx `random`).
    Random,
    /// Power of two random choices by load (nginx `random two least_conn`).
    P2c,
    /// Lowest peak-EWMA latency times load.
    PeakEwma,
}

/// One server of a group (nginx `server address weight=N max_conns=N`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// Most requests in flight on it (nginx `max_conns`). Default unlimited.
    #[serde(default)]
    pub max_conns: Option<usize>,
    /// nginx `backup`: the server gets requests only when no other server of the group can take
    /// them (all down, draining or at `max_conns`), and loses them as soon as one can again.
    /// Not allowed with `policy = "hash"` or `"ip_hash"` (as in nginx). Default false.
    #[serde(default)]
    pub backup: bool,
    /// nginx's per-server `max_fails`: herd keeps one per group, so every server that gives it
    /// must give the same (and the group's own `max_fails`, if set, too).
    #[serde(default)]
    pub max_fails: Option<u32>,
    /// nginx's per-server `fail_timeout`, one per group as `max_fails`.
    #[serde(default, with = "humantime_serde")]
    pub fail_timeout: Option<Duration>,
}

fn one() -> f64 {
    1.0
}

/// Active health checks (nginx Plus `health_check`, an ALB target group's health check).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path to GET, expecting 2xx; none: a TCP connect. Default none.
    pub path: Option<String>,
    /// Time between checks. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check slower than this fails. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passing checks in a row that bring a server back (ALB "healthy threshold"). Default 2.
    #[serde(alias = "healthy_threshold")]
    pub rise: u32,
    /// Failing checks in a row that take a server out (ALB "unhealthy threshold"). Default 3.
    #[serde(alias = "unhealthy_threshold")]
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        let check = herd_lb_core::health::ActiveHealthConfig::default();
        Self {
            path: None,
            interval: check.interval,
            timeout: check.timeout,
            rise: check.rise,
            fall: check.fall,
        }
    }
}

/// An upstream group (nginx `upstream NAME { ... }` and the `proxy_*` settings that go with it).
/// Every key but `servers` has a default, that of [`HttpUpstreamConfig`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamGroup {
    /// The servers (nginx `server`). At least one, unless [`dns`](Self::dns) names them.
    pub servers: Vec<ServerEntry>,
    /// Servers from a DNS name's A/AAAA records at one port, re-resolved on an interval (nginx
    /// Plus `server NAME resolve` with `resolver`; a Kubernetes headless Service):
    /// `dns = { name = "app-headless.default.svc.cluster.local", port = 3000 }`, also
    /// `interval` (5 s), `min_interval` (1 s), `jitter` (0.1), `timeout` (2 s), `nameservers`
    /// (default the system's). New addresses join, vanished ones drain, the others keep their
    /// state; a failed or empty answer keeps the last good set.
    #[cfg(feature = "dns")]
    pub dns: Option<herd_lb_core::discover::DnsConfig>,
    /// How a server is picked. Default `round_robin`.
    pub policy: GroupPolicy,
    /// What `policy = "hash"` hashes: `"client_ip"`, `{ header = "X-User" }` or
    /// `{ cookie = "session" }`.
    pub hash_key: Option<HashKeyConfig>,
    /// nginx `max_fails`: failures within `fail_timeout` that take a server out (for
    /// `fail_timeout`, doubling while it keeps failing). 0 turns it off. Default: herd's
    /// passive health (5 failures in a row).
    pub max_fails: Option<u32>,
    /// nginx `fail_timeout`: the window `max_fails` counts in and the first time out. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Option<Duration>,
    /// Most servers out at once for failures, in percent. Default 50.
    pub max_ejection_percent: Option<u8>,
    /// nginx `keepalive`: idle connections kept per server and per worker. Default 32.
    pub keepalive: Option<usize>,
    /// nginx `keepalive_timeout` (of the upstream connections). Default 60 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Option<Duration>,
    /// nginx `proxy_connect_timeout`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// nginx `proxy_read_timeout`: the server's time to answer and between pieces of its
    /// response. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// nginx `proxy_send_timeout`: herd has one timeout for both directions, the longer of
    /// `read_timeout` and this. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// nginx `client_body_timeout`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Option<Duration>,
    /// nginx `proxy_next_upstream`: `"error"`, `"timeout"`, `"http_502"`, `"http_503"`,
    /// `"http_504"` (any `http_NNN`), `"off"`. Errors and timeouts are always retried on another
    /// server (a connect failure for any method, others for idempotent methods only); the
    /// `http_NNN` entries are the statuses retried. Default 502, 503, 504.
    pub next_upstream: Option<Vec<String>>,
    /// nginx `proxy_next_upstream_tries`: tries per request, the first included. Default 3.
    pub next_upstream_tries: Option<u32>,
    /// Request bodies up to this many bytes are kept so they can be retried. Default 64 KiB.
    pub retry_buffer_limit: Option<usize>,
    /// Active health checks. Default none (passive health only).
    pub health_check: Option<HealthCheckConfig>,
    /// Proxies whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: TrustedProxies,
    /// Pass the client's `Host` on (nginx `proxy_set_header Host $host`). Default false: the
    /// server's address, as nginx's default `Host $proxy_host`.
    pub preserve_host: bool,
    /// `X-Forwarded-Proto` for every request (TLS ended in front of herd, as behind an ALB).
    /// Default: the scheme of the client's connection.
    pub forwarded_proto: Option<String>,
    /// Ramp a new or recovered server up over this time (nginx Plus `slow_start`). Default off.
    #[serde(with = "humantime_serde")]
    pub slow_start: Option<Duration>,
    /// `"http"` (default) or `"https"` to the servers (nginx `proxy_pass https://`).
    pub scheme: UpstreamScheme,
    /// `"http1"` (default), `"h2"` or `"auto"` (by ALPN over https) to the servers (nginx
    /// `proxy_http_version`, `grpc_pass`).
    pub protocol: UpstreamProtocol,
    /// TLS to the servers with `scheme = "https"`: `ca_file`, `server_name`, `client_cert_file`,
    /// `client_key_file` (nginx `proxy_ssl_trusted_certificate`, `proxy_ssl_name`,
    /// `proxy_ssl_certificate`, `proxy_ssl_certificate_key`).
    pub tls: UpstreamTlsConfig,
    /// How long an upgraded connection (a WebSocket) may stay silent both ways. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub upgrade_idle_timeout: Option<Duration>,
}

/// A route (nginx `location /prefix { ... }`): exactly one of `upstream` and `return`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix, matched on the raw path as a plain string prefix (the longest wins), as
    /// nginx's prefix locations are. Starts with `/`.
    pub prefix: String,
    /// The group its requests go to (nginx `proxy_pass http://NAME`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A fixed answer instead (nginx `return`).
    #[serde(default, rename = "return")]
    pub return_: Option<ReturnConfig>,
    /// A `[limit_req_zones]` name (nginx `limit_req zone=NAME`).
    #[serde(default)]
    pub limit_req: Option<String>,
    /// A `[proxy_cache_zones]` name (nginx `proxy_cache NAME`): `GET`/`HEAD` responses of the
    /// path equal to `prefix`, and of the exact paths in `proxy_cache_paths`, are cached.
    #[serde(default)]
    pub proxy_cache: Option<String>,
    /// More exact paths under `prefix` to cache.
    #[serde(default)]
    pub proxy_cache_paths: Vec<String>,
    /// nginx `client_max_body_size`: bytes, or `"10k"`, `"8m"`, `"1g"`; 0 turns it off.
    /// Default unlimited.
    #[serde(default, deserialize_with = "size")]
    pub client_max_body_size: Option<u64>,
    /// Rules for the request's headers before it goes on (nginx `proxy_set_header`).
    #[serde(default)]
    pub request_headers: HeaderRulesConfig,
    /// Rules for the response's headers (nginx `add_header`, `proxy_hide_header`).
    #[serde(default)]
    pub response_headers: HeaderRulesConfig,
}

/// Header rules: `remove` first, then `set` (replacing), then `add` (beside what is there).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderRulesConfig {
    /// Names to drop.
    pub remove: Vec<String>,
    /// Name -> value, replacing any.
    pub set: BTreeMap<String, String>,
    /// Name -> value, added beside any.
    pub add: BTreeMap<String, String>,
}

/// A fixed answer (nginx `return STATUS "body"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnConfig {
    /// The status.
    pub status: u16,
    /// The body. Default empty.
    #[serde(default)]
    pub body: String,
    /// `Content-Type`. Default `text/plain; charset=utf-8` when there is a body.
    #[serde(default)]
    pub content_type: Option<String>,
    /// `Location` (for a redirect).
    #[serde(default)]
    pub location: Option<String>,
}

/// A named rate limit (nginx `limit_req_zone ... rate=R` with `limit_req burst=B nodelay`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitZone {
    /// `"100r/s"` or `"5r/m"`, per client address (nginx `$binary_remote_addr`).
    pub rate: String,
    /// Requests past the rate let through at once from a rested client (nginx `burst`).
    /// Default 0.
    #[serde(default)]
    pub burst: u32,
    /// Must be true (the default): past the burst herd answers 429 at once and never delays a
    /// request as nginx does without `nodelay`.
    #[serde(default = "yes")]
    pub nodelay: bool,
}

fn yes() -> bool {
    true
}

/// `[rate_limit]`: how every zone keys clients (see [`RateLimitConfig`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSection {
    /// A zone for the paths of routes without `limit_req`. Default none.
    pub default_zone: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed for the client's address. Default none.
    pub trusted_proxies: TrustedProxies,
    /// IPv4 clients sharing this many leading bits share a quota. Default 32.
    pub ipv4_prefix_len: u8,
    /// IPv6 clients sharing this many leading bits share a quota. Default 64.
    pub ipv6_prefix_len: u8,
    /// Most client states kept (nginx's zone size). Default 100 000.
    pub max_tracked_clients: usize,
    /// `RateLimit-Policy` and `RateLimit` headers on limited paths' responses. Default true.
    pub headers: bool,
    /// Share the zones' states with the other gateways through a Redis Cluster:
    /// `shared = { nodes = ["redis://10.0.0.5:7000"] }` (see [`SharedLimitConfig`]). Default:
    /// each gateway limits on its own (nginx's `limit_req`, per process).
    pub shared: Option<SharedLimitConfig>,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        let d = RateLimitConfig::default();
        Self {
            default_zone: None,
            trusted_proxies: d.trusted_proxies,
            ipv4_prefix_len: d.ipv4_prefix_len,
            ipv6_prefix_len: d.ipv6_prefix_len,
            max_tracked_clients: d.max_tracked_clients,
            headers: d.headers,
            shared: None,
        }
    }
}

/// A size in bytes: an integer, or a string with an optional `k`, `m` or `g` (nginx's units).
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size: bytes, or a string like \"512k\", \"10m\", \"1g\"")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|n| (n > 0).then_some(n))
                .map_err(|_| E::custom("a size cannot be negative"))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok((v > 0).then_some(v))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_size(v)
                .map(|n| (n > 0).then_some(n))
                .map_err(E::custom)
        }
    }
    d.deserialize_any(Size)
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 'b'),
    };
    let shift = match unit {
        'b' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        _ => return Err(format!("{text:?}: the unit must be k, m or g")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with k, m or g)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `"100r/s"` -> 100 per second.
fn parse_rate(rate: &str) -> Result<(u32, Duration), String> {
    let (n, per) = rate
        .split_once("r/")
        .ok_or_else(|| format!("{rate:?}: write it as \"100r/s\" or \"5r/m\""))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{rate:?}: {n:?} is not a whole number of requests"))?;
    if n == 0 {
        return Err(format!("{rate:?}: the rate must be above 0"));
    }
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        other => return Err(format!("{rate:?}: the unit is `s` or `m`, not {other:?}")),
    };
    Ok((n, per))
}

fn header_rules(key: &str, config: &HeaderRulesConfig) -> Result<Option<HeaderRules>, ConfigError> {
    let name = |kind: &str, name: &str| {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ConfigError::invalid(
                format!("{key}.{kind}"),
                format!("{name:?} is not a header name"),
            )
        })
    };
    let pair = |kind: &str, (n, v): (&String, &String)| {
        let value = HeaderValue::from_str(v).map_err(|_| {
            ConfigError::invalid(
                format!("{key}.{kind}.{n}"),
                format!("{v:?} is not a valid header value"),
            )
        })?;
        Ok::<_, ConfigError>((name(kind, n)?, value))
    };
    let rules = HeaderRules {
        remove: config
            .remove
            .iter()
            .map(|n| name("remove", n))
            .collect::<Result<_, _>>()?,
        set: config
            .set
            .iter()
            .map(|p| pair("set", p))
            .collect::<Result<_, _>>()?,
        add: config
            .add
            .iter()
            .map(|p| pair("add", p))
            .collect::<Result<_, _>>()?,
    };
    Ok((!rules.is_empty()).then_some(rules))
}

fn fixed_response(key: &str, ret: &ReturnConfig) -> Result<FixedResponse, ConfigError> {
    let status = StatusCode::from_u16(ret.status).map_err(|_| {
        ConfigError::invalid(
            format!("{key}.status"),
            format!("{} is not an HTTP status", ret.status),
        )
    })?;
    let mut headers = http::HeaderMap::new();
    let value = |field: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| {
            ConfigError::invalid(
                format!("{key}.{field}"),
                format!("{v:?} is not a valid header value"),
            )
        })
    };
    match &ret.content_type {
        Some(ct) => {
            headers.insert(http::header::CONTENT_TYPE, value("content_type", ct)?);
        }
        None if !ret.body.is_empty() => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        None => {}
    }
    if let Some(location) = &ret.location {
        headers.insert(http::header::LOCATION, value("location", location)?);
    }
    Ok(FixedResponse {
        status,
        headers,
        body: bytes::Bytes::from(ret.body.clone()),
    })
}

impl UpstreamGroup {
    /// This group as [`HttpUpstreamConfig`] (`name` for error keys).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn to_upstream_config(&self, name: &str) -> Result<HttpUpstreamConfig, ConfigError> {
        let key = |field: &str| format!("upstreams.{name}.{field}");
        let mut c = HttpUpstreamConfig::default();
        #[cfg(feature = "dns")]
        let named_by_dns = self.dns.is_some();
        #[cfg(not(feature = "dns"))]
        let named_by_dns = false;
        if self.servers.is_empty() && !named_by_dns {
            return Err(ConfigError::invalid(key("servers"), "no server"));
        }
        #[cfg(feature = "dns")]
        if let Some(dns) = &self.dns {
            if dns.name.is_empty() {
                return Err(ConfigError::invalid(key("dns.name"), "no name"));
            }
            if dns.port == 0 {
                return Err(ConfigError::invalid(key("dns.port"), "no port"));
            }
            c.dns = Some(dns.clone());
        }
        let mut seen = BTreeSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let at = key(&format!("servers[{i}]"));
            if server.backup && matches!(self.policy, GroupPolicy::Hash | GroupPolicy::IpHash) {
                return Err(ConfigError::invalid(
                    format!("{at}.backup"),
                    "backup servers cannot be used with policy = \"hash\" or \"ip_hash\" \
                     (as in nginx): hashing already moves a down server's clients to the next \
                     server",
                ));
            }
            if server.address.parse::<http::uri::Authority>().is_err()
                || !server.address.contains(':')
            {
                return Err(ConfigError::invalid(
                    format!("{at}.address"),
                    format!("{:?} is not host:port", server.address),
                ));
            }
            if !seen.insert(server.address.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{at}.address"),
                    format!("{} is listed twice", server.address),
                ));
            }
            if !(server.weight.is_finite() && server.weight > 0.0) {
                return Err(ConfigError::invalid(
                    format!("{at}.weight"),
                    format!("{} must be a number above 0", server.weight),
                ));
            }
            let endpoint = EndpointConfig {
                address: server.address.clone(),
                weight: server.weight,
                max_in_flight: server.max_conns,
            };
            if server.backup {
                c.balancer.backups.push(endpoint);
            } else {
                c.balancer.endpoints.push(endpoint);
            }
        }
        c.balancer.policy = match self.policy {
            GroupPolicy::RoundRobin => PolicyConfig::RoundRobin,
            GroupPolicy::LeastConn => PolicyConfig::LeastOutstanding,
            GroupPolicy::Random => PolicyConfig::WeightedRandom,
            GroupPolicy::P2c => PolicyConfig::P2c,
            GroupPolicy::PeakEwma => PolicyConfig::PeakEwma,
            GroupPolicy::IpHash | GroupPolicy::Hash => PolicyConfig::ConsistentHash {
                balance_factor: 1.25,
            },
        };
        c.hash_key = match (self.policy, &self.hash_key) {
            (GroupPolicy::IpHash, None) => Some(HashKeyConfig::ClientIp),
            (GroupPolicy::Hash, Some(k)) => Some(k.clone()),
            (GroupPolicy::Hash, None) => {
                return Err(ConfigError::invalid(
                    key("hash_key"),
                    "policy = \"hash\" needs a hash_key (\"client_ip\", { header = ... } or \
                     { cookie = ... })",
                ));
            }
            (_, Some(_)) => {
                return Err(ConfigError::invalid(
                    key("hash_key"),
                    "only used with policy = \"hash\"",
                ));
            }
            (_, None) => None,
        };
        let max_fails = one_per_group(
            name,
            "max_fails",
            self.max_fails,
            self.servers.iter().map(|s| s.max_fails),
        )?;
        let fail_timeout = one_per_group(
            name,
            "fail_timeout",
            self.fail_timeout,
            self.servers.iter().map(|s| s.fail_timeout),
        )?;
        let outlier = &mut c.balancer.outlier_detection;
        match max_fails {
            Some(0) => {
                outlier.max_fails = None;
                outlier.consecutive_failures = None;
            }
            Some(n) => {
                outlier.max_fails = Some(n);
                outlier.consecutive_failures = None;
            }
            None => {}
        }
        if let Some(t) = fail_timeout {
            if t.is_zero() {
                return Err(ConfigError::invalid(key("fail_timeout"), "must be above 0"));
            }
            outlier.fail_timeout = t;
            outlier.base_ejection = t;
            outlier.max_ejection = outlier.max_ejection.max(t);
        }
        if let Some(p) = self.max_ejection_percent {
            if p > 100 {
                return Err(ConfigError::invalid(
                    key("max_ejection_percent"),
                    format!("{p} is above 100"),
                ));
            }
            outlier.max_ejection_percent = p;
        }
        if let Some(n) = self.keepalive {
            c.pool_max_idle_per_host = n;
        }
        if let Some(t) = self.keepalive_timeout {
            c.pool_idle_timeout = t;
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout = t;
        }
        match (self.read_timeout, self.send_timeout) {
            (Some(r), Some(s)) => c.request_timeout = r.max(s),
            (Some(t), None) | (None, Some(t)) => c.request_timeout = t,
            (None, None) => {}
        }
        if let Some(t) = self.client_body_timeout {
            c.client_body_timeout = t;
        }
        if let Some(list) = &self.next_upstream {
            let mut statuses = Vec::new();
            for entry in list {
                match entry.as_str() {
                    "error" | "timeout" | "invalid_header" => {}
                    "off" => c.balancer.retries.max_attempts = 1,
                    other => match other.strip_prefix("http_").map(str::parse::<u16>) {
                        Some(Ok(code)) if StatusCode::from_u16(code).is_ok() => {
                            statuses.push(code);
                        }
                        _ => {
                            return Err(ConfigError::invalid(
                                key("next_upstream"),
                                format!(
                                    "{other:?}: herd knows \"error\", \"timeout\", \
                                     \"invalid_header\", \"off\" and \"http_NNN\" (non_idempotent \
                                     is not supported: only idempotent requests are retried \
                                     after being sent)"
                                ),
                            ));
                        }
                    },
                }
            }
            c.retry_statuses = statuses;
        }
        if let Some(tries) = self.next_upstream_tries {
            if tries == 0 {
                return Err(ConfigError::invalid(
                    key("next_upstream_tries"),
                    "must be at least 1 (the first try)",
                ));
            }
            if c.balancer.retries.max_attempts != 1 {
                c.balancer.retries.max_attempts = tries;
            }
        }
        if let Some(n) = self.retry_buffer_limit {
            c.retry_buffer_limit = n;
        }
        if let Some(check) = &self.health_check {
            if let Some(path) = &check.path
                && !path.starts_with('/')
            {
                return Err(ConfigError::invalid(
                    key("health_check.path"),
                    format!("{path:?} must start with `/`"),
                ));
            }
            let active = herd_lb_core::health::ActiveHealthConfig {
                interval: check.interval,
                timeout: check.timeout,
                rise: check.rise,
                fall: check.fall,
                ..herd_lb_core::health::ActiveHealthConfig::default()
            };
            c.active_health = Some(HttpActiveHealth {
                path: check.path.clone(),
                check: active,
            });
        }
        c.scheme = self.scheme;
        c.protocol = self.protocol;
        c.tls = self.tls.clone();
        if let Some(t) = self.upgrade_idle_timeout {
            c.upgrade_idle_timeout = t;
        }
        c.trusted_proxies = self.trusted_proxies.clone();
        c.preserve_host = self.preserve_host;
        c.forwarded_proto = self.forwarded_proto.clone();
        if let Some(window) = self.slow_start {
            c.balancer.slow_start = Some(herd_lb_core::SlowStart {
                window,
                ..herd_lb_core::SlowStart::default()
            });
        }
        Ok(c)
    }
}

/// The one value of a per-group setting that nginx lets each server give: the group's, or the
/// servers' when they all agree.
fn one_per_group<T: PartialEq + Copy + std::fmt::Debug>(
    group: &str,
    field: &str,
    own: Option<T>,
    servers: impl Iterator<Item = Option<T>>,
) -> Result<Option<T>, ConfigError> {
    let mut value = own;
    for (i, server) in servers.enumerate() {
        let Some(v) = server else { continue };
        match value {
            Some(seen) if seen != v => {
                return Err(ConfigError::invalid(
                    format!("upstreams.{group}.servers[{i}].{field}"),
                    format!(
                        "{v:?} differs from {seen:?} given before: herd keeps one {field} per \
                         group"
                    ),
                ));
            }
            _ => value = Some(v),
        }
    }
    Ok(value)
}

/// A route's prefix: absolute, no query or fragment, no whitespace.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    let reason = if !prefix.starts_with('/') {
        "must start with `/`"
    } else if prefix.contains(['?', '#']) {
        "must be a path (no `?` or `#`)"
    } else if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not hold spaces or control characters"
    } else {
        return Ok(());
    };
    Err(ConfigError::invalid(key, format!("{prefix:?} {reason}")))
}

impl FileConfig {
    /// Checks what parsing cannot: names that refer to nothing, duplicates, bad prefixes,
    /// addresses, rates, header names... (everything but what needs a runtime).
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "no listener: add [[listen]] with an address",
            ));
        }
        let mut addresses = BTreeSet::new();
        for (i, listen) in self.listen.iter().enumerate() {
            // Port 0 (any free port) may come twice.
            if listen.address.port() != 0 && !addresses.insert(listen.address) {
                return Err(ConfigError::invalid(
                    format!("listen[{i}].address"),
                    format!("{} is listed twice", listen.address),
                ));
            }
            if listen.tls.is_some() && listen.redirect_https.is_some() {
                return Err(ConfigError::invalid(
                    format!("listen[{i}].redirect_https"),
                    "a TLS listener redirecting to HTTPS would loop: redirect on the plain one",
                ));
            }
            if listen.redirect_https == Some(0) {
                return Err(ConfigError::invalid(
                    format!("listen[{i}].redirect_https"),
                    "0 is not a port",
                ));
            }
        }
        if self.upstreams.is_empty() {
            return Err(ConfigError::invalid(
                "upstreams",
                "no upstream group: add [upstreams.NAME] with servers",
            ));
        }
        for (name, group) in &self.upstreams {
            group.to_upstream_config(name)?;
        }
        for (name, zone) in &self.limit_req_zones {
            zone_quota(name, zone)?;
        }
        #[cfg(not(feature = "proxy-cache"))]
        if let Some(name) = self.proxy_cache_zones.keys().next() {
            return Err(ConfigError::invalid(
                format!("proxy_cache_zones.{name}"),
                "this gateway was built without the proxy-cache feature",
            ));
        }
        if let Some(zone) = &self.rate_limit.default_zone
            && !self.limit_req_zones.contains_key(zone)
        {
            return Err(ConfigError::invalid(
                "rate_limit.default_zone",
                format!("no [limit_req_zones.{zone}]"),
            ));
        }
        if self.routes.is_empty() && self.upstreams.len() > 1 {
            return Err(ConfigError::invalid(
                "routes",
                "none given, and there are several upstream groups: add [[routes]] with a prefix \
                 and an upstream",
            ));
        }
        let mut prefixes = BTreeMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            check_prefix(&format!("{key}.prefix"), &route.prefix)?;
            if let Some(first) = prefixes.insert(route.prefix.as_str(), i) {
                return Err(ConfigError::invalid(
                    format!("{key}.prefix"),
                    format!("{:?} is also the prefix of routes[{first}]", route.prefix),
                ));
            }
            match (&route.upstream, &route.return_) {
                (Some(group), None) => {
                    if !self.upstreams.contains_key(group) {
                        let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                        return Err(ConfigError::invalid(
                            format!("{key}.upstream"),
                            format!("no upstream group {group:?} (groups: {})", known.join(", ")),
                        ));
                    }
                }
                (None, Some(ret)) => {
                    fixed_response(&format!("{key}.return"), ret)?;
                }
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        key,
                        "both upstream and return: a route does one of them",
                    ));
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        key,
                        "neither upstream nor return: say where its requests go",
                    ));
                }
            }
            if let Some(zone) = &route.limit_req
                && !self.limit_req_zones.contains_key(zone)
            {
                return Err(ConfigError::invalid(
                    format!("{key}.limit_req"),
                    format!("no [limit_req_zones.{zone}]"),
                ));
            }
            if let Some(zone) = &route.proxy_cache {
                if !self.proxy_cache_zones.contains_key(zone) {
                    return Err(ConfigError::invalid(
                        format!("{key}.proxy_cache"),
                        format!("no [proxy_cache_zones.{zone}]"),
                    ));
                }
                if route.upstream.is_none() {
                    return Err(ConfigError::invalid(
                        format!("{key}.proxy_cache"),
                        "a route with return has nothing to cache",
                    ));
                }
            } else if !route.proxy_cache_paths.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.proxy_cache_paths"),
                    "without proxy_cache (a zone name) nothing is cached",
                ));
            }
            for path in &route.proxy_cache_paths {
                if !path.starts_with(&route.prefix) {
                    return Err(ConfigError::invalid(
                        format!("{key}.proxy_cache_paths"),
                        format!(
                            "{path:?} is not under the route's prefix {:?}",
                            route.prefix
                        ),
                    ));
                }
            }
            header_rules(&format!("{key}.request_headers"), &route.request_headers)?;
            header_rules(&format!("{key}.response_headers"), &route.response_headers)?;
        }
        // The rate limiter picks a zone by the longest matching limited prefix: a route without a
        // zone under one with a zone would get that zone.
        for (i, route) in self.routes.iter().enumerate() {
            if route.limit_req.is_some() {
                continue;
            }
            if let Some(outer) = self.routes.iter().find(|o| {
                o.limit_req.is_some()
                    && route.prefix.starts_with(&o.prefix)
                    && o.prefix.len() < route.prefix.len()
            }) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].limit_req"),
                    format!(
                        "route {:?} lies under route {:?}, whose zone {:?} it would share: name a \
                         zone for it too",
                        route.prefix,
                        outer.prefix,
                        outer.limit_req.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The group names in service order: index 0 is the group of the shortest proxying route
    /// (usually `/`; the one the gateway's `/admin` and `/lb-health` pages show), then the
    /// others by name.
    pub(crate) fn group_order(&self) -> Vec<&str> {
        let main = self
            .routes
            .iter()
            .filter_map(|r| r.upstream.as_deref().map(|g| (r.prefix.len(), g)))
            .min_by_key(|(len, _)| *len)
            .map(|(_, g)| g);
        let mut order: Vec<&str> = main.into_iter().collect();
        order.extend(
            self.upstreams
                .keys()
                .map(String::as_str)
                .filter(|name| Some(*name) != main),
        );
        order
    }

    /// The routes as the service takes them (`order` from [`group_order`](Self::group_order)).
    pub(crate) fn service_routes(&self, order: &[&str]) -> Result<Vec<Route>, ConfigError> {
        let index = |name: &str| order.iter().position(|g| *g == name);
        if self.routes.is_empty() {
            return Ok(vec![Route::catch_all(0)]);
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let action = match (&route.upstream, &route.return_) {
                (Some(group), _) => RouteAction::Proxy(index(group).ok_or_else(|| {
                    ConfigError::invalid(format!("{key}.upstream"), format!("no group {group:?}"))
                })?),
                (None, Some(ret)) => {
                    RouteAction::Respond(fixed_response(&format!("{key}.return"), ret)?)
                }
                (None, None) => return Err(ConfigError::invalid(key, "no upstream nor return")),
            };
            routes.push(Route {
                prefix: route.prefix.as_str().into(),
                action,
                max_body: route.client_max_body_size,
                request_headers: header_rules(
                    &format!("{key}.request_headers"),
                    &route.request_headers,
                )?,
                response_headers: header_rules(
                    &format!("{key}.response_headers"),
                    &route.response_headers,
                )?
                .map(Arc::new),
            });
        }
        Ok(routes)
    }

    /// The rate limits of the routes' zones; none when no route names one.
    pub(crate) fn rate_limits(&self) -> Result<Option<RateLimitConfig>, ConfigError> {
        let mut routes = Vec::new();
        for route in &self.routes {
            if let Some(name) = &route.limit_req {
                let zone = self.limit_req_zones.get(name).ok_or_else(|| {
                    ConfigError::invalid("routes.limit_req", format!("no zone {name:?}"))
                })?;
                routes.push(RouteLimit {
                    path_prefix: route.prefix.clone(),
                    quota: zone_quota(name, zone)?,
                });
            }
        }
        let default = match &self.rate_limit.default_zone {
            Some(name) => {
                let zone = self.limit_req_zones.get(name).ok_or_else(|| {
                    ConfigError::invalid("rate_limit.default_zone", format!("no zone {name:?}"))
                })?;
                Some(zone_quota(name, zone)?)
            }
            None => None,
        };
        if routes.is_empty() && default.is_none() {
            return Ok(None);
        }
        let section = &self.rate_limit;
        // The rate limiter's settings not named here keep their defaults.
        #[allow(clippy::needless_update)]
        Ok(Some(RateLimitConfig {
            default,
            routes,
            trusted_proxies: section.trusted_proxies.clone(),
            ipv4_prefix_len: section.ipv4_prefix_len,
            ipv6_prefix_len: section.ipv6_prefix_len,
            max_tracked_clients: section.max_tracked_clients,
            headers: section.headers,
            shared: section.shared.clone(),
            ..RateLimitConfig::default()
        }))
    }

    /// Each cached route's group index and cache settings.
    #[cfg(feature = "proxy-cache")]
    pub(crate) fn caches(
        &self,
        order: &[&str],
    ) -> Result<Vec<(usize, crate::cache::ProxyCacheConfig)>, ConfigError> {
        let mut caches = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let (Some(zone), Some(group)) = (&route.proxy_cache, &route.upstream) else {
                continue;
            };
            let key = format!("routes[{i}].proxy_cache");
            let http = self
                .proxy_cache_zones
                .get(zone)
                .ok_or_else(|| ConfigError::invalid(&key, format!("no zone {zone:?}")))?;
            let index = order
                .iter()
                .position(|g| g == group)
                .ok_or_else(|| ConfigError::invalid(&key, format!("no group {group:?}")))?;
            let mut paths = vec![route.prefix.clone()];
            paths.extend(
                route
                    .proxy_cache_paths
                    .iter()
                    .filter(|p| **p != route.prefix)
                    .cloned(),
            );
            caches.push((
                index,
                crate::cache::ProxyCacheConfig {
                    paths,
                    http: http.clone(),
                },
            ));
        }
        Ok(caches)
    }
}

fn zone_quota(name: &str, zone: &LimitZone) -> Result<QuotaConfig, ConfigError> {
    let key = |field: &str| format!("limit_req_zones.{name}.{field}");
    let (requests, per) =
        parse_rate(&zone.rate).map_err(|e| ConfigError::invalid(key("rate"), e))?;
    if !zone.nodelay {
        return Err(ConfigError::invalid(
            key("nodelay"),
            "false is not supported: past the burst herd answers 429 at once and never delays \
             a request",
        ));
    }
    Ok(QuotaConfig {
        requests,
        per,
        // nginx's burst is the excess over one request; herd's the requests let through at once.
        burst: Some(zone.burst.saturating_add(1)),
        name: Some(name.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sizes_take_nginx_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10k").unwrap(), 10 * 1024);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("1t").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn rates_take_nginx_units() {
        assert_eq!(parse_rate("100r/s").unwrap(), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("5r/m").unwrap(), (5, Duration::from_secs(60)));
        assert!(parse_rate("5/m").is_err());
        assert!(parse_rate("0r/s").is_err());
        assert!(parse_rate("5r/h").is_err());
    }
}
