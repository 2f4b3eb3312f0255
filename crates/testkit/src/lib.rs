//! Real PostgreSQL and Redis topologies for tests and demos, started from the machine's own binaries.
//!
//! herd's crates are tested against the servers they run against in production, never mocks:
//! [`PgCluster`] starts a PostgreSQL primary with streaming replicas (initdb + `pg_basebackup -R -X
//! stream`), [`RedisCluster`] a 6-node Redis Cluster (`redis-cli --cluster create`) and
//! [`RedisServer`] a standalone Redis. Each runs on free loopback ports in its own temp dir, so test
//! binaries can run at the same time; everything is stopped and removed on drop, even when a test
//! panics, and a watchdog process cleans up if the test process dies without dropping it. Fault
//! operations (promote, pause replay, stop, SIGKILL, restart, wait for a cluster failover) are what
//! herd's failover tests are made of.
//!
//! When the process runs as root, PostgreSQL (which refuses root) runs as the `postgres` system user.
//! Missing binaries give an error naming the program and the package to install.
//!
//! ```
//! use herd_testkit::{PgCluster, RedisCluster};
//!
//! # #[tokio::main] async fn main() -> herd_testkit::Result<()> {
//! let pg = PgCluster::start(2).await?;               // primary + 2 streaming replicas
//! let pool = sqlx::PgPool::connect(&pg.primary_url()).await.expect("connect");
//! sqlx::query("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
//!     .execute(&pool)
//!     .await
//!     .expect("create");
//! pg.wait_for_replay().await?;                      // visible on both replicas now
//!
//! pg.replica(0).pause_replay().await?;              // replica1 falls behind...
//! sqlx::query("INSERT INTO notes (body) VALUES ('hi')").execute(&pool).await.expect("insert");
//! assert!(pg.lag_bytes().await?[0] > 0);
//!
//! let redis = RedisCluster::start().await?;         // 3 masters + 3 replicas
//! let victim = redis.masters().await?[0];
//! victim.kill()?;                                   // SIGKILL a master
//! let took = redis.wait_for_failover(std::time::Duration::from_secs(30)).await?;
//! println!("failover took {took:?}");
//! # Ok(()) }
//! ```
//!
//! Tests that only read can share one lazily started topology per test binary: see [`shared`].

mod error;
mod postgres;
mod process;
mod redis;
pub mod shared;

pub use crate::error::{Error, Result};
pub use crate::postgres::{PgCluster, PgNode};
pub use crate::redis::{RedisCluster, RedisClusterBuilder, RedisNode, RedisServer};
