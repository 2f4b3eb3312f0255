//! The background monitor: every `check_interval`, each node's role, WAL positions and lag;
//! then the write node, each replica's eligibility, and the gauges.
//!
//! It also reads the primary's function catalog into the classifier every `catalog_refresh`
//! (in a task of its own, so the checks never wait on it).
//!
//! It uses one dedicated connection per node (not the pools), so a saturated pool never
//! delays a check, and it runs off the request path: requests only read what it wrote.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::classify::catalog::Catalog;
use crate::lsn::Lsn;
use crate::metrics;
use crate::node::Node;
use crate::nodes::Shared;

/// One query that works on a primary and on a standby.
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
    pg_last_wal_replay_lsn()::text, \
    pg_last_wal_receive_lsn()::text, \
    EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";

type CheckRow = (
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
);

/// What one check saw.
#[derive(Debug, Default)]
struct Observation {
    in_recovery: bool,
    current_lsn: Option<Lsn>,
    replay_lsn: Option<Lsn>,
    receive_lsn: Option<Lsn>,
    /// Seconds since the last replayed transaction (replicas).
    replay_age: Option<f64>,
    timeline: Option<u32>,
}

/// The monitor's connections, one slot per node.
#[derive(Debug)]
pub(crate) struct Connections(Vec<Option<PgConnection>>);

impl Connections {
    pub(crate) fn new(nodes: usize) -> Self {
        Self((0..nodes).map(|_| None).collect())
    }
}

/// The loop; ends when the router is dropped.
pub(crate) async fn run(shared: Weak<Shared>, wake: Arc<Notify>, mut connections: Connections) {
    let Some(interval) = shared.upgrade().map(|s| s.config.check_interval) else {
        return;
    };
    // The builder already checked once. The first round comes half an interval to one and a
    // half later, at random, and the rounds keep that phase: instances started together (a
    // deploy, a node's restart) spread their checks over the interval instead of reaching
    // every node at once, each round of each instance (docs/scale.md).
    let first = tokio::time::Instant::now() + interval.mul_f64(0.5 + random_fraction());
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        check_all(&shared, &mut connections).await;
        read_catalog_if_due(&shared);
    }
}

/// A number in `0..1` that differs between processes and calls (std's per-map random keys:
/// the phase needs spreading, not a cryptographic or reproducible draw).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::process::id());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Checks every node at once, then recomputes the write node, lag and eligibility.
pub(crate) async fn check_all(shared: &Shared, connections: &mut Connections) {
    // Nodes join and leave between rounds, never during one.
    let _members = shared.membership.lock().await;
    connections.0.resize_with(shared.nodes.len(), || None);
    let timeout = shared.config.check_timeout;
    let checks = shared
        .nodes
        .iter()
        .enumerate()
        .zip(connections.0.iter_mut())
        .map(|((i, node), slot)| async move {
            if shared.nodes.is_removed(i) {
                // A removed node is not checked: it takes no work, and may be gone.
                drop_connection(slot).await;
                return Err("removed from the router".to_string());
            }
            check_node(node, slot, timeout).await
        });
    let observations = join_all(checks).await;
    for (i, (node, observation)) in shared.nodes.iter().zip(&observations).enumerate() {
        if !shared.nodes.is_removed(i) {
            record(node, observation);
        }
    }
    choose_writer(shared, &observations);
    update_eligibility(shared, &observations);
}

async fn check_node(
    node: &Node,
    slot: &mut Option<PgConnection>,
    timeout: Duration,
) -> Result<Observation, String> {
    let outcome = tokio::time::timeout(timeout, async {
        let reused = slot.is_some();
        match query_node(node, slot).await {
            // The monitor's own connection broke (terminated, reset by a restarted proxy):
            // that says nothing about the node yet, so one fresh connection decides, within
            // the same time bound. A node that is really down fails this one too.
            Err(_) if reused => {
                drop_connection(slot).await;
                query_node(node, slot).await
            }
            outcome => outcome,
        }
    })
    .await;
    let row = match outcome {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            drop_connection(slot).await;
            return Err(e);
        }
        Err(_) => {
            drop_connection(slot).await;
            return Err(format!("check timed out after {timeout:?}"));
        }
    };
    let (in_recovery, current, replay, receive, replay_age, timeline) = row;
    let lsn = |text: Option<String>| text.and_then(|t| t.parse::<Lsn>().ok());
    Ok(Observation {
        in_recovery,
        current_lsn: lsn(current),
        replay_lsn: lsn(replay),
        receive_lsn: lsn(receive),
        replay_age,
        timeline: timeline.and_then(|t| u32::from_str_radix(&t, 16).ok()),
    })
}

