//! Topologies shared by all tests of one test binary, started on first use.
//!
//! Starting a cluster takes seconds; tests that only read and write data (no fault operations) can
//! share one. Statics are never dropped, so these are cleaned up by the topology's watchdog process
//! when the test binary exits. Tests that stop, kill, pause or promote nodes must start their own.
//!
//! The servers are plain processes, not tied to any tokio runtime, so every `#[tokio::test]` (each
//! with its own runtime) can use them; open your own connections per test.

use tokio::sync::OnceCell;

use crate::{PgCluster, RedisCluster, RedisServer, Result};

static PG: OnceCell<PgCluster> = OnceCell::const_new();
static REDIS_CLUSTER: OnceCell<RedisCluster> = OnceCell::const_new();
static REDIS: OnceCell<RedisServer> = OnceCell::const_new();

/// A PostgreSQL primary with 2 streaming replicas, shared by this test binary. Read-mostly use only.
///
/// # Errors
/// As [`PgCluster::start`]; a failed start is retried by the next caller.
pub async fn pg() -> Result<&'static PgCluster> {
    PG.get_or_try_init(|| PgCluster::start(2)).await
}

/// A 3-master, 3-replica Redis Cluster shared by this test binary. No fault operations on it.
///
/// # Errors
/// As [`RedisCluster::start`].
pub async fn redis_cluster() -> Result<&'static RedisCluster> {
    REDIS_CLUSTER.get_or_try_init(RedisCluster::start).await
}

/// A standalone Redis shared by this test binary. No fault operations on it.
///
/// # Errors
/// As [`RedisServer::start`].
pub async fn redis() -> Result<&'static RedisServer> {
    REDIS.get_or_try_init(RedisServer::start).await
}
