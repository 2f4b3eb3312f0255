//! What every clone of a [`DbRouter`](crate::DbRouter) shares: the nodes, which one takes
//! writes, which may take reads, and the pick of a replica for one read ([`Lease`]).
//!
//! The monitor writes the nodes' state here; the request path only reads it. Neither the
//! monitor nor the router's public API is imported from this module, so the two meet here
//! instead of importing each other.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use herd_lb_core::{EndpointSet, InFlightGuard, Outcome, PickContext, Policy};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::classify::{Classifier, RouteCache};
use crate::config::{Fallback, RouterConfig};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics;
use crate::node::{Node, is_connection_error, race_down};

/// `Shared::writer` when no node takes writes.
pub(crate) const NO_WRITER: usize = usize::MAX;

/// Nodes in the list's first chunk; chunk `c` holds `FIRST_CHUNK << c`.
const FIRST_CHUNK: usize = 8;
/// Chunks: room for `FIRST_CHUNK * (2^CHUNKS - 1)` nodes, two billion, allocated as needed.
const CHUNKS: usize = 28;

/// The router's nodes, in the order they joined: the configured ones, then those added at run
/// time ([`DbRouter::add_node`](crate::DbRouter::add_node), DNS discovery).
///
/// Append-only, so a node's index (held by leases, the read set and the write slot) and a
/// `&Node` borrowed from the router stay valid while it lives: a removed node is marked, not
/// taken out. Its entry (its closed pool and a few hundred bytes) stays until the router is
/// dropped; a node added again under the same name is a new entry reusing the old one's read
/// slot, so the list grows by one entry per addition, not per request. Appending takes
/// `Shared::membership`; reading takes no lock.
pub(crate) struct NodeList {
    chunks: [OnceLock<Box<[OnceLock<Member>]>>; CHUNKS],
    len: AtomicUsize,
}

struct Member {
    node: Node,
    removed: AtomicBool,
}

impl NodeList {
    fn new(nodes: Vec<Node>) -> Self {
        let list = Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
        };
        for node in nodes {
            list.push(node);
        }
        list
    }

    /// Chunk and offset of index `i`.
    fn place(i: usize) -> (usize, usize) {
        let chunk = (i / FIRST_CHUNK + 1).ilog2() as usize;
        (chunk, i - FIRST_CHUNK * ((1 << chunk) - 1))
    }

    fn member(&self, i: usize) -> Option<&Member> {
        if i >= self.len.load(Ordering::Acquire) {
            return None;
        }
        let (chunk, offset) = Self::place(i);
        self.chunks.get(chunk)?.get()?.get(offset)?.get()
    }

    /// Appends `node` and returns its index; callers hold `Shared::membership` (one writer).
    /// `None` when the list is full.
    pub(crate) fn push(&self, node: Node) -> Option<usize> {
        let i = self.len.load(Ordering::Acquire);
        let (chunk, offset) = Self::place(i);
        let slots = self
            .chunks
            .get(chunk)?
            .get_or_init(|| (0..FIRST_CHUNK << chunk).map(|_| OnceLock::new()).collect());
        slots
            .get(offset)?
            .set(Member {
                node,
                removed: AtomicBool::new(false),
            })
            .ok()?;
        self.len.store(i + 1, Ordering::Release);
        Some(i)
    }

    /// Node `i`, removed or not.
    pub(crate) fn get(&self, i: usize) -> Option<&Node> {
        self.member(i).map(|m| &m.node)
    }

    /// Every node in index order, removed ones included (indices line up with `enumerate`).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Node> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Entries, removed nodes included.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether node `i` was removed (it takes no new work; the monitor no longer checks it).
    pub(crate) fn is_removed(&self, i: usize) -> bool {
        self.member(i)
            .is_some_and(|m| m.removed.load(Ordering::Acquire))
    }

    pub(crate) fn mark_removed(&self, i: usize) {
        if let Some(m) = self.member(i) {
            m.removed.store(true, Ordering::Release);
        }
    }

    /// The index of the node in the router called `name`, removed nodes not counted.
    pub(crate) fn position_live(&self, name: &str) -> Option<usize> {
        (0..self.len())
            .find(|&i| !self.is_removed(i) && self.get(i).is_some_and(|n| &*n.name == name))
    }
}

