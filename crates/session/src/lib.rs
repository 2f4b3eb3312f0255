//! Shared sessions for horizontally scaled services: a tower layer over Redis Cluster with
//! signed cookies and no lost updates.
//!
//! Run N copies of a service behind a balancer and any copy can serve any request: the
//! session lives in a shared store (Redis Cluster, standalone Redis, or for development an
//! in-process [`MemoryStore`]), and the browser holds only a signed cookie naming it. With the
//! `cookie-store` feature the whole session can live in an encrypted cookie instead.
//!
//! ```
//! use axum::{Router, routing::get};
//! use herd_session::{MemoryStore, Session, SessionError, SessionLayer, SigningKeys};
//!
//! async fn visits(session: Session) -> Result<String, SessionError> {
//!     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", n).await?;
//!     Ok(format!("visit number {n}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every instance must share the keys: load them from configuration in production.
//! let keys = SigningKeys::generate()?;
//! let layer = SessionLayer::builder(MemoryStore::new(), keys)
//!     .secure(false) // plain-HTTP localhost only
//!     .build()?;
//! let app: Router = Router::new().route("/", get(visits)).layer(layer);
//! # use tower::ServiceExt as _;
//! # let response = app.clone().oneshot(http::Request::new(axum::body::Body::empty())).await?;
//! # assert!(response.headers().contains_key("set-cookie"));
//! # Ok(()) }
//! ```
//!
//! What it does for you:
//!
//! * **Lazy.** The store is read only when a handler first touches the session and written
//!   only when something changed, or, with a rolling expiry, touched at most once per half
//!   idle timeout. Sessions that never get data are never stored.
//! * **No lost updates.** Every save is a check-and-set on a version (a Lua script on one key
//!   in Redis). When another request saved first, changes to different fields merge and the
//!   save retries; a field changed on both sides is settled by [`ConflictRule`] and counted.
//!   A slow request cannot bring back a session that was destroyed or cycled meanwhile.
//! * **Secure defaults.** 256-bit ids from the OS CSPRNG; cookie signed with HMAC-SHA256 under
//!   rotating [`SigningKeys`] (make a key with `cargo run -p herd-session --example keygen`
//!   in a herd checkout, `openssl rand -base64 64` anywhere, or `Key::generate()?.to_base64()`
//!   in code; every instance loads the same text with `Key::from_base64`); the cookie is
//!   `__Host-sid` with `HttpOnly; Secure; SameSite=Lax; Path=/`, so no other host (a sibling
//!   subdomain included) can plant one, and `sid` only after the explicit `.secure(false)`
//!   opt-out for plain-HTTP development; a request carrying the session cookie more than once
//!   gets no session, and at most one value per request is verified ([`CookieConfig`] says
//!   why); Max-Age kept in step with the store's expiry; idle (30 min) and absolute (12 h)
//!   timeouts; stores see only a SHA-256 of the id. [`Session::cycle_id`] on log-in,
//!   [`Session::destroy`] on log-out.
//! * **Bad input is not an error page.** A malformed, forged, expired or unknown cookie gives
//!   a fresh empty session. Data over the size limit (64 KiB) is a typed
//!   [`SessionError::TooLarge`]. An unreachable store answers `503` by default
//!   ([`OnStoreError`]).
//!
//! Metrics (through the `metrics` facade): `herd_session_loads_total`,
//! `herd_session_saves_total`, `herd_session_conflicts_total`,
//! `herd_session_store_errors_total`, `herd_session_cookies_rejected_total`.
//!
//! For plain hyper/tower services, the session is a request extension:
//! `request.extensions().get::<Session>()`.
//!
//! **Read-your-writes.** The session is the recommended home of herd-db-router's
//! read-your-writes token: add `ReadYourWritesLayer::session(router)` before this layer and the
//! token rides in the session on every instance, with no cookie of its own (the layer puts a
//! `herd_context::TokenSlot` in every request; see [`Session::read_your_writes`]). This crate
//! does not depend on herd-db-router.
//!
//! **API clients.** With the cookie store, [`SessionLayerBuilder::bearer_tokens`] also reads
//! the sealed session from `Authorization: Bearer`, for clients that are not browsers; see
//! [`SessionLayer::cookie_store_builder`].
//!
//! # Features
//!
//! `axum` (default), `memory` (default), `redis` (default), `cookie-store`, `health`, and
//! `full` for all of them.

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
pub use store::{RedisStore, RedisStoreConfig};
