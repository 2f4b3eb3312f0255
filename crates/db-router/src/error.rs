//! The crate's error type.

use std::io;

/// Errors of herd-db-router. Each names the node, field or operation that failed.
///
/// Through the [`sqlx::Executor`] impl, database errors pass through unchanged and the
/// router's own errors arrive as [`sqlx::Error::Io`] wrapping this type; get them back with
/// [`Error::from_sqlx`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration, found when the router is built.
    #[error("invalid configuration{}: field `{field}`: {message}", node.as_ref().map(|n| format!(" of node `{n}`")).unwrap_or_default())]
    Config {
        /// The node, when the problem is one node's.
        node: Option<String>,
        /// The configuration field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
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
    pub(crate) fn config(
        node: Option<&str>,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            node: node.map(str::to_owned),
            field,
            message: message.into(),
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
            Error::Config { .. } | Error::Parse { .. } => io::ErrorKind::InvalidInput,
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
    }

    #[test]
    fn config_error_names_node_and_field() {
        let e = Error::config(Some("replica2"), "url", "bad scheme");
        assert_eq!(
            e.to_string(),
            "invalid configuration of node `replica2`: field `url`: bad scheme"
        );
        let e = Error::config(None, "check_interval", "must be greater than zero");
        assert_eq!(
            e.to_string(),
            "invalid configuration: field `check_interval`: must be greater than zero"
        );
    }
}
