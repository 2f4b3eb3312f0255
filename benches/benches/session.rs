//! herd-session: one axum request whose handler reads a counter from the session and writes it
//! back incremented, called in process (no socket) with the session cookie, so every iteration
//! is cookie check -> load -> get -> insert -> save. tower-sessions answers every such request
//! with a `Set-Cookie`; herd (default rolling expiry) sends one only when the id is new or the
//! expiry moves, at most once per half idle timeout, so not within a run.
//!
//! * `axum_without_session`: the same route with no session layer, for scale: what the
//!   router, request and response cost on their own.
//! * `herd_memory`: herd's `SessionLayer` over its `MemoryStore` (signed cookie, versioned
//!   check-and-set save).
//! * `tower_sessions_memory`: the anchor, tower-sessions 0.15 `SessionManagerLayer` with its
//!   `MemoryStore`, default settings (its cookie is not signed by default).
//! * `tower_sessions_memory_signed`: the anchor with `with_signed`, the setting comparable to
//!   herd's always-signed cookie.
//! * `herd_redis`: herd's layer over `RedisStore` on a testkit Redis Cluster (3 masters +
//!   3 replicas on this machine): a load script and a check-and-set script per request.
//!
//! Run with: `cargo bench -p herd-benches --bench session`

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use herd_session::{
    Key, MemoryStore, RedisStore, RedisStoreConfig, Session, SessionError, SessionIdGenerator,
    SessionLayer, SigningKeys,
};
use herd_testkit::RedisCluster;
use http::{Request, header};
use tokio::runtime::Runtime;
use tower::ServiceExt as _;

async fn herd_counter(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("counter").await?.unwrap_or(0) + 1;
    session.insert("counter", n).await?;
    Ok(n.to_string())
}

async fn tower_sessions_counter(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("counter").await.ok().flatten().unwrap_or(0) + 1;
    session
        .insert("counter", n)
        .await
        .expect("tower-sessions insert");
    n.to_string()
}

fn herd_app(store: impl herd_session::SessionStore) -> Router {
    let keys = SigningKeys::new(Key::from_bytes(&[42; 32]).expect("bench key"));
    let layer = SessionLayer::builder(store, keys)
        .secure(false)
        .id_generator(SessionIdGenerator::seeded(1))
        .build()
        .expect("herd session layer");
    Router::new().route("/", get(herd_counter)).layer(layer)
}

fn tower_sessions_app(signed: bool) -> Router {
    let layer = tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
        .with_secure(false);
    let router = Router::new().route("/", get(tower_sessions_counter));
    if signed {
        router.layer(layer.with_signed(tower_sessions::cookie::Key::from(&[42; 64])))
    } else {
        router.layer(layer)
    }
}

/// The same route without any session layer: what the router and request cost on their own.
fn baseline_app() -> Router {
    async fn counter() -> String {
        black_box(1_u64).to_string()
    }
    Router::new()
        .route("/", get(counter))
        .layer(tower::layer::util::Identity::new())
}

/// Makes the first request and returns the `name=value` pair of the cookie it set.
async fn session_cookie(app: &Router) -> String {
    let response = app
        .clone()
        .oneshot(Request::new(Body::empty()))
        .await
        .expect("first request");
    match response.headers().get(header::SET_COOKIE) {
        Some(set_cookie) => {
            let text = set_cookie.to_str().expect("ascii cookie");
            text.split(';').next().expect("cookie pair").to_owned()
        }
        // The baseline has no session: send the same header anyway.
        None => "sid=none".to_owned(),
    }
}

/// One request with the session cookie; returns the response status.
async fn request(app: &Router, cookie: &str) -> u16 {
    let request = Request::builder()
        .uri("/")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    response.status().as_u16()
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let (cluster, redis_store) = rt.block_on(async {
        let cluster = RedisCluster::start().await.expect("testkit redis cluster");
        let store = RedisStore::cluster(cluster.urls(), RedisStoreConfig::default())
            .await
            .expect("redis session store");
        (cluster, store)
    });

    let apps = [
        ("axum_without_session", baseline_app()),
        ("herd_memory", herd_app(MemoryStore::new())),
        ("tower_sessions_memory", tower_sessions_app(false)),
        ("tower_sessions_memory_signed", tower_sessions_app(true)),
        ("herd_redis", herd_app(redis_store)),
    ];

    let mut group = c.benchmark_group("session_request");
    for (name, app) in &apps {
        let cookie = rt.block_on(session_cookie(app));
        assert_eq!(
            rt.block_on(request(app, &cookie)),
            200,
            "{name} answers 200"
        );
        group.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(request(app, &cookie).await) });
        });
    }
    group.finish();
    drop(apps);
    drop(cluster);
}

criterion_group!(benches, bench);
criterion_main!(benches);
