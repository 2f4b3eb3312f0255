//! Liveness, readiness, startup and deep health endpoints (`application/health+json`),
//! Prometheus metrics and graceful drain for services that run as many copies behind a load
//! balancer.
//!
//! - [`HealthCheck`]: an object-safe async trait for checks; herd-db-router,
//!   herd-cache-cluster and herd-session implement it behind their `health` feature, this
//!   crate adds [system](checks::SystemCheck), [disk](checks::DiskSpaceCheck) and
//!   [closure](check::from_fn) checks.
//! - [`Health`]: the registry. Checks run concurrently, each under its own timeout; results
//!   are cached for a TTL (a storm of probes runs each check once) or refreshed in the
//!   background. Liveness never looks at dependencies; readiness fails while draining.
//! - Endpoints as an axum [`Router`](Health::router) or a plain tower
//!   [`Service`](Health::service): `/health/live`, `/health/ready`, `/health/startup`,
//!   `/health`, `/health/replication` (and other groups), `/metrics`; or a
//!   [`HealthLayer`] in front of any HTTP service. Bodies follow the IETF
//!   draft "Health Check Response Format for HTTP APIs"; 200 for pass and warn, 503 for fail.
//! - [`PrometheusMetrics`]: the `metrics` recorder rendered at `/metrics`, with histogram
//!   buckets and the upkeep task; [`HttpMetricsLayer`] counts requests by matched route.
//! - [`Health::shutdown_signal`]: on SIGTERM, readiness fails at once, and the server stops
//!   accepting only after a delay, so balancers stop sending first.
//!
//! Checks of herd's other crates plug in the same way (they depend on this crate, not the
//! other way round), each behind that crate's `health` feature:
//!
//! | crate | check | what it reports |
//! |---|---|---|
//! | herd-db-router | `health::RouterCheck::new(router)`, named `database` | nodes, roles, replica lag, pools; tagged [`tags::REPLICATION`] by itself, so it is served on `/health/replication` too |
//! | herd-cache-cluster | `cache.health_check()` (`CacheHealth`), named `cache` | `PING` per master, `cluster_state`, circuit, hit ratio |
//! | herd-session | the store itself: `RedisStore` and `MemoryStore` implement [`HealthCheck`] (register a clone), named `session-store` | `PING` through the store's connection |
//!
//! The database and the Redis Cluster are shared by every instance: register them with
//! [`CheckOptions::shared_dependency`], so their failure shows on `/health` without taking
//! every instance out of the balancer at once. A group endpoint (`/health/replication`, or a
//! configured one) answers 404 while no check carries its tags, rather than passing.
//!
//! **Details are hidden by default** ([`ShowDetails::Never`]): `/health` says only
//! `{"status":"pass"}`. Show the per-check details (replica lag, node errors) with
//! `show_details = "when-authorized"` and a `details_token` (requests with
//! `Authorization: Bearer <token>`), or `"always"` for an endpoint only operators can reach;
//! [`HealthConfig::development`] shows them and drops the drain delay for local runs.
//!
//! **Install the metrics recorder first.** The `metrics` facade drops what is recorded before a
//! recorder is installed: call [`PrometheusMetrics::install`] at the start of `main`, before
//! connecting to the database or the cache, or their start-up metrics never reach `/metrics`.
//!
//! Features: `axum` (the router and `MatchedPath` labels), `prometheus` (`/metrics`),
//! `system` and `disk` (sysinfo checks), all on by default; `lb-core` (the
//! [`EndpointsCheck`](checks) over a herd-lb-core balancer); `full` for all.
//!
//! ```
//! use std::time::Duration;
//! use axum::Router;
//! use herd_health::{check, CheckOptions, CheckResult, Health, HttpMetricsLayer, Status};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herd_health::Error> {
//! let health = Health::builder()
//!     .check(check::from_fn("queue", || async { CheckResult::pass() }))
//!     .check_with(
//!         check::from_fn("search", || async { CheckResult::warn("index is rebuilding") }),
//!         CheckOptions::new().non_critical().timeout(Duration::from_millis(200)),
//!     )
//!     .build()?;
//!
//! let app: Router = Router::new()
//!     .merge(health.router())
//!     .layer(HttpMetricsLayer::new());
//! # let _ = app;
//!
//! assert_eq!(health.ready().await.status, Status::Fail); // not started yet
//! health.mark_started();
//! assert_eq!(health.ready().await.status, Status::Pass); // "search" is not critical
//! assert_eq!(health.deep().await.status, Status::Warn);
//! health.drain(); // e.g. on SIGTERM, see Health::shutdown_signal
//! assert_eq!(health.ready().await.status, Status::Fail);
//! assert_eq!(health.live().status, Status::Pass);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

pub mod check;
pub mod checks;
mod config;
mod error;
pub mod future;
mod health;
mod http;
mod http_metrics;
mod layer;
pub mod metrics;
mod options;
#[cfg(feature = "prometheus")]
mod prometheus;
mod registry;
mod report;
mod shutdown;

pub use async_trait::async_trait;
pub use check::{
    CheckResult, ComponentType, FnCheck, HealthCheck, IntoCheckResult, Measurement, Status,
};
pub use config::{HealthConfig, ShowDetails};
pub use error::Error;
pub use health::{Health, HealthBuilder, Probe};
pub use http::HealthService;
pub use http_metrics::{HttpMetrics, HttpMetricsLayer};
pub use layer::{HealthLayer, WithHealth};
pub use options::{CheckOptions, tags};
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use prometheus::{MetricsConfig, PrometheusMetrics};
pub use registry::Outcome;
pub use report::{CheckEntry, HEALTH_JSON, HealthReport};
