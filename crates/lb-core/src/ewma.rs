//! Peak-EWMA latency estimate, kept per endpoint.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

/// Settings of the per-endpoint latency measurement: the Peak-EWMA estimate (the estimator of
/// Finagle and `tower::load::PeakEwma`) and the `herd_lb_latency_seconds` histogram.
///
/// A policy that ranks endpoints by latency ([`PeakEwma`](crate::PeakEwma), see
/// [`Pick::uses_latency`](crate::Pick::uses_latency)) has the latency of every request measured.
/// Other policies never read it, so only 1 in [`sampling`](Self::sampling) requests per endpoint
/// is timed (two clock reads, which cost more than the rest of a pick): the estimate shown by
/// [`EndpointInfo::ewma`](crate::EndpointInfo::ewma) follows the sampled requests, and each
/// sample is recorded into the histogram `sampling` times, so its count and sum still estimate all
/// requests. Set `sampling` to 1 to time every request.
///
/// ```
/// # use herd_lb_core::EwmaConfig;
/// let config: EwmaConfig = serde_json::from_str(r#"{"default_rtt": "50ms", "decay": "5s"}"#).unwrap();
/// assert_eq!(config.decay.as_secs(), 5);
/// assert_eq!(config.sampling, 8);
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
    /// One request in `sampling` (per endpoint, counting the first) has its latency measured when
    /// the policy does not use latency; rounded up to a power of two, 0 and 1 time every request.
    /// Default 8.
    pub sampling: u32,
}

/// Default of [`EwmaConfig::sampling`].
const DEFAULT_SAMPLING: u32 = 8;

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            sampling: DEFAULT_SAMPLING,
        }
    }
}

impl EwmaConfig {
    /// [`sampling`](Self::sampling) as a mask on a request sequence number: a request whose
    /// number has none of these bits set is timed.
    pub(crate) fn sampling_mask(&self) -> u64 {
        u64::from(
            self.sampling
                .max(1)
                .checked_next_power_of_two()
                .unwrap_or(1 << 31),
        ) - 1
    }
}

/// Per-endpoint latency estimate: jumps up to a slower sample at once ("peak"), and decays
/// towards faster samples exponentially with time, so a slow endpoint is avoided immediately and
/// regains traffic gradually.
///
/// Lock-free: two relaxed atomics. Concurrent samples may overwrite each other, which only loses a
/// sample of an estimate; it keeps the request path free of locks.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct EwmaEstimate {
    cost_bits: AtomicU64,
    /// Raw clock ticks of the last sample (see [`clock::raw`]).
    stamp: AtomicU64,
    /// `1 / decay` in 1/tick (a multiply on the request path instead of a divide, and no
    /// conversion of the timestamps to nanoseconds).
    inv_decay_ticks: f64,
}

impl EwmaEstimate {
    pub(crate) fn new(config: &EwmaConfig) -> Self {
        Self {
            cost_bits: AtomicU64::new(nanos(config.default_rtt).to_bits()),
            stamp: AtomicU64::new(clock::raw()),
            inv_decay_ticks: clock::ns_per_tick() / nanos(config.decay).max(1.0),
        }
    }

