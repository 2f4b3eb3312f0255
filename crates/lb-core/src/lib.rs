//! Load balancing across service instances, as tower services and as a plain selection API.
//!
//! herd-lb-core spreads requests over N copies of a service: a gateway forwarding HTTP to
//! instances, or a client choosing among replicas. It has the policies of nginx, Envoy and
//! tower (P2C least-outstanding by default, smooth weighted round robin, weighted random,
//! weighted least outstanding, Peak-EWMA, bounded-load consistent hashing), passive and active
//! health, slow start, retries on another endpoint within a budget, per-endpoint concurrency caps
//! and runtime membership changes, with per-endpoint state that survives every update.
//!
//! Layers:
//! - [`EndpointSet`] + a [`Pick`] policy: selection without tower (pick, get an
//!   [`InFlightGuard`], record the outcome). Used by herd-db-router to choose replicas.
//! - `Balancer`: a `tower::Service` shared by `&self` (cheap `Clone`, no `Buffer`).
//!
//! ```
//! use herd_lb_core::{EndpointSet, Outcome, P2c, PickContext};
//!
//! let replicas: EndpointSet<String> = EndpointSet::new();
//! replicas.insert("10.0.0.1:5432".to_string(), (), 3.0).unwrap();
//! replicas.insert("10.0.0.2:5432".to_string(), (), 1.0).unwrap();
//!
//! let policy = P2c::new();
//! let picked = replicas.pick(&policy, &PickContext::new()).unwrap();
//! // ... run the query on replicas.snapshot().get(picked.guard.index()) ...
//! picked.guard.record(Outcome::Success);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod balancer;
mod config;
mod endpoint;
pub mod error;
mod ewma;
pub mod health;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod policy;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
mod rng;
mod set;
mod snapshot;

pub use balancer::{
    Balancer, BalancerBuilder, BoxError, Classify, DEFAULT_QUEUE_TIMEOUT, ErrorsAreFailures,
    ResponseFuture, RetryConfig, RetryPolicy,
};
pub use config::{BalancerConfig, EndpointConfig};
pub use endpoint::{EndpointState, EndpointStatus, InFlightGuard, Outcome};
pub use error::{Error, PickError};
pub use ewma::EwmaConfig;
pub use health::{OutlierDetection, SlowStart};
pub use policy::{
    ConsistentHash, LeastOutstanding, P2c, PeakEwma, Pick, Policy, PolicyConfig, RoundRobin,
    WeightedRandom,
};
pub use rng::{RngRef, SharedRng};
pub use set::{EndpointKey, EndpointSet, EndpointSetBuilder, Picked};
pub use snapshot::{Candidates, Endpoint, EndpointInfo, PickContext, RequestKey, Snapshot};
