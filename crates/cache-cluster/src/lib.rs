#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

// First: its macros are visible in the modules declared after it.
#[cfg(feature = "tower")]
#[macro_use]
mod macros;

mod backend;
mod cache;
mod circuit;
mod clock;
mod codec;
mod config;
mod error;
mod flight;
mod invalidation;
mod l1;
pub mod metrics;
mod slot;
mod stats;
mod task;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod http;

pub use backend::{Backend, ClusterBackend, MemoryBackend, NodeHealth, RedisBackend};
pub use cache::{Cache, CacheBuilder};
pub use config::{CacheConfig, CircuitConfig, L1Config, LockConfig, RedisConfig, TlsConfig};
pub use error::{BoxError, Error};
pub use stats::CacheStats;