/// Runs the check query on the slot's connection, connecting first when there is none.
async fn query_node(node: &Node, slot: &mut Option<PgConnection>) -> Result<CheckRow, String> {
    if slot.is_none() {
        let conn = node.monitor_connect.connect().await.map_err(|e| {
            let tls = crate::node::tls_error(&node.name, &e);
            *node.state.tls_failure.lock() = match &tls {
                Some(crate::Error::Tls { reason, .. }) => Some(reason.clone()),
                _ => None,
            };
            tls.map_or_else(|| format!("connect: {e}"), |tls| tls.to_string())
        })?;
        *node.state.tls_failure.lock() = None;
        *slot = Some(conn);
    }
    let Some(conn) = slot.as_mut() else {
        return Err("no connection".to_string());
    };
    sqlx::query_as::<_, CheckRow>(CHECK_SQL)
        .fetch_one(conn)
        .await
        .map_err(|e| format!("check query: {e}"))
}

async fn drop_connection(slot: &mut Option<PgConnection>) {
    if let Some(conn) = slot.take() {
        // The connection may be broken; don't wait for a polite goodbye.
        let _ = tokio::time::timeout(Duration::from_millis(100), conn.close()).await;
    }
}

fn record(node: &Node, observation: &Result<Observation, String>) {
    let s = &node.state;
    match observation {
        Ok(o) => {
            s.in_recovery.store(o.in_recovery, Ordering::Release);
            if let Some(lsn) = o.current_lsn {
                s.current_lsn.store(lsn.as_u64(), Ordering::Release);
            }
            if let Some(lsn) = o.replay_lsn {
                s.observe_replay(lsn);
            }
            if let Some(lsn) = o.receive_lsn {
                s.receive_lsn.store(lsn.as_u64(), Ordering::Release);
            }
            if let Some(tli) = o.timeline {
                s.timeline.store(tli, Ordering::Release);
            }
            s.checked.store(true, Ordering::Release);
            let was_unreachable = !s.reachable.swap(true, Ordering::AcqRel);
            let was_marked_down = s.passive_down.swap(false, Ordering::AcqRel);
            if was_unreachable || was_marked_down {
                tracing::info!(node = %node.name, in_recovery = o.in_recovery, "node reachable");
            }
            *s.last_error.lock() = None;
            metrics::gauge(metrics::NODE_UP, &node.name, 1.0);
        }
        Err(e) => {
            if s.reachable.swap(false, Ordering::AcqRel) {
                tracing::warn!(node = %node.name, error = %e, "node unreachable");
            }
            s.eligible.store(false, Ordering::Release);
            *s.last_error.lock() = Some(e.clone());
            node.down.raise();
            metrics::gauge(metrics::NODE_UP, &node.name, 0.0);
        }
    }
    let size = node.pool.size();
    let idle = u32::try_from(node.pool.num_idle()).unwrap_or(u32::MAX);
    metrics::gauge(metrics::POOL_SIZE, &node.name, f64::from(size));
    metrics::gauge(metrics::POOL_IDLE, &node.name, f64::from(idle));
    metrics::gauge(
        metrics::POOL_IN_USE,
        &node.name,
        f64::from(size.saturating_sub(idle)),
    );
    metrics::gauge(
        metrics::POOL_MAX,
        &node.name,
        f64::from(node.max_connections),
    );
}

