//! Redis Cluster through the `redis` crate's async cluster client, plus what it lacks: a timer
//! and error driven topology re-read that rebuilds the connection after a failover, a bounded
//! wait through failovers, and slot grouping for multi-key operations.
//!
//! Failovers: a command whose error a failover explains (`MOVED`, `ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `LOADING`, a refused, reset or timed-out
//! connection) is retried with a short backoff, each retry asking the topology watcher for a
//! fresh slot map and taking the newest connection (at once when the watcher puts one in
//! place, rather than sitting out timeouts against a master that hangs), until it succeeds or
//! [`failover_timeout`](RedisConfig::failover_timeout) has passed since its first such error.
//! Other errors fail at once. Every retried command is safe to repeat: reads; `SET` and `DEL`
//! (repeating them leaves the same state); `SADD` + `PEXPIRE NX/GT`; the lock release
//! (compare-and-delete); and the lock's `SET NX`, whose retries use a script that also
//! answers "held" when the key already holds this caller's token (an earlier attempt was
//! applied but its reply lost), so a caller never waits for its own lock. `SPUBLISH` is not
//! retried: its subscribers are flushed by the failover anyway.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::{join_all, try_join_all};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisError, ServerErrorKind, Value,
};
use tokio::sync::{Notify, mpsc, watch};

use super::topology::Topology;
use super::{DELETE_IF_EQUALS, NodeHealth, PubSubEvent, ttl_ms};
use crate::config::RedisConfig;
use crate::error::Error;
use crate::metrics::{
    FAILOVER_RETRIES_TOTAL, FAILOVER_WAIT_SECONDS, FAILOVER_WAITS_TOTAL, TOPOLOGY_CHANGES_TOTAL,
};
use crate::slot::key_slot;
use crate::task::AbortOnDrop;

pub(super) const NAME: &str = "redis-cluster";

/// Bounds of the wait before a cluster command is retried, in milliseconds.
const RETRY_WAIT_MIN_MS: u64 = 10;
const RETRY_WAIT_MAX_MS: u64 = 100;

/// Least time between two topology reads, however many errors ask for one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// Redis' default `cluster-node-timeout`, assumed when the cluster does not say its own.
const DEFAULT_CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// First pause before a retry during a failover; doubled per retry up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(250);

static DELETE_IF_EQUALS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(DELETE_IF_EQUALS));

/// The lock's `SET NX PX` as retried during a failover: 1 when set now or already holding
/// this token (an earlier attempt landed), 0 when someone else holds it.
static SET_NX_OR_HELD_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return 1 end
if held then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// A Redis Cluster backend.
///
/// The `redis` crate's cluster client follows `MOVED`/`ASK` but refreshes its slot map only on
/// some errors and has no timer, so after a master failover requests can keep failing for a long
/// time. This backend re-reads `CLUSTER SLOTS` every
/// [`topology_refresh_interval`](RedisConfig::topology_refresh_interval) and right after an error;
/// when the map changed it builds a fresh connection (which starts from the new map) and bumps a
/// reset counter that flushes the caches' L1s.
#[derive(Clone)]
pub struct ClusterBackend {
    inner: Arc<Inner>,
    _watcher: Arc<AbortOnDrop>,
}

struct Inner {
    config: RedisConfig,
    seeds: Vec<ConnectionInfo>,
    /// The data connections (`RedisConfig::connections`), used in turn.
    conns: ArcSwap<Connections>,
    topology: ArcSwap<Topology>,
    refresh_now: Notify,
    resets: watch::Sender<u64>,
    /// The failover wait in force (see [`RedisConfig::failover_timeout`]).
    failover_wait: Duration,
}

impl fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBackend")
            .field("seeds", &self.inner.config.urls)
            .field("masters", &self.inner.topology.load().masters())
            .finish_non_exhaustive()
    }
}

