//! Background tasks tied to the lifetime of their owner.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so background loops end with the value that started them.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
