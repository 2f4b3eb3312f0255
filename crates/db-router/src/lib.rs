//! PostgreSQL read/write splitting over sqlx: lag-aware replica routing, read-your-writes by
//! LSN, failover detection.
//!
//! sqlx has no notion of replicas. herd-db-router puts one [`DbRouter`] in front of a
//! primary and its streaming replicas, each with its own sqlx `PgPool`:
//!
//! - **Automatic routing.** `&DbRouter` implements [`sqlx::Executor`], so code written
//!   against `&PgPool` works unchanged. Each statement is [classified](classify()): a
//!   provably read-only one goes to a replica, anything else to the primary. A replica that
//!   still refuses a statement as a write (SQLSTATE 25006) sees it retried on the primary.
//! - **Explicit routing.** [`DbRouter::primary`], [`DbRouter::replica`], [`DbRouter::begin`],
//!   [`DbRouter::begin_read_only`], and [`on_primary`] to force the primary for a scope.
//! - **Lag awareness.** A background monitor checks every node each `check_interval`
//!   (role, WAL positions, replay age); a replica takes reads only while reachable, in
//!   recovery and within `max_lag_bytes` and `max_lag`. Replicas are chosen among the
//!   eligible ones with herd-lb-core's selection (least outstanding by default, weights
//!   honoured); a connection error takes a replica out at once until its next good check.
//! - **Read-your-writes.** A [`Consistency`] scope carries a client's WAL position
//!   ([`Lsn`]); its reads go to a replica that has replayed it, wait up to a bound, or go to
//!   the primary. The `ReadYourWritesLayer` (feature `tower`) carries the token between
//!   requests in the herd session (recommended), a signed cookie or a header, so a user sees
//!   their own writes on every instance; tokens beyond what the primary has reported are
//!   ignored. The scope follows work herd runs for the request in other tasks (cache loaders
//!   and refreshes); [`spawn`] carries it into work you spawn yourself.
//! - **Failover.** With `role = "auto"` (the default for `nodes`; give every node you know,
//!   or one libpq-style multi-host URL) the monitor follows the writable node; writes fail
//!   fast with [`Error::NoPrimary`] while there is none, and go to a promoted replica within
//!   two check intervals, without a restart. A node that is read-only, or an old primary back
//!   on an older timeline, is never written to. A node found down stops new statements, never
//!   one already sent: a write that may commit is not reported failed.
//! - **Blame.** [`ErrorClass`] sorts errors by SQLSTATE class: a client's bad data (22xxx) or
//!   conflict (23xxx) is a 4xx, an unavailable database a 503 with `Retry-After`.
//! - **Observability.** [`DbRouter::status`], `herd_db_*` metrics (see [`metrics`]),
//!   `tracing` events, and a herd-health check (feature `health`).
//!
//! ```
//! use herd_db_router::{classify, Reason, Route};
//!
//! assert!(classify("SELECT * FROM users WHERE id = $1").is_replica());
//! assert_eq!(classify("SELECT * FROM jobs FOR UPDATE SKIP LOCKED"), Route::Primary(Reason::LockingClause));
//! assert_eq!(
//!     classify("WITH moved AS (DELETE FROM queue RETURNING *) SELECT * FROM moved"),
//!     Route::Primary(Reason::DataModifying),
//! );
//! ```
//!
//! With servers (here from a TOML configuration):
//!
//! ```no_run
//! use herd_db_router::{DbRouter, RouterConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config: RouterConfig = toml::from_str(r#"
//!     check_interval = "1s"
//!     max_lag_bytes = 16777216
//!     max_lag = "5s"
//!     [[nodes]]
//!     url = "postgres://app@db-1/app"
//!     [[nodes]]
//!     url = "postgres://app@db-2/app"
//! "#)?;
//! let router = DbRouter::connect(config).await?;
//! let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&router).await?;
//! sqlx::query("INSERT INTO users (name) VALUES ($1)").bind("ada").execute(&router).await?;
//! println!("{count} users; write node {:?}", router.status().primary);
//! # Ok(()) }
//! ```
//!
//! # sqlx
//!
//! `&DbRouter` implements sqlx **0.9**'s `Executor`. Use the sqlx this crate re-exports
//! (`use herd_db_router::sqlx;`) rather than adding sqlx to your `Cargo.toml` yourself: the
//! versions cannot drift apart (with sqlx 0.8 in your own dependencies, every query on
//! `&DbRouter` fails to compile with trait errors naming neither version). If you do add it,
//! use `sqlx = { version = "0.9", default-features = false, features = ["runtime-tokio",
//! "postgres"] }` (plus `macros` and the types you use).
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The sqlx this crate is built on (0.9): `use herd_db_router::sqlx;` keeps your queries and
/// the router on the same version.
pub use sqlx;

pub mod classify;
mod config;
mod error;
mod error_class;
mod executor;
mod lsn;
#[cfg(feature = "tower")]
mod macros;
pub mod metrics;
mod monitor;
mod node;
mod nodes;
mod router;
mod scope;
mod status;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;

#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;

pub use classify::{
    Catalog, CatalogFunction, Classifier, FunctionPolicy, Reason, Route, SAFE_VOLATILE, Volatility,
    classify,
};
pub use config::{Fallback, NodeConfig, PoolConfig, ReadYourWritesConfig, Role, RouterConfig};
pub use error::Error;
pub use error_class::ErrorClass;
/// [`tokio::spawn`] carrying the current read-your-writes scope (and [`on_primary`]) into the
/// new task; from herd-context.
pub use herd_context::spawn;
pub use lsn::Lsn;
pub use router::{DbRouter, DbRouterBuilder, PickedPool};
pub use scope::{Consistency, on_primary};
pub use status::{NodeStatus, ObservedRole, RouterStatus};

#[cfg(feature = "tower")]
pub use layer::{ReadYourWrites, ReadYourWritesLayer};
