//! Where values live: Redis Cluster, one standalone Redis, or process memory, behind one API.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::RedisConfig;
use crate::error::Error;

mod cluster;
mod memory;
mod standalone;
mod tls;
mod topology;

pub use cluster::ClusterBackend;
pub use memory::MemoryBackend;
pub use standalone::RedisBackend;

/// Something a subscription delivers.
#[derive(Debug)]
pub(crate) enum PubSubEvent {
    /// A published payload.
    Message(Vec<u8>),
    /// The subscription was interrupted: messages may have been missed.
    Interrupted,
}

/// Health of one backend node, for health checks.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    /// `host:port`, or `"memory"`.
    pub node: String,
    /// Round trip of `PING`, when it answered.
    pub latency: Option<Duration>,
    /// The error when it did not.
    pub error: Option<String>,
}

/// The backend of a [`Cache`](crate::Cache): Redis Cluster, standalone Redis or in-memory.
///
/// Cloning is cheap and shares connections (and, for [`MemoryBackend`], the data), so several
/// `Cache` instances over one backend behave like several application instances over one Redis.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A Redis Cluster.
    Cluster(ClusterBackend),
    /// One standalone Redis server.
    Redis(RedisBackend),
    /// Process memory, for development and tests without Redis.
    Memory(MemoryBackend),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Cluster($b) => $e,
            Backend::Redis($b) => $e,
            Backend::Memory($b) => $e,
        }
    };
}

impl Backend {
    /// Connects to a Redis Cluster; see [`ClusterBackend::connect`].
    pub async fn cluster(config: RedisConfig) -> Result<Self, Error> {
        ClusterBackend::connect(config).await.map(Self::Cluster)
    }

    /// Connects to one standalone Redis; see [`RedisBackend::connect`].
    pub async fn redis(config: RedisConfig) -> Result<Self, Error> {
        RedisBackend::connect(config).await.map(Self::Redis)
    }

    /// An empty in-memory backend.
    pub fn memory() -> Self {
        Self::Memory(MemoryBackend::new())
    }

    /// `"redis-cluster"`, `"redis"` or `"memory"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cluster(_) => cluster::NAME,
            Self::Redis(_) => standalone::NAME,
            Self::Memory(_) => memory::NAME,
        }
    }

    /// The shard (cluster master) serving `key`, so failures can be tracked per shard; `None`
    /// outside a cluster or before the topology is known.
    pub(crate) fn shard_of(&self, key: &str) -> Option<u64> {
        match self {
            Self::Cluster(b) => b.shard_of(key),
            Self::Redis(_) | Self::Memory(_) => None,
        }
    }

    /// The hash slot of `key` in a cluster; `None` elsewhere.
    pub(crate) fn slot_of(&self, key: &str) -> Option<u16> {
        match self {
            Self::Cluster(_) => Some(crate::slot::key_slot(key.as_bytes())),
            Self::Redis(_) | Self::Memory(_) => None,
        }
    }

    /// [`shard_of`](Self::shard_of) for a slot from [`slot_of`](Self::slot_of).
    pub(crate) fn shard_of_slot(&self, slot: Option<u16>) -> Option<u64> {
        match (self, slot) {
            (Self::Cluster(b), Some(slot)) => b.shard_of_slot(slot),
            _ => None,
        }
    }

    /// The node (`host:port`) serving `slot` in a cluster, when the topology is known; for spans.
    pub(crate) fn node_of_slot(&self, slot: Option<u16>) -> Option<std::sync::Arc<str>> {
        match (self, slot) {
            (Self::Cluster(b), Some(slot)) => b.node_of_slot(slot),
            _ => None,
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get_in_slot(key, self.slot_of(key)).await
    }

    /// [`get`](Self::get) with `key`'s slot from [`slot_of`](Self::slot_of), so the hot read
    /// path hashes the key once for the circuit and the routing.
    pub(crate) async fn get_in_slot(
        &self,
        key: &str,
        slot: Option<u16>,
    ) -> Result<Option<Vec<u8>>, Error> {
        match (self, slot) {
            (Self::Cluster(b), Some(slot)) => b.get(key, slot).await,
            (Self::Cluster(b), None) => b.get(key, crate::slot::key_slot(key.as_bytes())).await,
            (Self::Redis(b), _) => b.get(key).await,
            (Self::Memory(b), _) => b.get(key).await,
        }
    }

    pub(crate) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
        dispatch!(self, b => b.set(key, value, ttl).await)
    }

    /// `SET key value NX PX ttl`: `true` when the key was set.
    pub(crate) async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        dispatch!(self, b => b.set_nx(key, value, ttl).await)
    }

    /// Deletes `key` only when it still holds `value` (lock release).
    pub(crate) async fn delete_if_equals(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        dispatch!(self, b => b.delete_if_equals(key, value).await)
    }

    pub(crate) async fn delete(&self, keys: &[String]) -> Result<u64, Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        dispatch!(self, b => b.delete(keys).await)
    }

    /// Values of `keys`, in order.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, b => b.get_many(keys).await)
    }

    pub(crate) async fn set_many(
        &self,
        items: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        dispatch!(self, b => b.set_many(items, ttl).await)
    }

    /// Adds `members` to the set `tag_key` and makes it live at least `ttl`.
    pub(crate) async fn tag_add(
        &self,
        tag_key: &str,
        members: &[String],
        ttl: Duration,
    ) -> Result<(), Error> {
        dispatch!(self, b => b.tag_add(tag_key, members, ttl).await)
    }

    pub(crate) async fn tag_members(&self, tag_key: &str) -> Result<Vec<String>, Error> {
        dispatch!(self, b => b.tag_members(tag_key).await)
    }

    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), Error> {
        dispatch!(self, b => b.publish(channel, payload).await)
    }

    /// Subscribes to `channel` on a connection of its own.
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<mpsc::UnboundedReceiver<PubSubEvent>, Error> {
        dispatch!(self, b => b.subscribe(channel).await)
    }

    /// A counter that increases whenever connections or the topology were reset (failover,
    /// resharding, reconnect), after which locally cached values may be out of date.
    pub(crate) fn resets(&self) -> watch::Receiver<u64> {
        dispatch!(self, b => b.resets())
    }

    /// `PING` every master (cluster) or the server, with latencies.
    pub async fn ping_nodes(&self) -> Vec<NodeHealth> {
        dispatch!(self, b => b.ping_nodes().await)
    }

    /// `CLUSTER INFO`'s `cluster_state` (`"ok"`/`"fail"`); `None` outside a cluster.
    pub async fn cluster_state(&self) -> Result<Option<String>, Error> {
        match self {
            Self::Cluster(b) => b.cluster_state().await.map(Some),
            Self::Redis(_) | Self::Memory(_) => Ok(None),
        }
    }
}

pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    // Redis rejects PX 0; a zero TTL still means "expire right away".
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Lua for the lock release: delete only if we still own the lock.
pub(crate) const DELETE_IF_EQUALS: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
