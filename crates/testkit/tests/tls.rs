//! TLS servers from the test CA: PostgreSQL with `ssl=on` (TLS only, client certificates
//! required) and a Redis Cluster on `--tls-port` with its bus and replication over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use herd_testkit::tls::{ClientAuth, TestCa};
use herd_testkit::{Error, PgCluster, RedisCluster};
use redis::AsyncCommands;
use sqlx::Connection;

#[tokio::test]
async fn postgres_takes_tls_with_a_client_certificate_and_refuses_plain_connections() {
    let ca = TestCa::generate().unwrap();
    let pg = PgCluster::start_tls(1, ca.server(ClientAuth::Required))
        .await
        .unwrap();
    let url = pg.primary_url();
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl);
    conn.close().await.unwrap();
    // The replica streams (start_tls waited for it) and takes TLS as well.
    sqlx::PgConnection::connect(&pg.replica_urls()[0])
        .await
        .unwrap();

    let base = pg.primary().plain_url();
    let plain = sqlx::PgConnection::connect(&format!("{base}?sslmode=disable")).await;
    let err = plain
        .expect_err("a plain connection was accepted")
        .to_string();
    assert!(err.contains("no encryption"), "{err}");
    let ca_file = ca.ca_file();
    let no_cert = sqlx::PgConnection::connect(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ))
    .await;
    assert!(
        no_cert.is_err(),
        "a connection without a client certificate was accepted"
    );
}

#[tokio::test]
async fn a_redis_cluster_serves_tls_only_with_its_bus_over_tls() {
    let ca = TestCa::generate().unwrap();
    let rc = match RedisCluster::builder()
        .tls(ca.server(ClientAuth::Optional))
        .start()
        .await
    {
        Ok(rc) => rc,
        Err(e @ Error::Unsupported { .. }) => {
            let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {e} ***\n");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(rc.urls().iter().all(|u| u.starts_with("rediss://")));
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca.ca_file()).unwrap()),
    };
    let client = redis::cluster::ClusterClientBuilder::new(rc.urls())
        .certs(certificates)
        .build()
        .unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..30 {
        let _: () = conn.set(format!("tls:{i}"), i).await.unwrap();
    }
    for i in 0..30 {
        assert_eq!(conn.get::<_, i32>(format!("tls:{i}")).await.unwrap(), i);
    }
    // Nothing answers in plain text on the client port (a plain server would PONG at once).
    let plain = redis::Client::open(rc.urls()[0].replacen("rediss://", "redis://", 1)).unwrap();
    let attempt = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut conn = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    })
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a plain PING was answered: {attempt:?}"
    );
}
