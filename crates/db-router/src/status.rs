//! [`RouterStatus`]: what the router knows about every node.

use std::time::Duration;

use crate::config::Role;
use crate::lsn::Lsn;

/// A node's role as last observed by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedRole {
    /// Writable (`pg_is_in_recovery()` is false).
    Primary,
    /// In recovery: a streaming replica.
    Replica,
    /// Not reachable, or not checked yet.
    Unknown,
}

impl ObservedRole {
    /// `"primary"`, `"replica"` or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedRole::Primary => "primary",
            ObservedRole::Replica => "replica",
            ObservedRole::Unknown => "unknown",
        }
    }
}

/// One node's state; see [`DbRouter::status`](crate::DbRouter::status).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Configured name.
    pub name: String,
    /// Configured role.
    pub configured_role: Role,
    /// Role seen at the last check.
    pub observed_role: ObservedRole,
    /// Whether this node takes the writes now.
    pub is_write_node: bool,
    /// Reached at the last check and not marked down since.
    pub reachable: bool,
    /// WAL bytes behind the primary (replicas).
    pub lag_bytes: Option<u64>,
    /// Age of the last replayed transaction while behind (replicas; zero when caught up).
    pub lag: Option<Duration>,
    /// Whether reads may go to it now.
    pub eligible: bool,
    /// The primary's current WAL position (primary).
    pub current_lsn: Option<Lsn>,
    /// Last replayed WAL position (replicas).
    pub replay_lsn: Option<Lsn>,
    /// Last received WAL position (replicas).
    pub receive_lsn: Option<Lsn>,
    /// Read weight.
    pub weight: f64,
    /// Reads in flight on it through the router.
    pub in_flight: usize,
    /// Open connections.
    pub pool_size: u32,
    /// Idle connections.
    pub pool_idle: u32,
    /// Connections in use.
    pub pool_in_use: u32,
    /// Pool maximum.
    pub pool_max: u32,
    /// The last error seen on it, if any since it was last reached.
    pub last_error: Option<String>,
}

/// Every node's state, from [`DbRouter::status`](crate::DbRouter::status).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterStatus {
    /// The node taking writes, if any.
    pub primary: Option<String>,
    /// The primary's WAL position at the last check.
    pub primary_lsn: Option<Lsn>,
    /// Every node, in configuration order.
    pub nodes: Vec<NodeStatus>,
}

impl RouterStatus {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Names of the nodes that may take reads now.
    pub fn eligible_replicas(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.eligible)
            .map(|n| n.name.as_str())
            .collect()
    }
}
