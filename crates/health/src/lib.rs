//! Liveness, readiness, startup and deep health endpoints (application/health+json), Prometheus metrics and graceful drain.
