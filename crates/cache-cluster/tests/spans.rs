//! The cache operations' spans against a real 6-node Redis Cluster from herd-testkit (shared,
//! read-mostly): OpenTelemetry field names, the operation, the key's class, the tier and result,
//! the master serving the key, and never the key itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_testkit::shared;
use herd_testkit::spans::{Capture, Captured};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Fails when the key's id (the part after its class) reached any field.
fn assert_no_key(span: &Captured, id: &str) {
    for value in span.fields.values() {
        assert!(!value.contains(id), "the key leaked into {span:#?}");
    }
}

#[tokio::test]
async fn operations_are_spans_with_otel_fields_tier_result_and_node_but_no_key() {
    let rc = shared::redis_cluster().await.unwrap();
    let masters: HashSet<String> = rc
        .masters()
        .await
        .unwrap()
        .iter()
        .map(|m| m.port().to_string())
        .collect();
    let capture = Capture::default();
    let _subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .set_default();
    let backend = Backend::cluster(RedisConfig::new(rc.urls())).await.unwrap();
    let cache = Cache::builder(backend)
        .config(CacheConfig {
            namespace: "spans".to_owned(),
            ..CacheConfig::default()
        })
        .build()
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let id = "Zq7xK";
    let key = format!("user:{id}");

    // A set, then a get answered by the L1 the set filled.
    cache.set(&key, &"Ada".to_owned(), ttl).await.unwrap();
    let set = capture.one("herd.cache.set");
    assert_eq!(set.target, "herd_cache_cluster::op");
    assert_eq!(set.field("db.system.name"), "redis");
    assert_eq!(set.field("db.operation.name"), "SET");
    assert_eq!(set.field("herd.cache.op"), "set");
    assert_eq!(set.field("herd.cache.key_class"), "user");
    assert!(!set.fields.contains_key("error.type"));
    assert_no_key(&set, id);

    assert_eq!(cache.get::<String>(&key).await.as_deref(), Some("Ada"));
    let hit = capture.one("herd.cache.get");
    assert_eq!(hit.field("db.operation.name"), "GET");
    assert_eq!(hit.field("herd.cache.op"), "get");
    assert_eq!(hit.field("herd.cache.key_class"), "user");
    assert_eq!(hit.field("herd.cache.tier"), "l1");
    assert_eq!(hit.field("herd.cache.result"), "hit");
    assert!(
        !hit.fields.contains_key("server.port"),
        "no node asked: {hit:#?}"
    );
    assert_no_key(&hit, id);

    // A key nobody stored: a miss in Redis, on the master serving its slot.
    let absent = format!("order:{id}");
    assert_eq!(cache.get::<String>(&absent).await, None);
    let miss = capture.one("herd.cache.get");
    assert_eq!(miss.field("herd.cache.key_class"), "order");
    assert_eq!(miss.field("herd.cache.tier"), "l2");
    assert_eq!(miss.field("herd.cache.result"), "miss");
    assert!(
        masters.contains(miss.field("server.port")),
        "{miss:#?} names no master of {masters:?}"
    );
    assert!(!miss.field("server.address").is_empty());
    assert_no_key(&miss, id);

    // A load: the miss in Redis, then the loader, in the caller's span; then an L1 hit.
    let loaded = format!("cart:{id}");
    let value: Option<u32> = cache
        .get_or_load(&loaded, ttl, || async { Ok::<_, std::io::Error>(Some(7)) })
        .await
        .unwrap();
    assert_eq!(value, Some(7));
    let load = capture.one("herd.cache.get_or_load");
    assert_eq!(load.field("herd.cache.op"), "get_or_load");
    assert_eq!(load.field("herd.cache.key_class"), "cart");
    assert_eq!(load.field("herd.cache.tier"), "l2");
    assert_eq!(load.field("herd.cache.result"), "miss");
    assert!(masters.contains(load.field("server.port")), "{load:#?}");
    assert_no_key(&load, id);
    let again: Option<u32> = cache
        .get_or_load(&loaded, ttl, || async { Ok::<_, std::io::Error>(Some(8)) })
        .await
        .unwrap();
    assert_eq!(again, Some(7));
    let cached = capture.one("herd.cache.get_or_load");
    assert_eq!(cached.field("herd.cache.tier"), "l1");
    assert_eq!(cached.field("herd.cache.result"), "hit");

    // A key without a class is recorded as `-`, never as itself.
    cache.delete(id).await.unwrap();
    let delete = capture.one("herd.cache.delete");
    assert_eq!(delete.field("db.operation.name"), "DEL");
    assert_eq!(delete.field("herd.cache.key_class"), "-");
    assert_no_key(&delete, id);
}
