//! [`DbRouter`]: building a router, and its explicit routing and status API (the state it
//! shares and the replica pick are in `nodes`, automatic routing in `executor`).

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herd_lb_core::{EndpointSet, InFlightGuard};
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::{PgPool, Transaction};

use crate::classify::Route;
use crate::config::{NodeConfig, NodeSpec, RouterConfig, node_field};
use crate::error::Error;
use crate::lsn::Lsn;
use crate::monitor;
use crate::node::{DownSignal, Node, NodeState, race_down};
use crate::nodes::{NO_WRITER, Shared};
use crate::scope::{self, Consistency};
use crate::status::{NodeStatus, ObservedRole, RouterStatus};

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
                    .enumerate()
                    .filter(|(i, _)| !self.shared.nodes.is_removed(*i))
                    .map(|(_, n)| &*n.name)
                    .collect::<Vec<_>>(),
            )
            .field("primary", &self.shared.writer().map(|n| &*n.name))
            .finish_non_exhaustive()
    }
}

/// Builds a [`DbRouter`]; see [`DbRouter::builder`].
#[derive(Debug)]
pub struct DbRouterBuilder {
    config: RouterConfig,
    seed: Option<u64>,
    pools: Vec<(String, PgPool)>,
    #[cfg(feature = "dns")]
    dns: Option<crate::discover::DnsNodes>,
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

    /// Adds the nodes a DNS name lists (a Kubernetes headless Service over the primary and
    /// its replicas), re-resolved on an interval: new addresses become nodes whose roles the
    /// monitor finds, vanished ones are removed once their work is done. With it the
    /// configuration may list no node. See [`DnsNodes`](crate::DnsNodes).
    #[cfg(feature = "dns")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
    pub fn dns(mut self, nodes: crate::discover::DnsNodes) -> Self {
        self.dns = Some(nodes);
        self
    }

    /// Validates the configuration, creates the pools (lazily: no connection is needed
    /// yet), runs one check of every node so roles are known, and starts the monitor.
    ///
    /// Fails only on invalid configuration ([`Error::InvalidConfig`]) and on a node whose TLS
    /// handshake fails ([`Error::Tls`]: a certificate the configured CA does not sign or that
    /// names another host); unreachable nodes are reported by [`DbRouter::status`] and retried
    /// every `check_interval`.
    pub async fn build(mut self) -> Result<DbRouter, Error> {
        crate::metrics::describe();
        #[cfg(feature = "dns")]
        let mut discovery = self
            .dns
            .take()
            .map(|nodes| crate::discover::Discovery::new(nodes, &self.config))
            .transpose()?;
        #[cfg(feature = "dns")]
        let only_discovered = discovery.is_some()
            && self.config.primary.is_none()
            && self.config.replicas.is_empty()
            && self.config.nodes.is_empty();
        #[cfg(not(feature = "dns"))]
        let only_discovered = false;
        // With DNS discovery and no configured node, `Discovery::new` has checked the settings.
        let specs = if only_discovered {
            Vec::new()
        } else {
            self.config.node_specs()?
        };
        if let Some((unknown, _)) = self
            .pools
            .iter()
            .find(|(name, _)| !specs.iter().any(|s| &s.name == name))
        {
            return Err(Error::invalid_config(
                "DbRouterBuilder::pool",
                format!("no node is called `{unknown}`, so the pool given for it cannot be used"),
            ));
        }
        let policy = self
            .config
            .selection
            .build(self.seed)
            .map_err(|e| Error::invalid_config("selection", e.to_string()))?;
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
                    .map_err(|e| {
                        Error::invalid_node_config(node_field!(spec.list, "weight"), &spec.name, e)
                    })?;
                Some(reads.len() - 1)
            } else {
                None
            };
            let given = self
                .pools
                .iter()
                .position(|(n, _)| *n == spec.name)
                .map(|i| self.pools.swap_remove(i).1);
            nodes.push(node_from_spec(
                spec,
                name,
                read_slot,
                given,
                self.config.check_timeout,
            ));
        }
        let shared = Arc::new(Shared::new(nodes, reads, policy, self.config));
        #[cfg(feature = "dns")]
        if let Some(discovery) = &mut discovery {
            // The name's nodes are in place for the first check, as configured ones are.
            discovery.first_resolution(&shared).await;
        }
        let mut connections = monitor::Connections::new(shared.nodes.len());
        monitor::check_all(&shared, &mut connections).await;
        // A certificate that does not match is a configuration error: say so now, naming the
        // node, rather than report the node unreachable for ever.
        if let Some(tls) = shared.nodes.iter().find_map(Node::tls_failure) {
            return Err(tls);
        }
        monitor::first_catalog_read(&shared).await;
        let task = tokio::spawn(monitor::run(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
            connections,
        ));
        *shared.monitor.lock() = Some(task);
        #[cfg(feature = "dns")]
        if let Some(discovery) = discovery {
            let task = tokio::spawn(discovery.run(Arc::downgrade(&shared)));
            *shared.discovery.lock() = Some(task);
        }
        Ok(DbRouter { shared })
    }
}

