//! Fail-open circuit: stop paying the backend timeout on every request while it is down.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::CircuitConfig;
use crate::metrics::CIRCUIT_OPENED_TOTAL;

/// Counts consecutive failures; after `failure_threshold` of them backend calls are skipped for
/// `open_for`. After that one call is let through (half-open): success closes the circuit, a
/// failure opens it again at once.
#[derive(Debug)]
pub(crate) struct Circuit {
    threshold: u32,
    open_for: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls are skipped; 0 = closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl Circuit {
    pub(crate) fn new(config: &CircuitConfig) -> Self {
        Self {
            threshold: config.failure_threshold,
            open_for: config.open_for,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a backend call may be made now.
    pub(crate) fn allows(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// `true` while calls are being skipped.
    pub(crate) fn is_open(&self) -> bool {
        !self.allows()
    }

    pub(crate) fn record_success(&self) {
        // Loads first: the common case (already closed) then writes nothing shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
            tracing::info!("cache backend circuit closed");
        }
    }

    pub(crate) fn record_failure(&self) {
        if self.threshold == 0 {
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let half_open = self.open_until_ms.load(Ordering::Relaxed) != 0;
        if failures >= self.threshold || half_open {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX))
                .max(1);
            self.open_until_ms.store(until, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            metrics::counter!(CIRCUIT_OPENED_TOTAL).increment(1);
            tracing::warn!(open_for = ?self.open_for, "cache backend circuit opened after consecutive failures");
        }
    }
}

/// One circuit per cluster shard, so a dead master does not make the others look dead, and one
/// for everything else (standalone, memory, and operations spanning shards).
///
/// Shards map to a fixed set of circuits by a hash of the master's address: no locks, maps or
/// reference counts on the request path. Two masters whose hashes collide share a circuit
/// (with [`SHARD_CIRCUITS`] buckets that is rare, and only makes failing open a bit broader).
#[derive(Debug)]
pub(crate) struct Circuits {
    whole: Circuit,
    shards: Box<[Circuit]>,
}

/// Number of per-shard circuits.
const SHARD_CIRCUITS: usize = 64;

impl Circuits {
    pub(crate) fn new(config: &CircuitConfig) -> Self {
        Self {
            whole: Circuit::new(config),
            shards: (0..SHARD_CIRCUITS).map(|_| Circuit::new(config)).collect(),
        }
    }

    /// The circuit for operations that span shards.
    pub(crate) fn whole(&self) -> &Circuit {
        &self.whole
    }

    /// The circuit of the shard with this identity, or the whole backend's when it is unknown.
    pub(crate) fn for_shard(&self, shard: Option<u64>) -> &Circuit {
        shard
            .and_then(|hash| self.shards.get((hash % SHARD_CIRCUITS as u64) as usize))
            .unwrap_or(&self.whole)
    }

    /// Whether any circuit is skipping calls.
    pub(crate) fn any_open(&self) -> bool {
        self.whole.is_open() || self.shards.iter().any(Circuit::is_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(threshold: u32, open_for_ms: u64) -> Circuit {
        Circuit::new(&CircuitConfig {
            failure_threshold: threshold,
            open_for: Duration::from_millis(open_for_ms),
        })
    }

    #[test]
    fn opens_after_threshold_and_half_opens_after_open_for() {
        let c = circuit(3, 50);
        c.record_failure();
        c.record_failure();
        assert!(c.allows());
        c.record_failure();
        assert!(c.is_open());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.allows(), "half-open after open_for");
        c.record_failure();
        assert!(c.is_open(), "a failed probe opens it again at once");
        std::thread::sleep(Duration::from_millis(60));
        c.record_success();
        assert!(c.allows());
        c.record_failure();
        assert!(c.allows(), "closed again: the count restarted");
    }

    #[test]
    fn shards_have_their_own_circuits() {
        let circuits = Circuits::new(&CircuitConfig {
            failure_threshold: 1,
            open_for: Duration::from_secs(10),
        });
        circuits.for_shard(Some(7)).record_failure();
        assert!(circuits.for_shard(Some(7)).is_open());
        assert!(circuits.for_shard(Some(8)).allows());
        assert!(circuits.for_shard(None).allows());
        assert!(circuits.whole().allows());
        assert!(circuits.any_open());
    }

    #[test]
    fn success_resets_the_count_and_zero_threshold_disables() {
        let c = circuit(2, 1000);
        c.record_failure();
        c.record_success();
        c.record_failure();
        assert!(c.allows());
        let off = circuit(0, 1000);
        for _ in 0..10 {
            off.record_failure();
        }
        assert!(off.allows());
    }
}
