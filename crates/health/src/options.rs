//! Per-registration options: whether a check is critical, its tags and its timeout.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

/// How a registered check takes part in the endpoints.
///
/// Defaults: critical, no tags, timeout, cache TTL and thresholds taken from
/// [`HealthConfig`](crate::HealthConfig) (`check_timeout`, 500 ms; `cache_ttl`, 1 s;
/// `failure_threshold` and `success_threshold`, 1).
///
/// - A **critical** check that fails makes `/health/ready` and `/health` fail (503). A
///   non-critical one only ever makes them `warn` (200), like ASP.NET Core's
///   `failureStatus: Degraded`, and is not run by `/health/ready` at all.
/// - A **shared dependency** (the database cluster, the Redis Cluster: one that every instance
///   of the service uses) fails `/health` like a critical check but never `/health/ready`: when
///   it fails, it fails for every instance at once, and taking them all out of the balancer
///   would turn a failover the application rides out (reads from replicas, retried sessions)
///   into a full outage. Kubernetes' probe guidance says the same: readiness should not check
///   what all replicas share.
/// - **Tags** select checks for groups (`/health/{group}`), e.g. the `replication` tag
///   ([`tags::REPLICATION`](crate::tags::REPLICATION)) puts a check on `/health/replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    pub(crate) critical: bool,
    pub(crate) shared: bool,
    pub(crate) tags: BTreeSet<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cache_ttl: Option<Duration>,
    pub(crate) failure_threshold: Option<u32>,
    pub(crate) success_threshold: Option<u32>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions::new()
    }
}

impl CheckOptions {
    /// Critical, no tags, the registry's default timeout and TTL.
    pub fn new() -> Self {
        CheckOptions {
            critical: true,
            shared: false,
            tags: BTreeSet::new(),
            timeout: None,
            cache_ttl: None,
            failure_threshold: None,
            success_threshold: None,
        }
    }

    /// Sets whether a failure of this check fails readiness (default `true`).
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// Marks the check as informational: it shows in `/health` as at worst `warn` and is not
    /// part of `/health/ready`.
    pub fn non_critical(self) -> Self {
        self.critical(false)
    }

    /// Marks the check as one of a dependency every instance shares: critical for `/health`,
    /// not part of `/health/ready` (see the [type docs](Self)).
    pub fn shared_dependency(mut self) -> Self {
        self.critical = true;
        self.shared = true;
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<Cow<'static, str>>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Adds several tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Cow<'static, str>>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets this check's timeout; a run that takes longer is a `fail` saying
    /// "timed out after ...".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets how long this check's last result is served before the check runs again.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = Some(ttl);
        self
    }

    /// Sets how many consecutive failing runs it takes before the check reports `fail`
    /// (earlier failures report `warn`), like a load balancer's unhealthy threshold or a
    /// Docker health check's `retries`: one slow query does not take the instance out.
    /// Values below 1 count as 1.
    pub fn failure_threshold(mut self, runs: u32) -> Self {
        self.failure_threshold = Some(runs.max(1));
        self
    }

    /// Sets how many consecutive passing runs a failed check needs before it reports healthy
    /// again (until then it keeps reporting `fail`), like a load balancer's healthy threshold:
    /// a flapping dependency does not flap readiness. Values below 1 count as 1.
    pub fn success_threshold(mut self, runs: u32) -> Self {
        self.success_threshold = Some(runs.max(1));
        self
    }

    /// Whether a failure fails `/health` (and, unless it is a shared dependency, readiness).
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// Whether a failure fails readiness: critical and not a shared dependency.
    pub fn fails_readiness(&self) -> bool {
        self.critical && !self.shared
    }

    /// Whether the check carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains(tag)
    }

    /// The tags, sorted.
    pub fn tag_list(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|tag| tag.as_ref())
    }
}

/// Tag names herd's crates agree on.
pub mod tags {
    /// Checks carrying this tag are served on `/health/replication` (per replica LSNs, lag,
    /// status); herd-db-router's replication check uses it.
    pub const REPLICATION: &str = "replication";
    /// Checks of data stores (PostgreSQL, Redis).
    pub const DATASTORE: &str = "datastore";
    /// Checks of the machine (CPU, memory, disk).
    pub const SYSTEM: &str = "system";
}
