use super::{P2c, Pick};
use crate::error::Error;
use crate::rng::SharedRng;
use crate::snapshot::{Candidates, PickContext};

/// Consistent hashing on a request key with bounded load (Google's "consistent hashing with
/// bounded loads", Envoy's `hash_balance_factor`).
///
/// The key's hash is looked up on a ring with up to 160 points per endpoint (in proportion to
/// weight), so when one of N endpoints leaves only about 1/N of the keys move. Walking clockwise,
/// the first available endpoint whose in-flight requests stay within
/// `balance_factor × (in-flight total + 1) × weight share` (rounded up) takes the request, so a
/// hot key spills to the next endpoints instead of overloading one. A request without a key is
/// routed by [`P2c`].
///
/// The mapping is fixed by documented algorithms, so every gateway of a fleet maps a key to the
/// same endpoint, whatever compiler or herd version built it: an endpoint gets
/// `round(160 × weight / heaviest weight)` points (at least one); with `h` the XXH3-64 hash
/// (seed 0) of the endpoint key's `Display` form, point `r` (from 0) is the XXH3-64 hash of the
/// 12 bytes `h` (little-endian) then `r` (little-endian `u32`). A request goes to the first point
/// at or after its [`RequestKey`](crate::RequestKey) (the XXH3-64 hash of the value it is made
/// from), wrapping around. Tests pin the hashes and a key → endpoint mapping.
#[derive(Debug)]
pub struct ConsistentHash {
    balance_factor: f64,
    fallback: P2c,
}

impl ConsistentHash {
    /// `balance_factor` must be a number > 1 (1.25 is a common choice).
    pub fn new(balance_factor: f64) -> Result<Self, Error> {
        Self::with_rng(balance_factor, SharedRng::new())
    }

    /// Deterministic fallback draws for tests and benchmarks.
    pub fn seeded(balance_factor: f64, seed: u64) -> Result<Self, Error> {
        Self::with_rng(balance_factor, SharedRng::seeded(seed))
    }

    /// Uses `rng` for the P2C fallback.
    pub fn with_rng(balance_factor: f64, rng: SharedRng) -> Result<Self, Error> {
        if !balance_factor.is_finite() || balance_factor <= 1.0 {
            return Err(Error::InvalidConfig {
                field: "policy.balance_factor",
                reason: format!("{balance_factor} is not a finite number > 1"),
            });
        }
        Ok(Self {
            balance_factor,
            fallback: P2c::with_rng(rng),
        })
    }

    /// The bounded-load factor.
    pub fn balance_factor(&self) -> f64 {
        self.balance_factor
    }
}

impl Pick for ConsistentHash {
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(key) = ctx.key() else {
            return self.fallback.pick(c, ctx);
        };
        if c.is_empty() {
            return None;
        }
        // Total load is only needed once the first candidate is busy.
        let mut total: Option<f64> = None;
        let total_weight = c.total_weight().max(f64::MIN_POSITIVE);
        for i in c.ring().walk(key.0) {
            if !c.is_available(i, ctx) {
                continue;
            }
            let Some(state) = c.state(i) else { continue };
            let load = state.in_flight();
            if load == 0 {
                return Some(i);
            }
            let total = *total
                .get_or_insert_with(|| c.states().map(|s| s.in_flight()).sum::<usize>() as f64);
            let bound = (self.balance_factor * (total + 1.0) * c.weight(i) / total_weight).ceil();
            if (load as f64) < bound {
                return Some(i);
            }
        }
        self.fallback.pick(c, ctx)
    }
}
