//! Router configuration: nodes, pools, lag bounds, selection, read-your-writes.
//!
//! Every type deserializes with serde (durations as humantime strings such as `"1s"` or
//! `"250ms"`), with the defaults documented on each field.
//!
//! ```
//! use herd_db_router::RouterConfig;
//!
//! let config: RouterConfig = toml::from_str(r#"
//!     max_lag_bytes = 1048576
//!     max_lag = "2s"
//!
//!     [primary]
//!     url = "postgres://app@db-1/app"
//!     pool = { max_connections = 20 }
//!
//!     [[replicas]]
//!     url = "postgres://app@db-2/app"
//!     weight = 2.0
//! "#).unwrap();
//! assert_eq!(config.check_interval, std::time::Duration::from_secs(1));
//! assert_eq!(config.nodes().unwrap().len(), 2);
//! ```
//!
//! TLS to the nodes (libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`) is set for every
//! node in `[tls]`, per node in its own `tls` table, or in its URL; the `tls-rustls` feature
//! makes the connections (rustls, with the system's roots unless a CA file is given):
//!
//! ```
//! use herd_db_router::{RouterConfig, SslMode};
//!
//! let config: RouterConfig = toml::from_str(r#"
//!     [tls]
//!     mode = "verify-full"
//!     ca_file = "/etc/herd/db-ca.crt"
//!
//!     [primary]
//!     url = "postgres://app@db-1.internal/app"
//!     tls = { client_cert = "/etc/herd/app.crt", client_key = "/etc/herd/app.key" }
//!
//!     [[replicas]]
//!     url = "postgres://app@db-2.internal/app?sslmode=require"
//! "#).unwrap();
//! assert_eq!(config.tls.mode, Some(SslMode::VerifyFull));
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_lb_core::PolicyConfig;
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::classify::FunctionPolicy;
use crate::error::Error;

/// What a node is configured to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Always the write node (and never read from as a replica).
    Primary,
    /// Only ever read from, and only while it is in recovery.
    Replica,
    /// Whatever the monitor finds: the writable node takes writes, nodes in recovery take
    /// reads. Follows failovers. The default for entries of `nodes`.
    #[default]
    Auto,
}

impl Role {
    /// `"primary"`, `"replica"` or `"auto"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Auto => "auto",
        }
    }

    pub(crate) fn may_write(self) -> bool {
        matches!(self, Role::Primary | Role::Auto)
    }

    pub(crate) fn may_read(self) -> bool {
        matches!(self, Role::Replica | Role::Auto)
    }
}

/// What to do when a read finds no eligible replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Read from the primary (the default), counted in `herd_db_fallback_to_primary_total`.
    #[default]
    Primary,
    /// Fail with [`Error::NoEligibleReplica`].
    Error,
}

/// One PostgreSQL node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name used in metrics, logs, errors and status. Default: `primary`, `replica1`, ... in the
    /// `primary`/`replicas` form and `node1`, `node2`, ... in the `nodes` form.
    #[serde(default)]
    pub name: Option<String>,
    /// Connection URL, `postgres://user:password@host:port/database?options`.
    pub url: String,
    /// Configured role. In `nodes` the default is [`Role::Auto`]; under `primary` and
    /// `replicas` the role is implied and a different one is an error.
    #[serde(default)]
    pub role: Option<Role>,
    /// Share of reads relative to other replicas (default 1.0; finite and > 0).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Connection pool settings.
    #[serde(default)]
    pub pool: PoolConfig,
    /// TLS to this node; each field given here wins over the URL's parameter and over the
    /// router-wide [`RouterConfig::tls`] (default: none given).
    #[serde(default)]
    pub tls: TlsConfig,
}

impl NodeConfig {
    /// A node with default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            name: None,
            url: url.into(),
            role: None,
            weight: default_weight(),
            pool: PoolConfig::default(),
            tls: TlsConfig::default(),
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the role.
    pub fn role(mut self, role: Role) -> Self {
        self.role = Some(role);
        self
    }

    /// Sets the read weight.
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the pool settings.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Sets the node's TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }
}

/// Whether and how the connection to a node is encrypted and its certificate checked: libpq's
/// `sslmode`, with the same names (`"verify-full"` in TOML and in URLs).
///
/// Anything but `disable` and `prefer` needs the crate's `tls-rustls` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; no certificate check. libpq's and sqlx's
    /// default, which a man in the middle defeats: use `verify-full` across a network.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, and the server's certificate must chain to the CA (`ca_file`, else the system's
    /// roots); its host name is not checked.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to (the URL's host
    /// name or IP address).
    VerifyFull,
}

