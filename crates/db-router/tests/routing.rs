//! Routing against a real primary + 2 streaming replicas (herd-testkit's shared cluster):
//! automatic routing, explicit APIs, misroute retry, and the whole corpus on a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use herd_db_router::health::RouterCheck;
use herd_db_router::{
    DbRouter, Error, NodeConfig, ObservedRole, Reason, Route, RouterConfig, on_primary,
};
use herd_health::{HealthCheck, Status};
use herd_testkit::{PgCluster, shared};
use sqlx::{AssertSqlSafe, Executor, Row, SqlSafeStr};

fn config(pg: &PgCluster) -> RouterConfig {
    RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval: Duration::from_millis(250),
        ..RouterConfig::default()
    }
}

async fn router(pg: &PgCluster) -> DbRouter {
    DbRouter::builder(config(pg)).seed(7).build().await.unwrap()
}

#[tokio::test]
async fn automatic_routing_sends_reads_to_replicas_and_writes_to_the_primary() {
    let pg = shared::pg().await.unwrap();
    let router = router(pg).await;
    let replica_ports: HashSet<u16> = pg.replicas().iter().map(|r| r.port()).collect();
    let primary_port = pg.primary().port();

    // Reads: every SELECT lands on a replica, and both replicas get some.
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let row = sqlx::query("SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port")
            .fetch_one(&router)
            .await
            .unwrap();
        assert!(
            row.get::<bool, _>("standby"),
            "a SELECT ran on a node that is not in recovery"
        );
        let port = row.get::<i32, _>("port") as u16;
        assert!(
            replica_ports.contains(&port),
            "port {port} is not a replica"
        );
        seen.insert(port);
    }
    assert_eq!(
        seen, replica_ports,
        "least-outstanding selection should use both replicas"
    );

    // Writes and everything else go to the primary.
    sqlx::query("CREATE TABLE IF NOT EXISTS routing_t (id bigserial PRIMARY KEY, v int NOT NULL)")
        .execute(&router)
        .await
        .unwrap();
    let port: i32 =
        sqlx::query_scalar("INSERT INTO routing_t (v) VALUES ($1) RETURNING inet_server_port()")
            .bind(1)
            .fetch_one(&router)
            .await
            .unwrap();
    assert_eq!(port as u16, primary_port);
    let (port, _id): (i32, i64) =
        sqlx::query_as("SELECT inet_server_port(), nextval('routing_t_id_seq')")
            .fetch_one(&router)
            .await
            .unwrap();
    assert_eq!(port as u16, primary_port, "nextval must run on the primary");
    let port: i32 =
        sqlx::query_scalar("SELECT inet_server_port() FROM routing_t LIMIT 1 FOR UPDATE")
            .fetch_one(&router)
            .await
            .unwrap();
    assert_eq!(
        port as u16, primary_port,
        "FOR UPDATE must run on the primary"
    );
    let port: i32 = sqlx::query_scalar("/* herd:primary */ SELECT inet_server_port()")
        .fetch_one(&router)
        .await
        .unwrap();
    assert_eq!(port as u16, primary_port, "the hint forces the primary");
    let port: i32 = on_primary(async {
        sqlx::query_scalar("SELECT inet_server_port()")
            .fetch_one(&router)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(port as u16, primary_port, "on_primary forces the primary");

    // Every Executor entry point routes: fetch (stream), fetch_all, fetch_optional, execute, raw_sql.
    let rows: Vec<i32> =
        sqlx::query_scalar::<_, i32>("SELECT inet_server_port() FROM generate_series(1, 3)")
            .fetch(&router)
            .try_collect()
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|p| replica_ports.contains(&(*p as u16))));
    let all = sqlx::query("SELECT 1 FROM generate_series(1, 5)")
        .fetch_all(&router)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    let none = sqlx::query("SELECT 1 WHERE false")
        .fetch_optional(&router)
        .await
        .unwrap();
    assert!(none.is_none());
    // `fetch_one` (the router's own, not sqlx's default over `fetch_optional`): a row, or
    // `RowNotFound`.
    let one = (&router)
        .fetch_one(sqlx::query("SELECT inet_server_port() AS port, $1::int AS v").bind(7))
        .await
        .unwrap();
    assert_eq!(one.get::<i32, _>("v"), 7);
    assert!(replica_ports.contains(&(one.get::<i32, _>("port") as u16)));
    let missing = (&router)
        .fetch_one(sqlx::query("SELECT 1 WHERE false"))
        .await
        .unwrap_err();
    assert!(matches!(missing, sqlx::Error::RowNotFound), "{missing:?}");
    let done =
        sqlx::raw_sql("INSERT INTO routing_t (v) VALUES (2); INSERT INTO routing_t (v) VALUES (3)")
            .execute(&router)
            .await
            .unwrap();
    assert_eq!(
        done.rows_affected(),
        2,
        "a multi-statement string runs whole on the primary"
    );
    let prepared = (&router)
        .prepare("SELECT v FROM routing_t WHERE id = $1".into_sql_str())
        .await
        .unwrap();
    assert_eq!(sqlx::Statement::columns(&prepared).len(), 1);

    // A database error passes through as the driver's error.
    let err = sqlx::query("SELECT * FROM no_such_table")
        .fetch_all(&router)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42P01")
    );
    router.close().await;
}