/// The router's state, behind the `Arc` every [`DbRouter`](crate::DbRouter) clone holds.
pub(crate) struct Shared {
    pub(crate) nodes: NodeList,
    /// Taken to add or remove a node, and by the monitor for a whole round of checks, so
    /// that nodes join and leave between rounds, never during one.
    pub(crate) membership: tokio::sync::Mutex<()>,
    /// The nodes that may take reads, with lb-core's per-endpoint load and health.
    pub(crate) reads: EndpointSet<Arc<str>, usize>,
    pub(crate) policy: Policy,
    /// Read-set indices that may not take reads now (kept by the monitor).
    pub(crate) excluded: ArcSwap<Vec<usize>>,
    /// The length of `excluded` (stored after it): a read's pick loads `excluded` only when
    /// this is not 0.
    pub(crate) excluded_count: AtomicUsize,
    pub(crate) writer: AtomicUsize,
    /// The newest timeline any writable node has reported: a node on an older one is an old
    /// primary that came back after a failover, and is never written to.
    pub(crate) newest_timeline: AtomicU32,
    pub(crate) primary_lsn: AtomicU64,
    /// One check of a client's token against the primary at a time (see `check_token`).
    token_check: tokio::sync::Mutex<()>,
    /// Checks of tokens against the primary started so far.
    token_checks_started: AtomicU64,
    /// The last check could not ask the primary.
    token_check_failed: AtomicBool,
    pub(crate) classifier: Classifier,
    /// Routes of recently classified SQL text (automatic routing only).
    pub(crate) routes: RouteCache,
    pub(crate) config: RouterConfig,
    /// Wakes the monitor for an early check (a connection error on the primary).
    pub(crate) wake: Arc<Notify>,
    pub(crate) monitor: Mutex<Option<JoinHandle<()>>>,
    /// The DNS discovery task, when the router follows a DNS name.
    pub(crate) discovery: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.monitor.lock().take() {
            task.abort();
        }
        if let Some(task) = self.discovery.lock().take() {
            task.abort();
        }
    }
}

impl Shared {
    /// The state of a router over `nodes`, of which those in `reads` may take reads: no write
    /// node and no eligible replica until the monitor's first check says otherwise.
    pub(crate) fn new(
        nodes: Vec<Node>,
        reads: EndpointSet<Arc<str>, usize>,
        policy: Policy,
        config: RouterConfig,
    ) -> Self {
        let all_reads: Vec<usize> = (0..reads.len()).collect();
        Self {
            nodes: NodeList::new(nodes),
            membership: tokio::sync::Mutex::new(()),
            reads,
            policy,
            excluded_count: AtomicUsize::new(all_reads.len()),
            excluded: ArcSwap::from_pointee(all_reads),
            writer: AtomicUsize::new(NO_WRITER),
            newest_timeline: AtomicU32::new(0),
            primary_lsn: AtomicU64::new(0),
            token_check: tokio::sync::Mutex::new(()),
            token_checks_started: AtomicU64::new(0),
            token_check_failed: AtomicBool::new(false),
            routes: RouteCache::new(),
            classifier: Classifier::new(&config.write_functions, config.function_policy),
            config,
            wake: Arc::new(Notify::new()),
            monitor: Mutex::new(None),
            discovery: Mutex::new(None),
        }
    }
}

impl Shared {
    /// Read-set slots that no node in the router holds: those of removed nodes not added
    /// again. Always excluded from picks (the monitor adds them to its exclusions).
    pub(crate) fn vacant_read_slots(&self) -> Vec<usize> {
        let held = |slot: usize| {
            (0..self.nodes.len()).any(|i| {
                !self.nodes.is_removed(i)
                    && self.nodes.get(i).is_some_and(|n| n.read_slot == Some(slot))
            })
        };
        let mut vacant: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes.is_removed(i))
            .filter_map(|i| self.nodes.get(i).and_then(|n| n.read_slot))
            .filter(|&slot| !held(slot))
            .collect();
        vacant.sort_unstable();
        vacant.dedup();
        vacant
    }

    /// Stops picks of read-set `slot` at once (until the monitor's next round decides).
    /// Callers hold `membership`, so no round overwrites it meanwhile.
    pub(crate) fn exclude_slot(&self, slot: usize) {
        let mut excluded = self.excluded.load().as_ref().clone();
        if !excluded.contains(&slot) {
            excluded.push(slot);
        }
        let count = excluded.len();
        self.excluded.store(Arc::new(excluded));
        self.excluded_count.store(count, Ordering::Release);
    }
}

/// A replica picked for one read.
pub(crate) struct Lease {
    pub(crate) node: usize,
    pub(crate) guard: Option<InFlightGuard>,
}

impl Lease {
    pub(crate) fn finish(self, outcome: Outcome) {
        if let Some(guard) = self.guard {
            guard.record(outcome);
        }
    }
}

