//! Metric names (recorded through the `metrics` facade; the application installs the exporter).
//! The balancer's own per-endpoint metrics are herd-lb-core's (`herd_lb_core::metrics`).
//! `docs/metrics.md` lists every herd metric.
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
/// Counter: TLS handshakes that did not complete, by `reason` (`timeout`: no complete
/// handshake within the header read timeout; `closed`: the client hung up; `protocol`: the
/// client sent something rustls refused, no shared version, cipher or ALPN protocol, or a
/// client certificate that does not verify; `io`: another socket error).
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "herd_gateway_tls_handshake_failures_total";
/// Counter: certificate reloads, by `result` (`ok`, or `error` when the old certificate was
/// kept).
pub const TLS_RELOADS_TOTAL: &str = "herd_gateway_tls_reloads_total";

/// Describes every metric above (HELP text and unit) to the recorder in force, and
/// herd-lb-core's, which the gateway records through its balancers.
///
/// Building a gateway calls it, so an application that installs its recorder first, as it
/// should, needs nothing more; one that installs its recorder later calls this once after
/// installing it. Calling it again is harmless: a recorder keeps one description per name.
pub fn describe() {
    use metrics::{Unit, describe_counter};

    herd_lb_core::metrics::describe();
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "Requests answered 429 by the rate limiter, by zone."
    );
    describe_counter!(
        RATE_LIMIT_FALLBACKS_TOTAL,
        Unit::Count,
        "Rate-limit decisions taken locally because the shared limits' Redis Cluster was unreachable, too slow or not yet connected, by zone."
    );
    describe_counter!(
        RATE_LIMIT_EVICTIONS_TOTAL,
        Unit::Count,
        "Client states the rate limiter dropped while their client was still paying off a burst."
    );
    describe_counter!(
        CLIENT_ERRORS_TOTAL,
        Unit::Count,
        "Requests the HTTP upstream answered itself for the client's fault, by reason."
    );
    describe_counter!(
        DEPENDENCY_UNAVAILABLE_TOTAL,
        Unit::Count,
        "Endpoint answers saying a dependency every endpoint shares is unavailable, by dependency."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "TLS handshakes that did not complete, by reason (timeout, closed, protocol, io)."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        Unit::Count,
        "Certificate reloads, by result (ok, error: the old certificate was kept)."
    );
}