impl ClusterBackend {
    /// Connects to the cluster through the seed nodes in `config.urls` and reads its topology.
    /// With `rediss://` URLs every node is reached over TLS with the certificates of
    /// [`RedisConfig::tls`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no or unparsable URLs or unreadable certificate files,
    /// [`Error::Tls`] when the TLS handshake fails (wrong CA, a certificate for another host),
    /// [`Error::Backend`] when no seed answers.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        if config.urls.is_empty() {
            return Err(Error::InvalidConfig {
                field: "urls",
                reason: "at least one seed node is required".into(),
            });
        }
        // Certificate files are read up front, so that an unreadable one is a configuration
        // error rather than a failed connect (`client` reads them again on each reconnect).
        super::tls::check(&config)?;
        let seeds = config
            .urls
            .iter()
            .map(|url| {
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| Error::InvalidConfig {
                        field: "urls",
                        reason: format!("{url}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.connections == 0 {
            return Err(Error::InvalidConfig {
                field: "connections",
                reason: "at least one connection is required".into(),
            });
        }
        let conns = connect_all(&config, &seeds).await?;
        let failover_wait = match config.failover_timeout {
            Some(wait) => wait,
            None => failover_wait_for(
                node_timeout(&conns.first, config.response_timeout)
                    .await
                    .unwrap_or(DEFAULT_CLUSTER_NODE_TIMEOUT),
            ),
        };
        let (resets, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            config,
            seeds,
            conns: ArcSwap::from_pointee(conns),
            topology: ArcSwap::from_pointee(Topology::default()),
            refresh_now: Notify::new(),
            resets,
            failover_wait,
        });
        // A first map for grouping keys; failures here only delay grouping, so they are not fatal.
        if let Ok(topology) = inner.fetch_topology().await {
            inner.topology.store(Arc::new(topology));
        }
        let watcher = tokio::spawn(watch_topology(Arc::clone(&inner)));
        Ok(Self {
            inner,
            _watcher: Arc::new(AbortOnDrop(watcher)),
        })
    }

    /// How long a command waits out a failover: the configured
    /// [`failover_timeout`](RedisConfig::failover_timeout), or the default it resolved to.
    pub fn failover_timeout(&self) -> Duration {
        self.inner.failover_wait
    }

    /// Current masters as `host:port`, from the last topology read.
    pub fn masters(&self) -> Vec<String> {
        self.inner.topology.load().masters()
    }

    /// An identity of the master currently serving `key`'s slot, when the topology is known.
    pub(super) fn shard_of(&self, key: &str) -> Option<u64> {
        self.shard_of_slot(key_slot(key.as_bytes()))
    }

    /// [`shard_of`](Self::shard_of) for a key's slot.
    pub(super) fn shard_of_slot(&self, slot: u16) -> Option<u64> {
        self.inner.topology.load().master_hash_for(slot)
    }

    /// The master serving `slot` (`host:port`), when the topology is known.
    pub(super) fn node_of_slot(&self, slot: u16) -> Option<Arc<str>> {
        self.inner.topology.load().master_for(slot).cloned()
    }

    fn conn(&self) -> ClusterConnection {
        self.inner.conn()
    }

    /// The node serving `key`, for error messages.
    fn target(&self, key: &str) -> String {
        let slot = key_slot(key.as_bytes());
        match self.inner.topology.load().master_for(slot) {
            Some(node) => node.to_string(),
            None => format!("slot {slot}"),
        }
    }

    fn fail(&self, operation: &'static str, target: String, source: redis::RedisError) -> Error {
        // Any failure may be a topology change: look now instead of at the next tick.
        self.inner.refresh_now.notify_one();
        Error::backend(NAME, operation, target, source)
    }

    /// Runs `attempt` on the newest connection and, while its errors look like a failover,
    /// again (see [`wait_out_failover`](Self::wait_out_failover)).
    async fn with_failover<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match attempt(self.conn()).await {
            Ok(value) => Ok(value),
            Err(error) => self.wait_out_failover(operation, key, attempt, error).await,
        }
    }

    /// The slow path after a failed attempt: while the errors are ones a failover explains,
    /// pause (25 ms doubling to 250 ms, jittered), have the topology re-read, and retry on the
    /// newest connection until an attempt succeeds or the failover wait has passed since the
    /// first error. Any other error fails at once.
    #[inline(never)]
    async fn wait_out_failover<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        mut attempt: F,
        mut error: RedisError,
    ) -> Result<T, Error>
    where
        F: FnMut(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let wait = self.inner.failover_wait;
        if wait.is_zero() || !failover_explained(&error) {
            return Err(self.fail(operation, self.target(key), error));
        }
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut retries = 0_u32;
        // Bumped when the watcher has put a connection with a fresh slot map in place.
        let mut swaps = self.inner.resets.subscribe();
        loop {
            // Any failure may be a topology change: look now instead of at the next tick.
            self.inner.refresh_now.notify_one();
            let waited = started.elapsed();
            let Some(left) = wait.checked_sub(waited).filter(|left| !left.is_zero()) else {
                metrics::counter!(FAILOVER_WAITS_TOTAL, "operation" => operation, "outcome" => "gave_up")
                    .increment(1);
                metrics::histogram!(FAILOVER_WAIT_SECONDS, "operation" => operation)
                    .record(waited.as_secs_f64());
                let target = self.target(key);
                tracing::warn!(operation, %target, ?waited, retries, %error, "redis cluster: no new master within the failover wait");
                return Err(Error::FailoverTimeout {
                    backend: NAME,
                    operation,
                    target,
                    waited,
                    source: Arc::new(error),
                });
            };
            tokio::select! {
                () = tokio::time::sleep(jittered(pause, retries).min(left)) => {}
                () = swapped(&mut swaps) => {}
            }
            pause = pause.saturating_mul(2).min(MAX_PAUSE);
            retries = retries.saturating_add(1);
            metrics::counter!(FAILOVER_RETRIES_TOTAL, "operation" => operation).increment(1);
            tracing::debug!(operation, retries, %error, "redis cluster: waiting out a failover");
            let outcome = tokio::select! {
                outcome = attempt(self.conn()) => outcome,
                // A connection with a fresh slot map is in place: retry on it rather than sit
                // out this attempt's timeouts against a master that hangs.
                () = swapped(&mut swaps) => continue,
            };
            match outcome {
                Ok(value) => {
                    let waited = started.elapsed();
                    metrics::counter!(FAILOVER_WAITS_TOTAL, "operation" => operation, "outcome" => "recovered")
                        .increment(1);
                    metrics::histogram!(FAILOVER_WAIT_SECONDS, "operation" => operation)
                        .record(waited.as_secs_f64());
                    tracing::debug!(
                        operation,
                        retries,
                        ?waited,
                        "redis cluster: command went through after a failover"
                    );
                    return Ok(value);
                }
                Err(next) if failover_explained(&next) => error = next,
                Err(next) => return Err(self.fail(operation, self.target(key), next)),
            }
        }
    }

    fn read_addr(&self) -> SlotAddr {
        if self.inner.config.read_from_replicas {
            SlotAddr::ReplicaOptional
        } else {
            SlotAddr::Master
        }
    }

    /// `GET key`, where `slot` is `key`'s hash slot.
    pub(super) async fn get(&self, key: &str, slot: u16) -> Result<Option<Vec<u8>>, Error> {
        // Routed here rather than through `query_async`, whose cluster path clones the command,
        // boxes the future and parses the command name again to find the key and its slot.
        let read_addr = self.read_addr();
        self.with_failover("GET", key, |mut conn| {
            let mut cmd = redis::Cmd::with_capacity(2, 3 + key.len());
            cmd.arg("GET").arg(key);
            let route = Route::new(slot, read_addr);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            async move {
                conn.route_command(cmd, routing)
                    .await
                    .and_then(|value| Ok(redis::from_redis_value(value.extract_error()?)?))
            }
        })
        .await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        let cmd = &cmd;
        self.with_failover("SET", key, |mut conn| async move {
            cmd.query_async::<()>(&mut conn).await
        })
        .await
    }

    pub(super) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let first = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<Option<String>>(&mut self.conn())
            .await
            .map(|reply| reply.is_some());
        match first {
            Ok(set) => Ok(set),
            Err(error) => {
                // A retry must not mistake this caller's own landed attempt for another
                // holder: the script also answers 1 when the key holds this token.
                let mut retry = SET_NX_OR_HELD_SCRIPT.key(key);
                retry.arg(value).arg(ttl_ms(ttl));
                let retry = &retry;
                self.wait_out_failover(
                    "SET NX",
                    key,
                    |mut conn| async move { retry.invoke_async::<i64>(&mut conn).await.map(|n| n == 1) },
                    error,
                )
                .await
            }
        }
    }

    pub(super) async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        let mut invocation = DELETE_IF_EQUALS_SCRIPT.key(key);
        invocation.arg(value);
        let invocation = &invocation;
        self.with_failover("EVAL delete-if-equals", key, |mut conn| async move {
            invocation
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|n| n > 0)
        })
        .await
    }

    pub(super) async fn delete(&self, keys: &[String]) -> Result<u64, Error> {
        // One DEL per slot: a multi-key command must stay within one slot.
        let deletes = group_by_slot(keys).into_values().map(|indices| {
            let mut cmd = redis::cmd("DEL");
            for &i in &indices {
                cmd.arg(keys.get(i).map(String::as_str).unwrap_or_default());
            }
            let first = indices
                .first()
                .and_then(|&i| keys.get(i))
                .cloned()
                .unwrap_or_default();
            async move {
                let cmd = &cmd;
                self.with_failover("DEL", &first, |mut conn| async move {
                    cmd.query_async::<u64>(&mut conn).await
                })
                .await
            }
        });
        Ok(try_join_all(deletes).await?.into_iter().sum())
    }

    /// Groups keys by slot and slots by node, then sends one pipeline per node holding one
    /// `MGET` per slot. A node group that fails (e.g. `MOVED` while slots migrate) is retried
    /// slot by slot through the client's normal redirect handling.
    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let by_slot = group_by_slot(keys);
        let by_node = self.group_slots_by_node(by_slot.keys().copied());
        let read_addr = self.read_addr();
        let node_reads = by_node.into_values().map(|slots| {
            let by_slot = &by_slot;
            async move {
                let mut pipe = redis::pipe();
                for slot in &slots {
                    let cmd = pipe.cmd("MGET");
                    for &i in by_slot.get(slot).into_iter().flatten() {
                        cmd.arg(keys.get(i).map(String::as_str).unwrap_or_default());
                    }
                }
                let first_slot = slots.first().copied().unwrap_or_default();
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(first_slot, read_addr));
                let piped = self
                    .conn()
                    .route_pipeline(pipe, 0, slots.len(), route)
                    .await;
                let values = match piped.map(|replies| {
                    replies
                        .into_iter()
                        .map(redis::from_redis_value::<Vec<Option<Vec<u8>>>>)
                        .collect::<Result<Vec<_>, _>>()
                }) {
                    Ok(Ok(values)) if values.len() == slots.len() => values,
                    _ => self.get_slots_one_by_one(keys, by_slot, &slots).await?,
                };
                Ok::<_, Error>(slots.into_iter().zip(values).collect::<Vec<_>>())
            }
        });
        let mut out = vec![None; keys.len()];
        for (slot, values) in try_join_all(node_reads).await?.into_iter().flatten() {
            for (&i, value) in by_slot.get(&slot).into_iter().flatten().zip(values) {
                if let Some(place) = out.get_mut(i) {
                    *place = value;
                }
            }
        }
        Ok(out)
    }

    async fn get_slots_one_by_one(
        &self,
        keys: &[String],
        by_slot: &BTreeMap<u16, Vec<usize>>,
        slots: &[u16],
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, Error> {
        let reads = slots.iter().map(|slot| {
            let mut cmd = redis::cmd("MGET");
            let indices = by_slot.get(slot).map(Vec::as_slice).unwrap_or_default();
            for &i in indices {
                cmd.arg(keys.get(i).map(String::as_str).unwrap_or_default());
            }
            let first = indices
                .first()
                .and_then(|&i| keys.get(i))
                .cloned()
                .unwrap_or_default();
            async move {
                let cmd = &cmd;
                self.with_failover("MGET", &first, |mut conn| async move {
                    cmd.query_async(&mut conn).await
                })
                .await
            }
        });
        try_join_all(reads).await
    }

    /// One pipeline of `SET key value PX ttl` per node.
    pub(super) async fn set_many(
        &self,
        items: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), Error> {
        let keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        let by_slot = group_by_slot(&keys);
        let by_node = self.group_slots_by_node(by_slot.keys().copied());
        let by_slot = &by_slot;
        let writes = by_node.into_iter().map(|(node, slots)| {
            let mut pipe = redis::pipe();
            let mut count = 0;
            for &i in slots.iter().filter_map(|s| by_slot.get(s)).flatten() {
                if let Some((key, value)) = items.get(i) {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms(ttl))
                        .ignore();
                    count += 1;
                }
            }
            let first_slot = slots.first().copied().unwrap_or_default();
            let route =
                SingleNodeRoutingInfo::SpecificNode(Route::new(first_slot, SlotAddr::Master));
            let mut conn = self.conn();
            async move {
                match conn.route_pipeline(pipe, 0, count, route).await {
                    Ok(_) => Ok(()),
                    // E.g. MOVED during a migration: write key by key with redirects followed.
                    Err(_) => {
                        for &i in slots.iter().filter_map(|s| by_slot.get(s)).flatten() {
                            if let Some((key, value)) = items.get(i) {
                                self.set(key, value, ttl).await?;
                            }
                        }
                        Ok::<_, Error>(())
                    }
                }
                .map_err(|e| match e {
                    Error::Backend { source, .. } => Error::Backend {
                        backend: NAME,
                        operation: "SET (pipeline)",
                        target: node,
                        source,
                    },
                    other => other,
                })
            }
        });
        try_join_all(writes).await.map(drop)
    }

    pub(super) async fn tag_add(
        &self,
        tag_key: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), Error> {
        let ms = ttl_ms(ttl);
        // NX sets a first expiry, GT only ever extends it: the tag outlives its longest member.
        let pipe = redis::pipe()
            .cmd("SADD")
            .arg(tag_key)
            .arg(members)
            .ignore()
            .cmd("PEXPIRE")
            .arg(tag_key)
            .arg(ms)
            .arg("NX")
            .ignore()
            .cmd("PEXPIRE")
            .arg(tag_key)
            .arg(ms)
            .arg("GT")
            .ignore()
            .to_owned();
        let pipe = &pipe;
        self.with_failover("SADD tag", tag_key, |mut conn| async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .await
    }

    pub(super) async fn tag_members(&self, tag_key: &str) -> Result<Vec<String>, Error> {
        let cmd = redis::cmd("SMEMBERS").arg(tag_key).to_owned();
        let cmd = &cmd;
        self.with_failover("SMEMBERS", tag_key, |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    pub(super) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), Error> {
        // Sharded pub/sub: the message goes to the channel's shard only, not over the whole bus.
        redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(|e| self.fail("SPUBLISH", self.target(channel), e))
    }

    /// `SSUBSCRIBE channel` on a RESP3 connection of its own. The connection is rebuilt after a
    /// disconnection or a topology change (the channel's shard may have moved), and each rebuild
    /// is reported as [`PubSubEvent::Interrupted`].
    pub(super) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<mpsc::UnboundedReceiver<PubSubEvent>, Error> {
        let (events, rx) = mpsc::unbounded_channel();
        let first = subscribe_once(&self.inner, channel).await?;
        let inner = Arc::clone(&self.inner);
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let mut resets = inner.resets.subscribe();
            let mut current = Some(first);
            let mut backoff = Duration::from_millis(50);
            loop {
                let (conn, mut pushes) = match current.take() {
                    Some(subscribed) => subscribed,
                    None => {
                        tokio::select! {
                            () = events.closed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        match subscribe_once(&inner, &channel).await {
                            Ok(subscribed) => {
                                backoff = Duration::from_millis(50);
                                let _ = events.send(PubSubEvent::Interrupted);
                                subscribed
                            }
                            Err(error) => {
                                tracing::debug!(%error, "cache invalidation: resubscribe failed");
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                                continue;
                            }
                        }
                    }
                };
                loop {
                    tokio::select! {
                        () = events.closed() => return,
                        changed = resets.changed() => {
                            if changed.is_err() { return }
                            break;
                        }
                        push = pushes.recv() => match push {
                            None => break,
                            Some(PushInfo { kind: PushKind::Disconnection, .. }) => break,
                            Some(push) => if let Some(msg) = redis::Msg::from_push_info(push) {
                                let _ = events.send(PubSubEvent::Message(msg.get_payload_bytes().to_vec()));
                            }
                        }
                    }
                }
                drop(conn);
            }
        });
        Ok(rx)
    }

    pub(super) fn resets(&self) -> watch::Receiver<u64> {
        self.inner.resets.subscribe()
    }

    pub(super) async fn ping_nodes(&self) -> Vec<NodeHealth> {
        let mut masters = self.masters();
        if masters.is_empty()
            && let Ok(topology) = self.inner.fetch_topology().await
        {
            masters = topology.masters();
        }
        let pings = masters.into_iter().map(|node| async move {
            let Some((host, port)) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
            else {
                return NodeHealth {
                    node,
                    latency: None,
                    error: Some("unparsable node address".into()),
                };
            };
            let started = Instant::now();
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            match self.conn().route_command(redis::cmd("PING"), routing).await {
                Ok(_) => NodeHealth {
                    node,
                    latency: Some(started.elapsed()),
                    error: None,
                },
                Err(e) => NodeHealth {
                    node,
                    latency: None,
                    error: Some(e.to_string()),
                },
            }
        });
        join_all(pings).await
    }

    pub(super) async fn cluster_state(&self) -> Result<String, Error> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let info = self
            .conn()
            .route_command(redis::cmd("CLUSTER").arg("INFO").to_owned(), routing)
            .await
            .and_then(|v| Ok(redis::from_redis_value::<String>(v)?))
            .map_err(|e| self.fail("CLUSTER INFO", "cluster".into(), e))?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("cluster_state:"))
            .map(|state| state.trim().to_owned())
            .unwrap_or_else(|| "unknown".into()))
    }

    fn group_slots_by_node(&self, slots: impl Iterator<Item = u16>) -> HashMap<String, Vec<u16>> {
        let topology = self.inner.topology.load();
        let mut by_node: HashMap<String, Vec<u16>> = HashMap::new();
        for slot in slots {
            // Unknown owner: a group of its own, routed by slot.
            let node = topology
                .master_for(slot)
                .map(|m| m.to_string())
                .unwrap_or_else(|| format!("slot {slot}"));
            by_node.entry(node).or_default().push(slot);
        }
        by_node
    }
}

