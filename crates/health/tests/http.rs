//! The endpoints over real HTTP: axum and plain hyper servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{assert_draft_body, client, get, request, serve};
use futures_util::StreamExt;
use herd_health::{
    CheckOptions, CheckResult, ComponentType, Health, HealthConfig, Measurement, ShowDetails,
    Status, check, tags,
};
use http::{Method, StatusCode};

fn replication_check() -> impl herd_health::HealthCheck {
    check::from_fn("postgres", || async {
        CheckResult::pass()
            .with_measurement(
                Measurement::new("replayLag", Status::Pass)
                    .component_id("replica1")
                    .observed(0, "bytes"),
            )
            .with_measurement(
                Measurement::new("replayLag", Status::Warn)
                    .component_id("replica2")
                    .observed(20_000_000, "bytes")
                    .output("replica2 is 20000000 bytes behind (warn above 16777216)"),
            )
            .with_measurement(
                Measurement::new("role", Status::Pass)
                    .component_id("primary")
                    .value("primary"),
            )
    })
    .component_type(ComponentType::Datastore)
}

fn details_config() -> HealthConfig {
    HealthConfig {
        show_details: ShowDetails::WhenAuthorized,
        details_token: Some("let-me-see".to_owned()),
        service_id: Some("orders".to_owned()),
        version: Some("1.4.2".to_owned()),
        ..HealthConfig::default()
    }
}