#[tokio::test]
async fn explicit_apis_and_status() {
    let pg = shared::pg().await.unwrap();
    let router = router(pg).await;

    let on_primary: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(router.primary().unwrap())
        .await
        .unwrap();
    assert!(!on_primary);
    let replica = router.replica().unwrap();
    assert!(replica.is_replica());
    assert!(replica.node().starts_with("replica"));
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&*replica)
        .await
        .unwrap();
    assert!(standby);
    drop(replica);

    let mut tx = router.begin().await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS explicit_t (v int)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO explicit_t VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut ro = router.begin_read_only().await.unwrap();
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *ro)
        .await
        .unwrap();
    assert!(standby, "begin_read_only runs on a replica");
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut *ro)
        .await
        .unwrap();
    assert_eq!(read_only, "on");
    ro.rollback().await.unwrap();

    let status = router.status();
    assert_eq!(status.primary.as_deref(), Some("primary"));
    let primary = status.node("primary").unwrap();
    assert_eq!(primary.observed_role, ObservedRole::Primary);
    assert!(primary.is_write_node && primary.reachable && primary.current_lsn.is_some());
    assert!(
        !primary.eligible,
        "the configured primary never takes reads as a replica"
    );
    for name in ["replica1", "replica2"] {
        let r = status.node(name).unwrap();
        assert_eq!(r.observed_role, ObservedRole::Replica);
        assert!(r.reachable && r.replay_lsn.is_some() && r.lag_bytes.is_some());
        assert!(r.pool_max == 10 && r.pool_size >= r.pool_idle);
    }
    assert_eq!(status.eligible_replicas().len(), 2, "{status:#?}");
    assert!(router.current_lsn().await.unwrap() > herd_db_router::Lsn::ZERO);
    assert_eq!(
        router.classify("SELECT 1 FOR SHARE"),
        Route::Primary(Reason::LockingClause)
    );

    // The herd-health check: everything fine, one role and pool measurement per node, lag per replica.
    let check = RouterCheck::new(router.clone());
    assert_eq!(HealthCheck::name(&check), "database");
    let result = check.check().await;
    assert_eq!(result.status(), Status::Pass, "{result:#?}");
    let names: Vec<&str> = result
        .measurements()
        .iter()
        .map(|m| m.name.as_ref())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == "role").count(), 3);
    assert_eq!(names.iter().filter(|n| **n == "lag").count(), 2);
    assert_eq!(names.iter().filter(|n| **n == "utilization").count(), 3);
    // WAL positions: the write node's current LSN, each replica's receive and replay LSN.
    let lsn_of = |name: &str, node: &str| {
        result
            .measurements()
            .iter()
            .find(|m| m.name == name && m.component_id.as_deref() == Some(node))
            .and_then(|m| m.observed_value.as_ref())
            .and_then(|v| v.as_str())
            .map(|v| v.parse::<herd_db_router::Lsn>().expect("an LSN"))
    };
    assert!(lsn_of("currentLsn", "primary").is_some(), "{result:#?}");
    assert_eq!(names.iter().filter(|n| **n == "receiveLsn").count(), 2);
    assert_eq!(names.iter().filter(|n| **n == "replayLsn").count(), 2);
    assert!(lsn_of("replayLsn", "replica1").is_some_and(|l| l > herd_db_router::Lsn::ZERO));
    // A pool bound of 0 % in use degrades it.
    let strict = RouterCheck::new(router.clone())
        .named("db")
        .warn_pool_utilization(0.0);
    assert_eq!(HealthCheck::name(&strict), "db");
    assert_eq!(strict.check().await.status(), Status::Warn);
    router.close().await;
}

