//! Metric names and the calls that record them (through the `metrics` facade; the
//! application installs the exporter), and the statement spans (through `tracing`). Every name
//! the crate records is one of these constants; `docs/metrics.md` lists them all and describes
//! the span.

use std::sync::Arc;

use metrics::{Key, Label, Level, Metadata, Unit};
use sqlx::postgres::{PgQueryResult, PgRow};
use tracing::Span;
use tracing::field::Empty;

use crate::classify::{Reason, Route};
use crate::node::Node;

/// Describes every metric above (HELP text and unit) to the recorder in force.
///
/// Building a [`DbRouter`](crate::DbRouter) calls it, so an application that installs its
/// recorder first, as it should, needs nothing more; one that installs its recorder later calls
/// this once after installing it. Calling it again is harmless: a recorder keeps one
/// description per name.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};

    describe_counter!(
        QUERIES_TOTAL,
        Unit::Count,
        "Statements run through automatic routing, by node and classified route (replica, primary)."
    );
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "Bytes of WAL a replica is behind the primary."
    );
    describe_gauge!(
        REPLICA_LAG_SECONDS,
        Unit::Seconds,
        "Seconds since a lagging replica's last replayed transaction (0 while it has replayed everything)."
    );
    describe_gauge!(
        REPLICA_ELIGIBLE,
        "1 when a replica may take reads (reachable, in recovery, within both lag bounds), else 0."
    );
    describe_counter!(
        FALLBACK_TO_PRIMARY_TOTAL,
        Unit::Count,
        "Reads sent to the primary instead of a replica, by reason (no_eligible_replica, read_your_writes, replica_errors)."
    );
    describe_counter!(
        MISROUTES_TOTAL,
        Unit::Count,
        "Statements a replica refused as writes (SQLSTATE 25006), retried on the primary."
    );
    describe_counter!(
        POOL_TIMEOUTS_TOTAL,
        Unit::Count,
        "Statements that found the node's pool full for acquire_timeout and failed without running."
    );
    describe_counter!(
        TOKENS_IGNORED_TOTAL,
        Unit::Count,
        "Read-your-writes tokens ignored because they are beyond every WAL position the primary reported."
    );
    describe_gauge!(
        NODE_UP,
        "1 when the monitor reached the node at its last check, else 0."
    );
    describe_gauge!(
        NODE_ROLE,
        "Role the node was last seen in: 1 on its role's series (primary, replica, writable, unreachable), 0 on the others."
    );
    describe_gauge!(
        POOL_SIZE,
        Unit::Count,
        "Open connections in the node's pool."
    );
    describe_gauge!(
        POOL_IDLE,
        Unit::Count,
        "Idle connections in the node's pool."
    );
    describe_gauge!(
        POOL_IN_USE,
        Unit::Count,
        "Connections in use in the node's pool."
    );
    describe_gauge!(POOL_MAX, Unit::Count, "The node's pool's maximum size.");
}

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
/// Gauge: the role each node was last seen in, one series per role by `node` and `role`:
/// 1 for the node's current role, 0 for the others. Roles: `primary` (the node taking
/// writes), `replica` (reachable, in recovery), `writable` (reachable, out of recovery, but not
/// written to: an old primary fenced by its timeline, or a node configured as a replica),
/// `unreachable` (its last check failed).
pub const NODE_ROLE: &str = "herd_db_node_role";
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

/// Every value of [`NODE_ROLE`]'s `role` label.
const NODE_ROLES: [&str; 4] = ["primary", "replica", "writable", "unreachable"];

/// Sets a node's [`NODE_ROLE`] series: 1 for `role` (one of [`NODE_ROLES`]), 0 for the others,
/// so every role is present and a query need not tell "0" from "absent".
pub(crate) fn node_role(node: &Arc<str>, role: &'static str) {
    for value in NODE_ROLES {
        metrics::gauge!(NODE_ROLE, "node" => Arc::clone(node), "role" => value)
            .set(if value == role { 1.0 } else { 0.0 });
    }
}

