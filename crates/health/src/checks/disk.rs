//! Free disk space check through sysinfo.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use sysinfo::{DiskRefreshKind, Disks};

use crate::check::{CheckResult, ComponentType, HealthCheck, Measurement, Status};

/// Thresholds of [`DiskSpaceCheck`]: the check warns or fails when free space falls *below*
/// a bound, in percent of the filesystem or in bytes. `None` turns a bound off.
///
/// Defaults: warn below 10 %, fail below 5 %, no byte bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskThresholds {
    /// Free percentage below which the check warns. Default 10.
    pub warn_below_percent: Option<f64>,
    /// Free percentage below which the check fails. Default 5.
    pub fail_below_percent: Option<f64>,
    /// Free bytes below which the check warns. Default unset.
    pub warn_below_bytes: Option<u64>,
    /// Free bytes below which the check fails. Default unset (Spring Boot's disk-space
    /// indicator uses 10 MiB).
    pub fail_below_bytes: Option<u64>,
}

impl Default for DiskThresholds {
    fn default() -> Self {
        DiskThresholds {
            warn_below_percent: Some(10.0),
            fail_below_percent: Some(5.0),
            warn_below_bytes: None,
            fail_below_bytes: None,
        }
    }
}

impl DiskThresholds {
    fn grade(&self, free_bytes: u64, free_percent: f64) -> Status {
        let below = |bound: Option<f64>, value: f64| bound.is_some_and(|bound| value < bound);
        let below_bytes = |bound: Option<u64>| bound.is_some_and(|bound| free_bytes < bound);
        if below(self.fail_below_percent, free_percent) || below_bytes(self.fail_below_bytes) {
            Status::Fail
        } else if below(self.warn_below_percent, free_percent) || below_bytes(self.warn_below_bytes)
        {
            Status::Warn
        } else {
            Status::Pass
        }
    }
}

/// Reports `disk:freeSpace` (bytes) for the filesystem holding each watched path, graded
/// against [`DiskThresholds`]; the `componentId` is the path and the output says the
/// percentage and the mount point.
///
/// The filesystem query runs on the blocking pool, so a hung network mount cannot stall the
/// runtime (the registry's timeout then reports it).
#[derive(Debug, Clone)]
pub struct DiskSpaceCheck {
    name: String,
    paths: Vec<PathBuf>,
    thresholds: DiskThresholds,
}

impl DiskSpaceCheck {
    /// A check named `disk` watching `path` (more with [`path`](Self::path)).
    pub fn new(path: impl Into<PathBuf>, thresholds: DiskThresholds) -> Self {
        DiskSpaceCheck {
            name: "disk".to_owned(),
            paths: vec![path.into()],
            thresholds,
        }
    }

    /// Watches one more path.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.paths.push(path.into());
        self
    }

    /// Renames the check (default `disk`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// The filesystem holding `path`: the disk with the longest mount point that prefixes it.
fn measure(disks: &Disks, path: &Path, thresholds: &DiskThresholds) -> Measurement {
    let shown = path.display().to_string();
    let resolved = match path.canonicalize() {
        Ok(resolved) => resolved,
        Err(error) => {
            return Measurement::new("freeSpace", Status::Fail)
                .component_id(shown.clone())
                .output(format!("cannot resolve {shown}: {error}"));
        }
    };
    let Some(disk) = disks
        .into_iter()
        .filter(|disk| resolved.starts_with(disk.mount_point()))
        .max_by_key(|disk| disk.mount_point().as_os_str().len())
    else {
        return Measurement::new("freeSpace", Status::Fail)
            .component_id(shown.clone())
            .output(format!("no mounted filesystem holds {shown}"));
    };
    let free = disk.available_space();
    let total = disk.total_space();
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    Measurement::new("freeSpace", thresholds.grade(free, percent))
        .component_id(shown)
        .observed(free, "bytes")
        .output(format!(
            "{:.1}% of {} bytes free on {}",
            percent,
            total,
            disk.mount_point().display()
        ))
}

#[async_trait]
impl HealthCheck for DiskSpaceCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::System
    }

    async fn check(&self) -> CheckResult {
        let paths = self.paths.clone();
        let thresholds = self.thresholds.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let disks = Disks::new_with_refreshed_list_specifics(
                DiskRefreshKind::nothing().with_storage(),
            )?;
            Ok::<_, sysinfo::Error>(
                paths
                    .iter()
                    .map(|path| measure(&disks, path, &thresholds))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        match measured {
            Ok(Ok(measurements)) => measurements
                .into_iter()
                .fold(CheckResult::pass(), CheckResult::with_measurement),
            Ok(Err(error)) => CheckResult::fail(format!("cannot list filesystems: {error}")),
            Err(error) => CheckResult::fail(format!("filesystem query task failed: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_grade_by_percent_and_bytes() {
        let limits = DiskThresholds {
            fail_below_bytes: Some(1024),
            ..DiskThresholds::default()
        };
        assert_eq!(limits.grade(1 << 30, 50.0), Status::Pass);
        assert_eq!(limits.grade(1 << 30, 8.0), Status::Warn);
        assert_eq!(limits.grade(1 << 30, 2.0), Status::Fail);
        assert_eq!(limits.grade(100, 50.0), Status::Fail);
    }

    #[tokio::test]
    async fn measures_the_filesystem_of_a_real_path() {
        let dir = std::env::temp_dir();
        let lenient = DiskThresholds {
            warn_below_percent: None,
            fail_below_percent: None,
            ..DiskThresholds::default()
        };
        let result = DiskSpaceCheck::new(&dir, lenient).check().await;
        assert_eq!(result.status(), Status::Pass, "{result:?}");
        let free = &result.measurements()[0];
        assert!(free.observed_value.as_ref().unwrap().as_u64().unwrap() > 0);

        // Demanding more free bytes than any disk has fails, naming the path.
        let greedy = DiskThresholds {
            fail_below_bytes: Some(u64::MAX),
            ..DiskThresholds::default()
        };
        let result = DiskSpaceCheck::new(&dir, greedy)
            .path("/no/such/dir")
            .check()
            .await;
        assert_eq!(result.status(), Status::Fail);
        let missing = &result.measurements()[1];
        assert_eq!(missing.component_id.as_deref(), Some("/no/such/dir"));
        assert!(
            missing
                .output
                .as_deref()
                .unwrap()
                .starts_with("cannot resolve /no/such/dir")
        );
    }
}
