//! `RedisStore`: sessions in Redis Cluster or a standalone Redis, one hash per session.
//!
//! Layout: key `<prefix><hex sha256(id)>` is a hash with field `v` (version) and `d` (the
//! record as JSON); the key's TTL is the session's expiry. Every write is a Lua script on that
//! one key, so it is atomic and lands on one cluster slot:
//!
//! * create: write version 1 only if the key does not exist (NX);
//! * save: write version `v + 1` only if the stored version is still `v`; otherwise return
//!   what is stored (for the merge) or that the key is gone (never recreate it);
//! * touch: `PEXPIRE`, which does nothing on a missing key.
//!
//! Failovers: an operation whose error a Redis Cluster failover explains (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `LOADING`, a refused, reset or timed-out
//! connection) is retried with a short backoff until it succeeds or
//! [`failover_timeout`](RedisStoreConfig::failover_timeout) has passed since its first such
//! error; the `redis` crate's cluster client re-reads the slot map on the redirects and
//! connection errors each retry meets, and, because it does not after timeouts (a master that
//! hangs or is cut off), the store also builds a new connection with a fresh slot map at most
//! once a second while operations wait (see [`Rebuild`]). Any other error (`WRONGTYPE`, a
//! script error, a reply of the wrong shape) fails at once.
//!
//! Retried writes are safe because every write is idempotent or carries a write token:
//!
//! * A create or save may have been applied even though its reply was lost (the master died
//!   after the write, or the reply timed out). Retried, a plain check-and-set would then find
//!   its own write: `create` would see the key taken (and the layer would mint another id),
//!   `save` would see version `v + 1` and report a conflict, whose merge under
//!   [`ConflictRule::LastWriteWins`](crate::ConflictRule) re-applies this request's fields on
//!   top of whatever a later request saved meanwhile: a lost update. So each create/save call
//!   takes a unique token (the same on every retry), and the scripts keep the tokens of the
//!   last [`WRITE_LOG_ENTRIES`] writes in field `w`. A create or save whose token is in the
//!   log has already been applied and answers as if it had just been (created / `Saved`),
//!   whatever happened to the session since: no second write, no false conflict, no merge.
//!   Only if more than [`WRITE_LOG_ENTRIES`] saves landed between the lost reply and the
//!   retry does the token drop out and the retry fall back to an ordinary conflict.
//! * An attempt that timed out may still reach Redis after its retry did. The version check
//!   makes at most one of them write, and the token makes the other one see that it did.
//! * A write acknowledged by a master that dies before replicating it is lost with the
//!   master (Redis replicates asynchronously); no retry is involved, and the layer's next
//!   save simply conflicts or finds the session as the replica had it.
//! * Touch (`PEXPIRE`) and delete are idempotent; loads and pings read only.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind, Value,
};
use serde::Deserialize;
use tokio::sync::watch;

use super::{SaveOutcome, SessionStore, Stored};
use crate::error::{StoreError, StoreOperation};
use crate::id::StoreKey;
use crate::metrics;
use crate::record::{SessionRecord, duration_ms};

const STORE: &str = "redis";

/// How many write tokens a session keeps (field `w`), newest last; see the module docs.
const WRITE_LOG_ENTRIES: usize = 8;

/// Length of a write token: 32 hex digits (each log entry is a space and a token, so the log
/// is cut to `WRITE_LOG_ENTRIES * 33` = 264 characters in `SAVE`).
const WRITE_TOKEN_LEN: usize = 32;

/// The log length `SAVE` cuts to (the literal in the script; a test checks the script uses it).
const WRITE_LOG_CHARS: usize = WRITE_LOG_ENTRIES * (1 + WRITE_TOKEN_LEN);
const _: () = assert!(WRITE_LOG_CHARS == 264);

/// `ARGV`: record JSON, TTL in ms, write token. Answers 1 when created, also when this token
/// created it before (a retry), 0 when the key exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local w = redis.call('HGET', KEYS[1], 'w')
  if w and string.find(w, ARGV[3], 1, true) then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'v', '1', 'd', ARGV[1], 'w', ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const LOAD: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'd')
if not r[1] or not r[2] then return false end
return {r[1], r[2], redis.call('PTTL', KEYS[1])}
";

/// `ARGV`: expected version, new version, record JSON, TTL in ms, write token. Answers `{2}`
/// saved, `{3}` saved before by this token (a retry), `{0}` gone, `{1, v, d, pttl}` conflict.
const SAVE: &str = r"
local s = redis.call('HMGET', KEYS[1], 'v', 'w')
local v = s[1]
if not v then return {0} end
if v ~= ARGV[1] then
  if s[2] and string.find(s[2], ARGV[5], 1, true) then return {3} end
  return {1, v, redis.call('HGET', KEYS[1], 'd'), redis.call('PTTL', KEYS[1])}
end
local w = string.sub((s[2] or '') .. ' ' .. ARGV[5], -264)
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3], 'w', w)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {2}
";

/// Redis' default `cluster-node-timeout`, assumed when the cluster does not say its own.
const DEFAULT_CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// The default failover wait for a cluster with this `cluster-node-timeout`: how long Redis
/// takes to replace a dead master, with a second to spare. A master is suspected (`PFAIL`) by
/// a node whose ping went unanswered for the node timeout (and pings go out at least every half
/// node timeout), and failed (`FAIL`) once a majority of masters suspect it and gossip says so
/// (up to about 1 s); then the replica waits 0.5-1 s (plus 1 s per rank behind a better
/// replica) before its election, and the client re-reads the slot map: at worst about
/// 1.5 x node timeout + 2 s. With a 2 s node timeout, SIGKILL to a served slot measured
/// 3.5-5.0 s on a busy 2-core machine, so "node timeout + 2 s" would fail requests in routine
/// failovers there.
fn failover_wait_for(node_timeout: Duration) -> Duration {
    node_timeout
        .saturating_add(node_timeout / 2)
        .saturating_add(Duration::from_secs(3))
}

