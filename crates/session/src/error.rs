//! Errors: configuration, store operations and session use.

use std::fmt;

use http::StatusCode;

/// A layer or key that cannot be built: a setting that cannot work, or bad key material.
///
/// This is herd-session's setup error, the equivalent of the crate `Error` other herd crates
/// return from their builders: settings use the shared shape
/// [`InvalidConfig { field, reason }`](Self::InvalidConfig). It stays apart from
/// [`SessionError`], which is what a request meets and answers with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting that cannot work, e.g. a `__Host-` cookie name that is not Secure, a zero
    /// idle timeout, or bearer tokens with a session store.
    #[error("configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// The setting's dotted path in [`SessionConfig`](crate::SessionConfig), e.g.
        /// `cookie.name` or `idle_timeout`.
        field: &'static str,
        /// What is wrong, and where it helps, what to do.
        reason: String,
    },
    /// A secret key shorter than the minimum.
    #[error("session key is {len} bytes; at least {min} are required")]
    KeyTooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// A key list without any key.
    #[error("no session signing key configured")]
    NoKeys,
    /// A key in configuration that is not standard base64.
    #[error("session key is not valid base64: {0}")]
    KeyNotBase64(String),
    /// The OS random source failed while generating a key.
    #[error("OS random source failed while generating a session key: {0}")]
    Random(String),
}

impl ConfigError {
    /// `field` cannot work, for `reason`.
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }

    /// The setting at fault, for [`InvalidConfig`](Self::InvalidConfig).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidConfig { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The store operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOperation {
    /// Creating a new session (only if absent).
    Create,
    /// Reading a session.
    Load,
    /// Check-and-set write of a session.
    Save,
    /// Deleting a session.
    Delete,
    /// Extending a session's expiry.
    Touch,
    /// Health probe.
    Ping,
    /// Connecting to the store.
    Connect,
}

impl StoreOperation {
    /// Lower-case name, as used in metric labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOperation::Create => "create",
            StoreOperation::Load => "load",
            StoreOperation::Save => "save",
            StoreOperation::Delete => "delete",
            StoreOperation::Touch => "touch",
            StoreOperation::Ping => "ping",
            StoreOperation::Connect => "connect",
        }
    }
}

impl fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session store failed: which store, which operation, which node if known, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session store `{store}` failed to {operation}{}: {message}", node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default())]
pub struct StoreError {
    store: &'static str,
    operation: StoreOperation,
    node: Option<String>,
    timed_out: bool,
    failover: bool,
    tls: bool,
    message: String,
}

impl StoreError {
    /// A failure of `operation` in the store named `store` (e.g. `"redis"`).
    pub fn new(store: &'static str, operation: StoreOperation, message: impl Into<String>) -> Self {
        Self {
            store,
            operation,
            node: None,
            timed_out: false,
            failover: false,
            tls: false,
            message: message.into(),
        }
    }

    /// The operation did not finish within the store's timeout.
    pub fn timeout(
        store: &'static str,
        operation: StoreOperation,
        after: std::time::Duration,
    ) -> Self {
        Self {
            timed_out: true,
            ..Self::new(store, operation, format!("timed out after {after:?}"))
        }
    }

    /// The operation kept meeting errors a failover explains (redirects, `CLUSTERDOWN`, a dead
    /// or unreachable master) for `waited` without the cluster getting a new master; `last` is
    /// the last of them.
    pub fn failover_timeout(
        store: &'static str,
        operation: StoreOperation,
        waited: std::time::Duration,
        last: impl fmt::Display,
    ) -> Self {
        Self {
            timed_out: true,
            failover: true,
            ..Self::new(
                store,
                operation,
                format!(
                    "no master took over within the failover wait ({waited:?}); last error: {last}"
                ),
            )
        }
    }

    /// The TLS handshake with the store failed: its certificate does not chain to the
    /// configured CA, does not name the host connected to, or the server refused the client
    /// certificate. `reason` is the TLS library's.
    pub fn tls(store: &'static str, operation: StoreOperation, reason: impl fmt::Display) -> Self {
        Self {
            tls: true,
            ..Self::new(
                store,
                operation,
                format!(
                    "TLS handshake failed: {reason} (the server's certificate must chain to the \
                     configured CA, tls.ca_file, and name the host in the rediss:// URL)"
                ),
            )
        }
    }

