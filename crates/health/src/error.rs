//! The crate's error type.

use std::time::Duration;

/// What went wrong while building a [`Health`](crate::Health) registry or installing the
/// metrics exporter. Health checks themselves never return errors: a failing check is a
/// [`CheckResult`](crate::CheckResult) with status `fail`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two registered checks have the same name, which would merge their health+json keys.
    #[error("health check {name:?} is registered twice")]
    DuplicateCheck {
        /// The repeated name.
        name: String,
    },
    /// A configuration value is unusable.
    #[error("configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// The field's dotted path in [`HealthConfig`](crate::HealthConfig) or
        /// `MetricsConfig`, e.g. `base_path`.
        field: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// A duration that must be positive is zero.
    #[error("configuration field `{field}`: must be greater than zero (got {value:?})")]
    ZeroDuration {
        /// The field's dotted path, e.g. `upkeep_interval`.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// The operation needs a Tokio runtime and was called outside one.
    #[error("{operation} must be called from within a Tokio runtime")]
    NoRuntime {
        /// What was attempted.
        operation: &'static str,
    },
    /// The operating system refused information a check needs.
    #[error("cannot {operation}: {reason}")]
    System {
        /// What was attempted, e.g. `read system information`.
        operation: &'static str,
        /// The operating system's answer.
        reason: String,
    },
    /// The Prometheus recorder could not be built or installed (e.g. another global recorder
    /// is already installed).
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    #[error("installing the Prometheus recorder failed: {0}")]
    Prometheus(#[from] metrics_exporter_prometheus::BuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field_like_every_herd_crate() {
        let invalid = Error::InvalidConfig {
            field: "base_path",
            reason: "\"health\" must start with '/' and not end with '/'".to_owned(),
        };
        assert_eq!(
            invalid.to_string(),
            "configuration field `base_path`: \"health\" must start with '/' and not end with '/'"
        );
        let zero = Error::ZeroDuration {
            field: "check_timeout",
            value: Duration::ZERO,
        };
        assert_eq!(
            zero.to_string(),
            "configuration field `check_timeout`: must be greater than zero (got 0ns)"
        );
    }
}
