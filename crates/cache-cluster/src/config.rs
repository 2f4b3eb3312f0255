//! Serde-deserializable configuration with documented defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How a [`Cache`](crate::Cache) behaves in front of its backend.
///
/// Every field has a default, so `CacheConfig::default()` or an empty TOML table is valid.
///
/// ```
/// let config: herd_cache_cluster::CacheConfig = serde_json::from_str(
///     r#"{ "namespace": "shop", "version": 3, "l1": { "max_entries": 5000, "max_ttl": "5s" } }"#,
/// ).unwrap();
/// assert_eq!(config.namespace, "shop");
/// assert_eq!(config.l1.unwrap().max_ttl, std::time::Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Prefix of every key, so several applications can share one cluster. Default `"herd"`.
    /// Must not contain `{`, `}` or `:` (they would change hash slots or key parsing).
    pub namespace: String,
    /// Schema version, part of every key: bump it when the cached types change shape and the
    /// old entries are simply never read again. Default `1`.
    pub version: u32,
    /// Optional in-process L1 in front of Redis. Default: enabled with [`L1Config::default`].
    pub l1: Option<L1Config>,
    /// How long a value past its TTL may still be served while one caller refreshes it in the
    /// background (stale-while-revalidate), and served instead of a loader error (fail-safe).
    /// Default `0s` (off).
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    /// Probabilistic early refresh (XFetch) factor `beta`: `0` turns it off, `1.0` is the
    /// paper's default, larger refreshes earlier. Default `1.0`.
    pub early_refresh_beta: f64,
    /// Cache a loader's `None` for this long (negative caching). Default: off.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    /// Cross-instance load lock, so N instances make one load of a missing key. Default: off.
    pub lock: Option<LockConfig>,
    /// Fail-open circuit around backend calls.
    pub circuit: CircuitConfig,
    /// Invalidate other instances' L1 entries over Redis pub/sub on set/delete/invalidate_tag.
    /// Default `true` (only matters when `l1` is enabled).
    pub invalidation: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            namespace: "herd".to_owned(),
            version: 1,
            l1: Some(L1Config::default()),
            stale_ttl: Duration::ZERO,
            early_refresh_beta: 1.0,
            negative_ttl: None,
            lock: None,
            circuit: CircuitConfig::default(),
            invalidation: true,
        }
    }
}

/// The in-process L1 (moka, size-bounded).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Config {
    /// Maximum number of entries. Default `10_000`.
    pub max_entries: u64,
    /// Upper bound of an entry's life in L1; it is also never longer than the value's remaining
    /// TTL in Redis. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_ttl: Duration::from_secs(30),
        }
    }
}

/// Cross-instance load lock: `SET lock token NX PX`, released by compare-and-delete.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockConfig {
    /// Lock lifetime, an upper bound for one load. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a caller that did not get the lock waits for the winner's value before it loads
    /// by itself. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Interval between checks for the winner's value. Default `20ms`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            wait: Duration::from_secs(2),
            poll_interval: Duration::from_millis(20),
        }
    }
}

/// Fail-open circuit: after `failure_threshold` consecutive backend failures, backend calls are
/// skipped for `open_for`, then one call probes the backend again.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit. Default `5`; `0` disables the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

