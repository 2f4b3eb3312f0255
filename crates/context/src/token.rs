//! Where a request keeps its client's read-your-writes token between requests.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The error type of a [`TokenStore`]: tower's `BoxError` (the same type, so a store's error
/// passes through herd's tower layers unchanged), defined here because this crate does not
/// depend on tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`TokenStore`] method returns.
pub type TokenFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// Keeps one client's read-your-writes token: a position (herd-db-router's `Lsn` as a
/// `u64`) that its reads must have caught up with.
///
/// herd-session implements it over the session, so the token lives with the session on every
/// instance and needs no cookie of its own. A token only moves forward: [`advance`] with a
/// lower position than the stored one keeps the stored one, and concurrent requests that
/// store different tokens end with the higher ([`newer`] is the rule).
///
/// [`advance`]: TokenStore::advance
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token (`None`: none yet, or one that is not a token).
    fn load(&self) -> TokenFuture<'_, Option<u64>>;

    /// Raises the stored token to `token` (a lower one changes nothing).
    fn advance(&self, token: u64) -> TokenFuture<'_, ()>;
}

/// The merge rule for tokens: whether `ours` is to be kept over `theirs` (the higher
/// position covers the lower, so it wins; equal ones are the same).
///
/// ```
/// assert!(herd_context::newer(0x3000, 0x2000));
/// assert!(!herd_context::newer(0x10, 0x20));
/// ```
pub fn newer(ours: u64, theirs: u64) -> bool {
    ours >= theirs
}

/// A request extension naming the [`TokenStore`] of the request's client.
///
/// herd-session's layer inserts one into every request it serves; herd-db-router's
/// `ReadYourWritesLayer::session` (inside the session layer) reads the token from it before
/// the handler and advances it after a write, before the session is saved.
#[derive(Clone)]
pub struct TokenSlot {
    store: Arc<dyn TokenStore>,
}

impl fmt::Debug for TokenSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSlot").finish_non_exhaustive()
    }
}

impl TokenSlot {
    /// A slot backed by `store`.
    pub fn new(store: Arc<dyn TokenStore>) -> Self {
        Self { store }
    }

    /// The client's token; see [`TokenStore::load`].
    ///
    /// # Errors
    /// The store's, e.g. an unreachable session store.
    pub async fn load(&self) -> Result<Option<u64>, BoxError> {
        self.store.load().await
    }

    /// Raises the client's token to `token`; see [`TokenStore::advance`].
    ///
    /// # Errors
    /// The store's.
    pub async fn advance(&self, token: u64) -> Result<(), BoxError> {
        self.store.advance(token).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Kept(Mutex<Option<u64>>);

    impl TokenStore for Kept {
        fn load(&self) -> TokenFuture<'_, Option<u64>> {
            let value = *self.0.lock().unwrap();
            Box::pin(async move { Ok(value) })
        }

        fn advance(&self, token: u64) -> TokenFuture<'_, ()> {
            let mut kept = self.0.lock().unwrap();
            if !kept.is_some_and(|kept| newer(kept, token)) {
                *kept = Some(token);
            }
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_slot_only_moves_forward() {
        let slot = TokenSlot::new(Arc::new(Kept::default()));
        assert_eq!(slot.load().await.unwrap(), None);
        slot.advance(20).await.unwrap();
        slot.advance(10).await.unwrap();
        assert_eq!(slot.load().await.unwrap(), Some(20));
    }
}