/// The span of one attempt of a statement on one node (`herd.db.query`, DEBUG), with
/// OpenTelemetry's database client field names; never the SQL text or its arguments.
///
/// Built only when a subscriber may want DEBUG spans: otherwise tracing still returns a
/// disabled span that, with tracing's `log` feature, formats its fields on every statement.
pub(crate) fn query_span(node: &Node, route: Route, sql: &str) -> Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return Span::none();
    }
    let options = &node.monitor_connect;
    tracing::debug_span!(
        target: "herd_db_router::query",
        "herd.db.query",
        db.system.name = "postgresql",
        db.namespace = options.get_database().unwrap_or_default(),
        db.operation.name = operation_name(sql),
        server.address = options.get_host(),
        server.port = options.get_port(),
        herd.db.node = &*node.name,
        herd.db.route = route.as_str(),
        herd.db.reason = route.reason().as_str(),
        db.response.returned_rows = Empty,
        herd.db.affected_rows = Empty,
        db.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Records a failed attempt on its span: `error.type`, and the SQLSTATE as
/// `db.response.status_code` when the server answered with an error.
pub(crate) fn query_failed(span: &Span, error: &sqlx::Error) {
    let kind = match error {
        sqlx::Error::Database(e) => {
            if let Some(code) = e.code() {
                span.record("db.response.status_code", &*code);
            }
            "database"
        }
        sqlx::Error::PoolTimedOut => "pool_timed_out",
        sqlx::Error::PoolClosed => "pool_closed",
        // Also the router's own errors (no node, outcome unknown), which travel as I/O errors.
        sqlx::Error::Io(_) => "io",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::WorkerCrashed => "worker_crashed",
        sqlx::Error::Configuration(_) => "configuration",
        _ => "other",
    };
    span.record("error.type", kind);
}

/// What a statement returned, recorded on its span.
pub(crate) trait Returned {
    /// Records the rows on `span`.
    fn record(&self, span: &Span);
}

impl Returned for Option<PgRow> {
    fn record(&self, span: &Span) {
        span.record("db.response.returned_rows", u64::from(self.is_some()));
    }
}

impl Returned for Vec<PgRow> {
    fn record(&self, span: &Span) {
        span.record("db.response.returned_rows", self.len() as u64);
    }
}

impl Returned for PgQueryResult {
    fn record(&self, span: &Span) {
        span.record("herd.db.affected_rows", self.rows_affected());
    }
}

/// Records an answered statement's rows on the span it runs in (the attempt's).
#[inline]
pub(crate) fn answered<T: Returned>(result: &Result<T, sqlx::Error>) {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Ok(value) = result {
        let span = Span::current();
        if !span.is_disabled() {
            value.record(&span);
        }
    }
}

/// The current span (the attempt's, inside one) when DEBUG spans are wanted, else none.
pub(crate) fn current_span() -> Span {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        Span::current()
    } else {
        Span::none()
    }
}

/// Records the rows a stream returned on its attempt's span, once the stream has ended.
pub(crate) fn returned_rows(span: &Span, rows: u64) {
    if !span.is_disabled() {
        span.record("db.response.returned_rows", rows);
    }
}

/// The statement's command (`SELECT`, `INSERT`, ...) for `db.operation.name`, from its first
/// keyword after comments; `OTHER` for any other word, so nothing from the SQL but a known
/// keyword ever reaches a span.
pub(crate) fn operation_name(sql: &str) -> &'static str {
    const COMMANDS: [&str; 30] = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "WITH",
        "MERGE",
        "VALUES",
        "TABLE",
        "SHOW",
        "SET",
        "RESET",
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "CALL",
        "DO",
        "COPY",
        "EXPLAIN",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "LOCK",
        "PREPARE",
        "EXECUTE",
        "LISTEN",
    ];
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = rest.get(..end).unwrap_or_default();
    if word.is_empty() {
        return "OTHER";
    }
    COMMANDS
        .iter()
        .find(|command| command.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::operation_name;

    #[test]
    fn operation_name_is_the_first_keyword_after_comments_and_nothing_else() {
        assert_eq!(operation_name("select 1"), "SELECT");
        assert_eq!(
            operation_name("  /* herd:primary */ -- x\n INSERT INTO t"),
            "INSERT"
        );
        assert_eq!(
            operation_name("with x as (select 1) select * from x"),
            "WITH"
        );
        assert_eq!(operation_name("secretword 42"), "OTHER");
        assert_eq!(operation_name(""), "OTHER");
        assert_eq!(operation_name("/* unterminated"), "OTHER");
        assert_eq!(operation_name("(select 1)"), "OTHER");
    }
}