/// Retries of the cluster client itself (redirects, reconnects), and the bounds of its pauses
/// between them in milliseconds.
const CLIENT_RETRIES: u32 = 3;
const CLIENT_RETRY_WAIT_MS: (u64, u64) = (10, 100);

/// Least time between two connection rebuilds during failover waits (see [`Rebuild`]).
const REBUILD_GAP: Duration = Duration::from_secs(1);

/// First pause before a retry during a failover; doubled per retry up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// Prefix of every session key. Default `"herd:session:"`.
    pub key_prefix: String,
    /// Timeout of one TCP connect + handshake, and of a new cluster connection's first slot
    /// map read. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound of one whole operation including the client's own retries and redirects (one
    /// script call, `PEXPIRE`, `DEL` or `PING`); each reply is also awaited at most this long.
    /// An operation that meets a failover is tried again, each attempt under this bound,
    /// within [`failover_timeout`](Self::failover_timeout). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// How long an operation keeps retrying errors that a Redis Cluster failover explains
    /// (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `LOADING`, refused,
    /// reset or timed-out connections), counted from its first such error, before it fails
    /// with an error that says so. Retries pause 25 ms, doubling up to 250 ms; each attempt
    /// still has [`operation_timeout`](Self::operation_timeout). Other errors fail at once.
    /// `0s` turns the wait off.
    ///
    /// Default (`None`): on a cluster, 1.5 times the cluster's own `cluster-node-timeout` plus
    /// 3 s, the longest a replica takes to replace a dead master (detection, majority
    /// agreement, election delay, slot map re-read) with a second to spare: 6 s for a 2 s node
    /// timeout. The node timeout is read with `CONFIG GET` when [`RedisStore::cluster`]
    /// connects; when the cluster does not say (or with
    /// [`RedisStore::from_cluster_connection`]) Redis' default of 15 s is assumed, giving
    /// 25.5 s. On a standalone server, no wait: there is no failover to wait for.
    #[serde(with = "humantime_serde")]
    pub failover_timeout: Option<Duration>,
    /// CA and client certificate for `rediss://` URLs (default: the system's roots, no client
    /// certificate). Files given with `redis://` URLs are refused, as TLS would not be used.
    pub tls: RedisTlsConfig,
}

/// Certificates of TLS connections to Redis (`rediss://` URLs, Redis' `tls-port`), needing the
/// `tls-rustls` feature; a Redis Cluster's nodes are all reached with them. PEM files, read
/// when the store connects.
///
/// ```
/// let config: herd_session::RedisStoreConfig = toml::from_str(r#"
///     tls = { ca_file = "/etc/herd/redis-ca.crt" }
/// "#).unwrap();
/// assert!(config.tls.client_cert.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// CA certificates the servers' certificates must chain to. Default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for servers with `tls-auth-clients yes`. Needs `client_key`.
    /// Default: none.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key. Default: none.
    pub client_key: Option<PathBuf>,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            key_prefix: "herd:session:".to_owned(),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(1),
            failover_timeout: None,
            tls: RedisTlsConfig::default(),
        }
    }
}

/// Sessions in Redis: a Redis Cluster ([`cluster`](Self::cluster)) or a single server
/// ([`standalone`](Self::standalone)).
///
/// Cheap to clone; clones share the connection (multiplexed, reconnecting).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herd_session::{RedisStore, RedisStoreConfig, SessionLayer, SigningKeys};
///
/// let store = RedisStore::cluster(
///     ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
///     RedisStoreConfig::default(),
/// )
/// .await?;
/// let layer = SessionLayer::new(store, SigningKeys::generate()?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    handle: Handle,
    config: Arc<RedisStoreConfig>,
    /// Where the store points, for error messages: the server, or the cluster's seed nodes.
    nodes: Arc<str>,
    scripts: Arc<Scripts>,
    /// The failover wait in force (see [`RedisStoreConfig::failover_timeout`]).
    failover_wait: Duration,
    tokens: Arc<WriteTokens>,
}

