//! The slot map as read with `CLUSTER SLOTS`, used to group keys per node and to notice failovers.

use std::sync::Arc;

use redis::Value;

/// Slots `start..=end` served by `master` (and replicated to `replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) master: Arc<str>,
    /// A hash of `master`, a cheap identity for per-shard state.
    pub(crate) master_hash: u64,
    pub(crate) replicas: Vec<String>,
}

/// A snapshot of the cluster's slot map, sorted by first slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Topology {
    ranges: Vec<SlotRange>,
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` reply; `None` when it is not shaped like one.
    pub(crate) fn from_cluster_slots(reply: &Value) -> Option<Self> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.iter();
            let start = as_slot(parts.next()?)?;
            let end = as_slot(parts.next()?)?;
            let master = node_addr(parts.next()?)?;
            let mut replicas: Vec<String> = parts.filter_map(node_addr).collect();
            // Each node lists a master's replicas in its own order: sorted, the same map read
            // from two nodes compares equal, and is not taken for a topology change (which
            // reconnects every node and flushes the L1s).
            replicas.sort_unstable();
            ranges.push(SlotRange {
                start,
                end,
                master_hash: hash_addr(&master),
                master: master.into(),
                replicas,
            });
        }
        ranges.sort_by_key(|r| r.start);
        Some(Self { ranges })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The master serving `slot`, when the slot is covered.
    pub(crate) fn master_for(&self, slot: u16) -> Option<&Arc<str>> {
        let idx = self
            .ranges
            .partition_point(|r| r.start <= slot)
            .checked_sub(1)?;
        let range = self.ranges.get(idx)?;
        (slot <= range.end).then_some(&range.master)
    }

    /// The hash of the master serving `slot` (see [`SlotRange::master_hash`]).
    pub(crate) fn master_hash_for(&self, slot: u16) -> Option<u64> {
        let idx = self
            .ranges
            .partition_point(|r| r.start <= slot)
            .checked_sub(1)?;
        let range = self.ranges.get(idx)?;
        (slot <= range.end).then_some(range.master_hash)
    }

    /// Distinct masters, in slot order.
    pub(crate) fn masters(&self) -> Vec<String> {
        let mut masters: Vec<String> = Vec::new();
        for range in &self.ranges {
            if !masters.iter().any(|m| **m == *range.master) {
                masters.push(range.master.to_string());
            }
        }
        masters
    }

    /// Every node address (masters and replicas), for seeding a new connection.
    pub(crate) fn nodes(&self) -> Vec<String> {
        let mut nodes = self.masters();
        for range in &self.ranges {
            for replica in &range.replicas {
                if !nodes.contains(replica) {
                    nodes.push(replica.clone());
                }
            }
        }
        nodes
    }
}

fn hash_addr(addr: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut hasher);
    hasher.finish()
}

fn as_slot(value: &Value) -> Option<u16> {
    match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    }
}

/// `[host, port, id, ...]` as `host:port`.
fn node_addr(value: &Value) -> Option<String> {
    let Value::Array(parts) = value else {
        return None;
    };
    let host = match parts.first()? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Value::Int(port) = parts.get(1)? else {
        return None;
    };
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn parses_cluster_slots_and_finds_masters() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let t = Topology::from_cluster_slots(&reply).unwrap();
        assert_eq!(t.master_for(0).map(|m| &**m), Some("127.0.0.1:7000"));
        assert_eq!(t.master_for(5460).map(|m| &**m), Some("127.0.0.1:7000"));
        assert_eq!(t.master_for(5461).map(|m| &**m), Some("127.0.0.1:7001"));
        assert_eq!(t.master_for(16383).map(|m| &**m), Some("127.0.0.1:7002"));
        assert_eq!(
            t.masters(),
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(t.nodes().len(), 5);
    }

    #[test]
    fn replicas_in_another_order_are_the_same_topology() {
        let reply = |replicas: [(&str, i64); 2]| {
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(16383),
                node("10.0.0.1", 7000),
                node(replicas[0].0, replicas[0].1),
                node(replicas[1].0, replicas[1].1),
            ])])
        };
        let a = Topology::from_cluster_slots(&reply([("10.0.0.2", 7001), ("10.0.0.3", 7002)]));
        let b = Topology::from_cluster_slots(&reply([("10.0.0.3", 7002), ("10.0.0.2", 7001)]));
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn uncovered_slots_and_garbage() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(100),
            Value::Int(200),
            node("h", 1),
        ])]);
        let t = Topology::from_cluster_slots(&reply).unwrap();
        assert_eq!(t.master_for(99), None);
        assert_eq!(t.master_for(201), None);
        assert_eq!(t.master_for(150).map(|m| &**m), Some("h:1"));
        assert!(Topology::from_cluster_slots(&Value::Int(3)).is_none());
        assert!(Topology::from_cluster_slots(&Value::Array(vec![Value::Int(3)])).is_none());
    }
}
