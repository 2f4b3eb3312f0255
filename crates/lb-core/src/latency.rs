//! Each endpoint's latency distribution: a lock-free, log-bucketed histogram of the timed
//! requests (see [`EwmaConfig`](crate::EwmaConfig)), read as cumulative [`LatencyCounts`] in
//! [`EndpointInfo::latency`](crate::EndpointInfo::latency). A reader takes two readings and
//! [`since`](LatencyCounts::since) gives the requests between them, whose
//! [`quantile`](LatencyCounts::quantile) is that interval's p99 (an admin page's plot), where the
//! EWMA only says where latency is heading.
//!
//! Buckets: one below 1.024 µs, then four per power of two up to 2^37 ns (about 137 s), the last
//! also taking everything slower. A bucket's upper bound is at most 25 % above its lower one, so a
//! quantile read from the bounds is within that of the true value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Powers of two below which every latency falls in the first bucket (2^10 ns = 1.024 µs).
const FIRST_OCTAVE: u32 = 10;
/// Buckets per power of two (as a shift: 2^2 = 4).
const SUB_BITS: u32 = 2;
/// The last power of two with its own buckets (2^36..2^37 ns).
const LAST_OCTAVE: u32 = 36;

/// Number of latency buckets in [`LatencyCounts`].
pub const LATENCY_BUCKETS: usize = 1 + ((LAST_OCTAVE - FIRST_OCTAVE + 1) << SUB_BITS) as usize;

/// The histogram kept per endpoint: one relaxed atomic add per timed request, no allocation.
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts `weight` requests that took `latency_ns`.
    #[inline]
    pub(crate) fn record(&self, latency_ns: u64, weight: u32) {
        let index = bucket_of(latency_ns);
        // `bucket_of` stays below LATENCY_BUCKETS; `get` keeps a slip from panicking.
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(u64::from(weight), Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> LatencyCounts {
        LatencyCounts {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The bucket of a latency in nanoseconds.
#[inline]
fn bucket_of(ns: u64) -> usize {
    if ns < 1 << FIRST_OCTAVE {
        return 0;
    }
    // `ns` ≥ 2^10, so its highest set bit is 10..=63.
    let octave = 63 - ns.leading_zeros();
    if octave > LAST_OCTAVE {
        return LATENCY_BUCKETS - 1;
    }
    let sub = (ns >> (octave - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    1 + (((octave - FIRST_OCTAVE) << SUB_BITS) as usize) + sub as usize
}

/// Requests per latency bucket, counted since the endpoint joined (or between two readings,
/// see [`since`](Self::since)). Bucket `i` holds latencies below
/// [`upper_bound(i)`](Self::upper_bound) and at least the bound of bucket `i - 1`.
///
/// ```
/// # use herd_lb_core::LatencyCounts;
/// # use std::time::Duration;
/// let bound = LatencyCounts::upper_bound(LatencyCounts::bucket_of(Duration::from_millis(3)));
/// assert!(bound > Duration::from_millis(3) && bound <= Duration::from_micros(3750));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LatencyCounts {
    buckets: Box<[u64]>,
}

impl LatencyCounts {
    /// The counts, [`LATENCY_BUCKETS`] of them (none when read from nothing: `Default`).
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Requests counted in all buckets.
    pub fn total(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// The requests counted here and not in `earlier` (an older reading of the same endpoint),
    /// bucket by bucket; a bucket that went down (another endpoint's reading) counts 0.
    #[must_use]
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The latency below which a share `q` (0..=1, e.g. 0.99) of the counted requests fall,
    /// as the upper bound of the bucket where that share is reached; `None` when nothing is
    /// counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the request at `q`, 1-based; float rounding may land one past `total`.
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return Some(Self::upper_bound(i));
            }
        }
        Some(Self::upper_bound(LATENCY_BUCKETS - 1))
    }

    /// The bucket a latency falls in.
    pub fn bucket_of(latency: Duration) -> usize {
        bucket_of(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The (exclusive) upper bound of bucket `index`; the last bucket, which also takes
    /// everything slower, and any index past it report 2^37 ns.
    pub fn upper_bound(index: usize) -> Duration {
        let Some(k) = index.checked_sub(1) else {
            return Duration::from_nanos(1 << FIRST_OCTAVE);
        };
        let k = k.min(LATENCY_BUCKETS - 2);
        let octave = FIRST_OCTAVE + (k >> SUB_BITS) as u32;
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        // At most (4 + 3 + 1) << 34 = 2^37: no overflow.
        Duration::from_nanos(((1 << SUB_BITS) + sub + 1) << (octave - SUB_BITS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_in_order() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(1024), 1);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        let mut last = 0;
        let mut ns = 1u64;
        while ns < 1 << 40 {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns} ns went back to bucket {b}");
            assert!(b < LATENCY_BUCKETS);
            if b < LATENCY_BUCKETS - 1 {
                let upper = LatencyCounts::upper_bound(b).as_nanos() as u64;
                assert!(
                    ns < upper,
                    "{ns} ns is not below its bucket's bound {upper}"
                );
                if b > 0 {
                    let lower = LatencyCounts::upper_bound(b - 1).as_nanos() as u64;
                    assert!(
                        ns >= lower,
                        "{ns} ns is below its bucket's lower bound {lower}"
                    );
                    assert!(upper * 4 <= lower * 5, "bucket {b} is wider than 25 %");
                }
            }
            last = b;
            ns = ns + ns / 7 + 1;
        }
    }

    #[test]
    fn p99_of_an_interval_comes_from_the_difference() {
        let h = LatencyHistogram::new();
        for _ in 0..1000 {
            h.record(2_000_000, 1); // 2 ms
        }
        let before = h.counts();
        assert_eq!(before.total(), 1000);
        // The next interval: 98 fast requests, 2 at 100 ms (one sampled, standing for 2).
        for _ in 0..98 {
            h.record(1_000_000, 1);
        }
        h.record(100_000_000, 2);
        let interval = h.counts().since(&before);
        assert_eq!(interval.total(), 100);
        let p99 = interval.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_millis(100) && p99 <= Duration::from_millis(125),
            "{p99:?}"
        );
        let p50 = interval.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_millis(1) && p50 <= Duration::from_micros(1250),
            "{p50:?}"
        );
        assert_eq!(h.counts().since(&h.counts()).quantile(0.99), None);
        assert_eq!(LatencyCounts::default().quantile(0.99), None);
    }
}
