#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod balancer;
mod config;
pub mod discover;
mod endpoint;
pub mod error;
mod ewma;
pub mod future {
    //! The response future of [`Balancer`](crate::Balancer) (the HTTP upstream's and the rate
    //! limiter's are in herd-gateway).
    pub use crate::balancer::ResponseFuture;
}
pub mod health;
mod latency;
pub mod metrics;
pub mod policy;
mod rng;
mod set;
mod snapshot;

pub use balancer::{
    Balancer, BalancerBuilder, Classify, DEFAULT_QUEUE_TIMEOUT, ErrorsAreFailures, RetryConfig,
    RetryPolicy,
};
pub use config::{BalancerConfig, EndpointConfig};
pub use endpoint::{EndpointState, EndpointStatus, InFlightGuard, Outcome};
pub use error::{Error, PickError};
pub use ewma::EwmaConfig;
pub use health::{OutlierDetection, SlowStart};
pub use latency::{LATENCY_BUCKETS, LatencyCounts};
pub use policy::{
    ConsistentHash, LeastOutstanding, P2c, PeakEwma, Pick, Policy, PolicyConfig, RoundRobin,
    WeightedRandom,
};
pub use rng::{RngRef, SharedRng};
pub use set::{EndpointKey, EndpointSet, EndpointSetBuilder, Picked};
pub use snapshot::{Candidates, Endpoint, EndpointInfo, PickContext, RequestKey, Snapshot};
/// A boxed error: what the balancer and layers that add a failure mode return (tower's).
pub use tower::BoxError;
