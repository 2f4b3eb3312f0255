//! [`DbRouter`]: the nodes, the replica selection and the routing decisions.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use herd_lb_core::{EndpointSet, InFlightGuard, Outcome, PickContext, Policy};
use parking_lot::Mutex;
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::{PgPool, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::classify::{Classifier, Route, RouteCache};
use crate::config::{Fallback, NodeSpec, RouterConfig};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics;
use crate::monitor;
use crate::node::{DownSignal, Node, NodeState};
use crate::scope::{self, Consistency};
use crate::status::{NodeStatus, ObservedRole, RouterStatus};

const NO_WRITER: usize = usize::MAX;

/// Routes sqlx queries between a PostgreSQL primary and its streaming replicas.
///
/// Cheap to clone (an `Arc`); all clones share pools, selection state and the monitor,
/// which stops when the last clone is dropped. `&DbRouter` implements
/// [`sqlx::Executor`], so code written against `&PgPool` works unchanged and each
/// statement is routed by the [classifier](mod@crate::classify).
///
/// ```no_run
/// use herd_db_router::{DbRouter, NodeConfig, RouterConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let router = DbRouter::connect(RouterConfig {
///     primary: Some(NodeConfig::new("postgres://app@db-1/app")),
///     replicas: vec![NodeConfig::new("postgres://app@db-2/app"), NodeConfig::new("postgres://app@db-3/app")],
///     ..RouterConfig::default()
/// })
/// .await?;
///
/// // Automatic: a replica for the SELECT, the primary for the UPDATE.
/// let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1").bind(1_i64).fetch_one(&router).await?;
/// sqlx::query("UPDATE users SET seen_at = now() WHERE id = $1").bind(1_i64).execute(&router).await?;
///
/// // Explicit.
/// let mut tx = router.begin().await?;
/// sqlx::query("INSERT INTO audit (msg) VALUES ('x')").execute(&mut *tx).await?;
/// tx.commit().await?;
/// let replica = router.replica()?;
/// sqlx::query("SELECT 1").execute(&*replica).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DbRouter {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for DbRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRouter")
            .field(
                "nodes",
                &self
                    .shared
                    .nodes
                    .iter()
                    .map(|n| &*n.name)
                    .collect::<Vec<_>>(),
            )
            .field("primary", &self.shared.writer().map(|n| &*n.name))
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) nodes: Vec<Node>,
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
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.monitor.lock().take() {
            task.abort();
        }
    }
}

/// Builds a [`DbRouter`]; see [`DbRouter::builder`].
#[derive(Debug)]
pub struct DbRouterBuilder {
    config: RouterConfig,
    seed: Option<u64>,
    pools: Vec<(String, PgPool)>,
}

impl DbRouterBuilder {
    /// Fixed seed for replica selection and lb-core's jitter (default: OS entropy), for
    /// deterministic tests and benchmarks.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Uses `pool`, an existing sqlx pool, for the node named `node` (`primary`, `replica1`, …,
    /// or the name it was given) instead of creating one from the node's `pool` settings: the
    /// router and the rest of the application then share its connections. The node's URL still
    /// identifies it, and the monitor still checks it over its own connection.
    /// [`DbRouter::close`] closes it with the others. A name that no node has is refused by
    /// [`build`](Self::build).
    pub fn pool(mut self, node: impl Into<String>, pool: PgPool) -> Self {
        self.pools.push((node.into(), pool));
        self
    }

