//! The router over TLS (`tls-rustls`) against PostgreSQL with `ssl=on` from herd-testkit's test
//! CA, requiring client certificates: the representative routing, read-your-writes and failover
//! steps of `routing.rs`, `faults.rs` and `read_your_writes.rs` in one pass, and a wrong CA or
//! host name failing the build with [`Error::Tls`] naming the node.
//!
//! The same pass in plain text is `plaintext_baseline` (ignored; the TLS run's comparison):
//! `cargo test -p herd-db-router --test tls -- --include-ignored --test-threads 1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herd_db_router::{
    Consistency, DbRouter, Error, NodeConfig, Role, RouterConfig, SslMode, TlsConfig,
};
use herd_testkit::PgCluster;
use herd_testkit::tls::{ClientAuth, TestCa};
use tokio::time::sleep;

const INTERVAL: Duration = Duration::from_millis(250);

fn config(pg: &PgCluster, tls: TlsConfig) -> RouterConfig {
    RouterConfig {
        nodes: pg
            .nodes()
            .map(|n| {
                NodeConfig::new(n.plain_url())
                    .name(n.name())
                    .role(Role::Auto)
            })
            .collect(),
        check_interval: INTERVAL,
        tls,
        ..RouterConfig::default()
    }
}

async fn port_and_tls(router: &DbRouter, sql: &'static str) -> (u16, bool) {
    let (port, ssl): (i32, Option<bool>) = sqlx::query_as(sql).fetch_one(router).await.unwrap();
    (port as u16, ssl.unwrap_or(false))
}

const WHERE_AM_I: &str =
    "SELECT inet_server_port(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())";

