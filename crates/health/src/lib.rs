#![doc = include_str!("../README.md")]
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
pub use prometheus::{HERD_BUCKETS, MetricsConfig, PrometheusMetrics};
pub use registry::Outcome;
pub use report::{CheckEntry, HEALTH_JSON, HealthReport};