    /// Validates the configuration, creates the pools (lazily: no connection is needed
    /// yet), runs one check of every node so roles are known, and starts the monitor.
    ///
    /// Fails only on invalid configuration; unreachable nodes are reported by
    /// [`DbRouter::status`] and retried every `check_interval`.
    pub async fn build(mut self) -> Result<DbRouter, Error> {
        let specs = self.config.node_specs()?;
        if let Some((unknown, _)) = self
            .pools
            .iter()
            .find(|(name, _)| !specs.iter().any(|s| &s.name == name))
        {
            return Err(Error::config(
                Some(unknown),
                "pool",
                "no node has this name, so the pool given for it cannot be used",
            ));
        }
        let policy = self
            .config
            .selection
            .build(self.seed)
            .map_err(|e| Error::config(None, "selection", e.to_string()))?;
        let mut reads_builder = EndpointSet::<Arc<str>, usize>::builder();
        if let Some(seed) = self.seed {
            reads_builder = reads_builder.seed(seed);
        }
        let reads = reads_builder.build();
        let mut nodes = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let name: Arc<str> = spec.name.as_str().into();
            let read_slot = if spec.role.may_read() {
                reads
                    .insert(Arc::clone(&name), index, spec.weight)
                    .map_err(|e| Error::config(Some(&spec.name), "weight", e.to_string()))?;
                Some(reads.len() - 1)
            } else {
                None
            };
            let given = self
                .pools
                .iter()
                .position(|(n, _)| *n == spec.name)
                .map(|i| self.pools.swap_remove(i).1);
            nodes.push(node_from_spec(spec, name, read_slot, given));
        }
        // Nothing is eligible until the first check says so.
        let all_reads: Vec<usize> = (0..reads.len()).collect();
        let shared = Arc::new(Shared {
            nodes,
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
            classifier: Classifier::new(&self.config.write_functions, self.config.function_policy),
            config: self.config,
            wake: Arc::new(Notify::new()),
            monitor: Mutex::new(None),
        });
        let mut connections = monitor::Connections::new(shared.nodes.len());
        monitor::check_all(&shared, &mut connections).await;
        crate::classify::catalog::first_refresh(&shared).await;
        let task = tokio::spawn(monitor::run(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
            connections,
        ));
        *shared.monitor.lock() = Some(task);
        Ok(DbRouter { shared })
    }
}

fn node_from_spec(
    spec: NodeSpec,
    name: Arc<str>,
    read_slot: Option<usize>,
    given: Option<PgPool>,
) -> Node {
    let pool_config = &spec.pool;
    let (pool, max_connections) = match given {
        Some(pool) => {
            let max = pool.options().get_max_connections();
            (pool, max)
        }
        None => (
            PgPoolOptions::new()
                .max_connections(pool_config.max_connections)
                .min_connections(pool_config.min_connections)
                .acquire_timeout(pool_config.acquire_timeout)
                .idle_timeout(pool_config.idle_timeout)
                .max_lifetime(pool_config.max_lifetime)
                .test_before_acquire(pool_config.test_before_acquire)
                .connect_lazy_with(spec.connect.clone()),
            pool_config.max_connections,
        ),
    };
    let monitor_name = format!(
        "{} monitor",
        spec.connect
            .get_application_name()
            .unwrap_or("herd-db-router")
    );
    Node {
        metric_keys: crate::metrics::NodeKeys::new(&name),
        name,
        role: spec.role,
        weight: spec.weight,
        pool,
        monitor_connect: spec.connect.application_name(&monitor_name),
        max_connections,
        read_slot,
        state: NodeState::default(),
        down: DownSignal::default(),
    }
}

impl DbRouter {
    /// Starts building a router from `config`.
    pub fn builder(config: RouterConfig) -> DbRouterBuilder {
        DbRouterBuilder {
            config,
            seed: None,
            pools: Vec::new(),
        }
    }

    /// Builds a router from `config` with OS entropy for selection; see
    /// [`DbRouterBuilder::build`].
    pub async fn connect(config: RouterConfig) -> Result<DbRouter, Error> {
        Self::builder(config).build().await
    }

    /// The pool of the current primary (the writable node), or [`Error::NoPrimary`] at once
    /// when none is known to be up.
    pub fn primary(&self) -> Result<&PgPool, Error> {
        self.shared.writer_or_err("primary").map(|n| &n.pool)
    }

