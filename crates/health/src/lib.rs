//! Liveness, readiness, startup and deep health endpoints (application/health+json), Prometheus
//! metrics and graceful drain.

pub mod check;
mod options;

pub use async_trait::async_trait;
pub use check::{
    CheckResult, ComponentType, FnCheck, HealthCheck, IntoCheckResult, Measurement, Status,
};
pub use options::{CheckOptions, tags};
