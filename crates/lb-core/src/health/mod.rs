//! Endpoint health: passive outlier detection, slow start and active checks.

pub(crate) mod active;
pub(crate) mod passive;

pub use active::{ActiveHealth, ActiveHealthConfig, Probe, ProbeError, ProbeFuture, TcpProbe};
pub use passive::{OutlierDetection, SlowStart};
