//! Peak-EWMA latency estimate, kept per endpoint.

use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::time::Instant;

/// Settings of the Peak-EWMA latency estimate (the estimator of Finagle and `tower::load::PeakEwma`).
///
/// ```
/// # use herd_lb_core::EwmaConfig;
/// let config: EwmaConfig = serde_json::from_str(r#"{"default_rtt": "50ms", "decay": "5s"}"#).unwrap();
/// assert_eq!(config.decay.as_secs(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct EwmaConfig {
    /// Estimate of an endpoint that has not answered yet. Default 30 ms.
    #[serde(with = "humantime_serde")]
    pub default_rtt: Duration,
    /// Time for an old sample's influence to fall to 1/e. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub decay: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// Per-endpoint latency estimate: jumps up to a slower sample at once ("peak"), and decays
/// towards faster samples exponentially with time, so a slow endpoint is avoided immediately and
/// regains traffic gradually.
#[derive(Debug)]
pub(crate) struct EwmaEstimate {
    inner: Mutex<EwmaInner>,
}

#[derive(Debug)]
struct EwmaInner {
    cost_ns: f64,
    stamp: Instant,
    decay_ns: f64,
}

impl EwmaEstimate {
    pub(crate) fn new(config: &EwmaConfig) -> Self {
        Self {
            inner: Mutex::new(EwmaInner {
                cost_ns: config.default_rtt.as_nanos() as f64,
                stamp: Instant::now(),
                decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            }),
        }
    }

    /// Adds one round-trip sample.
    pub(crate) fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        let mut inner = self.inner.lock();
        let elapsed = now.saturating_duration_since(inner.stamp).as_nanos() as f64;
        inner.stamp = now;
        if rtt_ns > inner.cost_ns {
            inner.cost_ns = rtt_ns;
        } else {
            let w = (-elapsed / inner.decay_ns).exp();
            inner.cost_ns = inner.cost_ns * w + rtt_ns * (1.0 - w);
        }
    }

    /// The estimate in nanoseconds as of the last sample.
    pub(crate) fn estimate_ns(&self) -> f64 {
        self.inner.lock().cost_ns
    }

    /// The estimate decayed to `now` as if a zero-latency sample arrived, so an endpoint that
    /// got no traffic since a slow answer is tried again eventually (as `tower::load` does).
    pub(crate) fn decayed_ns(&self, now: Instant) -> f64 {
        let inner = self.inner.lock();
        let elapsed = now.saturating_duration_since(inner.stamp).as_nanos() as f64;
        inner.cost_ns * (-elapsed / inner.decay_ns).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_slowly() {
        let ewma = EwmaEstimate::new(&EwmaConfig::default());
        let t0 = Instant::now();
        assert_eq!(ewma.estimate_ns(), 30e6);
        ewma.observe(Duration::from_millis(100), t0);
        assert_eq!(
            ewma.estimate_ns(),
            100e6,
            "a slower sample is taken at once"
        );
        ewma.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
        let after = ewma.estimate_ns();
        // w = e^-1: 100 * 0.368 + 10 * 0.632 = 43.1 ms
        assert!((after - 43.1e6).abs() < 0.2e6, "{after}");
    }
}