#[tokio::test]
async fn a_write_misrouted_to_a_replica_is_retried_on_the_primary() {
    let pg = shared::pg().await.unwrap();
    let router = router(pg).await;
    // A user function that writes, not on the write list: the classifier cannot know.
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS misroute_t (n int);
         CREATE OR REPLACE FUNCTION misroute_bump() RETURNS int LANGUAGE sql AS
           $$ INSERT INTO misroute_t VALUES (1) RETURNING (SELECT count(*)::int + 1 FROM misroute_t) $$;",
    )
    .execute(router.primary().unwrap())
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    assert!(router.classify("SELECT misroute_bump()").is_replica());
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM misroute_t")
        .fetch_one(router.primary().unwrap())
        .await
        .unwrap();
    sqlx::query("SELECT misroute_bump()")
        .fetch_one(&router)
        .await
        .unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM misroute_t")
        .fetch_one(router.primary().unwrap())
        .await
        .unwrap();
    assert_eq!(
        after,
        before + 1,
        "the statement ran exactly once, on the primary"
    );

    // With retries off, the replica's refusal reaches the caller.
    // (Without the catalog read: with it, the router knows the function is volatile.)
    let strict = DbRouter::connect(RouterConfig {
        retry_misrouted: false,
        catalog_refresh: None,
        ..config(pg)
    })
    .await
    .unwrap();
    let err = sqlx::query("SELECT misroute_bump()")
        .fetch_one(&strict)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006")
    );
    // With the function on the write list it goes straight to the primary.
    let listed = DbRouter::connect(RouterConfig {
        write_functions: vec!["misroute_bump".into()],
        retry_misrouted: false,
        ..config(pg)
    })
    .await
    .unwrap();
    sqlx::query("SELECT misroute_bump()")
        .fetch_one(&listed)
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_node_urls_fail_at_build_naming_the_node() {
    let cfg = RouterConfig {
        primary: Some(NodeConfig::new("postgres://127.0.0.1:1/x")),
        replicas: vec![NodeConfig::new("not a url").name("east")],
        ..RouterConfig::default()
    };
    let err = DbRouter::connect(cfg).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field: "replicas.url", reason } if reason.starts_with("node `east`: ")),
        "{err}"
    );
}

