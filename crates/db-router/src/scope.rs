//! Task-scoped routing state: forcing the primary, and the read-your-writes token of the
//! client being served.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use tokio::task::futures::TaskLocalFuture;

use crate::lsn::Lsn;

tokio::task_local! {
    static FORCE_PRIMARY: ();
    static CONSISTENCY: Consistency;
}

/// Runs `fut` with every statement the router routes automatically sent to the primary,
/// whatever the classifier says (for a read that must see the very latest data).
///
/// ```no_run
/// # async fn demo(router: herd_db_router::DbRouter) -> Result<(), sqlx::Error> {
/// let balance: i64 = herd_db_router::on_primary(async {
///     sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1").fetch_one(&router).await
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// Work herd spawns for the scope (a cache loader, a background refresh) runs in it too; see
/// [`Consistency`] for work you spawn yourself.
pub async fn on_primary<F: Future>(fut: F) -> F::Output {
    propagate_scopes();
    FORCE_PRIMARY.scope((), fut).await
}

pub(crate) fn primary_forced() -> bool {
    FORCE_PRIMARY.try_with(|_| ()).is_ok()
}

/// One client's read-your-writes state: the WAL position its reads must see, and whether
/// it wrote since.
///
/// Run a client's work inside [`scope`](Self::scope): writes through the router mark it,
/// and reads through the router go only to replicas that have replayed the client's
/// writes (waiting up to `read_your_writes.max_wait`, else reading from the primary).
/// The tower layer `ReadYourWritesLayer` (feature `tower`) does this per HTTP request and
/// carries the token between requests in the herd session, a signed cookie or a header.
///
/// # Work spawned for the client
///
/// The scope is a tokio task-local, so it belongs to the task that entered it. Work that herd
/// runs for the client in other tasks carries it along: herd-cache-cluster's `get_or_load`
/// loaders and background refreshes read exactly as the request that started them would
/// (through [`herd_context`], which this crate registers with when a scope is first entered).
/// For work you spawn yourself, use [`spawn`](crate::spawn) instead of `tokio::spawn`, or
/// capture the scope with [`herd_context::Captured::current`] and
/// [`run`](herd_context::Captured::run) the work in it:
///
/// ```no_run
/// # async fn demo(router: herd_db_router::DbRouter) {
/// # let client = herd_db_router::Consistency::new();
/// client
///     .scope(async {
///         let router = router.clone();
///         // Reads in the spawned task still see this client's writes.
///         herd_db_router::spawn(async move {
///             sqlx::query("SELECT 1").execute(&router).await
///         })
///         .await
///     })
///     .await;
/// # }
/// ```
///
/// ```no_run
/// # async fn demo(router: herd_db_router::DbRouter) -> Result<(), sqlx::Error> {
/// use herd_db_router::Consistency;
///
/// let client = Consistency::new();
/// client
///     .scope(async {
///         sqlx::query("UPDATE users SET name = 'x' WHERE id = 1").execute(&router).await?;
///         // Runs on a replica that has replayed the UPDATE, or on the primary.
///         sqlx::query("SELECT name FROM users WHERE id = 1").fetch_one(&router).await
///     })
///     .await?;
/// // The token to hand to the client for its next request:
/// let token = router.settle(&client).await.map_err(herd_db_router::Error::into_sqlx)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Consistency {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Reads must see at least this position (0: no requirement).
    min_lsn: AtomicU64,
    /// A write happened that `min_lsn` does not cover yet.
    unsettled: AtomicBool,
    /// Any write happened in this scope (for the token handed out at the end).
    wrote: AtomicBool,
}

impl Consistency {
    /// No requirement yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads must see at least `token` (from the client's previous request).
    pub fn after(token: Lsn) -> Self {
        let c = Self::new();
        c.advance(token);
        c
    }

    /// The position reads must see (`None` when there is no requirement).
    pub fn token(&self) -> Option<Lsn> {
        match self.inner.min_lsn.load(Ordering::Acquire) {
            0 => None,
            v => Some(Lsn::new(v)),
        }
    }

    /// Raises the requirement to `lsn` (never lowers it).
    pub fn advance(&self, lsn: Lsn) {
        self.inner.min_lsn.fetch_max(lsn.as_u64(), Ordering::AcqRel);
    }

    /// Whether a write happened in this scope.
    pub fn wrote(&self) -> bool {
        self.inner.wrote.load(Ordering::Acquire)
    }

