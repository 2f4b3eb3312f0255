use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::Pick;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, PickContext};

/// Smooth weighted round robin, as nginx does it: weights 5/1/1 give `a a b a c a a`, not
/// `a a a a a b c`. With equal weights it is a lock-free rotating counter.
///
/// The running "current weight" of each endpoint lives in the endpoint's shared state, so the
/// rotation continues across membership updates (pingora restarts it).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
    smooth: Mutex<()>,
    rng: SharedRng,
}

/// Fixed-point scale of weights in the smooth algorithm.
const SCALE: f64 = 1_000_000.0;

impl RoundRobin {
    /// Randomness (used only to thin out slow-starting endpoints) from the OS.
    pub fn new() -> Self {
        Self::with_rng(SharedRng::new())
    }

    /// Deterministic for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self::with_rng(SharedRng::seeded(seed))
    }

    /// Uses `rng`.
    pub fn with_rng(rng: SharedRng) -> Self {
        Self {
            next: AtomicUsize::new(0),
            smooth: Mutex::new(()),
            rng,
        }
    }

    fn rotate(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        let n = c.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for step in 0..n {
            let i = (start.wrapping_add(step)) % n;
            if !c.is_available(i, ctx) {
                continue;
            }
            if let Some(s) = c.state(i)
                && s.in_slow_start()
                && self.rng.unit_f64() >= s.slow_start_factor()
            {
                continue;
            }
            return Some(i);
        }
        // Everything available was thinned out by slow start: take any available one.
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| c.is_available(i, ctx))
    }

    fn smooth(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        let _one_at_a_time = self.smooth.lock();
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in c.states().enumerate() {
            if !c.is_available(i, ctx) {
                continue;
            }
            let weight = (s.effective_weight() * SCALE).round().max(1.0) as i64;
            let current = s
                .swrr_current
                .load(Ordering::Relaxed)
                .saturating_add(weight);
            s.swrr_current.store(current, Ordering::Relaxed);
            total = total.saturating_add(weight);
            if best.is_none_or(|(_, b)| current > b) {
                best = Some((i, current));
            }
        }
        let (i, current) = best?;
        if let Some(s) = c.state(i) {
            s.swrr_current
                .store(current.saturating_sub(total), Ordering::Relaxed);
        }
        Some(i)
    }
}

impl Pick for RoundRobin {
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        if c.uniform_weights() {
            self.rotate(c, ctx)
        } else {
            self.smooth(c, ctx)
        }
    }
}
