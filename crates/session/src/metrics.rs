//! The crate's metrics, through the `metrics` facade (the application installs the exporter).
//!
//! | name | labels | counts |
//! |---|---|---|
//! | `herd_session_loads_total` | `store`, `outcome` = `hit`/`miss`/`expired`/`error` | session reads |
//! | `herd_session_saves_total` | `store`, `outcome` = `created`/`saved`/`touched`/`gone`/`too_large`/`gave_up` | writes and their results |
//! | `herd_session_conflicts_total` | `store`, `kind` = `merged`/`same_field` | saves that met a concurrent change (and merged); fields changed on both sides |
//! | `herd_session_store_errors_total` | `store`, `operation` | failed store operations |
//! | `herd_session_cookies_rejected_total` | `store`, `reason` = `forged`/`unknown`/`ambiguous` | cookies that did not lead to a session (`ambiguous`: several cookies with the session's name) |
//! | `herd_session_store_failover_retries_total` | `store`, `operation` | store attempts repeated after an error a failover explains |
//! | `herd_session_store_failover_waits_total` | `store`, `operation`, `outcome` = `recovered`/`gave_up` | store operations that waited out a failover, and how they ended |
//! | `herd_session_store_failover_wait_seconds` (histogram) | `store`, `operation` | how long those operations waited |
//! | `herd_session_store_topology_refreshes_total` | `store` | new cluster connections (fresh slot maps) made while waiting out a failover |
//!
//! Keys are built once per layer and the recorder is looked up at every event, so counting
//! allocates nothing and works whether the exporter was installed before or after the layer.

use metrics::{Key, Label, Level, Metadata};

const LOADS: &str = "herd_session_loads_total";
const SAVES: &str = "herd_session_saves_total";
const CONFLICTS: &str = "herd_session_conflicts_total";
const STORE_ERRORS: &str = "herd_session_store_errors_total";
const COOKIES_REJECTED: &str = "herd_session_cookies_rejected_total";
#[cfg(feature = "redis")]
const FAILOVER_RETRIES: &str = "herd_session_store_failover_retries_total";
#[cfg(feature = "redis")]
const FAILOVER_WAITS: &str = "herd_session_store_failover_waits_total";
#[cfg(feature = "redis")]
const FAILOVER_WAIT_SECONDS: &str = "herd_session_store_failover_wait_seconds";
#[cfg(feature = "redis")]
const TOPOLOGY_REFRESHES: &str = "herd_session_store_topology_refreshes_total";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

const LOAD_OUTCOMES: [&str; 4] = ["hit", "miss", "expired", "error"];
const SAVE_OUTCOMES: [&str; 6] = [
    "created",
    "saved",
    "touched",
    "gone",
    "too_large",
    "gave_up",
];
const CONFLICT_KINDS: [&str; 2] = ["merged", "same_field"];
const REJECT_REASONS: [&str; 3] = ["forged", "unknown", "ambiguous"];

/// Pre-built metric keys for one store.
#[derive(Debug)]
pub(crate) struct Metrics {
    store: &'static str,
    loads: Vec<Key>,
    saves: Vec<Key>,
    conflicts: Vec<Key>,
    rejected: Vec<Key>,
}

impl Metrics {
    pub(crate) fn new(store: &'static str) -> Self {
        let keys = |name: &'static str, label: &'static str, values: &[&'static str]| {
            values
                .iter()
                .map(|value| key(name, store, label, value))
                .collect()
        };
        Self {
            store,
            loads: keys(LOADS, "outcome", &LOAD_OUTCOMES),
            saves: keys(SAVES, "outcome", &SAVE_OUTCOMES),
            conflicts: keys(CONFLICTS, "kind", &CONFLICT_KINDS),
            rejected: keys(COOKIES_REJECTED, "reason", &REJECT_REASONS),
        }
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn load(&self, outcome: &'static str) {
        self.count(LOADS, "outcome", &LOAD_OUTCOMES, &self.loads, outcome, 1);
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn save(&self, outcome: &'static str) {
        self.count(SAVES, "outcome", &SAVE_OUTCOMES, &self.saves, outcome, 1);
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn conflict(&self, kind: &'static str) {
        self.count(CONFLICTS, "kind", &CONFLICT_KINDS, &self.conflicts, kind, 1);
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn cookie_rejected(&self, reason: &'static str) {
        self.count(
            COOKIES_REJECTED,
            "reason",
            &REJECT_REASONS,
            &self.rejected,
            reason,
            1,
        );
    }

    /// Store errors are rare: their key is built when needed.
    pub(crate) fn store_error(&self, operation: &'static str) {
        increment(&key(STORE_ERRORS, self.store, "operation", operation), 1);
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    fn count(
        &self,
        name: &'static str,
        label: &'static str,
        values: &[&'static str],
        keys: &[Key],
        value: &'static str,
        by: u64,
    ) {
        match values
            .iter()
            .position(|v| *v == value)
            .and_then(|i| keys.get(i))
        {
            Some(key) => increment(key, by),
            None => increment(&key(name, self.store, label, value), by),
        }
    }
}

/// A store attempt repeated during a failover. Rare: the key is built when needed.
#[cfg(feature = "redis")]
pub(crate) fn failover_retry(store: &'static str, operation: &'static str) {
    increment(&key(FAILOVER_RETRIES, store, "operation", operation), 1);
}

/// A new cluster connection (a fresh slot map) made while waiting out a failover.
#[cfg(feature = "redis")]
pub(crate) fn topology_refresh(store: &'static str) {
    let key = Key::from_parts(
        TOPOLOGY_REFRESHES,
        vec![Label::from_static_parts("store", store)],
    );
    increment(&key, 1);
}

/// A store operation that waited out a failover ended (`outcome` = `recovered`/`gave_up`)
/// after `waited`.
#[cfg(feature = "redis")]
pub(crate) fn failover_waited(
    store: &'static str,
    operation: &'static str,
    outcome: &'static str,
    waited: std::time::Duration,
) {
    let labels = || {
        vec![
            Label::from_static_parts("store", store),
            Label::from_static_parts("operation", operation),
        ]
    };
    let mut counted = labels();
    counted.push(Label::from_static_parts("outcome", outcome));
    increment(&Key::from_parts(FAILOVER_WAITS, counted), 1);
    let histogram = Key::from_parts(FAILOVER_WAIT_SECONDS, labels());
    metrics::with_recorder(|recorder| {
        recorder
            .register_histogram(&histogram, &METADATA)
            .record(waited.as_secs_f64());
    });
}

fn key(name: &'static str, store: &'static str, label: &'static str, value: &'static str) -> Key {
    Key::from_parts(
        name,
        vec![
            Label::from_static_parts("store", store),
            Label::from_static_parts(label, value),
        ],
    )
}

fn increment(key: &Key, by: u64) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(by));
}
