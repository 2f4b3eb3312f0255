//! Selection policies: which endpoint of a snapshot takes the next request.
//!
//! A policy implements [`Pick`]: given the [`Candidates`] of a snapshot and a [`PickContext`], it
//! returns an index or `None` when nothing is available. Policies hold no per-endpoint state
//! (that lives in each endpoint's `Arc<EndpointState>`), so a membership change never resets them.
//! Closures `Fn(&Candidates, &PickContext<'_>) -> Option<usize>` are policies too.

mod hash;
mod least;
mod p2c;
mod random;
mod round_robin;

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

pub use hash::ConsistentHash;
pub use least::LeastOutstanding;
pub use p2c::{P2c, PeakEwma};
pub use random::WeightedRandom;
pub use round_robin::RoundRobin;

use crate::error::Error;
use crate::snapshot::{Candidates, PickContext};

/// Chooses one endpoint of a snapshot.
pub trait Pick: Send + Sync {
    /// An available endpoint's index, or `None` when none is available under `ctx`.
    fn pick(&self, candidates: &Candidates, ctx: &PickContext<'_>) -> Option<usize>;

    /// Whether the policy ranks endpoints by their latency estimate
    /// ([`EndpointState::ewma`](crate::EndpointState::ewma)), so that every request it routes
    /// must be timed. Default `false`: 1 in [`EwmaConfig::sampling`](crate::EwmaConfig::sampling)
    /// requests is timed. [`PeakEwma`] says `true`; so should a custom policy that reads latency
    /// (a closure cannot: wrap it in a type, or set `sampling` to 1).
    fn uses_latency(&self) -> bool {
        false
    }
}

impl<F> Pick for F
where
    F: Fn(&Candidates, &PickContext<'_>) -> Option<usize> + Send + Sync,
{
    fn pick(&self, candidates: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        self(candidates, ctx)
    }
}

impl<P: Pick + ?Sized> Pick for Arc<P> {
    fn pick(&self, candidates: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        (**self).pick(candidates, ctx)
    }

    fn uses_latency(&self) -> bool {
        (**self).uses_latency()
    }
}

/// Any of the built-in policies, or a custom one; what a [`Balancer`](crate::Balancer) uses.
#[non_exhaustive]
pub enum Policy {
    /// Power of two choices over least outstanding requests (the default).
    P2c(P2c),
    /// Smooth weighted round robin (nginx).
    RoundRobin(RoundRobin),
    /// Weighted random.
    WeightedRandom(WeightedRandom),
    /// Least outstanding requests per unit of weight.
    LeastOutstanding(LeastOutstanding),
    /// Power of two choices over Peak-EWMA latency × outstanding requests.
    PeakEwma(PeakEwma),
    /// Consistent hashing with bounded load.
    ConsistentHash(ConsistentHash),
    /// A user policy.
    Custom(Arc<dyn Pick>),
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::P2c(p) => p.fmt(f),
            Self::RoundRobin(p) => p.fmt(f),
            Self::WeightedRandom(p) => p.fmt(f),
            Self::LeastOutstanding(p) => p.fmt(f),
            Self::PeakEwma(p) => p.fmt(f),
            Self::ConsistentHash(p) => p.fmt(f),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::P2c(P2c::new())
    }
}

impl Pick for Policy {
    #[inline]
    fn pick(&self, c: &Candidates, ctx: &PickContext<'_>) -> Option<usize> {
        match self {
            Self::P2c(p) => p.pick(c, ctx),
            Self::RoundRobin(p) => p.pick(c, ctx),
            Self::WeightedRandom(p) => p.pick(c, ctx),
            Self::LeastOutstanding(p) => p.pick(c, ctx),
            Self::PeakEwma(p) => p.pick(c, ctx),
            Self::ConsistentHash(p) => p.pick(c, ctx),
            Self::Custom(p) => p.pick(c, ctx),
        }
    }

    #[inline]
    fn uses_latency(&self) -> bool {
        match self {
            Self::PeakEwma(p) => p.uses_latency(),
            Self::Custom(p) => p.uses_latency(),
            _ => false,
        }
    }
}

macro_rules! from_policy {
    ($($t:ident),*) => {$(
        impl From<$t> for Policy {
            fn from(p: $t) -> Self {
                Self::$t(p)
            }
        }
    )*};
}
from_policy!(
    P2c,
    RoundRobin,
    WeightedRandom,
    LeastOutstanding,
    PeakEwma,
    ConsistentHash
);

/// A policy by name, for configuration files.
///
/// ```
/// # use herd_lb_core::PolicyConfig;
/// let p: PolicyConfig = serde_json::from_str(r#"{"consistent_hash": {"balance_factor": 1.25}}"#).unwrap();
/// assert_eq!(p, PolicyConfig::ConsistentHash { balance_factor: 1.25 });
/// let p: PolicyConfig = serde_json::from_str(r#""least_outstanding""#).unwrap();
/// assert_eq!(p, PolicyConfig::LeastOutstanding);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyConfig {
    /// [`P2c`] (default).
    #[default]
    P2c,
    /// [`RoundRobin`].
    RoundRobin,
    /// [`WeightedRandom`].
    WeightedRandom,
    /// [`LeastOutstanding`].
    LeastOutstanding,
    /// [`PeakEwma`].
    PeakEwma,
    /// [`ConsistentHash`] with a bounded-load factor (> 1; Envoy's `hash_balance_factor` / 100).
    ConsistentHash {
        /// No endpoint takes more than `balance_factor` × its share of the in-flight requests.
        #[serde(default = "default_balance_factor")]
        balance_factor: f64,
    },
}

fn default_balance_factor() -> f64 {
    1.25
}

impl PolicyConfig {
    /// Builds the policy with randomness from the OS (`seed: None`) or a fixed seed.
    pub fn build(&self, seed: Option<u64>) -> Result<Policy, Error> {
        let rng = || seed.map_or_else(crate::SharedRng::new, crate::SharedRng::seeded);
        Ok(match self {
            Self::P2c => P2c::with_rng(rng()).into(),
            Self::RoundRobin => RoundRobin::with_rng(rng()).into(),
            Self::WeightedRandom => WeightedRandom::with_rng(rng()).into(),
            Self::LeastOutstanding => LeastOutstanding::with_rng(rng()).into(),
            Self::PeakEwma => PeakEwma::with_rng(rng()).into(),
            Self::ConsistentHash { balance_factor } => {
                ConsistentHash::with_rng(*balance_factor, rng())?.into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_latency_policies_need_every_request_timed() {
        assert!(PeakEwma::seeded(1).uses_latency());
        assert!(Policy::from(PeakEwma::seeded(1)).uses_latency());
        assert!(Policy::Custom(Arc::new(PeakEwma::seeded(1))).uses_latency());
        for policy in [
            Policy::from(P2c::seeded(1)),
            RoundRobin::seeded(1).into(),
            WeightedRandom::seeded(1).into(),
            LeastOutstanding::seeded(1).into(),
            ConsistentHash::seeded(1.25, 1).expect("factor > 1").into(),
            Policy::Custom(Arc::new(|_: &Candidates, _: &PickContext<'_>| Some(0))),
        ] {
            assert!(!policy.uses_latency(), "{policy:?}");
        }
    }
}
