//! Which results count as failures, and which requests may be retried on another endpoint.

use std::time::Duration;

use serde::Deserialize;

use crate::endpoint::Outcome;

/// Decides whether a result counts against the endpoint's health (passive health, metrics).
///
/// Closures `Fn(Result<&Res, &E>) -> Outcome` implement it.
pub trait Classify<Res, E>: Send + Sync {
    /// The outcome of one attempt.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

impl<Res, E, F> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome + Send + Sync,
{
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: errors of the endpoint service are failures, responses are successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreFailures;

impl<Res, E> Classify<Res, E> for ErrorsAreFailures {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Which requests are retried on another endpoint.
pub trait RetryPolicy<Req, Res, E>: Send + Sync {
    /// A copy of the request for a possible retry, or `None` when it cannot be retried (e.g. a
    /// streamed body). Called before each attempt that may be followed by another.
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// Whether this attempt's result should be retried (`req` is the copy from
    /// [`clone_request`](Self::clone_request)).
    fn should_retry(&self, req: &Req, result: Result<&Res, &E>) -> bool;
}

/// Retry limits, with the defaults of the deployment guides herd follows (3 tries).
///
/// ```
/// # use herd_lb_core::RetryConfig;
/// let r: RetryConfig = serde_json::from_str(r#"{"max_attempts": 2, "budget_percent": 10}"#).unwrap();
/// assert_eq!(r.max_attempts, 2);
/// assert_eq!(r.min_retries_per_second, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Tries per request, the first one included. Default 3; 1 turns retries off.
    pub max_attempts: u32,
    /// Retries may add at most this percentage of the recent request rate. Default 20.
    pub budget_percent: f32,
    /// Retries allowed per second regardless of traffic. Default 10.
    pub min_retries_per_second: u32,
    /// How far back "recent" reaches for the budget. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_percent: 20.0,
            min_retries_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// No retries.
    pub fn disabled() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let invalid = |field, reason: &str| {
            Err(crate::Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if self.max_attempts == 0 {
            return invalid("retries.max_attempts", "must be at least 1");
        }
        if !(0.0..=1000.0).contains(&self.budget_percent) {
            return invalid("retries.budget_percent", "must be within 0..=1000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.budget_window) {
            return invalid("retries.budget_window", "must be within 1s..=60s");
        }
        Ok(())
    }
}
