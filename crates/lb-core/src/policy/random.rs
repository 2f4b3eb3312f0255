use super::Pick;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, PickContext};

/// Weighted random: each endpoint with probability proportional to its (effective) weight.
#[derive(Debug, Default)]
pub struct WeightedRandom {
    rng: SharedRng,
}

impl WeightedRandom {
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

impl Pick for WeightedRandom {
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        c.sample_available(&self.rng, ctx)
    }
}
