//! A balancer described in a configuration file (TOML, JSON, environment ...).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tower_service::Service;

use crate::balancer::{Balancer, BalancerBuilder, DEFAULT_QUEUE_TIMEOUT};
use crate::error::Error;
use crate::ewma::EwmaConfig;
use crate::health::{OutlierDetection, SlowStart};
use crate::policy::PolicyConfig;
use crate::set::{EndpointKey, check_weight};

/// One static endpoint (nginx `server address weight=N max_conns=N;`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EndpointConfig {
    /// The endpoint's key, e.g. `10.0.0.1:8000`.
    pub address: String,
    /// Relative share of traffic. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// Concurrency cap of this endpoint (overrides the balancer-wide one).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

fn one() -> f64 {
    1.0
}

/// Everything a [`Balancer`] needs, deserializable. Every field has a default.
///
/// ```
/// use herd_lb_core::BalancerConfig;
///
/// let config: BalancerConfig = toml::from_str(r#"
///     policy = "least_outstanding"
///     queue_timeout = "250ms"
///     endpoints = [
///         { address = "10.0.0.1:8000", weight = 3 },
///         { address = "10.0.0.2:8000", weight = 2 },
///     ]
///     [outlier_detection]
///     max_fails = 3
///     fail_timeout = "30s"
/// "#).unwrap();
/// assert_eq!(config.endpoints.len(), 2);
/// assert_eq!(config.outlier_detection.max_fails, Some(3));
/// assert_eq!(config.retries.max_attempts, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct BalancerConfig {
    /// Selection policy. Default `p2c`.
    pub policy: PolicyConfig,
    /// Fixed seed for every random choice (tests); default: OS entropy.
    pub seed: Option<u64>,
    /// The static endpoint list.
    pub endpoints: Vec<EndpointConfig>,
    /// Backup endpoints (nginx `server ... backup`): they get requests only when no endpoint of
    /// `endpoints` can take them (see [`EndpointSet::insert_backup`](crate::EndpointSet::insert_backup)).
    /// Not allowed with the `consistent_hash` policy. Default none.
    pub backups: Vec<EndpointConfig>,
    /// Passive health. Default: eject after 5 consecutive failures for 30 s, doubling.
    pub outlier_detection: OutlierDetection,
    /// Slow start of new and recovered endpoints. Default: off.
    pub slow_start: Option<SlowStart>,
    /// Latency measurement. Default: Peak-EWMA seed 30 ms, decay 10 s; 1 in 8 requests timed
    /// unless the policy ranks by latency.
    pub ewma: EwmaConfig,
    /// Per-endpoint concurrency cap. Default: unlimited.
    pub max_in_flight: Option<usize>,
    /// Bounded wait for a free slot when every endpoint is at its cap. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Retries on another endpoint. Default 3 tries within a 20 % budget.
    pub retries: crate::RetryConfig,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            policy: PolicyConfig::default(),
            seed: None,
            endpoints: Vec::new(),
            backups: Vec::new(),
            outlier_detection: OutlierDetection::default(),
            slow_start: None,
            ewma: EwmaConfig::default(),
            max_in_flight: None,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            retries: crate::RetryConfig::default(),
        }
    }
}

impl BalancerConfig {
    /// A builder with every setting of this configuration except retries (which need a policy
    /// that knows the request type: add them with [`BalancerBuilder::retry`]).
    pub fn builder<K, S, Req>(&self) -> Result<BalancerBuilder<K, S, Req>, Error>
    where
        K: EndpointKey,
        S: Service<Req>,
    {
        if !self.backups.is_empty() && matches!(self.policy, PolicyConfig::ConsistentHash { .. }) {
            return Err(Error::InvalidConfig {
                field: "backups",
                reason: "backup endpoints cannot be used with the consistent_hash policy (nginx \
                         refuses backup with hash and ip_hash)"
                    .into(),
            });
        }
        let mut builder = Balancer::<K, S, Req>::builder()
            .policy(self.policy.build(self.seed)?)
            .outlier_detection(self.outlier_detection.clone())
            .slow_start(self.slow_start.clone())
            .ewma(self.ewma)
            .max_in_flight(self.max_in_flight)
            .queue_timeout(self.queue_timeout);
        if let Some(seed) = self.seed {
            builder = builder.seed(seed);
        }
        Ok(builder)
    }

    /// Parses every endpoint address (of `endpoints`, then of `backups`) into a key and makes its
    /// service, inserting them into `balancer`. Errors name the endpoint (bad address, bad
    /// weight, a backup with consistent hashing).
    pub fn insert_endpoints<K, S, Req>(
        &self,
        balancer: &Balancer<K, S, Req>,
        mut make_service: impl FnMut(&K) -> S,
    ) -> Result<(), Error>
    where
        K: EndpointKey + FromStr,
        K::Err: fmt::Display,
        S: Service<Req> + Clone,
    {
        let all = self.endpoints.iter().map(|e| (e, false));
        for (endpoint, backup) in all.chain(self.backups.iter().map(|e| (e, true))) {
            check_weight(&endpoint.address, endpoint.weight)?;
            let key = K::from_str(&endpoint.address).map_err(|e| Error::InvalidConfig {
                field: if backup {
                    "backups.address"
                } else {
                    "endpoints.address"
                },
                reason: format!("{}: {e}", endpoint.address),
            })?;
            let service = make_service(&key);
            if backup {
                balancer.insert_backup(key.clone(), service, endpoint.weight)?;
            } else {
                balancer.insert(key.clone(), service, endpoint.weight)?;
            }
            if endpoint.max_in_flight.is_some() {
                balancer
                    .set()
                    .set_max_in_flight(&key, endpoint.max_in_flight)?;
            }
        }
        Ok(())
    }
}
