//! [`CacheCheck`]: a herd-health check for a [`Cache`]: `PING` each master with its latency,
//! the cluster state, the circuit and the hit ratio.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herd_cache_cluster::Error> {
//! use herd_cache_cluster::{Backend, Cache, health::CacheCheck};
//! use herd_health::HealthCheck;
//!
//! let cache = Cache::builder(Backend::memory()).build().await?;
//! let check = CacheCheck::new(cache).min_hit_ratio(0.5); // or `cache.health_check()`
//! let result = check.check().await;
//! assert_eq!(result.status(), herd_health::Status::Pass);
//! # Ok(()) }
//! ```

use herd_health::{CheckResult, ComponentType, HealthCheck, Measurement, Status, async_trait};

use crate::Cache;

/// A herd-health check over a [`Cache`]'s backend; see the [module docs](self).
///
/// Reports, under the check's name (default `"cache"`):
/// - `responseTime` per node (`component_id` = `host:port`): `PING` latency, `fail` when a node
///   does not answer;
/// - `clusterState` (cluster only): `CLUSTER INFO`'s `cluster_state`, `fail` unless `ok`;
/// - `hitRatio` in percent, `warn` below [`min_hit_ratio`](Self::min_hit_ratio) when set;
/// - `circuit`: `warn` while backend calls are skipped (the cache is failing open).
#[derive(Debug, Clone)]
pub struct CacheCheck {
    cache: Cache,
    name: String,
    min_hit_ratio: Option<f64>,
}

impl CacheCheck {
    /// A check of `cache`, named `"cache"`.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            name: "cache".into(),
            min_hit_ratio: None,
        }
    }

    /// Renames the check (the part before `:` in health+json keys).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Warn when the hit ratio (0.0..=1.0) is below `ratio`.
    pub fn min_hit_ratio(mut self, ratio: f64) -> Self {
        self.min_hit_ratio = Some(ratio);
        self
    }
}

impl Cache {
    /// A [`CacheCheck`] (a herd-health [`HealthCheck`]) for this cache:
    /// `CacheCheck::new(cache.clone())`.
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn health_check(&self) -> CacheCheck {
        CacheCheck::new(self.clone())
    }
}

#[async_trait]
impl HealthCheck for CacheCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    async fn check(&self) -> CheckResult {
        let backend = self.cache.backend();
        let mut result = CheckResult::pass();
        for node in backend.ping_nodes().await {
            let measurement = match (node.latency, node.error) {
                (Some(latency), _) => Measurement::new("responseTime", Status::Pass)
                    .observed(latency.as_secs_f64() * 1000.0, "ms"),
                (None, error) => Measurement::new("responseTime", Status::Fail)
                    .output(error.unwrap_or_else(|| "no answer".into())),
            };
            result.push(measurement.component_id(node.node));
        }
        match backend.cluster_state().await {
            Ok(Some(state)) => {
                let status = if state == "ok" {
                    Status::Pass
                } else {
                    Status::Fail
                };
                result.push(Measurement::new("clusterState", status).value(state));
            }
            Ok(None) => {}
            Err(error) => result
                .push(Measurement::new("clusterState", Status::Fail).output(error.to_string())),
        }
        if let Some(ratio) = self.cache.stats().hit_ratio() {
            let status = match self.min_hit_ratio {
                Some(min) if ratio < min => Status::Warn,
                _ => Status::Pass,
            };
            result.push(Measurement::new("hitRatio", status).observed(ratio * 100.0, "percent"));
        }
        if self.cache.circuit_open() {
            result.push(
                Measurement::new("circuit", Status::Warn)
                    .value("open")
                    .output("backend calls are skipped after consecutive failures (failing open)"),
            );
        }
        result
    }
}
