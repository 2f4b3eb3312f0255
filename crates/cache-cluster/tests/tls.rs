//! The cache over TLS (`tls-rustls`) against herd-testkit's TLS-only Redis (`--tls-port`,
//! cluster bus and replication over TLS, client certificates required): values across the
//! cluster's slots and a master failover waited out, as in `cluster.rs` and
//! `failover_wait.rs`; and a wrong CA or host name failing the connect with [`Error::Tls`].
//!
//! The same pass in plain text is `plaintext_baseline` (ignored; the TLS run's comparison):
//! `cargo test -p herd-cache-cluster --test tls -- --include-ignored --test-threads 1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use herd_cache_cluster::{Backend, Cache, Error, RedisConfig, TlsConfig};
use herd_testkit::tls::{ClientAuth, TestCa};
use herd_testkit::{Error as KitError, RedisCluster, RedisServer};

const KEYS: usize = 60;
const TTL: Duration = Duration::from_secs(600);

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

fn tls_of(ca: &TestCa) -> TlsConfig {
    TlsConfig {
        ca_file: Some(ca.ca_file()),
        client_cert: Some(ca.client_cert_file()),
        client_key: Some(ca.client_key_file()),
    }
}

/// Sets keys across every master's slots and reads them back, kills the master serving the
/// first key, and reads and writes through the failover (the default failover wait).
async fn across_slots_and_failover(rc: &RedisCluster, tls: TlsConfig) {
    let started = Instant::now();
    let label = if tls == TlsConfig::default() {
        "plain-text"
    } else {
        "TLS"
    };
    let config = RedisConfig {
        tls,
        ..RedisConfig::new(rc.urls())
    };
    let backend = Backend::cluster(config).await.unwrap();
    let Backend::Cluster(cluster) = &backend else {
        unreachable!()
    };
    assert_eq!(cluster.masters().len(), 3);
    // No L1: every read is the cluster's answer.
    let cache = Cache::builder(backend.clone())
        .namespace("tls")
        .without_l1()
        .build()
        .await
        .unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, TTL).await.unwrap();
    }
    let values: Vec<Option<usize>> = cache.get_many(&keys).await;
    assert_eq!(values, (0..KEYS).map(Some).collect::<Vec<_>>());
    let pings = backend.ping_nodes().await;
    assert!(
        pings.len() >= 3 && pings.iter().all(|p| p.error.is_none()),
        "{pings:#?}"
    );

    // Replication is asynchronous: give the replicas the last writes before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = rc.masters().await.unwrap()[0];
    victim.kill().unwrap();
    let killed = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            cache.get::<usize>(key).await,
            Some(i),
            "{key} after the kill"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &(i + 1), TTL).await.unwrap();
    }
    eprintln!(
        "reads and writes through the failover took {:?}",
        killed.elapsed()
    );
    let values: Vec<Option<usize>> = cache.get_many(&keys).await;
    assert_eq!(values, (1..=KEYS).map(Some).collect::<Vec<_>>());
    eprintln!(
        "{label} steps, without the cluster's start: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_across_slots_and_a_master_failover_over_tls() {
    let started = Instant::now();
    let ca = TestCa::generate().unwrap();
    let Some(rc) = or_skip(
        "values_across_slots_and_a_master_failover_over_tls",
        RedisCluster::builder()
            .node_timeout(Duration::from_millis(1000))
            .tls(ca.server(ClientAuth::Required))
            .start()
            .await,
    ) else {
        return;
    };
    assert!(rc.urls().iter().all(|u| u.starts_with("rediss://")));

    // A CA that did not sign the nodes' certificates: the connect fails, saying so.
    let other = TestCa::generate().unwrap();
    let wrong = RedisConfig {
        tls: tls_of(&other),
        ..RedisConfig::new(rc.urls())
    };
    match Backend::cluster(wrong).await {
        Err(err @ Error::Tls { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("redis-cluster TLS to ") && text.contains("certificate"),
                "{text}"
            );
            let Error::Tls { node, .. } = &err else {
                unreachable!()
            };
            assert!(node.contains(&rc.nodes()[0].addr()), "{node}");
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }

    across_slots_and_failover(&rc, tls_of(&ca)).await;
    eprintln!("TLS pass: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the plain-text timing baseline of the TLS pass: run with --include-ignored"]
async fn plaintext_baseline() {
    let started = Instant::now();
    let rc = RedisCluster::builder()
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    across_slots_and_failover(&rc, TlsConfig::default()).await;
    eprintln!("plain-text pass: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_standalone_server_over_tls_and_a_wrong_ca_or_host_name() {
    let ca = TestCa::generate().unwrap();
    let (right, named) = tokio::join!(
        RedisServer::start_tls(ca.server(ClientAuth::Optional)),
        RedisServer::start_tls(ca.server_for_hostname(ClientAuth::Optional)),
    );
    let test = "a_standalone_server_over_tls_and_a_wrong_ca_or_host_name";
    let (Some(right), Some(named)) = (or_skip(test, right), or_skip(test, named)) else {
        return;
    };
    let config = |server: &RedisServer, ca: &TestCa| RedisConfig {
        tls: TlsConfig {
            ca_file: Some(ca.ca_file()),
            ..TlsConfig::default()
        },
        ..RedisConfig::new([server.url()])
    };

    // The right CA and a certificate for 127.0.0.1: values go over TLS.
    let cache = Cache::builder(Backend::redis(config(&right, &ca)).await.unwrap())
        .without_l1()
        .build()
        .await
        .unwrap();
    cache.set("k", &"v".to_owned(), TTL).await.unwrap();
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v"));

    let refused = |result: Result<Backend, Error>, why: &str| match result {
        Err(err @ Error::Tls { .. }) => {
            let text = err.to_string();
            assert!(text.contains("redis TLS to 127.0.0.1:"), "{text}");
            assert!(text.contains(why), "{text}");
        }
        other => panic!("expected Error::Tls ({why}), got {other:?}"),
    };
    let other = TestCa::generate().unwrap();
    refused(
        Backend::redis(config(&right, &other)).await,
        "UnknownIssuer",
    );
    refused(
        Backend::redis(config(&named, &ca)).await,
        "not valid for name",
    );

    // Certificate files with a plain URL: refused, TLS would silently be off.
    let plain = RedisConfig {
        tls: tls_of(&ca),
        ..RedisConfig::new([right.url().replacen("rediss://", "redis://", 1)])
    };
    assert!(matches!(
        Backend::redis(plain).await,
        Err(Error::InvalidConfig { field: "tls", .. })
    ));
}
