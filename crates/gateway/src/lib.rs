#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

#[cfg(feature = "proxy-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-cache")))]
pub mod cache;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
#[cfg(feature = "axum")]
mod dashboard;
pub mod health;
pub mod http;
pub mod metrics;
pub mod observe;
#[cfg(feature = "axum")]
mod pages;
pub mod rate_limit;
pub mod server;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod service;
pub mod tls;

#[cfg(feature = "axum")]
pub use service::{AdminConfig, GatewayConfig, RunningGateway, app, spawn};

/// A boxed error: what the upstream's bodies and layers that add a failure mode return (tower's).
pub use herd_lb_core::BoxError;
