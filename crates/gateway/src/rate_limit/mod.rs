//! Per-client rate limiting for HTTP services (nginx `limit_req`), by GCRA.
//!
//! Clients are keyed by address prefix: an IPv6 client by its /64 (one subscriber's network,
//! which hands out 2^64 addresses for free), an IPv4 client by its whole address; both lengths
//! are configurable. Each client's state is one timestamp (the GCRA's theoretical arrival
//! time) in a table with a hard size bound: a new client first clears up to
//! [`SWEEP_PER_INSERT`] states that are back to a full burst (forgetting those loses nothing),
//! and when its shard is still full the oldest state is dropped, as nginx's `limit_req_zone`
//! drops its least recently used state when the zone is full. Every request costs O(1); no
//! request ever scans the table.
//!
//! Quotas may be named (nginx's `limit_req_zone ... zone=login_limit`); the name is the policy's
//! in the response fields and the `zone` label of the metrics. Responses on limited paths carry
//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10, see
//! [`RateLimitConfig::headers`]) whether admitted or answered 429 (with `Retry-After`).
//!
//! With [`RateLimitConfig::shared`], the gateways in front of the same instances share their
//! clients' states in a Redis Cluster, one round trip per decision, and fall back to these local
//! limits while it is unreachable (see [`SharedLimitConfig`]).

mod clock;
pub mod future;
mod headers;
mod shared;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herd_lb_core::Error;
use http::header::HeaderValue;
use http::{Request, Response};
use parking_lot::Mutex;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{TrustedProxies, client_ip};
use future::{Outcome, ResponseFuture};
use headers::{RateHeaders, ceil_secs};
use shared::SharedLimiter;
pub use shared::{SharedLimitConfig, SharedStatus};

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
    /// The zone's name (nginx `limit_req_zone ... zone=NAME`): the policy's name in the
    /// `RateLimit` fields, the `zone` label of the metrics, and part of the shared keys. Printable
    /// ASCII. Default: the route's path prefix (`default` for the default quota).
    #[serde(default)]
    pub name: Option<String>,
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
            name: None,
        }
    }

    /// `requests` per minute.
    pub fn per_minute(requests: u32) -> Self {
        Self {
            requests,
            per: Duration::from_secs(60),
            burst: None,
            name: None,
        }
    }

    /// Sets the burst.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Names the zone.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn gcra(&self, field: &'static str) -> Result<Gcra, Error> {
        let invalid = |reason: &str| Error::InvalidConfig {
            field,
            reason: reason.to_string(),
        };
        if self.requests == 0 {
            return Err(invalid("requests must be > 0"));
        }
        let burst = self.burst.unwrap_or(self.requests);
        if burst == 0 {
            return Err(invalid("burst must be > 0"));
        }
        let period = u64::try_from((self.per / self.requests).as_nanos()).unwrap_or(u64::MAX);
        if period == 0 {
            return Err(invalid("period must be > 0"));
        }
        Ok(Gcra {
            period,
            tolerance: period.saturating_mul(u64::from(burst - 1)),
        })
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

/// Rate limits keyed by client address prefix.
///
/// ```
/// # use herd_gateway::rate_limit::RateLimitConfig;
/// let c: RateLimitConfig = toml::from_str(r#"
///     default = { requests = 100, per = "1s", burst = 200 }
///     routes = [{ path_prefix = "/login", requests = 5, per = "1m" }]
///     trusted_proxies = ["10.0.0.0/8"]
///     ipv6_prefix_len = 56
/// "#).unwrap();
/// assert_eq!(c.routes[0].quota.requests, 5);
/// assert_eq!(c.ipv4_prefix_len, 32);
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
    /// IPv4 clients sharing this many leading address bits share a quota. Default 32 (each
    /// address on its own); 24 would key by /24. At most 32.
    pub ipv4_prefix_len: u8,
    /// IPv6 clients sharing this many leading address bits share a quota. Default 64: one
    /// site's or subscriber's network (RFC 6177), whose 2^64 addresses would otherwise each
    /// get a quota of their own. At most 128. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 client) counts as IPv4.
    pub ipv6_prefix_len: u8,
    /// Hard bound on the client states kept, over all quotas together (a client limited on
    /// two routes counts twice), rounded up to a multiple of 64 (the table's shards); about
    /// 80 bytes each. A new client first drops up to two states that are back to a full burst;
    /// when its shard is still full, the shard's oldest state is dropped even though that
    /// client was still paying off a burst (it starts again from a full one), counted in
    /// `herd_lb_rate_limit_evictions_total`. Set it above the number of clients active within
    /// one burst refill time. Default 100 000 (about 8 MB). At least 1.
    pub max_tracked_clients: usize,
    /// Put `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10) on the
    /// responses of limited paths, admitted or 429. Default true. Each costs one small allocation
    /// per response (the `RateLimit` value); false keeps the limiter allocation-free.
    pub headers: bool,
    /// Share the clients' states with the other gateways through a Redis Cluster (see
    /// [`SharedLimitConfig`]); `None` (the default): each gateway limits on its own.
    pub shared: Option<SharedLimitConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            default: Some(QuotaConfig::per_second(100)),
            routes: Vec::new(),
            trusted_proxies: TrustedProxies::none(),
            ipv4_prefix_len: 32,
            ipv6_prefix_len: 64,
            max_tracked_clients: 100_000,
            headers: true,
            shared: None,
        }
    }
}