/// What the store holds: the standalone connection manager, or the cluster connection in
/// force (replaced when a failover wait re-reads the topology).
#[derive(Clone)]
enum Handle {
    Standalone(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

struct ClusterHandle {
    current: RwLock<ClusterConnection>,
    /// Builds a connection with a fresh slot map; `None` for a connection the application
    /// handed over.
    rebuild: Option<Rebuild>,
    /// Bumped when a rebuilt connection is put in force, so that operations waiting on the old
    /// one retry at once.
    swaps: watch::Sender<u64>,
}

/// The `redis` crate's cluster client re-reads the slot map after redirects and broken
/// connections, but not after timeouts: a master that hangs or is cut off (rather than dying
/// with its connections) keeps its slots in the client's map, and every command to them times
/// out, even after a replica has taken over. So while a failover is waited out, the store
/// builds a new connection, which reads the slot map afresh, at most once per
/// [`REBUILD_GAP`], and uses it from then on.
struct Rebuild {
    client: ClusterClient,
    /// When the last rebuild started; held while one runs.
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// One attempt's connection.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Scripts {
    create: Script,
    load: Script,
    save: Script,
}

impl RedisStore {
    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` URLs); the
    /// client discovers the rest and follows slot moves and failovers. With `rediss://` URLs
    /// every node is reached over TLS with the certificates of [`RedisStoreConfig::tls`]; a
    /// failed handshake is an error whose [`is_tls`](StoreError::is_tls) says so.
    pub async fn cluster<I, S>(nodes: I, config: RedisStoreConfig) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let described = describe(&urls);
        let fail = |error: RedisError| connect_error(error).with_node(&*described);
        let certificates = tls::certificates(&urls, &config.tls)
            .map_err(|message| config_error(message).with_node(&*described))?;
        #[cfg(not(feature = "tls-rustls"))]
        let _: Option<std::convert::Infallible> = certificates;
        // The client's own retries follow redirects and reconnect; waiting out a failover is
        // left to the store (`wait_out_failover`), which bounds it by time. The client's
        // default retry waits (1.28 s and up, 16 retries) would instead sleep through the
        // operation timeout on the first dead-master error.
        let client = |connection_timeout| {
            let builder = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(connection_timeout)
                .response_timeout(config.operation_timeout)
                .retries(CLIENT_RETRIES)
                .min_retry_wait(CLIENT_RETRY_WAIT_MS.0)
                .max_retry_wait(CLIENT_RETRY_WAIT_MS.1)
                .retry_wait_formula(CLIENT_RETRY_WAIT_MS.0, 2);
            #[cfg(feature = "tls-rustls")]
            let builder = match certificates.clone() {
                Some(certs) => builder.certs(certs),
                None => builder,
            };
            builder.build().map_err(fail)
        };
        // A rebuild during a failover must not wait the full connect timeout on a seed node
        // that hangs: it connects to every seed before it reads the slot map.
        let rebuild = Rebuild {
            client: client(config.connect_timeout.min(config.operation_timeout))?,
            last: tokio::sync::Mutex::new(None),
        };
        let client = client(config.connect_timeout)?;
        let connection =
            tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| {
                    StoreError::timeout(STORE, StoreOperation::Connect, config.connect_timeout)
                        .with_node(&*described)
                })?
                .map_err(fail)?;
        let failover_wait = match config.failover_timeout {
            Some(wait) => wait,
            None => {
                let mut probe = connection.clone();
                node_timeout(&mut probe, config.operation_timeout)
                    .await
                    .map_or_else(
                        || failover_wait_for(DEFAULT_CLUSTER_NODE_TIMEOUT),
                        failover_wait_for,
                    )
            }
        };
        let handle = Handle::Cluster(Arc::new(ClusterHandle {
            current: RwLock::new(connection),
            rebuild: Some(rebuild),
            swaps: watch::Sender::new(0),
        }));
        Ok(Self::with(handle, config, described, failover_wait))
    }