impl SslMode {
    /// The libpq name: `"disable"`, `"prefer"`, `"require"`, `"verify-ca"`, `"verify-full"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn to_sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// TLS settings of a node connection (libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
///
/// Every field defaults to "not given"; a field given in a node's `tls` wins over the same
/// parameter in its URL, which wins over the router-wide [`RouterConfig::tls`]. With none of
/// them, `sslmode` is `prefer` (libpq's and sqlx's default). The files are PEM; they are read
/// when the router is built (a missing or unreadable one is [`Error::InvalidConfig`]) and again
/// by each new connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// `sslmode` (default: the URL's, else `prefer`).
    pub mode: Option<SslMode>,
    /// CA certificates the server's certificate must chain to (`sslrootcert`; default: the
    /// URL's, else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain presented to the server (`sslcert`), for `hostssl ...
    /// clientcert=verify-full` or `cert` authentication. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (`sslkey`).
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS with the certificate checked against `ca_file` and the host name
    /// ([`SslMode::VerifyFull`]).
    pub fn verify_full(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            mode: Some(SslMode::VerifyFull),
            ca_file: Some(ca_file.into()),
            ..Self::default()
        }
    }

    /// Presents a client certificate and its key.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// Each field of `self`, else of `fallback`.
    fn or(&self, fallback: &TlsConfig) -> TlsConfig {
        TlsConfig {
            mode: self.mode.or(fallback.mode),
            ca_file: self.ca_file.clone().or_else(|| fallback.ca_file.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| fallback.client_cert.clone()),
            client_key: self
                .client_key
                .clone()
                .or_else(|| fallback.client_key.clone()),
        }
    }
}

fn default_weight() -> f64 {
    1.0
}

/// A node's sqlx pool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Most connections open at once (default 10).
    pub max_connections: u32,
    /// Connections kept open when idle (default 0).
    pub min_connections: u32,
    /// Longest wait for a connection, including connecting (default 5 s). Also bounds how long
    /// a write waits on a primary that stopped answering before the monitor notices.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Close connections idle this long (default 10 min; `null` keeps them).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Close connections this old (default 30 min; `null` keeps them).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Ping a pooled connection before handing it out (default true, as in sqlx).
    pub test_before_acquire: bool,
    /// Server-side `statement_timeout` for every connection (default none). It also bounds a
    /// statement the router sent on the node: with no answer within `statement_timeout +
    /// check_timeout`, the connection is closed and the call ends with
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown). For a pool given to
    /// [`DbRouterBuilder::pool`](crate::DbRouterBuilder::pool) only that client-side bound applies.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// `application_name` reported to the server (default `herd-db-router`).
    pub application_name: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            test_before_acquire: true,
            statement_timeout: None,
            application_name: None,
        }
    }
}

/// Read-your-writes settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadYourWritesConfig {
    /// How long a read with a token waits for a replica to replay up to it before going to the
    /// primary (default 100 ms; 0 goes to the primary at once).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Pause between two replay-position checks while waiting (default 5 ms).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for ReadYourWritesConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(100),
            poll_interval: Duration::from_millis(5),
        }
    }
}

