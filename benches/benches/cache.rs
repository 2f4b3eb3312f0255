//! herd-cache-cluster: 64 concurrent tasks reading one 100-byte value from a testkit Redis
//! Cluster (3 masters + 3 replicas on this machine), herd's `Cache::get` (no L1, so every read
//! goes to Redis) next to the anchor, the raw `redis` crate cluster connection. Also: the raw
//! client over 4 connections (each task on one of them), herd with `RedisConfig::connections = 4` (its own round robin over 4 multiplexed
//! connections), to see whether more connections pay, and `Cache::get` answered by the L1.
//!
//! Group `cache_connections`: how to share N = 4 multiplexed cluster connections among 64
//! tasks, on the raw client: round robin per GET (what herd's `RedisConfig::connections` does)
//! against a deadpool managed pool of the same 4, used as pools are (each GET checks a
//! connection out and returns it), and as a picker only (check out, clone the multiplexed
//! handle, return it at once, then send the GET).
//!
//! One iteration of the concurrent benches is 64 GETs in flight at once (throughput is per GET).
//!
//! Run with: `cargo bench -p herd-benches --bench cache`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deadpool::managed;
use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_testkit::RedisCluster;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::runtime::Runtime;

const TASKS: u64 = 64;
/// Connections shared by the tasks in `cache_connections`.
const CONNECTIONS: usize = 4;
/// herd's key (stored as `bench:v1:k:{bench}value`) and the raw client's key share the hash tag
/// `{bench}`, so both read from the same master.
const KEY: &str = "{bench}value";
const RAW_KEY: &str = "{bench}raw";

/// Runs `TASKS` tasks that each call `get` `iters` times; returns the wall time.
async fn concurrent<F, Fut>(iters: u64, get: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let get = get.clone();
            tokio::spawn(async move {
                let mut bytes = 0;
                for _ in 0..iters {
                    bytes += get(task).await;
                }
                bytes
            })
        })
        .collect();
    for task in tasks {
        black_box(task.await.expect("bench task"));
    }
    start.elapsed()
}

async fn raw_get(mut conn: ClusterConnection, key: &str) -> usize {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("raw GET");
    value.map_or(0, |v| v.len())
}

/// Cluster connections for a deadpool managed pool: created on demand, kept as they are (a
/// multiplexed connection reconnects by itself).
struct ClusterManager(ClusterClient);

impl managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<ClusterConnection, redis::RedisError> {
        self.0.get_async_connection().await
    }

    async fn recycle(
        &self,
        _: &mut ClusterConnection,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<redis::RedisError> {
        Ok(())
    }
}

/// `CONNECTIONS` connections used in turn, one per GET.
struct RoundRobin {
    conns: Vec<ClusterConnection>,
    turn: AtomicUsize,
}

impl RoundRobin {
    fn next(&self) -> ClusterConnection {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        self.conns[turn % self.conns.len()].clone()
    }
}

