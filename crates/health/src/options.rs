//! Per-registration options: whether a check is critical, its tags and its timeout.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

/// How a registered check takes part in the endpoints.
///
/// Defaults: critical, no tags, timeout and cache TTL taken from
/// [`HealthConfig`](crate::HealthConfig) (`check_timeout`, 500 ms; `cache_ttl`, 1 s).
///
/// - A **critical** check that fails makes `/health/ready` and `/health` fail (503). A
///   non-critical one only ever makes them `warn` (200), like ASP.NET Core's
///   `failureStatus: Degraded`, and is not run by `/health/ready` at all.
/// - **Tags** select checks for groups (`/health/{group}`), e.g. the `replication` tag
///   ([`tags::REPLICATION`](crate::tags::REPLICATION)) puts a check on `/health/replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    pub(crate) critical: bool,
    pub(crate) tags: BTreeSet<Cow<'static, str>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cache_ttl: Option<Duration>,
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
            tags: BTreeSet::new(),
            timeout: None,
            cache_ttl: None,
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

    /// Whether a failure fails readiness.
    pub fn is_critical(&self) -> bool {
        self.critical
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
