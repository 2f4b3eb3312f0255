//! Load balancing across service instances as tower services: P2C, weighted round robin, least outstanding, Peak-EWMA, bounded-load consistent hashing, health, retries, rate limits.
