use super::Pick;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, PickContext};

/// Least outstanding requests per unit of weight (nginx `least_conn` with weights): the endpoint
/// with the lowest `in_flight / effective_weight`; ties are broken at random in proportion to the
/// weights, so an idle set still gets the weighted shares. O(n) per pick.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    rng: SharedRng,
}

impl LeastOutstanding {
    /// Randomness (for ties) from the OS.
    pub fn new() -> Self {
        Self::with_rng(SharedRng::new())
    }

    /// Deterministic tie-breaks for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(SharedRng::seeded(seed))
    }

    /// Uses `rng`.
    pub fn with_rng(rng: SharedRng) -> Self {
        Self { rng }
    }
}

impl Pick for LeastOutstanding {
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        c.scan_weighted(&self.rng, ctx, |s| {
            s.in_flight() as f64 / s.effective_weight().max(f64::MIN_POSITIVE)
        })
    }
}
