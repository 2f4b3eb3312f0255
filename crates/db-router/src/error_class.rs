//! [`ErrorClass`]: whose fault a database error is.

use std::time::Duration;

use crate::error::Error;

/// Whose fault a database error is, and what an HTTP service should answer.
///
/// A service that maps every sqlx error to `503 database unavailable` blames itself (and, behind
/// a balancer that counts 5xx, gets ejected) for a client's bad input: a NUL byte in a string
/// (SQLSTATE 22021), a duplicate key (23505). [`ErrorClass::of`] sorts errors by SQLSTATE class
/// and by the router's own errors, so the answer names the right culprit:
///
/// | class | errors | answer |
/// |---|---|---|
/// | [`InvalidData`](ErrorClass::InvalidData) | `22xxx` data exceptions (bad encoding, out of range, invalid text) | 400 |
/// | [`Conflict`](ErrorClass::Conflict) | `23xxx` integrity constraint violations (unique, foreign key, check, not null) | 409 |
/// | [`Retryable`](ErrorClass::Retryable) | `40001` serialization failure, `40P01` deadlock | retry the transaction; 503 with `Retry-After` if out of retries |
/// | [`Unavailable`](ErrorClass::Unavailable) | connection errors, `08xxx`, `57P01`–`57P03`, `57014` (statement timeout), `53xxx`, no writable primary, a full pool, a sent statement with no answer ([`OutcomeUnknown`](Error::OutcomeUnknown)) | 503 with `Retry-After`, marked as a shared dependency's failure |
/// | [`Internal`](ErrorClass::Internal) | everything else: syntax errors, missing columns, decoding bugs | 500 |
///
/// ```
/// use herd_db_router::ErrorClass;
///
/// let class = ErrorClass::of(&sqlx::Error::PoolTimedOut);
/// assert_eq!(class, ErrorClass::Unavailable);
/// assert_eq!(class.status(), 503);
/// assert!(class.retry_after().is_some());
/// assert!(class.is_dependency_failure());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The request's data was rejected (SQLSTATE class 22): the client's mistake.
    InvalidData,
    /// The request conflicts with stored data (SQLSTATE class 23): the client's to resolve.
    Conflict,
    /// A concurrency failure (40001, 40P01): running the transaction again may succeed.
    Retryable,
    /// The database (a dependency every instance shares) cannot serve now: connection errors,
    /// shutdown or failover, no writable primary, exhausted connections.
    Unavailable,
    /// Anything else, most likely a bug in the statement or the code around it.
    Internal,
}

impl ErrorClass {
    /// Classifies `err` (a driver error, or a router error carried inside one).
    pub fn of(err: &sqlx::Error) -> ErrorClass {
        if let Some(router) = Error::from_sqlx(err) {
            return match router {
                Error::NoPrimary { .. }
                | Error::NoEligibleReplica { .. }
                | Error::NodeDown { .. }
                | Error::OutcomeUnknown { .. } => ErrorClass::Unavailable,
                Error::Query { source, .. } => ErrorClass::of(source),
                _ => ErrorClass::Internal,
            };
        }
        match err {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => ErrorClass::of_sqlstate(&code),
                None => ErrorClass::Internal,
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }

    /// Classifies a five-character SQLSTATE code.
    pub fn of_sqlstate(code: &str) -> ErrorClass {
        match code.get(..2) {
            Some("22") => ErrorClass::InvalidData,
            Some("23") => ErrorClass::Conflict,
            Some("08" | "53") => ErrorClass::Unavailable,
            _ => match code {
                "40001" | "40P01" => ErrorClass::Retryable,
                // Admin shutdown, crash shutdown, cannot connect now (starting up, recovering);
                // a statement cancelled by `statement_timeout` (the server is too slow now).
                "57P01" | "57P02" | "57P03" | "57014" => ErrorClass::Unavailable,
                _ => ErrorClass::Internal,
            },
        }
    }

    /// The HTTP status to answer: 400, 409, 503 or 500.
    pub fn status(self) -> u16 {
        match self {
            ErrorClass::InvalidData => 400,
            ErrorClass::Conflict => 409,
            ErrorClass::Retryable | ErrorClass::Unavailable => 503,
            ErrorClass::Internal => 500,
        }
    }

    /// Whether the client caused it (a 4xx): such errors must never count against the
    /// instance that reported them.
    pub fn is_client_error(self) -> bool {
        matches!(self, ErrorClass::InvalidData | ErrorClass::Conflict)
    }

    /// Whether running the same work again may succeed (a new transaction for
    /// [`Retryable`](Self::Retryable), after a pause for [`Unavailable`](Self::Unavailable)).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::Unavailable)
    }

    /// Whether the failure is the shared database's, not this instance's: a balancer in front
    /// should not eject the instance for it (herd-gateway's HTTP upstream honours a response
    /// header saying so).
    pub fn is_dependency_failure(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::Unavailable)
    }

    /// A `Retry-After` worth sending with a 503: one second, about a failover check interval.
    pub fn retry_after(self) -> Option<Duration> {
        self.is_retryable().then_some(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        assert_eq!(ErrorClass::of_sqlstate("22021"), ErrorClass::InvalidData);
        assert_eq!(ErrorClass::of_sqlstate("22P02"), ErrorClass::InvalidData);
        assert_eq!(ErrorClass::of_sqlstate("23505"), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of_sqlstate("23503"), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of_sqlstate("40001"), ErrorClass::Retryable);
        assert_eq!(ErrorClass::of_sqlstate("40P01"), ErrorClass::Retryable);
        assert_eq!(ErrorClass::of_sqlstate("08006"), ErrorClass::Unavailable);
        assert_eq!(ErrorClass::of_sqlstate("57P01"), ErrorClass::Unavailable);
        assert_eq!(ErrorClass::of_sqlstate("53300"), ErrorClass::Unavailable);
        assert_eq!(ErrorClass::of_sqlstate("57014"), ErrorClass::Unavailable);
        assert_eq!(ErrorClass::of_sqlstate("42601"), ErrorClass::Internal);
        assert_eq!(ErrorClass::of_sqlstate(""), ErrorClass::Internal);
    }

    #[test]
    fn router_and_driver_errors() {
        let no_primary = Error::NoPrimary {
            operation: "query",
            detail: String::new(),
        }
        .into_sqlx();
        assert_eq!(ErrorClass::of(&no_primary), ErrorClass::Unavailable);
        let unknown = Error::OutcomeUnknown {
            node: "primary".into(),
            operation: "query",
            waited: Duration::from_secs(3),
        }
        .into_sqlx();
        assert_eq!(ErrorClass::of(&unknown), ErrorClass::Unavailable);
        assert_eq!(
            ErrorClass::of(&sqlx::Error::PoolTimedOut),
            ErrorClass::Unavailable
        );
        assert_eq!(
            ErrorClass::of(&sqlx::Error::RowNotFound),
            ErrorClass::Internal
        );
        assert_eq!(ErrorClass::InvalidData.status(), 400);
        assert!(ErrorClass::Conflict.is_client_error());
        assert!(!ErrorClass::Internal.is_dependency_failure());
        assert_eq!(ErrorClass::Internal.retry_after(), None);
    }
}
