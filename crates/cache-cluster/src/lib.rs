//! Redis Cluster cache with a local L1, one load per key under a stampede, fail-open, and an HTTP response cache layer.
