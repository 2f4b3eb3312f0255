//! PostgreSQL read/write splitting over sqlx: lag-aware replica routing, read-your-writes by LSN, failover detection.
