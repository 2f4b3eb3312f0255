//! [`StoreCheck`]: a herd-health check for the session store, so readiness reports when
//! sessions cannot be loaded (requests needing them would get 503).
//!
//! Register it as a shared dependency: the store is shared by every instance, so its failure
//! shows on `/health` without failing readiness everywhere at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use herd_health::{HealthCheck as _, Status};
//! use herd_session::MemoryStore;
//! use herd_session::health::StoreCheck;
//!
//! let check = StoreCheck::new(MemoryStore::new());
//! assert_eq!(check.check().await.status(), Status::Pass);
//! // In a service: `.check_with(StoreCheck::new(store.clone()), CheckOptions::new().shared_dependency())`.
//! # }
//! ```

// The checks are for the stores the features bring; with neither, the type stays (empty).
#![cfg_attr(not(any(feature = "redis", feature = "memory")), allow(unused_imports))]

use std::borrow::Cow;

use herd_health::{CheckResult, ComponentType, HealthCheck, Measurement, Status, async_trait};

/// A herd-health check for a session store: a [`RedisStore`](crate::RedisStore) (a timed
/// `PING`) or a [`MemoryStore`](crate::MemoryStore) (always passes; reports how many sessions
/// it holds). Named `session-store` unless [`named`](Self::named) otherwise.
#[derive(Debug, Clone)]
pub struct StoreCheck<S> {
    store: S,
    name: Cow<'static, str>,
}

impl<S> StoreCheck<S> {
    /// A check of `store` (a clone shares the store's connection or sessions).
    pub fn new(store: S) -> Self {
        Self {
            store,
            name: Cow::Borrowed("session-store"),
        }
    }

    /// The check's name (default `session-store`), e.g. when a service has two stores.
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The store checked.
    pub fn store(&self) -> &S {
        &self.store
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl HealthCheck for StoreCheck<crate::RedisStore> {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    /// `PING` through the store's connection, timed; fails with the store error (which names
    /// the nodes) when Redis does not answer within the store's
    /// [`operation_timeout`](crate::RedisStoreConfig::operation_timeout).
    async fn check(&self) -> CheckResult {
        let started = std::time::Instant::now();
        match self.store.ping().await {
            Ok(()) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                CheckResult::pass().with_measurement(
                    Measurement::new("responseTime", Status::Pass).observed(ms, "ms"),
                )
            }
            Err(error) => CheckResult::from_error(&error),
        }
    }
}

#[cfg(feature = "memory")]
#[async_trait]
impl HealthCheck for StoreCheck<crate::MemoryStore> {
    fn name(&self) -> &str {
        &self.name
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    /// Always passes (the store is this process); reports how many sessions it holds.
    async fn check(&self) -> CheckResult {
        CheckResult::pass().with_measurement(
            Measurement::new("sessions", Status::Pass).observed(self.store.len(), "sessions"),
        )
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_check_passes_and_counts_sessions() {
        let check = StoreCheck::new(crate::MemoryStore::new());
        let result = check.check().await;
        assert_eq!(result.status(), Status::Pass);
        assert_eq!(check.name(), "session-store");
        assert_eq!(result.measurements()[0].observed_value, Some(0.into()));
        assert_eq!(check.named("sessions-eu").name(), "sessions-eu");
    }
}
