//! Readiness against a real PostgreSQL primary started by herd-testkit: it fails when the
//! primary is SIGKILLed and recovers when it comes back, while liveness keeps passing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_draft_body, client, get, serve};
use herd_health::{
    CheckOptions, CheckResult, ComponentType, Health, HealthCheck, HealthConfig, Measurement,
    ShowDetails, Status, async_trait, tags,
};
use herd_testkit::PgCluster;
use http::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A small PostgreSQL check, as a user (or herd-db-router) would write one: reachability
/// through the pool and the node's role.
struct Postgres {
    pool: PgPool,
}

#[async_trait]
impl HealthCheck for Postgres {
    fn name(&self) -> &str {
        "postgres"
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    async fn check(&self) -> CheckResult {
        match sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
            .fetch_one(&self.pool)
            .await
        {
            Ok(in_recovery) => CheckResult::pass().with_measurement(
                Measurement::new("role", Status::Pass)
                    .component_id("primary")
                    .value(if in_recovery { "replica" } else { "primary" }),
            ),
            Err(error) => {
                CheckResult::fail(format!("primary: SELECT pg_is_in_recovery(): {error}"))
            }
        }
    }
}

async fn wait_for_status(
    client: &common::HttpClient,
    addr: std::net::SocketAddr,
    want: StatusCode,
    within: Duration,
) -> common::Answer {
    let deadline = Instant::now() + within;
    loop {
        let answer = get(client, addr, "/health/ready").await;
        if answer.status == want || Instant::now() > deadline {
            return answer;
        }
        // Liveness never follows the database.
        assert_eq!(
            get(client, addr, "/health/live").await.status,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_follows_the_primary_and_liveness_does_not() {
    let pg = PgCluster::start(0).await.expect("start PostgreSQL");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(700))
        .connect_lazy(&pg.primary_url())
        .unwrap();
    let health = Health::builder()
        .config(HealthConfig {
            cache_ttl: Duration::from_millis(100),
            check_timeout: Duration::from_secs(1),
            show_details: ShowDetails::Always,
            ..HealthConfig::default()
        })
        .started(true)
        .check_with(Postgres { pool }, CheckOptions::new().tag(tags::DATASTORE))
        .build()
        .unwrap();
    let addr = serve(health.router()).await;
    let client = client();

    let ready = wait_for_status(&client, addr, StatusCode::OK, Duration::from_secs(10)).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let body = ready.json();
    assert_draft_body(&body);
    assert_eq!(
        body["checks"]["postgres:role"][0]["observedValue"],
        "primary"
    );

    pg.primary().kill().expect("SIGKILL the primary");
    let down = wait_for_status(
        &client,
        addr,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.body
    );
    let body = down.json();
    assert_draft_body(&body);
    assert_eq!(body["status"], "fail");
    let output = body["checks"]["postgres:responseTime"][0]["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        output.starts_with("primary: SELECT pg_is_in_recovery()"),
        "{output}"
    );
    assert_eq!(
        get(&client, addr, "/health/live").await.status,
        StatusCode::OK
    );

    pg.primary().start().await.expect("restart the primary");
    let back = wait_for_status(&client, addr, StatusCode::OK, Duration::from_secs(20)).await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.body);
    assert_eq!(back.json()["status"], "pass");
}
