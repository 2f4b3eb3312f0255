//! CPU, memory and load-average check through sysinfo.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use sysinfo::System;

use crate::check::{CheckResult, ComponentType, HealthCheck, Measurement, Status};
use crate::error::Error;

/// Thresholds of [`SystemCheck`], in percent and load per CPU. `None` turns a bound off.
///
/// Defaults follow common autoscaling guidance: CPU warns above 80 % (never fails by itself:
/// a busy instance still serves), memory warns above 85 % and fails above 95 %, the one-minute
/// load average warns above 2 per CPU.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemThresholds {
    /// CPU utilisation above which the check warns. Default 80.
    pub cpu_warn_percent: Option<f64>,
    /// CPU utilisation above which the check fails. Default unset.
    pub cpu_fail_percent: Option<f64>,
    /// Memory in use above which the check warns. Default 85.
    pub memory_warn_percent: Option<f64>,
    /// Memory in use above which the check fails. Default 95.
    pub memory_fail_percent: Option<f64>,
    /// One-minute load average per CPU above which the check warns. Default 2.0.
    pub load_warn_per_cpu: Option<f64>,
    /// One-minute load average per CPU above which the check fails. Default unset.
    pub load_fail_per_cpu: Option<f64>,
}

impl Default for SystemThresholds {
    fn default() -> Self {
        SystemThresholds {
            cpu_warn_percent: Some(80.0),
            cpu_fail_percent: None,
            memory_warn_percent: Some(85.0),
            memory_fail_percent: Some(95.0),
            load_warn_per_cpu: Some(2.0),
            load_fail_per_cpu: None,
        }
    }
}

/// The status of `value` against optional warn and fail bounds (above a bound is bad).
pub(crate) fn grade(value: f64, warn: Option<f64>, fail: Option<f64>) -> Status {
    if fail.is_some_and(|fail| value > fail) {
        Status::Fail
    } else if warn.is_some_and(|warn| value > warn) {
        Status::Warn
    } else {
        Status::Pass
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Reports `system:cpuUtilization`, `system:memoryUtilization` (percent), `system:loadAverage`
/// (1, 5 and 15 minutes) and `system:uptime` (seconds) of the machine, graded against
/// [`SystemThresholds`]. Register it non-critical unless the service should leave the
/// balancer when the machine is overloaded.
///
/// CPU utilisation is measured between two consecutive runs (sysinfo needs two samples), so
/// the first run after creation reports the usage since [`new`](Self::new).
pub struct SystemCheck {
    name: String,
    thresholds: SystemThresholds,
    cpus: usize,
    sampler: Mutex<Sampler>,
}

struct Sampler {
    system: System,
    sampled: Instant,
    cpu_percent: f64,
}

impl std::fmt::Debug for SystemCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemCheck")
            .field("name", &self.name)
            .field("thresholds", &self.thresholds)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl SystemCheck {
    /// A check named `system` with the given thresholds.
    ///
    /// # Errors
    ///
    /// [`Error::System`] when the platform gives no system information.
    pub fn new(thresholds: SystemThresholds) -> Result<Self, Error> {
        let mut system = System::new().map_err(|error| Error::System {
            operation: "read system information",
            reason: error.to_string(),
        })?;
        system.refresh_cpu_usage();
        Ok(SystemCheck {
            name: "system".to_owned(),
            thresholds,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            sampler: Mutex::new(Sampler {
                system,
                sampled: Instant::now(),
                cpu_percent: 0.0,
            }),
        })
    }

    /// Renames the check (default `system`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Samples CPU (when enough time has passed for a meaningful figure) and memory.
    fn sample(&self) -> (f64, Option<f64>) {
        let mut sampler = self.sampler.lock().unwrap_or_else(PoisonError::into_inner);
        if sampler.sampled.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            sampler.system.refresh_cpu_usage();
            sampler.cpu_percent = f64::from(sampler.system.global_cpu_usage());
            sampler.sampled = Instant::now();
        }
        sampler.system.refresh_memory();
        let total = sampler.system.total_memory();
        let memory = (total > 0).then(|| {
            let used = total.saturating_sub(sampler.system.available_memory());
            used as f64 * 100.0 / total as f64
        });
        (sampler.cpu_percent, memory)
    }
}

#[async_trait]
impl HealthCheck for SystemCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::System
    }

    async fn check(&self) -> CheckResult {
        let limits = &self.thresholds;
        let (cpu, memory) = self.sample();
        let mut result = CheckResult::pass();
        result.push(
            Measurement::new(
                "cpuUtilization",
                grade(cpu, limits.cpu_warn_percent, limits.cpu_fail_percent),
            )
            .observed(round1(cpu), "percent"),
        );
        match memory {
            Some(memory) => result.push(
                Measurement::new(
                    "memoryUtilization",
                    grade(
                        memory,
                        limits.memory_warn_percent,
                        limits.memory_fail_percent,
                    ),
                )
                .observed(round1(memory), "percent"),
            ),
            None => result.push(
                Measurement::new("memoryUtilization", Status::Warn)
                    .output("total memory reported as 0"),
            ),
        }
        match System::load_average() {
            Ok(load) => {
                let per_cpu = load.one / self.cpus as f64;
                result.push(
                    Measurement::new(
                        "loadAverage",
                        grade(per_cpu, limits.load_warn_per_cpu, limits.load_fail_per_cpu),
                    )
                    .value(vec![load.one, load.five, load.fifteen])
                    .output(format!(
                        "1/5/15-minute load over {} CPUs ({:.2} per CPU)",
                        self.cpus, per_cpu
                    )),
                );
            }
            // Not available everywhere (Windows): not a health problem.
            Err(error) => tracing::debug!(%error, "load average unavailable"),
        }
        if let Ok(uptime) = System::uptime() {
            result.push(Measurement::new("uptime", Status::Pass).observed(uptime, "s"));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grading_uses_the_worst_bound_crossed() {
        assert_eq!(grade(50.0, Some(80.0), Some(95.0)), Status::Pass);
        assert_eq!(grade(85.0, Some(80.0), Some(95.0)), Status::Warn);
        assert_eq!(grade(99.0, Some(80.0), Some(95.0)), Status::Fail);
        assert_eq!(grade(99.0, None, None), Status::Pass);
    }

    #[tokio::test]
    async fn reports_real_cpu_memory_and_load() {
        let check = SystemCheck::new(SystemThresholds::default()).unwrap();
        let result = check.check().await;
        let names: Vec<&str> = result.measurements().iter().map(|m| &*m.name).collect();
        assert!(names.contains(&"cpuUtilization"), "{names:?}");
        assert!(names.contains(&"loadAverage"), "{names:?}");
        let memory = result
            .measurements()
            .iter()
            .find(|m| m.name == "memoryUtilization")
            .unwrap();
        let percent = memory.observed_value.as_ref().unwrap().as_f64().unwrap();
        assert!(percent > 0.0 && percent <= 100.0, "memory {percent}");

        // Thresholds of zero turn a healthy machine into a failing one.
        let strict = SystemCheck::new(SystemThresholds {
            memory_fail_percent: Some(0.0),
            ..SystemThresholds::default()
        })
        .unwrap();
        assert_eq!(strict.check().await.status(), Status::Fail);
    }
}
