//! The crate's error type.

use std::io;
use std::time::Duration;

/// Errors of herd-db-router. Each names the node, field or operation that failed.
///
/// Through the [`sqlx::Executor`] impl, database errors pass through unchanged and the
/// router's own errors arrive as [`sqlx::Error::Io`] wrapping this type; get them back with
/// [`Error::from_sqlx`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration, found when the router (or the layer) is built.
    #[error("configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// The field's dotted path in [`RouterConfig`](crate::RouterConfig)
        /// (`check_interval`, `read_your_writes.poll_interval`, `replicas.url`,
        /// `nodes.pool.max_connections`: a node's field under the list it is configured in), or
        /// the method the value was given to (`DbRouterBuilder::pool`,
        /// `ReadYourWritesLayer::cookie`).
        field: &'static str,
        /// What is wrong with it, starting with ``node `name`: `` when it is one node's.
        reason: String,
    },
    /// No reachable, writable node is known: the write was not attempted.
    #[error("no writable primary available for {operation}: {detail}")]
    NoPrimary {
        /// The operation refused.
        operation: &'static str,
        /// What the monitor last saw.
        detail: String,
    },
    /// No replica is eligible and the fallback is [`Fallback::Error`](crate::Fallback::Error).
    #[error("no eligible replica for {operation} (fallback to the primary is disabled)")]
    NoEligibleReplica {
        /// The operation refused.
        operation: &'static str,
    },
    /// The node was found down while the operation waited for it.
    #[error("node `{node}` went down during {operation}")]
    NodeDown {
        /// The node.
        node: String,
        /// The operation.
        operation: &'static str,
    },
    /// The TLS handshake with `node` failed: its certificate does not chain to the configured
    /// CA, does not name the host connected to (`sslmode=verify-full`), or the node refused
    /// the client certificate. [`DbRouterBuilder::build`](crate::DbRouterBuilder::build)
    /// returns it when its first check of a node meets it: a certificate that does not match
    /// is a configuration error, which waiting does not heal. Later, the monitor reports it as
    /// the node's [`last_error`](crate::NodeStatus::last_error).
    #[error(
        "TLS to node `{node}` failed: {reason} (its certificate must chain to the configured CA, \
         `tls.ca_file` or `sslrootcert`, and with sslmode=verify-full name the host connected to)"
    )]
    Tls {
        /// The node.
        node: String,
        /// The TLS library's reason, e.g. `invalid peer certificate: UnknownIssuer`.
        reason: String,
    },
    /// A statement was sent to `node` and no answer came within `waited` (the node's
    /// `statement_timeout` plus `check_timeout`): the node or the way to it went silent. The
    /// router closed that connection (it never returns to the pool) and cannot tell what
    /// happened: **a write may or may not have committed**. Classified as
    /// [`ErrorClass::Unavailable`](crate::ErrorClass::Unavailable) (503); do not blindly retry
    /// a write that is not idempotent, check first whether it took effect.
    #[error(
        "no answer from node `{node}` to a {operation} within {waited:?} (statement_timeout + \
         check_timeout): its connection was closed and the outcome is unknown (a write may or \
         may not have committed)"
    )]
    OutcomeUnknown {
        /// The node the statement was sent to.
        node: String,
        /// The operation.
        operation: &'static str,
        /// How long the router waited for the answer.
        waited: Duration,
    },
    /// A query the router itself runs (monitor, read-your-writes, transaction start) failed.
    #[error("{operation} on node `{node}` failed: {source}")]
    Query {
        /// The node.
        node: String,
        /// The operation.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A value from the server or a client could not be parsed.
    #[error("invalid {what}: {value:?}")]
    Parse {
        /// What was being parsed (`"LSN"`, ...).
        what: &'static str,
        /// The offending text (truncated).
        value: String,
    },
}

impl Error {
    pub(crate) fn invalid_config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// [`Error::InvalidConfig`] for one node's field; the reason names the node.
    pub(crate) fn invalid_node_config(
        field: &'static str,
        node: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::InvalidConfig {
            field,
            reason: format!("node `{node}`: {reason}"),
        }
    }

    /// The router error inside a [`sqlx::Error`] returned by the `Executor` impl, if it is one.
    pub fn from_sqlx(err: &sqlx::Error) -> Option<&Error> {
        match err {
            sqlx::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
            _ => None,
        }
    }

    /// Wraps this error into a [`sqlx::Error`] (an `Io` error of a fitting kind), keeping
    /// driver errors as they were.
    pub fn into_sqlx(self) -> sqlx::Error {
        let kind = match self {
            Error::Query { source, .. } => return source,
            Error::NoPrimary { .. } | Error::NoEligibleReplica { .. } | Error::NodeDown { .. } => {
                io::ErrorKind::NotConnected
            }
            Error::OutcomeUnknown { .. } => io::ErrorKind::TimedOut,
            Error::InvalidConfig { .. } | Error::Parse { .. } => io::ErrorKind::InvalidInput,
            Error::Tls { .. } => io::ErrorKind::ConnectionRefused,
        };
        sqlx::Error::Io(io::Error::new(kind, self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_sqlx() {
        let err = Error::NoPrimary {
            operation: "execute",
            detail: "primary unreachable".into(),
        }
        .into_sqlx();
        assert!(matches!(
            Error::from_sqlx(&err),
            Some(Error::NoPrimary { .. })
        ));
        assert!(err.to_string().contains("no writable primary"));
        let passthrough = Error::Query {
            node: "a".into(),
            operation: "x",
            source: sqlx::Error::RowNotFound,
        }
        .into_sqlx();
        assert!(matches!(passthrough, sqlx::Error::RowNotFound));
        assert!(Error::from_sqlx(&sqlx::Error::PoolTimedOut).is_none());
        let unknown = Error::OutcomeUnknown {
            node: "primary".into(),
            operation: "query",
            waited: Duration::from_secs(3),
        }
        .into_sqlx();
        assert!(matches!(
            Error::from_sqlx(&unknown),
            Some(Error::OutcomeUnknown { waited, .. }) if *waited == Duration::from_secs(3)
        ));
        assert!(matches!(&unknown, sqlx::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut));
        assert_eq!(
            unknown.to_string(),
            "error communicating with database: no answer from node `primary` to a query within \
             3s (statement_timeout + check_timeout): its connection was closed and the outcome \
             is unknown (a write may or may not have committed)"
        );
    }

    #[test]
    fn config_error_names_field_and_node() {
        let e = Error::invalid_node_config("replicas.url", "replica2", "bad scheme");
        assert_eq!(
            e.to_string(),
            "configuration field `replicas.url`: node `replica2`: bad scheme"
        );
        let e = Error::invalid_config("check_interval", "must be greater than zero");
        assert_eq!(
            e.to_string(),
            "configuration field `check_interval`: must be greater than zero"
        );
        assert!(matches!(
            e.into_sqlx(),
            sqlx::Error::Io(io) if io.kind() == io::ErrorKind::InvalidInput
        ));
    }
}
