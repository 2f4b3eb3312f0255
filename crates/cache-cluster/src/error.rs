//! The crate's error type.

use std::sync::Arc;

/// A boxed error, as returned by loaders and by the HTTP layer's inner services: tower's
/// `BoxError`, the same type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of this crate. Each names the operation and, where known, the node or key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable.
    #[error("configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// The field's dotted path in its configuration type, e.g. `"l1.max_entries"`.
        field: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// A backend command failed or timed out.
    #[error("{backend} {operation} on {target} failed: {source}")]
    Backend {
        /// `"redis-cluster"`, `"redis"` or `"memory"`.
        backend: &'static str,
        /// The command, e.g. `"GET"`, `"MGET"`, `"CLUSTER SLOTS"`.
        operation: &'static str,
        /// The node address when known, else the key or `"cluster"`.
        target: String,
        /// The driver's error.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// A cluster command kept meeting errors a failover explains (redirects, `CLUSTERDOWN`, a
    /// dead or unreachable master) for the whole
    /// [`failover_timeout`](crate::RedisConfig::failover_timeout) without the cluster getting a
    /// new master for the key's slot.
    #[error(
        "{backend} {operation} on {target}: no master took over within the failover wait \
         ({waited:?}); last error: {source}"
    )]
    FailoverTimeout {
        /// `"redis-cluster"`.
        backend: &'static str,
        /// The command, e.g. `"GET"`.
        operation: &'static str,
        /// The node serving the key's slot when known, else the slot.
        target: String,
        /// How long the command waited.
        waited: std::time::Duration,
        /// The last error met.
        #[source]
        source: Arc<redis::RedisError>,
    },
    /// The TLS handshake with a Redis node failed at connect: its certificate does not chain to
    /// the configured CA ([`TlsConfig::ca_file`](crate::TlsConfig::ca_file), else the system's
    /// roots), does not name the host connected to, or the node refused the client certificate.
    #[error(
        "{backend} TLS to {node} failed: {reason} (its certificate must chain to the configured \
         CA, tls.ca_file, and name the host in the rediss:// URL)"
    )]
    Tls {
        /// `"redis-cluster"` or `"redis"`.
        backend: &'static str,
        /// The server's address, or the cluster's seed nodes.
        node: String,
        /// The TLS library's reason, e.g. `invalid peer certificate: UnknownIssuer`.
        reason: String,
    },
    /// The backend was skipped because the circuit is open after consecutive failures.
    #[error("{operation} skipped: cache backend circuit is open after consecutive failures")]
    CircuitOpen {
        /// The skipped operation.
        operation: &'static str,
    },
    /// A value could not be serialized.
    #[error("cannot serialize the value for key {key:?}: {source}")]
    Encode {
        /// The caller's key.
        key: String,
        /// The serializer's error.
        #[source]
        source: postcard::Error,
    },
    /// The loader passed to `get_or_load` failed (shared by every caller that waited for it).
    #[error("loader for key {key:?} failed: {source}")]
    Load {
        /// The caller's key.
        key: String,
        /// The loader's error.
        #[source]
        source: Arc<BoxError>,
    },
}

impl Error {
    /// A short label for the `kind` label of `herd_cache_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::InvalidConfig { .. } => "config",
            Self::Backend { source, .. } if source.is_timeout() => "timeout",
            Self::Backend { .. } => "backend",
            Self::FailoverTimeout { .. } => "failover_timeout",
            Self::Tls { .. } => "tls",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::Encode { .. } => "encode",
            Self::Load { .. } => "loader",
        }
    }

    pub(crate) fn backend(
        backend: &'static str,
        operation: &'static str,
        target: impl Into<String>,
        source: redis::RedisError,
    ) -> Self {
        Self::Backend {
            backend,
            operation,
            target: target.into(),
            source: Arc::new(source),
        }
    }
}
