//! herd-cache-cluster: 64 concurrent tasks reading one 100-byte value from a testkit Redis
//! Cluster (3 masters + 3 replicas on this machine), herd's `Cache::get` (no L1, so every read
//! goes to Redis) next to the anchor, the raw `redis` crate cluster connection. Also: the raw
//! client over 4 connections round-robin (what a deadpool of cluster connections would give),
//! herd with `RedisConfig::connections = 4` (its own round robin over 4 multiplexed
//! connections), to see whether more connections pay, and `Cache::get` answered by the L1.
//!
//! One iteration of the concurrent benches is 64 GETs in flight at once (throughput is per GET).
//!
//! Run with: `cargo bench -p herd-benches --bench cache`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_testkit::RedisCluster;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::runtime::Runtime;

const TASKS: u64 = 64;
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
    drop(cluster);
}

criterion_group!(benches, bench);
criterion_main!(benches);