/// The whole router configuration.
///
/// Nodes are given either as `primary` + `replicas` (roles fixed), or as `nodes` with a
/// `role` each (default `auto`: the monitor finds the writable node and follows failovers),
/// or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// The write node (role `primary`).
    pub primary: Option<NodeConfig>,
    /// Read nodes (role `replica`).
    pub replicas: Vec<NodeConfig>,
    /// Nodes with explicit or `auto` roles.
    pub nodes: Vec<NodeConfig>,
    /// How often the monitor checks every node's role, WAL positions and lag (default 1 s).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Bound on one node's check, connecting included (default 1 s).
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// A replica more than this many bytes of WAL behind the primary takes no reads
    /// (default 16 MiB; Pgpool-II's `delay_threshold`).
    pub max_lag_bytes: u64,
    /// A replica whose last replayed transaction is older than this, while it is behind,
    /// takes no reads (default 5 s; Pgpool-II's `delay_threshold_by_time`, ProxySQL's
    /// `max_replication_lag`).
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Replica selection policy from herd-lb-core (default `least_outstanding`).
    pub selection: PolicyConfig,
    /// Among eligible replicas, read from the one with the least lag instead of balancing
    /// (default false; Pgpool-II's `prefer_lower_delay_standby`).
    pub prefer_lower_lag: bool,
    /// What a read does when no replica is eligible (default: use the primary).
    pub fallback: Fallback,
    /// Retry once on the primary a statement that a replica refused as a write
    /// (SQLSTATE 25006), counting it in `herd_db_misroutes_total` (default true).
    pub retry_misrouted: bool,
    /// Functions that write: calls to them go to the primary. Bare names match any schema,
    /// `schema.name` only that schema (default empty).
    pub write_functions: Vec<String>,
    /// Whether calls to functions not known to be read-only go to the primary
    /// (default [`FunctionPolicy::WriteList`]).
    pub function_policy: FunctionPolicy,
    /// How often the router reads the primary's function catalog (`pg_proc`: which functions
    /// are `VOLATILE`) and `standard_conforming_strings` for the classifier; also read once
    /// when the router is built. Default 60 s; `null` never reads it (the compiled-in lists
    /// of PostgreSQL's built-ins then decide).
    #[serde(with = "humantime_serde")]
    pub catalog_refresh: Option<Duration>,
    /// Read-your-writes settings.
    pub read_your_writes: ReadYourWritesConfig,
    /// TLS for every node; a node's URL parameters and its own `tls` win over it (default:
    /// none given, so `sslmode=prefer`).
    pub tls: TlsConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            primary: None,
            replicas: Vec::new(),
            nodes: Vec::new(),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag: Duration::from_secs(5),
            selection: PolicyConfig::LeastOutstanding,
            prefer_lower_lag: false,
            fallback: Fallback::Primary,
            retry_misrouted: true,
            write_functions: Vec::new(),
            function_policy: FunctionPolicy::WriteList,
            catalog_refresh: Some(Duration::from_secs(60)),
            read_your_writes: ReadYourWritesConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The list a node is configured in: the start of its fields' dotted paths in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeList {
    Primary,
    Replicas,
    Nodes,
}

/// The dotted path of field `$field` (a literal) of a node configured in `$list` (a
/// [`NodeList`]), as [`Error::InvalidConfig`] names it: `replicas.url`, `nodes.weight`, ...
macro_rules! node_field {
    ($list:expr, $field:literal) => {
        match $list {
            $crate::config::NodeList::Primary => concat!("primary.", $field),
            $crate::config::NodeList::Replicas => concat!("replicas.", $field),
            $crate::config::NodeList::Nodes => concat!("nodes.", $field),
        }
    };
}
pub(crate) use node_field;

/// A validated node: name, role and ready-to-use connect options.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) name: String,
    /// Where it was configured.
    pub(crate) list: NodeList,
    pub(crate) role: Role,
    pub(crate) weight: f64,
    pub(crate) connect: PgConnectOptions,
    pub(crate) pool: PoolConfig,
}

impl RouterConfig {
    /// Validates the nodes and returns them in order (`primary`, `replicas`, then `nodes`)
    /// with their resolved names and roles.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field (and the node, for one node's field).
    pub fn nodes(&self) -> Result<Vec<(String, Role)>, Error> {
        Ok(self
            .node_specs()?
            .into_iter()
            .map(|n| (n.name, n.role))
            .collect())
    }

