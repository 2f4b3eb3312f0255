//! The names of the metrics herd-health records, through the `metrics` facade (the
//! application installs the recorder, e.g. [`PrometheusMetrics`](crate::PrometheusMetrics)).
//!
//! Check metrics are recorded by every [`Health`](crate::Health) as its checks run; the HTTP
//! metrics by [`HttpMetricsLayer`](crate::HttpMetricsLayer). `docs/metrics.md` lists every
//! herd metric.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

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
/// Gauge: the last status of each check, one series per status by `check` and `state` (`pass`,
/// `warn`, `fail`): 1 for the check's last status, 0 for the others (alert on
/// `{state="fail"} == 1`, or `{state="pass"} == 0` for anything not passing).
pub const CHECK_STATE: &str = "herd_health_check_state";
/// Gauge: 1 once the instance is draining (readiness fails), else 0. No labels.
pub const DRAINING: &str = "herd_health_draining";

/// Describes every metric above (HELP text and unit) to the recorder in force.
///
/// Building a [`Health`](crate::Health) and [`PrometheusMetrics::install`] call it, so an
/// application that installs its recorder first, as it should, needs nothing more; one that
/// installs its recorder later calls this once after installing it. Calling it again is
/// harmless: a recorder keeps one description per name.
///
/// [`PrometheusMetrics::install`]: crate::PrometheusMetrics::install
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by method, matched route and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from the call until the response head, by method, matched route and status."
    );
    describe_histogram!(
        CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of each run of a health check."
    );
    describe_counter!(
        CHECK_RUNS_TOTAL,
        Unit::Count,
        "Health check runs by check and status (pass, warn, fail)."
    );
    describe_gauge!(
        CHECK_STATE,
        "Last status of each health check: 1 on its status's series (pass, warn, fail), 0 on the others."
    );
    describe_gauge!(
        DRAINING,
        "1 once the instance is draining (readiness fails), else 0."
    );
}