    /// An eligible replica's pool, chosen by the configured selection policy (least
    /// outstanding by default, weights honoured); the primary when none is eligible (or
    /// [`Error::NoEligibleReplica`] with `fallback = "error"`). Inside a
    /// [`Consistency`] scope only replicas that have replayed the scope's token count as
    /// eligible. The returned handle counts as one outstanding request until dropped.
    pub fn replica(&self) -> Result<PickedPool<'_>, Error> {
        let required = Consistency::current().and_then(|c| c.token());
        let picked = self.shared.pick_replica(required, &[]);
        if let Some((lease, node)) =
            picked.and_then(|l| self.shared.nodes.get(l.node).map(|n| (l, n)))
        {
            return Ok(PickedPool {
                node: &node.name,
                pool: &node.pool,
                guard: lease.guard,
            });
        }
        let reason = if required.is_some() {
            "read_your_writes"
        } else {
            "no_eligible_replica"
        };
        let node = self.shared.fallback_node("replica", reason)?;
        Ok(PickedPool {
            node: &node.name,
            pool: &node.pool,
            guard: None,
        })
    }

    /// Starts a transaction on the primary.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let node = self.shared.writer_or_err("begin")?;
        if let Some(c) = Consistency::current() {
            c.mark_write();
        }
        race_down(node, "begin", node.pool.begin())
            .await
            .map_err(|source| Error::Query {
                node: node.name.to_string(),
                operation: "begin",
                source,
            })
    }

    /// Starts a `BEGIN READ ONLY` transaction on one replica (chosen like
    /// [`replica`](Self::replica)), for a consistent multi-statement read.
    pub async fn begin_read_only(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let replica = self.replica()?;
        let node = replica.node.to_string();
        replica
            .pool
            .begin_with("BEGIN READ ONLY")
            .await
            .map_err(|source| Error::Query {
                node,
                operation: "begin read only",
                source,
            })
    }

    /// Runs `fut` with automatic routing sending everything to the primary; the same as
    /// [`on_primary`](crate::on_primary).
    pub async fn on_primary<F: Future>(&self, fut: F) -> F::Output {
        scope::on_primary(fut).await
    }

    /// Where the classifier sends `sql` with this router's write list and function policy.
    pub fn classify(&self, sql: &str) -> Route {
        self.shared.classifier.classify(sql)
    }

    /// The primary's current WAL position: a read-your-writes token covering every write
    /// committed so far.
    pub async fn current_lsn(&self) -> Result<Lsn, Error> {
        self.shared.writer_lsn().await
    }

    /// `token`, a client's read-your-writes token, if this router honours it: a token beyond
    /// every WAL position the primary has reported is ignored (`None`), so a forged or
    /// far-future one cannot make the client's every read wait `read_your_writes.max_wait`.
    ///
    /// A token newer than the position last seen (another instance's client wrote since this
    /// router's last check) costs one `pg_current_wal_lsn()` on the primary; concurrent checks
    /// share one query, and a flood of bad tokens runs at most one at a time. When the primary
    /// cannot be asked, or does not answer within `read_your_writes.max_wait` (at least
    /// 250 ms), the token is kept: reads then wait at most `max_wait` for it.
    /// [`ReadYourWritesLayer`](crate::ReadYourWritesLayer) checks every token it reads; call
    /// this for tokens you carry yourself before [`Consistency::after`].
    pub async fn check_token(&self, token: Lsn) -> Option<Lsn> {
        let shared = &*self.shared;
        if token.as_u64() <= shared.primary_lsn.load(Ordering::Acquire) {
            return Some(token);
        }
        // A primary that does not answer must not hold requests: past the bound, keep it.
        let bound = shared
            .config
            .read_your_writes
            .max_wait
            .max(Duration::from_millis(250));
        match tokio::time::timeout(bound, shared.check_token(token)).await {
            Ok(checked) => checked,
            Err(_) => {
                tracing::debug!(%token, "read-your-writes: checking a token took too long; kept");
                Some(token)
            }
        }
    }

    /// Hands out `client`'s token at the end of its work: when it wrote, raises the token to
    /// the primary's current WAL position. Returns the token (`None`: no requirement).
    pub async fn settle(&self, client: &Consistency) -> Result<Option<Lsn>, Error> {
        if client.wrote() {
            let lsn = self.shared.writer_lsn().await?;
            client.advance(lsn);
            let _ = client.take_unsettled();
        }
        Ok(client.token())
    }

    /// Every node's role, reachability, lag, eligibility and pool use.
    pub fn status(&self) -> RouterStatus {
        let shared = &*self.shared;
        let writer = shared.writer.load(Ordering::Acquire);
        let nodes = shared
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| node_status(shared, i, n, writer))
            .collect();
        RouterStatus {
            primary: shared.writer().map(|n| n.name.to_string()),
            primary_lsn: match shared.primary_lsn.load(Ordering::Acquire) {
                0 => None,
                v => Some(Lsn::new(v)),
            },
            nodes,
        }
    }

    /// The router's configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.shared.config
    }

    /// Asks the monitor to check every node now instead of at the next interval.
    pub fn check_now(&self) {
        self.shared.wake.notify_one();
    }

    /// Stops the monitor and closes every pool.
    pub async fn close(&self) {
        if let Some(task) = self.shared.monitor.lock().take() {
            task.abort();
        }
        for node in &self.shared.nodes {
            node.pool.close().await;
        }
    }
}

