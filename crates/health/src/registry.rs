//! One registered check with its cached outcome: timeouts, panics and single-flight refresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tracing::Instrument;

use crate::check::{CheckResult, ComponentType, HealthCheck, Status};
use crate::metrics::{CHECK_DURATION_SECONDS, CHECK_RUNS_TOTAL, CHECK_STATE};
use crate::options::CheckOptions;

/// One run of a check: its result, how long it took and when it ran.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What the check found (a timeout or panic is a `fail` saying so).
    pub result: CheckResult,
    /// How long the run took (up to the timeout).
    pub duration: Duration,
    /// Wall-clock time the run started, for the draft's `time` field.
    pub time: SystemTime,
    /// Monotonic start of the run, for cache freshness.
    started: Instant,
}

/// A check plus its options, its last outcome and the lock that makes refreshes single-flight.
pub(crate) struct Registered {
    pub(crate) check: Arc<dyn HealthCheck>,
    pub(crate) name: Arc<str>,
    pub(crate) component_type: ComponentType,
    pub(crate) options: CheckOptions,
    timeout: Duration,
    ttl: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    /// Consecutive failures/successes, for the thresholds.
    streak: std::sync::Mutex<Streak>,
    latest: ArcSwapOption<Outcome>,
    /// Held while a run is in flight; waiters share that run's outcome.
    refreshing: tokio::sync::Mutex<()>,
    /// Number of runs stored so far, to tell whether one finished while waiting.
    completed: AtomicU64,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .field("component_type", &self.component_type)
            .field("options", &self.options)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Where a check stands against its failure and success thresholds.
#[derive(Debug, Default)]
struct Streak {
    failures: u32,
    successes: u32,
    /// Reporting `fail` until `success_threshold` passes in a row.
    failed: bool,
    /// The status reported by the last run, to log changes only.
    reported: Option<Status>,
}

impl Streak {
    /// Applies the thresholds to a run's result: early failures are reported as `warn`, and
    /// passes right after a failure keep reporting `fail` until enough of them in a row.
    fn damp(&mut self, result: &mut CheckResult, failure_threshold: u32, success_threshold: u32) {
        if result.status() == Status::Fail {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= failure_threshold {
                self.failed = true;
            } else {
                result.override_status(
                    Status::Warn,
                    format!(
                        "failure {} of {} before the check fails",
                        self.failures, failure_threshold
                    ),
                );
            }
        } else {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.failed && self.successes >= success_threshold {
                self.failed = false;
            } else if self.failed {
                result.override_status(
                    Status::Fail,
                    format!(
                        "recovering: {} of {} passing runs",
                        self.successes, success_threshold
                    ),
                );
            }
        }
    }
}

impl Registered {
    pub(crate) fn new(
        check: Arc<dyn HealthCheck>,
        options: CheckOptions,
        defaults: &crate::config::HealthConfig,
    ) -> Self {
        Registered {
            name: Arc::from(check.name()),
            component_type: check.component_type(),
            timeout: options.timeout.unwrap_or(defaults.check_timeout),
            ttl: options.cache_ttl.unwrap_or(defaults.cache_ttl),
            failure_threshold: options
                .failure_threshold
                .unwrap_or(defaults.failure_threshold)
                .max(1),
            success_threshold: options
                .success_threshold
                .unwrap_or(defaults.success_threshold)
                .max(1),
            streak: std::sync::Mutex::new(Streak::default()),
            options,
            check,
            latest: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
            completed: AtomicU64::new(0),
        }
    }

    /// The last outcome if it is younger than the TTL.
    fn fresh(&self) -> Option<Arc<Outcome>> {
        self.latest
            .load_full()
            .filter(|outcome| outcome.started.elapsed() < self.ttl)
    }

    /// The cached outcome if fresh, else the outcome of a run. Callers that arrive while a run
    /// is in flight wait for it and share its outcome whatever the TTL (single flight), so even
    /// a zero TTL turns a storm of probes into one run.
    pub(crate) async fn current(self: &Arc<Self>) -> Arc<Outcome> {
        if let Some(outcome) = self.fresh() {
            return outcome;
        }
        self.run_or_join(false).await
    }

    /// Runs the check now (the background refresher's entry point), unless a run is already in
    /// flight, in which case its outcome is returned.
    pub(crate) async fn refresh(self: &Arc<Self>) -> Arc<Outcome> {
        self.run_or_join(true).await
    }

    async fn run_or_join(self: &Arc<Self>, force: bool) -> Arc<Outcome> {
        let seen = self.completed.load(Ordering::Acquire);
        let _refreshing = self.refreshing.lock().await;
        if self.completed.load(Ordering::Acquire) != seen {
            // A run finished while we waited for the lock: share it.
            if let Some(outcome) = self.latest.load_full() {
                return outcome;
            }
        }
        if !force && let Some(outcome) = self.fresh() {
            return outcome;
        }
        self.run().await
    }

    /// Runs the check in its own task under the timeout and stores the outcome. The task stores
    /// it even if the caller goes away, and a panic inside the check becomes a `fail`.
    async fn run(self: &Arc<Self>) -> Arc<Outcome> {
        let started = Instant::now();
        let time = SystemTime::now();
        let this = Arc::clone(self);
        let span = tracing::debug_span!("herd.health.check", check = %self.name);
        let task = tokio::spawn(
            async move {
                let result = match tokio::time::timeout(this.timeout, this.check.check()).await {
                    Ok(result) => result,
                    Err(_elapsed) => {
                        CheckResult::fail(format!("timed out after {:?}", this.timeout))
                    }
                };
                this.store(result, started, time)
            }
            .instrument(span),
        );
        match task.await {
            Ok(outcome) => outcome,
            Err(join_error) => {
                let reason = if join_error.is_panic() {
                    "check panicked"
                } else {
                    "check task was cancelled"
                };
                self.store(CheckResult::fail(reason), started, time)
            }
        }
    }

