//! Where the back ends are: from the environment, or a throwaway local topology started with
//! herd-testkit from the machine's own PostgreSQL and Redis binaries.

use herd_testkit::{PgCluster, RedisCluster};

/// The Redis the instances share for sessions and the cache.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// Seed nodes of a Redis Cluster (`REDIS_CLUSTER_NODES`, comma-separated `redis://` URLs).
    Cluster(Vec<String>),
    /// A standalone Redis (`REDIS_URL`).
    Standalone(String),
}

/// The addresses of the shared back ends, and the local servers when this process started them.
#[derive(Debug)]
pub struct Topology {
    /// The PostgreSQL primary.
    pub database_url: String,
    /// The streaming replicas.
    pub replica_urls: Vec<String>,
    /// Sessions and cache.
    pub redis: RedisTarget,
    /// Present when started here: dropped (stopped and removed) with the topology.
    pub local_pg: Option<PgCluster>,
    /// Present when started here.
    pub local_redis: Option<RedisCluster>,
}

/// Why the back ends could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// `DATABASE_URL` was set without a Redis address, or the other way round.
    #[error("{0}")]
    Incomplete(&'static str),
    /// Starting the local servers failed (the message names the missing program and its package).
    #[error("could not start the local topology: {0}")]
    Local(#[from] herd_testkit::Error),
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Topology {
    /// Reads `DATABASE_URL`, `REPLICA_URLS` and `REDIS_CLUSTER_NODES` (or `REDIS_URL`) when set;
    /// otherwise starts a PostgreSQL primary with `replicas` streaming replicas and a 6-node Redis
    /// Cluster on free loopback ports, calling `progress` as each part is up.
    ///
    /// # Errors
    /// A half-set environment, or a local start failure (e.g. PostgreSQL not installed).
    pub async fn from_env_or_start(
        replicas: usize,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Topology, TopologyError> {
        let redis = env("REDIS_CLUSTER_NODES")
            .map(|v| RedisTarget::Cluster(list(&v)))
            .or_else(|| env("REDIS_URL").map(RedisTarget::Standalone));
        match (env("DATABASE_URL"), redis) {
            (Some(database_url), Some(redis)) => Ok(Topology {
                database_url,
                replica_urls: env("REPLICA_URLS").map(|v| list(&v)).unwrap_or_default(),
                redis,
                local_pg: None,
                local_redis: None,
            }),
            (None, None) => Self::start_local_with(replicas, progress).await,
            (Some(_), None) => Err(TopologyError::Incomplete(
                "DATABASE_URL is set but neither REDIS_CLUSTER_NODES nor REDIS_URL is: set both, or neither to start a local topology",
            )),
            (None, Some(_)) => Err(TopologyError::Incomplete(
                "a Redis address is set but DATABASE_URL is not: set both, or neither to start a local topology",
            )),
        }
    }

    /// Starts a local PostgreSQL primary + `replicas` replicas and a 6-node Redis Cluster.
    ///
    /// # Errors
    /// When the servers cannot be started (the error names what to install).
    pub async fn start_local(replicas: usize) -> Result<Topology, TopologyError> {
        Self::start_local_with(replicas, &|_| {}).await
    }

    /// [`start_local`](Self::start_local), calling `progress` with a line as each part is up.
    ///
    /// # Errors
    /// When the servers cannot be started (the error names what to install).
    pub async fn start_local_with(
        replicas: usize,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<Topology, TopologyError> {
        // Both start at once. The first failure (e.g. PostgreSQL not installed) ends both;
        // whatever the other had started is stopped when its future is dropped.
        let pg = async {
            let pg = PgCluster::start(replicas).await?;
            progress(format!("PostgreSQL primary   {}", pg.primary_url()));
            for url in pg.replica_urls() {
                progress(format!("PostgreSQL replica   {url} (streaming)"));
            }
            Ok::<_, herd_testkit::Error>(pg)
        };
        let redis = async {
            let redis = RedisCluster::start().await?;
            progress(format!(
                "Redis Cluster        {} nodes from {}",
                redis.nodes().len(),
                redis.urls().first().map_or("", String::as_str)
            ));
            Ok::<_, herd_testkit::Error>(redis)
        };
        let (pg, redis) = tokio::try_join!(pg, redis)?;
        Ok(Topology {
            database_url: pg.primary_url(),
            replica_urls: pg.replica_urls(),
            redis: RedisTarget::Cluster(redis.urls()),
            local_pg: Some(pg),
            local_redis: Some(redis),
        })
    }
}