fn node_status(shared: &Shared, index: usize, n: &Node, writer: usize) -> NodeStatus {
    let s = &n.state;
    let checked = s.checked.load(Ordering::Acquire);
    let reachable = s.is_up();
    let in_recovery = s.in_recovery.load(Ordering::Acquire);
    let observed = match (checked && reachable, in_recovery) {
        (false, _) => ObservedRole::Unknown,
        (true, true) => ObservedRole::Replica,
        (true, false) => ObservedRole::Primary,
    };
    let lsn = |v: &AtomicU64| match v.load(Ordering::Acquire) {
        0 => None,
        v => Some(Lsn::new(v)),
    };
    let is_replica = observed == ObservedRole::Replica;
    let size = n.pool.size();
    let idle = u32::try_from(n.pool.num_idle()).unwrap_or(u32::MAX);
    NodeStatus {
        name: n.name.to_string(),
        configured_role: n.role,
        observed_role: observed,
        is_write_node: index == writer,
        reachable,
        lag_bytes: is_replica.then(|| s.lag_bytes.load(Ordering::Acquire)),
        lag: is_replica.then(|| s.lag()),
        eligible: n.read_slot.is_some() && s.eligible.load(Ordering::Acquire),
        current_lsn: if observed == ObservedRole::Primary {
            lsn(&s.current_lsn)
        } else {
            None
        },
        replay_lsn: if is_replica { lsn(&s.replay_lsn) } else { None },
        receive_lsn: if is_replica {
            lsn(&s.receive_lsn)
        } else {
            None
        },
        weight: n.weight,
        in_flight: n
            .read_slot
            .and_then(|slot| {
                shared
                    .reads
                    .snapshot()
                    .get(slot)
                    .map(|e| e.state().in_flight())
            })
            .unwrap_or(0),
        pool_size: size,
        pool_idle: idle,
        pool_in_use: size.saturating_sub(idle),
        pool_max: n.max_connections,
        last_error: s.last_error.lock().clone(),
    }
}

/// A pool picked for a read, counting as one outstanding request on its replica until
/// dropped. Dereferences to the [`PgPool`].
#[derive(Debug)]
pub struct PickedPool<'a> {
    node: &'a str,
    pool: &'a PgPool,
    guard: Option<InFlightGuard>,
}

impl PickedPool<'_> {
    /// The node's name.
    pub fn node(&self) -> &str {
        self.node
    }

    /// Whether this is a replica (`false`: the primary, as a fallback).
    pub fn is_replica(&self) -> bool {
        self.guard.is_some()
    }
}

impl Deref for PickedPool<'_> {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        self.pool
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
            .filter(|n| n.role.may_write())
            .map(|n| {
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
            .filter(|(_, n)| {
                n.read_slot
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
                Ok(Err(e)) if crate::node::is_connection_error(&e) => {
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

    /// [`DbRouter::check_token`] past the fast path: one check against the primary at a time,
    /// shared by the tokens that arrived before it started.
    async fn check_token(&self, token: Lsn) -> Option<Lsn> {
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
        if token.as_u64() <= self.primary_lsn.load(Ordering::Acquire) {
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

/// Runs `fut` against `node`, giving up with [`Error::NodeDown`] as soon as the node is found
/// down (a dead primary would otherwise keep a request in sqlx's connect retries until
/// `acquire_timeout`).
pub(crate) fn race_down<T>(
    node: &Node,
    operation: &'static str,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> impl Future<Output = Result<T, sqlx::Error>> {
    node.down.race(fut, move || Err(race_lost(node, operation)))
}

#[cold]
fn race_lost(node: &Node, operation: &'static str) -> sqlx::Error {
    Error::NodeDown {
        node: node.name.to_string(),
        operation,
    }
    .into_sqlx()
}