thread_local! {
    /// Turn counter for picking one of several connections, per thread so that picking
    /// costs no shared atomic.
    static TURN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Inner {
    /// The next data connection in turn.
    fn conn(&self) -> ClusterConnection {
        let conns = self.conns.load();
        if conns.more.is_empty() {
            return ClusterConnection::clone(&conns.first);
        }
        let turn = TURN.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % (conns.more.len() + 1)
        });
        match turn.checked_sub(1).and_then(|i| conns.more.get(i)) {
            Some(conn) => ClusterConnection::clone(conn),
            None => ClusterConnection::clone(&conns.first),
        }
    }

    async fn fetch_topology(&self) -> Result<Topology, Error> {
        let mut last_error = None;
        // A random node may be the dead one: ask up to three.
        for _ in 0..3 {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            let mut conn = self.conn();
            let reply = tokio::time::timeout(
                self.config.response_timeout,
                conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").to_owned(), routing),
            )
            .await;
            match reply {
                Ok(Ok(value)) => match Topology::from_cluster_slots(&value) {
                    Some(topology) if !topology.is_empty() => return Ok(topology),
                    _ => {
                        last_error = Some(redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "unexpected CLUSTER SLOTS reply",
                        )))
                    }
                },
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    last_error = Some(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "CLUSTER SLOTS timed out",
                    )))
                }
            }
        }
        let source = last_error
            .unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no node answered")));
        Err(Error::backend(NAME, "CLUSTER SLOTS", "cluster", source))
    }

    /// Seeds for a new connection: every node of the last map, with the credentials and
    /// settings of the first configured seed; the configured seeds while there is no map (or
    /// they are not TCP addresses). The map leaves out failed nodes, and the client connects to
    /// every seed before it reads the slot map, so a dead or hanging old master among the
    /// configured seeds would hold a reconnect after a failover for the whole connect timeout.
    fn current_seeds(&self) -> Vec<ConnectionInfo> {
        let mut seeds = Vec::new();
        if let Some(first) = self.seeds.first()
            && matches!(first.addr(), ConnectionAddr::Tcp(..))
        {
            for node in self.topology.load().nodes() {
                if let Some((host, port)) = node
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
                {
                    seeds.push(first.clone().set_addr(ConnectionAddr::Tcp(host, port)));
                }
            }
        }
        if seeds.is_empty() {
            seeds.clone_from(&self.seeds);
        }
        seeds
    }
}

