//! Endpoint health: passive outlier detection, slow start and active checks.

pub(crate) mod active;
#[cfg(feature = "http")]
mod http_probe;
pub(crate) mod passive;

pub use active::{ActiveHealth, ActiveHealthConfig, Probe, ProbeError, ProbeFuture, TcpProbe};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use http_probe::HttpProbe;
pub use passive::{OutlierDetection, SlowStart};
