//! Active health checks: a background task probes every endpoint periodically with a [`Probe`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::rng::SharedRng;
use crate::set::{EndpointKey, SetInner};

/// The error of a failed probe.
pub type ProbeError = crate::BoxError;

/// The future a [`Probe`] returns. Boxed: probes are closures returning futures of any type,
/// and one runs per endpoint and interval, off the request path.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send>>;

/// One active health probe of one endpoint (nginx `health_check`, Envoy's health checkers).
/// Closures `Fn(&K) -> impl Future<Output = Result<(), E>>` implement it.
pub trait Probe<K>: Send + Sync + 'static {
    /// Probes the endpoint; `Ok` means healthy. The runner applies the timeout.
    fn probe(&self, key: &K) -> ProbeFuture;
}

impl<K, F, Fut, E> Probe<K> for F
where
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<ProbeError>,
{
    fn probe(&self, key: &K) -> ProbeFuture {
        let fut = self(key);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// Healthy when a TCP connection to the key's address (`Display`, e.g. `127.0.0.1:8080`) opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe;

impl<K: EndpointKey> Probe<K> for TcpProbe {
    fn probe(&self, key: &K) -> ProbeFuture {
        let addr = key.to_string();
        Box::pin(async move {
            tokio::net::TcpStream::connect(&addr).await?;
            Ok(())
        })
    }
}

/// How often and how strictly endpoints are probed (nginx `health_check` / Envoy health checks).
///
/// ```
/// # use herd_lb_core::health::ActiveHealthConfig;
/// let c: ActiveHealthConfig = serde_json::from_str(r#"{"interval": "30s", "fall": 3}"#).unwrap();
/// assert_eq!(c.rise, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ActiveHealthConfig {
    /// Time between rounds. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Random extra delay per round, as a fraction of `interval`, so many gateways do not probe in
    /// lockstep. Default 0.1.
    pub jitter: f64,
    /// A probe slower than this fails. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passing probes in a row that mark a down endpoint up. Default 2.
    pub rise: u32,
    /// Failing probes in a row that mark an endpoint down. Default 3.
    pub fall: u32,
}

impl Default for ActiveHealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            jitter: 0.1,
            timeout: Duration::from_secs(5),
            rise: 2,
            fall: 3,
        }
    }
}

impl ActiveHealthConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.interval.is_zero() {
            return invalid("active_health.interval", "must be > 0");
        }
        if self.timeout.is_zero() {
            return invalid("active_health.timeout", "must be > 0");
        }
        if self.rise == 0 {
            return invalid("active_health.rise", "must be at least 1");
        }
        if self.fall == 0 {
            return invalid("active_health.fall", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return invalid("active_health.jitter", "must be within 0..=1");
        }
        Ok(())
    }
}

/// Handle of a running active-health task; the task also ends by itself when its endpoint set
/// (or balancer) is dropped. Dropping the handle does not stop it; call [`stop`](Self::stop).
#[derive(Debug)]
pub struct ActiveHealth {
    task: tokio::task::JoinHandle<()>,
}

impl ActiveHealth {
    /// Stops the checks now.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (set dropped or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[derive(Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

pub(crate) fn spawn<K, S, C>(
    set: Weak<SetInner<K, S>>,
    probe: C,
    config: ActiveHealthConfig,
    rng: SharedRng,
) -> ActiveHealth
where
    K: EndpointKey,
    S: Send + Sync + 'static,
    C: Probe<K>,
{
    let task = tokio::spawn(async move {
        let mut streaks: HashMap<K, Streak> = HashMap::new();
        loop {
            let Some(inner) = set.upgrade() else { return };
            let snapshot = inner.current.load_full();
            drop(inner);
            let probes = snapshot.iter().map(|endpoint| {
                let fut = probe.probe(endpoint.key());
                let timeout = config.timeout;
                async move {
                    match tokio::time::timeout(timeout, fut).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    }
                }
            });
            let results = futures_util::future::join_all(probes).await;
            streaks.retain(|k, _| snapshot.iter().any(|e| e.key() == k));
            for (endpoint, result) in snapshot.iter().zip(results) {
                let streak = streaks.entry(endpoint.key().clone()).or_default();
                let state = endpoint.state();
                match result {
                    Ok(()) => {
                        streak.ok = streak.ok.saturating_add(1);
                        streak.failed = 0;
                        if streak.ok >= config.rise && state.is_active_down() {
                            state.set_active_healthy(true);
                        }
                        // An ejection whose time is over ends here, not only at the next request.
                        state.active_check_passed();
                    }
                    Err(reason) => {
                        streak.failed = streak.failed.saturating_add(1);
                        streak.ok = 0;
                        tracing::debug!(endpoint = %endpoint.key(), %reason, "active health check failed");
                        if streak.failed >= config.fall && !state.is_active_down() {
                            state.set_active_healthy(false);
                        }
                    }
                }
            }
            drop(snapshot);
            let jitter = config
                .interval
                .mul_f64(config.jitter.clamp(0.0, 1.0) * rng.unit_f64());
            tokio::time::sleep(config.interval.saturating_add(jitter)).await;
        }
    });
    ActiveHealth { task }
}
