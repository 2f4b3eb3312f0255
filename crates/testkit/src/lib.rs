//! Starts real PostgreSQL and Redis servers for tests (being written).