    /// The last outcome, whatever its age.
    pub(crate) fn last(&self) -> Option<Arc<Outcome>> {
        self.latest.load_full()
    }

    fn store(&self, mut result: CheckResult, started: Instant, time: SystemTime) -> Arc<Outcome> {
        let duration = started.elapsed();
        if result.status() != Status::Pass && result.output().is_none() {
            // Say which measurements are the problem, so the check's own entry explains itself.
            let culprits: Vec<String> = result
                .measurements()
                .iter()
                .filter(|measurement| measurement.status != Status::Pass)
                .map(|measurement| match &measurement.component_id {
                    Some(id) => format!("{} of {} ({})", measurement.name, id, measurement.status),
                    None => format!("{} ({})", measurement.name, measurement.status),
                })
                .collect();
            if !culprits.is_empty() {
                result = result.with_output(format!("not passing: {}", culprits.join(", ")));
            }
        }
        let previous = {
            let mut streak = self
                .streak
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            streak.damp(&mut result, self.failure_threshold, self.success_threshold);
            streak.reported.replace(result.status())
        };
        let status = result.status();
        // Log changes only: a check refreshed every few seconds must not flood the logs.
        if previous != Some(status) {
            let output = result.output().unwrap_or("");
            let from = previous.map_or("none", Status::as_str);
            if status == Status::Pass {
                tracing::info!(check = %self.name, from, to = "pass", "health check passing");
            } else {
                tracing::warn!(check = %self.name, from, to = status.as_str(), output, "health check not passing");
            }
        }
        let name = self.name.to_string();
        metrics::histogram!(CHECK_DURATION_SECONDS, "check" => name.clone())
            .record(duration.as_secs_f64());
        metrics::counter!(
            CHECK_RUNS_TOTAL,
            "check" => name.clone(),
            "status" => status.as_str()
        )
        .increment(1);
        // One series per status, exactly one of them 1: every state is present, so a query
        // never has to tell a 0 from a missing series.
        for state in [Status::Pass, Status::Warn, Status::Fail] {
            metrics::gauge!(CHECK_STATE, "check" => name.clone(), "state" => state.as_str())
                .set(if state == status { 1.0 } else { 0.0 });
        }
        let outcome = Arc::new(Outcome {
            result,
            duration,
            time,
            started,
        });
        self.latest.store(Some(Arc::clone(&outcome)));
        self.completed.fetch_add(1, Ordering::AcqRel);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::from_fn;
    use std::sync::atomic::AtomicUsize;

    fn counting(ttl: Duration, delay: Duration) -> (Arc<Registered>, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let check = from_fn("db", move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                CheckResult::pass()
            }
        });
        let registered = Registered::new(
            Arc::new(check),
            CheckOptions::new().cache_ttl(ttl),
            &crate::config::HealthConfig::default(),
        );
        (Arc::new(registered), runs)
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run_even_with_zero_ttl() {
        let (registered, runs) = counting(Duration::ZERO, Duration::from_millis(50));
        let calls = (0..100).map(|_| {
            let registered = Arc::clone(&registered);
            tokio::spawn(async move { registered.current().await })
        });
        for call in futures_util::future::join_all(calls).await {
            assert_eq!(call.unwrap().result.status(), Status::Pass);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stale_results_are_rerun() {
        let (registered, runs) = counting(Duration::from_millis(20), Duration::ZERO);
        registered.current().await;
        registered.current().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        registered.current().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_check_fails_instead_of_taking_the_caller_down() {
        let check = from_fn("boom", || async {
            if std::hint::black_box(true) {
                panic!("check bug");
            }
            CheckResult::pass()
        });
        let registered = Arc::new(Registered::new(
            Arc::new(check),
            CheckOptions::new(),
            &crate::config::HealthConfig::default(),
        ));
        let outcome = registered.current().await;
        assert_eq!(outcome.result.status(), Status::Fail);
        assert_eq!(outcome.result.output(), Some("check panicked"));
    }

    #[test]
    fn thresholds_damp_flapping() {
        let mut streak = Streak::default();
        let mut run = |status: Status| {
            let mut result = CheckResult::with_status(status);
            streak.damp(&mut result, 3, 2);
            result
        };
        let first = run(Status::Fail);
        assert_eq!(first.status(), Status::Warn);
        assert_eq!(
            first.output(),
            Some("failure 1 of 3 before the check fails")
        );
        assert_eq!(run(Status::Fail).status(), Status::Warn);
        assert_eq!(run(Status::Fail).status(), Status::Fail);
        let recovering = run(Status::Pass);
        assert_eq!(recovering.status(), Status::Fail);
        assert_eq!(recovering.output(), Some("recovering: 1 of 2 passing runs"));
        assert_eq!(run(Status::Pass).status(), Status::Pass);
        // A pass resets the failure count.
        assert_eq!(run(Status::Fail).status(), Status::Warn);
        assert_eq!(run(Status::Pass).status(), Status::Pass);
        assert_eq!(run(Status::Fail).status(), Status::Warn);
    }
}