/// The write node: among reachable, writable nodes that may take writes, the one on the
/// highest timeline (a promoted replica beats a returning old primary that still thinks it
/// is one); on a tie the current writer stays, else the first in configuration order.
///
/// A node on a timeline older than the newest one this router has ever seen is never chosen,
/// even when it is the only writable node left: it is an old primary that came back after a
/// failover, and writing to it would fork the data (fencing by timeline).
fn choose_writer(shared: &Shared, observations: &[Result<Observation, String>]) {
    let current = shared.writer.load(Ordering::Acquire);
    let newest = observations
        .iter()
        .filter_map(|o| o.as_ref().ok().and_then(|o| o.timeline))
        .max()
        .unwrap_or(0);
    let newest = shared
        .newest_timeline
        .fetch_max(newest, Ordering::AcqRel)
        .max(newest);
    let mut best: Option<(usize, u32)> = None;
    for (i, (node, observation)) in shared.nodes.iter().zip(observations).enumerate() {
        let Ok(o) = observation else { continue };
        if !node.role.may_write() || o.in_recovery || !node.state.is_up() {
            continue;
        }
        let tli = o.timeline.unwrap_or(0);
        if tli < newest {
            tracing::debug!(node = %node.name, timeline = tli, newest, "writable node on an old timeline: not written to");
            continue;
        }
        best = match best {
            None => Some((i, tli)),
            Some((_, best_tli)) if tli > best_tli => Some((i, tli)),
            Some((b, best_tli)) if tli == best_tli && i == current && b != current => {
                Some((i, tli))
            }
            keep => keep,
        };
    }
    let next = best.map_or(usize::MAX, |(i, _)| i);
    if next != current {
        match (shared.nodes.get(current), shared.nodes.get(next)) {
            // A change of write node (a promotion) is worth a warning; finding the first one at
            // start-up, or one again after none was reachable (already an error), is not.
            (Some(old), Some(node)) => tracing::warn!(
                node = %node.name,
                previous = %old.name,
                "write node is now `{}` (was `{}`)",
                node.name,
                old.name
            ),
            (None, Some(node)) => {
                tracing::info!(node = %node.name, "write node is `{}`", node.name)
            }
            (_, None) => tracing::error!("no writable primary reachable: writes fail until one is"),
        }
        shared.writer.store(next, Ordering::Release);
        if let Some(old) = shared.nodes.get(current) {
            // Requests still waiting on the old write node give up now.
            old.down.raise();
        }
    }
    for (i, (node, observation)) in shared.nodes.iter().zip(observations).enumerate() {
        let role = match observation {
            _ if i == next => "primary",
            Err(_) => "unreachable",
            Ok(o) if o.in_recovery => "replica",
            Ok(_) => "writable",
        };
        metrics::node_role(&node.name, role);
    }
    if let Some(Ok(Observation {
        current_lsn: Some(lsn),
        ..
    })) = observations.get(next)
    {
        shared.primary_lsn.fetch_max(lsn.as_u64(), Ordering::AcqRel);
    }
}

/// Lag = primary LSN - replay LSN (time lag only while bytes are behind, so an idle primary
/// does not make replicas look late); eligible = reachable, in recovery, within both bounds.
fn update_eligibility(shared: &Shared, observations: &[Result<Observation, String>]) {
    let primary_lsn = Lsn::new(shared.primary_lsn.load(Ordering::Acquire));
    let max_lag = shared.config.max_lag.as_secs_f64();
    // The slots of removed nodes not added again take no reads.
    let mut excluded = shared.vacant_read_slots();
    for (i, (node, observation)) in shared.nodes.iter().zip(observations).enumerate() {
        let Some(slot) = node.read_slot else { continue };
        if shared.nodes.is_removed(i) {
            continue;
        }
        let s = &node.state;
        let eligible = match observation {
            Ok(o) if o.in_recovery && s.is_up() => {
                let lag_bytes = primary_lsn.bytes_since(s.replay_lsn());
                let lag_seconds = if lag_bytes > 0 {
                    o.replay_age.unwrap_or(0.0).max(0.0)
                } else {
                    0.0
                };
                s.lag_bytes.store(lag_bytes, Ordering::Release);
                s.lag_micros
                    .store((lag_seconds * 1e6) as u64, Ordering::Release);
                metrics::gauge(metrics::REPLICA_LAG_BYTES, &node.name, lag_bytes as f64);
                metrics::gauge(metrics::REPLICA_LAG_SECONDS, &node.name, lag_seconds);
                let within = lag_bytes <= shared.config.max_lag_bytes && lag_seconds <= max_lag;
                if !within && s.eligible.load(Ordering::Acquire) {
                    tracing::warn!(node = %node.name, lag_bytes, lag_seconds, "replica lags beyond the bounds: no reads until it catches up");
                }
                within
            }
            _ => false,
        };
        s.eligible.store(eligible, Ordering::Release);
        metrics::gauge(
            metrics::REPLICA_ELIGIBLE,
            &node.name,
            if eligible { 1.0 } else { 0.0 },
        );
        if !eligible {
            excluded.push(slot);
        }
    }
    let count = excluded.len();
    shared.excluded.store(Arc::new(excluded));
    shared.excluded_count.store(count, Ordering::Release);
}

