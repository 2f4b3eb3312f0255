//! A seedable random source that many threads can share by `&self`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::TryRng;

/// Random numbers for the selection policies.
///
/// Policies are shared by `&self` across threads, so a `Mutex<SmallRng>` would serialise every
/// pick. Instead the state is one atomic counter advanced by a fixed odd step, and each draw is the
/// SplitMix64 finaliser of the counter (the generator `rand` itself uses to expand `u64` seeds).
/// The counter is advanced with a relaxed load and store, not a locked read-modify-write: two
/// threads racing may draw the same number, which is harmless for load balancing and keeps a
/// draw to a few cycles. Deterministic for a seed when used from one thread; not for cryptography.
#[derive(Debug)]
pub struct SharedRng {
    state: AtomicU64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SharedRng {
    /// Seeded from the operating system's entropy (through `rand`'s thread RNG).
    pub fn new() -> Self {
        Self::seeded(rand::random())
    }

    /// Deterministic sequence for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .load(Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        self.state.store(z, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (`n > 0`), by Lemire's multiply-shift (no division).
    #[inline]
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A uniform `f64` in `[0, 1)`.
    #[inline]
    pub fn unit_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Adapter so `rand`'s distributions (e.g. `WeightedIndex`) can draw from this source.
    pub fn as_rng(&self) -> RngRef<'_> {
        RngRef(self)
    }
}

impl Default for SharedRng {
    fn default() -> Self {
        Self::new()
    }
}

/// Borrowed [`SharedRng`] implementing `rand`'s RNG traits.
#[derive(Debug)]
pub struct RngRef<'a>(&'a SharedRng);

impl TryRng for RngRef<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.0.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_stay_in_range() {
        let a = SharedRng::seeded(7);
        let b = SharedRng::seeded(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let i = a.below(13);
            assert!(i < 13);
            b.below(13);
            let f = a.unit_f64();
            assert!((0.0..1.0).contains(&f));
            b.unit_f64();
        }
    }
}