    /// Adds one round-trip sample of `rtt_ns` nanoseconds taken at `now` (raw ticks, see
    /// [`clock::raw`]).
    #[inline]
    pub(crate) fn observe(&self, rtt_ns: u64, now: u64) {
        let rtt_ns = rtt_ns as f64;
        let cost = f64::from_bits(self.cost_bits.load(Ordering::Relaxed));
        let stamp = self.stamp.load(Ordering::Relaxed);
        self.stamp.store(now, Ordering::Relaxed);
        let next = if rtt_ns > cost {
            rtt_ns
        } else {
            let w = decay_weight(now.saturating_sub(stamp) as f64 * self.inv_decay_ticks);
            cost * w + rtt_ns * (1.0 - w)
        };
        self.cost_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The estimate in nanoseconds as of the last sample.
    pub(crate) fn estimate_ns(&self) -> f64 {
        f64::from_bits(self.cost_bits.load(Ordering::Relaxed))
    }

    /// The estimate decayed to `now` (raw ticks) as if a zero-latency sample arrived, so an
    /// endpoint that got no traffic since a slow answer is tried again eventually (as
    /// `tower::load` does).
    #[inline]
    pub(crate) fn decayed_ns(&self, now: u64) -> f64 {
        let stamp = self.stamp.load(Ordering::Relaxed);
        self.estimate_ns() * decay_weight(now.saturating_sub(stamp) as f64 * self.inv_decay_ticks)
    }
}

/// The latency clock: raw TSC ticks from one process-wide calibrated `quanta::Clock` (a bare
/// `rdtsc` per read; `quanta::Instant::now` adds a thread-local override check and a scaling
/// multiply, and `std::time::Instant` is a `clock_gettime` call), since every timed request reads
/// it twice. Ticks become nanoseconds only when a latency is recorded; the EWMA decays in ticks.
pub(crate) mod clock {
    use std::sync::OnceLock;

    /// The clock and its length of a tick in nanoseconds.
    static CLOCK: OnceLock<(quanta::Clock, f64)> = OnceLock::new();

    #[inline]
    fn get() -> &'static (quanta::Clock, f64) {
        CLOCK.get_or_init(|| {
            let clock = quanta::Clock::new();
            const TICKS: u64 = 1 << 40;
            let ns_per_tick = clock.delta_as_nanos(0, TICKS) as f64 / TICKS as f64;
            (clock, ns_per_tick)
        })
    }

    /// Now, in raw ticks (compare only through [`ns_between`]).
    #[inline]
    pub(crate) fn raw() -> u64 {
        get().0.raw()
    }

    /// Nanoseconds from `start` to `end` (raw ticks; 0 if `end` is not later).
    #[inline]
    pub(crate) fn ns_between(start: u64, end: u64) -> u64 {
        get().0.delta_as_nanos(start, end)
    }

    /// Nanoseconds per raw tick (1 where the clock falls back to a nanosecond counter).
    pub(crate) fn ns_per_tick() -> f64 {
        get().1
    }
}

/// Nanoseconds as `f64` without a 128-bit conversion.
#[inline]
fn nanos(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

/// `e^-x` for `x >= 0`; samples usually arrive far apart from the decay time, where a short
/// series is exact to 1e-12 and much cheaper than `exp`.
#[inline]
fn decay_weight(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x + x * x * (0.5 - x * (1.0 / 6.0))
    } else {
        (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rounds_up_to_a_power_of_two() {
        let mask = |sampling| {
            EwmaConfig {
                sampling,
                ..EwmaConfig::default()
            }
            .sampling_mask()
        };
        assert_eq!(EwmaConfig::default().sampling_mask(), 7);
        assert_eq!([mask(0), mask(1), mask(2), mask(5)], [0, 0, 1, 7]);
        assert_eq!(mask(u32::MAX), (1 << 31) - 1);
    }

    #[test]
    fn decay_weight_matches_exp() {
        for x in [0.0, 1e-9, 1e-6, 5e-4, 9.9e-4, 1e-3, 0.5, 3.0] {
            assert!((decay_weight(x) - (-x).exp()).abs() < 1e-12, "{x}");
        }
    }

    #[test]
    fn peaks_at_once_and_decays_slowly() {
        let ewma = EwmaEstimate::new(&EwmaConfig::default());
        let t0 = clock::raw();
        assert_eq!(ewma.estimate_ns(), 30e6);
        ewma.observe(100_000_000, t0);
        assert_eq!(
            ewma.estimate_ns(),
            100e6,
            "a slower sample is taken at once"
        );
        let ten_seconds = (10e9 / clock::ns_per_tick()) as u64;
        ewma.observe(10_000_000, t0 + ten_seconds);
        let after = ewma.estimate_ns();
        // w = e^-1: 100 * 0.368 + 10 * 0.632 = 43.1 ms
        assert!((after - 43.1e6).abs() < 0.2e6, "{after}");
    }
}