/// States a new client looks at, from the oldest, before it is stored: each one back to a full
/// burst is dropped. Two per insert keep the table at the clients active within one refill
/// time while a client arrives at most once per request.
pub const SWEEP_PER_INSERT: usize = 2;

/// Shards of the state table (a power of two): one lock each.
const SHARDS: usize = 64;

/// The generic cell rate algorithm (governor's rule; nginx's `limit_req` leaky bucket is its
/// twin): a client's state is its theoretical arrival time `tat`; a request at `now` is allowed
/// when `now >= tat - tolerance`, and then moves `tat` to `max(tat, now) + period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gcra {
    /// Nanoseconds between two requests at the sustained rate.
    period: u64,
    /// `period * (burst - 1)`: how far ahead of `now` the arrival time may run.
    tolerance: u64,
}

impl Gcra {
    /// The client's new arrival time, or how many nanoseconds until it may send again.
    #[inline]
    fn check(self, tat: Option<u64>, now: u64) -> Result<u64, u64> {
        let tat = tat.unwrap_or(now);
        let earliest = tat.saturating_sub(self.tolerance);
        if now < earliest {
            Err(earliest - now)
        } else {
            Ok(tat.max(now).saturating_add(self.period))
        }
    }
}

/// One client of one quota: the masked address (IPv4 in the low 32 bits of `lo`) and the
/// quota's index, with the address family in the top bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientKey {
    hi: u64,
    lo: u64,
    quota: u32,
}

const IPV6_FLAG: u32 = 1 << 31;

/// A key with its hash, computed once per request (SipHash, randomly keyed: client addresses
/// are chosen by clients): the shard comes from its middle bits, the shard's map takes it as
/// it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hashed {
    hash: u64,
    key: ClientKey,
}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`Hashed`] key's hash through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes, just not as fast.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Shard {
    /// Arrival times, nanoseconds since the table's start.
    tats: HashMap<Hashed, u64, BuildHasherDefault<PassThrough>>,
    /// The keys of `tats`, each once, oldest first (sweeps move a busy one to the back).
    order: VecDeque<Hashed>,
}

impl Shard {
    /// Makes room for one more state: drops rested states from the front (at most
    /// [`SWEEP_PER_INSERT`] looked at), then the oldest one if the shard is still full.
    fn make_room(&mut self, now: u64, capacity: usize) {
        for _ in 0..SWEEP_PER_INSERT {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            match self.tats.get(&key) {
                // Back to a full burst: the same as no state at all.
                Some(&tat) if tat <= now => {
                    self.tats.remove(&key);
                }
                Some(_) => self.order.push_back(key),
                None => {}
            }
        }
        while self.tats.len() >= capacity {
            let Some(key) = self.order.pop_front() else {
                break;
            };
            if self.tats.remove(&key).is_some() {
                metrics::counter!(crate::metrics::RATE_LIMIT_EVICTIONS_TOTAL).increment(1);
            }
        }
    }
}

/// A shard on its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Mutex<Shard>);

/// Every client state of every quota, bounded.
struct Table {
    shards: Box<[Padded]>,
    per_shard: usize,
    hasher: RandomState,
    /// Raw clock ticks at construction: arrival times are nanoseconds since then.
    start: u64,
}