fn node_from_spec(
    spec: NodeSpec,
    name: Arc<str>,
    read_slot: Option<usize>,
    given: Option<PgPool>,
    check_timeout: Duration,
) -> Node {
    let pool_config = &spec.pool;
    // The server cancels a statement at `statement_timeout`; its answer gets `check_timeout`
    // (the bound on a round trip to the node) to arrive. Past that the node or the way to it
    // is gone, not the statement slow.
    let in_flight_timeout = pool_config
        .statement_timeout
        .and_then(|statement| statement.checked_add(check_timeout));
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
        in_flight_timeout,
    }
}

/// The spec of one node added at run time, validated with the router's settings. A node
/// without a name is called by its URL's `host:port`.
pub(crate) fn spec_for(config: &RouterConfig, node: NodeConfig) -> Result<NodeSpec, Error> {
    let unnamed = node.name.is_none();
    let probe = RouterConfig {
        primary: None,
        replicas: Vec::new(),
        nodes: vec![node],
        ..config.clone()
    };
    let mut specs = probe.node_specs()?;
    let Some(mut spec) = specs.pop().filter(|_| specs.is_empty()) else {
        return Err(Error::invalid_config(
            "nodes.url",
            "names several hosts: add one node per host",
        ));
    };
    if unnamed {
        spec.name = format!("{}:{}", spec.connect.get_host(), spec.connect.get_port());
    }
    Ok(spec)
}

/// Adds a node to a running router (see [`DbRouter::add_node`]).
pub(crate) async fn insert_spec(shared: &Shared, spec: NodeSpec) -> Result<String, Error> {
    let members = shared.membership.lock().await;
    if shared.nodes.position_live(&spec.name).is_some() {
        return Err(Error::invalid_config(
            "nodes.name",
            format!("a node called `{}` is already in the router", spec.name),
        ));
    }
    let name: Arc<str> = spec.name.as_str().into();
    let index = shared.nodes.len();
    // A node added again under a removed one's name takes its read slot back (and its
    // selection state); a new name gets the next slot. Either way the slot takes no read
    // until the monitor has checked the node.
    let read_slot = spec.role.may_read().then(|| {
        let snapshot = shared.reads.load();
        snapshot
            .iter()
            .position(|e| e.key() == &name)
            .unwrap_or(snapshot.len())
    });
    if let Some(slot) = read_slot {
        shared.exclude_slot(slot);
    }
    let (list, weight, role) = (spec.list, spec.weight, spec.role);
    let node = node_from_spec(
        spec,
        Arc::clone(&name),
        read_slot,
        None,
        shared.config.check_timeout,
    );
    let Some(index) = shared.nodes.push(node).filter(|i| *i == index) else {
        return Err(Error::invalid_config(
            "nodes",
            "the router's node list is full",
        ));
    };
    if read_slot.is_some()
        && let Err(e) = shared.reads.insert(Arc::clone(&name), index, weight)
    {
        shared.nodes.mark_removed(index);
        return Err(Error::invalid_node_config(
            node_field!(list, "weight"),
            &name,
            e,
        ));
    }
    drop(members);
    tracing::info!(node = %name, role = role.as_str(), "node added; the monitor checks it now");
    shared.wake.notify_one();
    Ok(name.to_string())
}

