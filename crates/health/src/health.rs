//! [`Health`]: the registry of checks, the probe states (started, draining, broken) and the
//! evaluation of each endpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::check::{HealthCheck, Status};
use crate::config::HealthConfig;
use crate::error::Error;
use crate::metrics::DRAINING;
use crate::options::{CheckOptions, tags};
use crate::registry::Registered;
use crate::report::{CheckEntry, HealthReport};

/// The health of one service: its registered checks and its probe states, shared by cloning
/// (an `Arc` inside).
///
/// | endpoint | what it evaluates | fails when |
/// |---|---|---|
/// | [`live`](Self::live) | the process only, never dependencies | the app called [`mark_broken`](Self::mark_broken) |
/// | [`ready`](Self::ready) | critical checks, shared dependencies excepted | draining, not yet started, or such a check fails |
/// | [`startup`](Self::startup) | the started flag | [`mark_started`](Self::mark_started) not called yet |
/// | [`deep`](Self::deep) | every check | a critical check fails (non-critical failures only `warn`) |
/// | [`group`](Self::group) | checks carrying the group's tags | as `deep`, over those checks |
///
/// Liveness never looks at dependencies, as Spring Boot and Kubernetes recommend: a database
/// outage must not make the orchestrator restart every copy of the service.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    config: HealthConfig,
    checks: Vec<Arc<Registered>>,
    /// Group name -> tags; always includes `replication`.
    groups: BTreeMap<String, Vec<String>>,
    started: AtomicBool,
    draining: AtomicBool,
    broken: ArcSwapOption<String>,
    booted: Instant,
    /// The deep report after each background refresh (ASP.NET Core's health publishers).
    published: tokio::sync::watch::Sender<Option<Arc<HealthReport>>>,
    #[cfg(feature = "prometheus")]
    metrics: Option<crate::prometheus::PrometheusMetrics>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.inner.checks)
            .field("groups", &self.inner.groups)
            .field("started", &self.is_started())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

/// The fixed probes, for [`Health::report`] and the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `/health/live`.
    Live,
    /// `/health/ready`.
    Ready,
    /// `/health/startup`.
    Startup,
    /// `/health`.
    Deep,
}

/// Builds a [`Health`]; see [`Health::builder`].
#[must_use]
pub struct HealthBuilder {
    config: HealthConfig,
    checks: Vec<(Arc<dyn HealthCheck>, CheckOptions)>,
    started: bool,
    #[cfg(feature = "prometheus")]
    metrics: Option<crate::prometheus::PrometheusMetrics>,
}

impl fmt::Debug for HealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(check, _)| check.name()).collect();
        f.debug_struct("HealthBuilder")
            .field("config", &self.config)
            .field("checks", &names)
            .finish_non_exhaustive()
    }
}

