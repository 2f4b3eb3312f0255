//! Passive health (outlier detection): eject endpoints whose requests fail.

use std::time::Duration;

use serde::Deserialize;

/// When to eject an endpoint because its requests fail, and for how long.
///
/// Combines Envoy's `consecutive_5xx` outlier detection with nginx's `max_fails`/`fail_timeout`:
/// either trigger ejects. An ejected endpoint gets no traffic until its ejection time ends; then
/// exactly one probe request is let through, and only its success returns the endpoint to service
/// (a failed probe ejects it again for twice as long, up to [`max_ejection`](Self::max_ejection)).
/// With active checks on, a check that passes once the ejection time is over returns it too
/// (Envoy's `successful_active_health_check_uneject_host`, but never before the time is over), so
/// an idle endpoint does not wait for traffic. Reports ([`EndpointState::status`](crate::EndpointState::status))
/// read the ejection's end from the clock: an endpoint whose time is over reports healthy at once.
///
/// Only [`Outcome::Failure`](crate::Outcome::Failure) counts: a client's fault and a shared
/// dependency's outage (`ClientError`, `DependencyUnavailable`) neither count nor reset.
///
/// ```
/// # use herd_lb_core::OutlierDetection;
/// let od: OutlierDetection = serde_json::from_str(
///     r#"{"max_fails": 3, "fail_timeout": "30s", "base_ejection": "30s"}"#,
/// ).unwrap();
/// assert_eq!(od.consecutive_failures, Some(5));
/// assert_eq!(od.max_fails, Some(3));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct OutlierDetection {
    /// Eject after this many failures in a row. Default `Some(5)`; `None` turns the trigger off.
    pub consecutive_failures: Option<u32>,
    /// nginx `max_fails`: eject after this many failures within [`fail_timeout`](Self::fail_timeout).
    /// Default `None` (off).
    pub max_fails: Option<u32>,
    /// nginx `fail_timeout`: the window `max_fails` is counted in. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// First ejection time; doubles with each ejection in a row. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Upper bound of the doubled ejection time. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Random extra ejection time, as a fraction of the ejection time, so that endpoints ejected
    /// together do not return together. Default 0.1.
    pub jitter: f64,
    /// At most this percentage of the endpoints is ejected at once. In a set of two or more, one
    /// may always be, however low the percentage (as Envoy's `always_eject_one_host`); the only
    /// endpoint of a set of one only at 100 (its ejection would move no traffic). Default 50.
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            max_fails: None,
            fail_timeout: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            jitter: 0.1,
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Outlier detection that never ejects.
    pub fn disabled() -> Self {
        Self {
            consecutive_failures: None,
            max_fails: None,
            ..Self::default()
        }
    }

    /// Ejection time for the `n`-th ejection in a row (`n >= 1`), before jitter.
    pub(crate) fn ejection_time(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

/// Ramp-up of a new or recovered endpoint's weight (Envoy's slow start, nginx Plus `slow_start`).
///
/// During `window` the endpoint's effective weight grows linearly from
/// `min_weight_percent` % to 100 % of its weight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SlowStart {
    /// How long the ramp lasts. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Effective weight at the start of the window, in percent. Default 10.
    pub min_weight_percent: u8,
}

impl Default for SlowStart {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_weight_percent: 10,
        }
    }
}

impl SlowStart {
    /// The weight factor in `(0, 1]` after `elapsed` of the window.
    pub(crate) fn factor(&self, elapsed: Duration) -> f64 {
        let min = f64::from(self.min_weight_percent.clamp(1, 100)) / 100.0;
        if self.window.is_zero() || elapsed >= self.window {
            return 1.0;
        }
        let progress = elapsed.as_secs_f64() / self.window.as_secs_f64();
        (min + (1.0 - min) * progress).clamp(min, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let od = OutlierDetection::default();
        assert_eq!(od.ejection_time(1), Duration::from_secs(30));
        assert_eq!(od.ejection_time(2), Duration::from_secs(60));
        assert_eq!(od.ejection_time(4), Duration::from_secs(240));
        assert_eq!(od.ejection_time(5), Duration::from_secs(300));
        assert_eq!(od.ejection_time(60), Duration::from_secs(300));
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let s = SlowStart::default();
        assert!((s.factor(Duration::ZERO) - 0.1).abs() < 1e-9);
        assert!((s.factor(Duration::from_secs(15)) - 0.55).abs() < 1e-9);
        assert_eq!(s.factor(Duration::from_secs(30)), 1.0);
    }
}