    /// Connects to a single Redis server (`redis://host:port/db`), reconnecting on its own
    /// after a connection loss; over TLS for a `rediss://` URL, with the certificates of
    /// [`RedisStoreConfig::tls`].
    pub async fn standalone(url: &str, config: RedisStoreConfig) -> Result<Self, StoreError> {
        let described = describe(&[url]);
        let fail = |error: RedisError| connect_error(error).with_node(&*described);
        let certificates = tls::certificates(&[url], &config.tls)
            .map_err(|message| config_error(message).with_node(&*described))?;
        let client = match certificates {
            #[cfg(feature = "tls-rustls")]
            Some(certs) => Client::build_with_tls(url, certs),
            _ => Client::open(url),
        }
        .map_err(fail)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_number_of_retries(2);
        let connection = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| {
            StoreError::timeout(STORE, StoreOperation::Connect, config.connect_timeout)
                .with_node(&*described)
        })?
        .map_err(fail)?;
        let failover_wait = config.failover_timeout.unwrap_or_default();
        Ok(Self::with(
            Handle::Standalone(connection),
            config,
            described,
            failover_wait,
        ))
    }

    /// A store over a cluster connection the application already has. Without a
    /// [`failover_timeout`](RedisStoreConfig::failover_timeout) it waits out failovers for
    /// 25.5 s (as for Redis' default `cluster-node-timeout` of 15 s): set it when the cluster's
    /// node timeout differs. Having no client of its own, the store cannot rebuild this
    /// connection, so a master that hangs (rather than dies) stays in the connection's slot
    /// map until the `redis` client notices otherwise; [`cluster`](Self::cluster) can.
    pub fn from_cluster_connection(
        connection: ClusterConnection,
        config: RedisStoreConfig,
    ) -> Self {
        let failover_wait = config
            .failover_timeout
            .unwrap_or_else(|| failover_wait_for(DEFAULT_CLUSTER_NODE_TIMEOUT));
        let handle = Handle::Cluster(Arc::new(ClusterHandle {
            current: RwLock::new(connection),
            rebuild: None,
            swaps: watch::Sender::new(0),
        }));
        Self::with(handle, config, "redis cluster".to_owned(), failover_wait)
    }

    /// A store over a standalone connection manager the application already has.
    pub fn from_connection_manager(
        connection: ConnectionManager,
        config: RedisStoreConfig,
    ) -> Self {
        let failover_wait = config.failover_timeout.unwrap_or_default();
        Self::with(
            Handle::Standalone(connection),
            config,
            "redis".to_owned(),
            failover_wait,
        )
    }

    fn with(
        handle: Handle,
        config: RedisStoreConfig,
        nodes: String,
        failover_wait: Duration,
    ) -> Self {
        Self {
            handle,
            config: Arc::new(config),
            nodes: nodes.into(),
            scripts: Arc::new(Scripts {
                create: Script::new(CREATE),
                load: Script::new(LOAD),
                save: Script::new(SAVE),
            }),
            failover_wait,
            tokens: Arc::new(WriteTokens::new()),
        }
    }

    /// The connection for one attempt: the one in force now.
    fn connection(&self) -> Connection {
        match &self.handle {
            Handle::Standalone(manager) => Connection::Standalone(manager.clone()),
            Handle::Cluster(cluster) => Connection::Cluster(cluster.current.read().clone()),
        }
    }

    /// During a failover wait: builds a new cluster connection, which reads the slot map
    /// afresh, and puts it in force (see [`Rebuild`]). At most one at a time and one per
    /// [`REBUILD_GAP`]; returns at once otherwise, and for standalone Redis.
    async fn follow_topology(&self, within: Duration) {
        let Handle::Cluster(cluster) = &self.handle else {
            return;
        };
        let Some(rebuild) = &cluster.rebuild else {
            return;
        };
        let Ok(mut last) = rebuild.last.try_lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < REBUILD_GAP) || within.is_zero() {
            return;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(within, rebuild.client.get_async_connection()).await {
            Ok(Ok(fresh)) => {
                *cluster.current.write() = fresh;
                cluster.swaps.send_modify(|n| *n = n.wrapping_add(1));
                metrics::topology_refresh(STORE);
                tracing::debug!("session store: new cluster connection with a fresh slot map");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "session store: cluster reconnect failed");
            }
            Err(_) => tracing::debug!(?within, "session store: cluster reconnect timed out"),
        }
    }

    /// How long an operation waits out a failover: the configured
    /// [`failover_timeout`](RedisStoreConfig::failover_timeout), or the default it resolved to.
    pub fn failover_timeout(&self) -> Duration {
        self.failover_wait
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    /// The Redis key of a session.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.config.key_prefix)
    }

    /// Sends `PING`; for health checks. One attempt, never the failover wait: a health probe
    /// reports how the store is now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let reply: Value = self
            .attempt(redis::cmd("PING").query_async(&mut connection))
            .await
            .map_err(|failure| self.failed(StoreOperation::Ping, failure))?;
        match reply {
            Value::SimpleString(_) | Value::BulkString(_) | Value::Okay => Ok(()),
            other => Err(self.unexpected(StoreOperation::Ping, &other)),
        }
    }

    /// Runs one operation on `key`: `attempt` once, under the operation timeout, and again
    /// while its errors look like a failover (see [`wait_out_failover`](Self::wait_out_failover)).
    /// Every attempt must be safe to repeat (see the module docs).
    async fn run<T, F, Fut>(
        &self,
        operation: StoreOperation,
        key: &str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match self.attempt(attempt(self.connection())).await {
            Ok(value) => Ok(value),
            Err(failure) => {
                self.wait_out_failover(operation, key, attempt, failure)
                    .await
            }
        }
    }

    /// One attempt under the operation timeout.
    async fn attempt<T>(
        &self,
        future: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.config.operation_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::Redis(error)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// The slow path of [`run`](Self::run): while the errors are ones a failover explains,
    /// retry with a short, growing pause until an attempt succeeds or the failover wait has
    /// passed since the first error; fail at once on any other error.
    #[inline(never)]
    async fn wait_out_failover<T, F, Fut>(
        &self,
        operation: StoreOperation,
        key: &str,
        mut attempt: F,
        mut failure: Failure,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if !failure.failover_explained() || self.failover_wait.is_zero() {
            return Err(self.failed(operation, failure));
        }
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut retries = 0_u32;
        let mut swaps = match &self.handle {
            Handle::Cluster(cluster) => Some(cluster.swaps.subscribe()),
            Handle::Standalone(_) => None,
        };
        loop {
            let waited = started.elapsed();
            let Some(left) = self
                .failover_wait
                .checked_sub(waited)
                .filter(|left| !left.is_zero())
            else {
                metrics::failover_waited(STORE, operation.as_str(), "gave_up", waited);
                return Err(self
                    .failover_exceeded(operation, key, waited, retries, failure)
                    .await);
            };
            self.follow_topology(left).await;
            let left = self.failover_wait.saturating_sub(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(jittered(pause, retries).min(left)) => {}
                () = swapped(&mut swaps) => {}
            }
            pause = pause.saturating_mul(2).min(MAX_PAUSE);
            retries = retries.saturating_add(1);
            metrics::failover_retry(STORE, operation.as_str());
            tracing::debug!(
                operation = operation.as_str(),
                retries,
                error = %failure,
                "session store: waiting out a failover"
            );
            let outcome = tokio::select! {
                outcome = self.attempt(attempt(self.connection())) => outcome,
                // A rebuilt connection is in force: retry on it rather than sit out this
                // attempt's timeout against a master that hangs.
                () = swapped(&mut swaps) => continue,
            };
            match outcome {
                Ok(value) => {
                    let waited = started.elapsed();
                    metrics::failover_waited(STORE, operation.as_str(), "recovered", waited);
                    tracing::debug!(
                        operation = operation.as_str(),
                        retries,
                        ?waited,
                        "session store: operation went through after a failover"
                    );
                    return Ok(value);
                }
                Err(next) if next.failover_explained() => failure = next,
                Err(next) => return Err(self.failed(operation, next)),
            }
        }
    }

    /// The error for a failure that is not (or no longer) waited out.
    fn failed(&self, operation: StoreOperation, failure: Failure) -> StoreError {
        match failure {
            Failure::Redis(error) => {
                StoreError::new(STORE, operation, error.to_string()).with_node(&*self.nodes)
            }
            Failure::Timeout => {
                StoreError::timeout(STORE, operation, self.config.operation_timeout)
                    .with_node(&*self.nodes)
            }
        }
    }

    /// The error for a failover wait that ran out, naming the node that serves `key` when the
    /// cluster can still say.
    async fn failover_exceeded(
        &self,
        operation: StoreOperation,
        key: &str,
        waited: Duration,
        retries: u32,
        last: Failure,
    ) -> StoreError {
        let node = match self.connection() {
            Connection::Cluster(mut connection) => {
                let slot = key_slot(key.as_bytes());
                match slot_owner(&mut connection, slot, self.config.operation_timeout).await {
                    Some(owner) => format!("{owner} (slot {slot})"),
                    None => format!("slot {slot} via {}", self.nodes),
                }
            }
            Connection::Standalone(_) => self.nodes.to_string(),
        };
        tracing::warn!(
            operation = operation.as_str(),
            %node,
            ?waited,
            retries,
            error = %last,
            "session store: no new master within the failover wait"
        );
        StoreError::failover_timeout(STORE, operation, waited, last.to_string()).with_node(node)
    }

    /// [`SessionStore::create`] as the write with `token` (every retry of one create carries
    /// the same token).
    async fn create_as(
        &self,
        key: &StoreKey,
        record: &SessionRecord,
        ttl: Duration,
        token: &str,
    ) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        let mut invocation = self.scripts.create.key(&redis_key);
        invocation
            .arg(record.to_json())
            .arg(duration_ms(ttl).max(1))
            .arg(token);
        let invocation = &invocation;
        let created: i64 = self
            .run(
                StoreOperation::Create,
                &redis_key,
                |mut connection| async move { invocation.invoke_async(&mut connection).await },
            )
            .await?;
        Ok(created == 1)
    }

    /// [`SessionStore::save`] as the write with `token` (every retry of one save carries the
    /// same token).
    async fn save_as(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: &SessionRecord,
        ttl: Duration,
        token: &str,
    ) -> Result<SaveOutcome, StoreError> {
        let version = expected_version.saturating_add(1);
        let redis_key = self.redis_key(key);
        let mut invocation = self.scripts.save.key(&redis_key);
        invocation
            .arg(expected_version)
            .arg(version)
            .arg(record.to_json())
            .arg(duration_ms(ttl).max(1))
            .arg(token);
        let invocation = &invocation;
        let reply: Vec<Value> = self
            .run(
                StoreOperation::Save,
                &redis_key,
                |mut connection| async move { invocation.invoke_async(&mut connection).await },
            )
            .await?;
        let mut items = reply.into_iter();
        match (items.next(), items.next(), items.next(), items.next()) {
            // 3: an earlier attempt of this very save was applied (its reply was lost).
            (Some(Value::Int(2 | 3)), None, ..) => Ok(SaveOutcome::Saved { version }),
            (Some(Value::Int(0)), None, ..) => Ok(SaveOutcome::Gone),
            (Some(Value::Int(1)), Some(current), Some(json), Some(pttl)) => self
                .stored(StoreOperation::Save, current, json, pttl)
                .map(SaveOutcome::Conflict),
            (first, ..) => Err(self.unexpected(StoreOperation::Save, &first.unwrap_or(Value::Nil))),
        }
    }

    fn unexpected(&self, operation: StoreOperation, reply: &Value) -> StoreError {
        StoreError::new(STORE, operation, format!("unexpected reply {reply:?}"))
            .with_node(&*self.nodes)
    }

    /// Parses `[version, json, pttl]` as the LOAD and SAVE scripts return it.
    fn stored(
        &self,
        operation: StoreOperation,
        version: Value,
        json: Value,
        pttl: Value,
    ) -> Result<Stored, StoreError> {
        let bad = |what: &str| {
            StoreError::new(STORE, operation, format!("stored session has {what}"))
                .with_node(&*self.nodes)
        };
        let version = text(version)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad("no valid version"))?;
        let json = text(json).ok_or_else(|| bad("no data"))?;
        let record = SessionRecord::from_json(&json).map_err(|e| bad(&format!("bad data: {e}")))?;
        // PTTL is -1 for a key without expiry (written by someone else): treat it as one
        // millisecond left so the layer re-applies an expiry on its next touch.
        let ttl = match pttl {
            Value::Int(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
            _ => Duration::from_millis(1),
        };
        Ok(Stored {
            record: Arc::new(record),
            version,
            ttl,
            lease: None,
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.handle {
            Handle::Standalone(_) => "standalone",
            Handle::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("nodes", &self.nodes)
            .field("config", &self.config)
            .finish()
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        STORE
    }

    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.create_as(key, &record, ttl, &self.tokens.next()).await
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        let redis_key = self.redis_key(key);
        let invocation = self.scripts.load.key(&redis_key);
        let invocation = &invocation;
        let reply: Value = self
            .run(
                StoreOperation::Load,
                &redis_key,
                |mut connection| async move { invocation.invoke_async(&mut connection).await },
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(items) => match <[Value; 3]>::try_from(items) {
                Ok([version, json, pttl]) => self
                    .stored(StoreOperation::Load, version, json, pttl)
                    .map(Some),
                Err(items) => Err(self.unexpected(StoreOperation::Load, &Value::Array(items))),
            },
            other => Err(self.unexpected(StoreOperation::Load, &other)),
        }
    }

    async fn save(
        &self,
        key: &StoreKey,
        expected_version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_as(key, expected_version, &record, ttl, &self.tokens.next())
            .await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        let command = redis::cmd("DEL").arg(&redis_key).to_owned();
        let command = &command;
        let _: i64 = self
            .run(
                StoreOperation::Delete,
                &redis_key,
                |mut connection| async move { command.query_async(&mut connection).await },
            )
            .await?;
        Ok(())
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        let command = redis::cmd("PEXPIRE")
            .arg(&redis_key)
            .arg(duration_ms(ttl).max(1))
            .to_owned();
        let command = &command;
        let touched: i64 = self
            .run(
                StoreOperation::Touch,
                &redis_key,
                |mut connection| async move { command.query_async(&mut connection).await },
            )
            .await?;
        Ok(touched == 1)
    }
}

/// Why one attempt failed.
enum Failure {
    /// Redis or the client answered with an error.
    Redis(RedisError),
    /// No answer within the operation timeout.
    Timeout,
}

impl Failure {
    fn failover_explained(&self) -> bool {
        match self {
            Failure::Redis(error) => failover_explained(error),
            // A dead or unreachable master is silent until the connection breaks.
            Failure::Timeout => true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Redis(error) => error.fmt(f),
            Failure::Timeout => f.write_str("no reply within the operation timeout"),
        }
    }
}

/// Whether a failover (or a slot migration) explains `error`, so that the same command is
/// expected to succeed once the cluster has a master for the slot again: redirects, the
/// cluster's "not now" answers, a master demoted to replica or still loading its data, and
/// transport errors (refused, reset, dropped, timed out) or no connection to the slot's node.
/// Command errors (`WRONGTYPE`, script errors, `NOPERM`, bad replies) are not.
fn failover_explained(error: &RedisError) -> bool {
    match error.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::BusyLoading
        ),
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        _ => false,
    }
}

