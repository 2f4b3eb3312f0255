//! Read-your-writes tokens on a real cluster (one replica, replay paused, still eligible):
//! bounded by what the primary has reported, kept in a request's `TokenSlot` (the herd session's
//! place for it), and followed into work spawned for the request; the router check tags itself
//! for `/health/replication`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use herd_context::{TokenFuture, TokenSlot, TokenStore};
use herd_db_router::{
    Consistency, DbRouter, Lsn, NodeConfig, ReadYourWritesConfig, ReadYourWritesLayer, RouterConfig,
};
use herd_testkit::PgCluster;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn config(pg: &PgCluster, check_interval: Duration) -> RouterConfig {
    RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval,
        // The paused replica stays eligible: only a token keeps reads off it.
        max_lag_bytes: u64::MAX,
        max_lag: Duration::from_secs(3600),
        read_your_writes: ReadYourWritesConfig {
            max_wait: Duration::from_millis(200),
            ..ReadYourWritesConfig::default()
        },
        ..RouterConfig::default()
    }
}

/// `"<value> <port>"` of the note, read through the router.
async fn read(State(db): State<DbRouter>) -> String {
    let (v, port): (i64, i32) =
        sqlx::query_as("SELECT v, inet_server_port() FROM note WHERE id = 1")
            .fetch_one(&db)
            .await
            .unwrap();
    format!("{v} {port}")
}

/// The same read, in a task the handler spawns with `herd_context::spawn`.
async fn read_spawned(State(db): State<DbRouter>) -> String {
    herd_context::spawn(read(State(db))).await.unwrap()
}

async fn write(State(db): State<DbRouter>) -> String {
    let v: i64 = sqlx::query_scalar("UPDATE note SET v = v + 1 WHERE id = 1 RETURNING v")
        .fetch_one(&db)
        .await
        .unwrap();
    v.to_string()
}

fn app() -> axum::Router<DbRouter> {
    axum::Router::new()
        .route("/read", get(read))
        .route("/read-spawned", get(read_spawned))
        .route("/write", post(write))
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    header: Option<&str>,
) -> (String, Option<String>) {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(token) = header {
        request = request.header("x-herd-lsn", token);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success(), "{method} {path}");
    let token = response
        .headers()
        .get("x-herd-lsn")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), token)
}

fn split(body: &str) -> (i64, u16) {
    let (v, port) = body.split_once(' ').unwrap();
    (v.parse().unwrap(), port.parse().unwrap())
}

/// A client's token kept in memory, as a session would keep it.
#[derive(Default)]
struct Kept(Mutex<Option<u64>>);

impl TokenStore for Kept {
    fn load(&self) -> TokenFuture<'_, Option<u64>> {
        let value = *self.0.lock().unwrap();
        Box::pin(async move { Ok(value) })
    }

    fn advance(&self, token: u64) -> TokenFuture<'_, ()> {
        let mut kept = self.0.lock().unwrap();
        if !kept.is_some_and(|kept| herd_context::newer(kept, token)) {
            *kept = Some(token);
        }
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bounded_kept_in_the_session_slot_and_follow_spawned_work() {
    let pg = PgCluster::start(1).await.unwrap();
    let (primary_port, replica_port) = (pg.primary().port(), pg.replica(0).port());
    // Instance A writes; instance B checks its monitor rarely, so a token from A is newer
    // than anything B has seen and must be checked against the primary, not dropped.
    let a = DbRouter::connect(config(&pg, Duration::from_millis(200)))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE note (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO note VALUES (1, 0);",
    )
    .execute(&a)
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    let b = DbRouter::connect(config(&pg, Duration::from_secs(600)))
        .await
        .unwrap();
    let seen_by_b = b.status().primary_lsn.unwrap();
    pg.replica(0).pause_replay().await.unwrap();

    // --- Bounds: a genuine token from another instance is honoured, a far-future one ignored.
    let header_b = app()
        .layer(ReadYourWritesLayer::header(b.clone()))
        .with_state(b.clone());
    let writer = Consistency::new();
    let written: i64 = writer
        .scope(async {
            sqlx::query_scalar("UPDATE note SET v = v + 1 WHERE id = 1 RETURNING v")
                .fetch_one(&a)
                .await
        })
        .await
        .unwrap();
    let token = a.settle(&writer).await.unwrap().unwrap();
    assert!(token > seen_by_b, "the token is newer than B's last look");
    let (body, echoed) = call(&header_b, "GET", "/read", Some(&token.to_string())).await;
    assert_eq!(
        split(&body),
        (written, primary_port),
        "a genuine token was not honoured"
    );
    assert_eq!(echoed, Some(token.to_string()));

    let far = Lsn::new(u64::MAX - 1).to_string();
    let started = tokio::time::Instant::now();
    let (body, echoed) = call(&header_b, "GET", "/read", Some(&far)).await;
    assert_eq!(
        split(&body).1,
        replica_port,
        "a far-future token must be ignored, not honoured by reading from the primary"
    );
    assert!(echoed.is_none(), "an ignored token is not handed back");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "the ignored token made the read wait max_wait"
    );
    assert_eq!(b.check_token(Lsn::new(u64::MAX)).await, None);
    assert_eq!(b.check_token(token).await, Some(token));

    // --- The session carrier: the token lives in the request's slot, no cookie or header.
    let kept = Arc::new(Kept::default());
    let session_b = app()
        .layer(ReadYourWritesLayer::session(b.clone()))
        .layer(axum::Extension(TokenSlot::new(kept.clone())))
        .with_state(b.clone());
    let (body, header) = call(&session_b, "POST", "/write", None).await;
    let written: i64 = body.parse().unwrap();
    assert!(header.is_none(), "the session carrier sets no header");
    let stored = kept.0.lock().unwrap().expect("the write stored a token");
    assert!(Lsn::new(stored) >= token);
    let (body, _) = call(&session_b, "GET", "/read", None).await;
    assert_eq!(
        split(&body).0,
        written,
        "stale read with the token in the session"
    );
    // A read-only request leaves the token as it is.
    assert_eq!(*kept.0.lock().unwrap(), Some(stored));

    // --- Work spawned for the request reads in its scope.
    let (body, _) = call(&session_b, "GET", "/read-spawned", None).await;
    assert_eq!(
        split(&body).0,
        written,
        "spawned work read outside the scope"
    );

    // Control: without a token the paused replica serves the old value.
    let bare = app().with_state(b.clone());
    let (body, _) = call(&bare, "GET", "/read", None).await;
    assert_eq!(
        split(&body),
        (0, replica_port),
        "control: replica not stale"
    );

    // The session carrier without a session layer: no token, no failure.
    let missing = app()
        .layer(ReadYourWritesLayer::session(b.clone()))
        .with_state(b.clone());
    let (body, _) = call(&missing, "GET", "/read", None).await;
    assert_eq!(split(&body).1, replica_port);

    // The router's health check is served on /health/replication with no option.
    let health = herd_health::Health::builder()
        .check(herd_db_router::health::RouterCheck::new(b.clone()))
        .build()
        .unwrap();
    let replication = health.group("replication").await.expect("tagged itself");
    assert!(
        replication
            .checks
            .keys()
            .any(|k| k.starts_with("database:"))
    );
    pg.replica(0).resume_replay().await.unwrap();
}
