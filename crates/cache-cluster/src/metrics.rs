//! Names of the metrics this crate records, through the `metrics` facade (the application
//! installs the exporter). Every name starts with `herd_cache_`.

use ::metrics::{Counter, Key, Label, Level, Metadata};

use crate::stats::{Outcome, Tier};

/// Counter: lookups by `tier` (`l1`, `l2`) and `result` (`hit`, `miss`, `stale`, `error`).
/// An L1 miss is followed by an L2 lookup, so a lookup answered from Redis counts under both
/// tiers; [`Cache::stats`](crate::Cache::stats) counts final answers only.
pub const REQUESTS_TOTAL: &str = "herd_cache_requests_total";
/// Histogram: seconds one loader call of `get_or_load` took.
pub const LOAD_SECONDS: &str = "herd_cache_load_seconds";
/// Counter: errors by `kind`: `backend`, `timeout`, `failover_timeout`, `circuit_open`
/// (backend calls skipped), `config`, `encode`, `loader`, `decode` (with `detail`
/// `decode_foreign` or `decode_payload`: stored bytes that are not this cache's value),
/// `invalidation_publish`, `invalidation_decode`.
pub const ERRORS_TOTAL: &str = "herd_cache_errors_total";
/// Counter: probabilistic early refreshes (XFetch) started.
pub const EARLY_REFRESHES_TOTAL: &str = "herd_cache_early_refreshes_total";
/// Counter: callers that waited `lock.wait` for another instance's load and then loaded
/// themselves.
pub const LOCK_WAIT_EXPIRED_TOTAL: &str = "herd_cache_lock_wait_expired_total";
/// Counter: invalidation messages from other instances applied to the L1.
pub const INVALIDATIONS_RECEIVED_TOTAL: &str = "herd_cache_invalidations_received_total";
/// Counter: keys an invalidation named that the L1 kept, because its entry already held the
/// value that write stored (read from Redis after the write, before the message came).
pub const INVALIDATIONS_KEPT_TOTAL: &str = "herd_cache_invalidations_kept_total";
/// Counter: times a fail-open circuit opened after consecutive backend failures.
pub const CIRCUIT_OPENED_TOTAL: &str = "herd_cache_circuit_opened_total";
/// Counter: Redis Cluster slot map changes that rebuilt the connections (failover, resharding).
pub const TOPOLOGY_CHANGES_TOTAL: &str = "herd_cache_topology_changes_total";
/// Counter: retries of a cluster command waiting out a failover, by `operation` (`GET`, `SET`,
/// ...).
pub const FAILOVER_RETRIES_TOTAL: &str = "herd_cache_failover_retries_total";
/// Counter: cluster commands that waited out a failover, by `operation` and `outcome`
/// (`recovered`, `gave_up`).
pub const FAILOVER_WAITS_TOTAL: &str = "herd_cache_failover_waits_total";
/// Histogram: seconds a cluster command waited out a failover, by `operation`.
pub const FAILOVER_WAIT_SECONDS: &str = "herd_cache_failover_wait_seconds";

/// Where the request counters are registered from (what `metrics::counter!` would say).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The [`REQUESTS_TOTAL`] counter for one `tier` and `result`, under a key built at compile
/// time: a lookup then only asks the recorder in force for the counter, and allocates nothing.
macro_rules! requests_total {
    ($tier:literal, $result:literal) => {{
        static LABELS: [Label; 2] = [
            Label::from_static_parts("tier", $tier),
            Label::from_static_parts("result", $result),
        ];
        static KEY: Key = Key::from_static_parts(REQUESTS_TOTAL, &LABELS);
        counter(&KEY)
    }};
}

fn counter(key: &'static Key) -> Counter {
    ::metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA))
}

/// The [`REQUESTS_TOTAL`] counter of a lookup in `tier` with `outcome`.
pub(crate) fn requests(tier: Tier, outcome: Outcome) -> Counter {
    match (tier, outcome) {
        (Tier::L1, Outcome::Hit) => requests_total!("l1", "hit"),
        (Tier::L1, Outcome::Miss) => requests_total!("l1", "miss"),
        (Tier::L1, Outcome::Stale) => requests_total!("l1", "stale"),
        (Tier::L1, Outcome::Error) => requests_total!("l1", "error"),
        (Tier::L2, Outcome::Hit) => requests_total!("l2", "hit"),
        (Tier::L2, Outcome::Miss) => requests_total!("l2", "miss"),
        (Tier::L2, Outcome::Stale) => requests_total!("l2", "stale"),
        (Tier::L2, Outcome::Error) => requests_total!("l2", "error"),
    }
}
