//! One PostgreSQL node: its pool and what the monitor and the request path know about it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Notify;

use crate::config::Role;
use crate::lsn::Lsn;
use crate::metrics::NodeKeys;

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: Arc<str>,
    pub(crate) role: Role,
    pub(crate) weight: f64,
    pub(crate) pool: PgPool,
    /// For the monitor's own connection, so a saturated pool never delays a check.
    pub(crate) connect: PgConnectOptions,
    pub(crate) max_connections: u32,
    /// Index in the read set when this node may take reads.
    pub(crate) read_slot: Option<usize>,
    pub(crate) state: NodeState,
    /// Woken when the node is found down, so requests waiting on it give up at once.
    pub(crate) down: Notify,
    /// Request-path counter keys with this node's label.
    pub(crate) metric_keys: NodeKeys,
}

/// Lock-free view of a node, written by the monitor (and by passive marking).
#[derive(Debug, Default)]
pub(crate) struct NodeState {
    pub(crate) checked: AtomicBool,
    pub(crate) reachable: AtomicBool,
    /// A connection error on the request path marked it down until the next good check.
    pub(crate) passive_down: AtomicBool,
    pub(crate) in_recovery: AtomicBool,
    pub(crate) current_lsn: AtomicU64,
    pub(crate) replay_lsn: AtomicU64,
    pub(crate) receive_lsn: AtomicU64,
    pub(crate) timeline: AtomicU32,
    pub(crate) lag_bytes: AtomicU64,
    pub(crate) lag_micros: AtomicU64,
    pub(crate) eligible: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl NodeState {
    pub(crate) fn is_up(&self) -> bool {
        self.reachable.load(Ordering::Acquire) && !self.passive_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.is_up()
            && self.checked.load(Ordering::Acquire)
            && !self.in_recovery.load(Ordering::Acquire)
    }

    pub(crate) fn replay_lsn(&self) -> Lsn {
        Lsn::new(self.replay_lsn.load(Ordering::Acquire))
    }

    /// Records a replay position seen on the request path (never moves backwards).
    pub(crate) fn observe_replay(&self, lsn: Lsn) {
        self.replay_lsn.fetch_max(lsn.as_u64(), Ordering::AcqRel);
    }

    pub(crate) fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Ordering::Acquire))
    }
}

impl Node {
    /// Marks the node down after a connection error on the request path; the monitor
    /// brings it back after its next good check.
    pub(crate) fn mark_down(&self, error: &sqlx::Error) {
        if !self.state.passive_down.swap(true, Ordering::AcqRel) {
            tracing::warn!(node = %self.name, %error, "connection error: node marked down until its next good check");
        }
        self.state.eligible.store(false, Ordering::Release);
        *self.state.last_error.lock() = Some(error.to_string());
        self.down.notify_waiters();
    }
}

/// Errors that say the node (or the way to it) failed, not the statement: safe to retry a
/// read elsewhere, and a reason to stop using the node.
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-03: shutdown, crash, cannot connect now.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// SQLSTATE 25006 `read_only_sql_transaction`: a write reached a replica.
pub(crate) fn is_read_only_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "25006"))
}
