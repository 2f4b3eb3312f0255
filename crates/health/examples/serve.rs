//! Run with: `cargo run -p herd-health --example serve`
//!
//! An axum service with every herd-health endpoint: liveness, readiness, startup, deep
//! health (details unlocked with `Authorization: Bearer demo-token`), `/metrics`, request
//! metrics by matched route, and a graceful drain on Ctrl-C / SIGTERM.
//!
//! ```text
//! curl -i localhost:3000/health/ready
//! curl -s -H 'Authorization: Bearer demo-token' localhost:3000/health | jq
//! curl -s localhost:3000/metrics | grep herd_
//! ```

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use herd_health::checks::{DiskSpaceCheck, DiskThresholds, SystemCheck, SystemThresholds};
use herd_health::{
    CheckOptions, CheckResult, Health, HealthConfig, HttpMetricsLayer, MetricsConfig,
    PrometheusMetrics, ShowDetails, check, tags,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let metrics = PrometheusMetrics::install(&MetricsConfig::default())?;

    let health = Health::builder()
        .config(HealthConfig {
            show_details: ShowDetails::WhenAuthorized,
            details_token: Some("demo-token".to_owned()),
            refresh_interval: Some(Duration::from_secs(5)),
            service_id: Some("herd-health-demo".to_owned()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            ..HealthConfig::default()
        })
        .metrics(metrics)
        // Your dependencies: a closure here; herd-db-router's RouterCheck in a real service.
        .check(check::from_fn("queue", || async { CheckResult::pass() }))
        .check_with(
            SystemCheck::new(SystemThresholds::default())?,
            CheckOptions::new().non_critical().tag(tags::SYSTEM),
        )
        .check_with(
            DiskSpaceCheck::new(std::env::temp_dir(), DiskThresholds::default()),
            CheckOptions::new().non_critical().tag(tags::SYSTEM),
        )
        .build()?;
    let _refresh = health.spawn_background_refresh()?;

    let app = Router::new()
        .route("/hello/{name}", get(|| async { "hello" }))
        .merge(health.router())
        .layer(HttpMetricsLayer::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    health.mark_started();
    axum::serve(listener, app)
        .with_graceful_shutdown(health.shutdown_signal())
        .await?;
    Ok(())
}
