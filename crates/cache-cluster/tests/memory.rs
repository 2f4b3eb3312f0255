//! The `Cache` API over the in-memory backend (what apps use in development without Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herd_cache_cluster::{Backend, Cache, CacheConfig, Error, L1Config, MemoryBackend};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    tags: Vec<String>,
    price_cents: Option<u32>,
}

fn product(id: u64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        tags: vec!["a".into()],
        price_cents: Some(100 * id as u32),
    }
}

#[tokio::test]
async fn typed_values_many_keys_tags_and_versions() {
    let memory = MemoryBackend::new();
    let cache = Cache::builder(Backend::Memory(memory.clone()))
        .namespace("shop")
        .version(1)
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);

    cache.set("p:1", &product(1), ttl).await.unwrap();
    assert_eq!(cache.get::<Product>("p:1").await, Some(product(1)));
    assert_eq!(cache.get::<Product>("p:404").await, None);

    let items: Vec<(String, Product)> = (2..6).map(|i| (format!("p:{i}"), product(i))).collect();
    cache.set_many(&items, ttl).await.unwrap();
    let got: Vec<Option<Product>> = cache.get_many(&["p:2", "nope", "p:5", "p:1"]).await;
    assert_eq!(
        got,
        vec![Some(product(2)), None, Some(product(5)), Some(product(1))]
    );

    cache
        .set_with_tags("p:6", &product(6), ttl, &["catalog"])
        .await
        .unwrap();
    cache
        .set_with_tags("p:7", &product(7), ttl, &["catalog", "sale"])
        .await
        .unwrap();
    assert_eq!(cache.invalidate_tag("catalog").await.unwrap(), 2);
    assert_eq!(cache.get::<Product>("p:6").await, None);
    assert_eq!(cache.get::<Product>("p:7").await, None);
    assert_eq!(cache.get::<Product>("p:1").await, Some(product(1)));

    cache.delete("p:1").await.unwrap();
    assert_eq!(cache.get::<Product>("p:1").await, None);

    // A new schema version does not read the old one's entries.
    let v2 = Cache::builder(Backend::Memory(memory))
        .namespace("shop")
        .version(2)
        .build()
        .await
        .unwrap();
    assert_eq!(v2.get::<Product>("p:2").await, None);
    assert_eq!(v2.backend_key("p:2"), "shop:v2:k:p:2");
}

#[tokio::test]
async fn l1_serves_repeated_reads_and_is_invalidated_by_other_instances() {
    let memory = MemoryBackend::new();
    let a = Cache::new(Backend::Memory(memory.clone()), CacheConfig::default())
        .await
        .unwrap();
    let b = Cache::new(Backend::Memory(memory.clone()), CacheConfig::default())
        .await
        .unwrap();
    a.set("k", &1u32, Duration::from_secs(60)).await.unwrap();
    assert_eq!(b.get::<u32>("k").await, Some(1));
    assert_eq!(b.get::<u32>("k").await, Some(1));
    assert_eq!(b.stats().l1_hits, 1);
    assert_eq!(b.stats().l2_hits, 1);

    a.set("k", &2u32, Duration::from_secs(60)).await.unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = b.get::<u32>("k").await;
        if seen == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(seen, Some(2));
}

/// The race behind a flaky cluster test (issue #19): `b` reads a's new value from the backend
/// before a's invalidation for that very write reaches it. The late message must not evict the
/// value `b` has just loaded; a later write's message must.
#[tokio::test(flavor = "current_thread")]
async fn a_late_invalidation_keeps_the_value_its_write_stored() {
    let memory = MemoryBackend::new();
    let a = Cache::new(Backend::Memory(memory.clone()), CacheConfig::default())
        .await
        .unwrap();
    let b = Cache::new(Backend::Memory(memory.clone()), CacheConfig::default())
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    // Let the message of each write reach `b` (its subscriber tasks run on this thread).
    let deliver = || tokio::time::sleep(Duration::from_millis(20));

    a.set("k", &1u32, ttl).await.unwrap();
    // Nothing has yielded since the write: its message is still on its way to `b`.
    assert_eq!(b.get::<u32>("k").await, Some(1));
    assert_eq!(b.stats().l2_hits, 1);
    deliver().await;
    assert_eq!(b.get::<u32>("k").await, Some(1));
    assert_eq!(
        b.stats().l1_hits,
        1,
        "the late invalidation evicted b's entry"
    );

    // Another write of the same value is another write: b drops its entry.
    a.set("k", &1u32, ttl).await.unwrap();
    deliver().await;
    assert_eq!(b.get::<u32>("k").await, Some(1));
    assert_eq!(b.stats().l1_hits, 1);
    assert_eq!(b.stats().l2_hits, 2);

    // A write b has not read, and a delete, evict.
    a.set("k", &2u32, ttl).await.unwrap();
    deliver().await;
    assert_eq!(b.get::<u32>("k").await, Some(2));
    assert_eq!(b.stats().l2_hits, 3);
    a.delete("k").await.unwrap();
    deliver().await;
    assert_eq!(b.get::<u32>("k").await, None);

    // An entry b stored from its own load is dropped by another instance's write.
    let loaded = b
        .get_or_load("l", ttl, || async { Ok::<_, std::io::Error>(Some(5u32)) })
        .await
        .unwrap();
    assert_eq!(loaded, Some(5));
    a.set("l", &6u32, ttl).await.unwrap();
    deliver().await;
    assert_eq!(b.get::<u32>("l").await, Some(6));
}