/// Read/write split, read-your-writes with the replica's replay paused, and failover to the
/// promoted replica; every statement checks it went over TLS when `tls` is expected.
async fn routing_ryw_failover(pg: &PgCluster, tls: TlsConfig, expect_tls: bool) {
    let started = Instant::now();
    let (primary, replica) = (pg.primary(), pg.replica(0));
    let router = DbRouter::builder(config(pg, tls))
        .seed(3)
        .build()
        .await
        .unwrap();
    assert_eq!(router.status().primary.as_deref(), Some("primary"));

    // --- Routing: writes on the primary, reads on the replica, all encrypted.
    sqlx::raw_sql(
        "CREATE TABLE tls_note (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO tls_note VALUES (1, 0);",
    )
    .execute(&router)
    .await
    .unwrap();
    let (port, ssl): (i32, Option<bool>) = sqlx::query_as(
        "UPDATE tls_note SET v = v + 1 WHERE id = 1 \
         RETURNING inet_server_port(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
    )
    .fetch_one(&router)
    .await
    .unwrap();
    assert_eq!(
        (port as u16, ssl.unwrap_or(false)),
        (primary.port(), expect_tls)
    );
    for _ in 0..20 {
        assert_eq!(
            port_and_tls(&router, WHERE_AM_I).await,
            (replica.port(), expect_tls)
        );
    }

    let routed = started.elapsed();

    // --- Read-your-writes: with the replica's replay paused, a read in the writer's scope
    // sees the write (from the primary), a read outside it the replica's stale value.
    pg.wait_for_replay().await.unwrap();
    replica.pause_replay().await.unwrap();
    let writer = Consistency::new();
    let (written, seen): (i64, i64) = writer
        .scope(async {
            let written: i64 =
                sqlx::query_scalar("UPDATE tls_note SET v = v + 1 WHERE id = 1 RETURNING v")
                    .fetch_one(&router)
                    .await
                    .unwrap();
            let seen: i64 = sqlx::query_scalar("SELECT v FROM tls_note WHERE id = 1")
                .fetch_one(&router)
                .await
                .unwrap();
            (written, seen)
        })
        .await;
    assert_eq!(seen, written, "read-your-writes over TLS");
    let stale: i64 = sqlx::query_scalar("SELECT v FROM tls_note WHERE id = 1")
        .fetch_one(&router)
        .await
        .unwrap();
    assert_eq!(stale, written - 1, "outside the scope the replica answers");
    replica.resume_replay().await.unwrap();
    pg.wait_for_replay().await.unwrap();
    let read_your_writes = started.elapsed();

    // --- Failover: the primary dies, the replica is promoted, writes follow it over TLS.
    primary.kill().unwrap();
    replica.promote().await.unwrap();
    let promoted = Instant::now();
    let (port, ssl) = loop {
        match sqlx::query_as::<_, (i32, Option<bool>)>(
            "UPDATE tls_note SET v = v + 1 WHERE id = 1 \
             RETURNING inet_server_port(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
        )
        .fetch_one(&router)
        .await
        {
            Ok(row) => break row,
            Err(e) => {
                assert!(
                    promoted.elapsed() < Duration::from_secs(5),
                    "writes did not resume within 5 s of the promotion: {e}"
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        (port as u16, ssl.unwrap_or(false)),
        (replica.port(), expect_tls)
    );
    assert_eq!(router.status().primary.as_deref(), Some("replica1"));
    router.close().await;
    let done = started.elapsed();
    eprintln!(
        "{} steps, without the cluster's start: {done:?} (build and routing {routed:?}, \
         read-your-writes {:?}, failover {:?})",
        if expect_tls { "TLS" } else { "plain-text" },
        read_your_writes - routed,
        done - read_your_writes,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_read_your_writes_and_failover_over_tls_with_client_certificates() {
    let started = Instant::now();
    let ca = TestCa::generate().unwrap();
    let pg = PgCluster::start_tls(1, ca.server(ClientAuth::Required))
        .await
        .unwrap();
    let tls = TlsConfig::verify_full(ca.ca_file())
        .client_cert(ca.client_cert_file(), ca.client_key_file());
    routing_ryw_failover(&pg, tls, true).await;
    eprintln!("TLS pass: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the plain-text timing baseline of the TLS pass: run with --include-ignored"]
async fn plaintext_baseline() {
    let started = Instant::now();
    let pg = PgCluster::start(1).await.unwrap();
    let plain = TlsConfig {
        mode: Some(SslMode::Disable),
        ..TlsConfig::default()
    };
    routing_ryw_failover(&pg, plain, false).await;
    eprintln!("plain-text pass: {:?}", started.elapsed());
}

/// The router's build error for `tls` against `pg`, which must be [`Error::Tls`] naming the
/// primary and saying what is wrong with the certificate.
async fn tls_refusal(pg: &PgCluster, tls: TlsConfig) -> String {
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary().plain_url())),
        tls,
        ..RouterConfig::default()
    };
    match DbRouter::connect(config).await {
        Err(err @ Error::Tls { .. }) => {
            let Error::Tls { node, .. } = &err else {
                unreachable!()
            };
            assert_eq!(node, "primary");
            let text = err.to_string();
            assert!(
                text.contains("TLS to node `primary`") && text.contains("certificate"),
                "{text}"
            );
            text
        }
        Err(other) => panic!("expected Error::Tls, got {other}"),
        Ok(_) => panic!("the router was built with a certificate that does not match"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_host_name_fails_the_build_naming_the_node() {
    let ca = TestCa::generate().unwrap();
    let other = TestCa::generate().unwrap();
    let (right, named) = tokio::join!(
        PgCluster::start_tls(0, ca.server(ClientAuth::Optional)),
        PgCluster::start_tls(0, ca.server_for_hostname(ClientAuth::Optional)),
    );
    let (right, named) = (right.unwrap(), named.unwrap());

    // A CA that did not sign the server's certificate: from the configuration or the URL.
    let text = tls_refusal(&right, TlsConfig::verify_full(other.ca_file())).await;
    assert!(text.contains("UnknownIssuer"), "{text}");
    let config = RouterConfig {
        primary: Some(NodeConfig::new(format!(
            "{}?sslmode=verify-ca&sslrootcert={}",
            right.primary().plain_url(),
            other.ca_file().display()
        ))),
        ..RouterConfig::default()
    };
    assert!(matches!(
        DbRouter::connect(config).await,
        Err(Error::Tls { .. })
    ));

    // The right CA, but the certificate names another host than 127.0.0.1.
    let text = tls_refusal(&named, TlsConfig::verify_full(ca.ca_file())).await;
    assert!(text.contains("not valid for name"), "{text}");
    // Only the name is wrong: verify-ca, which skips it, connects.
    let verify_ca = TlsConfig {
        mode: Some(SslMode::VerifyCa),
        ..TlsConfig::verify_full(ca.ca_file())
    };
    let router = DbRouter::connect(RouterConfig {
        primary: Some(NodeConfig::new(named.primary().plain_url())),
        tls: verify_ca,
        ..RouterConfig::default()
    })
    .await
    .unwrap();
    sqlx::query("SELECT 1").execute(&router).await.unwrap();
    router.close().await;

    // And with the right CA and host name, sslmode=require and prefer work as their names say.
    for mode in [SslMode::Require, SslMode::Prefer] {
        let router = DbRouter::connect(RouterConfig {
            primary: Some(NodeConfig::new(right.primary().plain_url())),
            tls: TlsConfig {
                mode: Some(mode),
                ..TlsConfig::default()
            },
            ..RouterConfig::default()
        })
        .await
        .unwrap();
        let (_, ssl) = port_and_tls(&router, WHERE_AM_I).await;
        assert!(ssl, "{mode:?} did not use TLS");
        router.close().await;
    }
}
