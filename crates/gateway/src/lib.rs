#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

pub mod health;
pub mod http;
pub mod metrics;
pub mod rate_limit;
pub mod server;

/// A boxed error: what the upstream's bodies and layers that add a failure mode return (tower's).
pub use herd_lb_core::BoxError;
