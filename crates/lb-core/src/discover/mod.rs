//! Membership from outside: any `tower::discover::Discover` stream feeds an
//! [`EndpointSet`](crate::EndpointSet) ([`DiscoverFeed`]; [`Balancer::discover`](crate::Balancer::discover) runs one), and a DNS name
//! re-resolved on an interval is such a stream ([`DnsDiscover`], feature `dns`).
//!
//! A feed inserts what the stream adds and drains what it removes: the endpoint takes no new
//! request at once and leaves the set when its last request has finished. An endpoint that
//! stays keeps its state (in-flight count, latency estimate, ejection, failure counters), as
//! every membership change of the set does.
//!
//! ```no_run
//! # #[cfg(feature = "dns")]
//! # async fn demo() -> Result<(), herd_lb_core::Error> {
//! use std::net::SocketAddr;
//! use herd_lb_core::EndpointSet;
//! use herd_lb_core::discover::{DiscoverFeed, DnsConfig, DnsDiscover};
//!
//! // A Kubernetes headless Service: one A record per ready pod, port 8080 on each.
//! let set: EndpointSet<SocketAddr, SocketAddr> = EndpointSet::new();
//! let dns = DnsDiscover::new(DnsConfig::new("app.default.svc.cluster.local", 8080))?;
//! tokio::spawn(DiscoverFeed::new(&set).run(dns));
//! # Ok(()) }
//! ```

#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
mod dns;
mod tower;

/// What a discovery stream yields (tower's), re-exported for crates that follow one without
/// depending on tower.
pub use ::tower::discover::Change;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use dns::{DNS_ADDRESSES, DNS_RESOLVE_FAILURES_TOTAL, DnsConfig, DnsDiscover};
pub use tower::{DiscoverFeed, MapService, Removal};