impl Table {
    fn new(max_tracked: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            per_shard: max_tracked.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            start: clock::raw(),
        }
    }

    /// Applies `gcra` to `key`'s state: `Ok(nanoseconds until the client is back to a full
    /// burst)`, or `Err(nanoseconds to wait)` when over quota.
    #[inline]
    fn check(&self, gcra: Gcra, key: ClientKey) -> Result<u64, u64> {
        let hashed = Hashed {
            // Every bit of the key goes in: a fold first would let clients pick collisions.
            hash: self.hasher.hash_one((key.hi, key.lo, key.quota)),
            key,
        };
        // Middle bits: the map uses the low bits for the bucket and the top seven as tags.
        let index = (hashed.hash >> 32) as usize % SHARDS;
        let Some(shard) = self.shards.get(index) else {
            return Ok(0);
        };
        let now = clock::ns_between(self.start, clock::raw());
        let mut shard = shard.0.lock();
        if let Some(tat) = shard.tats.get_mut(&hashed) {
            *tat = gcra.check(Some(*tat), now)?;
            return Ok(tat.saturating_sub(now));
        }
        // A new (or forgotten) client is always within its quota: burst >= 1.
        let tat = gcra.check(None, now)?;
        shard.make_room(now, self.per_shard);
        shard.tats.insert(hashed, tat);
        shard.order.push_back(hashed);
        Ok(tat.saturating_sub(now))
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().tats.len()).sum()
    }
}

/// One quota with its name and its response fields.
struct Zone {
    gcra: Gcra,
    /// The quota index its client states are kept under: that of the first zone of its name
    /// (routes naming one zone share it, as nginx's locations share a `limit_req_zone`).
    state: u32,
    /// The name: the `zone` label of the metrics, part of the shared keys.
    name: Arc<str>,
    /// `name` as a structured-field string.
    sf_name: Box<str>,
    /// The `RateLimit-Policy` value; `None`: no fields on responses.
    policy: Option<HeaderValue>,
}

impl Zone {
    fn new(
        quota: &QuotaConfig,
        implicit_name: &str,
        field: &'static str,
        headers: bool,
    ) -> Result<Self, Error> {
        let gcra = quota.gcra(field)?;
        let (name, sf_name) = match &quota.name {
            Some(name) => match headers::sf_string(name) {
                Some(sf) if !name.is_empty() => (name.clone(), sf),
                _ => {
                    return Err(Error::InvalidConfig {
                        field,
                        reason: format!("zone name {name:?} must be printable ASCII, not empty"),
                    });
                }
            },
            None => {
                let sf = headers::sf_string(implicit_name).unwrap_or_else(|| "\"route\"".into());
                (implicit_name.to_owned(), sf)
            }
        };
        let burst = quota.burst.unwrap_or(quota.requests);
        let policy = if headers {
            headers::policy(&sf_name, burst, gcra.period)
        } else {
            None
        };
        Ok(Self {
            gcra,
            state: 0,
            name: name.into(),
            sf_name: sf_name.into(),
            policy,
        })
    }

    /// The response fields, when on.
    #[inline]
    fn fields(&self, remaining: u64, reset_ns: u64) -> Option<RateHeaders> {
        let policy = self.policy.as_ref()?;
        RateHeaders::new(policy, &self.sf_name, remaining, ceil_secs(reset_ns))
    }

    /// What to answer: `decision` is `Ok(nanoseconds until back to a full burst)` or
    /// `Err(nanoseconds to wait)`.
    #[inline]
    fn outcome(&self, decision: Result<u64, u64>) -> Outcome {
        match decision {
            Ok(ahead) => {
                let fields = match self.policy {
                    None => None,
                    Some(_) => {
                        // Requests still allowed now: those whose arrival time stays within
                        // the tolerance (`period` > 0: checked when the quota was built).
                        let room = self
                            .gcra
                            .tolerance
                            .saturating_add(self.gcra.period)
                            .saturating_sub(ahead);
                        let remaining = room.checked_div(self.gcra.period).unwrap_or(0);
                        self.fields(remaining, ahead)
                    }
                };
                Outcome::Admitted(fields)
            }
            Err(wait) => {
                metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL, "zone" => Arc::clone(&self.name))
                    .increment(1);
                Outcome::Limited {
                    retry_after: ceil_secs(wait).max(1),
                    headers: self.fields(0, wait.saturating_add(self.gcra.tolerance)),
                }
            }
        }
    }
}

struct Limits {
    default: Option<Zone>,
    /// Path prefix, quota; a quota's index in the table is its position here plus one.
    routes: Vec<(String, Zone)>,
    trusted: TrustedProxies,
    ipv4_prefix_len: u8,
    ipv6_prefix_len: u8,
    ipv4_mask: u32,
    ipv6_mask: u128,
    table: Table,
    shared: Option<Arc<SharedLimiter>>,
}

