//! Shared helpers for herd's criterion benchmarks (`cargo bench -p herd-benches`).

pub mod floor;
pub mod proc;

/// A multi-threaded tokio runtime for benchmarks that need real servers or async work.
///
/// # Errors
/// Fails when the OS refuses the runtime's threads or I/O driver.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
