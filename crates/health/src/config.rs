//! Configuration of the health endpoints, loadable with serde (durations in humantime form,
//! e.g. `"500ms"`, `"5s"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Configuration of a [`Health`](crate::Health) registry and its endpoints.
///
/// Every field has a default, so `HealthConfig::default()` or an empty TOML table work:
///
/// ```
/// let config: herd_health::HealthConfig = toml::from_str(r#"
///     check_timeout = "300ms"
///     cache_ttl = "2s"
///     show_details = "when-authorized"
///     details_token = "s3cret"
///     groups = { storage = ["datastore"] }
/// "#).unwrap();
/// assert_eq!(config.check_timeout, std::time::Duration::from_millis(300));
/// assert_eq!(config.drain_delay, std::time::Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Timeout of each check run, unless its registration sets one. A run that takes longer is
    /// a `fail` saying "timed out after ...". Default 500 ms: below Kubernetes' 1 s default probe
    /// timeout, so the probe gets the answer instead of timing out itself.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// How long a check's last result is served before a probe runs the check again (unless
    /// its registration sets one). Probes arriving while a run is in flight wait for it instead
    /// of starting their own, so a storm of probes runs each check at most once per TTL.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Consecutive failing runs before a check reports `fail` (earlier ones report `warn`),
    /// unless its registration sets one. Default 1 (fail at once).
    pub failure_threshold: u32,
    /// Consecutive passing runs before a failed check reports healthy again, unless its
    /// registration sets one. Default 1 (recover at once).
    pub success_threshold: u32,
    /// When set, [`Health::spawn_background_refresh`](crate::Health::spawn_background_refresh)
    /// re-runs every check at this interval, so probes never wait for a check. Default: unset
    /// (checks run when a probe finds the cached result older than the TTL).
    #[serde(with = "humantime_serde::option")]
    pub refresh_interval: Option<Duration>,
    /// Whether bodies show the per-check details or only the overall status. Default
    /// [`ShowDetails::Never`], so internals (hosts, errors, lag) don't leak to the world.
    pub show_details: ShowDetails,
    /// The bearer token that unlocks details when `show_details` is `when-authorized`
    /// (`Authorization: Bearer <token>`). Default: unset (details stay hidden).
    pub details_token: Option<String>,
    /// How long [`Health::shutdown_signal`](crate::Health::shutdown_signal) waits between
    /// turning readiness to `fail` and letting the server stop accepting connections, so load
    /// balancers notice first. Default 5 s; 0 in the [development](Self::development) profile.
    /// A second Ctrl-C or SIGTERM during the wait ends it at once.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Path prefix of the health endpoints. Default `/health`.
    pub base_path: String,
    /// Path of the Prometheus endpoint. Default `/metrics`.
    pub metrics_path: String,
    /// Extra groups served at `{base_path}/{name}`: a group runs the checks carrying any of its
    /// tags. `replication` (tag `replication`) always exists. Default: none.
    pub groups: BTreeMap<String, Vec<String>>,
    /// The draft's `serviceId`. Default: unset.
    pub service_id: Option<String>,
    /// The draft's `version` (public version of the service). Default: unset.
    pub version: Option<String>,
    /// The draft's `releaseId`. Default: unset.
    pub release_id: Option<String>,
    /// The draft's `description`. Default: unset.
    pub description: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check_timeout: Duration::from_millis(500),
            cache_ttl: Duration::from_secs(1),
            failure_threshold: 1,
            success_threshold: 1,
            refresh_interval: None,
            show_details: ShowDetails::Never,
            details_token: None,
            drain_delay: Duration::from_secs(5),
            base_path: "/health".to_owned(),
            metrics_path: "/metrics".to_owned(),
            groups: BTreeMap::new(),
            service_id: None,
            version: None,
            release_id: None,
            description: None,
        }
    }
}

impl HealthConfig {
    /// The development profile: the defaults, except that shutdown does not wait for load
    /// balancers (`drain_delay` 0, so Ctrl-C stops the server at once; there is no balancer to
    /// notice on a laptop) and details are shown (`show_details = "always"`, for a local
    /// server only). Never for a deployed service: its balancer needs the drain delay, and
    /// details show hosts and errors.
    ///
    /// ```
    /// let config = if std::env::var_os("HERD_DEV").is_some() {
    ///     herd_health::HealthConfig::development()
    /// } else {
    ///     herd_health::HealthConfig::default()
    /// };
    /// # let _ = config;
    /// assert!(herd_health::HealthConfig::development().drain_delay.is_zero());
    /// ```
    pub fn development() -> Self {
        HealthConfig {
            drain_delay: Duration::ZERO,
            show_details: ShowDetails::Always,
            ..HealthConfig::default()
        }
    }
}

/// Whether health bodies include per-check details (Spring Boot's `show-details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShowDetails {
    /// Only the overall status (and service identity) is shown (default).
    #[default]
    Never,
    /// Details are shown when the request carries `Authorization: Bearer <details_token>`.
    WhenAuthorized,
    /// Details are always shown: only for endpoints that are not reachable from outside.
    Always,
}