impl Limits {
    /// The quota for `path` and its index (0 for the default).
    fn quota_for(&self, path: &str) -> Option<(u32, &Zone)> {
        let route = self
            .routes
            .iter()
            .enumerate()
            .filter(|(_, (prefix, _))| path.starts_with(prefix.as_str()))
            .max_by_key(|(_, (prefix, _))| prefix.len());
        match route {
            Some((_, (_, zone))) => Some((zone.state, zone)),
            None => self.default.as_ref().map(|zone| (zone.state, zone)),
        }
    }

    /// The zone of quota `index`.
    fn zone(&self, index: u32) -> Option<&Zone> {
        match index.checked_sub(1) {
            None => self.default.as_ref(),
            Some(route) => self.routes.get(route as usize).map(|(_, zone)| zone),
        }
    }

    /// The key of `ip` for quota `quota`: the address cut to its configured prefix.
    #[inline]
    fn key(&self, quota: u32, ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey {
                hi: 0,
                lo: u64::from(u32::from(v4) & self.ipv4_mask),
                quota,
            },
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & self.ipv6_mask;
                ClientKey {
                    hi: (bits >> 64) as u64,
                    lo: bits as u64,
                    quota: quota | IPV6_FLAG,
                }
            }
        }
    }

    /// The shared key of `key` in `zone`: `<prefix>{<zone>|<client>}`, the client as its
    /// network (`198.51.100.7`, `2001:db8:1:2::/64`).
    fn shared_key(&self, prefix: &str, zone: &Zone, key: ClientKey) -> String {
        if key.quota & IPV6_FLAG == 0 {
            let addr = Ipv4Addr::from(key.lo as u32);
            match self.ipv4_prefix_len {
                32 => format!("{prefix}{{{}|{addr}}}", zone.name),
                len => format!("{prefix}{{{}|{addr}/{len}}}", zone.name),
            }
        } else {
            let addr = Ipv6Addr::from((u128::from(key.hi) << 64) | u128::from(key.lo));
            let len = self.ipv6_prefix_len;
            format!("{prefix}{{{}|{addr}/{len}}}", zone.name)
        }
    }

    /// Decides with the local table.
    #[inline]
    fn decide_locally(&self, zone: &Zone, key: ClientKey) -> Outcome {
        zone.outcome(self.table.check(zone.gcra, key))
    }

    /// Decides in the cluster; locally when it fails or is too slow.
    async fn decide_shared(
        self: Arc<Self>,
        shared: Arc<SharedLimiter>,
        conn: redis::cluster_async::ClusterConnection,
        generation: u64,
        key: ClientKey,
    ) -> Outcome {
        let quota = key.quota & !IPV6_FLAG;
        let Some(zone) = self.zone(quota) else {
            return Outcome::Admitted(None);
        };
        let redis_key = self.shared_key(shared.key_prefix(), zone, key);
        let verdict = Arc::clone(&shared)
            .decide(
                conn,
                generation,
                redis_key,
                zone.gcra.period,
                zone.gcra.tolerance,
            )
            .await;
        match verdict {
            Some(v) if v.admitted => zone.outcome(Ok(v.ahead_ns)),
            Some(v) => zone.outcome(Err(v.wait_ns)),
            None => {
                self.count_fallback(&shared, zone);
                self.decide_locally(zone, key)
            }
        }
    }

    fn count_fallback(&self, shared: &SharedLimiter, zone: &Zone) {
        shared.count_fallback();
        metrics::counter!(crate::metrics::RATE_LIMIT_FALLBACKS_TOTAL, "zone" => Arc::clone(&zone.name))
            .increment(1);
    }
}

