//! Metric names and the calls that record them (through the `metrics` facade; the
//! application installs the exporter).

use std::sync::Arc;

use crate::classify::Route;

/// Counter: statements run through automatic routing, by `node` and classified `route`.
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

pub(crate) fn query(node: &Arc<str>, route: Route) {
    metrics::counter!(QUERIES_TOTAL, "node" => Arc::clone(node), "route" => route.as_str())
        .increment(1);
}

pub(crate) fn fallback(reason: &'static str) {
    metrics::counter!(FALLBACK_TO_PRIMARY_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn misroute(node: &Arc<str>) {
    metrics::counter!(MISROUTES_TOTAL, "node" => Arc::clone(node)).increment(1);
}

pub(crate) fn gauge(name: &'static str, node: &Arc<str>, value: f64) {
    metrics::gauge!(name, "node" => Arc::clone(node)).set(value);
}
