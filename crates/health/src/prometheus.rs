//! `/metrics`: the Prometheus recorder from metrics-exporter-prometheus, with histogram buckets
//! and the upkeep task run for the user.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::Deserialize;

use crate::error::Error;

/// Configuration of the Prometheus recorder.
///
/// ```
/// let config: herd_health::MetricsConfig = toml::from_str(r#"
///     upkeep_interval = "10s"
///     global_labels = { service = "api" }
/// "#).unwrap();
/// assert_eq!(config.buckets.len(), 14);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Upper bounds (seconds) of the histogram buckets. Every histogram is rendered as a true
    /// Prometheus histogram with these buckets, never as a summary, so it can be aggregated
    /// across instances. Default: 1 ms to 10 s, the Prometheus client defaults plus 1 ms and
    /// 2.5 ms, fit for request and query latencies. herd's histograms whose range differs
    /// (waits for a failover, for another instance's load) get their own buckets from
    /// [`HERD_BUCKETS`] instead.
    pub buckets: Vec<f64>,
    /// Buckets for single histograms by full name, e.g.
    /// `metric_buckets = { herd_cache_load_seconds = [0.01, 0.1, 1.0] }`. They replace
    /// [`HERD_BUCKETS`]' entry of the same name and [`buckets`](Self::buckets). Default: none.
    pub metric_buckets: BTreeMap<String, Vec<f64>>,
    /// How often the upkeep task drains histogram data and prunes idle metrics. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub upkeep_interval: Duration,
    /// Metrics not updated for this long disappear from the output until updated again.
    /// Default: unset (metrics never expire).
    #[serde(with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    /// Labels added to every metric (e.g. `service`, `instance`). Default: none.
    pub global_labels: BTreeMap<String, String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            buckets: vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
            ],
            metric_buckets: BTreeMap::new(),
            upkeep_interval: Duration::from_secs(5),
            idle_timeout: None,
            global_labels: BTreeMap::new(),
        }
    }
}

/// Waits for a Redis failover: 50 ms (a retry that found the new master at once) to 60 s
/// (cluster-node-timeout plus the election, with room for a slow one).
const FAILOVER_WAIT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];

/// Waits for another instance's load, polled every `lock.poll_interval` (20 ms by default) for
/// up to `lock.wait` (2 s): 500 µs to 5 s.
const LOCK_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 2.0, 5.0,
];

/// A loader's call (often one query, sometimes a remote call): 250 µs to 10 s, finer than the
/// default below 1 ms, where a primary-key query on a near database lands.
const LOAD_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// herd's histograms that get their own buckets instead of [`MetricsConfig::buckets`], by full
/// name (the other herd histograms are request, query and check latencies, which the default
/// buckets fit). `docs/metrics.md` lists every histogram with its buckets.
pub const HERD_BUCKETS: &[(&str, &[f64])] = &[
    ("herd_cache_failover_wait_seconds", FAILOVER_WAIT_BUCKETS),
    (
        "herd_session_store_failover_wait_seconds",
        FAILOVER_WAIT_BUCKETS,
    ),
    ("herd_cache_lock_wait_seconds", LOCK_WAIT_BUCKETS),
    ("herd_cache_load_seconds", LOAD_BUCKETS),
];

impl MetricsConfig {
    /// The bucket bounds a histogram named `name` gets: [`metric_buckets`](Self::metric_buckets),
    /// else [`HERD_BUCKETS`], else [`buckets`](Self::buckets).
    pub fn buckets_for(&self, name: &str) -> &[f64] {
        if let Some(buckets) = self.metric_buckets.get(name) {
            return buckets;
        }
        HERD_BUCKETS
            .iter()
            .find(|(herd, _)| *herd == name)
            .map_or(&self.buckets, |(_, buckets)| buckets)
    }
}

