#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The sqlx this crate is built on (0.9): `use herd_db_router::sqlx;` keeps your queries and
/// the router on the same version.
pub use sqlx;

pub mod classify;
mod config;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
mod discover;
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
pub use config::{
    Fallback, NodeConfig, PoolConfig, ReadYourWritesConfig, Role, RouterConfig, SslMode, TlsConfig,
};
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use discover::DnsNodes;
pub use error::Error;
pub use error_class::ErrorClass;
/// [`tokio::spawn`] carrying the current read-your-writes scope (and [`on_primary`]) into the
/// new task; from herd-context.
pub use herd_context::spawn;
/// How [`DnsNodes`] resolves its name (herd-lb-core's).
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use herd_lb_core::discover::DnsConfig;
pub use lsn::Lsn;
pub use router::{DbRouter, DbRouterBuilder, PickedPool};
pub use scope::{Consistency, on_primary};
pub use status::{NodeStatus, ObservedRole, RouterStatus};

#[cfg(feature = "tower")]
pub use layer::{ReadYourWrites, ReadYourWritesLayer};