impl HealthBuilder {
    /// Replaces the configuration (default [`HealthConfig::default`]).
    pub fn config(mut self, config: HealthConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers a critical check with the default timeout and TTL.
    pub fn check(self, check: impl HealthCheck) -> Self {
        self.check_with(check, CheckOptions::new())
    }

    /// Registers a check with explicit options (critical or not, tags, timeout, TTL).
    pub fn check_with(self, check: impl HealthCheck, options: CheckOptions) -> Self {
        self.check_arc(Arc::new(check), options)
    }

    /// Registers a shared check object. The tags the check carries itself
    /// ([`HealthCheck::tags`]) are added to `options`' tags.
    pub fn check_arc(mut self, check: Arc<dyn HealthCheck>, options: CheckOptions) -> Self {
        let options = options.tags(check.tags().iter().copied());
        self.checks.push((check, options));
        self
    }

    /// Starts in the started state, for services with nothing to warm up: `/health/startup`
    /// passes at once and readiness depends on the checks only. By default a service is not
    /// started until it calls [`Health::mark_started`].
    pub fn started(mut self, started: bool) -> Self {
        self.started = started;
        self
    }

    /// Serves `/metrics` from this Prometheus recorder handle.
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn metrics(mut self, metrics: crate::prometheus::PrometheusMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the configuration and the check names and builds the registry.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateCheck`] when two checks share a name, [`Error::InvalidConfig`] for a
    /// path that does not start with `/` or a group that shadows a built-in endpoint, and
    /// [`Error::ZeroDuration`] for a zero `check_timeout` or `refresh_interval`.
    pub fn build(self) -> Result<Health, Error> {
        crate::metrics::describe();
        let config = self.config;
        validate(&config)?;
        let mut checks: Vec<Arc<Registered>> = Vec::with_capacity(self.checks.len());
        for (check, options) in self.checks {
            if checks.iter().any(|known| &*known.name == check.name()) {
                return Err(Error::DuplicateCheck {
                    name: check.name().to_owned(),
                });
            }
            checks.push(Arc::new(Registered::new(check, options, &config)));
        }
        let mut groups = config.groups.clone();
        groups
            .entry(tags::REPLICATION.to_owned())
            .or_insert_with(|| vec![tags::REPLICATION.to_owned()]);
        metrics::gauge!(DRAINING).set(0.0);
        Ok(Health {
            inner: Arc::new(Inner {
                config,
                checks,
                groups,
                started: AtomicBool::new(self.started),
                draining: AtomicBool::new(false),
                broken: ArcSwapOption::empty(),
                booted: Instant::now(),
                published: tokio::sync::watch::Sender::new(None),
                #[cfg(feature = "prometheus")]
                metrics: self.metrics,
            }),
        })
    }
}

fn validate(config: &HealthConfig) -> Result<(), Error> {
    for (field, path) in [
        ("base_path", &config.base_path),
        ("metrics_path", &config.metrics_path),
    ] {
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            return Err(Error::InvalidConfig {
                field,
                reason: format!("{path:?} must start with '/' and not end with '/'"),
            });
        }
        if path.contains(['{', '}', '*']) {
            return Err(Error::InvalidConfig {
                field,
                reason: format!("{path:?} must not contain route parameters ('{{', '}}', '*')"),
            });
        }
    }
    let base = config.base_path.trim_end_matches('/');
    let taken = ["", "/live", "/ready", "/startup"]
        .iter()
        .map(|endpoint| format!("{base}{endpoint}"))
        .any(|path| path == config.metrics_path || (path.is_empty() && config.metrics_path == "/"));
    if taken {
        return Err(Error::InvalidConfig {
            field: "metrics_path",
            reason: format!(
                "{:?} is already a health endpoint under {:?}",
                config.metrics_path, config.base_path
            ),
        });
    }
    if config.check_timeout.is_zero() {
        return Err(Error::ZeroDuration {
            field: "check_timeout",
            value: config.check_timeout,
        });
    }
    if let Some(interval) = config
        .refresh_interval
        .filter(|interval| interval.is_zero())
    {
        return Err(Error::ZeroDuration {
            field: "refresh_interval",
            value: interval,
        });
    }
    if config.show_details == crate::config::ShowDetails::WhenAuthorized
        && config.details_token.as_deref().is_none_or(str::is_empty)
    {
        return Err(Error::InvalidConfig {
            field: "details_token",
            reason: "show_details = when-authorized needs a non-empty token".to_owned(),
        });
    }
    for name in config.groups.keys() {
        if matches!(name.as_str(), "live" | "ready" | "startup")
            || name.is_empty()
            || name.contains('/')
        {
            return Err(Error::InvalidConfig {
                field: "groups",
                reason: format!(
                    "group name {name:?} must be one path segment other than live, ready and startup"
                ),
            });
        }
    }
    Ok(())
}

impl Health {
    /// A builder with the default configuration and no checks.
    pub fn builder() -> HealthBuilder {
        HealthBuilder {
            config: HealthConfig::default(),
            checks: Vec::new(),
            started: false,
            #[cfg(feature = "prometheus")]
            metrics: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &HealthConfig {
        &self.inner.config
    }

    /// Marks startup as finished: `/health/startup` passes and readiness may pass from now on.
    pub fn mark_started(&self) {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            tracing::info!("startup finished; readiness now follows the critical checks");
        }
    }

    /// Whether [`mark_started`](Self::mark_started) has been called.
    pub fn is_started(&self) -> bool {
        self.inner.started.load(Ordering::Acquire)
    }

    /// Starts draining: readiness fails from this moment (without running checks) so load
    /// balancers and Kubernetes stop sending traffic, while liveness keeps passing so the
    /// process is not killed before in-flight requests finish. Idempotent.
    pub fn drain(&self) {
        if !self.inner.draining.swap(true, Ordering::AcqRel) {
            tracing::info!("draining: readiness now fails");
            metrics::gauge!(DRAINING).set(1.0);
        }
    }

    /// Whether [`drain`](Self::drain) has been called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Marks the process as broken beyond repair (Spring Boot's `LivenessState.BROKEN`), e.g.
    /// after detecting a deadlock or a poisoned internal state: liveness fails so the
    /// orchestrator restarts the process.
    pub fn mark_broken(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(%reason, "process marked broken; liveness now fails");
        self.inner.broken.store(Some(Arc::new(reason)));
    }

    /// The reason given to [`mark_broken`](Self::mark_broken), if any.
    pub fn broken_reason(&self) -> Option<Arc<String>> {
        self.inner.broken.load_full()
    }

    /// The names of the groups served at `{base_path}/{name}` (always includes `replication`).
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.inner.groups.keys().map(String::as_str)
    }

    /// The registered check names with their options, in registration order.
    pub fn checks(&self) -> impl Iterator<Item = (&str, &CheckOptions)> {
        self.inner
            .checks
            .iter()
            .map(|registered| (&*registered.name, &registered.options))
    }

    /// Liveness: the process only.
    pub fn live(&self) -> HealthReport {
        self.live_report(true)
    }

    /// Readiness: draining, started and the critical checks (cached per their TTL).
    pub async fn ready(&self) -> HealthReport {
        self.report(Probe::Ready, true).await
    }

    /// Startup: whether the app has marked itself started.
    pub fn startup(&self) -> HealthReport {
        self.startup_report(true)
    }

    /// Deep health: every check.
    pub async fn deep(&self) -> HealthReport {
        self.report(Probe::Deep, true).await
    }

    /// A group's health, or `None` if there is no such group or no check carries any of its
    /// tags (an empty group answers 404 over HTTP: passing would claim health nothing checked).
    pub async fn group(&self, name: &str) -> Option<HealthReport> {
        self.group_report(name, true).await
    }

    /// The report of a probe, with or without per-check details.
    pub async fn report(&self, probe: Probe, details: bool) -> HealthReport {
        match probe {
            Probe::Live => self.live_report(details),
            Probe::Startup => self.startup_report(details),
            Probe::Ready => self.ready_report(details).await,
            Probe::Deep => {
                let mut report = self.evaluate(|_| true, details).await;
                let not_serving = self.not_serving_reason();
                if let Some(reason) = not_serving {
                    // The checks may be fine, but the instance is not taking traffic.
                    report.status = report.status.max(Status::Warn);
                    if details {
                        report.output = Some(reason.to_owned());
                    }
                }
                report
            }
        }
    }

    /// A group's report with or without details, or `None` if there is no such group or no
    /// check carries any of its tags.
    pub async fn group_report(&self, name: &str, details: bool) -> Option<HealthReport> {
        let group_tags = self.inner.groups.get(name)?;
        let in_group =
            |registered: &Registered| group_tags.iter().any(|tag| registered.options.has_tag(tag));
        if !self
            .inner
            .checks
            .iter()
            .any(|registered| in_group(registered))
        {
            return None;
        }
        let report = self.evaluate(in_group, details).await;
        Some(report)
    }

    /// Runs every check now, concurrently, ignoring cached results (background refresh).
    pub async fn refresh_all(&self) {
        let runs = self
            .inner
            .checks
            .iter()
            .map(|registered| registered.refresh());
        futures_util::future::join_all(runs).await;
    }

    /// The last outcome of the check called `name`, however old, or `None` if it never ran
    /// (or no such check exists). Does not run the check.
    pub fn last_outcome(&self, name: &str) -> Option<Arc<crate::registry::Outcome>> {
        self.inner
            .checks
            .iter()
            .find(|registered| &*registered.name == name)
            .and_then(|registered| registered.last())
    }

    /// Receives the deep report (with details) after every background refresh, to publish it
    /// elsewhere (logs, a status page, a message bus), like ASP.NET Core's health check
    /// publishers. Holds `None` until the first refresh.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<HealthReport>>> {
        self.inner.published.subscribe()
    }

    /// Spawns a task that re-runs every check each `refresh_interval` (from the config), so
    /// probes are answered from results at most one interval old without waiting for a check,
    /// and publishes the deep report to [`subscribe`](Self::subscribe)rs, logging each change
    /// of the overall status. The task stops when the last clone of this `Health` is dropped.
    /// Returns `None` when `refresh_interval` is not configured.
    ///
    /// # Errors
    ///
    /// [`Error::NoRuntime`] outside a Tokio runtime.
    pub fn spawn_background_refresh(&self) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
        let Some(interval) = self.inner.config.refresh_interval else {
            return Ok(None);
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            operation: "Health::spawn_background_refresh",
        })?;
        let weak = Arc::downgrade(&self.inner);
        Ok(Some(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                let health = Health { inner };
                health.refresh_all().await;
                health.publish().await;
            }
        })))
    }

    async fn publish(&self) {
        let report = Arc::new(self.report(Probe::Deep, true).await);
        let previous = self.inner.published.send_replace(Some(Arc::clone(&report)));
        let before = previous.map(|previous| previous.status);
        if before != Some(report.status) {
            tracing::info!(
                from = before.map_or("none", Status::as_str),
                to = report.status.as_str(),
                "overall health changed"
            );
        }
    }

    #[cfg(feature = "prometheus")]
    pub(crate) fn prometheus(&self) -> Option<&crate::prometheus::PrometheusMetrics> {
        self.inner.metrics.as_ref()
    }

    fn not_serving_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining: the service is shutting down")
        } else if !self.is_started() {
            Some("not started: startup has not finished")
        } else {
            None
        }
    }

    fn live_report(&self, details: bool) -> HealthReport {
        let broken = self.broken_reason();
        let status = if broken.is_some() {
            Status::Fail
        } else {
            Status::Pass
        };
        let mut report = self.identified(status, details);
        if details {
            report.output = broken.map(|reason| reason.to_string());
            let time = humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now())
                .to_string();
            report.checks.insert(
                "uptime".to_owned(),
                vec![CheckEntry::system(
                    self.inner.booted.elapsed().as_secs().into(),
                    "s",
                    time,
                )],
            );
        }
        report
    }

    fn startup_report(&self, details: bool) -> HealthReport {
        if self.is_started() {
            self.identified(Status::Pass, details)
        } else {
            let mut report = self.identified(Status::Fail, details);
            if details {
                report.output = Some("not started: startup has not finished".to_owned());
            }
            report
        }
    }

    async fn ready_report(&self, details: bool) -> HealthReport {
        if let Some(report) = self.not_ready_report(details) {
            return report;
        }
        self.evaluate(|registered| registered.options.fails_readiness(), details)
            .await
    }

    /// Readiness while starting or draining: answered at once, without touching dependencies,
    /// since such an instance must not take traffic whatever its checks say.
    fn not_ready_report(&self, details: bool) -> Option<HealthReport> {
        let reason = self.not_serving_reason()?;
        let mut report = self.identified(Status::Fail, details);
        if details {
            report.output = Some(reason.to_owned());
        }
        Some(report)
    }

    /// The report of a probe that needs no check to run (liveness, startup, readiness while
    /// starting or draining), or `None` when checks must run, so the HTTP service answers the
    /// frequent probes without an allocated future.
    pub(crate) fn report_now(&self, probe: Probe, details: bool) -> Option<HealthReport> {
        match probe {
            Probe::Live => Some(self.live_report(details)),
            Probe::Startup => Some(self.startup_report(details)),
            Probe::Ready => self.not_ready_report(details),
            Probe::Deep => None,
        }
    }

    /// Runs (or reads the cache of) the selected checks concurrently and aggregates them: the
    /// worst status of the critical checks, and at most `warn` from the others.
    async fn evaluate(&self, select: impl Fn(&Registered) -> bool, details: bool) -> HealthReport {
        let selected: Vec<&Arc<Registered>> = self
            .inner
            .checks
            .iter()
            .filter(|registered| select(registered))
            .collect();
        let outcomes =
            futures_util::future::join_all(selected.iter().map(|registered| registered.current()))
                .await;
        let mut report = self.identified(Status::Pass, details);
        for (registered, outcome) in selected.into_iter().zip(outcomes) {
            let status = outcome.result.status();
            let contribution = if registered.options.is_critical() {
                status
            } else {
                status.min(Status::Warn)
            };
            report.status = report.status.max(contribution);
            if details {
                report.add_outcome(registered, &outcome);
            }
        }
        report
    }

    /// A report carrying the service identity from the configuration.
    fn identified(&self, status: Status, details: bool) -> HealthReport {
        let config = &self.inner.config;
        let mut report = HealthReport::new(status);
        report.service_id.clone_from(&config.service_id);
        report.description.clone_from(&config.description);
        if details {
            // Versions help attackers pick exploits: only shown with details.
            report.version.clone_from(&config.version);
            report.release_id.clone_from(&config.release_id);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{CheckResult, from_fn};
    use std::time::Duration;

    fn fixed(name: &'static str, status: Status) -> impl HealthCheck {
        from_fn(
            name,
            move || async move { CheckResult::with_status(status) },
        )
    }

    #[tokio::test]
    async fn critical_failures_fail_and_others_only_warn() {
        let health = Health::builder()
            .started(true)
            .check(fixed("db", Status::Pass))
            .check_with(
                fixed("search", Status::Fail),
                CheckOptions::new().non_critical(),
            )
            .build()
            .unwrap();
        // Readiness ignores the non-critical check entirely.
        assert_eq!(health.ready().await.status, Status::Pass);
        let deep = health.deep().await;
        assert_eq!(deep.status, Status::Warn);
        assert_eq!(deep.checks["search:responseTime"][0].status, Status::Fail);

        let failing = Health::builder()
            .started(true)
            .check(fixed("db", Status::Fail))
            .check(fixed("cache", Status::Warn))
            .build()
            .unwrap();
        assert_eq!(failing.ready().await.status, Status::Fail);
        assert_eq!(failing.deep().await.status, Status::Fail);
    }

    #[tokio::test]
    async fn a_shared_dependency_fails_deep_health_but_not_readiness() {
        let health = Health::builder()
            .started(true)
            .check(fixed("cache", Status::Pass))
            .check_with(
                fixed("database", Status::Fail),
                CheckOptions::new().shared_dependency(),
            )
            .build()
            .unwrap();
        assert_eq!(health.ready().await.status, Status::Pass);
        assert_eq!(health.deep().await.status, Status::Fail);
        assert!(CheckOptions::new().shared_dependency().is_critical());
        assert!(!CheckOptions::new().shared_dependency().fails_readiness());
        assert!(CheckOptions::new().fails_readiness());
    }

    #[tokio::test]
    async fn readiness_waits_for_startup_and_fails_while_draining() {
        let health = Health::builder()
            .check(fixed("db", Status::Pass))
            .build()
            .unwrap();
        assert_eq!(health.startup().status, Status::Fail);
        assert_eq!(health.ready().await.status, Status::Fail);
        health.mark_started();
        assert_eq!(health.startup().status, Status::Pass);
        assert_eq!(health.ready().await.status, Status::Pass);
        health.drain();
        let ready = health.ready().await;
        assert_eq!(ready.status, Status::Fail);
        assert_eq!(
            ready.output.as_deref(),
            Some("draining: the service is shutting down")
        );
        assert_eq!(health.live().status, Status::Pass);
        health.mark_broken("deadlock in the job scheduler");
        assert_eq!(health.live().status, Status::Fail);
    }

    #[tokio::test]
    async fn a_slow_check_times_out_as_a_failure_without_delaying_others() {
        let slow = from_fn("slow", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            CheckResult::pass()
        });
        let health = Health::builder()
            .started(true)
            .check_with(slow, CheckOptions::new().timeout(Duration::from_millis(50)))
            .check(fixed("fast", Status::Pass))
            .build()
            .unwrap();
        let report = health.ready().await;
        assert_eq!(report.status, Status::Fail);
        let slow = &report.checks["slow:responseTime"][0];
        assert_eq!(slow.output.as_deref(), Some("timed out after 50ms"));
        assert_eq!(report.checks["fast:responseTime"][0].status, Status::Pass);
    }

    #[tokio::test]
    async fn groups_select_by_tag() {
        let health = Health::builder()
            .config(HealthConfig {
                groups: [("storage".to_owned(), vec!["datastore".to_owned()])].into(),
                ..HealthConfig::default()
            })
            .check_with(
                fixed("postgres", Status::Warn),
                CheckOptions::new().tags([tags::DATASTORE, tags::REPLICATION]),
            )
            .check(fixed("jobs", Status::Fail))
            .build()
            .unwrap();
        let storage = health.group("storage").await.unwrap();
        assert_eq!(storage.status, Status::Warn);
        assert_eq!(storage.checks.len(), 1);
        let replication = health.group("replication").await.unwrap();
        assert!(replication.checks.contains_key("postgres:responseTime"));
        assert!(health.group("nope").await.is_none());
    }

    /// A check that tags itself, as herd-db-router's `RouterCheck` does.
    struct SelfTagged;

    #[async_trait::async_trait]
    impl HealthCheck for SelfTagged {
        fn name(&self) -> &str {
            "database"
        }

        fn tags(&self) -> &[&'static str] {
            &[tags::REPLICATION]
        }

        async fn check(&self) -> crate::CheckResult {
            crate::CheckResult::pass()
        }
    }

    #[tokio::test]
    async fn empty_groups_are_absent_and_checks_bring_their_own_tags() {
        let untagged = Health::builder()
            .config(HealthConfig {
                groups: [("storage".to_owned(), vec!["datastore".to_owned()])].into(),
                ..HealthConfig::default()
            })
            .check(fixed("jobs", Status::Pass))
            .build()
            .unwrap();
        assert!(
            untagged.group("replication").await.is_none(),
            "an empty group must not pass"
        );
        assert!(untagged.group("storage").await.is_none());

        let tagged = Health::builder()
            .check_with(SelfTagged, CheckOptions::new().tag(tags::DATASTORE))
            .build()
            .unwrap();
        let options = tagged.checks().next().unwrap().1;
        assert!(options.has_tag(tags::REPLICATION) && options.has_tag(tags::DATASTORE));
        let replication = tagged.group("replication").await.unwrap();
        assert!(replication.checks.contains_key("database:responseTime"));
    }

    #[test]
    fn bad_registrations_are_rejected_by_name() {
        let duplicate = Health::builder()
            .check(fixed("db", Status::Pass))
            .check(fixed("db", Status::Pass))
            .build();
        assert!(matches!(duplicate, Err(Error::DuplicateCheck { name }) if name == "db"));
        let bad_path = Health::builder()
            .config(HealthConfig {
                base_path: "health".to_owned(),
                ..HealthConfig::default()
            })
            .build();
        assert!(matches!(
            bad_path,
            Err(Error::InvalidConfig {
                field: "base_path",
                ..
            })
        ));
        let tokenless = Health::builder()
            .config(HealthConfig {
                show_details: crate::config::ShowDetails::WhenAuthorized,
                ..HealthConfig::default()
            })
            .build();
        assert!(matches!(
            tokenless,
            Err(Error::InvalidConfig {
                field: "details_token",
                ..
            })
        ));
        let clash = Health::builder()
            .config(HealthConfig {
                metrics_path: "/health/live".to_owned(),
                ..HealthConfig::default()
            })
            .build();
        assert!(matches!(
            clash,
            Err(Error::InvalidConfig {
                field: "metrics_path",
                ..
            })
        ));
        let shadowing = Health::builder()
            .config(HealthConfig {
                groups: [("ready".to_owned(), vec![])].into(),
                ..HealthConfig::default()
            })
            .build();
        assert!(matches!(
            shadowing,
            Err(Error::InvalidConfig {
                field: "groups",
                ..
            })
        ));
    }
}