/// One or more multiplexed data connections.
struct Connections {
    first: ClusterConnection,
    more: Vec<ClusterConnection>,
}

/// `config.connections` data connections (at least one).
async fn connect_all(config: &RedisConfig, seeds: &[ConnectionInfo]) -> Result<Connections, Error> {
    let first = connect(config, seeds.to_vec(), None).await?;
    let mut more = Vec::with_capacity(config.connections.saturating_sub(1));
    for _ in 1..config.connections {
        more.push(connect(config, seeds.to_vec(), None).await?);
    }
    Ok(Connections { first, more })
}

async fn connect(
    config: &RedisConfig,
    seeds: Vec<ConnectionInfo>,
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<ClusterConnection, Error> {
    let target = config.urls.join(",");
    let client = client(config, seeds, push)
        .map_err(|e| super::tls::connect_error(NAME, target.clone(), e))?;
    // The client's own connect timeout is per node; this bounds discovery as a whole.
    let bound = config
        .connect_timeout
        .saturating_mul(2)
        .max(Duration::from_secs(1));
    match tokio::time::timeout(bound, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(super::tls::connect_error(NAME, target, e)),
        Err(_) => Err(Error::backend(
            NAME,
            "connect",
            target,
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "cluster connect timed out",
            )),
        )),
    }
}