    pub(crate) fn node_specs(&self) -> Result<Vec<NodeSpec>, Error> {
        self.check_settings()?;
        let mut specs = Vec::new();
        let groups = [
            (
                self.primary.as_slice(),
                Some(Role::Primary),
                "primary",
                NodeList::Primary,
            ),
            (
                self.replicas.as_slice(),
                Some(Role::Replica),
                "replica",
                NodeList::Replicas,
            ),
            (self.nodes.as_slice(), None, "node", NodeList::Nodes),
        ];
        for (group, implied, prefix, list) in groups {
            for (i, node) in group.iter().enumerate() {
                let default_name = if implied == Some(Role::Primary) {
                    prefix.to_string()
                } else {
                    format!("{prefix}{}", i + 1)
                };
                let name = node.name.clone().unwrap_or(default_name);
                let hosts = split_hosts(&node.url).map_err(|message| {
                    Error::invalid_node_config(node_field!(list, "url"), &name, message)
                })?;
                if hosts.len() == 1 {
                    specs.push(node_spec(node, name, implied, list, &self.tls)?);
                    continue;
                }
                if implied == Some(Role::Primary) {
                    return Err(Error::invalid_node_config(
                        node_field!(list, "url"),
                        &name,
                        "names several hosts, but there is one primary: list them under `nodes` (role `auto`)",
                    ));
                }
                for (host, url) in hosts {
                    let one = NodeConfig {
                        url,
                        ..node.clone()
                    };
                    let name = match &node.name {
                        Some(given) => format!("{given}-{host}"),
                        None => host,
                    };
                    specs.push(node_spec(&one, name, implied, list, &self.tls)?);
                }
            }
        }
        if specs.is_empty() {
            return Err(Error::invalid_config(
                "nodes",
                "no node configured: set `primary`/`replicas` or `nodes`",
            ));
        }
        for (i, a) in specs.iter().enumerate() {
            if specs.iter().skip(i + 1).any(|b| b.name == a.name) {
                return Err(Error::invalid_node_config(
                    node_field!(a.list, "name"),
                    &a.name,
                    "two nodes have this name",
                ));
            }
        }
        if specs.iter().filter(|n| n.role == Role::Primary).count() > 1 {
            // `primary` holds one node at most: a second is an entry of `nodes`.
            return Err(Error::invalid_config(
                "nodes.role",
                "more than one node has role `primary`",
            ));
        }
        if !specs.iter().any(|n| n.role.may_write()) {
            return Err(Error::invalid_config(
                "primary",
                "no node may take writes: add a `primary` or an `auto` node",
            ));
        }
        Ok(specs)
    }