/// The top `len` bits set.
fn prefix_mask_v4(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// The top `len` bits set.
fn prefix_mask_v6(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
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
            .field("tracked_clients", &self.limits.table.len())
            .field("shared", &self.limits.shared)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Builds the limiters; zero rates or bursts, prefix lengths past the address, a zero
    /// client bound, zone names that are not printable ASCII or are used twice, and a shared
    /// section without nodes or with unparsable ones are refused with the field named. With
    /// [`shared`](RateLimitConfig::shared), the connection is started in the background when
    /// called inside a tokio runtime (else on the first request); decisions are local until it
    /// is up.
    pub fn new(config: &RateLimitConfig) -> Result<Self, Error> {
        let default = config
            .default
            .as_ref()
            .map(|q| Zone::new(q, "default", "rate_limit.default", config.headers))
            .transpose()?;
        let mut routes = Vec::new();
        for route in &config.routes {
            routes.push((
                route.path_prefix.clone(),
                Zone::new(
                    &route.quota,
                    &route.path_prefix,
                    "rate_limit.routes",
                    config.headers,
                )?,
            ));
        }
        // A quota's index shares its `u32` with the address-family flag.
        if routes.len() >= (IPV6_FLAG - 1) as usize {
            return Err(Error::InvalidConfig {
                field: "rate_limit.routes",
                reason: "too many routes".into(),
            });
        }
        // Routes naming one zone share its states (nginx's locations sharing a
        // `limit_req_zone`), so one name must mean one quota.
        let mut default = default;
        let mut seen: HashMap<Arc<str>, (u32, Gcra)> = HashMap::new();
        let zones = default
            .iter_mut()
            .map(|z| (0, z))
            .chain(routes.iter_mut().zip(1_u32..).map(|((_, z), i)| (i, z)));
        for (index, zone) in zones {
            match seen.get(&zone.name) {
                Some(&(state, gcra)) if gcra == zone.gcra => zone.state = state,
                Some(_) => {
                    return Err(Error::InvalidConfig {
                        field: "rate_limit.routes",
                        reason: format!("zone {:?} is given two different quotas", zone.name),
                    });
                }
                None => {
                    zone.state = index;
                    seen.insert(Arc::clone(&zone.name), (index, zone.gcra));
                }
            }
        }
        if config.ipv4_prefix_len > 32 {
            return Err(Error::InvalidConfig {
                field: "rate_limit.ipv4_prefix_len",
                reason: format!(
                    "{} is longer than an IPv4 address (32)",
                    config.ipv4_prefix_len
                ),
            });
        }
        if config.ipv6_prefix_len > 128 {
            return Err(Error::InvalidConfig {
                field: "rate_limit.ipv6_prefix_len",
                reason: format!(
                    "{} is longer than an IPv6 address (128)",
                    config.ipv6_prefix_len
                ),
            });
        }
        if config.max_tracked_clients == 0 {
            return Err(Error::InvalidConfig {
                field: "rate_limit.max_tracked_clients",
                reason: "must be at least 1".into(),
            });
        }
        let shared = config.shared.as_ref().map(SharedLimiter::new).transpose()?;
        Ok(Self {
            limits: Arc::new(Limits {
                default,
                routes,
                trusted: config.trusted_proxies.clone(),
                ipv4_prefix_len: config.ipv4_prefix_len,
                ipv6_prefix_len: config.ipv6_prefix_len,
                ipv4_mask: prefix_mask_v4(config.ipv4_prefix_len),
                ipv6_mask: prefix_mask_v6(config.ipv6_prefix_len),
                table: Table::new(config.max_tracked_clients),
                shared,
            }),
        })
    }

    /// Client states currently kept over all quotas (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        self.limits.table.len()
    }

    /// Where the shared limits decide now; `None` without [`shared`](RateLimitConfig::shared).
    pub fn shared_status(&self) -> Option<SharedStatus> {
        self.limits.shared.as_ref().map(|s| s.status())
    }

    /// Decisions taken locally because the shared limits' cluster was not reachable (or not
    /// yet connected), since the layer was built: what `herd_lb_rate_limit_fallbacks_total`
    /// counts. 0 without shared limits.
    pub fn fallback_decisions(&self) -> u64 {
        self.limits.shared.as_ref().map_or(0, |s| s.fallbacks())
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
    define_inner_service_accessors!();

    /// The layer this service came from (its limits, states and counters).
    pub fn layer(&self) -> RateLimitLayer {
        RateLimitLayer {
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The inner service is cloned only for requests decided by the shared limits (tower's way to
/// call it after an asynchronous step); local decisions call it in place.
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let limits = &self.limits;
        let Some((quota, zone)) = limits.quota_for(req.uri().path()) else {
            return ResponseFuture::admitted(self.inner.call(req), None);
        };
        // Without a known peer all such requests share one bucket (fail closed, not open).
        let ip = client_ip(&req, &limits.trusted).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let key = limits.key(quota, ip);
        if let Some(shared) = &limits.shared {
            if let Some((conn, generation)) = shared.connection() {
                let decision =
                    Arc::clone(limits).decide_shared(Arc::clone(shared), conn, generation, key);
                // The one that was made ready is the one called; the clone stays for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture::deciding(
                    Box::pin(decision),
                    Box::new(move || inner.call(req)),
                );
            }
            limits.count_fallback(shared, zone);
        }
        match limits.decide_locally(zone, key) {
            Outcome::Admitted(fields) => ResponseFuture::admitted(self.inner.call(req), fields),
            Outcome::Limited {
                retry_after,
                headers,
            } => {
                tracing::debug!(client = %ip, path = req.uri().path(), zone = &*zone.name, retry_after, "rate limited");
                ResponseFuture::limited(retry_after, headers)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ClientAddr;
    use http::StatusCode;
    use http::header::RETRY_AFTER;
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
    > + Clone
    + Send
    + 'static {
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

    async fn status(
        svc: &RateLimit<
            impl Service<
                Request<()>,
                Response = Response<String>,
                Error = Infallible,
                Future: Send + 'static,
            > + Clone
            + Send
            + 'static,
        >,
        ip: &str,
        path: &str,
    ) -> StatusCode {
        let ip: IpAddr = ip.parse().unwrap();
        svc.clone().oneshot(req(ip, path)).await.unwrap().status()
    }

    #[tokio::test]
    async fn memory_stays_bounded_under_many_clients() {
        // 1000/s: a client's state is back to a full burst 1 ms after its request.
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
        assert!(
            layer.tracked_clients() <= 1_024,
            "{}",
            layer.tracked_clients()
        );
    }

    #[tokio::test]
    async fn the_bound_is_hard_even_when_no_client_has_rested() {
        // One request a minute: no state rests during the test, so only the hard bound (and
        // not the sweep of rested states) keeps memory down. Before, every state was kept
        // and every 256th request scanned all of them.
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_minute(1)),
            max_tracked_clients: 1_000,
            ..RateLimitConfig::default()
        };
        let layer = RateLimitLayer::new(&config).unwrap();
        let svc = layer.layer(ok_service());
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i));
            let _ = svc.clone().oneshot(req(ip, "/")).await.unwrap();
            assert!(layer.tracked_clients() <= 1_024, "after {i}");
        }
        // A shard holds its 16 most recent clients: the last one is still limited.
        assert_eq!(
            status(&svc, "10.0.78.31", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[tokio::test]
    async fn a_limited_client_stays_limited_while_others_come_and_go() {
        // Rested states are swept, busy ones kept: the bound is far away, so the limited
        // client's state survives thousands of new clients.
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_second(1_000)),
            routes: vec![RouteLimit {
                path_prefix: "/login".into(),
                quota: QuotaConfig::per_minute(2),
            }],
            max_tracked_clients: 10_000,
            ..RateLimitConfig::default()
        };
        let layer = RateLimitLayer::new(&config).unwrap();
        let svc = layer.layer(ok_service());
        for _ in 0..2 {
            assert_eq!(status(&svc, "192.0.2.7", "/login").await, StatusCode::OK);
        }
        for i in 0..5_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i));
            let _ = svc.clone().oneshot(req(ip, "/")).await.unwrap();
        }
        assert!(layer.tracked_clients() < 5_000, "rested states are swept");
        assert_eq!(
            status(&svc, "192.0.2.7", "/login").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[tokio::test]
    async fn ipv6_clients_are_keyed_by_their_64_and_ipv4_by_address() {
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_minute(1)),
            ..RateLimitConfig::default()
        };
        let svc = RateLimitLayer::new(&config).unwrap().layer(ok_service());
        assert_eq!(status(&svc, "2001:db8:1:2::1", "/").await, StatusCode::OK);
        // Another address of the same /64 shares the quota...
        assert_eq!(
            status(&svc, "2001:db8:1:2:ffff:ffff:ffff:fffe", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // ...the next /64 does not.
        assert_eq!(status(&svc, "2001:db8:1:3::1", "/").await, StatusCode::OK);
        // IPv4 by whole address; the IPv4-mapped form is the same client.
        assert_eq!(status(&svc, "198.51.100.1", "/").await, StatusCode::OK);
        assert_eq!(status(&svc, "198.51.100.2", "/").await, StatusCode::OK);
        assert_eq!(
            status(&svc, "::ffff:198.51.100.1", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // An IPv6 address whose bits match an IPv4 key is another client.
        assert_eq!(status(&svc, "::c633:6401", "/").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn prefix_lengths_are_configurable() {
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_minute(1)),
            ipv4_prefix_len: 24,
            ipv6_prefix_len: 128,
            ..RateLimitConfig::default()
        };
        let svc = RateLimitLayer::new(&config).unwrap().layer(ok_service());
        assert_eq!(status(&svc, "203.0.113.1", "/").await, StatusCode::OK);
        assert_eq!(
            status(&svc, "203.0.113.200", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(&svc, "203.0.114.1", "/").await, StatusCode::OK);
        assert_eq!(status(&svc, "2001:db8::1", "/").await, StatusCode::OK);
        assert_eq!(status(&svc, "2001:db8::2", "/").await, StatusCode::OK);

        // Zero-length prefixes: one bucket per family.
        let config = RateLimitConfig {
            default: Some(QuotaConfig::per_minute(1)),
            ipv4_prefix_len: 0,
            ipv6_prefix_len: 0,
            ..RateLimitConfig::default()
        };
        let svc = RateLimitLayer::new(&config).unwrap().layer(ok_service());
        assert_eq!(status(&svc, "203.0.113.1", "/").await, StatusCode::OK);
        assert_eq!(
            status(&svc, "8.8.8.8", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(&svc, "2001:db8::1", "/").await, StatusCode::OK);
        assert_eq!(
            status(&svc, "fe80::1", "/").await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn masks_and_gcra_arithmetic() {
        assert_eq!(prefix_mask_v4(0), 0);
        assert_eq!(prefix_mask_v4(24), 0xFFFF_FF00);
        assert_eq!(prefix_mask_v4(32), u32::MAX);
        assert_eq!(prefix_mask_v6(0), 0);
        assert_eq!(prefix_mask_v6(64), u128::MAX << 64);
        assert_eq!(prefix_mask_v6(128), u128::MAX);

        // 10/s, burst 3: three at once, then one every 100 ms.
        let gcra = QuotaConfig::per_second(10).with_burst(3).gcra("t").unwrap();
        let ms = 1_000_000;
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra.check(tat, 0).unwrap());
        }
        assert_eq!(gcra.check(tat, 0), Err(100 * ms));
        assert_eq!(gcra.check(tat, 99 * ms), Err(ms));
        assert!(gcra.check(tat, 100 * ms).is_ok());
        // Far-future arrival times and huge periods saturate instead of overflowing.
        let slow = QuotaConfig {
            requests: 1,
            per: Duration::MAX,
            burst: Some(u32::MAX),
            name: None,
        }
        .gcra("t")
        .unwrap();
        assert_eq!(slow.period, u64::MAX);
        assert_eq!(slow.check(Some(u64::MAX), u64::MAX), Ok(u64::MAX));
        assert!(slow.check(None, 5).is_ok());
    }

    #[test]
    fn bad_prefix_lengths_and_bounds_are_refused() {
        for (config, field) in [
            (
                RateLimitConfig {
                    ipv4_prefix_len: 33,
                    ..RateLimitConfig::default()
                },
                "ipv4_prefix_len",
            ),
            (
                RateLimitConfig {
                    ipv6_prefix_len: 129,
                    ..RateLimitConfig::default()
                },
                "ipv6_prefix_len",
            ),
            (
                RateLimitConfig {
                    max_tracked_clients: 0,
                    ..RateLimitConfig::default()
                },
                "max_tracked_clients",
            ),
        ] {
            let err = RateLimitLayer::new(&config).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let config: RateLimitConfig = toml::from_str("").unwrap();
        assert_eq!((config.ipv4_prefix_len, config.ipv6_prefix_len), (32, 64));
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

    fn named_login(requests: u32) -> RateLimitConfig {
        RateLimitConfig {
            default: None,
            routes: vec![
                RouteLimit {
                    path_prefix: "/login".into(),
                    quota: QuotaConfig::per_minute(requests).with_name("login_limit"),
                },
                // nginx's locations sharing one `limit_req_zone`.
                RouteLimit {
                    path_prefix: "/signin".into(),
                    quota: QuotaConfig::per_minute(requests).with_name("login_limit"),
                },
            ],
            ..RateLimitConfig::default()
        }
    }

    #[tokio::test]
    async fn responses_carry_the_draft_fields_admitted_or_refused() {
        let svc = RateLimitLayer::new(&named_login(3))
            .unwrap()
            .layer(ok_service());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // 3 a minute: one every 20 s, a full burst refills in 60 s. Both routes name one zone,
        // so they draw on one state.
        for (n, path) in [(1, "/login"), (2, "/signin"), (3, "/login")] {
            let res = svc.clone().oneshot(req(ip, path)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers()["ratelimit-policy"],
                "\"login_limit\";q=3;w=60"
            );
            assert_eq!(
                res.headers()["ratelimit"],
                format!("\"login_limit\";r={};t={}", 3 - n, 20 * n).as_str()
            );
        }
        let res = svc.clone().oneshot(req(ip, "/signin")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[RETRY_AFTER], "20");
        assert_eq!(res.headers()["ratelimit"], "\"login_limit\";r=0;t=60");
        assert_eq!(
            res.headers()["ratelimit-policy"],
            "\"login_limit\";q=3;w=60"
        );
        // Unlimited paths get no fields; with `headers = false` no path does.
        let res = svc.clone().oneshot(req(ip, "/other")).await.unwrap();
        assert!(res.headers().get("ratelimit").is_none());
        let quiet = RateLimitLayer::new(&RateLimitConfig {
            headers: false,
            ..named_login(3)
        })
        .unwrap()
        .layer(ok_service());
        let res = quiet.clone().oneshot(req(ip, "/login")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit").is_none());
        assert!(res.headers().get("ratelimit-policy").is_none());
    }

    #[test]
    fn zone_names_are_checked() {
        let mut config = named_login(3);
        config.routes[1].quota = QuotaConfig::per_minute(4).with_name("login_limit");
        let err = RateLimitLayer::new(&config).unwrap_err();
        assert!(err.to_string().contains("two different quotas"), "{err}");
        let mut config = named_login(3);
        config.routes[0].quota.name = Some("caf\u{e9}".into());
        let err = RateLimitLayer::new(&config).unwrap_err();
        assert!(err.to_string().contains("rate_limit.routes"), "{err}");
        // Unnamed quotas are named by their path prefix, or `default`.
        let config: RateLimitConfig = toml::from_str(
            r#"routes = [{ path_prefix = "/api", requests = 5 }, { path_prefix = "/login", name = "login_limit", requests = 1 }]"#,
        )
        .unwrap();
        let layer = RateLimitLayer::new(&config).unwrap();
        let names: Vec<&str> = layer
            .limits
            .default
            .iter()
            .chain(layer.limits.routes.iter().map(|(_, z)| z))
            .map(|z| &*z.name)
            .collect();
        assert_eq!(names, ["default", "/api", "login_limit"]);
    }

    #[test]
    fn shared_sections_are_checked() {
        for (shared, field) in [
            (
                SharedLimitConfig::new(Vec::<String>::new()),
                "rate_limit.shared.nodes",
            ),
            (
                SharedLimitConfig::new(["not a url"]),
                "rate_limit.shared.nodes",
            ),
            (
                SharedLimitConfig {
                    timeout: Duration::ZERO,
                    ..SharedLimitConfig::new(["redis://127.0.0.1:1"])
                },
                "rate_limit.shared.timeout",
            ),
        ] {
            let config = RateLimitConfig {
                shared: Some(shared),
                ..RateLimitConfig::default()
            };
            let err = RateLimitLayer::new(&config).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        // Outside a runtime nothing is started; the layer is still built.
        let config = RateLimitConfig {
            shared: Some(SharedLimitConfig::new(["redis://127.0.0.1:1"])),
            ..RateLimitConfig::default()
        };
        let layer = RateLimitLayer::new(&config).unwrap();
        assert_eq!(layer.shared_status(), Some(SharedStatus::Connecting));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_leaves_the_decisions_to_the_local_limits() {
        // A loopback port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = RateLimitConfig {
            shared: Some(SharedLimitConfig::new([format!(
                "redis://127.0.0.1:{port}"
            )])),
            ..named_login(3)
        };
        let layer = RateLimitLayer::new(&config).unwrap();
        let svc = layer.layer(ok_service());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while layer.shared_status() != Some(SharedStatus::Local) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                layer.shared_status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(status(&svc, "192.0.2.1", "/login").await);
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        assert_eq!(layer.fallback_decisions(), 4);
    }

    #[test]
    fn shared_keys_name_the_zone_and_the_network() {
        let layer = RateLimitLayer::new(&RateLimitConfig {
            ipv4_prefix_len: 24,
            ..named_login(3)
        })
        .unwrap();
        let limits = &layer.limits;
        let (quota, zone) = limits.quota_for("/signin").unwrap();
        let v4 = limits.key(quota, "198.51.100.77".parse().unwrap());
        assert_eq!(
            limits.shared_key("p:", zone, v4),
            "p:{login_limit|198.51.100.0/24}"
        );
        let v6 = limits.key(quota, "2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(
            limits.shared_key("p:", zone, v6),
            "p:{login_limit|2001:db8:1:2::/64}"
        );
    }
}
