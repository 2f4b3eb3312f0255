//! Fail-open circuit: stop paying the backend timeout on every request while it is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;
use std::time::{Duration, Instant};

use crate::config::CircuitConfig;

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
            metrics::counter!("herd_cache_circuit_opened_total").increment(1);
            tracing::warn!(open_for = ?self.open_for, "cache backend circuit opened after consecutive failures");
        }
    }
}

/// One circuit per cluster shard, so a dead master does not make the others look dead, and one
/// for everything else (standalone, memory, and operations spanning shards).
#[derive(Debug)]
pub(crate) struct Circuits {
    config: CircuitConfig,
    whole: Arc<Circuit>,
    shards: DashMap<Arc<str>, Arc<Circuit>>,
}

impl Circuits {
    pub(crate) fn new(config: &CircuitConfig) -> Self {
        Self {
            config: config.clone(),
            whole: Arc::new(Circuit::new(config)),
            shards: DashMap::new(),
        }
    }

    /// The circuit for operations that span shards.
    pub(crate) fn whole(&self) -> &Arc<Circuit> {
        &self.whole
    }

    /// The circuit of `shard`, or the whole backend's when the shard is unknown.
    pub(crate) fn for_shard(&self, shard: Option<Arc<str>>) -> Arc<Circuit> {
        let Some(shard) = shard else {
            return Arc::clone(&self.whole);
        };
        if let Some(circuit) = self.shards.get(&shard) {
            return Arc::clone(&circuit);
        }
        Arc::clone(
            &self
                .shards
                .entry(shard)
                .or_insert_with(|| Arc::new(Circuit::new(&self.config))),
        )
    }

    /// Whether any circuit is skipping calls.
    pub(crate) fn any_open(&self) -> bool {
        self.whole.is_open() || self.shards.iter().any(|c| c.is_open())
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
        let a: Arc<str> = "10.0.0.1:6379".into();
        circuits.for_shard(Some(a.clone())).record_failure();
        assert!(circuits.for_shard(Some(a)).is_open());
        assert!(circuits.for_shard(Some("10.0.0.2:6379".into())).allows());
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