/// Connection settings shared by the Redis Cluster and standalone Redis backends.
///
/// ```
/// let config: herd_cache_cluster::RedisConfig = serde_json::from_str(
///     r#"{ "urls": ["redis://127.0.0.1:7000"], "response_timeout": "100ms", "read_from_replicas": true }"#,
/// ).unwrap();
/// assert_eq!(config.retries, 2);
/// assert_eq!(config.failover_timeout, None); // the cluster's node timeout decides
/// ```
///
/// TLS (`tls-rustls` feature): `rediss://` URLs, with the CA and a client certificate in `tls`:
///
/// ```
/// let config: herd_cache_cluster::RedisConfig = serde_json::from_str(r#"{
///     "urls": ["rediss://10.0.0.1:6379", "rediss://10.0.0.2:6379"],
///     "tls": { "ca_file": "/etc/herd/redis-ca.crt" }
/// }"#).unwrap();
/// assert!(config.tls.client_cert.is_none());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes (cluster) or the one server (standalone), as `redis://[user:password@]host:port`.
    /// Default: empty (building a backend then fails with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig)).
    pub urls: Vec<String>,
    /// Timeout of one TCP connect + handshake. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one attempt of one command. Default `250ms`.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Bound of one whole operation including retries and redirects, for standalone Redis and
    /// the cluster's subscribe/connect steps. Cluster commands are bounded by
    /// `(retries + 1) * response_timeout` plus retry waits of 10-100 ms instead, because a
    /// whole-operation timer in the cluster client cost a quarter of the throughput in the
    /// `cache` benchmark. Default `750ms`.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Retries of a failed command (cluster: also after MOVED/ASK/connection errors). Default `2`.
    pub retries: u32,
    /// Route reads to a random replica of the slot's shard (cluster only). Default `false`.
    pub read_from_replicas: bool,
    /// How often the cluster topology is re-read (`CLUSTER SLOTS`) to follow failovers and
    /// resharding; errors trigger an immediate re-read as well. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub topology_refresh_interval: Duration,
    /// How long a cluster command keeps retrying errors that a failover explains (`MOVED`,
    /// `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `LOADING`, refused, reset or
    /// timed-out connections), counted from its first such error, before the call fails with
    /// [`Error::FailoverTimeout`](crate::Error::FailoverTimeout) (and fail-open takes over).
    /// Retries pause 25 ms, doubling up to 250 ms, and ask the topology watcher for a fresh
    /// slot map; other errors fail at once. `0s` turns the wait off (fail open at the first
    /// error, as the circuit then decides). Cluster only.
    ///
    /// Default (`None`): 1.5 times the cluster's `cluster-node-timeout` (read with `CONFIG GET`
    /// at connect; Redis' default of 15 s when the cluster does not say) plus 3 s, the longest
    /// a replica takes to replace a dead master with a second to spare: 6 s for a 2 s node
    /// timeout, 25.5 s for Redis' default.
    #[serde(with = "humantime_serde")]
    pub failover_timeout: Option<Duration>,
    /// Multiplexed cluster connections, used in turn (cluster only; each one talks to every
    /// node). One connection already pipelines every concurrent request; more can pay when
    /// many tasks wait on the same node on an otherwise idle machine (in the `cache`
    /// benchmark 4 were 1.22-1.45x one on the idle machine, 0.80-0.99x under load).
    /// Round robin rather than a connection pool: a pool (deadpool) hands a connection to one
    /// request at a time, so 4 carried 4 requests in flight where round robin carried all 64
    /// (3.44x the throughput in `cache_connections`, benches/README.md). Default `1`; 0 is
    /// refused.
    pub connections: usize,
    /// CA and client certificate for `rediss://` URLs (default: the system's roots, no client
    /// certificate). Files given with `redis://` URLs are refused, as TLS would not be used.
    pub tls: TlsConfig,
}

/// Certificates of TLS connections to Redis (`rediss://` URLs, Redis' `tls-port`); a Redis
/// Cluster's nodes are all reached with them. PEM files, read when the backend connects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificates the servers' certificates must chain to (Redis' `tls-ca-cert-file` on
    /// the client side). Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for servers with `tls-auth-clients yes`. Needs `client_key`.
    /// Default: none.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key. Default: none.
    pub client_key: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(250),
            operation_timeout: Duration::from_millis(750),
            retries: 2,
            read_from_replicas: false,
            topology_refresh_interval: Duration::from_secs(1),
            failover_timeout: None,
            connections: 1,
            tls: TlsConfig::default(),
        }
    }
}

impl RedisConfig {
    /// A configuration with the given URLs and every other field at its default.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}
