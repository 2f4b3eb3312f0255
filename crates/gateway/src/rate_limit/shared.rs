//! Rate limits shared by every gateway in front of the same instances: each client's GCRA state
//! (its theoretical arrival time) lives in a Redis Cluster, and one Lua script (`EVALSHA`, loaded
//! on first use) reads, decides and writes it in one round trip, on the server's clock (`TIME`),
//! so the gateways' clocks need not agree. One key per client and quota, named
//! `<key_prefix>{<zone>|<client>}`: the hash tag keeps a decision on one slot, and the key expires
//! when the client's state is back to a full burst (no state is the same as a rested one).
//!
//! When the cluster cannot be reached or answers later than [`SharedLimitConfig::timeout`], the
//! gateway decides with its local limiter instead (fail open to local limits: during an outage
//! each gateway admits the configured rate, so the fleet admits up to N times it). The outage is
//! logged once (a warning when it starts, an info line when the cluster is back), each local
//! decision is counted in `herd_lb_rate_limit_fallbacks_total`, and a new connection is tried in
//! the background every [`SharedLimitConfig::reconnect_after`]; requests never wait for it. A
//! script that timed out may still run once a slow node reads it: that request then counts in
//! the cluster too (erring toward limiting).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use herd_lb_core::Error;
use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use serde::Deserialize;

/// GCRA on the server's clock, in microseconds. `ARGV[1]`: the period, `ARGV[2]`: the tolerance
/// (`period × (burst − 1)`). Returns `{admitted, µs until admitted, µs until back to a full
/// burst}`. `TIME` before the write is allowed since Redis 5 (effects replication, the only mode
/// of Redis 7).
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - tolerance > now then
  return {0, tat - tolerance - now, tat - now}
end
tat = tat + period
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return {1, 0, tat - now}
";

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_SCRIPT));

/// Periods and tolerances are cut to this many microseconds (about 36 years), so that the
/// script's sums stay exact in Lua's doubles (2^53).
const MAX_MICROS: u64 = 1 << 50;

/// The least time a background connection attempt gets, whatever the decision timeout.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the shared state lives and how long a decision may wait for it.
///
/// ```
/// # use herd_gateway::rate_limit::RateLimitConfig;
/// let c: RateLimitConfig = toml::from_str(r#"
///     routes = [{ path_prefix = "/login", name = "login_limit", requests = 5, per = "1m" }]
///     shared = { nodes = ["redis://10.0.0.5:7000", "redis://10.0.0.6:7000"], timeout = "20ms" }
/// "#).unwrap();
/// let shared = c.shared.unwrap();
/// assert_eq!(shared.key_prefix, "herd:rl:");
/// assert_eq!(shared.reconnect_after, std::time::Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SharedLimitConfig {
    /// Seed nodes of the Redis Cluster (`redis://host:port`); the rest are discovered.
    pub nodes: Vec<String>,
    /// How long a decision waits for the cluster before it is taken locally. Default 50 ms.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Prepended to every key (gateways sharing limits use the same prefix; fleets with other
    /// quotas use another). Default `herd:rl:`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// After a failure, how long decisions stay local before a new connection is tried (in the
    /// background). Default 1 s.
    #[serde(default = "default_reconnect_after", with = "humantime_serde")]
    pub reconnect_after: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_key_prefix() -> String {
    "herd:rl:".to_owned()
}

fn default_reconnect_after() -> Duration {
    Duration::from_secs(1)
}

impl SharedLimitConfig {
    /// Shared limits on the cluster seeded by `nodes`, with the default timeout and prefix.
    pub fn new<I, N>(nodes: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            timeout: default_timeout(),
            key_prefix: default_key_prefix(),
            reconnect_after: default_reconnect_after(),
        }
    }
}

/// Where a gateway's shared limits take their decisions now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedStatus {
    /// No connection yet (the first attempt is under way): decisions are local.
    Connecting,
    /// Decisions are taken in the Redis Cluster.
    Shared,
    /// The cluster failed or was too slow: decisions are local until a reconnection succeeds.
    Local,
}

/// One request's answer from the cluster, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SharedVerdict {
    pub(super) admitted: bool,
    /// Until the client may send again (0 when admitted).
    pub(super) wait_ns: u64,
    /// Until the client's state is back to a full burst.
    pub(super) ahead_ns: u64,
}

enum LinkState {
    /// No connection: being made, or waiting for the next attempt.
    Connecting,
    Up(ClusterConnection),
}

struct Link {
    state: LinkState,
    /// Bumped on each new connection, so that a late failure of an old one does not take down
    /// its successor.
    generation: u64,
    /// Whether an outage was logged and its recovery is not yet.
    outage: bool,
    /// Whether a task is connecting (or waiting to): requests then never start another.
    connecting: bool,
}

/// The shared limiter's connection and its fallback bookkeeping.
pub(super) struct SharedLimiter {
    client: ClusterClient,
    timeout: Duration,
    reconnect_after: Duration,
    key_prefix: String,
    link: Mutex<Link>,
    fallbacks: AtomicU64,
}

impl fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