#[tokio::test]
async fn l1_entries_do_not_outlive_the_value() {
    let config = CacheConfig {
        l1: Some(L1Config {
            max_entries: 100,
            max_ttl: Duration::from_secs(60),
        }),
        ..CacheConfig::default()
    };
    let cache = Cache::new(Backend::memory(), config).await.unwrap();
    cache
        .set("short", &"x".to_string(), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(cache.get::<String>("short").await.as_deref(), Some("x"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(cache.get::<String>("short").await, None);
}

#[tokio::test]
async fn foreign_bytes_are_a_miss_and_get_or_load_repairs_them() {
    let memory = MemoryBackend::new();
    let cache = Cache::new(Backend::Memory(memory.clone()), CacheConfig::default())
        .await
        .unwrap();
    memory.insert_raw(
        cache.backend_key("k"),
        b"{\"json\": true}".to_vec(),
        Duration::from_secs(60),
    );
    assert_eq!(cache.get::<Product>("k").await, None);
    assert_eq!(cache.stats().errors, 1);
    let loaded = cache
        .get_or_load("k", Duration::from_secs(60), || async {
            Ok::<_, std::io::Error>(Some(product(9)))
        })
        .await
        .unwrap();
    assert_eq!(loaded, Some(product(9)));
    assert_eq!(cache.get::<Product>("k").await, Some(product(9)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_replaces_hot_values_before_they_expire() {
    // A huge beta makes the XFetch draw refresh almost surely (P = 1 - e^-(ttl/(delta*beta)) ~ 0.9995).
    let config = CacheConfig {
        early_refresh_beta: 1_000_000.0,
        l1: None,
        ..CacheConfig::default()
    };
    let cache = Cache::builder(Backend::memory())
        .config(config)
        .rng_seed(7)
        .build()
        .await
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let loader = |loads: Arc<AtomicUsize>| {
        move || async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(Some(loads.fetch_add(1, Ordering::SeqCst)))
        }
    };
    let ttl = Duration::from_secs(10);
    assert_eq!(
        cache
            .get_or_load("hot", ttl, loader(loads.clone()))
            .await
            .unwrap(),
        Some(0)
    );
    // A fresh hit answers with the current value and refreshes in the background.
    assert_eq!(
        cache
            .get_or_load("hot", ttl, loader(loads.clone()))
            .await
            .unwrap(),
        Some(0)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get::<usize>("hot").await, Some(1));

    // beta = 0 turns it off.
    let off = CacheConfig {
        early_refresh_beta: 0.0,
        l1: None,
        ..CacheConfig::default()
    };
    let cache = Cache::new(Backend::memory(), off).await.unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        cache
            .get_or_load("hot", ttl, loader(loads.clone()))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn invalid_configuration_is_a_typed_error() {
    for namespace in ["", "a:b", "{tag}"] {
        let result = Cache::builder(Backend::memory())
            .namespace(namespace)
            .build()
            .await;
        assert!(
            matches!(
                result,
                Err(Error::InvalidConfig {
                    field: "namespace",
                    ..
                })
            ),
            "{namespace:?}"
        );
    }
    let config = CacheConfig {
        l1: Some(L1Config {
            max_entries: 0,
            ..L1Config::default()
        }),
        ..CacheConfig::default()
    };
    assert!(matches!(
        Cache::new(Backend::memory(), config).await,
        Err(Error::InvalidConfig {
            field: "l1.max_entries",
            ..
        })
    ));
    let config = CacheConfig {
        early_refresh_beta: f64::NAN,
        ..CacheConfig::default()
    };
    assert!(matches!(
        Cache::new(Backend::memory(), config).await,
        Err(Error::InvalidConfig {
            field: "early_refresh_beta",
            ..
        })
    ));
    // The workspace's one shape for configuration errors.
    let error = Cache::builder(Backend::memory())
        .namespace("a:b")
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "configuration field `namespace`: \"a:b\" must be non-empty without '{', '}' or ':'"
    );
    let no_urls = Backend::cluster(herd_cache_cluster::RedisConfig::default()).await;
    assert!(matches!(
        no_urls,
        Err(Error::InvalidConfig { field: "urls", .. })
    ));
    let bad_url = Backend::redis(herd_cache_cluster::RedisConfig::new(["not a url"])).await;
    assert!(matches!(
        bad_url,
        Err(Error::InvalidConfig { field: "urls", .. })
    ));
}
