//! Metric names and the calls that record them (through the `metrics` facade; the
//! application installs the exporter). Every name the crate records is one of these constants.

use std::sync::Arc;

use metrics::{Key, Label, Level, Metadata};

use crate::classify::{Reason, Route};

/// Counter: statements run through automatic routing, by `node` and classified `route`
/// (`replica`, `primary`).
pub const QUERIES_TOTAL: &str = "herd_db_queries_total";
/// Gauge: bytes of WAL a replica is behind the primary, by `node`.
pub const REPLICA_LAG_BYTES: &str = "herd_db_replica_lag_bytes";
/// Gauge: seconds since a lagging replica's last replayed transaction, by `node`.
pub const REPLICA_LAG_SECONDS: &str = "herd_db_replica_lag_seconds";
/// Gauge: 1 when a replica may take reads, by `node`.
pub const REPLICA_ELIGIBLE: &str = "herd_db_replica_eligible";
/// Counter: reads sent to the primary instead of a replica, by `reason`
/// (`no_eligible_replica`, `read_your_writes`, `replica_errors`).
pub const FALLBACK_TO_PRIMARY_TOTAL: &str = "herd_db_fallback_to_primary_total";
/// Counter: statements a replica refused as writes (SQLSTATE 25006), retried on the primary.
pub const MISROUTES_TOTAL: &str = "herd_db_misroutes_total";
/// Counter: statements that found the node's pool full for `acquire_timeout` and failed
/// without running, by `node` (saturation: the node is not marked down for it).
pub const POOL_TIMEOUTS_TOTAL: &str = "herd_db_pool_timeouts_total";
/// Counter: read-your-writes tokens from clients ignored because they are beyond every WAL
/// position the primary has reported (forged, or from writes lost in a failover).
pub const TOKENS_IGNORED_TOTAL: &str = "herd_db_read_your_writes_tokens_ignored_total";
/// Gauge: 1 when the monitor reached the node at its last check, by `node`.
pub const NODE_UP: &str = "herd_db_node_up";
/// Gauge: 1 for the node currently taking writes, by `node`.
pub const NODE_PRIMARY: &str = "herd_db_node_primary";
/// Gauge: open connections in a node's pool, by `node`.
pub const POOL_SIZE: &str = "herd_db_pool_size";
/// Gauge: idle connections in a node's pool, by `node`.
pub const POOL_IDLE: &str = "herd_db_pool_idle";
/// Gauge: connections in use in a node's pool, by `node`.
pub const POOL_IN_USE: &str = "herd_db_pool_in_use";
/// Gauge: the pool's maximum size, by `node`.
pub const POOL_MAX: &str = "herd_db_pool_max";

/// Where the request-path counters are registered from (what `metrics::counter!` would use).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A node's request-path counter keys, built once: a query then only asks the recorder in
/// force (global or local, installed before or after the router was built) for the counter,
/// instead of allocating labels and a key for every statement.
#[derive(Debug)]
pub(crate) struct NodeKeys {
    query_replica: Key,
    query_primary: Key,
    misroute: Key,
}

impl NodeKeys {
    pub(crate) fn new(node: &Arc<str>) -> Self {
        let query = |route: Route| {
            Key::from_parts(
                QUERIES_TOTAL,
                vec![
                    Label::new("node", Arc::clone(node)),
                    Label::new("route", route.as_str()),
                ],
            )
        };
        Self {
            query_replica: query(Route::Replica(Reason::ReadOnly)),
            query_primary: query(Route::Primary(Reason::Forced)),
            misroute: Key::from_parts(MISROUTES_TOTAL, vec![Label::new("node", Arc::clone(node))]),
        }
    }
}

fn increment(key: &Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

pub(crate) fn query(keys: &NodeKeys, route: Route) {
    increment(match route {
        Route::Replica(_) => &keys.query_replica,
        Route::Primary(_) => &keys.query_primary,
    });
}

pub(crate) fn fallback(reason: &'static str) {
    metrics::counter!(FALLBACK_TO_PRIMARY_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn token_ignored() {
    metrics::counter!(TOKENS_IGNORED_TOTAL).increment(1);
}

pub(crate) fn pool_timeout(node: &Arc<str>) {
    metrics::counter!(POOL_TIMEOUTS_TOTAL, "node" => Arc::clone(node)).increment(1);
}

pub(crate) fn misroute(keys: &NodeKeys) {
    increment(&keys.misroute);
}

pub(crate) fn gauge(name: &'static str, node: &Arc<str>, value: f64) {
    metrics::gauge!(name, "node" => Arc::clone(node)).set(value);
}
