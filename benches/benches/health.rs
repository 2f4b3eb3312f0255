//! herd-health: one in-process `/health/ready` request answered from cached check results,
//! next to the anchor: the hand-written axum handler services use today
//! (`Json({"status":"pass"})`, no checks at all).
//!
//! Run with: `cargo bench -p herd-benches --bench health`

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use herd_health::{
    CheckOptions, CheckResult, ComponentType, Health, HealthConfig, Measurement, ShowDetails,
    Status, check, tags,
};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Three critical checks, like a service with a database, a cache and a queue; the database
/// reports per-replica lag. The TTL is long so every request is answered from the cache.
fn health(show_details: ShowDetails) -> Health {
    let postgres = check::from_fn("postgres", || async {
        CheckResult::pass()
            .with_measurement(
                Measurement::new("replayLag", Status::Pass)
                    .component_id("replica1")
                    .observed(0, "bytes"),
            )
            .with_measurement(
                Measurement::new("replayLag", Status::Pass)
                    .component_id("replica2")
                    .observed(512, "bytes"),
            )
    })
    .component_type(ComponentType::Datastore);
    let redis = check::from_fn("redis", || async { CheckResult::pass() })
        .component_type(ComponentType::Datastore);
    let queue = check::from_fn("queue", || async { true });
    let health = Health::builder()
        .config(HealthConfig {
            cache_ttl: Duration::from_secs(3600),
            show_details,
            ..HealthConfig::default()
        })
        .started(true)
        .check_with(postgres, CheckOptions::new().tag(tags::REPLICATION))
        .check(redis)
        .check(queue)
        .build();
    match health {
        Ok(health) => health,
        Err(error) => panic!("building the registry: {error}"),
    }
}

async fn call(router: &Router, path: &'static str) -> usize {
    let request = Request::builder().uri(path).body(Body::empty());
    let Ok(request) = request else {
        panic!("building the request")
    };
    let Ok(response) = router.clone().oneshot(request).await;
    assert!(response.status().is_success());
    match response.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(error) => panic!("reading the body: {error}"),
    }
}

fn bench_health(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("building the runtime: {error}"),
    };
    let with_details: Router = health(ShowDetails::Always).router();
    let hidden: Router = health(ShowDetails::Never).router();
    let anchor: Router = Router::new().route(
        "/health/ready",
        get(|| async { axum::Json(serde_json::json!({ "status": "pass" })) }),
    );
    // Fill the caches before measuring.
    runtime.block_on(async {
        call(&with_details, "/health/ready").await;
        call(&hidden, "/health/ready").await;
    });

    let mut group = c.benchmark_group("health");
    group.bench_function("ready_cached", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&with_details, "/health/ready").await) })
    });
    group.bench_function("ready_cached_details_hidden", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&hidden, "/health/ready").await) })
    });
    group.bench_function("axum_static_handler", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(call(&anchor, "/health/ready").await) })
    });
    group.finish();
}

criterion_group!(benches, bench_health);
criterion_main!(benches);
