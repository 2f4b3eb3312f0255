//! One PostgreSQL node: its pool and what the monitor and the request path know about it.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Notify;

use crate::config::Role;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::metrics::NodeKeys;

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: Arc<str>,
    pub(crate) role: Role,
    pub(crate) weight: f64,
    pub(crate) pool: PgPool,
    /// For the monitor's own connection, so a saturated pool never delays a check; its
    /// `application_name` ends in ` monitor`, so it can be told apart in `pg_stat_activity`.
    pub(crate) monitor_connect: PgConnectOptions,
    pub(crate) max_connections: u32,
    /// Index in the read set when this node may take reads.
    pub(crate) read_slot: Option<usize>,
    pub(crate) state: NodeState,
    /// Raised when the node is found down, so requests waiting on it give up at once.
    pub(crate) down: DownSignal,
    /// Request-path counter keys with this node's label.
    pub(crate) metric_keys: NodeKeys,
    /// How long a statement sent on this node may go unanswered before the router closes its
    /// connection and reports the outcome unknown: `statement_timeout + check_timeout`, none
    /// without a `statement_timeout`.
    pub(crate) in_flight_timeout: Option<Duration>,
}

/// Lock-free view of a node, written by the monitor (and by passive marking).
#[derive(Debug, Default)]
pub(crate) struct NodeState {
    pub(crate) checked: AtomicBool,
    pub(crate) reachable: AtomicBool,
    /// A connection error on the request path marked it down until the next good check.
    pub(crate) passive_down: AtomicBool,
    pub(crate) in_recovery: AtomicBool,
    pub(crate) current_lsn: AtomicU64,
    pub(crate) replay_lsn: AtomicU64,
    pub(crate) receive_lsn: AtomicU64,
    pub(crate) timeline: AtomicU32,
    pub(crate) lag_bytes: AtomicU64,
    pub(crate) lag_micros: AtomicU64,
    pub(crate) eligible: AtomicBool,
    pub(crate) last_error: Mutex<Option<String>>,
    /// The TLS failure of the monitor's last connect, cleared by a good check: the router's
    /// build returns it (see [`Error::Tls`]).
    pub(crate) tls_failure: Mutex<Option<String>>,
}

impl NodeState {
    pub(crate) fn is_up(&self) -> bool {
        self.reachable.load(Ordering::Acquire) && !self.passive_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_writable(&self) -> bool {
        self.is_up()
            && self.checked.load(Ordering::Acquire)
            && !self.in_recovery.load(Ordering::Acquire)
    }

    pub(crate) fn replay_lsn(&self) -> Lsn {
        Lsn::new(self.replay_lsn.load(Ordering::Acquire))
    }

    /// Records a replay position seen on the request path (never moves backwards).
    pub(crate) fn observe_replay(&self, lsn: Lsn) {
        self.replay_lsn.fetch_max(lsn.as_u64(), Ordering::AcqRel);
    }

    pub(crate) fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Ordering::Acquire))
    }
}

/// [`Error::Tls`] for `node` when `err` is a TLS failure (a certificate the configured CA does
/// not sign or that names another host, a refused client certificate).
pub(crate) fn tls_error(node: &str, err: &sqlx::Error) -> Option<Error> {
    let reason = match err {
        // Setting TLS up failed (an unparsable CA or key file, a server without TLS).
        sqlx::Error::Tls(reason) => reason.to_string(),
        // The handshake failed: sqlx passes rustls' error on inside an I/O error.
        #[cfg(feature = "tls-rustls")]
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?.to_string(),
        _ => return None,
    };
    Some(Error::Tls {
        node: node.to_owned(),
        reason,
    })
}

impl Node {
    /// [`Error::Tls`] when the monitor's last connect to the node failed on TLS.
    pub(crate) fn tls_failure(&self) -> Option<Error> {
        self.state
            .tls_failure
            .lock()
            .clone()
            .map(|reason| Error::Tls {
                node: self.name.to_string(),
                reason,
            })
    }

    /// Marks the node down after a connection error on the request path; the monitor
    /// brings it back after its next good check.
    pub(crate) fn mark_down(&self, error: &sqlx::Error) {
        if !self.state.passive_down.swap(true, Ordering::AcqRel) {
            tracing::warn!(node = %self.name, %error, "connection error: node marked down until its next good check");
        }
        self.state.eligible.store(false, Ordering::Release);
        *self.state.last_error.lock() = Some(error.to_string());
        self.down.raise();
    }
}

