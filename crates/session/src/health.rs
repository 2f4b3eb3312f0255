//! herd-health checks for the session stores: a service registers its store so readiness
//! reports when sessions cannot be loaded (requests needing them would get 503).

use herd_health::{CheckResult, ComponentType, HealthCheck, Measurement, Status, async_trait};

#[cfg(feature = "redis")]
#[async_trait]
impl HealthCheck for crate::RedisStore {
    fn name(&self) -> &str {
        "session-store"
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    /// `PING` through the store's connection, timed; fails with the store error (which names
    /// the nodes) when Redis does not answer within the store's timeout.
    async fn check(&self) -> CheckResult {
        let started = std::time::Instant::now();
        match self.ping().await {
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
impl HealthCheck for crate::MemoryStore {
    fn name(&self) -> &str {
        "session-store"
    }

    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    /// Always passes (the store is this process); reports how many sessions it holds.
    async fn check(&self) -> CheckResult {
        CheckResult::pass().with_measurement(
            Measurement::new("sessions", Status::Pass).observed(self.len(), "sessions"),
        )
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_check_passes_and_counts_sessions() {
        let store = crate::MemoryStore::new();
        let result = store.check().await;
        assert_eq!(result.status(), Status::Pass);
        assert_eq!(store.name(), "session-store");
        assert_eq!(result.measurements()[0].observed_value, Some(0.into()));
    }
}