/// herd's `Cache` on `cluster` without an L1 (every read goes to Redis), over `connections`
/// multiplexed cluster connections.
async fn herd_without_l1(cluster: &RedisCluster, connections: usize) -> Cache {
    let backend = Backend::cluster(RedisConfig {
        connections,
        ..RedisConfig::new(cluster.urls())
    })
    .await
    .expect("herd backend");
    Cache::builder(backend)
        .config(CacheConfig {
            namespace: "bench".into(),
            ..CacheConfig::default()
        })
        .without_l1()
        .build()
        .await
        .expect("herd cache")
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let (cluster, herd, herd_4, herd_l1, raw, raw_pool) = rt.block_on(async {
        let cluster = RedisCluster::start().await.expect("testkit redis cluster");
        let value = vec![7u8; 100];

        let herd = herd_without_l1(&cluster, 1).await;
        herd.set(KEY, &value, Duration::from_secs(3600))
            .await
            .expect("herd set");
        let herd_4 = herd_without_l1(&cluster, 4).await;

        let herd_l1 = Cache::builder(Backend::memory())
            .namespace("bench")
            .build()
            .await
            .expect("herd l1 cache");
        herd_l1
            .set(KEY, &value, Duration::from_secs(3600))
            .await
            .expect("l1 set");

        let client = ClusterClient::new(cluster.urls()).expect("raw client");
        let raw = client.get_async_connection().await.expect("raw connection");
        let () = redis::cmd("SET")
            .arg(RAW_KEY)
            .arg(&value)
            .query_async(&mut raw.clone())
            .await
            .expect("raw set");
        let mut pool = Vec::new();
        for _ in 0..4 {
            pool.push(
                client
                    .get_async_connection()
                    .await
                    .expect("pooled connection"),
            );
        }
        (cluster, herd, herd_4, herd_l1, raw, Arc::new(pool))
    });

    let mut group = c.benchmark_group("cache_get");
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("redis_rs_cluster", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            concurrent(iters, move |_| raw_get(raw.clone(), RAW_KEY))
        });
    });
    group.bench_function("herd_cluster", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let herd = herd.clone();
            concurrent(iters, move |_| {
                let herd = herd.clone();
                async move { herd.get::<Vec<u8>>(KEY).await.map_or(0, |v| v.len()) }
            })
        });
    });
    group.bench_function("herd_cluster_4_connections", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let herd = herd_4.clone();
            concurrent(iters, move |_| {
                let herd = herd.clone();
                async move { herd.get::<Vec<u8>>(KEY).await.map_or(0, |v| v.len()) }
            })
        });
    });
    group.bench_function("redis_rs_cluster_4_connections", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let pool = Arc::clone(&raw_pool);
            concurrent(iters, move |task| {
                let conn = pool[(task % 4) as usize].clone();
                raw_get(conn, RAW_KEY)
            })
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("herd_l1_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(herd_l1.get::<Vec<u8>>(black_box(KEY)).await) });
    });
    group.finish();

    let (round_robin, pool) = rt.block_on(async {
        let client = ClusterClient::new(cluster.urls()).expect("raw client");
        let mut conns = Vec::new();
        for _ in 0..CONNECTIONS {
            conns.push(client.get_async_connection().await.expect("connection"));
        }
        let round_robin = Arc::new(RoundRobin {
            conns,
            turn: AtomicUsize::new(0),
        });
        let pool: managed::Pool<ClusterManager> = managed::Pool::builder(ClusterManager(client))
            .max_size(CONNECTIONS)
            .build()
            .expect("deadpool");
        // All of them connected before the timed runs.
        let mut warm = Vec::new();
        for _ in 0..CONNECTIONS {
            warm.push(pool.get().await.expect("pooled connection"));
        }
        drop(warm);
        (round_robin, pool)
    });
    let mut group = c.benchmark_group("cache_connections");
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("round_robin_4", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let round_robin = Arc::clone(&round_robin);
            concurrent(iters, move |_| raw_get(round_robin.next(), RAW_KEY))
        });
    });
    group.bench_function("deadpool_4", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let pool = pool.clone();
            concurrent(iters, move |_| {
                let pool = pool.clone();
                async move {
                    // Checked out for the command, as a pool is used: at most 4 in flight.
                    let mut conn = pool.get().await.expect("pooled connection");
                    let value: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(RAW_KEY)
                        .query_async(&mut *conn)
                        .await
                        .expect("pooled GET");
                    value.map_or(0, |v| v.len())
                }
            })
        });
    });
    group.bench_function("deadpool_4_as_picker", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let pool = pool.clone();
            concurrent(iters, move |_| {
                let pool = pool.clone();
                async move {
                    // Checked out only to pick one; the multiplexed handle is shared.
                    let conn = ClusterConnection::clone(&*pool.get().await.expect("pooled"));
                    raw_get(conn, RAW_KEY).await
                }
            })
        });
    });
    group.finish();
    drop(cluster);
}

criterion_group!(benches, bench);
criterion_main!(benches);
