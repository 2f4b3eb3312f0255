#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
#[cfg(feature = "cookie-store")]
mod cookie_store;
mod cookies;
mod error;
pub mod future;
#[cfg(feature = "health")]
#[cfg_attr(docsrs, doc(cfg(feature = "health")))]
pub mod health;
mod id;
mod keys;
mod macros;
mod merge;
pub mod metrics;
mod persist;
mod read_your_writes;
mod record;
mod service;
mod session;
pub mod store;

#[cfg(feature = "axum")]
mod extract;

pub use config::{
    ConflictRule, CookieConfig, HOST_COOKIE_NAME, OnStoreError, PLAIN_COOKIE_NAME,
    SECURE_COOKIE_NAME, SameSite, SessionConfig, TtlExtension,
};
pub use cookies::SESSION_TOKEN_HEADER;
pub use error::{ConfigError, SessionError, StoreError, StoreOperation};
pub use id::{SessionId, SessionIdGenerator, StoreKey};
pub use keys::{Key, MIN_KEY_LEN, SigningKeys};
pub use merge::{Keep, MergeRule};
pub use record::{FieldChanges, SessionRecord};
pub use service::{SessionLayer, SessionLayerBuilder, SessionService};
pub use session::Session;
pub use store::{SaveOutcome, SessionStore, Stored};

#[cfg(feature = "cookie-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "cookie-store")))]
pub use cookie_store::MAX_COOKIE_LEN;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::MissingSessionLayer;
pub use read_your_writes::READ_YOUR_WRITES_FIELD;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use store::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::{RedisStore, RedisStoreConfig, RedisTlsConfig};
