//! Built-in checks: the machine (CPU, memory, load), disk space and, with the `lb-core`
//! feature, a herd-lb-core balancer's healthy endpoints. Checks of herd-db-router and
//! herd-cache-cluster live in those crates (behind their `health` feature) and implement the
//! same [`HealthCheck`](crate::HealthCheck) trait. Closures are checks through
//! [`check::from_fn`](crate::check::from_fn).

#[cfg(feature = "disk")]
mod disk;
#[cfg(feature = "lb-core")]
mod lb;
#[cfg(feature = "system")]
mod system;

#[cfg(feature = "disk")]
#[cfg_attr(docsrs, doc(cfg(feature = "disk")))]
pub use disk::{DiskSpaceCheck, DiskThresholds};
#[cfg(feature = "lb-core")]
#[cfg_attr(docsrs, doc(cfg(feature = "lb-core")))]
pub use lb::{EndpointThresholds, EndpointsCheck};
#[cfg(feature = "system")]
#[cfg_attr(docsrs, doc(cfg(feature = "system")))]
pub use system::{SystemCheck, SystemThresholds};
