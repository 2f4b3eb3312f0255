//! Redis Cluster cache with a local L1, one load per key under a stampede, fail-open, and an
//! HTTP response cache layer.
//!
//! A [`Cache`] stores serde values in a [`Backend`]: a Redis Cluster (the `redis` crate's async
//! cluster client, plus a topology watcher that follows failovers within the cluster's node
//! timeout plus about two seconds), a standalone Redis, or process memory for development. In
//! front of it sits an optional L1 (moka) kept coherent across instances by invalidation
//! messages over Redis pub/sub. [`Cache::get_or_load`] calls the loader once per key however many
//! callers miss at the same time, optionally once across instances (a Redis lock), refreshes hot
//! keys early (XFetch), serves stale values while revalidating, and keeps answering from the
//! loader when Redis is down (fail-open, with a circuit so the timeout is not paid every time).
//!
//! ```
//! use std::time::Duration;
//! use herd_cache_cluster::{Backend, Cache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herd_cache_cluster::Error> {
//! // In production: `Backend::cluster(RedisConfig::new(["redis://10.0.0.1:6379"])).await?`
//! let cache = Cache::builder(Backend::memory()).namespace("shop").build().await?;
//!
//! cache.set("greeting", &"hello".to_string(), Duration::from_secs(60)).await?;
//! assert_eq!(cache.get::<String>("greeting").await.as_deref(), Some("hello"));
//!
//! let price: Option<u32> = cache
//!     .get_or_load("price:42", Duration::from_secs(30), || async {
//!         // e.g. a database query; runs once however many callers miss together
//!         Ok::<_, std::io::Error>(Some(1999))
//!     })
//!     .await?;
//! assert_eq!(price, Some(1999));
//! # Ok(()) }
//! ```
//!
//! # Metrics
//! `herd_cache_requests_total{tier="l1"|"l2",result="hit"|"miss"|"stale"|"error"}`,
//! `herd_cache_load_seconds`, `herd_cache_errors_total{kind}`, and
//! `herd_cache_topology_changes_total`, `herd_cache_circuit_opened_total`. [`Cache::stats`] has
//! the hit ratio.
//!
//! # Features
//! - `tower`: [`http::HttpCacheLayer`], a tower layer caching GET/HEAD responses.
//! - `health`: [`health::CacheCheck`], a herd-health check for [`Cache`].
//! - `full`: all of the above.
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
pub use config::{CacheConfig, CircuitConfig, L1Config, LockConfig, RedisConfig};
pub use error::{BoxError, Error};
pub use stats::CacheStats;