fn client(
    config: &RedisConfig,
    seeds: Vec<ConnectionInfo>,
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> redis::RedisResult<ClusterClient> {
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        // No whole-operation timer: in the `cache` benchmark the client's overall timeout cost
        // a quarter of the throughput, the per-attempt one ~4%. The bound is (retries + 1)
        // attempts of `response_timeout` plus retry waits of 10-100 ms (the client's defaults
        // start at 1.28 s).
        .overall_response_timeout(None)
        .retries(config.retries)
        .min_retry_wait(RETRY_WAIT_MIN_MS)
        .max_retry_wait(RETRY_WAIT_MAX_MS)
        .retry_wait_formula(RETRY_WAIT_MIN_MS, 2);
    if config.read_from_replicas {
        builder = builder.read_routing_strategy(RandomReplicaStrategy);
    }
    // `rediss://` seeds alone turn TLS on (with the system's roots); the files add a CA and a
    // client certificate. `connect` checked them, so an error here is a file changed since.
    #[cfg(feature = "tls-rustls")]
    if let Some(certs) = super::tls::certificates(&config.tls)
        .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?
    {
        builder = builder.certs(certs);
    }
    // Pub/sub over a cluster connection needs RESP3 push messages; the data connection stays on
    // the default protocol, like the plain client it is benchmarked against. Dropped node
    // connections are noticed through errors and the topology watcher instead of push messages.
    if let Some(push) = push {
        builder = builder
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder.build()
}

async fn subscribe_once(
    inner: &Inner,
    channel: &str,
) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>), Error> {
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let mut conn = connect(&inner.config, inner.current_seeds(), Some(push_tx)).await?;
    tokio::time::timeout(inner.config.operation_timeout, conn.ssubscribe(channel))
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "SSUBSCRIBE timed out",
            ))
        })
        .and_then(|r| r)
        .map_err(|e| Error::backend(NAME, "SSUBSCRIBE", channel.to_owned(), e))?;
    Ok((conn, push_rx))
}

