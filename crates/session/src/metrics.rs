//! Metric names, and the calls that record them (through the `metrics` facade; the
//! application installs the exporter). Every metric has a `store` label: `memory`, `redis`,
//! `cookie`, or a store's own [`name`](crate::SessionStore::name).
//!
//! Keys are built once per layer and the recorder is looked up at every event, so counting
//! allocates nothing and works whether the exporter was installed before or after the layer.
//! `docs/metrics.md` lists every herd metric.

use metrics::{Key, Label, Level, Metadata, Unit, describe_counter, describe_histogram};

/// Counter: session reads, by `store` and `outcome` (`hit`, `miss`, `expired`, `error`).
pub const LOADS_TOTAL: &str = "herd_session_loads_total";
/// Counter: session writes and their results, by `store` and `outcome` (`created`, `saved`,
/// `touched`, `gone`, `too_large`, `gave_up`).
pub const SAVES_TOTAL: &str = "herd_session_saves_total";
/// Counter: concurrent changes met by saves, by `store` and `kind`: `merged` (a save met
/// another request's and merged), `same_field` (a field changed on both sides).
pub const CONFLICTS_TOTAL: &str = "herd_session_conflicts_total";
/// Counter: failed store operations, by `store` and `operation`
/// ([`StoreOperation`](crate::StoreOperation)).
pub const STORE_ERRORS_TOTAL: &str = "herd_session_store_errors_total";
/// Counter: cookies (or bearer tokens) that did not lead to a session, by `store` and
/// `reason`: `forged`, `unknown`, `ambiguous` (several values with the session's name).
pub const COOKIES_REJECTED_TOTAL: &str = "herd_session_cookies_rejected_total";
/// Counter: Redis store attempts repeated after an error a failover explains, by `store` and
/// `operation`.
pub const STORE_FAILOVER_RETRIES_TOTAL: &str = "herd_session_store_failover_retries_total";
/// Counter: Redis store operations that waited out a failover, by `store`, `operation` and
/// `outcome` (`recovered`, `gave_up`).
pub const STORE_FAILOVER_WAITS_TOTAL: &str = "herd_session_store_failover_waits_total";
/// Histogram: seconds those operations waited, by `store` and `operation`.
pub const STORE_FAILOVER_WAIT_SECONDS: &str = "herd_session_store_failover_wait_seconds";
/// Counter: new cluster connections (fresh slot maps) the Redis store made while waiting out a
/// failover, by `store`.
pub const STORE_TOPOLOGY_REFRESHES_TOTAL: &str = "herd_session_store_topology_refreshes_total";

/// Describes every metric above (HELP text and unit) to the recorder in force.
///
/// Building a [`SessionLayer`](crate::SessionLayer) calls it, so an application that installs
/// its recorder first, as it should, needs nothing more; one that installs its recorder later
/// calls this once after installing it. Calling it again is harmless: a recorder keeps one
/// description per name.
pub fn describe() {
    describe_counter!(
        LOADS_TOTAL,
        Unit::Count,
        "Session reads, by store and outcome (hit, miss, expired, error)."
    );
    describe_counter!(
        SAVES_TOTAL,
        Unit::Count,
        "Session writes, by store and outcome (created, saved, touched, gone, too_large, gave_up)."
    );
    describe_counter!(
        CONFLICTS_TOTAL,
        Unit::Count,
        "Concurrent changes met by saves, by store and kind (merged, same_field)."
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Failed session store operations, by store and operation."
    );
    describe_counter!(
        COOKIES_REJECTED_TOTAL,
        Unit::Count,
        "Session cookies or bearer tokens that did not lead to a session, by store and reason (forged, unknown, ambiguous)."
    );
    describe_counter!(
        STORE_FAILOVER_RETRIES_TOTAL,
        Unit::Count,
        "Redis session store attempts repeated after an error a failover explains, by store and operation."
    );
    describe_counter!(
        STORE_FAILOVER_WAITS_TOTAL,
        Unit::Count,
        "Redis session store operations that waited out a failover, by store, operation and outcome (recovered, gave_up)."
    );
    describe_histogram!(
        STORE_FAILOVER_WAIT_SECONDS,
        Unit::Seconds,
        "Time a Redis session store operation waited out a failover, by store and operation."
    );
    describe_counter!(
        STORE_TOPOLOGY_REFRESHES_TOTAL,
        Unit::Count,
        "New cluster connections (fresh slot maps) the Redis session store made while waiting out a failover."
    );
}

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
        describe();
        let keys = |name: &'static str, label: &'static str, values: &[&'static str]| {
            values
                .iter()
                .map(|value| key(name, store, label, value))
                .collect()
        };
        Self {
            store,
            loads: keys(LOADS_TOTAL, "outcome", &LOAD_OUTCOMES),
            saves: keys(SAVES_TOTAL, "outcome", &SAVE_OUTCOMES),
            conflicts: keys(CONFLICTS_TOTAL, "kind", &CONFLICT_KINDS),
            rejected: keys(COOKIES_REJECTED_TOTAL, "reason", &REJECT_REASONS),
        }
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn load(&self, outcome: &'static str) {
        self.count(
            LOADS_TOTAL,
            "outcome",
            &LOAD_OUTCOMES,
            &self.loads,
            outcome,
            1,
        );
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn save(&self, outcome: &'static str) {
        self.count(
            SAVES_TOTAL,
            "outcome",
            &SAVE_OUTCOMES,
            &self.saves,
            outcome,
            1,
        );
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn conflict(&self, kind: &'static str) {
        self.count(
            CONFLICTS_TOTAL,
            "kind",
            &CONFLICT_KINDS,
            &self.conflicts,
            kind,
            1,
        );
    }

    // Inlined so the label (always a literal) picks its key at compile time.
    #[inline(always)]
    pub(crate) fn cookie_rejected(&self, reason: &'static str) {
        self.count(
            COOKIES_REJECTED_TOTAL,
            "reason",
            &REJECT_REASONS,
            &self.rejected,
            reason,
            1,
        );
    }

    /// Store errors are rare: their key is built when needed.
    pub(crate) fn store_error(&self, operation: &'static str) {
        increment(
            &key(STORE_ERRORS_TOTAL, self.store, "operation", operation),
            1,
        );
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
    increment(
        &key(STORE_FAILOVER_RETRIES_TOTAL, store, "operation", operation),
        1,
    );
}

/// A new cluster connection (a fresh slot map) made while waiting out a failover.
#[cfg(feature = "redis")]
pub(crate) fn topology_refresh(store: &'static str) {
    let key = Key::from_parts(
        STORE_TOPOLOGY_REFRESHES_TOTAL,
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
    increment(&Key::from_parts(STORE_FAILOVER_WAITS_TOTAL, counted), 1);
    let histogram = Key::from_parts(STORE_FAILOVER_WAIT_SECONDS, labels());
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
