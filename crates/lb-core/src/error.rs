//! Errors: configuration and membership ([`Error`]) and picking ([`PickError`]).

use std::time::Duration;

/// Bad configuration or membership input; names the endpoint or field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Weights must be finite and > 0.
    #[error("endpoint {endpoint}: weight {weight} is not a finite number > 0")]
    InvalidWeight {
        /// The endpoint.
        endpoint: String,
        /// The refused weight.
        weight: f64,
    },
    /// The endpoint is not in the set.
    #[error("endpoint {endpoint}: not in the endpoint set")]
    UnknownEndpoint {
        /// The endpoint.
        endpoint: String,
    },
    /// A configuration field has a value that cannot work (the consistent-hash balance factor
    /// is `policy.balance_factor`).
    #[error("configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted path of the field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

/// Why no endpoint could take a request. HTTP layers answer both with 503.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// The set is empty, or every endpoint is draining.
    #[error("no endpoints: the set is empty or every endpoint is draining")]
    NoEndpoints,
    /// Every usable endpoint is at its concurrency cap, and none freed a slot in time.
    #[error(
        "overloaded: all {endpoints} endpoints are at their concurrency limit (waited {waited:?})"
    )]
    Overloaded {
        /// Endpoints in the set.
        endpoints: usize,
        /// How long the request waited for a slot.
        waited: Duration,
    },
}
