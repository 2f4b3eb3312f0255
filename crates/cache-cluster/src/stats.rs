//! Counters behind `Cache::stats()` (the hit ratio herd-health reports).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics;

/// What a lookup found, the `result` label of `herd_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Error,
}

/// Which tier answered, the `tier` label of `herd_cache_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    L1,
    L2,
}

/// A counter split over cache-line-sized shards, so threads counting hits at the same time do
/// not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct ShardedCounter {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS
    };
}

impl ShardedCounter {
    fn fetch_add(&self, n: u64, order: Ordering) {
        let shard = SHARD.with(|s| *s);
        if let Some(Shard(counter)) = self.shards.get(shard) {
            counter.fetch_add(n, order);
        }
    }

    fn load(&self, order: Ordering) -> u64 {
        self.shards.iter().map(|Shard(c)| c.load(order)).sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    l1_hits: ShardedCounter,
    l2_hits: ShardedCounter,
    misses: ShardedCounter,
    stale: ShardedCounter,
    errors: ShardedCounter,
    loads: ShardedCounter,
}

impl Counters {
    pub(crate) fn record(&self, tier: Tier, outcome: Outcome) {
        let counter = match (tier, outcome) {
            (Tier::L1, Outcome::Hit) => &self.l1_hits,
            (Tier::L2, Outcome::Hit) => &self.l2_hits,
            (_, Outcome::Miss) => &self.misses,
            (_, Outcome::Stale) => &self.stale,
            (_, Outcome::Error) => &self.errors,
        };
        // An L1 miss is followed by an L2 lookup; only the final answer counts as a miss.
        if !(tier == Tier::L1 && outcome == Outcome::Miss) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        metrics::requests(tier, outcome).increment(1);
    }

    pub(crate) fn record_load(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            l1_hits: self.l1_hits.load(Ordering::Relaxed),
            l2_hits: self.l2_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
        }
    }
}

/// Counts since the [`Cache`](crate::Cache) was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answered from the in-process L1.
    pub l1_hits: u64,
    /// Answered from Redis (or the in-memory backend).
    pub l2_hits: u64,
    /// Found in neither tier.
    pub misses: u64,
    /// Answered with a stale value (stale-while-revalidate or after a loader failure).
    pub stale: u64,
    /// Backend failed or was skipped, or the stored bytes were not a value of this cache.
    pub errors: u64,
    /// Loader calls made by `get_or_load`.
    pub loads: u64,
}

impl CacheStats {
    /// Hits (both tiers and stale) over all lookups; `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let hits = self.l1_hits + self.l2_hits + self.stale;
        let total = hits + self.misses + self.errors;
        (total > 0).then(|| hits as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_counts_final_answers() {
        let c = Counters::default();
        assert_eq!(c.snapshot().hit_ratio(), None);
        c.record(Tier::L1, Outcome::Hit);
        c.record(Tier::L1, Outcome::Miss);
        c.record(Tier::L2, Outcome::Hit);
        c.record(Tier::L1, Outcome::Miss);
        c.record(Tier::L2, Outcome::Miss);
        c.record(Tier::L2, Outcome::Stale);
        let s = c.snapshot();
        assert_eq!((s.l1_hits, s.l2_hits, s.misses, s.stale), (1, 1, 1, 1));
        assert_eq!(s.hit_ratio(), Some(0.75));
    }
}