    fn check_settings(&self) -> Result<(), Error> {
        if self.check_interval.is_zero() {
            return Err(Error::invalid_config(
                "check_interval",
                "must be greater than zero",
            ));
        }
        if self.check_timeout.is_zero() {
            return Err(Error::invalid_config(
                "check_timeout",
                "must be greater than zero",
            ));
        }
        if self.read_your_writes.poll_interval.is_zero()
            && !self.read_your_writes.max_wait.is_zero()
        {
            return Err(Error::invalid_config(
                "read_your_writes.poll_interval",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The hosts of a libpq-style connection URL, each with the URL that reaches only it:
/// `postgres://app@db-1:5432,db-2:5432/app?target_session_attrs=read-write` gives
/// `("db-1:5432", "postgres://app@db-1:5432/app")` and `("db-2:5432", ...)`.
///
/// `target_session_attrs` (libpq's choice of which host to connect to) is dropped: the router
/// connects to every host and sends each statement to the node that fits it, following
/// failovers. A URL with one host gives itself unchanged.
fn split_hosts(url: &str) -> Result<Vec<(String, String)>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(vec![(String::new(), url.to_owned())]);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return Ok(vec![(hosts.to_owned(), url.to_owned())]);
    }
    let tail = without_param(tail, "target_session_attrs");
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() {
                return Err(format!("an empty host in the host list {hosts:?}"));
            }
            Ok((
                host.to_owned(),
                format!("{scheme}://{userinfo}{host}{tail}"),
            ))
        })
        .collect()
}

/// `tail` (`/db?a=1&b=2`) without the query parameter `name`.
fn without_param(tail: &str, name: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

fn node_spec(
    node: &NodeConfig,
    name: String,
    implied: Option<Role>,
    list: NodeList,
    router_tls: &TlsConfig,
) -> Result<NodeSpec, Error> {
    if name.trim().is_empty() {
        return Err(Error::invalid_config(
            node_field!(list, "name"),
            "a node name may not be empty",
        ));
    }
    let role = match (implied, node.role) {
        (Some(implied), Some(given)) if implied != given => {
            return Err(Error::invalid_node_config(
                node_field!(list, "role"),
                &name,
                format_args!(
                    "is `{}` but the node is listed as a {}",
                    given.as_str(),
                    implied.as_str()
                ),
            ));
        }
        (Some(implied), _) => implied,
        (None, given) => given.unwrap_or_default(),
    };
    if !(node.weight.is_finite() && node.weight > 0.0) {
        return Err(Error::invalid_node_config(
            node_field!(list, "weight"),
            &name,
            format!("must be finite and > 0, got {}", node.weight),
        ));
    }
    let pool = &node.pool;
    if pool.max_connections == 0 {
        return Err(Error::invalid_node_config(
            node_field!(list, "pool.max_connections"),
            &name,
            "must be at least 1",
        ));
    }
    if pool.min_connections > pool.max_connections {
        return Err(Error::invalid_node_config(
            node_field!(list, "pool.min_connections"),
            &name,
            "is greater than pool.max_connections",
        ));
    }
    if pool.acquire_timeout.is_zero() {
        return Err(Error::invalid_node_config(
            node_field!(list, "pool.acquire_timeout"),
            &name,
            "must be greater than zero",
        ));
    }
    let scheme_ok = ["postgres://", "postgresql://"].iter().any(|p| {
        node.url
            .get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    });
    if !scheme_ok {
        return Err(Error::invalid_node_config(
            node_field!(list, "url"),
            &name,
            "must start with postgres:// or postgresql://",
        ));
    }
    let mut connect: PgConnectOptions = node
        .url
        .parse()
        .map_err(|e: sqlx::Error| Error::invalid_node_config(node_field!(list, "url"), &name, e))?;
    connect =
        connect.application_name(pool.application_name.as_deref().unwrap_or("herd-db-router"));
    if let Some(timeout) = pool.statement_timeout {
        connect = connect.options([("statement_timeout", format!("{}ms", timeout.as_millis()))]);
    }
    connect = apply_tls(connect, &node.url, &node.tls, router_tls, &name, list)?;
    Ok(NodeSpec {
        name,
        list,
        role,
        weight: node.weight,
        connect,
        pool: pool.clone(),
    })
}

/// The URL query parameters that set each TLS field, in sqlx's spellings.
const URL_SSLMODE: &[&str] = &["sslmode", "ssl-mode"];
const URL_SSLROOTCERT: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];
const URL_SSLCERT: &[&str] = &["sslcert", "ssl-cert"];
const URL_SSLKEY: &[&str] = &["sslkey", "ssl-key"];

/// Applies the node's TLS settings to `connect` (parsed from `url`): the node's own fields,
/// then the URL's parameters (already in `connect`), then the router-wide ones. Checks that
/// the files given in the configuration can be read, that a client certificate comes with its
/// key, and that a mode needing TLS has the `tls-rustls` feature.
fn apply_tls(
    mut connect: PgConnectOptions,
    url: &str,
    node_tls: &TlsConfig,
    router_tls: &TlsConfig,
    name: &str,
    list: NodeList,
) -> Result<PgConnectOptions, Error> {
    // The URL's parameter, when present, beats the router-wide value: drop the latter.
    let router_tls = TlsConfig {
        mode: router_tls.mode.filter(|_| !url_has_param(url, URL_SSLMODE)),
        ca_file: router_tls
            .ca_file
            .clone()
            .filter(|_| !url_has_param(url, URL_SSLROOTCERT)),
        client_cert: router_tls
            .client_cert
            .clone()
            .filter(|_| !url_has_param(url, URL_SSLCERT)),
        client_key: router_tls
            .client_key
            .clone()
            .filter(|_| !url_has_param(url, URL_SSLKEY)),
    };
    let tls = node_tls.or(&router_tls);
    if let Some(mode) = tls.mode {
        connect = connect.ssl_mode(mode.to_sqlx());
    }
    let readable = |field: &'static str, path: &Path| -> Result<(), Error> {
        match std::fs::read(path) {
            Ok(pem) if pem.trim_ascii_start().starts_with(b"-----BEGIN") => Ok(()),
            Ok(_) => Err(Error::invalid_node_config(
                field,
                name,
                format_args!("{} is not a PEM file", path.display()),
            )),
            Err(e) => Err(Error::invalid_node_config(
                field,
                name,
                format_args!("cannot read {}: {e}", path.display()),
            )),
        }
    };
    if let Some(ca) = &tls.ca_file {
        readable(node_field!(list, "tls.ca_file"), ca)?;
        connect = connect.ssl_root_cert(ca);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            readable(node_field!(list, "tls.client_cert"), cert)?;
            readable(node_field!(list, "tls.client_key"), key)?;
            connect = connect.ssl_client_cert(cert).ssl_client_key(key);
        }
        (Some(_), None) => {
            return Err(Error::invalid_node_config(
                node_field!(list, "tls.client_key"),
                name,
                "a client certificate needs its key",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid_node_config(
                node_field!(list, "tls.client_cert"),
                name,
                "a client key needs its certificate",
            ));
        }
        (None, None) => {}
    }
    let needs_tls = matches!(
        connect.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    if needs_tls && !cfg!(feature = "tls-rustls") {
        return Err(Error::invalid_node_config(
            node_field!(list, "tls.mode"),
            name,
            "sslmode requires TLS, but herd-db-router was built without its `tls-rustls` feature",
        ));
    }
    Ok(connect)
}

/// Whether the URL's query string sets one of `names`.
fn url_has_param(url: &str, names: &[&str]) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|key| names.contains(&key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RouterConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = RouterConfig::default();
        assert_eq!(c.check_interval, Duration::from_secs(1));
        assert_eq!(c.max_lag_bytes, 16 * 1024 * 1024);
        assert_eq!(c.max_lag, Duration::from_secs(5));
        assert_eq!(c.selection, PolicyConfig::LeastOutstanding);
        assert_eq!(c.fallback, Fallback::Primary);
        assert!(c.retry_misrouted);
        assert_eq!(c.read_your_writes.max_wait, Duration::from_millis(100));
        assert_eq!(PoolConfig::default().max_connections, 10);
    }

