//! PgCluster against the machine's real PostgreSQL binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herd_testkit::{PgCluster, shared};
use sqlx::{Connection, PgConnection};

async fn conn(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

async fn in_recovery(url: &str) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn(url).await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_row_written_on_the_primary_is_read_on_every_replica() {
    let pg = shared::pg().await.unwrap();
    assert_eq!(pg.replicas().len(), 2);
    assert!(!in_recovery(&pg.primary_url()).await);
    let mut primary = conn(&pg.primary_url()).await;
    sqlx::query("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v text)")
        .execute(&mut primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kv VALUES ('written-on-primary', 'hello')")
        .execute(&mut primary)
        .await
        .unwrap();
    pg.wait_for_replay().await.unwrap();
    for url in pg.replica_urls() {
        assert!(in_recovery(&url).await, "{url} should be a hot standby");
        let v: String = sqlx::query_scalar("SELECT v FROM kv WHERE k = 'written-on-primary'")
            .fetch_one(&mut conn(&url).await)
            .await
            .unwrap();
        assert_eq!(v, "hello");
        // A replica refuses writes (SQLSTATE 25006).
        let err = sqlx::query("INSERT INTO kv VALUES ('x', 'y')")
            .execute(&mut conn(&url).await)
            .await
            .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("25006")
        );
    }
    assert_eq!(pg.lag_bytes().await.unwrap(), vec![0, 0]);
}

#[tokio::test]
async fn paused_replay_makes_lag_grow_and_resume_catches_up() {
    let pg = PgCluster::start(1).await.unwrap();
    let replica = pg.replica(0);
    let mut primary = conn(&pg.primary_url()).await;
    sqlx::query("CREATE TABLE t (id int)")
        .execute(&mut primary)
        .await
        .unwrap();
    pg.wait_for_replay().await.unwrap();

    replica.pause_replay().await.unwrap();
    sqlx::query("INSERT INTO t SELECT generate_series(1, 1000)")
        .execute(&mut primary)
        .await
        .unwrap();
    let first = pg.lag_bytes().await.unwrap()[0];
    assert!(first > 0, "lag must grow while replay is paused");
    sqlx::query("INSERT INTO t SELECT generate_series(1, 1000)")
        .execute(&mut primary)
        .await
        .unwrap();
    let second = pg.lag_bytes().await.unwrap()[0];
    assert!(second > first, "lag keeps growing: {first} then {second}");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn(&replica.url()).await)
        .await
        .unwrap();
    assert_eq!(seen, 0, "a paused replica does not see new rows");
    let timeout = tokio::time::timeout(Duration::from_secs(2), pg.wait_for_replay()).await;
    assert!(timeout.is_err(), "replay cannot finish while paused");

    replica.resume_replay().await.unwrap();
    pg.wait_for_replay().await.unwrap();
    assert_eq!(pg.lag_bytes().await.unwrap(), vec![0]);
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut conn(&replica.url()).await)
        .await
        .unwrap();
    assert_eq!(seen, 2000);
}

#[tokio::test]
async fn a_promoted_replica_leaves_recovery_and_takes_writes() {
    let pg = PgCluster::start(1).await.unwrap();
    let (primary, replica) = (pg.primary(), pg.replica(0));

    // stop/start a replica: it comes back and streams again.
    replica.stop().await.unwrap();
    assert!(!replica.is_running());
    assert!(PgConnection::connect(&replica.url()).await.is_err());
    replica.start().await.unwrap();
    assert!(in_recovery(&replica.url()).await);

    // Crash the primary and fail over.
    let pid = primary.pid().unwrap();
    primary.kill().unwrap();
    assert!(primary.pid().is_none());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // Reaped children vanish from /proc; give the kernel a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
    );
    assert!(PgConnection::connect(&pg.primary_url()).await.is_err());
    replica.promote().await.unwrap();
    assert!(!in_recovery(&replica.url()).await);
    let mut c = conn(&replica.url()).await;
    sqlx::query("CREATE TABLE after_failover (id int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO after_failover VALUES (1)")
        .execute(&mut c)
        .await
        .unwrap();

    // Starting a running node is refused with an error naming it.
    let err = replica.start().await.unwrap_err();
    assert!(err.to_string().contains("replica1"), "{err}");
}
