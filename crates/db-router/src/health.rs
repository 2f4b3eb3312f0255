//! [`RouterCheck`]: a herd-health check for the router (nodes, roles, lag, pools).
//!
//! It reads [`DbRouter::status`] (what the monitor last saw), so it costs no query:
//!
//! - `fail` when no writable primary is known;
//! - per node, a `role` measurement (`fail` for an unreachable primary, `warn` for an
//!   unreachable replica);
//! - per replica, `lag` in bytes and seconds against warn/fail bounds (default: warn at
//!   the router's `max_lag_bytes` / `max_lag`, where the replica stops taking reads; no
//!   fail bound, since reads fall back to the primary);
//! - `warn` when no replica is eligible (every read goes to the primary);
//! - per node, `utilization` of the pool (`warn` from 90 % in use);
//! - WAL positions as text LSNs: `currentLsn` of the write node, `receiveLsn` and
//!   `replayLsn` of each replica.
//!
//! The check tags itself `herd_health::tags::REPLICATION`, so registering it also serves it on
//! `/health/replication`. Register it as a shared dependency (the database is shared by every
//! instance: its failure shows on `/health` but does not fail readiness everywhere at once):
//! `.check_with(RouterCheck::new(router), CheckOptions::new().shared_dependency())`.
//!
//! ```no_run
//! # async fn demo(router: herd_db_router::DbRouter) {
//! use herd_db_router::health::RouterCheck;
//! use herd_health::HealthCheck;
//!
//! let check = RouterCheck::new(router).fail_lag_bytes(Some(256 * 1024 * 1024));
//! let result = check.check().await;
//! println!("{}: {:?}", check.name(), result.status());
//! # }
//! ```

use std::time::Duration;

use herd_health::{CheckResult, ComponentType, HealthCheck, Measurement, Status, async_trait};

use crate::config::Role;
use crate::router::DbRouter;

/// A herd-health check for a [`DbRouter`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RouterCheck {
    router: DbRouter,
    name: String,
    warn_lag_bytes: u64,
    fail_lag_bytes: Option<u64>,
    warn_lag: Duration,
    fail_lag: Option<Duration>,
    warn_pool_utilization: f64,
}

impl RouterCheck {
    /// A check named `database` with the default bounds.
    pub fn new(router: DbRouter) -> Self {
        let config = router.config();
        Self {
            warn_lag_bytes: config.max_lag_bytes,
            fail_lag_bytes: None,
            warn_lag: config.max_lag,
            fail_lag: None,
            warn_pool_utilization: 0.9,
            name: "database".to_string(),
            router,
        }
    }

    /// The check's name (default `database`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Replica lag in bytes from which a replica is `warn` (default: the router's `max_lag_bytes`).
    pub fn warn_lag_bytes(mut self, bytes: u64) -> Self {
        self.warn_lag_bytes = bytes;
        self
    }

    /// Replica lag in bytes from which the check fails (default: none).
    pub fn fail_lag_bytes(mut self, bytes: Option<u64>) -> Self {
        self.fail_lag_bytes = bytes;
        self
    }

    /// Replica time lag from which a replica is `warn` (default: the router's `max_lag`).
    pub fn warn_lag(mut self, lag: Duration) -> Self {
        self.warn_lag = lag;
        self
    }

    /// Replica time lag from which the check fails (default: none).
    pub fn fail_lag(mut self, lag: Option<Duration>) -> Self {
        self.fail_lag = lag;
        self
    }

    /// Share of a pool in use from which it is `warn` (default 0.9).
    pub fn warn_pool_utilization(mut self, share: f64) -> Self {
        self.warn_pool_utilization = share;
        self
    }

    fn lag_status(&self, bytes: u64, lag: Duration) -> Status {
        let fail = self.fail_lag_bytes.is_some_and(|b| bytes > b)
            || self.fail_lag.is_some_and(|l| lag > l);
        if fail {
            Status::Fail
        } else if bytes > self.warn_lag_bytes || lag > self.warn_lag {
            Status::Warn
        } else {
            Status::Pass
        }
    }

    /// Runs the check on the router's current status.
    pub fn evaluate(&self) -> CheckResult {
        let status = self.router.status();
        let mut result = match &status.primary {
            Some(primary) => CheckResult::pass().with_output(format!("primary: {primary}")),
            None => CheckResult::fail("no writable primary reachable: writes fail"),
        };
        let mut replicas = 0;
        for node in &status.nodes {
            let is_replica = !node.is_write_node && node.configured_role != Role::Primary;
            let role_status = match (node.reachable, !is_replica) {
                (true, _) => Status::Pass,
                (false, true) => Status::Fail,
                (false, false) => Status::Warn,
            };
            let mut role = Measurement::new("role", role_status)
                .component_id(&node.name)
                .value(node.observed_role.as_str());
            if let Some(error) = &node.last_error {
                role = role.output(error.clone());
            }
            result.push(role);
            if is_replica {
                replicas += 1;
            }
            // WAL positions, for `/health/replication`: where the write node is, and how far each
            // replica has received and replayed.
            let positions = [
                (
                    "currentLsn",
                    node.current_lsn.filter(|_| node.is_write_node),
                ),
                ("receiveLsn", node.receive_lsn.filter(|_| is_replica)),
                ("replayLsn", node.replay_lsn.filter(|_| is_replica)),
            ];
            for (name, lsn) in positions {
                if let Some(lsn) = lsn {
                    result.push(
                        Measurement::new(name, Status::Pass)
                            .component_id(&node.name)
                            .value(lsn.to_string()),
                    );
                }
            }
            if let (Some(bytes), Some(lag)) = (node.lag_bytes, node.lag) {
                let lag_status = self.lag_status(bytes, lag);
                result.push(
                    Measurement::new("lag", lag_status)
                        .component_id(&node.name)
                        .observed(bytes, "bytes"),
                );
                result.push(
                    Measurement::new("lagTime", lag_status)
                        .component_id(&node.name)
                        .observed(lag.as_secs_f64(), "s"),
                );
            }
            let share = if node.pool_max == 0 {
                0.0
            } else {
                f64::from(node.pool_in_use) / f64::from(node.pool_max)
            };
            let pool_status = if share >= self.warn_pool_utilization {
                Status::Warn
            } else {
                Status::Pass
            };
            result.push(
                Measurement::new("utilization", pool_status)
                    .component_id(&node.name)
                    .observed((share * 100.0).round(), "percent"),
            );
        }
        if replicas > 0 && status.eligible_replicas().is_empty() {
            result.degrade_to(Status::Warn);
            if status.primary.is_some() {
                result = result.with_output("no eligible replica: reads go to the primary");
            }
        }
        result
    }
}

#[async_trait]
impl HealthCheck for RouterCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    /// `replication`: the check is served on `/health/replication` without an option.
    fn tags(&self) -> &[&'static str] {
        &[herd_health::tags::REPLICATION]
    }

    async fn check(&self) -> CheckResult {
        self.evaluate()
    }
}