#[tokio::test]
async fn axum_endpoints_answer_draft_bodies_with_the_right_codes() {
    let health = Health::builder()
        .config(details_config())
        .check_with(
            replication_check(),
            CheckOptions::new().tags([tags::DATASTORE, tags::REPLICATION]),
        )
        .check_with(
            check::from_fn("search", || async {
                CheckResult::fail("connection refused by 127.0.0.1:9200")
            }),
            CheckOptions::new().non_critical(),
        )
        .build()
        .unwrap();
    let addr = serve(health.router()).await;
    let client = client();

    // Not started: startup and readiness fail, liveness passes.
    let startup = get(&client, addr, "/health/startup").await;
    assert_eq!(startup.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        get(&client, addr, "/health/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let live = get(&client, addr, "/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.headers["content-type"], "application/health+json");
    assert_eq!(live.headers["cache-control"], "no-store");
    assert_draft_body(&live.json());

    health.mark_started();
    // Readiness: the critical check warns (replica2 lags): 200 with status warn.
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    let body = ready.json();
    assert_draft_body(&body);
    assert_eq!(body["status"], "warn");
    // Without the token, nothing but status and service identity leaks.
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    assert_eq!(body["serviceId"], "orders");

    // Deep, with the token: every check, keyed component:measurement, per-replica entries.
    let deep = request(&client, Method::GET, addr, "/health", Some("let-me-see")).await;
    assert_eq!(
        deep.status,
        StatusCode::OK,
        "non-critical failure only warns"
    );
    let body = deep.json();
    assert_draft_body(&body);
    assert_eq!(body["status"], "warn");
    assert_eq!(body["version"], "1.4.2");
    let lag = body["checks"]["postgres:replayLag"].as_array().unwrap();
    assert_eq!(lag.len(), 2);
    assert_eq!(lag[1]["componentId"], "replica2");
    assert_eq!(lag[1]["componentType"], "datastore");
    assert_eq!(lag[1]["observedValue"], 20_000_000);
    assert_eq!(lag[1]["observedUnit"], "bytes");
    assert_eq!(lag[1]["status"], "warn");
    assert_eq!(
        body["checks"]["postgres:role"][0]["observedValue"],
        "primary"
    );
    // The check's own entry names the measurement that is not passing.
    assert_eq!(
        body["checks"]["postgres:responseTime"][0]["output"],
        "not passing: replayLag of replica2 (warn)"
    );
    let search = &body["checks"]["search:responseTime"][0];
    assert_eq!(search["status"], "fail");
    assert_eq!(search["observedUnit"], "ms");
    assert_eq!(search["output"], "connection refused by 127.0.0.1:9200");

    // A wrong token sees no details.
    let wrong = request(&client, Method::GET, addr, "/health", Some("guess")).await;
    assert!(wrong.json().get("checks").is_none());

    // The replication group only has checks tagged `replication`.
    let replication = request(
        &client,
        Method::GET,
        addr,
        "/health/replication",
        Some("let-me-see"),
    )
    .await;
    let body = replication.json();
    assert_draft_body(&body);
    let keys: Vec<&String> = body["checks"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|key| key.starts_with("postgres:")),
        "{keys:?}"
    );

    // Unknown groups are 404.
    assert_eq!(
        get(&client, addr, "/health/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Liveness with details shows the process uptime, as the draft's example does.
    let live = request(
        &client,
        Method::GET,
        addr,
        "/health/live",
        Some("let-me-see"),
    )
    .await;
    let body = live.json();
    assert_eq!(body["checks"]["uptime"][0]["observedUnit"], "s");
    assert_eq!(body["checks"]["uptime"][0]["componentType"], "system");
}

#[tokio::test]
async fn a_failing_critical_check_is_503_and_a_timeout_says_so() {
    let slow = check::from_fn("payments", || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        CheckResult::pass()
    });
    let health = Health::builder()
        .config(HealthConfig {
            show_details: ShowDetails::Always,
            ..HealthConfig::default()
        })
        .started(true)
        .check_with(
            slow,
            CheckOptions::new().timeout(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let addr = serve(health.router()).await;
    let ready = get(&client(), addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    assert_draft_body(&body);
    assert_eq!(body["status"], "fail");
    let entry = &body["checks"]["payments:responseTime"][0];
    assert_eq!(entry["output"], "timed out after 100ms");
    let took = entry["observedValue"].as_f64().unwrap();
    assert!((100.0..5_000.0).contains(&took), "took {took} ms");
}

#[tokio::test]
async fn a_thousand_probes_within_one_ttl_run_the_check_once() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let database = check::from_fn("postgres", move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            // A slow check makes the concurrent first probes pile up on the in-flight run.
            tokio::time::sleep(Duration::from_millis(50)).await;
            CheckResult::pass()
        }
    });
    let health = Health::builder()
        .config(HealthConfig {
            cache_ttl: Duration::from_secs(60),
            ..HealthConfig::default()
        })
        .started(true)
        .check(database)
        .build()
        .unwrap();
    let addr = serve(health.router()).await;
    let client = client();
    // 64 probes in flight at a time keeps the test within small file-descriptor limits.
    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..1000)
        .map(|_| {
            let client = client.clone();
            async move { get(&client, addr, "/health/ready").await.status }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let answered = statuses.len();
    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    assert_eq!(answered, 1000);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Deep health shares the same cached result.
    assert_eq!(get(&client, addr, "/health").await.status, StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn background_refresh_keeps_results_fresh_without_probes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let health = Health::builder()
        .config(HealthConfig {
            refresh_interval: Some(Duration::from_millis(20)),
            cache_ttl: Duration::from_secs(60),
            ..HealthConfig::default()
        })
        .check(check::from_fn("queue", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { CheckResult::pass() }
        }))
        .build()
        .unwrap();
    let mut published = health.subscribe();
    let refresher = health.spawn_background_refresh().unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refreshed = runs.load(Ordering::SeqCst);
    assert!(refreshed >= 3, "only {refreshed} background runs");
    // Each refresh publishes the deep report.
    published.changed().await.unwrap();
    let report = published.borrow_and_update().clone().unwrap();
    assert_eq!(report.status, Status::Warn, "not started yet: deep warns");
    assert!(report.checks.contains_key("queue:responseTime"));
    assert!(health.last_outcome("queue").is_some());
    // Dropping the last Health stops the task.
    drop(health);
    tokio::time::timeout(Duration::from_secs(2), refresher)
        .await
        .expect("refresh task ends with its Health")
        .unwrap();
}

#[tokio::test]
async fn drain_fails_readiness_at_once_and_shutdown_waits_the_delay() {
    let health = Health::builder()
        .config(HealthConfig {
            drain_delay: Duration::from_millis(600),
            ..HealthConfig::default()
        })
        .started(true)
        .check(check::from_fn("postgres", || async { CheckResult::pass() }))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = health.drain_on(signal);
    let router = health.router();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    });
    let client = client();
    assert_eq!(
        get(&client, addr, "/health/ready").await.status,
        StatusCode::OK
    );

    trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Within the delay the server still answers: not ready, but alive.
    assert!(health.is_draining());
    assert_eq!(
        get(&client, addr, "/health/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&client, addr, "/health/live").await.status,
        StatusCode::OK
    );
    assert!(
        !server.is_finished(),
        "server stopped before the drain delay"
    );

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after the drain delay")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_plain_tower_service_serves_hyper() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let health = Health::builder()
        .config(HealthConfig {
            base_path: "/internal/health".to_owned(),
            show_details: ShowDetails::Always,
            ..HealthConfig::default()
        })
        .started(true)
        .check(check::from_fn("cache", || async { Status::Fail }))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = health.service();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let client = client();
    let ready = get(&client, addr, "/internal/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_draft_body(&ready.json());
    assert_eq!(
        get(&client, addr, "/internal/health/live").await.status,
        StatusCode::OK
    );
    let head = request(&client, Method::HEAD, addr, "/internal/health/live", None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let post = request(&client, Method::POST, addr, "/internal/health/live", None).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(
        get(&client, addr, "/health/live").await.status,
        StatusCode::NOT_FOUND
    );
    // No recorder configured: /metrics is not served.
    assert_eq!(
        get(&client, addr, "/metrics").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_layer_answers_probes_in_front_of_a_hyper_app() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use tower::Layer;

    let health = Health::builder().started(true).build().unwrap();
    let app = tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
        let body = format!("app saw {}", request.uri().path());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
    });
    let service = health.layer().layer(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let client = client();
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.headers["content-type"], "application/health+json");
    let orders = get(&client, addr, "/orders/7").await;
    assert_eq!(orders.status, StatusCode::OK);
    assert_eq!(orders.body, "app saw /orders/7");
    health.drain();
    assert_eq!(
        get(&client, addr, "/health/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&client, addr, "/orders/8").await.body,
        "app saw /orders/8"
    );
}

#[tokio::test]
async fn an_empty_group_answers_404_not_pass() {
    let health = Health::builder()
        .started(true)
        .check(check::from_fn("jobs", || async { CheckResult::pass() }))
        .build()
        .unwrap();
    let addr = serve(health.router()).await;
    let client = client();
    assert_eq!(
        get(&client, addr, "/health/replication").await.status,
        StatusCode::NOT_FOUND,
        "nothing is tagged for replication: the group must not pass"
    );
    assert_eq!(get(&client, addr, "/health").await.status, StatusCode::OK);
}
