//! The names of the metrics herd-health records, through the `metrics` facade (the
//! application installs the recorder, e.g. [`PrometheusMetrics`](crate::PrometheusMetrics)).
//!
//! Check metrics are recorded by every [`Health`](crate::Health) as its checks run; the HTTP
//! metrics by [`HttpMetricsLayer`](crate::HttpMetricsLayer).

/// Counter: HTTP requests answered, by `method` (standard methods by name, else `other`),
/// `route` (the matched route template, or `unmatched`) and `status` (the status code, or
/// `error` when the service failed).
pub const HTTP_REQUESTS_TOTAL: &str = "herd_http_requests_total";
/// Histogram (seconds): time from the call until the response head, by `method`, `route` and
/// `status` as [`HTTP_REQUESTS_TOTAL`].
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "herd_http_request_duration_seconds";
/// Histogram (seconds): duration of each run of a check, by `check` (its name).
pub const CHECK_DURATION_SECONDS: &str = "herd_health_check_duration_seconds";
/// Counter: runs of each check, by `check` and `status` (`pass`, `warn`, `fail`).
pub const CHECK_RUNS_TOTAL: &str = "herd_health_check_runs_total";
/// Gauge: the last status of each check, by `check`: 0 pass, 1 warn, 2 fail (alert on `> 0`
/// or `== 2`).
pub const CHECK_STATUS: &str = "herd_health_check_status";
/// Gauge: 1 once the instance is draining (readiness fails), else 0. No labels.
pub const DRAINING: &str = "herd_health_draining";
