//! The testkit's error type.

use std::time::Duration;

/// Everything that can go wrong while starting, faulting or stopping a test topology.
///
/// Each variant names the node (`primary`, `replica1`, `redis-7001`, ...) or the program involved, so a
/// failing test says what broke without digging through logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server program was not found on this machine.
    #[error(
        "`{program}` was not found ({searched}); install it: `apt-get install -y {apt}` (Debian/Ubuntu) or `brew install {brew}` (macOS)"
    )]
    MissingBinary {
        /// The program looked for, e.g. `initdb`.
        program: &'static str,
        /// Where it was looked for.
        searched: String,
        /// The Debian package that provides it.
        apt: &'static str,
        /// The Homebrew formula that provides it.
        brew: &'static str,
    },
    /// The process runs as root but the `postgres` system user, needed to run PostgreSQL, does not exist.
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as; install the `postgresql` package or run the tests as an unprivileged user"
    )]
    NoPostgresUser,
    /// A file-system or process operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, e.g. `create data dir for replica1`.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (initdb, pg_basebackup, redis-cli) exited with an error.
    #[error("`{program}` failed for {node} (exit {status}):\n{output}")]
    Command {
        /// The program that failed.
        program: String,
        /// The node it was run for.
        node: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// A server exited, or never became ready, while it was being started.
    #[error("{node} did not start: {reason}\n--- last lines of its log ---\n{log_tail}")]
    Startup {
        /// The node that failed.
        node: String,
        /// What was seen.
        reason: String,
        /// The end of the server's log.
        log_tail: String,
    },
    /// A condition was not reached in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited, naming the node.
        what: String,
        /// How long was waited.
        after: Duration,
    },
    /// A SQL statement against a node failed.
    #[error("{node}: {op}: {source}")]
    Sql {
        /// The node queried.
        node: String,
        /// The operation, e.g. `pg_promote()`.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A Redis command against a node failed.
    #[error("{node}: {op}: {source}")]
    Redis {
        /// The node queried.
        node: String,
        /// The operation, e.g. `CLUSTER INFO`.
        op: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// The machine or the process cannot do what was asked, e.g. network namespaces without root
    /// or without `ip` (tests skip on this, unless told the machine must support it).
    #[error("{what} are not available here: {reason}")]
    Unsupported {
        /// What is missing, e.g. `network namespaces`.
        what: &'static str,
        /// Why, and what to install or change.
        reason: String,
    },
    /// A fault operation was asked of a node in a state that does not allow it.
    #[error("{node}: cannot {op}: {reason}")]
    InvalidState {
        /// The node.
        node: String,
        /// The operation asked for.
        op: &'static str,
        /// Why it cannot be done.
        reason: &'static str,
    },
}

/// The testkit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}
