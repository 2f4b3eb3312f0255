//! Redis Cluster through the `redis` crate's async cluster client, plus what it lacks: a timer
//! and error driven topology re-read that rebuilds the connection after a failover, and slot
//! grouping for multi-key operations.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::{join_all, try_join_all};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
};
use tokio::sync::{Notify, mpsc, watch};

use super::topology::Topology;
use super::{DELETE_IF_EQUALS, NodeHealth, PubSubEvent, ttl_ms};
use crate::config::RedisConfig;
use crate::error::Error;
use crate::slot::key_slot;
use crate::task::AbortOnDrop;

pub(super) const NAME: &str = "redis-cluster";

/// Bounds of the wait before a cluster command is retried, in milliseconds.
const RETRY_WAIT_MIN_MS: u64 = 10;
const RETRY_WAIT_MAX_MS: u64 = 100;

/// Least time between two topology reads, however many errors ask for one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

static DELETE_IF_EQUALS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(DELETE_IF_EQUALS));

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
    ///
    /// # Errors
    /// [`Error::Config`] for no or unparsable URLs, [`Error::Backend`] when no seed answers.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        if config.urls.is_empty() {
            return Err(Error::Config {
                field: "urls",
                reason: "at least one seed node is required".into(),
            });
        }
        let seeds = config
            .urls
            .iter()
            .map(|url| {
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| Error::Config {
                        field: "urls",
                        reason: format!("{url}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if config.connections == 0 {
            return Err(Error::Config {
                field: "connections",
                reason: "at least one connection is required".into(),
            });
        }
        let conns = connect_all(&config, &seeds).await?;
        let (resets, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            config,
            seeds,
            conns: ArcSwap::from_pointee(conns),
            topology: ArcSwap::from_pointee(Topology::default()),
            refresh_now: Notify::new(),
            resets,
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
        let mut cmd = redis::Cmd::with_capacity(2, 3 + key.len());
        cmd.arg("GET").arg(key);
        let route = Route::new(slot, self.read_addr());
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        self.conn()
            .route_command(cmd, routing)
            .await
            .and_then(|value| Ok(redis::from_redis_value(value.extract_error()?)?))
            .map_err(|e| self.fail("GET", self.target(key), e))
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.fail("SET", self.target(key), e))
    }

    pub(super) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async::<Option<String>>(&mut self.conn())
            .await
            .map(|reply| reply.is_some())
            .map_err(|e| self.fail("SET NX", self.target(key), e))
    }

    pub(super) async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        DELETE_IF_EQUALS_SCRIPT
            .key(key)
            .arg(value)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map(|n| n > 0)
            .map_err(|e| self.fail("EVAL delete-if-equals", self.target(key), e))
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
            let mut conn = self.conn();
            async move {
                cmd.query_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| self.fail("DEL", self.target(&first), e))
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
            let mut conn = self.conn();
            async move {
                cmd.query_async(&mut conn)
                    .await
                    .map_err(|e| self.fail("MGET", self.target(&first), e))
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
        redis::pipe()
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
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.fail("SADD tag", self.target(tag_key), e))
    }

    pub(super) async fn tag_members(&self, tag_key: &str) -> Result<Vec<String>, Error> {
        redis::cmd("SMEMBERS")
            .arg(tag_key)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("SMEMBERS", self.target(tag_key), e))
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

    /// Seeds for a new connection: the configured ones plus every node of the last map, with the
    /// credentials and settings of the first seed.
    fn current_seeds(&self) -> Vec<ConnectionInfo> {
        let mut seeds = self.seeds.clone();
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
        .map_err(|e| Error::backend(NAME, "connect", target.clone(), e))?;
    // The client's own connect timeout is per node; this bounds discovery as a whole.
    let bound = config
        .connect_timeout
        .saturating_mul(2)
        .max(Duration::from_secs(1));
    match tokio::time::timeout(bound, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::backend(NAME, "connect", target, e)),
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
                        metrics::counter!("herd_cache_topology_changes_total").increment(1);
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

/// Key indices grouped by hash slot.
fn group_by_slot(keys: &[String]) -> BTreeMap<u16, Vec<usize>> {
    let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        by_slot.entry(key_slot(key.as_bytes())).or_default().push(i);
    }
    by_slot
}