/// Every statement the corpus routes to a replica really runs on a replica (executed when it
/// has no parameters, prepared when it has), against a schema made for the corpus.
#[tokio::test]
async fn replica_routed_corpus_statements_run_on_a_real_replica() {
    let pg = shared::pg().await.unwrap();
    let router = router(pg).await;
    sqlx::raw_sql(
        r#"
        CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text, name text, created_at timestamptz DEFAULT now(), search tsvector);
        CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, user_id bigint, total numeric, status text, created_at timestamptz DEFAULT now());
        CREATE TABLE IF NOT EXISTS audit_log (updated_at timestamptz, inserted_by text, deleted bool);
        CREATE TABLE IF NOT EXISTS accounts (id bigint, merged_into bigint);
        CREATE TABLE IF NOT EXISTS stats (nextval_count bigint);
        CREATE TABLE IF NOT EXISTS sharers (shared bool);
        CREATE TABLE IF NOT EXISTS sequences_report ("nextval" bigint);
        CREATE TABLE IF NOT EXISTS "FOR UPDATE" ("update" int, "delete" int, "insert" int);
        CREATE OR REPLACE FUNCTION my_nextval_report(int) RETURNS int LANGUAGE sql STABLE AS $$ SELECT $1 $$;
        CREATE OR REPLACE FUNCTION "nextVal"(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
        INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'ada') ON CONFLICT DO NOTHING;
        INSERT INTO orders (id, user_id, total, status) VALUES (1, 1, 150, 'paid') ON CONFLICT DO NOTHING;
        "#,
    )
    .execute(router.primary().unwrap())
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    let replica = router.replica().unwrap();
    assert!(replica.is_replica());
    let mut ran = 0;
    for entry in common::corpus().iter().filter(|e| e.route == "replica") {
        let result = if has_parameter(&entry.sql) {
            (&*replica)
                .prepare(AssertSqlSafe(entry.sql.clone()).into_sql_str())
                .await
                .map(|_| ())
        } else {
            sqlx::raw_sql(AssertSqlSafe(entry.sql.clone()))
                .execute(&*replica)
                .await
                .map(|_| ())
        };
        if let Err(e) = result {
            panic!(
                "line {}: {:?} failed on a replica: {e}",
                entry.line, entry.sql
            );
        }
        ran += 1;
    }
    assert!(ran >= 100, "only {ran} replica statements");
}

fn has_parameter(sql: &str) -> bool {
    sql.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

#[tokio::test]
async fn a_pool_given_for_a_node_serves_it_and_an_unknown_node_name_is_refused() {
    let pg = shared::pg().await.unwrap();
    let replica1: sqlx::postgres::PgConnectOptions = pg.replica_urls()[0].parse().unwrap();
    let mine = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect_with(replica1.application_name("given-pool"))
        .await
        .unwrap();
    let router = DbRouter::builder(config(pg))
        .seed(7)
        .pool("replica1", mine.clone())
        .build()
        .await
        .unwrap();
    let mut names = HashSet::new();
    for _ in 0..40 {
        let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
            .fetch_one(&router)
            .await
            .unwrap();
        names.insert(name);
    }
    assert!(
        names.contains("given-pool"),
        "reads on replica1 should use the given pool: {names:?}"
    );
    assert!(
        names.len() == 2,
        "replica2 keeps a pool of the router's own: {names:?}"
    );
    router.close().await;

    let err = DbRouter::builder(config(pg))
        .pool("replica9", mine)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { field: "DbRouterBuilder::pool", reason } if reason.contains("`replica9`")),
        "{err}"
    );
}

/// A full pool is backpressure: the statement that cannot get a connection fails with
/// `PoolTimedOut` (classed `Unavailable`), but the node is neither marked down nor ejected, and
/// the statement holding the connection finishes.
#[tokio::test]
async fn a_full_pool_fails_the_waiting_statement_but_not_the_node() {
    let pg = shared::pg().await.unwrap();
    let tiny = herd_db_router::PoolConfig {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let config = RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url()).pool(tiny.clone())),
        replicas: pg
            .replica_urls()
            .into_iter()
            .take(1)
            .map(|u| NodeConfig::new(u).name("busy").pool(tiny.clone()))
            .collect(),
        check_interval: Duration::from_millis(100),
        ..RouterConfig::default()
    };
    let router = DbRouter::connect(config).await.unwrap();
    let holder = {
        let router = router.clone();
        tokio::spawn(async move {
            sqlx::query("SELECT pg_sleep(0.6)")
                .execute(&router)
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = sqlx::query("SELECT 1").execute(&router).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    assert_eq!(
        herd_db_router::ErrorClass::of(&err),
        herd_db_router::ErrorClass::Unavailable
    );
    let status = router.status();
    let busy = status.node("busy").unwrap();
    assert!(busy.reachable && busy.eligible, "{busy:#?}");
    holder.await.unwrap().unwrap();
    // And it serves again at once.
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&router)
        .await
        .unwrap();
    assert!(standby, "the read went to the replica again");
}