    /// Names the node (address) the operation went to.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The store's name.
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// The operation that failed.
    pub fn operation(&self) -> StoreOperation {
        self.operation
    }

    /// The node the operation went to, when known.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Whether the operation timed out (rather than failing outright); also true after a
    /// failover wait ran out.
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }

    /// Whether the operation waited out a failover for as long as the store allows, and the
    /// cluster still had no master for the key (see [`failover_timeout`](Self::failover_timeout)).
    pub fn is_failover_timeout(&self) -> bool {
        self.failover
    }

    /// Whether a TLS handshake failed (see [`tls`](Self::tls)): a configuration error,
    /// which retrying does not heal.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Using or saving a session failed.
///
/// With the `axum` feature this is an axum response, so handlers can use `?`: store failures
/// and exhausted save retries answer `503 Service Unavailable`, everything else `500`. The
/// body names the failure without internal addresses; details go to the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session store failed (unreachable, timed out, bad reply).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session's data is larger than the configured limit; nothing was saved.
    #[error("session data is {size} bytes, over the limit of {limit} bytes; nothing was saved")]
    TooLarge {
        /// Size of the data (field names plus JSON values), or of the cookie for the cookie store.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Other requests kept changing the session: the save gave up after this many attempts.
    #[error("session changed concurrently on each of {attempts} save attempts; gave up")]
    Conflict {
        /// Save attempts made.
        attempts: u32,
    },
    /// A value could not be serialized to JSON.
    #[error("session field `{field}` could not be serialized: {source}")]
    Encode {
        /// The field.
        field: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A stored value does not deserialize into the requested type.
    #[error("session field `{field}` does not hold the requested type: {source}")]
    Decode {
        /// The field.
        field: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The OS random source failed while making a session id.
    #[error("OS random source failed while making a session id: {0}")]
    Random(String),
}

impl SessionError {
    /// The HTTP status this error answers with when a handler returns it, or when the layer
    /// meets it while saving.
    pub fn status(&self) -> StatusCode {
        match self {
            SessionError::Store(_) | SessionError::Conflict { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response body: what failed, without internal addresses or data.
    pub fn public_message(&self) -> String {
        match self {
            SessionError::Store(error) => format!(
                "session store unavailable ({}); please retry",
                error.operation()
            ),
            SessionError::Conflict { .. } => {
                "session is being changed by other requests; please retry".to_owned()
            }
            SessionError::TooLarge { size, limit } => {
                format!(
                    "session data is {size} bytes, over the limit of {limit}; nothing was saved"
                )
            }
            SessionError::Encode { field, .. } => {
                format!("session field `{field}` could not be serialized")
            }
            SessionError::Decode { field, .. } => {
                format!("session field `{field}` does not hold the requested type")
            }
            SessionError::Random(_) => "could not create a session id".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_error_names_store_operation_and_node() {
        let error = StoreError::new("redis", StoreOperation::Save, "connection refused")
            .with_node("127.0.0.1:7000");
        assert_eq!(
            error.to_string(),
            "session store `redis` failed to save on 127.0.0.1:7000: connection refused"
        );
        let timeout = StoreError::timeout(
            "memory",
            StoreOperation::Load,
            std::time::Duration::from_millis(5),
        );
        assert!(timeout.is_timeout() && !timeout.is_failover_timeout());
        let failover = StoreError::failover_timeout(
            "redis",
            StoreOperation::Save,
            std::time::Duration::from_secs(4),
            "connection refused",
        )
        .with_node("127.0.0.1:7001 (slot 12)");
        assert!(failover.is_failover_timeout() && failover.is_timeout());
        assert_eq!(
            failover.to_string(),
            "session store `redis` failed to save on 127.0.0.1:7001 (slot 12): no master took \
             over within the failover wait (4s); last error: connection refused"
        );
        assert_eq!(
            timeout.to_string(),
            "session store `memory` failed to load: timed out after 5ms"
        );
    }

    #[test]
    fn statuses_and_public_messages() {
        let store = SessionError::from(
            StoreError::new("redis", StoreOperation::Load, "down").with_node("10.0.0.1:6379"),
        );
        assert_eq!(store.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!store.public_message().contains("10.0.0.1"));
        assert!(store.public_message().contains("load"));
        let big = SessionError::TooLarge {
            size: 70_000,
            limit: 65_536,
        };
        assert_eq!(big.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(big.public_message().contains("70000"));
        assert_eq!(
            SessionError::Conflict { attempts: 3 }.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
