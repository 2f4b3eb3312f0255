//! The whole herd architecture on one machine: a gateway in front of 3 stateless instances that
//! share a PostgreSQL primary with a streaming replica and a Redis Cluster.
//!
//! Run with: `cargo run -p axum-app` (see the README for what you will see and the curl lines).
//!
//! - [`instance`]: the notes app (sign-up, login, notes, a cached endpoint, health, metrics),
//!   built from herd-session, herd-db-router, herd-cache-cluster and herd-health.
//! - [`gateway`]: the balancer in front, built from herd-gateway's HTTP upstream, with per-IP rate
//!   limits and a response cache.
//! - [`topology`]: the back ends, from the environment or started locally with herd-testkit.

pub mod auth;
pub mod gateway;
pub mod instance;
pub mod topology;
