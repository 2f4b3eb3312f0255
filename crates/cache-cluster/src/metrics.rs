//! Names of the metrics this crate records, through the `metrics` facade (the application
//! installs the exporter), and the cache operations' spans (through `tracing`). Every name
//! starts with `herd_cache_`; `docs/metrics.md` lists them all and describes the spans.

use std::sync::Arc;

use ::metrics::{Counter, Key, Label, Level, Metadata, Unit};
use tracing::Span;

use crate::stats::{Outcome, Tier};

/// Counter: lookups by `tier` (`l1`, `l2`) and `result` (`hit`, `miss`, `stale`, `error`).
/// An L1 miss is followed by an L2 lookup, so a lookup answered from Redis counts under both
/// tiers; [`Cache::stats`](crate::Cache::stats) counts final answers only.
pub const REQUESTS_TOTAL: &str = "herd_cache_requests_total";
/// Histogram: seconds one loader call of `get_or_load` took.
pub const LOAD_SECONDS: &str = "herd_cache_load_seconds";
/// Histogram: seconds a `get_or_load` caller waited for another instance's load (with
/// [`CacheConfig::lock`](crate::CacheConfig::lock)), by `outcome`: `value_arrived`, `expired`
/// (`lock.wait` passed: the caller loads itself), `gave_up` (the backend failed or its circuit
/// opened while waiting; it then loads itself, as after `expired`).
pub const LOCK_WAIT_SECONDS: &str = "herd_cache_lock_wait_seconds";
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

/// Describes every metric above (HELP text and unit) to the recorder in force.
///
/// Building a [`Cache`](crate::Cache) calls it, so an application that installs its recorder
/// first, as it should, needs nothing more; one that installs its recorder later calls this
/// once after installing it. Calling it again is harmless: a recorder keeps one description per
/// name.
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram};

    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Cache lookups by tier (l1, l2) and result (hit, miss, stale, error); a lookup answered from Redis counts under both tiers."
    );
    describe_histogram!(
        LOAD_SECONDS,
        Unit::Seconds,
        "Time one loader call of get_or_load took."
    );
    describe_histogram!(
        LOCK_WAIT_SECONDS,
        Unit::Seconds,
        "Time a get_or_load caller waited for another instance's load, by outcome (value_arrived, expired, gave_up)."
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Cache errors by kind (backend, timeout, failover_timeout, circuit_open, config, encode, loader, decode, invalidation_publish, invalidation_decode)."
    );
    describe_counter!(
        EARLY_REFRESHES_TOTAL,
        Unit::Count,
        "Probabilistic early refreshes (XFetch) started."
    );
    describe_counter!(
        LOCK_WAIT_EXPIRED_TOTAL,
        Unit::Count,
        "Callers that waited lock.wait for another instance's load and then loaded themselves."
    );
    describe_counter!(
        INVALIDATIONS_RECEIVED_TOTAL,
        Unit::Count,
        "Invalidation messages from other instances applied to the L1."
    );
    describe_counter!(
        INVALIDATIONS_KEPT_TOTAL,
        Unit::Count,
        "Keys an invalidation named that the L1 kept because it already held the value that write stored."
    );
    describe_counter!(
        CIRCUIT_OPENED_TOTAL,
        Unit::Count,
        "Times a fail-open circuit opened after consecutive backend failures."
    );
    describe_counter!(
        TOPOLOGY_CHANGES_TOTAL,
        Unit::Count,
        "Redis Cluster slot map changes that rebuilt the connections (failover, resharding)."
    );
    describe_counter!(
        FAILOVER_RETRIES_TOTAL,
        Unit::Count,
        "Retries of a cluster command waiting out a failover, by operation."
    );
    describe_counter!(
        FAILOVER_WAITS_TOTAL,
        Unit::Count,
        "Cluster commands that waited out a failover, by operation and outcome (recovered, gave_up)."
    );
    describe_histogram!(
        FAILOVER_WAIT_SECONDS,
        Unit::Seconds,
        "Time a cluster command waited out a failover, by operation."
    );
}

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

/// The [`REQUESTS_TOTAL`] counter of a lookup in `tier` with `outcome`; the lookup's tier and
/// result also go on the current operation's span, when there is one (the last lookup of an
/// operation, its final answer, wins).
pub(crate) fn requests(tier: Tier, outcome: Outcome) -> Counter {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        traced_lookup(tier, outcome);
    }
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

/// Records a lookup's tier and result on the current span.
#[cold]
fn traced_lookup(tier: Tier, outcome: Outcome) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record(
        "herd.cache.tier",
        match tier {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
        },
    );
    span.record(
        "herd.cache.result",
        match outcome {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Error => "error",
        },
    );
}

/// A DEBUG span for one cache operation (`herd.cache.<op>`), with OpenTelemetry's database
/// client field names; never the key, only its class (see [`key_class`]). When no subscriber
/// wants DEBUG spans it is [`Span::none`]: even a disabled span formats its fields for
/// tracing's `log` fallback, on every lookup.
macro_rules! op_span {
    ($name:literal, $op:literal, $command:literal, $key:expr) => {
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!(
                target: "herd_cache_cluster::op",
                $name,
                db.system.name = "redis",
                db.operation.name = $command,
                herd.cache.op = $op,
                herd.cache.key_class = $crate::metrics::key_class($key),
                herd.cache.tier = tracing::field::Empty,
                herd.cache.result = tracing::field::Empty,
                server.address = tracing::field::Empty,
                server.port = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use op_span;

/// Runs `operation` in `span` (entered on every poll), or as it is when the span is off.
pub(crate) async fn traced<F: Future>(span: Span, operation: F) -> F::Output {
    if span.is_disabled() {
        operation.await
    } else {
        tracing::Instrument::instrument(operation, span).await
    }
}

/// The class of a cache key for spans: its text before the first `:` (`user` for `user:42`),
/// the convention for naming keys, without a leading `{`, or `-` when there is none or it is longer than 32 bytes
/// (then it may be the value itself). The rest of the key, which identifies a user or a
/// record, never reaches a span.
pub(crate) fn key_class(key: &str) -> &str {
    match key.split_once(':') {
        // A `{hash tag}` around the class is not part of it.
        Some((class, _)) => match class.trim_start_matches('{') {
            class if !class.is_empty() && class.len() <= 32 => class,
            _ => "-",
        },
        None => "-",
    }
}

/// Records the node serving the current operation's key (`server.address`, `server.port`).
pub(crate) fn traced_node(node: Option<Arc<str>>) {
    let Some(node) = node else { return };
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    match node.rsplit_once(':') {
        Some((host, port)) => {
            span.record("server.address", host);
            if let Ok(port) = port.parse::<u16>() {
                span.record("server.port", port);
            }
        }
        None => {
            span.record("server.address", &*node);
        }
    }
}

/// Records a failed operation's error kind (`error.type`) on `span`.
pub(crate) fn traced_error(span: &Span, error: &crate::Error) {
    if !span.is_disabled() {
        span.record("error.type", error.kind());
    }
}

#[cfg(test)]
mod tests {
    use super::key_class;

    #[test]
    fn key_class_is_the_prefix_before_the_first_colon_and_never_the_rest() {
        assert_eq!(key_class("user:42"), "user");
        assert_eq!(key_class("user:42:profile"), "user");
        assert_eq!(key_class("{user:42}"), "user");
        assert_eq!(key_class("secret-token"), "-");
        assert_eq!(key_class(":42"), "-");
        assert_eq!(key_class(&format!("{}:1", "x".repeat(33))), "-");
    }
}
