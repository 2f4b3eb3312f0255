//! Metric names, and the per-endpoint handles that record them (through the `metrics` facade;
//! the application installs the exporter). Every metric is listed in `docs/metrics.md`.

use std::sync::Arc;

/// Counter: requests completed on an endpoint, by `endpoint` and `outcome` (`success`,
/// `failure`, `client_error`, `dependency_unavailable`; see [`Outcome`](crate::Outcome)).
pub const REQUESTS_TOTAL: &str = "herd_lb_requests_total";
/// Gauge: requests in flight on an endpoint, by `endpoint`.
pub const IN_FLIGHT: &str = "herd_lb_in_flight";
/// Histogram: seconds from taking an endpoint's slot to the end of its answer, by `endpoint`.
/// Every request is timed when the policy ranks by latency; otherwise 1 in
/// [`EwmaConfig::sampling`](crate::EwmaConfig::sampling), each sample recorded that many times.
pub const LATENCY_SECONDS: &str = "herd_lb_latency_seconds";
/// Counter: ejections by outlier detection, by `endpoint` (a failed probe's re-ejection counts).
pub const EJECTIONS_TOTAL: &str = "herd_lb_ejections_total";
/// Gauge: 1 when an endpoint is neither ejected nor failing active checks, else 0, by `endpoint`.
pub const ENDPOINT_HEALTHY: &str = "herd_lb_endpoint_healthy";
/// Counter: resolutions of a DNS discovery name that failed or found no address (the last good
/// set of endpoints was kept), by `name` (feature `dns`).
pub const DNS_RESOLVE_FAILURES_TOTAL: &str = "herd_lb_dns_resolve_failures_total";
/// Gauge: addresses of a DNS discovery name in the set in force (the last good answer), by
/// `name` (feature `dns`).
pub const DNS_ADDRESSES: &str = "herd_lb_dns_addresses";

/// Describes every metric above (HELP text and unit) to the recorder in force.
///
/// Building an [`EndpointSet`](crate::EndpointSet) (and so a [`Balancer`](crate::Balancer))
/// calls it, so an application that installs its recorder first, as it should, needs nothing
/// more; one that installs its recorder later calls this once after installing it. Calling it
/// again is harmless: a recorder keeps one description per name.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests completed on an endpoint, by endpoint and outcome (success, failure, client_error, dependency_unavailable)."
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "Requests in flight on an endpoint.");
    describe_histogram!(
        LATENCY_SECONDS,
        Unit::Seconds,
        "Time from taking an endpoint's slot to the end of its answer (sampled unless the policy ranks by latency)."
    );
    describe_counter!(
        EJECTIONS_TOTAL,
        Unit::Count,
        "Ejections of an endpoint by outlier detection (a failed probe's re-ejection counts)."
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when an endpoint is neither ejected nor failing active checks, else 0."
    );
    describe_counter!(
        DNS_RESOLVE_FAILURES_TOTAL,
        Unit::Count,
        "Resolutions of a DNS discovery name that failed or found no address; the last good set of endpoints was kept."
    );
    describe_gauge!(
        DNS_ADDRESSES,
        Unit::Count,
        "Addresses of a DNS discovery name in the set in force (its last good answer)."
    );
}

/// The handles one endpoint records to, registered once when it joins its set. Those every
/// request records to come first.
#[repr(C)]
pub(crate) struct EndpointMetrics {
    pub(crate) success: ::metrics::Counter,
    pub(crate) in_flight: ::metrics::Gauge,
    pub(crate) latency: ::metrics::Histogram,
    pub(crate) failure: ::metrics::Counter,
    pub(crate) ejections: ::metrics::Counter,
    pub(crate) healthy: ::metrics::Gauge,
    pub(crate) client_error: ::metrics::Counter,
    pub(crate) dependency_unavailable: ::metrics::Counter,
}

impl EndpointMetrics {
    pub(crate) fn new(label: &Arc<str>) -> Self {
        let l = ::metrics::SharedString::from(Arc::clone(label));
        let requests = |outcome: &'static str| ::metrics::counter!(REQUESTS_TOTAL, "endpoint" => l.clone(), "outcome" => outcome);
        Self {
            success: requests("success"),
            failure: requests("failure"),
            client_error: requests("client_error"),
            dependency_unavailable: requests("dependency_unavailable"),
            in_flight: ::metrics::gauge!(IN_FLIGHT, "endpoint" => l.clone()),
            latency: ::metrics::histogram!(LATENCY_SECONDS, "endpoint" => l.clone()),
            ejections: ::metrics::counter!(EJECTIONS_TOTAL, "endpoint" => l.clone()),
            healthy: ::metrics::gauge!(ENDPOINT_HEALTHY, "endpoint" => l),
        }
    }
}
