//! The layer over `RedisStore` on real Redis started by herd-testkit: a 6-node Redis Cluster
//! and a standalone server, each scenario on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herd_session::{
    ConflictRule, OnStoreError, RedisStore, RedisStoreConfig, SaveOutcome, SessionIdGenerator,
    SessionRecord, SessionStore, StoreOperation,
};
use herd_testkit::{RedisServer, shared};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use common::scenarios;
use common::{Browser, app, serve};

async fn cluster_store() -> RedisStore {
    let cluster = shared::redis_cluster().await.unwrap();
    RedisStore::cluster(cluster.urls(), RedisStoreConfig::default())
        .await
        .unwrap()
}

async fn standalone_store() -> RedisStore {
    let server = shared::redis().await.unwrap();
    RedisStore::standalone(&server.url(), RedisStoreConfig::default())
        .await
        .unwrap()
}

/// The metrics this binary records (installed once; tests only compare before/after).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

fn counter(name: &str, label: (&str, &str)) -> u64 {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn store_contract_on_cluster_and_standalone() {
    for store in [cluster_store().await, standalone_store().await] {
        let ids = SessionIdGenerator::new();
        let key = ids.generate().unwrap().store_key();
        let ttl = Duration::from_secs(60);
        let record = Arc::new(SessionRecord::new(None));

        assert!(store.load(&key).await.unwrap().is_none());
        assert!(
            store.create(&key, Arc::clone(&record), ttl).await.unwrap(),
            "{store:?}"
        );
        assert!(
            !store.create(&key, Arc::clone(&record), ttl).await.unwrap(),
            "create is NX"
        );
        let loaded = store.load(&key).await.unwrap().unwrap();
        assert_eq!(loaded.version, 1);
        assert!(loaded.ttl > Duration::from_secs(58) && loaded.ttl <= ttl);

        assert!(matches!(
            store.save(&key, 1, Arc::clone(&record), ttl).await.unwrap(),
            SaveOutcome::Saved { version: 2 }
        ));
        match store.save(&key, 1, Arc::clone(&record), ttl).await.unwrap() {
            SaveOutcome::Conflict(current) => assert_eq!(current.version, 2),
            other => panic!("stale version must conflict, got {other:?}"),
        }

        assert!(store.touch(&key, Duration::from_secs(5)).await.unwrap());
        let touched = store.load(&key).await.unwrap().unwrap();
        assert!(
            touched.ttl <= Duration::from_secs(5),
            "touch sets the expiry"
        );
        assert_eq!(touched.version, 2, "touch leaves the version");

        store.delete(&key).await.unwrap();
        assert!(store.load(&key).await.unwrap().is_none());
        assert!(matches!(
            store.save(&key, 2, Arc::clone(&record), ttl).await.unwrap(),
            SaveOutcome::Gone
        ));
        assert!(!store.touch(&key, ttl).await.unwrap());
        assert!(
            store.load(&key).await.unwrap().is_none(),
            "nothing may recreate a deleted session"
        );
        assert_eq!(store.redis_key(&key), format!("herd:session:{key}"));
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn two_instances_share_sessions() {
    scenarios::two_instances_share_sessions(cluster_store().await).await;
    scenarios::two_instances_share_sessions(standalone_store().await).await;
}

#[tokio::test]
async fn logout_race_keeps_session_gone() {
    scenarios::logout_race_keeps_session_gone(cluster_store().await).await;
    scenarios::logout_race_keeps_session_gone(standalone_store().await).await;
}

#[tokio::test]
async fn concurrent_requests_merge_fields() {
    let before = counter("herd_session_conflicts_total", ("kind", "merged"));
    scenarios::concurrent_requests_merge_fields(cluster_store().await).await;
    scenarios::concurrent_requests_merge_fields(standalone_store().await).await;
    let after = counter("herd_session_conflicts_total", ("kind", "merged"));
    assert!(
        after > before,
        "50 concurrent saves must have met (and merged) conflicts"
    );
}

#[tokio::test]
async fn same_field_conflicts_follow_the_rule_and_are_counted() {
    let before = counter("herd_session_conflicts_total", ("kind", "same_field"));
    for rule in [ConflictRule::LastWriteWins, ConflictRule::FirstWriteWins] {
        scenarios::same_field_conflict_follows_rule(cluster_store().await, rule).await;
        scenarios::same_field_conflict_follows_rule(standalone_store().await, rule).await;
    }
    let after = counter("herd_session_conflicts_total", ("kind", "same_field"));
    assert!(
        after >= before + 4,
        "each clash is counted: {before} -> {after}"
    );
}

#[tokio::test]
async fn forged_cookie_gives_new_session() {
    scenarios::forged_cookie_gives_new_session(cluster_store().await).await;
    scenarios::forged_cookie_gives_new_session(standalone_store().await).await;
}

#[tokio::test]
async fn idle_expiry_rolling_touch_and_absolute_timeout() {
    let (cluster, standalone) = (cluster_store().await, standalone_store().await);
    tokio::join!(
        scenarios::idle_expiry_rolling_touch_and_absolute_timeout(cluster),
        scenarios::idle_expiry_rolling_touch_and_absolute_timeout(standalone),
    );
}

#[tokio::test]
async fn cookie_attributes_on_real_responses() {
    scenarios::cookie_attributes_on_real_responses(cluster_store().await).await;
    scenarios::cookie_attributes_on_real_responses(standalone_store().await).await;
}

#[tokio::test]
async fn oversized_data_is_rejected() {
    scenarios::oversized_data_is_rejected(cluster_store().await).await;
    scenarios::oversized_data_is_rejected(standalone_store().await).await;
}

/// Redis keys are hashes of the ids: the key list holds no usable cookie id.
#[tokio::test]
async fn redis_keys_do_not_reveal_session_ids() {
    let server = shared::redis().await.unwrap();
    let store = RedisStore::standalone(
        &server.url(),
        RedisStoreConfig {
            key_prefix: "keytest:".into(),
            ..RedisStoreConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = serve(app(
        scenarios::builder(&store).build().unwrap(),
        Arc::default(),
    ))
    .await;
    let browser = Browser::new();
    browser.post(addr, "/login/ann").await;
    let cookie = browser.cookie_value().unwrap();
    let id = cookie.split('.').next().unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("keytest:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(id));
    assert_eq!(
        keys[0],
        format!("keytest:{}", scenarios::store_key_of(&cookie))
    );
    let data: String = redis::cmd("HGET")
        .arg(&keys[0])
        .arg("d")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        data.contains("\"user\":\"ann\"") && !data.contains(id),
        "{data}"
    );
}

/// A dead store answers 503 with a clear body by default; fail-open carries on with an empty
/// session; handlers that do not use the session are unaffected.
#[tokio::test]
async fn unreachable_store_answers_503_or_fails_open() {
    let server = RedisServer::start().await.unwrap();
    let config = RedisStoreConfig {
        operation_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        ..RedisStoreConfig::default()
    };
    let store = RedisStore::standalone(&server.url(), config).await.unwrap();
    let strict = serve(app(
        scenarios::builder(&store).build().unwrap(),
        Arc::default(),
    ))
    .await;
    let open = serve(app(
        scenarios::builder(&store)
            .on_store_error(OnStoreError::FailOpen)
            .build()
            .unwrap(),
        Arc::default(),
    ))
    .await;
    let browser = Browser::new();
    browser.post(strict, "/login/ann").await;
    assert_eq!(browser.get(open, "/whoami").await.body, "ann");

    #[cfg(feature = "health")]
    let check = herd_session::health::StoreCheck::new(store.clone());
    #[cfg(feature = "health")]
    {
        use herd_health::{HealthCheck as _, Status};
        assert_eq!(check.check().await.status(), Status::Pass);
    }
    server.kill().unwrap();
    #[cfg(feature = "health")]
    {
        use herd_health::{HealthCheck as _, Status};
        let result = check.check().await;
        assert_eq!(result.status(), Status::Fail);
        assert!(
            result.output().unwrap().contains("ping"),
            "{:?}",
            result.output()
        );
    }
    let error = store.ping().await.unwrap_err();
    assert_eq!(error.operation(), StoreOperation::Ping);
    assert!(error.node().unwrap().starts_with("127.0.0.1:"), "{error}");

    let reply = browser.get(strict, "/whoami").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "session store unavailable (load); please retry");
    assert!(reply.set_cookies.is_empty(), "must not log the user out");
    let reply = browser.post(strict, "/logout").await;
    assert_eq!(
        reply.status, 503,
        "a failed log-out must not look successful"
    );
    assert_eq!(browser.get(strict, "/untouched").await.status, 200);
    let fresh = Browser::new();
    let reply = fresh.post(strict, "/count").await;
    assert_eq!(reply.status, 503, "save failure");
    assert_eq!(
        reply.body,
        "session store unavailable (create); please retry"
    );

    let reply = browser.get(open, "/whoami").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "anonymous"));
    let reply = fresh.post(open, "/count").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "1"));
    assert!(
        reply.set_cookies.is_empty(),
        "nothing was saved, so no cookie"
    );
    assert!(
        browser.cookie_value().is_some(),
        "the user's cookie was left alone"
    );
}
