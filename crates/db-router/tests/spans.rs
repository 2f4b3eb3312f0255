//! The `herd.db.query` span against a real primary + 2 streaming replicas (herd-testkit's
//! shared cluster): OpenTelemetry field names, the node, route, reason and rows, the SQLSTATE of
//! a failed statement, and never the SQL text or its arguments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use herd_db_router::{DbRouter, NodeConfig, RouterConfig};
use herd_testkit::shared;
use herd_testkit::spans::Capture;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test]
async fn each_attempt_is_a_span_with_otel_fields_and_no_sql() {
    let pg = shared::pg().await.unwrap();
    let capture = Capture::default();
    let _subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .set_default();
    let router = DbRouter::builder(RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval: Duration::from_millis(250),
        ..RouterConfig::default()
    })
    .seed(7)
    .build()
    .await
    .unwrap();
    let replica_ports: HashSet<String> =
        pg.replicas().iter().map(|r| r.port().to_string()).collect();
    let primary_port = pg.primary().port().to_string();
    // postgres://postgres@HOST:PORT/postgres
    let url = pg.primary_url();
    let host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    // Whatever the router ran before (nothing yet, but the monitor may grow statements).
    capture.take("herd.db.query");

    // A read: on a replica, one row, with the classifier's route and reason.
    let secret = "s3cr3t-literal";
    let row: (i32, String) = sqlx::query_as("SELECT $1::int, 's3cr3t-literal'::text")
        .bind(987_654_321_i32)
        .fetch_one(&router)
        .await
        .unwrap();
    assert_eq!(row.1, secret);
    let read = capture.one("herd.db.query");
    assert_eq!(read.target, "herd_db_router::query");
    assert_eq!(read.field("db.system.name"), "postgresql");
    assert_eq!(read.field("db.operation.name"), "SELECT");
    assert_eq!(read.field("db.namespace"), "postgres");
    assert_eq!(read.field("server.address"), host);
    assert!(
        replica_ports.contains(read.field("server.port")),
        "{read:#?} is not on a replica {replica_ports:?}"
    );
    assert!(!read.field("herd.db.node").is_empty());
    assert_eq!(read.field("herd.db.route"), "replica");
    assert_eq!(read.field("herd.db.reason"), "read_only");
    assert_eq!(read.field("db.response.returned_rows"), "1");
    assert!(!read.fields.contains_key("error.type"), "{read:#?}");
    // Neither the SQL nor its arguments reach the span.
    for value in read.fields.values() {
        assert!(
            !value.contains(secret) && !value.contains("987654321") && !value.contains("$1"),
            "{read:#?}"
        );
    }

    // All the rows of a `fetch_all`.
    let rows: Vec<(i32,)> = sqlx::query_as("select generate_series(1, 5)")
        .fetch_all(&router)
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    let all = capture.one("herd.db.query");
    assert_eq!(all.field("db.operation.name"), "SELECT");
    assert_eq!(all.field("db.response.returned_rows"), "5");

    // A statement that must run on the primary: `execute` counts affected rows instead.
    sqlx::query("DO $$ BEGIN PERFORM 1; END $$")
        .execute(&router)
        .await
        .unwrap();
    let write = capture.one("herd.db.query");
    assert_eq!(write.field("db.operation.name"), "DO");
    assert_eq!(write.field("herd.db.route"), "primary");
    assert_eq!(write.field("herd.db.reason"), "not_read_only");
    assert_eq!(write.field("server.port"), primary_port);
    assert_eq!(write.field("herd.db.affected_rows"), "0");
    assert!(!write.fields.contains_key("db.response.returned_rows"));

    // A failed statement: the error's kind and its SQLSTATE (22012: division by zero).
    let error = sqlx::query("SELECT 1 / 0").fetch_one(&router).await;
    assert!(error.is_err());
    let failed = capture.one("herd.db.query");
    assert_eq!(failed.field("error.type"), "database");
    assert_eq!(failed.field("db.response.status_code"), "22012");
    assert!(!failed.fields.contains_key("db.response.returned_rows"));
}