/// Re-reads the topology on a timer and after errors; rebuilds the connection when it changed.
async fn watch_topology(inner: Arc<Inner>) {
    let interval = inner.config.topology_refresh_interval.max(MIN_REFRESH_GAP);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = inner.refresh_now.notified() => {}
        }
        match inner.fetch_topology().await {
            Ok(topology) => {
                let previous = inner.topology.load_full();
                if *previous != topology {
                    inner.topology.store(Arc::new(topology));
                    if !previous.is_empty() {
                        tracing::info!(masters = ?inner.topology.load().masters(), "redis cluster topology changed; reconnecting");
                        metrics::counter!(TOPOLOGY_CHANGES_TOTAL).increment(1);
                        match connect_all(&inner.config, &inner.current_seeds()).await {
                            Ok(conns) => inner.conns.store(Arc::new(conns)),
                            Err(error) => {
                                tracing::warn!(%error, "reconnect after topology change failed")
                            }
                        }
                        inner.resets.send_modify(|n| *n += 1);
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "topology refresh failed"),
        }
        tokio::time::sleep(MIN_REFRESH_GAP).await;
    }
}

/// Whether a failover (or a slot migration) explains `error`, so that the same command is
/// expected to succeed once the slot has a reachable master again: redirects, the cluster's
/// "not now" answers, a master demoted to replica or still loading, transport errors (refused,
/// reset, dropped, timed out) and no connection to the slot's node. Command errors
/// (`WRONGTYPE`, script errors, `NOPERM`, replies of the wrong type) are not.
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

