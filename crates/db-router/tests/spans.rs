//! The `herd.db.query` span against a real primary + 2 streaming replicas (herd-testkit's
//! shared cluster): OpenTelemetry field names, the node, route, reason and rows, the SQLSTATE of
//! a failed statement, and never the SQL text or its arguments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_db_router::{DbRouter, NodeConfig, RouterConfig};
use herd_testkit::shared;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The spans a test ran, captured as they close: name, target and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
}

/// Field values as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// A layer keeping every closed span.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// The spans named `name` closed so far, and forgets them.
    fn take(&self, name: &str) -> Vec<Captured> {
        let mut spans = self.0.lock().unwrap();
        let (taken, kept) = spans.drain(..).partition(|s| s.name == name);
        *spans = kept;
        taken
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span
            .extensions_mut()
            .remove::<Fields>()
            .unwrap_or_default()
            .0;
        self.0.lock().unwrap().push(Captured {
            name: span.name(),
            target: span.metadata().target().to_owned(),
            fields,
        });
    }
}

/// The one span of `name` captured since the last call; fails unless there is exactly one.
fn one(capture: &Capture, name: &str) -> Captured {
    let mut spans = capture.take(name);
    assert_eq!(spans.len(), 1, "want one {name} span: {spans:#?}");
    spans.remove(0)
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no field {name} in {span:#?}"))
}

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
    let read = one(&capture, "herd.db.query");
    assert_eq!(read.target, "herd_db_router::query");
    assert_eq!(field(&read, "db.system.name"), "postgresql");
    assert_eq!(field(&read, "db.operation.name"), "SELECT");
    assert_eq!(field(&read, "db.namespace"), "postgres");
    assert_eq!(field(&read, "server.address"), host);
    assert!(
        replica_ports.contains(field(&read, "server.port")),
        "{read:#?} is not on a replica {replica_ports:?}"
    );
    assert!(!field(&read, "herd.db.node").is_empty());
    assert_eq!(field(&read, "herd.db.route"), "replica");
    assert_eq!(field(&read, "herd.db.reason"), "read_only");
    assert_eq!(field(&read, "db.response.returned_rows"), "1");
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
    let all = one(&capture, "herd.db.query");
    assert_eq!(field(&all, "db.operation.name"), "SELECT");
    assert_eq!(field(&all, "db.response.returned_rows"), "5");

    // A statement that must run on the primary: `execute` counts affected rows instead.
    sqlx::query("DO $$ BEGIN PERFORM 1; END $$")
        .execute(&router)
        .await
        .unwrap();
    let write = one(&capture, "herd.db.query");
    assert_eq!(field(&write, "db.operation.name"), "DO");
    assert_eq!(field(&write, "herd.db.route"), "primary");
    assert_eq!(field(&write, "herd.db.reason"), "not_read_only");
    assert_eq!(field(&write, "server.port"), primary_port);
    assert_eq!(field(&write, "herd.db.affected_rows"), "0");
    assert!(!write.fields.contains_key("db.response.returned_rows"));

    // A failed statement: the error's kind and its SQLSTATE (22012: division by zero).
    let error = sqlx::query("SELECT 1 / 0").fetch_one(&router).await;
    assert!(error.is_err());
    let failed = one(&capture, "herd.db.query");
    assert_eq!(field(&failed, "error.type"), "database");
    assert_eq!(field(&failed, "db.response.status_code"), "22012");
    assert!(!failed.fields.contains_key("db.response.returned_rows"));
}
