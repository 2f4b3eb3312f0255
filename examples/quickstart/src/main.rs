//! A first herd service: sessions in a Redis Cluster, reads from replicas through `&DbRouter`,
//! a cache with one load per key, health and metrics, and read-your-writes, in one file.
//!
//! Run with: `cargo run -p herd-testkit --bin herd-dev -- up --replicas 1 --redis-cluster`, paste
//! the exports it prints, then `cargo run -p quickstart` (`HERD_DEV=1` for plain-HTTP cookies and
//! no drain delay). `SESSION_KEY` comes from `cargo run -p herd-session --example keygen`.
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herd_cache_cluster::{Backend, Cache, RedisConfig};
use herd_db_router::health::RouterCheck;
use herd_db_router::{DbRouter, ErrorClass, NodeConfig, ReadYourWritesLayer, RouterConfig, sqlx};
use herd_health::{CheckOptions, Health, HealthConfig, HttpMetricsLayer, PrometheusMetrics};
use herd_session::{Key, RedisStore, Session, SessionLayer, SigningKeys};
use serde::{Deserialize, Serialize};

type Failure = (StatusCode, &'static str);

#[derive(Clone)]
struct App {
    db: DbRouter,
    cache: Cache,
}

#[derive(Clone, Serialize, Deserialize)]
struct Note {
    id: i64,
    body: String,
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (see herd-dev's exports)"))
}

/// A database error blamed where it belongs: a client's bad data is a 4xx, an outage a 503.
fn db_failure(error: sqlx::Error) -> Failure {
    let status = ErrorClass::of(&error).status();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, "database error")
}

/// Writes go to the primary; the session remembers the write for read-your-writes.
async fn create_note(State(app): State<App>, body: String) -> Result<Json<Note>, Failure> {
    let (id,): (i64,) = sqlx::query_as("INSERT INTO notes (body) VALUES ($1) RETURNING id")
        .bind(&body)
        .fetch_one(&app.db)
        .await
        .map_err(db_failure)?;
    Ok(Json(Note { id, body }))
}

/// Reads go to a replica that has this user's writes, also inside the cache's loader.
async fn get_note(State(app): State<App>, Path(id): Path<i64>) -> Result<Json<Note>, Failure> {
    let db = app.db.clone(); // the loader owns what it uses: it runs as its own task
    let load = move || async move {
        sqlx::query_as::<_, (i64, String)>("SELECT id, body FROM notes WHERE id = $1")
            .bind(id)
            .fetch_optional(&db)
            .await
            .map(|row| row.map(|(id, body)| Note { id, body }))
    };
    let note = app
        .cache
        .get_or_load(&format!("note:{id}"), Duration::from_secs(60), load)
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "database error"))?;
    note.map(Json)
        .ok_or((StatusCode::NOT_FOUND, "no such note"))
}

/// Session data lives in the Redis Cluster: any instance serves the next request.
async fn visits(session: Session) -> Result<String, herd_session::SessionError> {
    let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", n).await?;
    Ok(n.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First: metrics recorded before a recorder is installed are lost (start-up queries too).
    let metrics = PrometheusMetrics::install(&Default::default())?;
    let dev = std::env::var_os("HERD_DEV").is_some();

    // Every node with role `auto`: the router finds the primary and follows a promotion.
    let urls = format!(
        "{},{}",
        env("DATABASE_URL")?,
        env("REPLICA_URLS").unwrap_or_default()
    );
    let nodes = urls
        .split(',')
        .filter(|u| !u.is_empty())
        .map(NodeConfig::new);
    let db = DbRouter::connect(RouterConfig {
        nodes: nodes.collect(),
        ..RouterConfig::default()
    })
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, body text NOT NULL)")
        .execute(&db)
        .await?;

    let redis_nodes: Vec<String> = env("REDIS_CLUSTER_NODES")?
        .split(',')
        .map(String::from)
        .collect();
    let cache = Cache::builder(Backend::cluster(RedisConfig::new(redis_nodes.clone())).await?)
        .namespace("quickstart")
        .build()
        .await?;
    let store = RedisStore::cluster(&redis_nodes, Default::default()).await?;
    // Every instance shares the key (standard base64 of 32+ bytes).
    let keys = SigningKeys::new(Key::from_base64(&env("SESSION_KEY")?)?);
    let sessions = SessionLayer::builder(store.clone(), keys)
        .secure(!dev) // Secure cookies, except for plain-HTTP development
        .build()?;

    // The database and Redis are shared by every instance: their failure shows on /health
    // but never fails readiness. The router's check is on /health/replication by itself.
    let shared = CheckOptions::new().shared_dependency();
    let health = Health::builder()
        .config(if dev {
            HealthConfig::development()
        } else {
            HealthConfig::default()
        })
        .check_with(RouterCheck::new(db.clone()), shared.clone())
        .check_with(cache.health_check(), shared.clone())
        .check_with(herd_session::health::StoreCheck::new(store), shared)
        .metrics(metrics)
        .build()?;

    let app = Router::new()
        .route("/notes", post(create_note))
        .route("/notes/{id}", get(get_note))
        .route("/visits", get(visits))
        // Inside the session layer: the read-your-writes token rides in the session.
        .layer(ReadYourWritesLayer::session(db.clone()))
        .layer(sessions)
        .with_state(App { db, cache })
        .merge(health.router())
        .layer(HttpMetricsLayer::new());

    let listener =
        tokio::net::TcpListener::bind(env("LISTEN").unwrap_or("127.0.0.1:3000".into())).await?;
    println!("listening on http://{}", listener.local_addr()?);
    health.mark_started();
    axum::serve(listener, app)
        .with_graceful_shutdown(health.shutdown_signal())
        .await?;
    Ok(())
}