/// `pause` give or take a quarter, so that callers waiting out the same failover do not retry
/// in lockstep. `seed` varies the draw between retries.
fn jittered(pause: Duration, seed: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ seed.wrapping_mul(0x9E37_79B9);
    let quarter = pause / 4;
    let offset = quarter.mul_f64(f64::from(nanos % 1024) / 1024.0 * 2.0);
    pause - quarter + offset
}

/// Resolves when `swaps` moves on (a new connection is in place); never if it cannot.
async fn swapped(swaps: &mut watch::Receiver<u64>) {
    if swaps.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The cluster's `cluster-node-timeout`, asked of any node; `None` when it cannot be read
/// (e.g. `CONFIG` is disabled, as in some managed services).
async fn node_timeout(conn: &ClusterConnection, timeout: Duration) -> Option<Duration> {
    let cmd = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-node-timeout")
        .to_owned();
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let mut conn = conn.clone();
    let reply = tokio::time::timeout(timeout, conn.route_command(cmd, routing))
        .await
        .ok()?
        .ok()?;
    // RESP2: ["cluster-node-timeout", "15000"]; RESP3: a map.
    let value = match reply {
        Value::Array(items) => items.into_iter().nth(1)?,
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        _ => return None,
    };
    let ms: u64 = redis::from_redis_value::<String>(value)
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// Key indices grouped by hash slot.
fn group_by_slot(keys: &[String]) -> BTreeMap<u16, Vec<usize>> {
    let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        by_slot.entry(key_slot(key.as_bytes())).or_default().push(i);
    }
    by_slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_a_failover_explains_are_waited_out() {
        let io = |kind| RedisError::from(std::io::Error::new(kind, "x"));
        let server = |kind, text| RedisError::from((ErrorKind::Server(kind), text));
        for error in [
            server(ServerErrorKind::Moved, "MOVED"),
            server(ServerErrorKind::Ask, "ASK"),
            server(ServerErrorKind::TryAgain, "TRYAGAIN"),
            server(ServerErrorKind::ClusterDown, "CLUSTERDOWN"),
            server(ServerErrorKind::MasterDown, "MASTERDOWN"),
            server(ServerErrorKind::ReadOnly, "READONLY"),
            server(ServerErrorKind::BusyLoading, "LOADING"),
            RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection")),
            io(std::io::ErrorKind::ConnectionRefused),
            io(std::io::ErrorKind::ConnectionReset),
            io(std::io::ErrorKind::TimedOut),
        ] {
            assert!(failover_explained(&error), "{error:?}");
        }
        for error in [
            redis::make_extension_error("WRONGTYPE".into(), Some("wrong kind".into())),
            server(ServerErrorKind::ResponseError, "script"),
            server(ServerErrorKind::NoPerm, "NOPERM"),
            RedisError::from((ErrorKind::UnexpectedReturnType, "bad reply")),
            RedisError::from((ErrorKind::Parse, "garbage")),
        ] {
            assert!(!failover_explained(&error), "{error:?}");
        }
    }

    #[test]
    fn default_failover_wait_and_pauses() {
        assert_eq!(
            failover_wait_for(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert_eq!(
            failover_wait_for(DEFAULT_CLUSTER_NODE_TIMEOUT),
            Duration::from_millis(25_500)
        );
        for seed in 0..50 {
            let pause = jittered(Duration::from_millis(100), seed);
            assert!(pause >= Duration::from_millis(75) && pause <= Duration::from_millis(125));
        }
    }
}
