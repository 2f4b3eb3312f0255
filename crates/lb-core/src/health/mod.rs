//! Endpoint health: passive outlier detection, slow start and active checks.

pub(crate) mod active;
#[cfg(feature = "http")]
mod http_check;
pub(crate) mod passive;

pub use active::{
    ActiveHealth, ActiveHealthConfig, CheckError, CheckFuture, HealthCheck, TcpCheck,
};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use http_check::HttpCheck;
pub use passive::{OutlierDetection, SlowStart};