/// `pause` give or take a quarter, so that requests waiting out the same failover do not
/// retry in lockstep. `seed` varies the draw between retries.
fn jittered(pause: Duration, seed: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ seed.wrapping_mul(0x9E37_79B9);
    let quarter = pause / 4;
    let offset = quarter.mul_f64(f64::from(nanos % 1024) / 1024.0 * 2.0);
    pause - quarter + offset
}

/// Resolves when `swaps` moves on (a rebuilt connection is in force); never without one.
async fn swapped(swaps: &mut Option<watch::Receiver<u64>>) {
    if let Some(swaps) = swaps
        && swaps.changed().await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Unique write tokens: a random per-store prefix and a counter, as 32 hex digits.
struct WriteTokens {
    prefix: u64,
    next: AtomicU64,
}

impl WriteTokens {
    fn new() -> Self {
        use rand::TryRng as _;
        // Uniqueness is all a token needs; if the OS has no randomness, the clock and the
        // process id still tell instances apart.
        let prefix = rand::rngs::SysRng.try_next_u64().unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        });
        Self {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.prefix)
    }
}

/// The cluster's `cluster-node-timeout`, asked of any node; `None` when it cannot be read
/// (e.g. `CONFIG` is disabled, as in some managed services).
async fn node_timeout(connection: &mut ClusterConnection, timeout: Duration) -> Option<Duration> {
    let command = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-node-timeout")
        .to_owned();
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let reply = tokio::time::timeout(timeout, connection.route_command(command, routing))
        .await
        .ok()?
        .ok()?;
    // RESP2: ["cluster-node-timeout", "15000"]; RESP3: a map.
    let value = match reply {
        Value::Array(items) => items.into_iter().nth(1)?,
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        _ => return None,
    };
    let ms: u64 = text(value)?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// `host:port` of the master serving `slot`, from `CLUSTER SLOTS` on any node.
async fn slot_owner(
    connection: &mut ClusterConnection,
    slot: u16,
    timeout: Duration,
) -> Option<String> {
    let command = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let reply = tokio::time::timeout(timeout, connection.route_command(command, routing))
        .await
        .ok()?
        .ok()?;
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.into_iter().find_map(|range| {
        let Value::Array(parts) = range else {
            return None;
        };
        let mut parts = parts.into_iter();
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !(start..=end).contains(&i64::from(slot)) {
            return None;
        }
        let mut master = master.into_iter();
        let host = text(master.next()?)?;
        let Some(Value::Int(port)) = master.next() else {
            return None;
        };
        Some(format!("{host}:{port}"))
    })
}

/// The Redis Cluster hash slot of `key`: CRC16-XMODEM of the key, or of its `{hash tag}`,
/// modulo 16384.
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = key.get(open + 1..)?;
            let close = rest.iter().position(|&b| b == b'}')?;
            rest.get(..close)
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    let crc = tagged.iter().fold(0_u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    crc % 16384
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A failed connect: a TLS error when the handshake failed, else the client's error.
fn connect_error(error: RedisError) -> StoreError {
    match tls::failure(&error) {
        Some(reason) => StoreError::tls(STORE, StoreOperation::Connect, reason),
        None => StoreError::new(STORE, StoreOperation::Connect, error.to_string()),
    }
}

/// Unusable TLS settings, found before connecting.
fn config_error(message: String) -> StoreError {
    StoreError::new(STORE, StoreOperation::Connect, message)
}

/// TLS to Redis: the URLs' scheme, the certificate files, and telling a failed handshake.
mod tls {
    use redis::RedisError;

    use super::RedisTlsConfig;

    /// The certificates for `urls`: `None` for plain `redis://` URLs, or for `rediss://` ones
    /// without files (the system's roots). Refuses mixed schemes, files with plain URLs (the
    /// operator believes TLS is on, and it is not), `rediss://` without the `tls-rustls`
    /// feature and unreadable files, with a message naming the field.
    #[cfg(feature = "tls-rustls")]
    pub(super) fn certificates<S: AsRef<str>>(
        urls: &[S],
        config: &RedisTlsConfig,
    ) -> Result<Option<redis::TlsCertificates>, String> {
        if !wanted(urls, config)? || *config == RedisTlsConfig::default() {
            return Ok(None);
        }
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| format!("tls.{field}: cannot read {}: {e}", path.display()))
        };
        let client_tls = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read("client_cert", cert)?,
                client_key: read("client_key", key)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err("tls.client_key: a client certificate needs its key".into());
            }
            (None, Some(_)) => {
                return Err("tls.client_cert: a client key needs its certificate".into());
            }
        };
        let root_cert = config
            .ca_file
            .as_deref()
            .map(|path| read("ca_file", path))
            .transpose()?;
        install_crypto_provider();
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// Without TLS compiled in: only the checks, and never certificates.
    #[cfg(not(feature = "tls-rustls"))]
    pub(super) fn certificates<S: AsRef<str>>(
        urls: &[S],
        config: &RedisTlsConfig,
    ) -> Result<Option<std::convert::Infallible>, String> {
        wanted(urls, config).map(|_| None)
    }

    /// Whether the URLs ask for TLS, refusing mixed schemes, certificate files with plain URLs
    /// and TLS without the feature.
    fn wanted<S: AsRef<str>>(urls: &[S], config: &RedisTlsConfig) -> Result<bool, String> {
        let is_tls = |url: &S| {
            let scheme = url.as_ref().split_once("://").map_or("", |(s, _)| s);
            scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
        };
        let tls = urls.iter().filter(|u| is_tls(u)).count();
        if tls != 0 && tls != urls.len() {
            return Err(
                "some URLs are rediss:// (TLS) and some redis:// (plain): use one scheme".into(),
            );
        }
        let tls = tls != 0;
        if !tls && *config != RedisTlsConfig::default() {
            return Err(
                "tls: CA or client certificate files are set, but the URLs are redis:// \
                        (plain): use rediss:// URLs for TLS"
                    .into(),
            );
        }
        if tls && !cfg!(feature = "tls-rustls") {
            return Err("rediss:// (TLS) needs herd-session's `tls-rustls` feature".into());
        }
        Ok(tls)
    }

    /// Makes *ring* rustls' process-wide crypto provider unless the application installed one:
    /// the `redis` client builds its TLS configuration with the process's provider, which must
    /// be chosen when more than one is compiled in. *ring* is the workspace's (it builds
    /// without cmake; rustls 0.23.48 deprecates it for lacking post-quantum key exchange).
    #[cfg(feature = "tls-rustls")]
    fn install_crypto_provider() {
        #[expect(deprecated, reason = "ring is the workspace's provider; see above")]
        let ring = rustls::crypto::ring::default_provider;
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may install one first; either will do.
            let _ = ring().install_default();
        }
    }

    /// The TLS library's reason when `error` is a failed handshake: a certificate the CA does
    /// not sign or that names another host, or a client certificate the server refused.
    pub(super) fn failure(error: &RedisError) -> Option<String> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            #[cfg(feature = "tls-rustls")]
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Some(tls.to_string());
            }
            source = e.source();
        }
        // The cluster client reports a failed first connection to every seed as text only;
        // these are the beginnings of rustls' messages for certificate errors and TLS alerts.
        let text = error.to_string();
        ["invalid peer certificate", "received fatal alert"]
            .iter()
            .any(|m| text.contains(m))
            .then_some(text)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn schemes_must_agree_and_files_need_tls_urls() {
            let none = RedisTlsConfig::default();
            assert!(
                certificates(&["redis://a:1", "redis://b:1"], &none)
                    .unwrap()
                    .is_none()
            );
            let mixed = certificates(&["rediss://a:1", "redis://b:1"], &none).unwrap_err();
            assert!(mixed.contains("one scheme"), "{mixed}");
            let files = RedisTlsConfig {
                ca_file: Some("/nonexistent/ca.crt".into()),
                ..RedisTlsConfig::default()
            };
            let plain = certificates(&["redis://a:1"], &files).unwrap_err();
            assert!(plain.starts_with("tls:"), "{plain}");
            let tls = certificates(&["rediss://a:1"], &files);
            if cfg!(feature = "tls-rustls") {
                let missing = tls.unwrap_err();
                assert!(
                    missing.starts_with("tls.ca_file: cannot read /nonexistent/ca.crt"),
                    "{missing}"
                );
            } else {
                assert!(tls.unwrap_err().contains("tls-rustls"));
            }
        }
    }
}

