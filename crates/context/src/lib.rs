//! What herd's crates share without depending on each other: request-scoped state that
//! follows the work spawned for a request, and where a request keeps its read-your-writes
//! token.
//!
//! herd's crates are independent (a service adds the ones it needs), but a request crosses
//! several of them: herd-db-router's read-your-writes scope must reach a herd-cache-cluster
//! loader that runs as its own task, and the token that scope starts from may live in a
//! herd-session session. This crate holds the two small contracts that make that work with no
//! wiring by the application:
//!
//! - **Scopes follow spawned work.** A crate whose state is task-scoped (a tokio task-local)
//!   [registers](register) a [`Propagate`]; a crate that hands work to another task captures
//!   the current state with [`Captured::current`] (or calls [`spawn`]) and runs the work in
//!   it. The cache's loaders and background refreshes do this, so a loader reads exactly as
//!   the request that started it would. Use [`spawn`] yourself for work you spawn on a
//!   request's behalf.
//! - **A token slot.** A [`TokenSlot`] in a request's extensions is where the request's
//!   client keeps its read-your-writes token between requests (herd-session puts one there,
//!   backed by the session); herd-db-router's `ReadYourWritesLayer::session` reads and
//!   advances it. Tokens are positions that only move forward; [`newer`] is the merge rule.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::task_local! { static TENANT: &'static str; }
//!
//! // The crate owning the task-local registers how to carry it, once.
//! struct Tenant;
//! struct InTenant(&'static str);
//! impl herd_context::Propagate for Tenant {
//!     fn capture(&self) -> Option<Box<dyn herd_context::Scope>> {
//!         TENANT.try_with(|t| Box::new(InTenant(t)) as Box<dyn herd_context::Scope>).ok()
//!     }
//! }
//! impl herd_context::Scope for InTenant {
//!     fn enter(&self, f: &mut dyn FnMut()) {
//!         TENANT.sync_scope(self.0, f)
//!     }
//! }
//! static TENANT_SCOPE: Tenant = Tenant;
//! herd_context::register(&TENANT_SCOPE);
//!
//! // Work spawned inside the scope runs in it.
//! let seen = TENANT
//!     .scope("acme", async { herd_context::spawn(async { TENANT.get() }).await })
//!     .await;
//! assert_eq!(seen.ok(), Some("acme"));
//! // A plain `tokio::spawn` would not see it.
//! let plain = TENANT
//!     .scope("acme", async { tokio::spawn(async { TENANT.try_with(|t| *t).ok() }).await })
//!     .await;
//! assert_eq!(plain.ok(), Some(None));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod scope;
mod token;

pub use scope::{Captured, InScope, Propagate, Scope, in_current_scope, register, spawn};
pub use token::{BoxError, TokenFuture, TokenSlot, TokenStore, newer};
