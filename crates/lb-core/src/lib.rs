//! Load balancing across service instances, as tower services and as a plain selection API.
//!
//! herd-lb-core spreads requests over N copies of a service: a gateway forwarding HTTP to
//! instances, or a client choosing among replicas. It has the policies of nginx, Envoy and
//! tower (P2C least-outstanding by default, smooth weighted round robin, weighted random,
//! weighted least outstanding, Peak-EWMA, bounded-load consistent hashing), passive and active
//! health, slow start, retries on another endpoint within a budget, per-endpoint concurrency caps
//! and runtime membership changes, with per-endpoint state that survives every update.
//!
//! Parts:
//! - [`EndpointSet`] + a [`Pick`] policy: selection without tower (pick, get an
//!   [`InFlightGuard`], record the [`Outcome`]). herd-db-router uses it to choose replicas.
//! - [`Balancer`]: a `tower::Service` shared by `&self` (cheap `Clone`, no `Buffer`) with
//!   retries on another endpoint within a budget, bounded waiting for a free slot, membership
//!   changes at runtime (insert, remove, weight, drain, `tower::discover`), and
//!   [`Balancer::endpoints`] for health reports.
//! - [`health`]: outlier detection (consecutive failures or nginx `max_fails`/`fail_timeout`,
//!   exponential ejection with jitter, one probe on return, a cap on the ejected share, panic
//!   mode), slow start, and active checks (HTTP, TCP, closures) in a background task.
//! - [`BalancerConfig`]: the whole balancer from TOML/JSON/env with documented defaults.
//! - `http` (feature `http`): [`http::HttpUpstream`], a reverse-proxy service speaking HTTP/1.1
//!   to its endpoints over keep-alive connections pooled per thread (the exchange runs in the
//!   request's own future, as nginx's and pingora's upstream sides do); client IPs behind trusted
//!   proxies; hashing keys.
//! - `rate_limit` (feature `rate-limit`): per-client, per-route GCRA limits answering 429.
//!
//! Metrics (through the `metrics` facade): `herd_lb_requests_total{endpoint,outcome}` (`outcome`
//! one of `success`, `failure`, `client_error`, `dependency_unavailable`; see [`Outcome`]),
//! `herd_lb_in_flight{endpoint}`, `herd_lb_latency_seconds{endpoint}`,
//! `herd_lb_ejections_total{endpoint}`, `herd_lb_endpoint_healthy{endpoint}`,
//! `herd_lb_rate_limited_total`; with `http`, `herd_lb_client_errors_total{reason}` and
//! `herd_lb_dependency_unavailable_total{dependency}`. Each attempt runs in a `herd_lb` tracing span with the chosen
//! `endpoint`. Latency is measured on every request when the policy ranks by it (Peak-EWMA), and
//! otherwise on 1 in 8 requests per endpoint, each sample standing for 8 in the histogram (reading
//! the clock costs more than the rest of a pick); see [`EwmaConfig`] to time every request.
//!
//! Selection without tower:
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
//! let snapshot = replicas.snapshot();
//! let chosen = snapshot.get(picked.guard.index()).unwrap().key();
//! assert!(chosen.starts_with("10.0.0."));
//! // ... run the query on `chosen` ...
//! picked.guard.record(Outcome::Success);
//! ```
//!
//! As a tower service in front of instances:
//!
//! ```
//! use std::convert::Infallible;
//! use herd_lb_core::{Balancer, OutlierDetection, RoundRobin};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let instance = |name: &'static str| service_fn(move |path: String| async move {
//!     Ok::<_, Infallible>(format!("{name} served {path}"))
//! });
//! let lb = Balancer::builder()
//!     .policy(RoundRobin::new())
//!     .outlier_detection(OutlierDetection::default())
//!     .build()
//!     .unwrap();
//! lb.insert("instance-1", instance("instance-1"), 1.0).unwrap();
//! lb.insert("instance-2", instance("instance-2"), 1.0).unwrap();
//! let answer = lb.clone().oneshot("/".to_string()).await.unwrap();
//! assert!(answer.ends_with("served /"));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

mod balancer;
mod config;
mod endpoint;
pub mod error;
mod ewma;
pub mod future {
    //! The response future of [`Balancer`](crate::Balancer) (the HTTP upstream's and the rate
    //! limiter's are in `http::future` and `rate_limit::future`).
    pub use crate::balancer::ResponseFuture;
}
pub mod health;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod metrics;
pub mod policy;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;
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
pub use policy::{
    ConsistentHash, LeastOutstanding, P2c, PeakEwma, Pick, Policy, PolicyConfig, RoundRobin,
    WeightedRandom,
};
pub use rng::{RngRef, SharedRng};
pub use set::{EndpointKey, EndpointSet, EndpointSetBuilder, Picked};
pub use snapshot::{Candidates, Endpoint, EndpointInfo, PickContext, RequestKey, Snapshot};
/// A boxed error: what the balancer and layers that add a failure mode return (tower's).
pub use tower::BoxError;
