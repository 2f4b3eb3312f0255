//! HTTP integration: the reverse-proxy upstream, client IPs behind proxies, hashing keys.

mod body;
mod client_ip;
mod h1;
mod headers;
pub mod key;
mod pool;
mod upstream;

pub use body::{ProxyBody, UpstreamBody};
pub use client_ip::{ClientAddr, TrustedProxies, client_ip, peer_addr};
pub use pool::PooledBody;
pub use upstream::{
    HashKeyConfig, HttpActiveHealth, HttpEndpoint, HttpRetry, HttpUpstream, HttpUpstreamConfig,
    ProxyFuture, UpstreamError, UpstreamErrorKind,
};