/// "This node was found down": wakes every request racing against it (see
/// [`race`](Self::race)).
///
/// A request registers with the [`Notify`] once, when its work first has to wait, and
/// afterwards only reads `raised` on each poll (no lock) while its waker stays the same.
#[derive(Debug, Default)]
pub(crate) struct DownSignal {
    notify: Notify,
    /// How many times the signal was raised: a request compares it with the count it saw
    /// when it started.
    raised: AtomicU64,
}

impl DownSignal {
    /// Wakes every request racing against the node (and makes the ones about to wait give up).
    pub(crate) fn raise(&self) {
        // Counted before the wake-up, so that a woken request sees the new count.
        self.raised.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Runs `fut`, or gives up with `lost()` when the signal is raised after this future was
    /// first polled. `fut` wins when both are ready at the same poll.
    pub(crate) async fn race<F: Future>(
        &self,
        fut: F,
        lost: impl FnOnce() -> F::Output,
    ) -> F::Output {
        let seen = self.raised.load(Ordering::Acquire);
        // Created before `fut` first runs: `notify_waiters` reaches it from here on, even
        // before it is registered (tokio's `Notified` guarantee).
        let mut notified = pin!(self.notify.notified());
        let mut fut = pin!(fut);
        // The waker the registered `notified` holds (its data and vtable addresses): while it
        // is the one polling, a wake-up by `raise` reaches this task and `raised` tells.
        let mut registered: Option<(usize, usize)> = None;
        let finished = poll_fn(|cx| {
            if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            let waker = waker_id(cx.waker());
            if registered == Some(waker) {
                if self.raised.load(Ordering::Acquire) != seen {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            // First wait, or another waker: (re-)register it (tokio's lock, once).
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            registered = Some(waker);
            Poll::Pending
        })
        .await;
        match finished {
            Some(output) => output,
            None => lost(),
        }
    }
}

/// A waker's identity, as [`Waker::will_wake`] compares them (as integers, so that the future
/// holding it stays `Send`).
fn waker_id(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

/// Runs `fut` against `node`, giving up with [`Error::NodeDown`] as soon as the node is found
/// down (a dead primary would otherwise keep a request in sqlx's connect retries until
/// `acquire_timeout`).
pub(crate) fn race_down<T>(
    node: &Node,
    operation: &'static str,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> impl Future<Output = Result<T, sqlx::Error>> {
    node.down.race(fut, move || Err(race_lost(node, operation)))
}

#[cold]
fn race_lost(node: &Node, operation: &'static str) -> sqlx::Error {
    Error::NodeDown {
        node: node.name.to_string(),
        operation,
    }
    .into_sqlx()
}

/// Errors that say the node (or the way to it) failed, not the statement: safe to retry a
/// read elsewhere, and a reason to stop using the node.
///
/// A full pool ([`sqlx::Error::PoolTimedOut`]) is not one: saturation is backpressure, and
/// taking a busy node out would only push its load onto the others.
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-03: shutdown, crash, cannot connect now.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// SQLSTATE 25006 `read_only_sql_transaction`: a write reached a replica.
pub(crate) fn is_read_only_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c == "25006"))
}

#[cfg(test)]
mod tests {
    use std::future::{pending, ready};
    use std::sync::Arc;
    use std::task::{Context, Wake};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ready_future_wins_and_a_raise_stops_a_waiting_one() {
        let signal = DownSignal::default();
        signal.raise();
        // A raise before the race started does not count, and `fut` wins a tie.
        assert_eq!(signal.race(ready(Some(1)), || None).await, Some(1));
        let waiting = signal.race(pending::<Option<()>>(), || None);
        let raise = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            signal.raise();
        };
        let (raced, ()) = tokio::join!(waiting, raise);
        assert_eq!(raced, None);
        // A future that finishes after waiting a while is not disturbed.
        let slow = signal.race(
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some(2)
            },
            || None,
        );
        assert_eq!(slow.await, Some(2));
    }

    #[tokio::test]
    async fn a_raise_reaches_the_latest_waker() {
        let signal = DownSignal::default();
        /// Counts its wake-ups.
        struct Count(AtomicU32);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (first, second) = (
            Arc::new(Count(AtomicU32::new(0))),
            Arc::new(Count(AtomicU32::new(0))),
        );
        let mut raced = pin!(signal.race(pending::<Option<()>>(), || None));
        let first_waker = Waker::from(Arc::clone(&first));
        let second_waker = Waker::from(Arc::clone(&second));
        assert!(
            raced
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            raced
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // Polled by another waker: that one is woken by the next raise.
        assert!(
            raced
                .as_mut()
                .poll(&mut Context::from_waker(&second_waker))
                .is_pending()
        );
        signal.raise();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(
            raced.as_mut().poll(&mut Context::from_waker(&second_waker)),
            Poll::Ready(None)
        );
    }
}