    /// Records a write (done by the router for statements it sends to the primary; call it
    /// yourself after writing through a pool you got from the router).
    pub fn mark_write(&self) {
        self.inner.unsettled.store(true, Ordering::Release);
        self.inner.wrote.store(true, Ordering::Release);
    }

    pub(crate) fn take_unsettled(&self) -> bool {
        self.inner.unsettled.swap(false, Ordering::AcqRel)
    }

    /// Runs `fut` with this state as the current one for the router.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        self.scoped(fut).await
    }

    /// [`scope`](Self::scope) as a future that can be named (for the tower layer's
    /// `ResponseFuture`).
    pub(crate) fn scoped<F: Future>(&self, fut: F) -> TaskLocalFuture<Consistency, F> {
        propagate_scopes();
        CONSISTENCY.scope(self.clone(), fut)
    }

    /// The state of the scope the current task runs in.
    pub fn current() -> Option<Consistency> {
        CONSISTENCY.try_with(Clone::clone).ok()
    }

    /// `f` on the state of the current scope, without cloning it (`None` outside a scope).
    pub(crate) fn with_current<R>(f: impl FnOnce(&Consistency) -> R) -> Option<R> {
        CONSISTENCY.try_with(f).ok()
    }
}

/// Registers the router's task-scoped state with [`herd_context`] (once), so work spawned
/// through it (cache loaders, refreshes, [`herd_context::spawn`]) runs in the scope that was
/// current where it was handed off. Done when the first scope is entered: before that there
/// is nothing to carry.
fn propagate_scopes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| herd_context::register(&ROUTER_SCOPES));
}

static ROUTER_SCOPES: RouterScopes = RouterScopes;

/// Captures the read-your-writes scope and a forced primary.
struct RouterScopes;

/// The router's scopes as captured in one task.
struct CapturedScopes {
    consistency: Option<Consistency>,
    primary: bool,
}

impl herd_context::Propagate for RouterScopes {
    fn capture(&self) -> Option<Box<dyn herd_context::Scope>> {
        let consistency = Consistency::current();
        let primary = primary_forced();
        if consistency.is_none() && !primary {
            return None;
        }
        Some(Box::new(CapturedScopes {
            consistency,
            primary,
        }))
    }
}

impl herd_context::Scope for CapturedScopes {
    fn enter(&self, f: &mut dyn FnMut()) {
        match (&self.consistency, self.primary) {
            (Some(c), true) => {
                CONSISTENCY.sync_scope(c.clone(), || FORCE_PRIMARY.sync_scope((), f))
            }
            (Some(c), false) => CONSISTENCY.sync_scope(c.clone(), f),
            (None, true) => FORCE_PRIMARY.sync_scope((), f),
            (None, false) => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_are_visible_only_inside() {
        assert!(!primary_forced());
        assert!(on_primary(async { primary_forced() }).await);
        assert!(Consistency::current().is_none());
        let c = Consistency::after(Lsn::new(5));
        let seen = c
            .scope(async { Consistency::current().and_then(|c| c.token()) })
            .await;
        assert_eq!(seen, Some(Lsn::new(5)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_work_runs_in_the_scope_it_was_handed_off_from() {
        let c = Consistency::after(Lsn::new(9));
        let (token, forced) = c
            .scope(on_primary(async {
                herd_context::spawn(async {
                    tokio::task::yield_now().await;
                    (
                        Consistency::current().and_then(|c| c.token()),
                        primary_forced(),
                    )
                })
                .await
                .unwrap()
            }))
            .await;
        assert_eq!((token, forced), (Some(Lsn::new(9)), true));
        // The spawned work shares the client's state: its writes count for the client.
        c.scope(async {
            herd_context::spawn(async {
                if let Some(c) = Consistency::current() {
                    c.mark_write();
                }
            })
            .await
            .unwrap()
        })
        .await;
        assert!(c.wrote());
        assert!(
            herd_context::spawn(async { Consistency::current().is_none() })
                .await
                .unwrap()
        );
    }

    #[test]
    fn advance_only_raises_and_writes_are_tracked() {
        let c = Consistency::new();
        assert_eq!(c.token(), None);
        c.advance(Lsn::new(10));
        c.advance(Lsn::new(3));
        assert_eq!(c.token(), Some(Lsn::new(10)));
        assert!(!c.wrote());
        c.mark_write();
        assert!(c.wrote());
        assert!(c.take_unsettled());
        assert!(!c.take_unsettled());
        assert!(c.wrote());
    }
}
