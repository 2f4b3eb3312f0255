//! A coarse millisecond clock for the L1 read path.
//!
//! `Instant::now()` costs 20-40 ns on virtual machines, a third of the L1 hit budget, so L1
//! expiry compares against a clock that one background thread advances every millisecond.
//! Entries can therefore live up to about a millisecond (more under heavy CPU contention) past
//! their TTL.
//!
//! The thread belongs to the caches that read it: each cache with an L1 holds a [`Ticking`],
//! and when the last one is dropped the thread ends (within a tick). Without a live ticker the
//! clock reads the real time, so it is right whoever reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static NOW_MS: AtomicU64 = AtomicU64::new(0);
/// Unix milliseconds at the last tick, for value headers shared with other processes.
static UNIX_MS: AtomicU64 = AtomicU64::new(0);
/// Set while a ticker thread keeps `NOW_MS` and `UNIX_MS` current; else the real clock is read.
static TICKING: AtomicBool = AtomicBool::new(false);
/// The running ticker, shared by every [`Ticking`] handle.
static TICKER: Mutex<Weak<Ticker>> = Mutex::new(Weak::new());

/// Keeps the clock thread running; the thread stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Ticking {
    /// Held for its drop; `None` when the thread could not be started.
    _ticker: Option<Arc<Ticker>>,
}

#[derive(Debug)]
struct Ticker {
    /// Cleared to stop the thread.
    run: Arc<AtomicBool>,
    /// The thread, for tests to see it end.
    #[cfg_attr(not(test), allow(dead_code))]
    thread: JoinHandle<()>,
}

impl Ticking {
    /// A handle on the ticker thread, started when none runs. When the thread cannot be
    /// started, the clock reads the real time instead.
    pub(crate) fn start() -> Self {
        let mut current = TICKER.lock();
        if let Some(ticker) = current.upgrade() {
            return Self {
                _ticker: Some(ticker),
            };
        }
        let run = Arc::new(AtomicBool::new(true));
        let running = Arc::clone(&run);
        let spawned = std::thread::Builder::new()
            .name("herd-cache-clock".into())
            .spawn(move || {
                while running.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    tick();
                }
            });
        let Ok(thread) = spawned else {
            return Self { _ticker: None };
        };
        // Current values before readers switch to them.
        tick();
        let ticker = Arc::new(Ticker { run, thread });
        *current = Arc::downgrade(&ticker);
        TICKING.store(true, Ordering::Release);
        Self {
            _ticker: Some(ticker),
        }
    }

    /// The ticker thread, while this handle keeps it.
    #[cfg(test)]
    fn thread(&self) -> Option<&std::thread::Thread> {
        self._ticker.as_ref().map(|ticker| ticker.thread.thread())
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Under the lock, so a ticker started meanwhile is not marked as stopped.
        let current = TICKER.lock();
        if std::ptr::eq(current.as_ptr(), &*self) {
            TICKING.store(false, Ordering::Release);
        }
        // Not joined: the thread notices within a tick, and a drop in async code must not
        // wait for it.
        self.run.store(false, Ordering::Relaxed);
    }
}

fn tick() {
    NOW_MS.store(precise_now_ms(), Ordering::Relaxed);
    UNIX_MS.store(precise_unix_ms(), Ordering::Relaxed);
}

fn precise_now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn precise_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix time in milliseconds, at most about a millisecond behind.
pub(crate) fn unix_now_ms() -> u64 {
    if TICKING.load(Ordering::Acquire) {
        UNIX_MS.load(Ordering::Relaxed)
    } else {
        precise_unix_ms()
    }
}

/// Milliseconds since the clock's epoch, at most about a millisecond behind.
pub(crate) fn now_ms() -> u64 {
    // When the ticker lags badly the stored value is behind; it is never ahead, so entries
    // never expire early.
    if TICKING.load(Ordering::Acquire) {
        NOW_MS.load(Ordering::Relaxed)
    } else {
        precise_now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_and_stays_close_to_the_real_clock() {
        let _ticking = Ticking::start();
        let start = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let later = now_ms();
        assert!(later >= start + 20, "{start} -> {later}");
        assert!(later <= precise_now_ms());
        let unix = unix_now_ms();
        assert!(unix <= precise_unix_ms() && unix + 50 >= precise_unix_ms());
    }

    #[test]
    fn handles_share_one_thread() {
        let a = Ticking::start();
        let b = Ticking::start();
        let (Some(a), Some(b)) = (a.thread(), b.thread()) else {
            panic!("no ticker thread");
        };
        assert_eq!(a.id(), b.id());
        assert_eq!(a.name(), Some("herd-cache-clock"));
    }
}
