//! Against a real 6-node Redis Cluster from herd-testkit (shared, read-mostly: no faults here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herd_cache_cluster::{Backend, Cache, CacheConfig, LockConfig, RedisConfig};
use herd_testkit::shared;

async fn backend() -> Backend {
    let rc = shared::redis_cluster()
        .await
        .expect("testkit redis cluster");
    Backend::cluster(RedisConfig::new(rc.urls()))
        .await
        .expect("connect to the cluster")
}

/// A namespace per test, so tests sharing the cluster do not see each other's keys.
fn config(namespace: &str) -> CacheConfig {
    CacheConfig {
        namespace: namespace.to_owned(),
        ..CacheConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_all_masters_and_get_many_crosses_slots() {
    let rc = shared::redis_cluster().await.unwrap();
    let cache = Cache::builder(backend().await)
        .config(config("spread"))
        .without_l1()
        .build()
        .await
        .unwrap();

    let items: Vec<(String, u32)> = (0..200).map(|i| (format!("item:{i}"), i)).collect();
    cache
        .set_many(&items, Duration::from_secs(60))
        .await
        .unwrap();
    cache
        .set("single", &"one value".to_string(), Duration::from_secs(60))
        .await
        .unwrap();

    // Every master holds some of the keys.
    let masters = rc.masters().await.unwrap();
    assert_eq!(masters.len(), 3);
    for master in masters {
        let client = redis::Client::open(master.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("spread:v1:k:item:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            keys.len() > 20,
            "master {} holds only {} keys",
            master.addr(),
            keys.len()
        );
    }

    // get_many over many slots (and nodes), with misses in between, keeps the order.
    let mut keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(50, "missing:a".into());
    keys.push("missing:b".into());
    let values: Vec<Option<u32>> = cache.get_many(&keys).await;
    assert_eq!(values.len(), keys.len());
    for (key, value) in keys.iter().zip(&values) {
        match key.strip_prefix("item:") {
            Some(i) => assert_eq!(*value, Some(i.parse().unwrap()), "{key}"),
            None => assert_eq!(*value, None, "{key}"),
        }
    }
    assert_eq!(
        cache.get::<String>("single").await.as_deref(),
        Some("one value")
    );

    cache.delete("item:7").await.unwrap();
    assert_eq!(cache.get::<u32>("item:7").await, None);
    let stats = cache.stats();
    assert_eq!(stats.l2_hits, 200 + 1);
    assert_eq!(stats.misses, 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_get_or_load_call_the_loader_once() {
    let cache = Cache::builder(backend().await)
        .config(config("flight"))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("report", Duration::from_secs(60), move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, std::io::Error>(Some(vec![1u8, 2, 3]))
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Some(vec![1, 2, 3]));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A loader error reaches every waiter and is not cached.
    let failing: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load::<u32, _, _, _>("flaky", Duration::from_secs(60), || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(std::io::Error::other("database down"))
                    })
                    .await
            })
        })
        .collect();
    for task in failing {
        let error = task.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("database down"), "{error}");
        assert!(error.to_string().contains("flaky"), "{error}");
    }
    let value = cache
        .get_or_load("flaky", Duration::from_secs(60), || async {
            Ok::<_, std::io::Error>(Some(5u32))
        })
        .await;
    assert_eq!(value.unwrap(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_lock_make_one_load() {
    let backend = backend().await;
    let mut instances = Vec::new();
    for _ in 0..3 {
        let config = CacheConfig {
            lock: Some(LockConfig {
                ttl: Duration::from_secs(5),
                wait: Duration::from_secs(3),
                poll_interval: Duration::from_millis(10),
            }),
            ..config("locked")
        };
        // Separate connections per instance, as separate processes would have.
        let own_backend = match &backend {
            Backend::Cluster(_) => crate::backend().await,
            other => other.clone(),
        };
        instances.push(Cache::new(own_backend, config).await.unwrap());
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for cache in &instances {
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = Arc::clone(&calls);
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("catalog", Duration::from_secs(60), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(Some("catalog v1".to_string()))
                    })
                    .await
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().as_deref(), Some("catalog v1"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load across three instances"
    );
    // The lock was released (compare-and-delete), not left to expire.
    let rc = shared::redis_cluster().await.unwrap();
    let client = redis::cluster::ClusterClient::new(rc.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let lock: Option<String> = redis::cmd("GET")
        .arg("locked:v1:l:catalog")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lock, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_invalidation_reaches_another_instance_within_100ms() {
    let a = Cache::new(backend().await, config("coherent"))
        .await
        .unwrap();
    let b = Cache::new(backend().await, config("coherent"))
        .await
        .unwrap();
    for round in 0..5u32 {
        let key = format!("profile:{round}");
        a.set(&key, &round, Duration::from_secs(60)).await.unwrap();
        // b reads it from Redis into its L1. The invalidation a published for this write may
        // reach b before or after that read; either way b keeps the value (issue #19: when it
        // came after, it evicted the entry just loaded and this test failed).
        assert_eq!(b.get::<u32>(&key).await, Some(round));
        let l1_hits = b.stats().l1_hits;
        assert_eq!(b.get::<u32>(&key).await, Some(round));
        assert_eq!(
            b.stats().l1_hits,
            l1_hits + 1,
            "b's second read is an L1 hit"
        );

        let changed = Instant::now();
        a.set(&key, &(round + 100), Duration::from_secs(60))
            .await
            .unwrap();
        loop {
            if b.get::<u32>(&key).await == Some(round + 100) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_millis(100),
                "b still serves the old value after 100 ms"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "round {round}: invalidation seen by the other instance after {:?}",
            changed.elapsed()
        );

        let deleted = Instant::now();
        a.delete(&key).await.unwrap();
        while b.get::<u32>(&key).await.is_some() {
            assert!(
                deleted.elapsed() < Duration::from_millis(100),
                "b still serves a deleted value after 100 ms"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // Tags: invalidate_tag removes the tagged keys here, in Redis and in b's L1.
    a.set_with_tags("p:1", &1u32, Duration::from_secs(60), &["products"])
        .await
        .unwrap();
    a.set_with_tags(
        "p:2",
        &2u32,
        Duration::from_secs(60),
        &["products", "featured"],
    )
    .await
    .unwrap();
    a.set_with_tags("u:1", &3u32, Duration::from_secs(60), &["users"])
        .await
        .unwrap();
    assert_eq!(b.get::<u32>("p:1").await, Some(1));
    assert_eq!(b.get::<u32>("p:2").await, Some(2));
    let started = Instant::now();
    assert_eq!(a.invalidate_tag("products").await.unwrap(), 2);
    while b.get::<u32>("p:1").await.is_some() || b.get::<u32>("p:2").await.is_some() {
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "tag invalidation not seen after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(a.get::<u32>("u:1").await, Some(3));
    assert_eq!(a.invalidate_tag("products").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_values_are_misses() {
    let rc = shared::redis_cluster().await.unwrap();
    let cache = Cache::new(backend().await, config("corrupt"))
        .await
        .unwrap();
    let client = redis::cluster::ClusterClient::new(rc.urls()).unwrap();
    let mut raw = client.get_async_connection().await.unwrap();

    cache
        .set("good", &"fine".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    let good: Vec<u8> = redis::cmd("GET")
        .arg(cache.backend_key("good"))
        .query_async(&mut raw)
        .await
        .unwrap();

    let foreign: &[&[u8]] = &[
        b"plain text another app wrote",
        b"",
        &good[..good.len() - 2],
        b"HC\x09\x00garbage-version",
    ];
    for (i, bytes) in foreign.iter().enumerate() {
        let key = format!("bad:{i}");
        let () = redis::cmd("SET")
            .arg(cache.backend_key(&key))
            .arg(*bytes)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(cache.get::<String>(&key).await, None, "value {i}");
        // get_or_load treats it as a miss, loads, and overwrites it.
        let loaded = cache
            .get_or_load(&key, Duration::from_secs(60), || async {
                Ok::<_, std::io::Error>(Some("reloaded".to_string()))
            })
            .await
            .unwrap();
        assert_eq!(loaded.as_deref(), Some("reloaded"));
    }
    // Our own bytes read as another type are a miss too.
    assert_eq!(cache.get::<Vec<String>>("good").await, None);
    let stats = cache.stats();
    assert_eq!(stats.errors, 4 * 2 + 1, "{stats:?}");
    assert_eq!(stats.loads, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_caching_and_stale_while_revalidate() {
    let config = CacheConfig {
        negative_ttl: Some(Duration::from_secs(30)),
        stale_ttl: Duration::from_secs(30),
        early_refresh_beta: 0.0,
        l1: None,
        ..config("swr")
    };
    let cache = Cache::new(backend().await, config).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    for _ in 0..3 {
        let calls = Arc::clone(&calls);
        let value = cache
            .get_or_load::<u32, _, _, _>("absent", Duration::from_secs(60), move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(None)
            })
            .await
            .unwrap();
        assert_eq!(value, None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "None was cached");

    let version = Arc::new(AtomicUsize::new(0));
    let load = |version: Arc<AtomicUsize>| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(Some(version.fetch_add(1, Ordering::SeqCst) as u32))
        }
    };
    let ttl = Duration::from_millis(300);
    assert_eq!(
        cache
            .get_or_load("swr", ttl, load(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(0)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Stale: served at once while one background load replaces it.
    let started = Instant::now();
    assert_eq!(
        cache
            .get_or_load("swr", ttl, load(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        cache
            .get_or_load("swr", ttl, load(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(0)
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "stale answers do not wait for the loader"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        cache
            .get_or_load("swr", ttl, load(Arc::clone(&version)))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(version.load(Ordering::SeqCst), 2, "one background refresh");
    assert!(cache.stats().stale >= 2);
}

#[cfg(feature = "health")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_pings_every_master() {
    use herd_health::{HealthCheck, Status};
    let cache = Cache::new(backend().await, config("health")).await.unwrap();
    cache.set("x", &1u8, Duration::from_secs(10)).await.unwrap();
    let _ = cache.get::<u8>("x").await;
    let result = cache.health_check().check().await;
    assert_eq!(result.status(), Status::Pass, "{result:?}");
    let nodes: std::collections::HashSet<_> = result
        .measurements()
        .iter()
        .filter(|m| m.name == "responseTime")
        .filter_map(|m| m.component_id.clone())
        .collect();
    assert_eq!(nodes.len(), 3, "{result:?}");
    assert!(
        result
            .measurements()
            .iter()
            .any(|m| m.name == "clusterState" && m.observed_value == Some("ok".into()))
    );
    assert!(result.measurements().iter().any(|m| m.name == "hitRatio"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_serve_every_slot_and_zero_is_refused() {
    let rc = shared::redis_cluster().await.unwrap();
    let zero = RedisConfig {
        connections: 0,
        ..RedisConfig::new(rc.urls())
    };
    match Backend::cluster(zero).await {
        Err(herd_cache_cluster::Error::InvalidConfig { field, .. }) => {
            assert_eq!(field, "connections")
        }
        other => panic!("0 connections accepted: {other:?}"),
    }
    let config = RedisConfig {
        connections: 3,
        ..RedisConfig::new(rc.urls())
    };
    let cache = Cache::builder(Backend::cluster(config).await.unwrap())
        .config(config_without_l1("three-connections"))
        .build()
        .await
        .unwrap();
    // Sequential calls from one task take the connections in turn; keys cover every master.
    for i in 0..60 {
        let key = format!("k{i}");
        cache.set(&key, &i, Duration::from_secs(60)).await.unwrap();
        assert_eq!(cache.get::<i32>(&key).await, Some(i), "{key}");
    }
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let values: Vec<Option<i32>> = cache.get_many(&keys).await;
    assert_eq!(values, (0..60).map(Some).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_can_go_to_replicas() {
    let rc = shared::redis_cluster().await.unwrap();
    let config = RedisConfig {
        read_from_replicas: true,
        ..RedisConfig::new(rc.urls())
    };
    let cache = Cache::builder(Backend::cluster(config).await.unwrap())
        .config(config_without_l1("replicas"))
        .build()
        .await
        .unwrap();
    let masters: Vec<u16> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|n| n.port())
        .collect();
    let replicas: Vec<_> = rc
        .nodes()
        .iter()
        .filter(|n| !masters.contains(&n.port()))
        .collect();
    let before = get_calls(&replicas).await;

    cache
        .set("replicated", &"yes".to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    // Replication is asynchronous: a replica may answer before it has the write.
    let mut value = None;
    for _ in 0..200 {
        value = cache.get::<String>("replicated").await;
        if value.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(value.as_deref(), Some("yes"));
    let values: Vec<Option<String>> = cache.get_many(&["replicated", "replicated"]).await;
    assert_eq!(
        values,
        vec![Some("yes".to_string()), Some("yes".to_string())]
    );
    // The client connects to replicas in the background; until then reads go to the primary.
    let mut on_replicas = false;
    for _ in 0..100 {
        assert_eq!(
            cache.get::<String>("replicated").await.as_deref(),
            Some("yes")
        );
        if get_calls(&replicas).await > before {
            on_replicas = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_replicas, "no GET/MGET reached a replica");
}

fn config_without_l1(namespace: &str) -> CacheConfig {
    CacheConfig {
        l1: None,
        ..config(namespace)
    }
}

/// GET + MGET calls served by `nodes`, from INFO commandstats.
async fn get_calls(nodes: &[&herd_testkit::RedisNode]) -> u64 {
    let mut total = 0;
    for node in nodes {
        let client = redis::Client::open(node.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in stats.lines() {
            if let Some(rest) = line
                .strip_prefix("cmdstat_get:calls=")
                .or_else(|| line.strip_prefix("cmdstat_mget:calls="))
            {
                total += rest.split(',').next().unwrap().parse::<u64>().unwrap();
            }
        }
    }
    total
}
