//! Standalone Redis: the same API, pub/sub invalidation, and fail-open when Redis dies or stalls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herd_cache_cluster::{Backend, Cache, CacheConfig, CircuitConfig, Error, RedisConfig};
use herd_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_redis_then_fail_open_when_it_stalls_and_dies() {
    let server = RedisServer::start().await.unwrap();
    let redis_config = RedisConfig {
        response_timeout: Duration::from_millis(100),
        operation_timeout: Duration::from_millis(200),
        retries: 0,
        ..RedisConfig::new([server.url()])
    };
    let config = CacheConfig {
        namespace: "solo".into(),
        circuit: CircuitConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(300),
        },
        ..CacheConfig::default()
    };
    let a = Cache::new(
        Backend::redis(redis_config.clone()).await.unwrap(),
        config.clone(),
    )
    .await
    .unwrap();
    let b = Cache::new(Backend::redis(redis_config).await.unwrap(), config)
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);

    // The API works the same as over a cluster.
    a.set_many(&[("x", 1u32), ("y", 2)], ttl).await.unwrap();
    assert_eq!(
        b.get_many::<u32, _>(&["x", "nope", "y"]).await,
        vec![Some(1), None, Some(2)]
    );
    a.set_with_tags("t", &3u32, ttl, &["group"]).await.unwrap();
    assert_eq!(a.invalidate_tag("group").await.unwrap(), 1);
    assert_eq!(b.get::<u32>("t").await, None);

    // L1 invalidation over PUBLISH/SUBSCRIBE.
    assert_eq!(b.get::<u32>("x").await, Some(1));
    a.set("x", &10u32, ttl).await.unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = b.get::<u32>("x").await;
        if seen == Some(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(seen, Some(10));

    // A stalled server (CLIENT PAUSE): reads time out and fail open.
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let stalled = std::time::Instant::now();
    let value = a
        .get_or_load("fresh-key", ttl, || async {
            Ok::<_, std::io::Error>(Some(42u32))
        })
        .await
        .unwrap();
    assert_eq!(value, Some(42), "the loader's value while Redis stalls");
    assert_eq!(a.get::<u32>("other-key").await, None);
    assert!(
        stalled.elapsed() < Duration::from_millis(1000),
        "answered before the pause ended"
    );
    assert!(a.stats().errors >= 2, "{:?}", a.stats());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.get::<u32>("fresh-key").await, Some(42));

    // A dead server: writes report a typed error naming the node and command...
    server.kill().unwrap();
    let error = a.set("k", &1u32, ttl).await.unwrap_err();
    match &error {
        Error::Backend {
            backend,
            operation,
            target,
            ..
        } => {
            assert_eq!((*backend, *operation), ("redis", "SET"));
            assert_eq!(target, &server.addr());
        }
        other => panic!("unexpected error {other:?}"),
    }
    // ...reads are misses, get_or_load gives the loader's value, and after consecutive
    // failures the circuit opens so the backend is not even tried.
    for i in 0..5u32 {
        assert_eq!(a.get::<u32>(&format!("absent:{i}")).await, None);
        let loaded = a
            .get_or_load(&format!("load:{i}"), ttl, move || async move {
                Ok::<_, std::io::Error>(Some(i))
            })
            .await;
        assert_eq!(loaded.unwrap(), Some(i));
    }
    assert!(a.circuit_open());
    assert!(matches!(
        a.set("k", &1u32, ttl).await,
        Err(Error::CircuitOpen { operation: "SET" })
    ));
    // From the L1, values still come back.
    assert_eq!(a.get::<u32>("load:4").await, Some(4));
    assert!(a.stats().errors >= 5);
}
