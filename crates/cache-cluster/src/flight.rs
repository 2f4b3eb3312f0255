//! One load per key per instance: concurrent callers for a key share the first caller's load.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use crate::error::Error;

/// A type-erased `Option<T>` or the error every waiter gets.
pub(crate) type FlightResult = Result<Arc<dyn Any + Send + Sync>, Error>;

type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// Loads in progress, by key. A load runs as its own task, so it completes (and stores its
/// value) even when every caller waiting for it has gone away. The task runs in the
/// task-scoped state of the caller that started it (herd-context: a read-your-writes scope, a
/// forced primary), so the loader reads as that caller would.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Flight>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("running", &self.running.lock().len())
            .finish()
    }
}

impl Flights {
    /// Joins the load of `key` in progress, or starts `start()` as that load. The returned flag
    /// is `true` for the caller that started it.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        key: &str,
        start: impl FnOnce() -> BoxFuture<'static, FlightResult>,
    ) -> (Flight, bool) {
        let mut running = self.running.lock();
        if let Some(flight) = running.get(key) {
            return (flight.clone(), false);
        }
        let load = start();
        let flights = Arc::clone(self);
        let owned_key = key.to_owned();
        // The entry goes when the load ends, however it ends: a load that panics (or is
        // dropped with its runtime) must not leave a finished flight that every later caller
        // of the key joins and gets its error from.
        let landing = Landing {
            flights,
            key: owned_key,
        };
        // Captured here, in the starting caller's task.
        let task = herd_context::spawn(async move {
            let result = load.await;
            drop(landing);
            result
        });
        let key_for_error = key.to_owned();
        let flight = async move {
            task.await.unwrap_or_else(|join_error| {
                Err(Error::Load {
                    key: key_for_error,
                    source: Arc::new(join_error.to_string().into()),
                })
            })
        }
        .boxed()
        .shared();
        running.insert(key.to_owned(), flight.clone());
        (flight, true)
    }

    #[cfg(test)]
    pub(crate) fn in_progress(&self, key: &str) -> bool {
        self.running.lock().contains_key(key)
    }
}

/// Removes a flight's entry when dropped.
struct Landing {
    flights: Arc<Flights>,
    key: String,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.flights.running.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_load_and_errors_are_not_kept() {
        let flights = Arc::new(Flights::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for _ in 0..50 {
            let flights = Arc::clone(&flights);
            let calls = Arc::clone(&calls);
            waiters.push(tokio::spawn(async move {
                let (flight, _) = flights.join_or_start("k", || {
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Arc::new(Some(7u32)) as Arc<dyn Any + Send + Sync>)
                    }
                    .boxed()
                });
                flight.await
            }));
        }
        for waiter in waiters {
            let value = waiter.await.unwrap().unwrap();
            assert_eq!(value.downcast_ref::<Option<u32>>(), Some(&Some(7)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!flights.in_progress("k"));

        let (failed, started) = flights.join_or_start("k", || {
            async { Err(Error::CircuitOpen { operation: "test" }) }.boxed()
        });
        assert!(started);
        assert!(failed.await.is_err());
        let (_, started_again) =
            flights.join_or_start("k", || async { Ok(Arc::new(()) as _) }.boxed());
        assert!(started_again, "a failed load is not kept");
    }

    #[tokio::test]
    async fn a_panicking_load_is_not_kept() {
        let flights = Arc::new(Flights::default());
        let (flight, started) = flights.join_or_start("p", || {
            async {
                if true {
                    panic!("loader bug");
                }
                Ok(Arc::new(()) as Arc<dyn Any + Send + Sync>)
            }
            .boxed()
        });
        assert!(started);
        assert!(matches!(flight.await, Err(Error::Load { .. })));
        assert!(!flights.in_progress("p"));
        let (flight, started_again) =
            flights.join_or_start("p", || async { Ok(Arc::new(5u8) as _) }.boxed());
        assert!(
            started_again,
            "a panicked load was joined instead of a new one"
        );
        let value = flight.await.unwrap();
        assert_eq!(value.downcast_ref::<u8>(), Some(&5));
    }
}