impl SharedLimiter {
    /// Checks `config` and builds the client (no I/O). Inside a runtime the first connection is
    /// started at once, in the background.
    pub(super) fn new(config: &SharedLimitConfig) -> Result<Arc<Self>, Error> {
        if config.nodes.is_empty() {
            return Err(invalid(
                "rate_limit.shared.nodes",
                "at least one node is needed",
            ));
        }
        if config.timeout.is_zero() {
            return Err(invalid("rate_limit.shared.timeout", "must be > 0"));
        }
        if config.reconnect_after.is_zero() {
            return Err(invalid("rate_limit.shared.reconnect_after", "must be > 0"));
        }
        let client = ClusterClientBuilder::new(config.nodes.iter().map(String::as_str))
            .connection_timeout(config.timeout.max(MIN_CONNECT_TIMEOUT))
            .response_timeout(config.timeout)
            // A redirect after a failover costs a retry; anything slower is bounded by `timeout`
            // around the whole call and decided locally.
            .retries(2)
            .min_retry_wait(2)
            .max_retry_wait(10)
            .build()
            .map_err(|e| invalid("rate_limit.shared.nodes", e.to_string()))?;
        let limiter = Arc::new(Self {
            client,
            timeout: config.timeout,
            reconnect_after: config.reconnect_after,
            key_prefix: config.key_prefix.clone(),
            link: Mutex::new(Link {
                state: LinkState::Connecting,
                generation: 0,
                outage: false,
                connecting: false,
            }),
            fallbacks: AtomicU64::new(0),
        });
        {
            let mut link = limiter.link.lock();
            limiter.spawn_reconnect(&mut link, false);
        }
        Ok(limiter)
    }

    pub(super) fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The connection to decide on, with its generation; `None`: decide locally. Starts the
    /// connecting task when none runs (a layer built outside a runtime).
    pub(super) fn connection(self: &Arc<Self>) -> Option<(ClusterConnection, u64)> {
        let mut link = self.link.lock();
        if let LinkState::Up(conn) = &link.state {
            return Some((conn.clone(), link.generation));
        }
        if !link.connecting {
            self.spawn_reconnect(&mut link, false);
        }
        None
    }

    /// Starts the connecting task on the current runtime (none: the next request inside one
    /// starts it); after a failure it first waits `reconnect_after`.
    fn spawn_reconnect(self: &Arc<Self>, link: &mut Link, wait_first: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        link.state = LinkState::Connecting;
        link.connecting = true;
        // Weak: a dropped layer ends the task at its next attempt.
        let limiter = Arc::downgrade(self);
        let pause = self.reconnect_after;
        runtime.spawn(async move {
            let mut wait = wait_first;
            loop {
                if wait {
                    tokio::time::sleep(pause).await;
                }
                wait = true;
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                if limiter.connect().await {
                    return;
                }
            }
        });
    }

    /// One connection attempt; true when it is up.
    async fn connect(&self) -> bool {
        let bound = self.timeout.max(MIN_CONNECT_TIMEOUT);
        let result = tokio::time::timeout(bound, self.client.get_async_connection()).await;
        let mut link = self.link.lock();
        match result {
            Ok(Ok(conn)) => {
                link.generation = link.generation.wrapping_add(1);
                link.state = LinkState::Up(conn);
                link.connecting = false;
                if link.outage {
                    link.outage = false;
                    tracing::info!(
                        "shared rate limits: the Redis Cluster answers again; decisions are shared again"
                    );
                }
                true
            }
            Ok(Err(e)) => {
                self.enter_outage(&mut link, &e.to_string());
                false
            }
            Err(_) => {
                self.enter_outage(&mut link, "connecting timed out");
                false
            }
        }
    }

    fn enter_outage(&self, link: &mut Link, reason: &str) {
        link.state = LinkState::Connecting;
        if !link.outage {
            link.outage = true;
            tracing::warn!(
                reason,
                retry_every = ?self.reconnect_after,
                "shared rate limits: the Redis Cluster is unreachable or too slow; each gateway now applies the limits locally"
            );
        }
    }

    /// Connection `generation` failed: decisions go local, and a new connection is tried after
    /// `reconnect_after`.
    fn fail(self: &Arc<Self>, generation: u64, reason: &str) {
        let mut link = self.link.lock();
        if matches!(link.state, LinkState::Up(_)) && link.generation == generation {
            self.enter_outage(&mut link, reason);
            if !link.connecting {
                self.spawn_reconnect(&mut link, true);
            }
        }
    }

    /// Runs the GCRA script for `key`; `None` (after marking the connection failed) when the
    /// cluster errs or does not answer within the timeout.
    pub(super) async fn decide(
        self: Arc<Self>,
        mut conn: ClusterConnection,
        generation: u64,
        key: String,
        period_ns: u64,
        tolerance_ns: u64,
    ) -> Option<SharedVerdict> {
        // Below a microsecond per request the server's clock cannot tell requests apart.
        let period = period_ns.div_ceil(1_000).clamp(1, MAX_MICROS);
        let tolerance = (tolerance_ns / 1_000).min(MAX_MICROS);
        let mut invocation = GCRA.key(key);
        invocation.arg(period).arg(tolerance);
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut conn),
        )
        .await;
        let micros = |n: i64| u64::try_from(n).unwrap_or(0).saturating_mul(1_000);
        match answer {
            Ok(Ok((admitted, wait, ahead))) => Some(SharedVerdict {
                admitted: admitted == 1,
                wait_ns: micros(wait),
                ahead_ns: micros(ahead),
            }),
            Ok(Err(e)) => {
                self.fail(generation, &e.to_string());
                None
            }
            Err(_) => {
                self.fail(generation, "no answer within the timeout");
                None
            }
        }
    }

    /// Counts one decision taken locally in place of the cluster.
    pub(super) fn count_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub(super) fn status(&self) -> SharedStatus {
        let link = self.link.lock();
        match link.state {
            LinkState::Up(_) => SharedStatus::Shared,
            LinkState::Connecting if link.outage => SharedStatus::Local,
            LinkState::Connecting => SharedStatus::Connecting,
        }
    }
}