/// `host:port` of each URL for error messages, without credentials.
fn describe<S: AsRef<str>>(urls: &[S]) -> String {
    let hosts: Vec<&str> = urls
        .iter()
        .map(|url| {
            let url = url.as_ref();
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            rest.split('/').next().unwrap_or(rest)
        })
        .collect();
    hosts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_strips_scheme_credentials_and_db() {
        assert_eq!(
            describe(&[
                "redis://user:secret@10.0.0.1:6379/2",
                "redis://10.0.0.2:7000"
            ]),
            "10.0.0.1:6379,10.0.0.2:7000"
        );
    }

    #[test]
    fn save_keeps_the_write_log_at_its_length_and_tokens_are_unique() {
        assert!(SAVE.contains(&format!("-{WRITE_LOG_CHARS})")));
        let tokens = WriteTokens::new();
        let (a, b) = (tokens.next(), tokens.next());
        assert_eq!(a.len(), WRITE_TOKEN_LEN);
        assert_ne!(a, b);
        assert_ne!(
            a[..16],
            WriteTokens::new().next()[..16],
            "per-store prefixes differ"
        );
    }

    #[test]
    fn only_errors_a_failover_explains_are_waited_out() {
        let io = |kind| RedisError::from(std::io::Error::new(kind, "x"));
        for error in [
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::Moved),
                "MOVED",
                "12 h:1".into(),
            )),
            RedisError::from((ErrorKind::Server(ServerErrorKind::Ask), "ASK")),
            RedisError::from((ErrorKind::Server(ServerErrorKind::TryAgain), "TRYAGAIN")),
            RedisError::from((
                ErrorKind::Server(ServerErrorKind::ClusterDown),
                "CLUSTERDOWN",
            )),
            RedisError::from((ErrorKind::Server(ServerErrorKind::MasterDown), "MASTERDOWN")),
            RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY")),
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "LOADING")),
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection")),
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::TimedOut),
            io(std::io::ErrorKind::UnexpectedEof),
        ] {
            assert!(failover_explained(&error), "{error:?}");
        }
        for error in [
            redis::make_extension_error("WRONGTYPE".into(), Some("wrong kind".into())),
            RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "script")),
            RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "NOPERM")),
            RedisError::from((ErrorKind::UnexpectedReturnType, "bad reply")),
            RedisError::from((ErrorKind::AuthenticationFailed, "auth")),
            RedisError::from((ErrorKind::Parse, "garbage")),
        ] {
            assert!(!failover_explained(&error), "{error:?}");
        }
        assert!(Failure::Timeout.failover_explained());
    }

    #[test]
    fn retry_pauses_stay_near_their_step() {
        for seed in 0..50 {
            let pause = jittered(Duration::from_millis(100), seed);
            assert!(pause >= Duration::from_millis(75) && pause <= Duration::from_millis(125));
        }
    }

    #[test]
    fn default_failover_wait_follows_the_node_timeout() {
        assert_eq!(
            failover_wait_for(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert_eq!(
            failover_wait_for(DEFAULT_CLUSTER_NODE_TIMEOUT),
            Duration::from_millis(25_500)
        );
    }

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }

    /// An attempt whose reply was lost, retried with its token: the create and the save answer
    /// as applied, not as "taken"/conflict, even after another request saved on top; once the
    /// token has left the log the retry is an ordinary conflict.
    #[tokio::test]
    async fn retried_writes_find_their_own_token() {
        let server = herd_testkit::shared::redis().await.unwrap();
        let store = RedisStore::standalone(&server.url(), RedisStoreConfig::default())
            .await
            .unwrap();
        let key = crate::SessionIdGenerator::new()
            .generate()
            .unwrap()
            .store_key();
        let ttl = Duration::from_secs(60);
        let record = SessionRecord::new(None);
        let token = |n: u64| format!("{:032x}", 0xabc0 + n);

        assert!(
            store
                .create_as(&key, &record, ttl, &token(0))
                .await
                .unwrap()
        );
        assert!(
            store
                .create_as(&key, &record, ttl, &token(0))
                .await
                .unwrap(),
            "retry"
        );
        assert!(
            !store
                .create_as(&key, &record, ttl, &token(1))
                .await
                .unwrap(),
            "taken"
        );

        let saved = |outcome: SaveOutcome| matches!(outcome, SaveOutcome::Saved { version: 2 });
        assert!(saved(
            store
                .save_as(&key, 1, &record, ttl, &token(2))
                .await
                .unwrap()
        ));
        assert!(saved(
            store
                .save_as(&key, 1, &record, ttl, &token(2))
                .await
                .unwrap()
        ));
        // Another request saves version 3 before the retry arrives: still this save's own.
        store
            .save_as(&key, 2, &record, ttl, &token(3))
            .await
            .unwrap();
        assert!(saved(
            store
                .save_as(&key, 1, &record, ttl, &token(2))
                .await
                .unwrap()
        ));
        for version in 3..3 + WRITE_LOG_ENTRIES as u64 {
            let token = token(version + 10);
            let outcome = store.save_as(&key, version, &record, ttl, &token).await;
            assert!(matches!(outcome.unwrap(), SaveOutcome::Saved { .. }));
        }
        match store
            .save_as(&key, 1, &record, ttl, &token(2))
            .await
            .unwrap()
        {
            SaveOutcome::Conflict(stored) => assert_eq!(stored.version, 11),
            other => panic!("a token out of the log must conflict, got {other:?}"),
        }
        store.delete(&key).await.unwrap();
    }

    #[test]
    fn config_defaults_and_humantime() {
        let config: RedisStoreConfig =
            serde_json::from_str(r#"{"operation_timeout": "250ms", "key_prefix": "app:s:"}"#)
                .unwrap();
        assert_eq!(config.operation_timeout, Duration::from_millis(250));
        assert_eq!(config.key_prefix, "app:s:");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        // The shared name (herd-cache-cluster's `RedisConfig` has it too); the old one is gone.
        assert!(serde_json::from_str::<RedisStoreConfig>(r#"{"timeout": "1s"}"#).is_err());
        assert_eq!(
            config.failover_timeout, None,
            "default: from the cluster's node timeout"
        );
        let config: RedisStoreConfig =
            serde_json::from_str(r#"{"failover_timeout": "7s"}"#).unwrap();
        assert_eq!(config.failover_timeout, Some(Duration::from_secs(7)));
    }
}
