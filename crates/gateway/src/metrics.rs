//! Metric names (recorded through the `metrics` facade; the application installs the exporter).
//! The balancer's own per-endpoint metrics are herd-lb-core's (`herd_lb_core::metrics`).
//!
//! The names keep their `herd_lb_` prefix from when this code was part of herd-lb-core, so
//! dashboards and alerts keep working.

/// Counter: requests answered 429 by the rate limiter, by `zone` (the quota's name).
pub const RATE_LIMITED_TOTAL: &str = "herd_lb_rate_limited_total";
/// Counter: rate-limit decisions taken locally because the shared limits' Redis Cluster was
/// unreachable, too slow or not yet connected, by `zone`.
pub const RATE_LIMIT_FALLBACKS_TOTAL: &str = "herd_lb_rate_limit_fallbacks_total";
/// Counter: client states the rate limiter dropped while their client was still paying off a
/// burst, to stay within `max_tracked_clients` (no labels).
pub const RATE_LIMIT_EVICTIONS_TOTAL: &str = "herd_lb_rate_limit_evictions_total";
/// Counter: requests the HTTP upstream answered itself for the client's fault, by `reason`
/// (`body_invalid`, `body_too_large`, `body_timeout`, `host_missing`, `host_repeated`,
/// `host_invalid`).
pub const CLIENT_ERRORS_TOTAL: &str = "herd_lb_client_errors_total";
/// Counter: endpoint answers saying a dependency every endpoint shares is unavailable, by
/// `dependency` (the token the endpoint named, or `other`).
pub const DEPENDENCY_UNAVAILABLE_TOTAL: &str = "herd_lb_dependency_unavailable_total";
