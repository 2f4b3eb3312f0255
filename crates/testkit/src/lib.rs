#![doc = include_str!("../README.md")]

mod dns;
mod error;
#[cfg(target_os = "linux")]
pub mod net;
mod postgres;
mod process;
mod redis;
pub mod shared;
pub mod spans;
pub mod tls;

pub use crate::dns::DnsServer;
pub use crate::error::{Error, Result};
pub use crate::postgres::{PgCluster, PgNode};
pub use crate::redis::{RedisCluster, RedisClusterBuilder, RedisNode, RedisServer};