    #[test]
    fn nodes_form_with_auto_roles_and_names() {
        let c = parse(
            r#"
            check_interval = "250ms"
            selection = "round_robin"
            [[nodes]]
            url = "postgres://a@h1/db"
            [[nodes]]
            name = "east"
            url = "postgres://a@h2/db"
            role = "replica"
            "#,
        );
        assert_eq!(c.check_interval, Duration::from_millis(250));
        assert_eq!(c.selection, PolicyConfig::RoundRobin);
        assert_eq!(
            c.nodes().unwrap(),
            vec![
                ("node1".to_string(), Role::Auto),
                ("east".to_string(), Role::Replica)
            ]
        );
    }

    /// The field an invalid configuration is refused for, and the reason.
    fn refused(config: &RouterConfig) -> (&'static str, String) {
        match config.nodes() {
            Err(Error::InvalidConfig { field, reason }) => (field, reason),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_and_node() {
        let bad_url = parse("[primary]\nurl = \"mysql://x\"");
        let (field, reason) = refused(&bad_url);
        assert_eq!(field, "primary.url");
        assert!(reason.starts_with("node `primary`: "), "{reason}");
        assert_eq!(
            bad_url.nodes().unwrap_err().to_string(),
            "configuration field `primary.url`: node `primary`: must start with postgres:// or postgresql://"
        );

        let bad_weight = parse(
            "[primary]\nurl = \"postgres://h/db\"\n[[replicas]]\nurl = \"postgres://h/db\"\nweight = -1.0",
        );
        let (field, reason) = refused(&bad_weight);
        assert_eq!(field, "replicas.weight");
        assert!(reason.starts_with("node `replica1`: "), "{reason}");

        let conflict = parse("[[replicas]]\nurl = \"postgres://h/db\"\nrole = \"primary\"");
        assert_eq!(refused(&conflict).0, "replicas.role");

        let no_writer = parse("[[replicas]]\nurl = \"postgres://h/db\"");
        let (field, reason) = refused(&no_writer);
        assert_eq!(field, "primary");
        assert!(reason.contains("no node may take writes"), "{reason}");

        let (field, reason) = refused(&RouterConfig::default());
        assert_eq!(field, "nodes");
        assert!(reason.contains("no node configured"), "{reason}");

        let dup = parse(
            "[[nodes]]\nname = \"a\"\nurl = \"postgres://h/db\"\n[[nodes]]\nname = \"a\"\nurl = \"postgres://h/db\"",
        );
        let (field, reason) = refused(&dup);
        assert_eq!(field, "nodes.name");
        assert!(reason.contains("`a`"), "{reason}");

        let pool = parse("[primary]\nurl = \"postgres://h/db\"\npool = { max_connections = 0 }");
        assert_eq!(refused(&pool).0, "primary.pool.max_connections");

        let zero = RouterConfig {
            check_interval: Duration::ZERO,
            ..parse("[primary]\nurl = \"postgres://h/db\"")
        };
        assert_eq!(refused(&zero).0, "check_interval");

        assert!(
            toml::from_str::<RouterConfig>("[primary]\nurl = \"postgres://h/db\"\nbogus = 1")
                .is_err()
        );
        assert!(toml::from_str::<RouterConfig>("check_interval = \"soon\"").is_err());
    }

    #[test]
    fn a_multi_host_url_is_one_auto_node_per_host() {
        let c = parse(
            r#"
            [[nodes]]
            url = "postgres://app:pw@db-1:5432,db-2:5433,[::1]:5434/app?target_session_attrs=read-write&sslmode=disable"
            "#,
        );
        assert_eq!(
            c.nodes().unwrap(),
            vec![
                ("db-1:5432".to_string(), Role::Auto),
                ("db-2:5433".to_string(), Role::Auto),
                ("[::1]:5434".to_string(), Role::Auto),
            ]
        );
        let specs = c.node_specs().unwrap();
        assert_eq!(specs[1].connect.get_host(), "db-2");
        assert_eq!(specs[1].connect.get_port(), 5433);
        assert_eq!(specs[1].connect.get_database(), Some("app"));
        assert_eq!(specs[1].connect.get_username(), "app");
        assert_eq!(
            split_hosts("postgres://a@h1,h2/db?target_session_attrs=any").unwrap()[1].1,
            "postgres://a@h2/db"
        );
        let named = parse(
            "[primary]\nurl = \"postgres://h0/db\"\n[[replicas]]\nname = \"r\"\nurl = \"postgres://h1,h2/db\"",
        );
        assert_eq!(
            named.nodes().unwrap(),
            vec![
                ("primary".to_string(), Role::Primary),
                ("r-h1".to_string(), Role::Replica),
                ("r-h2".to_string(), Role::Replica)
            ]
        );
        let primary = parse("[primary]\nurl = \"postgres://h1,h2/db\"");
        let (field, reason) = refused(&primary);
        assert_eq!(field, "primary.url");
        assert!(reason.contains("`nodes`"), "{reason}");
        let empty = parse("[[nodes]]\nurl = \"postgres://h1,,h2/db\"");
        let (field, reason) = refused(&empty);
        assert_eq!(field, "nodes.url");
        assert!(reason.contains("empty host"), "{reason}");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    fn spec(toml_text: &str) -> Result<NodeSpec, Error> {
        let config: RouterConfig = toml::from_str(toml_text).unwrap();
        config.node_specs().map(|mut specs| specs.remove(0))
    }

    #[test]
    fn the_node_beats_the_url_which_beats_the_router() {
        let mode = |toml_text: &str| spec(toml_text).unwrap().connect.get_ssl_mode();
        assert!(matches!(
            mode("[primary]\nurl = \"postgres://h/db\""),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("tls = { mode = \"disable\" }\n[primary]\nurl = \"postgres://h/db\""),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode(
                "tls = { mode = \"disable\" }\n[primary]\nurl = \"postgres://h/db?sslmode=allow\""
            ),
            PgSslMode::Allow
        ));
        assert!(matches!(
            mode(
                "tls = { mode = \"disable\" }\n[primary]\nurl = \"postgres://h/db?sslmode=allow\"\ntls = { mode = \"prefer\" }"
            ),
            PgSslMode::Prefer
        ));
    }

    #[test]
    fn unreadable_files_and_a_lone_certificate_are_refused_naming_the_node() {
        let err = spec(
            "[primary]\nurl = \"postgres://h/db\"\ntls = { ca_file = \"/nonexistent/ca.crt\" }",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "primary.tls.ca_file",
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("node `primary`") && text.contains("/nonexistent/ca.crt"),
            "{text}"
        );

        let err = spec(
            "[[nodes]]\nurl = \"postgres://h/db\"\ntls = { client_cert = \"/nonexistent/c.crt\" }",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "nodes.tls.client_key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_mode_needing_tls_needs_the_feature() {
        let outcome = spec("[primary]\nurl = \"postgres://h/db?sslmode=require\"");
        if cfg!(feature = "tls-rustls") {
            assert!(outcome.is_ok());
        } else {
            let err = outcome.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "primary.tls.mode",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("tls-rustls"), "{err}");
        }
        assert_eq!(SslMode::VerifyFull.as_str(), "verify-full");
        assert!(url_has_param(
            "postgres://h/db?a=1&sslrootcert=/x",
            URL_SSLROOTCERT
        ));
        assert!(!url_has_param("postgres://h/sslmode", URL_SSLMODE));
    }
}
