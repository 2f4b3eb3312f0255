//! Healthy-endpoint check over a herd-lb-core balancer or endpoint set.

use std::fmt;

use async_trait::async_trait;
use herd_lb_core::{EndpointInfo, EndpointKey, EndpointSet, EndpointStatus};
use serde::Deserialize;

use crate::check::{CheckResult, ComponentType, HealthCheck, Measurement, Status};

/// Bounds of [`EndpointsCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointThresholds {
    /// Fewer usable endpoints than this fails the check. Default 1.
    pub min_healthy: usize,
    /// Whether any unusable endpoint (ejected, failing active checks, draining) makes the check
    /// warn even while `min_healthy` is met. Default `true`.
    pub warn_on_unhealthy: bool,
}

impl Default for EndpointThresholds {
    fn default() -> Self {
        EndpointThresholds {
            min_healthy: 1,
            warn_on_unhealthy: true,
        }
    }
}

type Source<K> = dyn Fn() -> Vec<EndpointInfo<K>> + Send + Sync;

/// Reports how many endpoints of a herd-lb-core balancer can take requests, against a
/// minimum: `{name}:healthyEndpoints` (count) and one `{name}:endpoint` entry per endpoint
/// (`componentId` = its key, value = its status, output = load, latency and failures).
///
/// An endpoint is usable when it is healthy (not ejected by outlier detection, not failing
/// active checks) and not draining. The check reads the balancer's current snapshot, so it
/// costs no I/O.
///
/// ```
/// use herd_health::checks::{EndpointThresholds, EndpointsCheck};
/// use herd_lb_core::EndpointSet;
///
/// let instances: EndpointSet<String> = EndpointSet::new();
/// instances.insert("10.0.0.1:8080".to_owned(), (), 1.0).unwrap();
/// let check = EndpointsCheck::for_set("upstream", instances, EndpointThresholds::default());
/// // For a `Balancer`: EndpointsCheck::new("upstream", move || balancer.endpoints(), ..)
/// # let _ = check;
/// ```
pub struct EndpointsCheck<K> {
    name: String,
    thresholds: EndpointThresholds,
    source: Box<Source<K>>,
}

impl<K> fmt::Debug for EndpointsCheck<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointsCheck")
            .field("name", &self.name)
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl<K> EndpointsCheck<K> {
    /// A check over any source of endpoint snapshots, e.g. `move || balancer.endpoints()`.
    pub fn new<F>(name: impl Into<String>, source: F, thresholds: EndpointThresholds) -> Self
    where
        F: Fn() -> Vec<EndpointInfo<K>> + Send + Sync + 'static,
    {
        EndpointsCheck {
            name: name.into(),
            thresholds,
            source: Box::new(source),
        }
    }
}

impl<K: EndpointKey> EndpointsCheck<K> {
    /// A check over an [`EndpointSet`] (a cheap clone sharing the set's state).
    pub fn for_set<S>(
        name: impl Into<String>,
        set: EndpointSet<K, S>,
        thresholds: EndpointThresholds,
    ) -> Self
    where
        S: Send + Sync + 'static,
    {
        EndpointsCheck::new(name, move || set.endpoints(), thresholds)
    }
}

fn usable<K>(endpoint: &EndpointInfo<K>) -> bool {
    endpoint.healthy && endpoint.status != EndpointStatus::Draining
}

/// `Healthy` -> `healthy`, `SlowStart` -> `slowStart`: the draft's camelCase.
fn status_label(status: EndpointStatus) -> String {
    let debug = format!("{status:?}");
    let mut chars = debug.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

#[async_trait]
impl<K> HealthCheck for EndpointsCheck<K>
where
    K: fmt::Display + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    async fn check(&self) -> CheckResult {
        let endpoints = (self.source)();
        let total = endpoints.len();
        let healthy = endpoints.iter().filter(|endpoint| usable(endpoint)).count();
        let min = self.thresholds.min_healthy;
        let overall = if healthy < min {
            Status::Fail
        } else if healthy < total && self.thresholds.warn_on_unhealthy {
            Status::Warn
        } else {
            Status::Pass
        };
        let summary = format!("{healthy} of {total} endpoints usable (minimum {min})");
        let mut result = CheckResult::with_status(overall);
        if overall != Status::Pass {
            result = result.with_output(summary.clone());
        }
        result.push(
            Measurement::new("healthyEndpoints", overall)
                .observed(healthy, "endpoints")
                .output(summary),
        );
        for endpoint in &endpoints {
            let status = if usable(endpoint) || !self.thresholds.warn_on_unhealthy {
                Status::Pass
            } else {
                Status::Warn
            };
            result.push(
                Measurement::new("endpoint", status)
                    .component_id(endpoint.key.to_string())
                    .value(status_label(endpoint.status))
                    .output(format!(
                        "{} in flight, latency {:.1} ms, {} requests, {} failures, weight {}",
                        endpoint.in_flight,
                        endpoint.ewma.as_secs_f64() * 1e3,
                        endpoint.requests,
                        endpoint.failures,
                        endpoint.effective_weight
                    )),
            );
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_usable_endpoints_against_the_minimum() {
        let set: EndpointSet<String> = EndpointSet::new();
        set.insert("a:80".to_owned(), (), 1.0).unwrap();
        set.insert("b:80".to_owned(), (), 1.0).unwrap();
        let check = EndpointsCheck::for_set(
            "upstream",
            set.clone(),
            EndpointThresholds {
                min_healthy: 2,
                ..EndpointThresholds::default()
            },
        );
        let result = check.check().await;
        assert_eq!(result.status(), Status::Pass, "{result:?}");
        let entries: Vec<_> = result
            .measurements()
            .iter()
            .filter(|m| m.name == "endpoint")
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].observed_value, Some("healthy".into()));

        // Draining one endpoint leaves one usable: below the minimum of two.
        let _drained = set.drain(&"a:80".to_owned()).unwrap();
        let result = check.check().await;
        assert_eq!(result.status(), Status::Fail, "{result:?}");
        assert_eq!(result.output(), Some("1 of 2 endpoints usable (minimum 2)"));

        let empty: EndpointSet<String> = EndpointSet::new();
        let result = EndpointsCheck::for_set("none", empty, EndpointThresholds::default())
            .check()
            .await;
        assert_eq!(result.status(), Status::Fail);
    }

    #[test]
    fn status_labels_are_camel_case() {
        assert_eq!(status_label(EndpointStatus::SlowStart), "slowStart");
        assert_eq!(status_label(EndpointStatus::Healthy), "healthy");
    }
}
