//! Read-your-writes follows a request into the work the cache runs for it: a `get_or_load`
//! loader (run as its own task) and a background refresh of a stale value both read in the
//! request's herd-db-router `Consistency` scope, on real PostgreSQL (a replica with replay
//! paused) and a real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use herd_cache_cluster::{Backend, Cache, CacheConfig, RedisConfig};
use herd_db_router::sqlx;
use herd_db_router::{DbRouter, NodeConfig, ReadYourWritesLayer, RouterConfig};
use herd_testkit::PgCluster;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

#[derive(Clone)]
struct App {
    db: DbRouter,
    cache: Cache,
}

async fn body_of(db: &DbRouter) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(db)
        .await
}

async fn write(State(app): State<App>, Path(body): Path<String>) -> &'static str {
    sqlx::query("UPDATE notes SET body = $1 WHERE id = 1")
        .bind(body)
        .execute(&app.db)
        .await
        .unwrap();
    "written"
}

/// The note read by the handler itself, then through the cache under `key`.
async fn read(State(app): State<App>, Path(key): Path<String>) -> String {
    let direct = body_of(&app.db).await.unwrap();
    let db = app.db.clone();
    let loaded: Option<String> = app
        .cache
        .get_or_load(&key, Duration::from_secs(60), move || async move {
            body_of(&db).await.map(Some)
        })
        .await
        .unwrap();
    format!("{direct}|{}", loaded.unwrap_or_default())
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (String, Option<String>) {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("x-herd-lsn", token);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{method} {path}: {}",
        response.status()
    );
    let token = response
        .headers()
        .get("x-herd-lsn")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaders_and_background_refreshes_read_in_the_requests_scope() {
    let pg = PgCluster::start(1).await.unwrap();
    let db = DbRouter::connect(RouterConfig {
        primary: Some(NodeConfig::new(pg.primary_url())),
        replicas: pg.replica_urls().into_iter().map(NodeConfig::new).collect(),
        check_interval: Duration::from_millis(200),
        // The paused replica stays eligible: only the token keeps reads off it.
        max_lag_bytes: u64::MAX,
        max_lag: Duration::from_secs(3600),
        ..RouterConfig::default()
    })
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
         INSERT INTO notes VALUES (1, 'v0');",
    )
    .execute(&db)
    .await
    .unwrap();
    pg.wait_for_replay().await.unwrap();
    pg.replica(0).pause_replay().await.unwrap();

    let redis = herd_testkit::shared::redis().await.unwrap();
    let cache = Cache::builder(
        Backend::redis(RedisConfig::new([redis.url()]))
            .await
            .unwrap(),
    )
    .config(CacheConfig {
        namespace: "ryw-loader".into(),
        stale_ttl: Duration::from_secs(60),
        ..CacheConfig::default()
    })
    .build()
    .await
    .unwrap();
    let app = axum::Router::new()
        .route("/write/{body}", post(write))
        .route("/read/{key}", get(read))
        .layer(ReadYourWritesLayer::header(db.clone()))
        .with_state(App {
            db: db.clone(),
            cache: cache.clone(),
        });

    // Control: without a token both reads may use the paused replica, and do.
    let (_, token) = call(&app, "POST", "/write/v1", None).await;
    let token = token.expect("a write hands out a token");
    let (body, _) = call(&app, "GET", "/read/control", None).await;
    assert_eq!(
        body, "v0|v0",
        "control: the paused replica serves stale reads"
    );

    // With the token, the handler's read and the loader's read both see the write.
    let (body, _) = call(&app, "GET", "/read/fresh", Some(&token)).await;
    assert_eq!(
        body, "v1|v1",
        "the loader read outside the request's read-your-writes scope"
    );

    // A stale value is served while a background refresh replaces it: the refresh reads in
    // the scope of the request that started it.
    cache
        .set("refresh", &"old".to_owned(), Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (body, _) = call(&app, "GET", "/read/refresh", Some(&token)).await;
    assert_eq!(
        body, "v1|old",
        "the stale value stands in while it is refreshed"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refreshed = loop {
        match cache.get::<String>("refresh").await {
            Some(value) if value != "old" => break value,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        refreshed, "v1",
        "the background refresh read outside the request's read-your-writes scope"
    );
    pg.replica(0).resume_replay().await.unwrap();
}
