use super::Pick;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, PickContext};

/// Power of two choices over least outstanding requests: draw two endpoints, take the one with
/// fewer requests in flight (the first on a tie).
///
/// With equal weights the two draws are two different endpoints, as in `tower::balance::p2c`, so
/// a slow endpoint loses all but the picks where it is the better of two. With weights the draws
/// follow the weights and may coincide, so weights give the expected shares (0.99/0.005/0.005
/// sends about 99 % to the first endpoint). Picking takes `&self`.
#[derive(Debug, Default)]
pub struct P2c {
    rng: SharedRng,
}

impl P2c {
    /// Randomness from the OS.
    pub fn new() -> Self {
        Self::with_rng(SharedRng::new())
    }

    /// Deterministic draws for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(SharedRng::seeded(seed))
    }

    /// Uses `rng`.
    pub fn with_rng(rng: SharedRng) -> Self {
        Self { rng }
    }
}

impl Pick for P2c {
    #[inline]
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        let (first, second) = c.sample_two(&self.rng);
        let a = c.available_from(first, &self.rng, ctx)?;
        let b = c.available_from(second, &self.rng, ctx).unwrap_or(a);
        let load = |i| c.state(i).map_or(usize::MAX, |s| s.in_flight());
        Some(if load(b) < load(a) { b } else { a })
    }
}

/// Power of two choices over Peak-EWMA cost: latency estimate × (requests in flight + 1).
///
/// The estimate (per endpoint, seeded at 30 ms, decaying over 10 s by default, see
/// [`EwmaConfig`](crate::EwmaConfig)) jumps to a slower sample at once, so a slowing endpoint loses
/// traffic quickly, and decays while idle, so it is tried again later.
#[derive(Debug, Default)]
pub struct PeakEwma {
    rng: SharedRng,
}

impl PeakEwma {
    /// Randomness from the OS.
    pub fn new() -> Self {
        Self::with_rng(SharedRng::new())
    }

    /// Deterministic draws for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(SharedRng::seeded(seed))
    }

    /// Uses `rng`.
    pub fn with_rng(rng: SharedRng) -> Self {
        Self { rng }
    }
}

impl Pick for PeakEwma {
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        let (first, second) = c.sample_two(&self.rng);
        let a = c.available_from(first, &self.rng, ctx)?;
        let b = c.available_from(second, &self.rng, ctx).unwrap_or(a);
        if a == b {
            return Some(a);
        }
        let now = ctx.now();
        let cost = |i| {
            c.state(i).map_or(f64::INFINITY, |s| {
                s.ewma_decayed_ns(now).max(1.0) * (s.in_flight() as f64 + 1.0)
            })
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }

    /// Every request is timed: the estimates are what this policy ranks by.
    fn uses_latency(&self) -> bool {
        true
    }
}
