//! Endpoint health: passive outlier detection, slow start and active checks.

mod passive;

pub use passive::{OutlierDetection, SlowStart};