/// A handle to the Prometheus recorder that renders `/metrics`.
///
/// [`install`](Self::install) is the one-liner: it installs the global `metrics` recorder
/// (so every `herd_` metric from herd's crates lands in it) and spawns the upkeep task.
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl PrometheusMetrics {
    /// Builds the recorder, installs it as the global `metrics` recorder and spawns the upkeep
    /// task on the current Tokio runtime (it runs for the life of the process).
    ///
    /// **Install it first**, before connecting to the database or the cache: the `metrics`
    /// facade drops whatever is recorded while no recorder is installed, so the start-up
    /// queries, the first monitor checks and the connection errors of a slow start would be
    /// silently missing from `/metrics`.
    ///
    /// ```no_run
    /// # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
    /// // First line of main, before anything that records a metric:
    /// let metrics = herd_health::PrometheusMetrics::install(&Default::default())?;
    /// // ... then connect the router, the cache and the session store, build Health with
    /// // `.metrics(metrics)`.
    /// # let _ = metrics; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] outside a Tokio runtime, [`Error::InvalidConfig`] when a bucket list
    /// is empty, [`Error::Prometheus`] when a global recorder is already installed,
    /// [`Error::ZeroDuration`] for a zero upkeep interval.
    pub fn install(config: &MetricsConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            operation: "PrometheusMetrics::install",
        })?;
        let (metrics, recorder) = Self::build(config)?;
        metrics::set_global_recorder(recorder).map_err(|error| Error::Prometheus(error.into()))?;
        crate::metrics::describe();
        let upkeep = metrics.clone();
        let interval = config.upkeep_interval;
        runtime.spawn(async move { upkeep.run_upkeep_every(interval).await });
        Ok(metrics)
    }

    /// Builds the recorder without installing it, for applications that combine recorders or
    /// install it locally (`metrics::with_local_recorder`). The caller runs upkeep, e.g. with
    /// [`run_upkeep_every`](Self::run_upkeep_every).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when a bucket list is empty, [`Error::ZeroDuration`] for a zero
    /// upkeep interval.
    pub fn build(config: &MetricsConfig) -> Result<(Self, PrometheusRecorder), Error> {
        if config.buckets.is_empty() {
            return Err(Error::InvalidConfig {
                field: "buckets",
                reason: "needs at least one bucket bound".to_owned(),
            });
        }
        if config.upkeep_interval.is_zero() {
            return Err(Error::ZeroDuration {
                field: "upkeep_interval",
                value: config.upkeep_interval,
            });
        }
        if let Some((name, _)) = config.metric_buckets.iter().find(|(_, b)| b.is_empty()) {
            return Err(Error::InvalidConfig {
                field: "metric_buckets",
                reason: format!("{name} needs at least one bucket bound"),
            });
        }
        let mut builder = PrometheusBuilder::new()
            .set_buckets(&config.buckets)?
            .upkeep_timeout(config.upkeep_interval);
        let herd = HERD_BUCKETS
            .iter()
            .filter(|(name, _)| !config.metric_buckets.contains_key(*name))
            .map(|(name, buckets)| (*name, *buckets));
        let configured = config
            .metric_buckets
            .iter()
            .map(|(name, buckets)| (name.as_str(), buckets.as_slice()));
        for (name, buckets) in herd.chain(configured) {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)?;
        }
        if let Some(idle) = config.idle_timeout {
            builder = builder.idle_timeout(metrics_util::MetricKindMask::ALL, Some(idle));
        }
        for (key, value) in &config.global_labels {
            builder = builder.add_global_label(key, value);
        }
        let recorder = builder.build_recorder();
        Ok((
            PrometheusMetrics {
                handle: recorder.handle(),
            },
            recorder,
        ))
    }

    /// Wraps a handle built elsewhere; the caller runs its upkeep.
    pub fn from_handle(handle: PrometheusHandle) -> Self {
        PrometheusMetrics { handle }
    }

    /// The underlying handle.
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Runs upkeep forever at `interval` (drains histograms so memory stays bounded).
    pub async fn run_upkeep_every(&self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.handle.run_upkeep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buckets_are_a_config_error_naming_the_field() {
        let config = MetricsConfig {
            buckets: Vec::new(),
            ..MetricsConfig::default()
        };
        let error = PrometheusMetrics::build(&config).err();
        assert!(
            matches!(
                error,
                Some(Error::InvalidConfig {
                    field: "buckets",
                    ..
                })
            ),
            "{error:?}"
        );
    }
}
