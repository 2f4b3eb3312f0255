//! Task-scoped state that follows work handed to another task.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{PoisonError, RwLock};
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

/// How one crate's task-scoped state is carried into other tasks.
///
/// Implemented by the crate that owns the state (herd-db-router for its read-your-writes
/// scope and [`on_primary`](https://docs.rs/herd-db-router)), and [registered](register)
/// once. Implementations are cheap: `capture` runs wherever herd hands work off (a cache
/// miss, a background refresh), and returns `None` when the current task has no state.
pub trait Propagate: Any + Send + Sync {
    /// The current task's state, or `None` when there is none to carry.
    fn capture(&self) -> Option<Box<dyn Scope>>;
}

/// A captured piece of task-scoped state.
pub trait Scope: Send + Sync + 'static {
    /// Runs `f` with the state set for its duration, e.g. with tokio's
    /// `LocalKey::sync_scope(value.clone(), f)`. Called around every poll of the work the
    /// state was captured for. An implementation that does not call `f` is skipped: the work
    /// is polled without this state (never not at all), inside the other crates' states.
    fn enter(&self, f: &mut dyn FnMut());
}

static PROPAGATORS: RwLock<Vec<&'static dyn Propagate>> = RwLock::new(Vec::new());

/// Registers `propagate`, so that [`Captured::current`] captures its state from now on.
/// One registration per type: registering a value of a type already registered does nothing.
pub fn register(propagate: &'static dyn Propagate) {
    let mut all = PROPAGATORS.write().unwrap_or_else(PoisonError::into_inner);
    // By type: statics of zero-sized types may share one address.
    let kind = (propagate as &dyn Any).type_id();
    if !all
        .iter()
        .any(|known| (*known as &dyn Any).type_id() == kind)
    {
        all.push(propagate);
    }
}

/// The task-scoped state of every registered crate, captured in one task to be re-entered in
/// another.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Where work leaves the request's task: capture first, then run the work in it.
/// let captured = herd_context::Captured::current();
/// let handle = tokio::spawn(captured.run(async { 40 + 2 }));
/// assert_eq!(handle.await.ok(), Some(42));
/// # }
/// ```
#[derive(Default)]
pub struct Captured {
    scopes: Vec<Box<dyn Scope>>,
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Captured")
            .field("scopes", &self.scopes.len())
            .finish()
    }
}

impl Captured {
    /// The state of the current task (empty outside any scope, or when nothing registered).
    pub fn current() -> Self {
        let all = PROPAGATORS.read().unwrap_or_else(PoisonError::into_inner);
        Self {
            scopes: all.iter().filter_map(|p| p.capture()).collect(),
        }
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// `fut`, polled with the captured state set.
    pub fn run<F: Future>(self, fut: F) -> InScope<F> {
        InScope {
            inner: fut,
            captured: self,
        }
    }
}

/// Runs `f` inside every scope, nested in order. A scope that does not call through is
/// skipped: `f` still runs, inside the others.
fn enter_all(scopes: &[Box<dyn Scope>], f: &mut dyn FnMut()) {
    match scopes.split_first() {
        None => f(),
        Some((first, rest)) => {
            let mut called = false;
            first.enter(&mut || {
                called = true;
                enter_all(rest, f);
            });
            if !called {
                enter_all(rest, f);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled inside a [`Captured`] state; see [`Captured::run`].
    pub struct InScope<F> {
        #[pin]
        inner: F,
        captured: Captured,
    }
}

impl<F> fmt::Debug for InScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InScope")
            .field("captured", &self.captured)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.captured.is_empty() {
            return this.inner.poll(cx);
        }
        let mut inner = this.inner;
        let mut out = None;
        enter_all(&this.captured.scopes, &mut || {
            if out.is_none() {
                out = Some(inner.as_mut().poll(cx));
            }
        });
        match out {
            Some(poll) => poll,
            None => inner.poll(cx),
        }
    }
}

/// `fut` in the current task's state, to be run elsewhere (another task, a `select!` arm
/// that outlives the scope).
pub fn in_current_scope<F: Future>(fut: F) -> InScope<F> {
    Captured::current().run(fut)
}

/// [`tokio::spawn`] that carries the current task's state (a read-your-writes scope, a
/// forced primary) into the new task: use it for work you spawn on a request's behalf.
///
/// # Panics
///
/// Like [`tokio::spawn`], when called outside a Tokio runtime.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current_scope(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    tokio::task_local! {
        static NUMBER: u32;
        static NAME: &'static str;
    }

    struct Number;
    struct InNumber(u32);
    impl Propagate for Number {
        fn capture(&self) -> Option<Box<dyn Scope>> {
            NUMBER
                .try_with(|n| Box::new(InNumber(*n)) as Box<dyn Scope>)
                .ok()
        }
    }
    impl Scope for InNumber {
        fn enter(&self, f: &mut dyn FnMut()) {
            NUMBER.sync_scope(self.0, f);
        }
    }

    struct Name;
    struct InName(&'static str);
    impl Propagate for Name {
        fn capture(&self) -> Option<Box<dyn Scope>> {
            NAME.try_with(|n| Box::new(InName(n)) as Box<dyn Scope>)
                .ok()
        }
    }
    impl Scope for InName {
        fn enter(&self, f: &mut dyn FnMut()) {
            NAME.sync_scope(self.0, f);
        }
    }

    /// A scope that never calls through.
    struct Broken;
    struct InBroken;
    impl Propagate for Broken {
        fn capture(&self) -> Option<Box<dyn Scope>> {
            NAME.try_with(|_| Box::new(InBroken) as Box<dyn Scope>).ok()
        }
    }
    impl Scope for InBroken {
        fn enter(&self, _f: &mut dyn FnMut()) {}
    }

    static NUMBER_SCOPE: Number = Number;
    static NAME_SCOPE: Name = Name;
    static BROKEN_SCOPE: Broken = Broken;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_registered_state_follows_spawned_work_across_awaits() {
        register(&NUMBER_SCOPE);
        register(&NAME_SCOPE);
        register(&NAME_SCOPE);
        register(&BROKEN_SCOPE);
        let seen = NUMBER
            .scope(
                7,
                NAME.scope("ann", async {
                    spawn(async {
                        let before = (NUMBER.get(), NAME.get());
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        tokio::task::yield_now().await;
                        (before, (NUMBER.get(), NAME.get()))
                    })
                    .await
                }),
            )
            .await
            .unwrap();
        assert_eq!(seen, ((7, "ann"), (7, "ann")));

        // Only what the task has is captured; nothing outside any scope.
        let only_number = NUMBER
            .scope(3, async { Captured::current().scopes.len() })
            .await;
        assert_eq!(only_number, 1);
        assert!(Captured::current().is_empty());
        let captured = NUMBER.scope(9, async { Captured::current() }).await;
        assert_eq!(captured.run(async { NUMBER.get() }).await, 9);
    }
}