/// Reads the primary's catalog into the router's classifier, bounded by `timeout`, then makes
/// the route cache forget every route classified before. Logs and keeps the current catalog
/// when the primary cannot be read. Called by the router's builder after the first check
/// and by the monitor (see [`read_catalog_if_due`]).
async fn read_catalog(shared: &Shared, timeout: Duration) -> bool {
    let Ok(node) = shared.writer_or_err("catalog") else {
        return false;
    };
    let read = tokio::time::timeout(timeout, async {
        let mut conn = node.pool.acquire().await?;
        Catalog::load(&mut conn).await
    })
    .await;
    match read {
        Ok(Ok(catalog)) => {
            tracing::debug!(node = %node.name, functions = catalog.functions(), "function catalog read");
            shared.classifier.set_catalog(catalog);
            // After the swap: a route classified with the old catalog and stored late carries
            // the old generation and is never served.
            shared.routes.invalidate();
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(node = %node.name, error = %e, "cannot read the function catalog: keeping the previous one");
            false
        }
        Err(_) => {
            tracing::warn!(node = %node.name, ?timeout, "reading the function catalog timed out: keeping the previous one");
            false
        }
    }
}

/// Bounds one catalog read: five check timeouts (5 s by default), since `pg_proc` is a few
/// thousand rows.
fn catalog_read_timeout(shared: &Shared) -> Duration {
    shared.config.check_timeout.saturating_mul(5)
}

/// From the monitor loop, once per check: starts a catalog read in its own task when
/// `catalog_refresh` has passed since the last successful one (or, until one succeeds, since
/// the last attempt), so the checks never wait on it. One read at a time.
pub(crate) fn read_catalog_if_due(shared: &Arc<Shared>) {
    let Some(every) = shared.config.catalog_refresh else {
        return;
    };
    let schedule = &shared.classifier.catalog_cell().refresh;
    let now = tokio::time::Instant::now();
    {
        let mut state = schedule.lock();
        if state.running {
            return;
        }
        let due = match (state.last_success, state.last_attempt) {
            (Some(ok), _) => now.duration_since(ok) >= every,
            (None, Some(tried)) => now.duration_since(tried) >= every.min(Duration::from_secs(5)),
            (None, None) => true,
        };
        if !due {
            return;
        }
        state.running = true;
        state.last_attempt = Some(now);
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let ok = read_catalog(&shared, catalog_read_timeout(&shared)).await;
        let mut state = shared.classifier.catalog_cell().refresh.lock();
        state.running = false;
        if ok {
            state.last_success = Some(tokio::time::Instant::now());
        }
    });
}

/// The builder's first read: at once, and recorded so the monitor waits a full interval.
pub(crate) async fn first_catalog_read(shared: &Shared) {
    if shared.config.catalog_refresh.is_none() {
        return;
    }
    let now = tokio::time::Instant::now();
    let ok = read_catalog(shared, catalog_read_timeout(shared)).await;
    let mut state = shared.classifier.catalog_cell().refresh.lock();
    state.last_attempt = Some(now);
    if ok {
        state.last_success = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::random_fraction;

    #[test]
    fn the_first_round_s_phase_is_spread_over_the_interval() {
        let draws: Vec<f64> = (0..200).map(|_| random_fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)), "{draws:?}");
        // 200 draws from 0..1 all in one half would be a broken source (odds 2^-199).
        assert!(draws.iter().any(|f| *f < 0.5) && draws.iter().any(|f| *f >= 0.5));
    }
}