/// Removes a node from a running router (see [`DbRouter::remove_node`]).
pub(crate) async fn remove_named(shared: &Arc<Shared>, name: &str) -> bool {
    let members = shared.membership.lock().await;
    let Some((index, node)) = shared
        .nodes
        .position_live(name)
        .and_then(|i| shared.nodes.get(i).map(|n| (i, n)))
    else {
        return false;
    };
    shared.nodes.mark_removed(index);
    node.state.eligible.store(false, Ordering::Release);
    if let Some(slot) = node.read_slot {
        shared.exclude_slot(slot);
    }
    if shared
        .writer
        .compare_exchange(index, NO_WRITER, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        tracing::warn!(node = %node.name, "the write node was removed: writes fail until the monitor finds another");
    }
    let reads = node.read_slot.and_then(|_| shared.reads.state(&node.name));
    let pool = node.pool.clone();
    let name: Arc<str> = Arc::clone(&node.name);
    drop(members);
    shared.wake.notify_one();
    tracing::info!(node = %name, "node removed: no new work; its pool closes when its work is done");
    let router = Arc::downgrade(shared);
    tokio::spawn(async move {
        // A read picked just before the removal may not have taken its connection yet: wait
        // for the node's picks to end (or for the name to come back, whose picks are the new
        // node's), then close, which waits for connections in use to be returned.
        if let Some(reads) = reads {
            while reads.in_flight() > 0 {
                let back = router
                    .upgrade()
                    .is_none_or(|s| s.nodes.position_live(&name).is_some());
                if back {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        pool.close().await;
        tracing::debug!(node = %name, "removed node's pool closed");
    });
    true
}

impl DbRouter {
    /// Starts building a router from `config`.
    pub fn builder(config: RouterConfig) -> DbRouterBuilder {
        DbRouterBuilder {
            config,
            seed: None,
            pools: Vec::new(),
            #[cfg(feature = "dns")]
            dns: None,
        }
    }

    /// Adds a node to the running router and returns its name (by default its URL's
    /// `host:port`): the monitor checks it at once and finds its role (configured roles are
    /// kept); a replica takes reads from its first good check on. New replicas need no
    /// restart.
    ///
    /// The node is validated like a configured one of `nodes` (default role
    /// [`Role::Auto`](crate::Role::Auto)), with the router's settings; a name already in the
    /// router, or a URL with several hosts, is refused ([`Error::InvalidConfig`]).
    pub async fn add_node(&self, node: NodeConfig) -> Result<String, Error> {
        let spec = spec_for(&self.shared.config, node)?;
        insert_spec(&self.shared, spec).await
    }

    /// Removes the node called `name` from the running router: at once it takes no new read
    /// or write (a removed write node leaves writes failing until the monitor finds another
    /// writable node), and its pool closes once the reads and statements it has in flight
    /// are done. Returns whether the router had such a node. A node added again under the
    /// same name starts afresh, with the read selection state of its name.
    pub async fn remove_node(&self, name: &str) -> bool {
        remove_named(&self.shared, name).await
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
    /// `ReadYourWritesLayer` (feature `tower`) checks every token it reads; call
    /// this for tokens you carry yourself before [`Consistency::after`].
    pub async fn check_token(&self, token: Lsn) -> Option<Lsn> {
        let shared = &*self.shared;
        if shared.token_seen(token) {
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
            .filter(|(i, _)| !shared.nodes.is_removed(*i))
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
        if let Some(task) = self.shared.discovery.lock().take() {
            task.abort();
        }
        for node in self.shared.nodes.iter() {
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
