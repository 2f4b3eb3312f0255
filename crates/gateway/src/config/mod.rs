//! The gateway from one TOML file: listeners (TLS, HTTPS redirect), upstream groups by name,
//! routes (path prefix -> group, with rate-limit zones, proxy cache, header rules and a body
//! size limit), named rate-limit zones (local or shared), the admin side, request ids, access
//! log and compression, server limits and workers. What the `herd-gateway` binary
//! runs, and what SIGHUP reloads (see [`Reloadable`]).
//!
//! Every table refuses keys it does not know, so a typo is an error, not a silent default; a
//! syntax or type error names the line and key (toml's message), and the checks after parsing
//! name the key and the problem ([`ConfigError`]). `${NAME}` and `${NAME:-default}` in the file
//! are replaced by environment variables before parsing (a missing one without a default is an
//! error).
//!
//! ```
//! use herd_gateway::config::FileConfig;
//!
//! let config = FileConfig::parse(r#"
//!     [[listen]]
//!     address = "127.0.0.1:8080"
//!
//!     [upstreams.backend_api]
//!     policy = "least_conn"
//!     servers = [{ address = "127.0.0.1:8001" }, { address = "127.0.0.1:8002" }]
//!     max_fails = 3
//!     fail_timeout = "30s"
//!     keepalive = 32
//!
//!     [limit_req_zones.login_limit]
//!     rate = "5r/m"
//!
//!     [[routes]]
//!     prefix = "/"
//!     upstream = "backend_api"
//!
//!     [[routes]]
//!     prefix = "/api/auth/login"
//!     upstream = "backend_api"
//!     limit_req = "login_limit"
//!     client_max_body_size = "1m"
//! "#).unwrap();
//! assert_eq!(config.upstreams["backend_api"].servers.len(), 2);
//!
//! let err = FileConfig::parse(r#"
//!     [[listen]]
//!     address = "127.0.0.1:8080"
//!     [upstreams.api]
//!     servers = [{ address = "127.0.0.1:8001" }]
//!     [[routes]]
//!     prefix = "/"
//!     upstream = "apii"
//! "#).unwrap_err();
//! assert!(err.to_string().contains("routes[0].upstream"), "{err}");
//! ```

mod build;
mod env;
mod schema;

pub use build::{Connection, Gateway, ReloadReport, Reloadable};
pub use schema::{
    AdminSection, CacheZone, FileConfig, GroupPolicy, HeaderRulesConfig, HealthCheckConfig,
    LimitZone, ListenConfig, RateLimitSection, ReturnConfig, RouteConfig, ServerEntry,
    UpstreamGroup,
};

use std::path::{Path, PathBuf};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A `${NAME}` could not be replaced.
    #[error("line {line}: {reason}")]
    Env {
        /// Line of the file (from 1).
        line: usize,
        /// The variable and the problem.
        reason: String,
    },
    /// TOML syntax, a value of the wrong type, an unknown or missing key: toml's message with
    /// the line, the key and the problem.
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// A value that parses but does not make sense (an unknown upstream group in a route, a
    /// duplicate prefix, a bad address...).
    #[error("{key}: {reason}")]
    Invalid {
        /// Where: `routes[2].upstream`, `upstreams.api.servers[0].address`, ...
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<herd_lb_core::Error> for ConfigError {
    fn from(e: herd_lb_core::Error) -> Self {
        match e {
            herd_lb_core::Error::InvalidConfig { field, reason } => Self::invalid(field, reason),
            other => Self::invalid("config", other.to_string()),
        }
    }
}

impl FileConfig {
    /// Parses and checks `text`, with `${NAME}` replaced from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (and line) and the problem.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_vars(text, |name| std::env::var(name).ok())
    }

    /// Parses and checks `text`, with `${NAME}` replaced by `vars(NAME)` (tests point a file's
    /// addresses at their own instances this way).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (and line) and the problem.
    pub fn parse_with_vars(
        text: &str,
        vars: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = env::substitute(text, vars)?;
        let config: FileConfig = toml::from_str(&text)?;
        config.check()?;
        Ok(config)
    }

    /// Reads, parses and checks the file at `path` (environment as in [`parse`](Self::parse)).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (and line) and the problem, or the file's read error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// A few lines saying what this configuration runs (what `herd-gateway --check` prints).
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for listen in &self.listen {
            let _ = write!(out, "listen {}", listen.address);
            if let Some(tls) = &listen.tls {
                let _ = write!(out, " tls ({})", tls.cert.display());
            }
            if let Some(port) = listen.redirect_https {
                let _ = write!(out, " (308 to https port {port})");
            }
            out.push('\n');
        }
        for (name, group) in &self.upstreams {
            let servers: Vec<&str> = group.servers.iter().map(|s| s.address.as_str()).collect();
            let _ = write!(
                out,
                "upstream {name}: {:?}, {} server(s): {}",
                group.policy,
                servers.len(),
                servers.join(", ")
            );
            #[cfg(feature = "dns")]
            if let Some(dns) = &group.dns {
                let _ = write!(out, " + every address of {}:{}", dns.name, dns.port);
            }
            out.push('\n');
        }
        for route in &self.routes {
            let _ = write!(out, "route {}", route.prefix);
            match (&route.upstream, &route.return_) {
                (Some(group), _) => {
                    let _ = write!(out, " -> {group}");
                }
                (None, Some(ret)) => {
                    let _ = write!(out, " -> return {}", ret.status);
                }
                (None, None) => {}
            }
            if let Some(zone) = &route.limit_req {
                let _ = write!(out, ", limit_req {zone}");
            }
            if let Some(zone) = &route.proxy_cache {
                let _ = write!(out, ", proxy_cache {zone}");
            }
            if let Some(size) = route.client_max_body_size {
                let _ = write!(out, ", client_max_body_size {size}");
            }
            out.push('\n');
        }
        if self.routes.is_empty()
            && let Some(name) = self.upstreams.keys().next()
        {
            let _ = writeln!(out, "route / -> {name} (the only group)");
        }
        for (name, zone) in &self.limit_req_zones {
            let _ = writeln!(out, "limit_req_zone {name}: {}", zone.rate);
        }
        out
    }
}
