//! HTTP integration: the reverse-proxy upstream, client IPs behind proxies, hashing keys.
//!
//! # Blame where the fault is
//!
//! [`HttpUpstream`] counts an attempt against its endpoint (an
//! [`Outcome::Failure`](herd_lb_core::Outcome::Failure), which drives `consecutive_failures`,
//! `max_fails` and ejection) only when the endpoint is at fault, the way Envoy separates
//! local-origin errors from the upstream's and ejects on consecutive 5xx:
//! - **The client's fault.** A request body that breaks off (the client went away), does not
//!   parse (malformed chunked framing), goes past a size limit (`http_body_util::Limited`) or
//!   arrives too slowly is answered by the upstream itself: 400, 413 or 408. It is recorded as
//!   [`Outcome::ClientError`](herd_lb_core::Outcome::ClientError) and in
//!   `herd_lb_client_errors_total{reason}`, and never retried. It is told apart where the body is
//!   read, not from an error's text: the body's error is wrapped in a [`ClientBodyError`] as it
//!   comes out, the source of an [`UpstreamError`] of kind [`UpstreamErrorKind::ClientBody`]
//!   (see [`UpstreamError::client_body`]). A request whose `Host` RFC 9112 §3.2 refuses (none
//!   on HTTP/1.1, two, or one that is not a valid `host[:port]`) is answered 400 before any
//!   endpoint is picked, counted by the same metric (see [`HttpUpstream`]).
//! - **A dependency every endpoint shares.** An instance that fails because a shared dependency
//!   is down (PostgreSQL failing over, a Redis Cluster failover) says so with
//!   [`X_HERD_DEPENDENCY_UNAVAILABLE`] on its 5xx: recorded as
//!   [`Outcome::DependencyUnavailable`](herd_lb_core::Outcome::DependencyUnavailable), counted apart,
//!   not retried elsewhere, and removed before the client sees the response. Every instance
//!   fails alike then, and ejecting them in turn would only shift their load onto the others.
//!   An explicit signal rather than relative detection: Envoy's success-rate ejection compares
//!   an endpoint with its peers, but needs a request volume per interval and at least five
//!   endpoints by default, which a deployment of three instances does not have; and
//!   consecutive-5xx ejection, which works at any size, cannot tell a shared outage from a
//!   broken instance. The instance can.
//! - **The endpoint's fault.** Everything else, a 5xx without the header or a transport error,
//!   counts against the endpoint as before: an instance that fails while its peers succeed is
//!   ejected.
//!
//! The bodies of the error responses the upstream writes say what happened ("upstream connect
//! failed", "upstream timed out") and never name an endpoint or show an error's internals; the
//! endpoint and the error's chain go to the log (`tracing`) and the metrics.

mod body;
mod client;
mod client_ip;
pub mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod headers;
mod idle;
pub mod key;
mod pool;
mod upgrade;
mod upstream;

pub use body::{ClientBodyError, ClientBodyErrorKind, ProxyBody, UpstreamBody};
pub use client::{UpstreamProtocol, UpstreamScheme, UpstreamTlsConfig};
pub use client_ip::{ClientAddr, TrustedProxies, client_ip, peer_addr};
pub use headers::X_HERD_DEPENDENCY_UNAVAILABLE;
pub use pool::PooledBody;
pub use upstream::{
    AnsweredBy, HashKeyConfig, HttpActiveHealth, HttpEndpoint, HttpRetry, HttpUpstream,
    HttpUpstreamConfig, UpstreamError, UpstreamErrorKind,
};
