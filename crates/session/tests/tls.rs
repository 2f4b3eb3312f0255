//! `RedisStore` over TLS (`tls-rustls`) against herd-testkit's TLS-only Redis (`--tls-port`,
//! cluster bus and replication over TLS, client certificates required): a session saved
//! through one store is loaded through another (two instances), and the layer's two-instance
//! scenario of `redis_store.rs`, on a cluster and a standalone server; a wrong CA or host name
//! fails the connect with a TLS error naming the node.
//!
//! The same pass in plain text is `plaintext_baseline` (ignored; the TLS run's comparison):
//! `cargo test -p herd-session --test tls -- --include-ignored --test-threads 1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_session::{
    RedisStore, RedisStoreConfig, RedisTlsConfig, SaveOutcome, SessionIdGenerator, SessionRecord,
    SessionStore,
};
use herd_testkit::tls::{ClientAuth, TestCa};
use herd_testkit::{Error as KitError, RedisCluster, RedisServer};

use common::scenarios;

/// `result`'s server, or `None` with a loud notice when this redis-server has no TLS.
fn or_skip<T>(test: &str, result: Result<T, KitError>) -> Option<T> {
    match result {
        Ok(server) => Some(server),
        Err(e @ KitError::Unsupported { .. }) => {
            // Straight to the process's stderr: libtest captures `eprintln!`.
            let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {e} ***\n");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn config(tls: RedisTlsConfig) -> RedisStoreConfig {
    RedisStoreConfig {
        tls,
        ..RedisStoreConfig::default()
    }
}

fn tls_of(ca: &TestCa) -> RedisTlsConfig {
    RedisTlsConfig {
        ca_file: Some(ca.ca_file()),
        client_cert: Some(ca.client_cert_file()),
        client_key: Some(ca.client_key_file()),
    }
}

/// Saves a session through `a` and loads it through `b` (another instance's store), then runs
/// the layer's two-instance scenario on `a`.
async fn save_and_load_across_instances(a: RedisStore, b: RedisStore) {
    let key = SessionIdGenerator::new().generate().unwrap().store_key();
    let ttl = Duration::from_secs(60);
    let record = Arc::new(SessionRecord::new(None));
    assert!(a.create(&key, Arc::clone(&record), ttl).await.unwrap());
    let loaded = b
        .load(&key)
        .await
        .unwrap()
        .expect("saved through the other store");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.record.to_json(), record.to_json());
    assert!(matches!(
        b.save(&key, 1, Arc::clone(&record), ttl).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    ));
    assert_eq!(a.load(&key).await.unwrap().unwrap().version, 2);
    a.ping().await.unwrap();
    scenarios::two_instances_share_sessions(a).await;
}

async fn cluster_pass(rc: &RedisCluster, tls: RedisTlsConfig) {
    let a = RedisStore::cluster(rc.urls(), config(tls.clone()))
        .await
        .unwrap();
    let b = RedisStore::cluster(rc.urls(), config(tls)).await.unwrap();
    save_and_load_across_instances(a, b).await;
}

async fn standalone_pass(server: &RedisServer, tls: RedisTlsConfig) {
    let a = RedisStore::standalone(&server.url(), config(tls.clone()))
        .await
        .unwrap();
    let b = RedisStore::standalone(&server.url(), config(tls))
        .await
        .unwrap();
    save_and_load_across_instances(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_shared_across_instances_over_tls() {
    let test = "sessions_are_shared_across_instances_over_tls";
    let started = Instant::now();
    let ca = TestCa::generate().unwrap();
    let (rc, server) = tokio::join!(
        RedisCluster::builder()
            .tls(ca.server(ClientAuth::Required))
            .start(),
        RedisServer::start_tls(ca.server(ClientAuth::Required)),
    );
    let (Some(rc), Some(server)) = (or_skip(test, rc), or_skip(test, server)) else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    let steps = Instant::now();
    cluster_pass(&rc, tls_of(&ca)).await;
    standalone_pass(&server, tls_of(&ca)).await;
    eprintln!(
        "TLS steps, without the servers' start: {:?}",
        steps.elapsed()
    );
    eprintln!("TLS pass: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the plain-text timing baseline of the TLS pass: run with --include-ignored"]
async fn plaintext_baseline() {
    let started = Instant::now();
    let (rc, server) = tokio::join!(RedisCluster::start(), RedisServer::start());
    let (rc, server) = (rc.unwrap(), server.unwrap());
    let steps = Instant::now();
    cluster_pass(&rc, RedisTlsConfig::default()).await;
    standalone_pass(&server, RedisTlsConfig::default()).await;
    eprintln!(
        "plain-text steps, without the servers' start: {:?}",
        steps.elapsed()
    );
    eprintln!("plain-text pass: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_wrong_ca_or_host_name_fails_the_connect_naming_the_node() {
    let test = "a_wrong_ca_or_host_name_fails_the_connect_naming_the_node";
    let ca = TestCa::generate().unwrap();
    let other = TestCa::generate().unwrap();
    let (right, named) = tokio::join!(
        RedisServer::start_tls(ca.server(ClientAuth::Optional)),
        RedisServer::start_tls(ca.server_for_hostname(ClientAuth::Optional)),
    );
    let (Some(right), Some(named)) = (or_skip(test, right), or_skip(test, named)) else {
        return;
    };
    let only_ca = |ca: &TestCa| RedisTlsConfig {
        ca_file: Some(ca.ca_file()),
        ..RedisTlsConfig::default()
    };
    let refused =
        |result: Result<RedisStore, herd_session::StoreError>, node: String, why: &str| {
            let err = result.expect_err("connected with a certificate that does not match");
            let text = err.to_string();
            assert!(err.is_tls(), "{text}");
            assert_eq!(err.node(), Some(node.as_str()), "{text}");
            assert!(
                text.contains("TLS handshake failed") && text.contains(why),
                "{text}"
            );
        };
    refused(
        RedisStore::standalone(&right.url(), config(only_ca(&other))).await,
        right.addr(),
        "UnknownIssuer",
    );
    refused(
        RedisStore::cluster([right.url()], config(only_ca(&other))).await,
        right.addr(),
        "UnknownIssuer",
    );
    refused(
        RedisStore::standalone(&named.url(), config(only_ca(&ca))).await,
        named.addr(),
        "not valid for name",
    );
    // Certificate files with a plain URL: refused, TLS would silently be off.
    let plain = right.url().replacen("rediss://", "redis://", 1);
    let err = RedisStore::standalone(&plain, config(only_ca(&ca)))
        .await
        .unwrap_err();
    assert!(
        !err.is_tls() && err.to_string().contains("rediss://"),
        "{err}"
    );
}