impl Shared {
    pub(crate) fn writer(&self) -> Option<&Node> {
        self.nodes.get(self.writer.load(Ordering::Acquire))
    }

    pub(crate) fn writer_or_err(&self, operation: &'static str) -> Result<&Node, Error> {
        match self.writer() {
            Some(node) if node.state.is_writable() => Ok(node),
            _ => Err(Error::NoPrimary {
                operation,
                detail: self.no_primary_detail(),
            }),
        }
    }

    fn no_primary_detail(&self) -> String {
        let seen: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.role.may_write() && !self.nodes.is_removed(*i))
            .map(|(_, n)| {
                let s = &n.state;
                let what = if !s.is_up() {
                    format!(
                        "unreachable ({})",
                        s.last_error.lock().as_deref().unwrap_or("not checked yet")
                    )
                } else if s.in_recovery.load(Ordering::Acquire) {
                    "read-only (in recovery)".to_string()
                } else {
                    "not checked yet".to_string()
                };
                format!("`{}` {what}", n.name)
            })
            .collect();
        seen.join(", ")
    }

    /// The node a read falls back to when no replica will do.
    pub(crate) fn fallback_node(
        &self,
        operation: &'static str,
        reason: &'static str,
    ) -> Result<&Node, Error> {
        if self.config.fallback == Fallback::Error && reason == "no_eligible_replica" {
            return Err(Error::NoEligibleReplica { operation });
        }
        let node = self.writer_or_err(operation)?;
        metrics::fallback(reason);
        Ok(node)
    }

    /// Picks an eligible replica (with lb-core's policy and per-endpoint state), skipping
    /// the read-set indices in `tried` and, with `required`, replicas not known to have
    /// replayed it. `None` when no replica qualifies.
    pub(crate) fn pick_replica(&self, required: Option<Lsn>, tried: &[usize]) -> Option<Lease> {
        let simple = required.is_none() && tried.is_empty() && !self.config.prefer_lower_lag;
        if simple && self.excluded_count.load(Ordering::Acquire) == 0 {
            // The common case: every replica may take reads. An empty read set is the only way
            // to get none, and the pick says so itself.
            return self.pick_excluding(&[]);
        }
        let excluded = self.excluded.load();
        let snapshot = self.reads.load();
        if excluded.len() >= snapshot.len() {
            return None;
        }
        if simple {
            return self.pick_excluding(&excluded);
        }
        let mut exclusions = excluded.as_ref().clone();
        exclusions.extend_from_slice(tried);
        for (slot, endpoint) in snapshot.iter().enumerate() {
            let covered = required.is_none_or(|lsn| {
                self.nodes
                    .get(*endpoint.service())
                    .is_some_and(|n| n.state.replay_lsn() >= lsn)
            });
            if !covered {
                exclusions.push(slot);
            }
        }
        if self.config.prefer_lower_lag {
            self.keep_least_lagged(&snapshot, &mut exclusions);
        }
        self.pick_excluding(&exclusions)
    }

    /// A replica by lb-core's policy among the read-set slots not in `exclusions`.
    fn pick_excluding(&self, exclusions: &[usize]) -> Option<Lease> {
        let ctx = PickContext::new().excluding(exclusions);
        let picked = self.reads.pick(&self.policy, &ctx).ok()?;
        // lb-core ignores exclusions when they rule out everything; for us that means "none".
        if exclusions.contains(&picked.guard.index()) {
            return None;
        }
        Some(Lease {
            node: picked.service,
            guard: Some(picked.guard),
        })
    }

    /// Pgpool-II's `prefer_lower_delay_standby`: exclude every candidate but the least lagged.
    fn keep_least_lagged(
        &self,
        snapshot: &herd_lb_core::Snapshot<Arc<str>, usize>,
        exclusions: &mut Vec<usize>,
    ) {
        let lag_of = |slot: usize| {
            snapshot
                .get(slot)
                .and_then(|e| self.nodes.get(*e.service()))
                .map_or(u64::MAX, |n| n.state.lag_bytes.load(Ordering::Acquire))
        };
        let least = (0..snapshot.len())
            .filter(|s| !exclusions.contains(s))
            .map(lag_of)
            .min();
        if let Some(least) = least {
            for slot in 0..snapshot.len() {
                if !exclusions.contains(&slot) && lag_of(slot) > least {
                    exclusions.push(slot);
                }
            }
        }
    }

    /// Read-your-writes when no replica is known to cover `required`: polls the most
    /// advanced eligible replica's replay position for up to `max_wait`.
    pub(crate) async fn wait_for_replay(&self, required: Lsn, tried: &[usize]) -> Option<Lease> {
        let settings = &self.config.read_your_writes;
        if settings.max_wait.is_zero() {
            return None;
        }
        let excluded = self.excluded.load_full();
        let node_index = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                !self.nodes.is_removed(*i)
                    && n.read_slot
                        .is_some_and(|s| !excluded.contains(&s) && !tried.contains(&s))
            })
            .max_by_key(|(_, n)| n.state.replay_lsn())
            .map(|(i, _)| i)?;
        let node = self.nodes.get(node_index)?;
        let deadline = Instant::now() + settings.max_wait;
        loop {
            let polled = tokio::time::timeout_at(
                deadline,
                sqlx::query_scalar::<_, Option<String>>("SELECT pg_last_wal_replay_lsn()::text")
                    .fetch_one(&node.pool),
            )
            .await;
            match polled {
                Ok(Ok(Some(text))) => {
                    if let Ok(lsn) = text.parse::<Lsn>() {
                        node.state.observe_replay(lsn);
                        if lsn >= required {
                            return Some(Lease {
                                node: node_index,
                                guard: None,
                            });
                        }
                    }
                }
                Ok(Err(e)) if is_connection_error(&e) => {
                    node.mark_down(&e);
                    return None;
                }
                Ok(_) => return None,  // not a replica (NULL) or a query error
                Err(_) => return None, // out of time
            }
            if Instant::now() + settings.poll_interval >= deadline {
                return None;
            }
            tokio::time::sleep(settings.poll_interval).await;
        }
    }

    /// Whether `token` is within what the primary has reported so far: such a token is honoured
    /// without asking the primary (the fast path of [`DbRouter::check_token`]).
    ///
    /// [`DbRouter::check_token`]: crate::DbRouter::check_token
    pub(crate) fn token_seen(&self, token: Lsn) -> bool {
        token.as_u64() <= self.primary_lsn.load(Ordering::Acquire)
    }

    /// [`DbRouter::check_token`] past the fast path: one check against the primary at a time,
    /// shared by the tokens that arrived before it started.
    ///
    /// [`DbRouter::check_token`]: crate::DbRouter::check_token
    pub(crate) async fn check_token(&self, token: Lsn) -> Option<Lsn> {
        let arrived = self.token_checks_started.load(Ordering::Acquire);
        let _turn = self.token_check.lock().await;
        if self.token_checks_started.load(Ordering::Acquire) == arrived {
            // No check started since this token arrived: ask the primary now. Marked failed
            // until it answers, so that a check cut short leaves the tokens kept.
            self.token_checks_started.fetch_add(1, Ordering::AcqRel);
            self.token_check_failed.store(true, Ordering::Release);
            let failed = self.writer_lsn().await.is_err();
            self.token_check_failed.store(failed, Ordering::Release);
        }
        if self.token_check_failed.load(Ordering::Acquire) {
            tracing::debug!(%token, "read-your-writes: cannot check a token against the primary; kept");
            return Some(token);
        }
        // Either way the position below was read after the token was issued (a check that
        // started after it arrived, or ours), so it covers every genuine token.
        if self.token_seen(token) {
            Some(token)
        } else {
            metrics::token_ignored();
            tracing::debug!(%token, "read-your-writes: token beyond the primary's position; ignored");
            None
        }
    }

    /// The primary's current WAL position.
    pub(crate) async fn writer_lsn(&self) -> Result<Lsn, Error> {
        let node = self.writer_or_err("current_lsn")?;
        let text: String = race_down(
            node,
            "current_lsn",
            sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&node.pool),
        )
        .await
        .map_err(|source| Error::Query {
            node: node.name.to_string(),
            operation: "current_lsn",
            source,
        })?;
        let lsn: Lsn = text.parse()?;
        self.primary_lsn.fetch_max(lsn.as_u64(), Ordering::AcqRel);
        Ok(lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_indices_fill_each_chunk_in_order() {
        let mut expected = Vec::new();
        for chunk in 0..4 {
            for offset in 0..(FIRST_CHUNK << chunk) {
                expected.push((chunk, offset));
            }
        }
        let placed: Vec<_> = (0..expected.len()).map(NodeList::place).collect();
        assert_eq!(placed, expected);
        let last = FIRST_CHUNK * ((1 << CHUNKS) - 1) - 1;
        assert_eq!(
            NodeList::place(last),
            (CHUNKS - 1, (FIRST_CHUNK << (CHUNKS - 1)) - 1)
        );
    }
}
